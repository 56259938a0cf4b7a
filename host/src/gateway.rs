//! The gateway: the provider registry and the key catalog together. It resolves a
//! kid to its record and provider, keeps records in memory after first use (the sign
//! hot path does no database round trip once warm), and keeps the catalog and the
//! backends consistent when something fails half-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus::{Histogram, HistogramOpts, HistogramVec};
use quick_cache::sync::Cache;

use crate::audit::{Action, Actor, Audit};
use crate::catalog::{
    Catalog, CatalogError, KeyRecord, KeyUsage, KeyVersion, RotationPolicy, VersionState, key_id,
};
use crate::config::CacheConfig;
use crate::crypto::{KeyKind, PrivateKey};
use crate::providers::{Alg, Health, KeySpec, Provider, ProviderError, ProviderKind};
use crate::usage::Usage;

/// How long a health probe may take before it is reported as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a gateway operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no key with kid `{0}`")]
    KeyNotFound(String),
    #[error("no provider with id `{0}`")]
    ProviderNotFound(String),
    #[error("a key with kid `{0}` already exists")]
    KeyExists(String),
    #[error("{0}")]
    InvalidInput(String),
    /// An imported key that is unusable or does not fit the requested algorithm.
    #[error("{0}")]
    InvalidJwk(String),
    #[error("{0}")]
    Unsupported(String),
    /// A known algorithm the chosen provider cannot do.
    #[error("provider `{provider}` does not support {alg}")]
    UnsupportedAlg { provider: String, alg: Alg },
    #[error("key `{kid}` belongs to provider `{provider}`, which is not configured")]
    ProviderGone { kid: String, provider: String },
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("catalog: {0}")]
    Catalog(#[from] CatalogError),
    /// A certificate or request that could not be made, or an imported chain refused.
    #[error("{0}")]
    Certificate(crate::x509::CertError),
}

mod certificates;
pub use certificates::IssueRequest;

/// A committed rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The key with its new current version.
    pub record: Arc<KeyRecord>,
    /// The new version's certificate under the key's policy; `None` without one.
    pub certificate: Option<Result<(), GatewayError>>,
}

/// How long a replaced version stays published when its key has no grace policy.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What `create_key` makes.
#[derive(Debug, Default)]
pub struct NewKey {
    /// Generated (a UUID) when absent.
    pub kid: Option<String>,
    /// Default: the provider's default.
    pub alg: Option<Alg>,
    /// RSA modulus bits (2048, 3072, 4096); RSA algorithms only; default 2048.
    pub rsa_bits: Option<u32>,
    /// Default: the default provider.
    pub provider: Option<String>,
    pub rotation: RotationPolicy,
}

/// A key retracted by a forced delete.
#[derive(Debug)]
pub struct Retraction {
    /// The record as it was.
    pub record: Arc<KeyRecord>,
    /// Whether the backend deleted the key too; if not, why it may still hold it.
    pub backend: Result<(), String>,
}

/// A configured provider and what `GET /providers` says about it.
pub struct Registered {
    pub provider: Arc<dyn Provider>,
    pub description: Option<String>,
}

/// Sign latency buckets in seconds: 50 µs to 5 s.
const SIGN_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// One line of `GET /health/kms`.
#[derive(Debug)]
pub struct ProviderHealth {
    pub provider_id: String,
    pub kind: ProviderKind,
    pub health: Health,
}

/// The providers a gateway routes to. A reload replaces it whole; a request
/// keeps the registry it started with until it ends.
pub struct Registry {
    providers: Vec<Registered>,
    by_id: HashMap<String, usize>,
    default_provider: String,
    /// Sign latency per provider; `sign_timers[i]` belongs to `providers[i]`.
    sign_timers: Vec<Histogram>,
    /// Whether `providers[i]` has passed a health probe (shared with the registry
    /// a reload makes, for the providers it keeps).
    initialised: Vec<Arc<AtomicBool>>,
}

impl Registry {
    /// The providers, in configuration order.
    pub fn providers(&self) -> &[Registered] {
        &self.providers
    }

    /// The provider used when a request names none.
    pub fn default_provider(&self) -> &str {
        &self.default_provider
    }

    fn index_of(&self, id: Option<&str>) -> Result<usize, GatewayError> {
        let id = id.unwrap_or(&self.default_provider);
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| GatewayError::ProviderNotFound(id.to_owned()))
    }

    fn index_of_record(&self, record: &KeyRecord) -> Result<usize, GatewayError> {
        self.index_of(Some(&record.provider))
            .map_err(|_| GatewayError::ProviderGone {
                kid: record.kid.clone(),
                provider: record.provider.clone(),
            })
    }
}

