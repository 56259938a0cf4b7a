//! `soft-signer`: ES256 keys generated and used inside the guest with RustCrypto's
//! `p256`, kept in the provider's sealed storage. Supports import.

use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, export_adapter, jwk, storage,
};
use p256::ecdsa::{Signature, SigningKey, signature::Signer};

struct SoftSigner;

fn storage_key(kid: &str) -> String {
    format!("key/{kid}")
}

fn material(kid: &str, key: &SigningKey) -> Result<KeyMaterial, Error> {
    let point = key.verifying_key().to_sec1_bytes();
    Ok(KeyMaterial {
        external_id: kid.to_owned(),
        public_jwk: jwk::p256_public_jwk(&point)?,
    })
}

fn store(kid: &str, key: &SigningKey) -> Result<KeyMaterial, Error> {
    if storage::get(&storage_key(kid))?.is_some() {
        return Err(Error::InvalidInput(format!("key `{kid}` already exists")));
    }
    storage::set(&storage_key(kid), &key.to_bytes())?;
    material(kid, key)
}

fn random_scalar() -> Result<SigningKey, Error> {
    // Rejection sampling: almost every 32 random bytes are a valid scalar.
    for _ in 0..16 {
        let bytes = kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes(32);
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return Ok(key);
        }
    }
    Err(Error::Internal(
        "no valid scalar from the random source".into(),
    ))
}

impl Adapter for SoftSigner {
    fn init(_config: serde_json::Value) -> Result<Self, Error> {
        Ok(SoftSigner)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: true,
            can_delete: true,
            algs: vec![Alg::Es256],
            default_alg: Alg::Es256,
        }
    }

    fn generate_key(&self, kid: &str, _alg: Alg) -> Result<KeyMaterial, Error> {
        store(kid, &random_scalar()?)
    }

    fn import_key(
        &self,
        kid: &str,
        private_jwk: &serde_json::Value,
        _alg: Alg,
    ) -> Result<KeyMaterial, Error> {
        let scalar = jwk::p256_private_scalar(private_jwk)?;
        let key = SigningKey::from_slice(&scalar)
            .map_err(|_| Error::InvalidInput("`d` is not a valid P-256 scalar".into()))?;
        store(kid, &key)
    }

    fn sign(&self, external_id: &str, message: &[u8], _alg: Alg) -> Result<Vec<u8>, Error> {
        let bytes = storage::get(&storage_key(external_id))?
            .ok_or_else(|| Error::NotFound(format!("no key `{external_id}`")))?;
        let key = SigningKey::from_slice(&bytes)
            .map_err(|_| Error::Internal("stored key is damaged".into()))?;
        let signature: Signature = key.sign(message);
        Ok(signature.to_bytes().to_vec())
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        storage::delete(&storage_key(external_id))?;
        Ok(())
    }
}

export_adapter!(SoftSigner);
