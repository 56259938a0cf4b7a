//! `soft-signer`: ES256 keys generated and used inside the guest with RustCrypto's
//! `p256`, kept in the provider's sealed storage. Supports import.
//!
//! Each key's external id is its kid plus a random suffix, so a kid that is
//! deleted and created again names a different stored key; that makes it safe for
//! every instance to keep the keys it has used in memory (the host never asks for
//! a deleted key again).

use std::cell::RefCell;
use std::collections::HashMap;

use kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes;
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, base64url, export_adapter, jwk, storage,
};
use p256::ecdsa::{Signature, SigningKey, signature::Signer};

struct SoftSigner {
    /// Keys used by this instance, by external id; p256 wipes them when dropped.
    keys: RefCell<HashMap<String, SigningKey>>,
}

fn storage_key(external_id: &str) -> String {
    format!("key/{external_id}")
}

fn store(kid: &str, key: &SigningKey) -> Result<KeyMaterial, Error> {
    let external_id = format!("{kid}.{}", base64url::encode(&get_random_bytes(9)));
    storage::set(&storage_key(&external_id), &key.to_bytes())?;
    Ok(KeyMaterial {
        public_jwk: jwk::p256_public_jwk(&key.verifying_key().to_sec1_bytes())?,
        external_id,
    })
}

fn random_key() -> Result<SigningKey, Error> {
    // Rejection sampling: almost every 32 random bytes are a valid scalar.
    (0..16)
        .find_map(|_| SigningKey::from_slice(&get_random_bytes(32)).ok())
        .ok_or_else(|| Error::Internal("no valid scalar from the random source".into()))
}

impl Adapter for SoftSigner {
    fn init(_config: serde_json::Value) -> Result<Self, Error> {
        Ok(SoftSigner {
            keys: RefCell::default(),
        })
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
        store(kid, &random_key()?)
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
        let mut keys = self.keys.borrow_mut();
        if !keys.contains_key(external_id) {
            let bytes = storage::get(&storage_key(external_id))?
                .ok_or_else(|| Error::NotFound(format!("no key `{external_id}`")))?;
            let key = SigningKey::from_slice(&bytes)
                .map_err(|_| Error::Internal("stored key is damaged".into()))?;
            keys.insert(external_id.to_owned(), key);
        }
        let signature: Signature = keys[external_id].sign(message);
        Ok(signature.to_bytes().to_vec())
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        self.keys.borrow_mut().remove(external_id);
        storage::delete(&storage_key(external_id))?;
        Ok(())
    }
}

export_adapter!(SoftSigner);