/// The provider registry and key catalog.
pub struct Gateway {
    registry: ArcSwap<Registry>,
    catalog: Catalog,
    /// Sign latency per provider.
    sign_seconds: HistogramVec,
    /// Records by gateway-wide key id, least recently used evicted first.
    records: Cache<String, Arc<KeyRecord>>,
    /// Bumped by every invalidation, so a record read from the database just before
    /// a deletion is not cached after it.
    invalidations: AtomicU64,
    /// Signs counted per key.
    usage: Arc<Usage>,
    /// Rotations that committed, and that failed.
    rotations: [AtomicU64; 2],
    /// Certificates issued, and issues that failed.
    certificates: [AtomicU64; 2],
    /// Where every change is recorded, in the transaction that makes it.
    audit: Audit,
    /// Each tenant's JWKS document as last built (`""`: outside tenants).
    jwks_documents: DashMap<String, Arc<JwksDocument>>,
}

/// A tenant's JWKS document, built once per change of the published keys.
#[derive(Debug)]
pub struct JwksDocument {
    /// The value of [`Gateway`]'s invalidation counter it was built at.
    generation: u64,
    /// The JSON text.
    pub body: bytes::Bytes,
    /// A strong entity tag: the SHA-256 of the body, quoted.
    pub etag: String,
}

/// A kid the API accepts: 1 to 128 characters that need no escaping in a URL path.
pub fn valid_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '~'))
}

