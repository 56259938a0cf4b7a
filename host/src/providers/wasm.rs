//! The `wasm` provider: a guest adapter component run sandboxed in wasmtime. Each
//! call runs on a warm pooled instance under a deadline and a memory cap; a trap
//! costs only that call (502) and the instance, an expired deadline 504. Every
//! signature a guest returns is verified before it reaches a client.

pub mod bindings;
pub mod host;
pub mod limits;
pub mod pool;
pub mod runtime;
pub mod versions;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;

use self::bindings::kmsgw::adapter::types::{
    Error as GuestError, KeyMaterial as GuestKeyMaterial, KeySpec as GuestKeySpec,
};
use self::host::{AllowedHost, GuestShared};
use self::limits::{
    GuestLimits, MAX_EXTERNAL_ID_BYTES, MAX_GUEST_TEXT_BYTES, MAX_PUBLIC_JWK_BYTES,
    max_signature_bytes, sanitize,
};
use self::pool::{Lease, Pool};
use self::runtime::{LoadError, WasmRuntime};
use self::versions::{guest_alg, host_alg};
use super::{
    Alg, Capabilities, GuestReport, GuestStats, Health, KeyMaterial, KeyRef, KeySpec, Provider,
    ProviderError, ProviderKind, ToSign,
};
use crate::catalog::Catalog;
use crate::config::ComponentSource;
use crate::crypto::master::MasterKey;
use crate::crypto::{KeyKind, PrivateKey, PublicJwk};
use crate::providers::credentials::Credentials;
use crate::redact::Redactor;

/// How to run one guest provider.
pub struct WasmOptions {
    pub id: String,
    pub component: ComponentSource,
    pub sha256: Option<String>,
    pub config: serde_json::Value,
    pub allowed_hosts: Vec<AllowedHost>,
    /// Credentials the host adds to requests to these destinations (`egressAuth`).
    pub egress_auth: Vec<(AllowedHost, Arc<Credentials>)>,
    pub limits: GuestLimits,
    /// The named guest type (`azure-kv`, …), for `GET /providers`.
    pub adapter: Option<String>,
    /// The key id of the publisher whose signature was verified, for `GET /providers`.
    pub publisher: Option<String>,
}

/// Why a guest call did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum GuestFailure {
    #[error("guest error: {0:?}")]
    Guest(GuestError),
    #[error("guest trapped: {0}")]
    Trap(String),
    #[error("guest did not answer in time")]
    Timeout,
    #[error("all {0} guest instances are busy")]
    Busy(usize),
    #[error("{0}")]
    Init(String),
    /// `init` found the config invalid; the message may start with the field's path.
    #[error("init refused the config: {0}")]
    Config(String),
}

/// Why a guest provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum WasmStartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("guest `{id}` failed to start: {reason}")]
    Init { id: String, reason: String },
    /// The guest refused its config; `field` is the JSON path inside the config
    /// it named, if any.
    #[error("{message}")]
    Config {
        field: Option<String>,
        message: String,
    },
}

/// Splits a guest's config complaint `vaultUrl: must be …` into the field's JSON
/// path and the message; `None` when it names no field.
fn config_field(message: &str) -> (Option<String>, String) {
    match message.split_once(": ") {
        Some((field, rest))
            if !field.is_empty()
                && field.len() <= 128
                && field.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']')
                }) =>
        {
            (Some(field.to_owned()), rest.to_owned())
        }
        _ => (None, message.to_owned()),
    }
}

/// Sorts the result of a timed guest call into its outcome.
pub(crate) fn guest_call_outcome<T>(
    outcome: Result<wasmtime::Result<Result<T, GuestError>>, tokio::time::error::Elapsed>,
) -> Result<T, GuestFailure> {
    match outcome {
        Err(_) => Err(GuestFailure::Timeout),
        Ok(Err(trap)) => Err(GuestFailure::Trap(format!("{trap:#}"))),
        Ok(Ok(Err(e))) => Err(GuestFailure::Guest(e)),
        Ok(Ok(Ok(value))) => Ok(value),
    }
}

/// A guest's error becomes the provider error of its kind, its text cut and
/// escaped before it reaches a client or the log.
/// A guest's error as a provider error: its text with the egress credentials'
/// secrets removed (before it is cut, so no part of one remains), escaped and cut.
fn guest_error(e: GuestError, redactor: &Redactor) -> ProviderError {
    let text = |m: String| sanitize(&redactor.scrub(&m), MAX_GUEST_TEXT_BYTES);
    match e {
        GuestError::NotFound(m) => ProviderError::KeyNotFound(text(m)),
        GuestError::Unsupported(m) => ProviderError::Unsupported(text(m)),
        GuestError::InvalidInput(m) => ProviderError::InvalidInput(text(m)),
        GuestError::Denied(m) => ProviderError::Backend(format!("denied: {}", text(m))),
        GuestError::Unavailable(m) => ProviderError::Unavailable(text(m)),
        GuestError::Internal(m) => ProviderError::Backend(text(m)),
    }
}

