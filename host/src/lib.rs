//! kmsgw: a signing gateway that routes key and sign requests to the backend
//! ("provider") that holds each key.
//!
//! Modules:
//! - [`config`]: `kms.json` → typed [`config::Config`], with `${VAR}` expansion and
//!   validation that reports every problem with its JSON path.
//! - [`crypto`]: the algorithms, JWKs of every key type, private keys and host
//!   signers, signature checks, base64 forms, and [`crypto::seal`] (AES-256-GCM
//!   sealing under the master key).
//! - [`catalog`]: the sqlx store of key records (SQLite or PostgreSQL) and its migrations.
//! - [`providers`]: the [`providers::Provider`] trait and the built-in backends.
//! - [`gateway`]: the provider registry and key catalog together: resolves a kid to
//!   its provider and caches what the hot path needs.
//! - [`api`]: the axum router, request/response types, the one error → status map,
//!   API-key checks and the OpenAPI document.
//! - [`auth`]: API keys, scopes and tenants.
//! - [`audit`]: the hash-chained audit log and its verification.
//! - [`metrics`]: the Prometheus metrics of `/metrics`.
//! - [`usage`]: per-key sign counts and last use, counted in memory, flushed in batches.
//! - [`scheduler`]: scheduled rotations and the end of grace periods.
//! - [`check`]: `kmsgw adapter check`, the conformance run for guest adapters.
//! - [`server`]: start-up glue shared by the binary and the tests: settings, listening,
//!   graceful shutdown.

pub mod api;
pub mod assembly;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod gateway;
pub mod metrics;
pub mod providers;
pub mod redact;
pub mod reload;
pub mod scaffold;
pub mod scheduler;
pub mod server;
pub mod usage;
pub mod x509;