impl Gateway {
    /// A gateway over `providers` (in display order) and `catalog`.
    ///
    /// # Panics
    /// When `default_provider` is not among `providers` (config validation prevents it).
    pub fn new(providers: Vec<Registered>, default_provider: String, catalog: Catalog) -> Self {
        let sign_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kmsgw_sign_duration_seconds",
                "Time to sign, per provider (successful signs)",
            )
            .buckets(SIGN_BUCKETS.to_vec()),
            &["provider"],
        )
        .expect("a valid histogram");
        let registry = Self::registry_of(&sign_seconds, providers, default_provider, None);
        Gateway {
            usage: Arc::new(Usage::new(catalog.clone(), true)),
            audit: Audit::off(catalog.clone()),
            rotations: [AtomicU64::new(0), AtomicU64::new(0)],
            certificates: [AtomicU64::new(0), AtomicU64::new(0)],
            registry: ArcSwap::from_pointee(registry),
            catalog,
            sign_seconds,
            records: Cache::new(CacheConfig::default().keys),
            invalidations: AtomicU64::new(0),
            jwks_documents: DashMap::new(),
        }
    }

    /// A registry of `providers`; a provider also in `previous` keeps its
    /// initialised state.
    ///
    /// # Panics
    /// When `default_provider` is not among `providers` (config validation prevents it).
    fn registry_of(
        sign_seconds: &HistogramVec,
        providers: Vec<Registered>,
        default_provider: String,
        previous: Option<&Registry>,
    ) -> Registry {
        let by_id: HashMap<_, _> = providers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.provider.id().to_owned(), i))
            .collect();
        assert!(
            by_id.contains_key(&default_provider),
            "default provider must be registered"
        );
        let sign_timers = providers
            .iter()
            .map(|r| sign_seconds.with_label_values(&[r.provider.id()]))
            .collect();
        let initialised = providers
            .iter()
            .map(|r| {
                previous
                    .and_then(|old| {
                        old.providers
                            .iter()
                            .position(|o| Arc::ptr_eq(&o.provider, &r.provider))
                            .map(|i| Arc::clone(&old.initialised[i]))
                    })
                    .unwrap_or_default()
            })
            .collect();
        Registry {
            providers,
            by_id,
            default_provider,
            sign_timers,
            initialised,
        }
    }

    /// Routes to `providers` from now on; requests already running finish with
    /// the providers they started with.
    ///
    /// # Panics
    /// When `default_provider` is not among `providers` (config validation prevents it).
    pub fn replace_providers(&self, providers: Vec<Registered>, default_provider: String) {
        let previous = self.registry.load_full();
        let next = Self::registry_of(
            &self.sign_seconds,
            providers,
            default_provider,
            Some(&previous),
        );
        self.registry.store(Arc::new(next));
    }

    /// The same gateway holding at most `keys` key records in memory.
    pub fn with_cache(mut self, keys: usize) -> Self {
        self.records = Cache::new(keys);
        self
    }

    /// The same gateway recording its changes in `audit` (default: no records).
    pub fn with_audit(mut self, audit: Audit) -> Self {
        self.audit = audit;
        self
    }

    /// The audit log.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The same gateway counting key usage with `usage`.
    pub fn with_usage(mut self, usage: Arc<Usage>) -> Self {
        self.usage = usage;
        self
    }

    /// The key usage counters.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// The providers now configured.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The sign latency histograms, for the metrics registry.
    pub fn sign_seconds(&self) -> &HistogramVec {
        &self.sign_seconds
    }

    fn provider(&self, id: Option<&str>) -> Result<Arc<dyn Provider>, GatewayError> {
        let registry = self.registry.load();
        registry
            .index_of(id)
            .map(|i| Arc::clone(&registry.providers[i].provider))
    }

    fn check_new_kid(kid: &str) -> Result<(), GatewayError> {
        if valid_kid(kid) {
            Ok(())
        } else {
            Err(GatewayError::InvalidInput(format!(
                "kid `{kid}` is not valid: use 1 to 128 letters, digits, `-`, `_`, `.`, `:` or `~`"
            )))
        }
    }

    fn choose_alg(provider: &dyn Provider, alg: Option<Alg>) -> Result<Alg, GatewayError> {
        let caps = provider.capabilities();
        let alg = alg.unwrap_or(caps.default_alg);
        if caps.supports(alg) {
            Ok(alg)
        } else {
            Err(GatewayError::UnsupportedAlg {
                provider: provider.id().to_owned(),
                alg,
            })
        }
    }

    /// Creates a key in `actor`'s tenant as `request` says; the key and its
    /// audit record commit together.
    ///
    /// # Errors
    /// Unknown provider, taken kid, unsupported alg or size, backend failures.
    pub async fn create_key(
        &self,
        actor: Actor<'_>,
        request: NewKey,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let tenant = actor.tenant;
        let NewKey {
            kid,
            alg,
            rsa_bits,
            provider,
            rotation,
        } = request;
        let provider = self.provider(provider.as_deref())?;
        if !provider.capabilities().can_create {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot create keys",
                provider.id()
            )));
        }
        let alg = Self::choose_alg(provider.as_ref(), alg)?;
        let rsa_bits = match (alg.key_kind(), rsa_bits) {
            (KeyKind::Rsa, None) => 2048,
            (KeyKind::Rsa, Some(bits @ (2048 | 3072 | 4096))) => bits,
            (KeyKind::Rsa, Some(bits)) => {
                return Err(GatewayError::InvalidInput(format!(
                    "keySize {bits} is not supported; use 2048, 3072 or 4096"
                )));
            }
            (_, Some(_)) => {
                return Err(GatewayError::InvalidInput(format!(
                    "keySize applies to RSA keys only, not to {alg}"
                )));
            }
            (_, None) => 0,
        };
        let kid = kid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Self::check_new_kid(&kid)?;
        let id = key_id(tenant, &kid);
        self.ensure_free(&id, &kid).await?;
        let material = provider
            .generate_key(&id, KeySpec { alg, rsa_bits })
            .await?;
        let new = (kid, alg, material);
        self.commit(provider.as_ref(), actor, Action::Create, new, rotation)
            .await
    }

    /// Imports `key` under `kid` in `actor`'s tenant into `provider` (default: the
    /// default provider). Without `alg`, the key's kind decides: ES256/384/512 by
    /// curve, EdDSA, or RS256 for RSA.
    ///
    /// # Errors
    /// Unknown provider, taken kid, an `alg` that does not fit the key, a provider
    /// that cannot import, backend failures.
    pub async fn import_key(
        &self,
        actor: Actor<'_>,
        kid: String,
        key: &PrivateKey,
        alg: Option<Alg>,
        provider: Option<&str>,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let tenant = actor.tenant;
        let provider = self.provider(provider)?;
        if !provider.capabilities().can_import {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot import keys",
                provider.id()
            )));
        }
        let alg = match alg {
            Some(alg) if alg.key_kind() != key.kind() => {
                return Err(GatewayError::InvalidJwk(format!(
                    "a {} key cannot be used for {alg}",
                    key.public_jwk().describe()
                )));
            }
            Some(alg) => alg,
            None => match key.kind() {
                KeyKind::Ec(curve) => curve.alg(),
                KeyKind::Ed25519 => Alg::EdDSA,
                KeyKind::Rsa => Alg::RS256,
            },
        };
        let alg = Self::choose_alg(provider.as_ref(), Some(alg))?;
        Self::check_new_kid(&kid)?;
        let id = key_id(tenant, &kid);
        self.ensure_free(&id, &kid).await?;
        let material = provider.import_key(&id, key, alg).await?;
        if !material.public_jwk.same_key(key.public_jwk()) {
            let (record, _) = Self::record_of(provider.as_ref(), tenant, kid, alg, material, 1);
            self.discard_orphan(provider.as_ref(), &record).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a public key that is not the imported key's",
                provider.id()
            ))
            .into());
        }
        self.commit(
            provider.as_ref(),
            actor,
            Action::Import,
            (kid, alg, material),
            RotationPolicy::default(),
        )
        .await
    }

    async fn ensure_free(&self, id: &str, kid: &str) -> Result<(), GatewayError> {
        if self.catalog.get(id).await?.is_some() {
            return Err(GatewayError::KeyExists(kid.to_owned()));
        }
        Ok(())
    }

    fn record_of(
        provider: &dyn Provider,
        tenant: Option<&str>,
        kid: String,
        alg: Alg,
        material: crate::providers::KeyMaterial,
        version: u32,
    ) -> (KeyRecord, Option<Vec<u8>>) {
        let mut record = KeyRecord {
            public_jwk: material.public_jwk.unlabelled(),
            id: key_id(tenant, &kid),
            tenant: tenant.map(str::to_owned),
            kid,
            provider: provider.id().to_owned(),
            external_id: material.external_id,
            alg,
            created_at: SystemTime::now(),
            version,
            sealed: None,
        };
        record.public_jwk = record.public_jwk.labelled(&record.jwk_kid(), alg.as_str());
        (record, material.sealed_secret)
    }

    /// Records a key the backend now holds, with the audit record of `action`;
    /// if its public key is unusable or the records cannot be written, removes it
    /// from the backend again so nothing is left half-written.
    async fn commit(
        &self,
        provider: &dyn Provider,
        actor: Actor<'_>,
        action: Action,
        (kid, alg, material): (String, Alg, crate::providers::KeyMaterial),
        rotation: RotationPolicy,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let (record, sealed) = Self::record_of(provider, actor.tenant, kid, alg, material, 1);
        if let Err(e) = record.public_jwk.check(alg) {
            self.discard_orphan(provider, &record).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned an unusable public key for {alg}: {e}",
                provider.id()
            ))
            .into());
        }
        let event = actor.event(action, &record.kid, &record.provider, "ok");
        let inserted = async {
            let mut tx = self.audit.begin().await?;
            self.catalog
                .insert(&mut tx, &record, sealed.as_deref(), rotation)
                .await?;
            tx.commit(event).await
        };
        if let Err(e) = inserted.await {
            // A backend that names keys by kid may hold the key of whichever request won
            // a race for that kid; only a backend-chosen name is surely ours to remove.
            if record.external_id != record.id {
                self.discard_orphan(provider, &record).await;
            }
            return Err(match e {
                CatalogError::Exists => GatewayError::KeyExists(record.kid),
                other => other.into(),
            });
        }
        // A new key changes the JWKS.
        self.invalidate(&record.id);
        Ok(Arc::new(record))
    }

    /// Removes a key the backend made but the catalog will not hold.
    async fn discard_orphan(&self, provider: &dyn Provider, record: &KeyRecord) {
        if let Err(e) = provider.delete_key(record).await {
            tracing::warn!(kid = %record.kid, provider = provider.id(), error = %e,
                "could not remove a backend key whose catalog record was not written");
        }
    }

    /// The record of `kid` in `tenant`, from memory when possible.
    ///
    /// # Errors
    /// [`GatewayError::KeyNotFound`], catalog failures.
    pub async fn key(
        &self,
        tenant: Option<&str>,
        kid: &str,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        // A kid no key can have is not looked up (PostgreSQL refuses a NUL in text).
        if !valid_kid(kid) {
            return Err(GatewayError::KeyNotFound(crate::audit::recorded(kid)));
        }
        let record = match tenant {
            None => self.record(kid).await?,
            Some(_) => self.record(&key_id(tenant, kid)).await?,
        };
        // Outside tenants, a kid like `acme~k1` names that id, which may be a tenant's key.
        match record {
            Some(record) if record.tenant.as_deref() == tenant => Ok(record),
            _ => Err(GatewayError::KeyNotFound(kid.to_owned())),
        }
    }

    async fn record(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
        if let Some(record) = self.records.get(id) {
            return Ok(Some(record));
        }
        let seen = self.invalidations.load(Ordering::Acquire);
        let Some(record) = self.catalog.get(id).await? else {
            return Ok(None);
        };
        let record = Arc::new(record);
        self.records.insert(id.to_owned(), Arc::clone(&record));
        // An invalidation that raced with the read either sees the insert (and
        // removes it) or bumped the counter first (and we remove it here).
        if self.invalidations.load(Ordering::Acquire) != seen {
            self.records.remove(id);
        }
        Ok(Some(record))
    }

    /// Signs `message` with `kid` of `tenant`; `alg`, when given, must be the key's
    /// algorithm. Returns the signature and the key's record.
    ///
    /// # Errors
    /// Unknown kid, algorithm mismatch, backend failures.
    pub async fn sign(
        &self,
        tenant: Option<&str>,
        kid: &str,
        message: &[u8],
        alg: Option<Alg>,
    ) -> Result<(Vec<u8>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        let started = std::time::Instant::now();
        let signature = provider
            .sign(&record, message, record.alg)
            .await
            .map_err(|e| self.sign_failed(&record, e))?;
        self.check_signature(provider.as_ref(), &record, message, &signature)?;
        registry.sign_timers[index].observe(started.elapsed().as_secs_f64());
        self.usage.record(&record.id, 1);
        Ok((signature, record))
    }

    /// Signs every one of `messages` with `kid` of `tenant`, in order, with one key
    /// lookup: the provider signs the batch the best way its backend allows.
    ///
    /// # Errors
    /// As [`Gateway::sign`]; one failed message fails the batch.
    pub async fn sign_batch(
        &self,
        tenant: Option<&str>,
        kid: &str,
        messages: &[Vec<u8>],
        alg: Option<Alg>,
    ) -> Result<(Vec<Vec<u8>>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        let started = std::time::Instant::now();
        let signatures = provider
            .sign_batch(&record, messages, record.alg)
            .await
            .map_err(|e| self.sign_failed(&record, e))?;
        if signatures.len() != messages.len() {
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned {} signatures for {} messages",
                provider.id(),
                signatures.len(),
                messages.len()
            ))
            .into());
        }
        for (message, signature) in messages.iter().zip(&signatures) {
            self.check_signature(provider.as_ref(), &record, message, signature)?;
        }
        registry.sign_timers[index].observe(started.elapsed().as_secs_f64());
        self.usage.record(&record.id, messages.len() as u64);
        Ok((signatures, record))
    }

    /// The record of a key about to sign, and the registry and index of its provider.
    async fn signing_key(
        &self,
        tenant: Option<&str>,
        kid: &str,
        alg: Option<Alg>,
    ) -> Result<(Arc<KeyRecord>, Arc<Registry>, usize), GatewayError> {
        let record = self.key(tenant, kid).await?;
        if let Some(alg) = alg
            && alg != record.alg
        {
            return Err(GatewayError::InvalidInput(format!(
                "key `{kid}` is a {} key and cannot sign with {alg}",
                record.alg
            )));
        }
        let registry = self.registry.load_full();
        let index = registry.index_of_record(&record)?;
        Ok((record, registry, index))
    }

    fn sign_failed(&self, record: &KeyRecord, error: ProviderError) -> GatewayError {
        match error {
            ProviderError::KeyNotFound(_) => {
                // The backend lost it, or another replica deleted it: forget it here too.
                self.invalidate(&record.id);
                GatewayError::KeyNotFound(record.kid.clone())
            }
            e => e.into(),
        }
    }

    /// A backend that lies, or a wrong conversion of its answer, must never hand a
    /// client a bad signature. `db` signs here, in-process, and is not checked again.
    fn check_signature(
        &self,
        provider: &dyn Provider,
        record: &KeyRecord,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), GatewayError> {
        if provider.kind() == ProviderKind::Db {
            return Ok(());
        }
        let kid = &record.kid;
        if let Some(expected) = record.public_jwk.signature_len(record.alg)
            && signature.len() != expected
        {
            tracing::error!(
                provider = provider.id(),
                kid,
                len = signature.len(),
                expected,
                "backend signature has the wrong length"
            );
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a {}-byte signature; {} signatures of this key are {expected} bytes{}",
                provider.id(),
                signature.len(),
                record.alg,
                if matches!(record.alg.key_kind(), KeyKind::Ec(_)) { " (raw r‖s, not DER)" } else { "" }
            ))
            .into());
        }
        if !record.public_jwk.verify(record.alg, message, signature) {
            tracing::error!(
                provider = provider.id(),
                kid,
                len = signature.len(),
                "backend signature does not verify against the key's public JWK"
            );
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a signature that does not verify against the key's public JWK",
                provider.id()
            ))
            .into());
        }
        Ok(())
    }

    fn provider_of(&self, record: &KeyRecord) -> Result<Arc<dyn Provider>, GatewayError> {
        let registry = self.registry.load();
        registry
            .index_of_record(record)
            .map(|i| Arc::clone(&registry.providers[i].provider))
    }

    /// Deletes `kid` of `actor`'s tenant from its backend, then from the catalog
    /// with its audit record. Returns the deleted key's record.
    ///
    /// # Errors
    /// Unknown kid, a provider that cannot delete, backend failures (the key stays).
    pub async fn delete_key(
        &self,
        actor: Actor<'_>,
        kid: &str,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let record = self.stored_record(actor.tenant, kid).await?;
        let provider = self.provider_of(&record)?;
        if !provider.capabilities().can_delete {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot delete keys",
                provider.id()
            )));
        }
        provider.delete_key(&record).await?;
        self.delete_graces(provider.as_ref(), &record).await?;
        self.forget(actor, Action::Delete, kid, record).await
    }

    /// Deletes the backend keys of `record`'s versions still in grace.
    async fn delete_graces(
        &self,
        provider: &dyn Provider,
        record: &KeyRecord,
    ) -> Result<(), GatewayError> {
        for version in self.catalog.versions(&record.id).await? {
            if version.state != VersionState::Grace {
                continue;
            }
            let old = KeyRecord {
                external_id: version.external_id,
                public_jwk: version.public_jwk,
                version: version.version,
                sealed: None,
                ..record.clone()
            };
            match provider.delete_key(&old).await {
                Ok(()) | Err(ProviderError::KeyNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Retracts `kid` of `actor`'s tenant from the catalog (and so from the JWKS)
    /// whatever its backend says: the backend is asked to delete the key when its
    /// provider is configured and can, and the answer says why it may still hold it.
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn retract_key(
        &self,
        actor: Actor<'_>,
        kid: &str,
    ) -> Result<Retraction, GatewayError> {
        let record = self.stored_record(actor.tenant, kid).await?;
        let backend = match self.provider_of(&record) {
            Err(gone) => Err(gone.to_string()),
            Ok(provider) if !provider.capabilities().can_delete => {
                Err(format!("provider `{}` cannot delete keys", provider.id()))
            }
            Ok(provider) => match provider.delete_key(&record).await {
                Ok(()) | Err(ProviderError::KeyNotFound(_)) => self
                    .delete_graces(provider.as_ref(), &record)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(reason) = &backend {
            tracing::warn!(kid = %record.kid, provider = %record.provider, external_id = %record.external_id,
                %reason, "key retracted from the catalog; its backend may still hold it");
        }
        let record = self.forget(actor, Action::ForceDelete, kid, record).await?;
        Ok(Retraction { record, backend })
    }

    /// The catalog's record of `kid` in `tenant`, read from the database.
    async fn stored_record(
        &self,
        tenant: Option<&str>,
        kid: &str,
    ) -> Result<KeyRecord, GatewayError> {
        // A kid no key can have is not looked up (PostgreSQL refuses a NUL in text).
        if !valid_kid(kid) {
            return Err(GatewayError::KeyNotFound(crate::audit::recorded(kid)));
        }
        self.catalog
            .get(&key_id(tenant, kid))
            .await?
            .filter(|r| r.tenant.as_deref() == tenant)
            .ok_or_else(|| GatewayError::KeyNotFound(kid.to_owned()))
    }

    /// Removes `record` from the catalog, with the audit record of `action`, and
    /// from every cache.
    async fn forget(
        &self,
        actor: Actor<'_>,
        action: Action,
        kid: &str,
        record: KeyRecord,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let event = actor.event(action, &record.kid, &record.provider, "ok");
        let deleted = async {
            let mut tx = self.audit.begin().await?;
            self.catalog.delete(&mut tx, &record.id).await?;
            tx.commit(event).await
        }
        .await;
        self.invalidate(&record.id);
        match deleted {
            Ok(()) => Ok(Arc::new(record)),
            Err(CatalogError::Conflict) => Err(GatewayError::KeyNotFound(kid.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes a new version of `kid` in `tenant` (same provider and algorithm) its
    /// current one; the previous version stays published for the key's grace period.
    ///
    /// # Errors
    /// Unknown kid, a provider that cannot create keys or is gone, backend failures,
    /// [`GatewayError::KeyExists`] when another rotation of the key won a race.
    pub async fn rotate(&self, actor: Actor<'_>, kid: &str) -> Result<Rotated, GatewayError> {
        let current = self.stored_record(actor.tenant, kid).await?;
        self.rotate_and_certify(actor, &current).await
    }

    /// Rotates `current`'s key and certifies the new version under its policy.
    async fn rotate_and_certify(
        &self,
        actor: Actor<'_>,
        current: &KeyRecord,
    ) -> Result<Rotated, GatewayError> {
        let result = self.rotate_record(actor, current).await;
        self.rotations[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        let record = result?;
        let certificate = self.certify_new_version(actor, &record).await;
        Ok(Rotated {
            record,
            certificate,
        })
    }

    async fn rotate_record(
        &self,
        actor: Actor<'_>,
        current: &KeyRecord,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let provider = self.provider_of(current)?;
        if !provider.capabilities().can_create {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot create keys, so its keys cannot rotate",
                provider.id()
            )));
        }
        let rsa_bits = current
            .public_jwk
            .signature_len(current.alg)
            .filter(|_| current.alg.key_kind() == KeyKind::Rsa)
            .map_or(0, |bytes| u32::try_from(bytes * 8).unwrap_or(0));
        let version = current.version + 1;
        let backend_id = crate::catalog::version_id(&current.id, version);
        let material = provider
            .generate_key(
                &backend_id,
                KeySpec {
                    alg: current.alg,
                    rsa_bits,
                },
            )
            .await?;
        let (next, sealed) = Self::record_of(
            provider.as_ref(),
            current.tenant.as_deref(),
            current.kid.clone(),
            current.alg,
            material,
            version,
        );
        if let Err(e) = next.public_jwk.check(current.alg) {
            self.discard_orphan(provider.as_ref(), &next).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned an unusable public key for {}: {e}",
                provider.id(),
                current.alg
            ))
            .into());
        }
        let grace = self
            .catalog
            .policy(&current.id)
            .await?
            .grace
            .unwrap_or(DEFAULT_GRACE);
        let event = actor.event(Action::Rotate, &current.kid, &current.provider, "ok");
        let committed = async {
            let mut tx = self.audit.begin().await?;
            let grace_until = next.created_at + grace;
            self.catalog
                .rotate(&mut tx, current, &next, sealed.as_deref(), grace_until)
                .await?;
            tx.commit(event).await
        }
        .await;
        match committed {
            Ok(()) => {
                self.invalidate(&current.id);
                Ok(Arc::new(next))
            }
            Err(CatalogError::Conflict) => {
                self.discard_orphan(provider.as_ref(), &next).await;
                Err(GatewayError::KeyExists(format!(
                    "{} (rotated concurrently; try again)",
                    current.kid
                )))
            }
            Err(e) => {
                self.discard_orphan(provider.as_ref(), &next).await;
                Err(e.into())
            }
        }
    }

    /// Rotates every key whose policy makes it due at `now`, each claimed by one
    /// replica only. Returns what was tried: the key's record and the outcome.
    pub async fn rotate_due(
        &self,
        now: SystemTime,
    ) -> Vec<(KeyRecord, Result<Rotated, GatewayError>)> {
        let due = match self.catalog.due_rotations(now).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the keys due for rotation");
                return Vec::new();
            }
        };
        let mut done = Vec::new();
        for (id, rotated_at) in due {
            // The claim moves the key's due time on; exactly one replica wins it.
            match self.catalog.claim_rotation(&id, rotated_at, now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(key = %id, error = %e, "cannot claim a due rotation");
                    continue;
                }
            }
            let Ok(Some(current)) = self.catalog.get(&id).await else {
                continue;
            };
            let actor = Actor::scheduler(current.tenant.as_deref());
            let result = self.rotate_and_certify(actor, &current).await;
            done.push((current, result));
        }
        done
    }

    /// Retires every version whose grace period has ended by `now`: its backend
    /// key is deleted and it leaves the JWKS.
    pub async fn end_graces(&self, now: SystemTime) {
        let ended = match self.catalog.ended_graces(now).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the versions whose grace ended");
                return;
            }
        };
        for (record, version) in ended {
            match self.provider_of(&record) {
                Ok(provider) => match provider.delete_key(&record).await {
                    Ok(()) | Err(ProviderError::KeyNotFound(_)) => {}
                    Err(e) => {
                        // Kept in grace: tried again at the next run.
                        tracing::warn!(kid = %record.kid, version = version.version, error = %e,
                            "the backend did not delete a version whose grace ended");
                        continue;
                    }
                },
                Err(e) => tracing::warn!(kid = %record.kid, error = %e,
                    "retiring a version whose provider is gone; its backend key may remain"),
            }
            match self.catalog.retire(&record.id, version.version, now).await {
                Ok(_) => self.invalidate(&record.id),
                Err(e) => tracing::warn!(kid = %record.kid, error = %e, "cannot retire a version"),
            }
        }
    }

    /// Rotations committed and failed since start.
    pub fn rotation_counts(&self) -> (u64, u64) {
        (
            self.rotations[0].load(Ordering::Relaxed),
            self.rotations[1].load(Ordering::Relaxed),
        )
    }

    /// Sets the rotation policy of `kid` in `tenant`.
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn set_rotation(
        &self,
        tenant: Option<&str>,
        kid: &str,
        policy: RotationPolicy,
    ) -> Result<(), GatewayError> {
        let record = self.key(tenant, kid).await?;
        if self.catalog.set_policy(&record.id, policy).await? {
            Ok(())
        } else {
            Err(GatewayError::KeyNotFound(kid.to_owned()))
        }
    }

    /// The versions and rotation policy of `record`'s key.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn history(
        &self,
        record: &KeyRecord,
    ) -> Result<(Vec<KeyVersion>, RotationPolicy), GatewayError> {
        Ok((
            self.catalog.versions(&record.id).await?,
            self.catalog.policy(&record.id).await?,
        ))
    }

    /// Whether `signature` of `message` verifies with a published version of
    /// `kid` in `tenant` (the current one or one in grace).
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn verify(
        &self,
        tenant: Option<&str>,
        kid: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, GatewayError> {
        let record = self.key(tenant, kid).await?;
        if record.public_jwk.verify(record.alg, message, signature) {
            return Ok(true);
        }
        Ok(self
            .catalog
            .versions(&record.id)
            .await?
            .iter()
            .filter(|v| v.state == VersionState::Grace)
            .any(|v| v.public_jwk.verify(record.alg, message, signature)))
    }

    /// `tenant`'s JWKS document: `{"keys": [...]}` with the public JWK of every
    /// published version (current and in grace), each with its `x5c` when it has
    /// a certificate. Built once, then served from memory until a key of this
    /// gateway (or, on PostgreSQL, of any replica) changes.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn jwks_document(
        &self,
        tenant: Option<&str>,
    ) -> Result<Arc<JwksDocument>, GatewayError> {
        let name = tenant.unwrap_or("");
        let generation = self.invalidations.load(Ordering::Acquire);
        if let Some(document) = self.jwks_documents.get(name)
            && document.generation == generation
        {
            return Ok(Arc::clone(&document));
        }
        let keys: Vec<serde_json::Value> = self
            .jwks(tenant)
            .await?
            .into_iter()
            .map(|(jwk, x5c)| {
                let mut entry = serde_json::to_value(jwk).expect("a JWK serialises");
                if let Some(x5c) = x5c {
                    entry["x5c"] = x5c.into();
                }
                entry
            })
            .collect();
        let body = bytes::Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("JSON serialises"),
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let document = Arc::new(JwksDocument {
            generation,
            etag: format!("\"{}\"", hex::encode(digest)),
            body,
        });
        // Built from a read that began after `generation`: a change during the
        // build bumped the counter, so this document is never served for it.
        self.jwks_documents
            .insert(name.to_owned(), Arc::clone(&document));
        Ok(document)
    }

    /// The public JWKs of `tenant`'s published versions (current and in grace),
    /// each with its certificate chain when it has one.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn jwks(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(crate::crypto::PublicJwk, Option<Vec<String>>)>, GatewayError> {
        Ok(self.catalog.published_jwks(tenant).await?)
    }

    /// A page of `tenant`'s key records after `cursor` (a kid), in kid order, with
    /// their usage (this replica's counts flushed first); with `unused_since`, only
    /// keys that have not signed since then.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
        unused_since: Option<SystemTime>,
    ) -> Result<Vec<(KeyRecord, KeyUsage)>, GatewayError> {
        self.usage.flush().await?;
        Ok(self
            .catalog
            .list(tenant, cursor, limit, unused_since)
            .await?)
    }

    /// Probes every provider in parallel, each bounded by a timeout.
    pub async fn health(&self) -> Vec<ProviderHealth> {
        let registry = self.registry.load_full();
        futures::future::join_all((0..registry.providers.len()).map(|i| Self::probe(&registry, i)))
            .await
    }

    async fn probe(registry: &Registry, index: usize) -> ProviderHealth {
        let provider = &registry.providers[index].provider;
        let health = match tokio::time::timeout(HEALTH_TIMEOUT, provider.health()).await {
            Ok(health) => health,
            Err(_) => Health {
                ok: false,
                latency: HEALTH_TIMEOUT,
                error: Some(format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())),
            },
        };
        if health.ok {
            registry.initialised[index].store(true, Ordering::Release);
        }
        ProviderHealth {
            provider_id: provider.id().to_owned(),
            kind: provider.kind(),
            health,
        }
    }

    /// The providers not yet initialised, with why: each provider counts as
    /// initialised from its first successful health probe on (later outages show in
    /// [`Gateway::health`], not here). Probes the others now.
    pub async fn not_ready(&self) -> Vec<ProviderHealth> {
        let registry = self.registry.load_full();
        let waiting = (0..registry.providers.len())
            .filter(|&i| !registry.initialised[i].load(Ordering::Acquire))
            .map(|i| Self::probe(&registry, i));
        futures::future::join_all(waiting)
            .await
            .into_iter()
            .filter(|h| !h.health.ok)
            .collect()
    }

    /// Forgets everything cached about key `id` (deleted here or by another replica).
    pub fn invalidate(&self, id: &str) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.records.remove(id);
        for registered in &self.registry.load().providers {
            registered.provider.invalidate(id);
        }
    }

    /// Forgets everything cached (deletions may have been missed).
    pub fn invalidate_all(&self) {
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        self.records.clear();
        for registered in &self.registry.load().providers {
            registered.provider.invalidate_all();
        }
    }
}
