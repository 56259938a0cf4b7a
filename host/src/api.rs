//! The REST API: the seed's remote-KMS contract (`POST /keys`, `POST /keys/{kid}/sign`,
//! `DELETE /keys/{kid}`, `GET /health`, `POST /keys/{kid}/import`) and kmsgw's
//! extensions (listing, JWKS, providers, health, readiness, audit, metrics, OpenAPI).
//!
//! Every route but `/health`, `/ready` and `/openapi.json` needs an API key once
//! kms.json configures any; each handler then checks the scope it needs.

mod certificates;
mod csc;
pub mod error;
mod keys;
mod openapi;
mod ops;
mod paging;
mod seal;
mod ui;

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::audit::Audit;
use crate::auth::{ApiKeys, Principal};
use crate::config::Scope;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::reload::Reloader;
pub use error::ApiError;
pub use openapi::document as openapi_document;

/// Default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares: one allocation, so that the clones axum makes
/// for each request (the router, every middleware, every extractor) cost one
/// reference count each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl From<Shared> for AppState {
    fn from(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub gateway: Arc<Gateway>,
    pub max_body_bytes: usize,
    /// Replaced whole by a reload.
    pub api_keys: Arc<ArcSwap<ApiKeys>>,
    pub audit: Audit,
    pub metrics: Arc<Metrics>,
    /// Reloads kms.json (absent in tests that build a state by hand).
    pub reloader: Option<Arc<Reloader>>,
    /// How long a CSC signature activation datum may be used.
    pub sad_lifetime: std::time::Duration,
    /// Whether the web console is served at `/ui` (`server.ui`).
    pub ui: bool,
    /// The master key and its seal (absent in tests that build a state by hand).
    pub custody: Option<Arc<crate::custody::Custody>>,
}

impl Shared {
    /// The parts for `gateway`, with metrics registered for it, no reloader, no
    /// custody, the console off and CSC activations valid for 120 s.
    pub fn new(
        gateway: Arc<Gateway>,
        max_body_bytes: usize,
        api_keys: ApiKeys,
        audit: Audit,
    ) -> Self {
        let metrics = Arc::new(Metrics::new(&gateway));
        Shared {
            gateway,
            max_body_bytes,
            api_keys: Arc::new(ArcSwap::from_pointee(api_keys)),
            audit,
            metrics,
            reloader: None,
            sad_lifetime: std::time::Duration::from_secs(120),
            ui: false,
            custody: None,
        }
    }
}

/// The caller of a request that passed [`authenticate`].
pub type Caller = Extension<Principal>;

impl Principal {
    /// `Ok` when this caller holds `scope`, else the 403 to answer.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`].
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.may(scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope))
        }
    }
}

/// The whole API as a router; `main` serves it, tests call it directly.
pub fn app(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    // Key operations need the master key: 503 `sealed` until it is unsealed.
    let key_routes = Router::new()
        .route("/keys", post(keys::create).get(keys::list))
        .route("/keys/{kid}", get(keys::get).delete(keys::delete))
        .route("/keys/{kid}/sign", post(keys::sign))
        .route("/keys/{kid}/sign/batch", post(keys::sign_batch))
        .route("/keys/{kid}/verify", post(keys::verify))
        .route("/keys/{kid}/rotate", post(keys::rotate))
        .route("/keys/{kid}/rotation", put(keys::set_rotation))
        .route("/keys/{kid}/import", post(keys::import))
        .route("/keys/{kid}/csr", post(certificates::csr))
        .route(
            "/keys/{kid}/certificate",
            post(certificates::import).get(certificates::chain),
        )
        .route("/keys/{kid}/certificate/issue", post(certificates::issue))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            seal::unsealed,
        ));
    let protected = Router::new()
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route("/providers", get(ops::providers))
        .route("/whoami", get(ops::whoami))
        .route("/health/kms", get(ops::health_kms))
        .route("/audit", get(ops::audit_page))
        .route("/audit/verify", get(ops::audit_verify))
        .route("/metrics", get(ops::metrics))
        .route("/admin/reload", post(ops::reload))
        .route("/admin/seal/rotate", post(seal::rotate).get(seal::rotation))
        .merge(key_routes)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            authenticate::<ApiError>,
        ));
    // Probes need no credential, but one that is presented must be valid: a client's
    // health check then reveals its own wrong or expired token.
    let probes = Router::new()
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            check_presented_credential,
        ));
    let mut public = Router::new().route("/openapi.json", get(openapi::serve));
    if state.ui {
        public = public.merge(ui::routes());
    }
    let mut app = protected
        .merge(csc::routes(state.clone()))
        .merge(probes)
        .merge(public)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        // A bug costs one request a 500, never the connection.
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Panicked.into_response()
        }))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ));
    // Without an exporter the request path is as if traces did not exist.
    if crate::telemetry::is_exporting() {
        app = app.layer(middleware::from_fn(crate::telemetry::request_span));
    }
    app.layer(
        TraceLayer::new_for_http()
            .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
            .on_response(DefaultOnResponse::new().level(Level::INFO))
            .on_failure(()),
    )
    .with_state(state)
}

/// Resolves the caller from `Authorization: Bearer …`; a failure is a 401 in
/// the error shape `E` of the routes it guards (the REST API's, CSC's).
async fn authenticate<E: From<ApiError>>(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, E> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let principal = state
        .api_keys
        .load()
        .authenticate(header)
        .map_err(|e| E::from(e.into()))?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

/// Lets a request without `Authorization` through, and one with it only when it
/// holds a valid API key (401 otherwise; any header passes when no keys are set).
async fn check_presented_credential(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(header) = request.headers().get(header::AUTHORIZATION) {
        state
            .api_keys
            .load()
            .authenticate(Some(header.as_bytes()))?;
    }
    Ok(next.run(request).await)
}

/// Counts every answered request by method, route pattern and status.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    state
        .metrics
        .count_request(method.as_str(), route, response.status());
    response
}

async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests;
