//! The [`Provider`] trait that every backend implements, native or guest, and the
//! types it speaks.

pub mod aws_kms;
pub mod credentials;
pub mod db;
pub mod http;
pub mod pkcs11;
pub mod remote;
pub mod vault;
pub mod wasm;

use std::fmt;
use std::time::Duration;

pub use crate::config::ProviderKind;
pub use crate::crypto::{Alg, ToSign};

use async_trait::async_trait;
use serde::Serialize;

use std::borrow::Cow;

use crate::catalog::{KeyRecord, SealedKey, version_id};
use crate::crypto::{PrivateKey, PublicJwk};

/// How many signs of one batch a provider without a batch operation runs at once.
pub const BATCH_CONCURRENCY: usize = 8;

/// What kind of key to create: its algorithm and, for RSA, its modulus size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub alg: Alg,
    /// Modulus bits of an RSA key (2048, 3072 or 4096); ignored for other algorithms.
    pub rsa_bits: u32,
}

impl KeySpec {
    /// `alg` with the default RSA size (2048 bits).
    pub fn of(alg: Alg) -> KeySpec {
        KeySpec {
            alg,
            rsa_bits: 2048,
        }
    }
}

/// What a provider can do, as advertised by `GET /providers`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub can_create: bool,
    pub can_import: bool,
    pub can_delete: bool,
    pub supported_algs: Vec<Alg>,
    pub default_alg: Alg,
    /// Whether the provider signs a client's digest (`digest` in a sign request)
    /// with the algorithms among `supported_algs` that sign over a hash.
    pub signs_digests: bool,
    /// Whether the provider signs in this process with a key the gateway holds,
    /// so that its signatures need no check against the public key.
    #[serde(skip)]
    pub signs_in_process: bool,
}

/// What a provider is told of a key version: the names the backend knows it
/// by, its algorithm and public key, and — for the `db` provider — its sealed
/// private key when the catalog read it with the record. Nothing else of the
/// catalog's row.
#[derive(Clone, Debug)]
pub struct KeyRef<'a> {
    /// The gateway-wide id of the key (every version of it).
    pub key_id: &'a str,
    /// The id of this version: the key id for version 1, else `<key id>@v<n>`.
    pub version_id: Cow<'a, str>,
    /// The backend's own name for this version.
    pub external_id: &'a str,
    pub alg: Alg,
    pub public_jwk: &'a PublicJwk,
    pub sealed: Option<&'a SealedKey>,
}

impl<'a> From<&'a KeyRecord> for KeyRef<'a> {
    fn from(record: &'a KeyRecord) -> Self {
        KeyRef {
            key_id: &record.id,
            version_id: if record.version <= 1 {
                Cow::Borrowed(record.id.as_str())
            } else {
                Cow::Owned(version_id(&record.id, record.version))
            },
            external_id: &record.external_id,
            alg: record.alg,
            public_jwk: &record.public_jwk,
            sealed: record.sealed.as_ref(),
        }
    }
}

impl Capabilities {
    /// Whether `alg` is among the supported algorithms.
    pub fn supports(&self, alg: Alg) -> bool {
        self.supported_algs.contains(&alg)
    }
}

/// What a provider returns for a new or imported key.
pub struct KeyMaterial {
    /// The backend's own name for the key (for many backends, the kid).
    pub external_id: String,
    /// The public half, as a JWK without `kid`/`alg` (the gateway adds them).
    pub public_jwk: PublicJwk,
    /// Secret material the gateway must store with the key record, already sealed
    /// by the provider. Stored in the same transaction as the record, so a key is
    /// never half-written.
    pub sealed_secret: Option<Vec<u8>>,
}

/// The result of a provider health probe.
#[derive(Clone, Debug)]
pub struct Health {
    pub ok: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

impl Health {
    /// The health of a probe that started at `started` and ended with `result`.
    pub fn of<E: fmt::Display>(started: std::time::Instant, result: Result<(), E>) -> Health {
        Health {
            ok: result.is_ok(),
            latency: started.elapsed(),
            error: result.err().map(|e| e.to_string()),
        }
    }
}

/// Why a provider operation failed. The API maps each variant to one status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The backend does not hold this key.
    #[error("key `{0}` not found in the backend")]
    KeyNotFound(String),
    /// The provider cannot do this operation or algorithm.
    #[error("{0}")]
    Unsupported(String),
    /// The request was well-formed JSON but its content is unusable (a bad JWK, …).
    #[error("{0}")]
    InvalidInput(String),
    /// The backend could not be reached.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("backend timed out")]
    Timeout,
    /// The backend answered with an error.
    #[error("backend error: {0}")]
    Backend(String),
    /// Something inside the gateway failed (storage, sealing).
    #[error("internal error: {0}")]
    Internal(String),
    /// The master key is not unsealed yet.
    #[error("{0}")]
    Sealed(String),
}

