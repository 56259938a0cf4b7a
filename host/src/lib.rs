//! kmsgw: a signing gateway that routes key and sign requests to the backend
//! ("provider") that holds each key.
//!
//! Modules, from the bottom up:
//! - [`crypto`]: the algorithms, JWKs of every key type, private keys and host
//!   signers, signature checks, base64 forms, and [`crypto::seal`] (AES-256-GCM
//!   sealing under the master key).
//! - [`error_code`]: the stable error codes of the API, each with its one status.
//! - [`redact`]: keeping a provider entry's secrets out of what its backend says.
//! - [`config`]: `kms.json` → typed [`config::Config`], with `${VAR}` expansion,
//!   validation that reports every problem with its JSON path, and the
//!   vocabulary of provider types.
//! - [`catalog`]: the sqlx store of key records, versions, certificates, usage
//!   counts and guest storage (SQLite or PostgreSQL), its write transactions and
//!   migrations.
//! - [`x509`]: certification requests and certificates signed through a provider,
//!   strict names, and the checks of an imported chain.
//! - [`audit`]: the hash-chained audit log, its store and its verification.
//! - [`usage`]: per-key sign counts and last use, counted in memory, flushed in batches.
//! - [`auth`]: API keys, scopes and tenants.
//! - [`providers`]: the [`providers::Provider`] trait, the built-in backends, the
//!   guest host ([`providers::wasm`]) and the credentials the host holds for them.
//! - [`gateway`]: the provider registry and key catalog together: resolves a kid to
//!   its provider, signs, rotates, certifies and builds the JWKS.
//! - [`metrics`]: the Prometheus metrics of `/metrics`.
//! - [`assembly`]: kms.json's provider entries turned into running providers.
//! - [`reload`]: re-reading kms.json without a restart.
//! - [`check`]: `kmsgw adapter check`, the conformance run for guest adapters.
//! - [`scaffold`]: `kmsgw adapter new|build|wit`, guest projects outside this repository.
//! - [`api`]: the axum router, request/response types, the one error → status map,
//!   API-key checks and the OpenAPI document.
//! - [`scheduler`]: scheduled rotations, certificate renewals and the end of grace periods.
//! - [`server`]: start-up glue shared by the binary and the tests: settings, listening,
//!   graceful shutdown.
//! - [`telemetry`]: logs, and OpenTelemetry traces over OTLP when the `OTEL_*`
//!   variables ask for them.
//! - [`client`]: `kmsgw keys|certs|audit|providers|health`, a client of a running
//!   gateway's REST API.

pub mod api;
pub mod assembly;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod client;
pub mod config;
pub mod crypto;
pub mod custody;
pub mod distribution;
pub mod error_code;
pub mod gateway;
pub mod maintenance;
pub mod metrics;
pub mod providers;
pub mod redact;
pub mod reload;
pub mod scaffold;
pub mod scheduler;
pub mod server;
pub mod telemetry;
pub mod usage;
pub mod x509;
