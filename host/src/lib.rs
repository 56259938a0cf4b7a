//! kmsgw: a signing gateway that routes key and sign requests to the backend
//! ("provider") that holds each key.
//!
//! Modules:
//! - [`config`]: `kms.json` → typed [`config::Config`], with `${VAR}` expansion and
//!   validation that reports every problem with its JSON path.
//! - [`crypto`]: JWK ⇄ P-256 keys, base64 forms, the host signer, and [`crypto::seal`]
//!   (AES-256-GCM sealing under the master key).
//! - [`catalog`]: the sqlx store of key records (SQLite or PostgreSQL) and its migrations.
//! - [`providers`]: the [`providers::Provider`] trait and the built-in backends.
//! - [`gateway`]: the provider registry and key catalog together: resolves a kid to
//!   its provider and caches what the hot path needs.
//! - [`api`]: the axum router, request/response types, the one error → status map,
//!   API-key checks and the OpenAPI document.
//! - [`auth`]: API keys, scopes and tenants.
//! - [`audit`]: the hash-chained audit log and its verification.
//! - [`metrics`]: the Prometheus metrics of `/metrics`.
//! - [`check`]: `kmsgw adapter check`, the conformance run for guest adapters.
//! - [`server`]: start-up glue shared by the binary and the tests: settings, listening,
//!   graceful shutdown.

pub mod api;
pub mod audit;
pub mod auth;
pub mod catalog;
pub mod check;
pub mod config;
pub mod crypto;
pub mod gateway;
pub mod metrics;
pub mod providers;
pub mod server;
pub mod usage;
