//! `soft-signer`: keys generated and used inside the guest with RustCrypto (`p256`,
//! `p384`, `p521`, `ed25519-dalek`, `rsa`, `ml-dsa`), kept in the provider's sealed
//! storage. Signs every algorithm of the contract: ES256, ES384, ES512, EdDSA,
//! RS256, PS256 and ML-DSA-44/65/87. Supports import. RSA key generation searches for primes inside the
//! guest: give the provider a `timeoutMs` of several seconds if it creates RSA keys.
//!
//! Each key's external id is its kid plus a random suffix, so a kid that is
//! deleted and created again names a different stored key; that makes it safe for
//! every instance to keep the keys it has used in memory (the host never asks for
//! a deleted key again).

mod keys;

use std::cell::RefCell;
use std::collections::HashMap;

use kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes;
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, base64url, export_adapter, storage,
};

use keys::SoftKey;

struct SoftSigner {
    /// Keys used by this instance, by external id; RustCrypto wipes them when dropped.
    keys: RefCell<HashMap<String, SoftKey>>,
}

fn storage_key(external_id: &str) -> String {
    format!("key/{external_id}")
}

fn store(kid: &str, key: &SoftKey) -> Result<KeyMaterial, Error> {
    let external_id = format!("{kid}.{}", base64url::encode(&get_random_bytes(9)));
    storage::set(&storage_key(&external_id), &key.to_stored()?)?;
    Ok(KeyMaterial {
        public_jwk: key.public_jwk()?,
        external_id,
    })
}

impl SoftSigner {
    /// Runs `f` with the key `external_id`, loaded from storage at first use.
    fn with_key<R>(
        &self,
        external_id: &str,
        f: impl FnOnce(&SoftKey) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut keys = self.keys.borrow_mut();
        if !keys.contains_key(external_id) {
            let bytes = storage::get(&storage_key(external_id))?
                .ok_or_else(|| Error::NotFound(format!("no key `{external_id}`")))?;
            keys.insert(external_id.to_owned(), SoftKey::from_stored(&bytes)?);
        }
        f(&keys[external_id])
    }
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
            algs: Alg::ALL.to_vec(),
            default_alg: Alg::Es256,
            signs_digests: true,
        }
    }

    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        store(kid, &SoftKey::generate(spec)?)
    }

    fn import_key(
        &self,
        kid: &str,
        private_jwk: &serde_json::Value,
        alg: Alg,
    ) -> Result<KeyMaterial, Error> {
        store(kid, &SoftKey::from_jwk(private_jwk, alg)?)
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        self.with_key(external_id, |key| key.sign(message, alg))
    }

    fn sign_digest(&self, external_id: &str, digest: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        self.with_key(external_id, |key| key.sign_digest(digest, alg))
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        self.keys.borrow_mut().remove(external_id);
        storage::delete(&storage_key(external_id))?;
        Ok(())
    }
}

export_adapter!(SoftSigner);
