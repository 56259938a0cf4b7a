//! The `db` provider: keys of every algorithm generated on the host (aws-lc-rs),
//! sealed (PKCS#8) under the master key in the gateway database, and held
//! decrypted in memory after their first use (the most recently used ones, up to
//! the `cache.keys` bound).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use quick_cache::sync::Cache;

use super::{
    Alg, Capabilities, Health, KeyMaterial, KeyRef, KeySpec, Provider, ProviderError, ProviderKind,
    ToSign,
};
use crate::catalog::Catalog;
use crate::config::CacheConfig;
use crate::crypto::master::MasterKey;
use crate::crypto::seal::{SealError, db_key_aad};
use crate::crypto::{KeyKind, PrivateKey, PublicJwk, Signer};

/// Keys sealed in the gateway's own database.
pub struct DbProvider {
    id: String,
    catalog: Catalog,
    master: Arc<MasterKey>,
    capabilities: Capabilities,
    /// Signers by kid, least recently used evicted first; the key inside is wiped
    /// by aws-lc when the last Arc drops.
    signers: Cache<String, Arc<CachedSigner>>,
}

/// A decrypted key and its public JWK, to check it against the record.
struct CachedSigner {
    signer: Signer,
    public: PublicJwk,
}

impl CachedSigner {
    fn matches(&self, key: &KeyRef<'_>) -> bool {
        self.public.same_key(key.public_jwk)
    }
}

impl DbProvider {
    /// The signer of `key`, from memory or loaded from the catalog. The catalog
    /// record is the truth: a signer cached for an older key (or version) with the
    /// same id never signs for the new one.
    async fn signer(&self, key: &KeyRef<'_>) -> Result<Arc<CachedSigner>, ProviderError> {
        let cached = self.signers.get(key.key_id).filter(|s| s.matches(key));
        match cached {
            Some(signer) => Ok(signer),
            None => self.load_signer(key).await,
        }
    }

    /// A provider named `id` storing keys through `catalog`.
    pub fn new(id: String, catalog: Catalog, master: Arc<MasterKey>) -> Self {
        DbProvider {
            id,
            catalog,
            master,
            capabilities: Capabilities {
                can_create: true,
                can_import: true,
                can_delete: true,
                supported_algs: Alg::ALL.to_vec(),
                default_alg: Alg::ES256,
                signs_digests: true,
                signs_in_process: true,
            },
            signers: Cache::new(CacheConfig::default().keys),
        }
    }

    /// The same provider holding at most `keys` decrypted keys.
    pub fn with_cache(mut self, keys: usize) -> Self {
        self.signers = Cache::new(keys);
        self
    }

    fn material(&self, kid: &str, key: &PrivateKey) -> Result<KeyMaterial, ProviderError> {
        Ok(KeyMaterial {
            external_id: kid.to_owned(),
            public_jwk: key.public_jwk().clone(),
            sealed_secret: Some(self.master.seal(&db_key_aad(kid), key.pkcs8())?),
        })
    }

    async fn load_signer(&self, key: &KeyRef<'_>) -> Result<Arc<CachedSigner>, ProviderError> {
        let id = &key.version_id;
        let fetched;
        let sealed = match key.sealed {
            Some(sealed) => sealed.bytes(),
            None => {
                fetched = self
                    .catalog
                    .sealed_secret(id)
                    .await
                    .map_err(|e| ProviderError::Internal(e.to_string()))?
                    .ok_or_else(|| ProviderError::KeyNotFound(id.to_string()))?;
                &fetched
            }
        };
        let damaged = |e: &dyn std::fmt::Display| {
            ProviderError::Internal(format!("key `{}`: {e}", key.key_id))
        };
        let pkcs8 = match self.master.open(&db_key_aad(id), sealed).await {
            // A record read before a finished master key rotation: the
            // catalog holds the item rewrapped under the current generation.
            Err(SealError::UnknownGeneration(_)) if key.sealed.is_some() => {
                let stored = self
                    .catalog
                    .sealed_secret(id)
                    .await
                    .map_err(|e| ProviderError::Internal(e.to_string()))?
                    .ok_or_else(|| ProviderError::KeyNotFound(id.to_string()))?;
                self.master.open(&db_key_aad(id), &stored).await
            }
            other => other,
        }
        .map_err(|e| match e {
            SealError::Sealed(_) => ProviderError::from(e),
            e => damaged(&e),
        })?;
        let (signer, public) = Signer::from_pkcs8(key.alg, &pkcs8).map_err(|e| damaged(&e))?;
        let cached = Arc::new(CachedSigner { signer, public });
        if !cached.matches(key) {
            return Err(ProviderError::Internal(format!(
                "stored key `{}` does not match its public JWK",
                key.key_id
            )));
        }
        self.signers.insert(key.key_id.to_owned(), cached.clone());
        Ok(cached)
    }
}