/// The algorithms a guest signs, with `Ed25519` beside `EdDSA` (one signature
/// under two JOSE names).
fn with_ed25519(mut algs: Vec<Alg>) -> Vec<Alg> {
    if algs.contains(&Alg::EdDSA) && !algs.contains(&Alg::Ed25519) {
        algs.push(Alg::Ed25519);
    }
    algs
}

/// A guest adapter as a provider.
pub struct WasmProvider {
    id: String,
    adapter: Option<String>,
    /// Where the component came from (a file, or the pinned `oci://` reference).
    component: String,
    publisher: Option<String>,
    capabilities: Capabilities,
    pool: Pool,
    shared: Arc<GuestShared>,
}

/// Runs a call on a leased instance under the call deadline (or the one given)
/// and settles it.
macro_rules! guest_call {
    ($self:ident, $op:literal, |$exports:ident, $store:ident| $call:expr) => {
        guest_call!(
            $self,
            $op,
            $self.shared.limits.timeout(),
            |$exports, $store| $call
        )
    };
    ($self:ident, $op:literal, $deadline:expr, |$exports:ident, $store:ident| $call:expr) => {{
        let mut lease = $self
            .pool
            .acquire()
            .await
            .map_err(|f| $self.failure($op, f, None))?;
        let outcome = {
            let instance = lease.instance();
            let $store = &mut instance.store;
            let $exports = &instance.guest;
            let span = $crate::span!(
                "guest.call",
                otel.name = concat!("guest ", $op),
                guest.function = $op
            );
            tracing::Instrument::instrument(tokio::time::timeout($deadline, $call), span).await
        };
        $self.settle($op, lease, outcome)
    }};
}

impl WasmProvider {
    /// Loads the component, makes and `init`s every instance, and reports the
    /// guest's capabilities.
    ///
    /// # Errors
    /// [`WasmStartError`] when the component cannot be loaded or `init` fails.
    pub async fn start(
        runtime: &WasmRuntime,
        options: WasmOptions,
        catalog: Catalog,
        master: Arc<MasterKey>,
    ) -> Result<Self, WasmStartError> {
        let pre = runtime.load(&options.component, options.sha256.as_deref())?;
        let shared = Arc::new(GuestShared::new(
            &options.id,
            options.limits,
            (options.allowed_hosts, options.egress_auth),
            catalog,
            master,
        ));
        let pool = Pool::new(
            runtime.engine().clone(),
            pre,
            Arc::clone(&shared),
            options.config.to_string(),
        );
        let init_error = |reason: String| WasmStartError::Init {
            id: options.id.clone(),
            reason,
        };
        let scrubbed = |text: &str| sanitize(&shared.redactor.scrub(text), MAX_GUEST_TEXT_BYTES);
        let caps = pool.warm_up().await.map_err(|e| match e {
            GuestFailure::Config(message) => {
                let (field, message) = config_field(&scrubbed(&message));
                WasmStartError::Config { field, message }
            }
            other => init_error(scrubbed(&other.to_string())),
        })?;
        let capabilities = Capabilities {
            can_create: caps.can_create,
            can_import: caps.can_import,
            can_delete: caps.can_delete,
            supported_algs: with_ed25519(caps.algs.iter().copied().map(host_alg).collect()),
            default_alg: host_alg(caps.default_alg),
            signs_digests: caps.signs_digests,
            signs_in_process: false,
        };
        if capabilities.supported_algs.is_empty()
            || !capabilities.supports(capabilities.default_alg)
        {
            return Err(init_error(
                "init returned no algorithms, or a default that is not among them".into(),
            ));
        }
        Ok(WasmProvider {
            id: options.id,
            adapter: options.adapter,
            component: options.component.to_string(),
            publisher: options.publisher,
            capabilities,
            pool,
            shared,
        })
    }

