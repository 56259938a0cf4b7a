//! The REST API: the seed's remote-KMS contract (`POST /keys`, `POST /keys/{kid}/sign`,
//! `DELETE /keys/{kid}`, `GET /health`, `POST /keys/{kid}/import`) and kmsgw's
//! extensions (listing, JWKS, providers, provider health).

pub mod error;
mod keys;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::gateway::Gateway;
use crate::providers::{Capabilities, ProviderKind};
pub use error::ApiError;

/// Default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub gateway: Arc<Gateway>,
    pub max_body_bytes: usize,
}

/// The whole API as a router; `main` serves it, tests call it directly.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/keys", post(keys::create).get(keys::list))
        .route("/keys/{kid}", get(keys::get).delete(keys::delete))
        .route("/keys/{kid}/sign", post(keys::sign))
        .route("/keys/{kid}/import", post(keys::import))
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route("/providers", get(providers))
        .route("/health", get(health))
        .route("/health/kms", get(health_kms))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
                .on_response(DefaultOnResponse::new().level(Level::INFO))
                .on_failure(()),
        )
        .with_state(state)
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[derive(Serialize)]
struct Liveness {
    ok: bool,
}

/// `GET /health`: the contract's liveness probe.
async fn health() -> Json<Liveness> {
    Json(Liveness { ok: true })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProviderHealthLine {
    provider_id: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    ok: bool,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /health/kms`: every provider probed in parallel (EUDIPLO's shape).
async fn health_kms(State(state): State<AppState>) -> Json<Vec<ProviderHealthLine>> {
    let lines = state
        .gateway
        .health()
        .await
        .into_iter()
        .map(|h| ProviderHealthLine {
            provider_id: h.provider_id,
            kind: h.kind,
            ok: h.health.ok,
            latency_ms: u64::try_from(h.health.latency.as_millis()).unwrap_or(u64::MAX),
            error: h.health.error,
        })
        .collect();
    Json(lines)
}

#[derive(Serialize)]
struct ProviderInfo {
    id: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    capabilities: Capabilities,
}

/// `GET /providers`: what each configured provider is and can do.
async fn providers(State(state): State<AppState>) -> Json<Vec<ProviderInfo>> {
    Json(
        state
            .gateway
            .providers()
            .iter()
            .map(|r| ProviderInfo {
                id: r.provider.id().to_owned(),
                kind: r.provider.kind(),
                description: r.description.clone(),
                capabilities: r.provider.capabilities().clone(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests;
