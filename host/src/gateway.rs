//! The gateway: the provider registry and the key catalog together. It resolves a
//! kid to its record and provider, keeps records in memory after first use (the sign
//! hot path does no database round trip once warm), and keeps the catalog and the
//! backends consistent when something fails half-way. Its parts: [`registry`]
//! (the providers and their health), `keys` (create, import, delete), `signing`
//! (single, batch, the signature self-check, verify), `rotation` (versions and
//! grace periods), `certificates` and `jwks` (the JWKS document).

mod certificates;
mod jwks;
mod keys;
mod reads;
mod registry;
mod rotation;
mod signing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use prometheus::{HistogramOpts, HistogramVec};
use quick_cache::sync::Cache;

pub use certificates::IssueRequest;
pub use jwks::JwksDocument;
pub use keys::{NewKey, Retraction};
pub use registry::{ProviderHealth, Registered, Registry};
pub use rotation::{DEFAULT_GRACE, Rotated};

use crate::audit::Audit;
use crate::catalog::{Catalog, CatalogError, KeyRecord, key_id};
use crate::config::CacheConfig;
use crate::error_code::ErrorCode;
use crate::providers::{Alg, Provider, ProviderError};
use crate::usage::Usage;

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
    /// A digest of the wrong length for the key's algorithm.
    #[error("{0}")]
    InvalidDigest(String),
    /// A digest for a key whose algorithm signs the message itself.
    #[error("{0}")]
    DigestNotSupported(String),
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

/// Sign latency buckets in seconds: 50 µs to 5 s.
const SIGN_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// The provider registry and key catalog.
pub struct Gateway {
    registry: ArcSwap<Registry>,
    catalog: Catalog,
    /// Sign latency per provider.
    sign_seconds: HistogramVec,
    /// Records by gateway-wide key id, least recently used evicted first.
    records: Cache<String, Arc<KeyRecord>>,
    /// Where records missing from `records` are read, many per query.
    reads: reads::ColdReads,
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
    /// Each tenant's JWKS as last built (`""`: outside tenants).
    jwks_documents: DashMap<String, Arc<jwks::TenantJwks>>,
    /// Which keys the latest invalidations were for, so a JWKS re-reads only them.
    jwks_changes: std::sync::Mutex<jwks::Changes>,
}

/// A kid the API accepts: 1 to 128 characters that need no escaping in a URL path.
pub fn valid_kid(kid: &str) -> bool {
    (1..=128).contains(&kid.len())
        && kid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '~'))
}

impl GatewayError {
    /// The stable code (and so the status) a client gets for this error.
    pub fn code(&self) -> ErrorCode {
        use CatalogError as C;
        use ProviderError as P;
        match self {
            GatewayError::KeyNotFound(_) => ErrorCode::KeyNotFound,
            GatewayError::ProviderNotFound(_) => ErrorCode::ProviderNotFound,
            GatewayError::KeyExists(_) => ErrorCode::KeyExists,
            GatewayError::InvalidInput(_) => ErrorCode::InvalidRequest,
            GatewayError::InvalidJwk(_) => ErrorCode::InvalidJwk,
            GatewayError::Unsupported(_) => ErrorCode::UnsupportedOperation,
            GatewayError::InvalidDigest(_) => ErrorCode::InvalidDigest,
            GatewayError::DigestNotSupported(_) => ErrorCode::DigestNotSupported,
            GatewayError::UnsupportedAlg { .. } => ErrorCode::UnsupportedAlgByProvider,
            GatewayError::ProviderGone { .. } => ErrorCode::ProviderNotConfigured,
            GatewayError::Catalog(c) => match c {
                C::StorageFull(_) => ErrorCode::StorageFull,
                C::Unavailable(_) => ErrorCode::StorageUnavailable,
                C::Conflict => ErrorCode::KeyChanged,
                _ => ErrorCode::InternalError,
            },
            GatewayError::Certificate(c) => c.code(),
            GatewayError::Provider(p) => match p {
                P::KeyNotFound(_) => ErrorCode::KeyNotFound,
                P::Unsupported(_) => ErrorCode::UnsupportedOperation,
                P::InvalidInput(_) => ErrorCode::InvalidRequest,
                P::Unavailable(_) => ErrorCode::BackendUnavailable,
                P::Timeout => ErrorCode::BackendTimeout,
                P::Backend(_) => ErrorCode::BackendError,
                P::Internal(_) => ErrorCode::InternalError,
                P::Sealed(_) => ErrorCode::Sealed,
            },
        }
    }
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
            reads: reads::ColdReads::new(catalog.clone()),
            catalog,
            sign_seconds,
            records: Cache::new(CacheConfig::default().keys),
            invalidations: AtomicU64::new(0),
            jwks_documents: DashMap::new(),
            jwks_changes: std::sync::Mutex::default(),
        }
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
            return Err(GatewayError::KeyNotFound(
                crate::audit::recorded(kid).into_owned(),
            ));
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
        let span = crate::span!("catalog.key", cached = tracing::field::Empty);
        if let Some(record) = self.records.get(id) {
            span.record("cached", true);
            return Ok(Some(record));
        }
        span.record("cached", false);
        let seen = self.invalidations.load(Ordering::Acquire);
        let read = tracing::Instrument::instrument(self.reads.get(id), span);
        let Some(record) = read.await? else {
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

    fn provider_of(&self, record: &KeyRecord) -> Result<Arc<dyn Provider>, GatewayError> {
        let registry = self.registry.load();
        registry
            .index_of_record(record)
            .map(|i| Arc::clone(&registry.providers[i].provider))
    }

    /// Forgets everything cached about key `id` (deleted here or by another replica).
    pub fn invalidate(&self, id: &str) {
        {
            let mut changes = self.jwks_changes.lock().expect("changes lock");
            let generation = self.invalidations.fetch_add(1, Ordering::AcqRel) + 1;
            changes.record(generation, Some(id));
        }
        self.records.remove(id);
        for registered in &self.registry.load().providers {
            registered.provider.invalidate(id);
        }
    }

    /// Forgets everything cached (deletions may have been missed).
    pub fn invalidate_all(&self) {
        {
            let mut changes = self.jwks_changes.lock().expect("changes lock");
            let generation = self.invalidations.fetch_add(1, Ordering::AcqRel) + 1;
            changes.record(generation, None);
        }
        self.records.clear();
        for registered in &self.registry.load().providers {
            registered.provider.invalidate_all();
        }
    }
}

/// A gateway over one `db` provider on a fresh SQLite catalog, recording its
/// changes, for the unit tests of its parts.
#[cfg(test)]
pub(crate) async fn test_gateway(
    dir: &tempfile::TempDir,
    more: Vec<Registered>,
) -> (Gateway, Audit) {
    let catalog = crate::catalog::test_catalog(dir).await;
    let master = Arc::new(crate::crypto::master::MasterKey::from_bytes(&[7; 32]));
    let db = crate::providers::db::DbProvider::new("db".into(), catalog.clone(), master);
    let mut providers = vec![Registered {
        provider: Arc::new(db),
        description: None,
    }];
    providers.extend(more);
    let audit = Audit::start(&crate::config::AuditConfig::default(), catalog.clone());
    let gateway = Gateway::new(providers, "db".into(), catalog).with_audit(audit.clone());
    (gateway, audit)
}