impl From<crate::crypto::seal::SealError> for ProviderError {
    fn from(e: crate::crypto::seal::SealError) -> Self {
        match e {
            crate::crypto::seal::SealError::Sealed(_) => ProviderError::Sealed(e.to_string()),
            other => ProviderError::Internal(other.to_string()),
        }
    }
}

impl ProviderError {
    /// This error with `redactor`'s secrets removed from its text.
    #[must_use]
    pub fn scrubbed(self, redactor: &crate::redact::Redactor) -> Self {
        match self {
            ProviderError::KeyNotFound(t) => ProviderError::KeyNotFound(redactor.scrub(&t)),
            ProviderError::Unsupported(t) => ProviderError::Unsupported(redactor.scrub(&t)),
            ProviderError::InvalidInput(t) => ProviderError::InvalidInput(redactor.scrub(&t)),
            ProviderError::Unavailable(t) => ProviderError::Unavailable(redactor.scrub(&t)),
            ProviderError::Backend(t) => ProviderError::Backend(redactor.scrub(&t)),
            ProviderError::Internal(t) => ProviderError::Internal(redactor.scrub(&t)),
            ProviderError::Sealed(t) => ProviderError::Sealed(t),
            ProviderError::Timeout => ProviderError::Timeout,
        }
    }
}

/// One backend that holds keys and signs with them.
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's id from kms.json.
    fn id(&self) -> &str;

    /// The provider's type.
    fn kind(&self) -> ProviderKind;

    /// What the provider can do.
    fn capabilities(&self) -> &Capabilities;

    /// Creates a new key named `kid` as `spec` says.
    ///
    /// # Errors
    /// [`ProviderError::Unsupported`] when the provider cannot create keys or this
    /// algorithm, and backend failures.
    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError>;

    /// Stores an existing private key under `kid`.
    ///
    /// # Errors
    /// [`ProviderError::Unsupported`] when the provider cannot import, and backend failures.
    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        alg: Alg,
    ) -> Result<KeyMaterial, ProviderError>;

    /// Signs a message, or a digest of one (only when the capabilities say
    /// `signs_digests`; the gateway has checked its length), with the key and
    /// its algorithm; the result is the JOSE form of the signature (raw `r‖s`
    /// for ECDSA). Signatures of every provider that does not sign in process
    /// are verified by the gateway before a client sees them.
    ///
    /// # Errors
    /// [`ProviderError::KeyNotFound`] when the backend lost the key, and backend failures.
    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError>;

    /// Signs every one of `inputs` with the key, in order. Default: one `sign` per
    /// input, [`BATCH_CONCURRENCY`] at a time; backends with a batch operation or
    /// in-process keys do better.
    ///
    /// # Errors
    /// As [`Provider::sign`]; one failure fails the batch.
    async fn sign_batch(
        &self,
        key: &KeyRef<'_>,
        inputs: ToSign<&[Vec<u8>]>,
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        use futures::{StreamExt, TryStreamExt};
        let calls: Vec<_> = inputs
            .bytes()
            .iter()
            .map(|bytes| self.sign(key, inputs.with(bytes.as_slice())))
            .collect();
        futures::stream::iter(calls)
            .buffered(BATCH_CONCURRENCY)
            .try_collect()
            .await
    }

    /// Deletes the key from the backend.
    ///
    /// # Errors
    /// Backend failures; a key the backend no longer has is not an error.
    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError>;

    /// Probes the backend.
    async fn health(&self) -> Health;

    /// Gets ready to sign with `key` soon (called at start for the keys that
    /// signed last): a provider that keeps keys in memory loads it.
    async fn warm(&self, _key: &KeyRef<'_>) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Drops anything cached for key `id` (another replica deleted it).
    fn invalidate(&self, _id: &str) {}

    /// Drops everything cached (deletions may have been missed).
    fn invalidate_all(&self) {}

    /// What only a guest reports: its counters, limits and named type; `None`
    /// for native providers.
    fn describe(&self) -> Option<GuestReport<'_>> {
        None
    }
}

/// What a guest provider reports of itself, for `GET /providers` and `/metrics`.
#[derive(Clone, Copy, Debug)]
pub struct GuestReport<'a> {
    pub stats: GuestStats,
    /// The limits it runs under.
    pub limits: &'a wasm::limits::GuestLimits,
    /// The named guest type it was configured as (`azure-kv`, …); `None` for a
    /// plain `wasm` entry.
    pub adapter: Option<&'a str>,
    /// Where its component came from: a file, or the pinned `oci://` reference.
    pub component: &'a str,
    /// The key id of the publisher whose signature was verified, if one was required.
    pub publisher: Option<&'a str>,
}

/// What a guest provider has been through, for operators.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestStats {
    pub traps: u64,
    pub timeouts: u64,
    pub denied_egress: u64,
    pub log_lines_dropped: u64,
    /// Instances dropped after a call because the call left resources behind.
    pub recycled: u64,
    pub instances_in_use: usize,
    pub instances: usize,
}
