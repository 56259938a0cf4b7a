//! {{name}}: a kmsgw guest adapter that keeps ES256 keys of its own, sealed by the
//! gateway in the provider's private storage. Start from here: replace the key
//! handling with calls to your backend (`kmsgw_guest_sdk::http`), advertise the
//! algorithms it signs, and run `kmsgw adapter check .` after each change.

use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, export_adapter, jwk, serde_json,
    storage,
};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};

struct SoftKeys;

/// The stored key of `name`, or not-found.
fn key(name: &str) -> Result<SigningKey, Error> {
    let scalar = storage::get(&format!("key/{name}"))?
        .ok_or_else(|| Error::NotFound(format!("no key `{name}`")))?;
    SigningKey::from_slice(&scalar).map_err(|_| Error::Internal("a stored key is damaged".into()))
}

/// Stores `signing` under `kid` and describes it to the gateway.
fn keep(kid: &str, signing: &SigningKey) -> Result<KeyMaterial, Error> {
    storage::set(&format!("key/{kid}"), &signing.to_bytes())?;
    Ok(KeyMaterial {
        external_id: kid.to_owned(),
        public_jwk: jwk::p256_public_jwk(&signing.verifying_key().to_sec1_bytes())?,
    })
}

impl Adapter for SoftKeys {
    fn init(_config: serde_json::Value) -> Result<Self, Error> {
        Ok(SoftKeys)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: true,
            can_delete: true,
            algs: vec![Alg::Es256],
            default_alg: Alg::Es256,
            // Set to true and implement `sign_digest` to sign clients' hashes.
            signs_digests: false,
        }
    }

    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        if spec.alg != Alg::Es256 {
            return Err(Error::Unsupported(format!("{} is not supported", spec.alg.name())));
        }
        let random = kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes(32);
        let signing = SigningKey::from_slice(&random)
            .map_err(|_| Error::Internal("the random bytes are no P-256 scalar".into()))?;
        keep(kid, &signing)
    }

    fn import_key(
        &self,
        kid: &str,
        private_jwk: &serde_json::Value,
        alg: Alg,
    ) -> Result<KeyMaterial, Error> {
        if alg != Alg::Es256 {
            return Err(Error::Unsupported(format!("{} is not supported", alg.name())));
        }
        let scalar = jwk::p256_private_scalar(private_jwk)?;
        let signing = SigningKey::from_slice(&scalar)
            .map_err(|_| Error::InvalidInput("`d` is not a P-256 scalar".into()))?;
        keep(kid, &signing)
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        if alg != Alg::Es256 {
            return Err(Error::Unsupported(format!("{} is not supported", alg.name())));
        }
        let signature: Signature = key(external_id)?.sign(message);
        Ok(signature.to_bytes().to_vec())
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        storage::delete(&format!("key/{external_id}"))?;
        Ok(())
    }
}

export_adapter!(SoftKeys);