/// One signature by a cached signer.
fn sign_one(
    signer: &CachedSigner,
    alg: Alg,
    input: ToSign<&[u8]>,
) -> Result<Vec<u8>, ProviderError> {
    signer
        .signer
        .sign_input(alg, input)
        .map_err(|e| ProviderError::InvalidInput(e.0))
}

#[async_trait]
impl Provider for DbProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Db
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        // RSA generation takes tens to hundreds of milliseconds: off the async workers.
        let key = tokio::task::spawn_blocking(move || {
            PrivateKey::generate(spec.alg, Some(spec.rsa_bits as usize))
        })
        .await
        .map_err(|e| ProviderError::Internal(e.to_string()))?
        .map_err(|e| ProviderError::InvalidInput(e.to_string()))?;
        self.material(kid, &key)
    }

    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        _alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        self.material(kid, key)
    }

    /// Signs in place for the curves (tens of microseconds: a hop to the
    /// blocking pool would cost more than the signature), on the blocking pool
    /// for RSA (milliseconds, which would stall an async worker).
    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let alg = key.alg;
        let signer = self.signer(key).await?;
        if alg.key_kind() != KeyKind::Rsa {
            return sign_one(&signer, alg, input);
        }
        let input = input.with(input.bytes().to_vec());
        tokio::task::spawn_blocking(move || sign_one(&signer, alg, input.with(input.bytes())))
            .await
            .map_err(|e| ProviderError::Internal(format!("signing failed: {e}")))?
    }

    /// Signs on the blocking pool, the batch split over the cores (one item
    /// as [`Provider::sign`] does).
    async fn sign_batch(
        &self,
        key: &KeyRef<'_>,
        inputs: ToSign<&[Vec<u8>]>,
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        // One item signs like a single sign: in place for the curves.
        if let [one] = inputs.bytes() {
            return Ok(vec![self.sign(key, inputs.with(one.as_slice())).await?]);
        }
        let alg = key.alg;
        let signer = self.signer(key).await?;
        let items = inputs.bytes().to_vec();
        let kind = inputs.with(());
        tokio::task::spawn_blocking(move || {
            // One part per core this process may run on: the first is signed on
            // this thread, each other one on a thread of its own.
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let chunk = items.len().div_ceil(cores).max(1);
            let sign_part = |part: &[Vec<u8>]| -> Result<Vec<Vec<u8>>, ProviderError> {
                part.iter()
                    .map(|bytes| sign_one(&signer, alg, kind.with(bytes)))
                    .collect()
            };
            let mut parts = items.chunks(chunk);
            let first = parts.next().unwrap_or_default();
            std::thread::scope(|scope| {
                let others: Vec<_> = parts
                    .map(|part| scope.spawn(move || sign_part(part)))
                    .collect();
                let mut signatures = sign_part(first)?;
                for other in others {
                    signatures.extend(other.join().expect("a signing thread does not panic")?);
                }
                Ok(signatures)
            })
        })
        .await
        .map_err(|e| ProviderError::Internal(format!("batch signing failed: {e}")))?
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        // The material row goes with the catalog row, in the gateway's transaction.
        self.signers.remove(key.key_id);
        Ok(())
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        let result = self.catalog.ping().await;
        Health::of(start, result)
    }

    async fn warm(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        self.signer(key).await.map(drop)
    }

    fn invalidate(&self, id: &str) {
        self.signers.remove(id);
    }

    fn invalidate_all(&self) {
        self.signers.clear();
    }
}