    fn failure(&self, op: &str, failure: GuestFailure, stderr: Option<String>) -> ProviderError {
        match failure {
            GuestFailure::Guest(e) => guest_error(e, &self.shared.redactor),
            GuestFailure::Trap(detail) => {
                self.shared.counters.traps.fetch_add(1, Ordering::Relaxed);
                let shown = |text: &str| {
                    sanitize(&self.shared.redactor.scrub(text), 4 * MAX_GUEST_TEXT_BYTES)
                };
                let stderr = shown(&stderr.unwrap_or_default());
                tracing::error!(provider = %self.id, op, trap = %shown(&detail), stderr,
                    "guest trapped; its instance is replaced");
                ProviderError::Backend(format!("guest `{}` crashed during {op}", self.id))
            }
            GuestFailure::Timeout => {
                self.shared
                    .counters
                    .timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %self.id, op, "guest missed its deadline; its instance is replaced");
                ProviderError::Timeout
            }
            GuestFailure::Busy(n) => {
                ProviderError::Unavailable(format!("all {n} instances of `{}` are busy", self.id))
            }
            GuestFailure::Init(reason) | GuestFailure::Config(reason) => {
                ProviderError::Unavailable(format!(
                    "guest `{}`: {}",
                    self.id,
                    sanitize(&self.shared.redactor.scrub(&reason), MAX_GUEST_TEXT_BYTES)
                ))
            }
        }
    }

    fn settle<T>(
        &self,
        op: &str,
        lease: Lease<'_>,
        outcome: Result<wasmtime::Result<Result<T, GuestError>>, tokio::time::error::Elapsed>,
    ) -> Result<T, ProviderError> {
        match guest_call_outcome(outcome) {
            Ok(value) => {
                lease.release();
                Ok(value)
            }
            Err(GuestFailure::Guest(e)) => {
                lease.release();
                Err(guest_error(e, &self.shared.redactor))
            }
            // The instance may be mid-way through anything: drop it with the lease.
            Err(failure) => {
                let stderr = lease.stderr();
                drop(lease);
                Err(self.failure(op, failure, Some(stderr)))
            }
        }
    }

    fn material(&self, material: GuestKeyMaterial) -> Result<KeyMaterial, ProviderError> {
        self.bounded(
            "external id",
            material.external_id.len(),
            MAX_EXTERNAL_ID_BYTES,
        )?;
        self.bounded(
            "public JWK",
            material.public_jwk.len(),
            MAX_PUBLIC_JWK_BYTES,
        )?;
        let jwk: PublicJwk = serde_json::from_str(&material.public_jwk).map_err(|e| {
            ProviderError::Backend(format!(
                "guest `{}` returned a public JWK that is not a JWK: {e}",
                self.id
            ))
        })?;
        // The gateway checks the key against the algorithm when it records it.
        Ok(KeyMaterial {
            external_id: material.external_id,
            public_jwk: jwk.unlabelled(),
            sealed_secret: None,
        })
    }
}

impl WasmProvider {
    /// Refuses an answer larger than the host keeps (502 with a short message).
    fn bounded(&self, what: &str, len: usize, max: usize) -> Result<(), ProviderError> {
        if len <= max {
            return Ok(());
        }
        tracing::error!(provider = %self.id, what, len, max, "guest returned an oversized answer");
        Err(ProviderError::Backend(format!(
            "guest `{}` returned a {len}-byte {what}; the gateway accepts at most {max} bytes",
            self.id
        )))
    }
}

#[async_trait]
impl Provider for WasmProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Wasm
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        let spec = GuestKeySpec {
            alg: guest_alg(spec.alg),
            rsa_bits: if spec.alg.key_kind() == KeyKind::Rsa {
                spec.rsa_bits
            } else {
                0
            },
        };
        // Key generation (RSA above all) takes far longer in wasm than a sign.
        let deadline = self.shared.limits.generate_timeout();
        let material = guest_call!(self, "generate-key", deadline, |guest, store| guest
            .generate_key(store, kid, spec))?;
        self.material(material)
    }

    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        let jwk = key
            .private_jwk()
            .map_err(|e| ProviderError::Internal(e.to_string()))?;
        let material = guest_call!(self, "import-key", |guest, store| guest.import_key(
            store,
            kid,
            jwk,
            guest_alg(alg)
        ))?;
        self.material(material)
    }

    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let started = Instant::now();
        let alg = guest_alg(key.alg);
        let signature = match input {
            ToSign::Message(message) => guest_call!(self, "sign", |guest, store| guest.sign(
                store,
                key.external_id,
                message,
                alg
            ))?,
            ToSign::Digest(digest) => guest_call!(self, "sign-digest", |guest, store| guest
                .sign_digest(store, key.external_id, digest, alg))?,
        };
        // The gateway verifies the signature before a client sees it.
        self.bounded("signature", signature.len(), max_signature_bytes(key.alg))?;
        tracing::debug!(provider = %self.id, elapsed_us = started.elapsed().as_micros() as u64, "guest signed");
        Ok(signature)
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        match guest_call!(self, "delete-key", |guest, store| guest
            .delete_key(store, key.external_id))
        {
            Ok(()) | Err(ProviderError::KeyNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let result: Result<(), ProviderError> =
            async { guest_call!(self, "health", |guest, store| guest.health(store)) }.await;
        Health::of(started, result)
    }

    fn describe(&self) -> Option<GuestReport<'_>> {
        let counters = &self.shared.counters;
        Some(GuestReport {
            stats: GuestStats {
                traps: counters.traps.load(Ordering::Relaxed),
                timeouts: counters.timeouts.load(Ordering::Relaxed),
                denied_egress: counters.denied_egress.load(Ordering::Relaxed),
                log_lines_dropped: counters.log_lines_dropped.load(Ordering::Relaxed),
                recycled: counters.recycled.load(Ordering::Relaxed),
                instances_in_use: self.pool.in_use(),
                instances: self.pool.size(),
            },
            limits: &self.shared.limits,
            adapter: self.adapter.as_deref(),
            component: &self.component,
            publisher: self.publisher.as_deref(),
        })
    }
}
