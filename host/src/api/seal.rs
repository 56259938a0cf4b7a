//! The master key's routes: `POST /admin/seal/rotate` starts a rotation in the
//! background (202), `GET /admin/seal/rotate` shows its progress; and the gate
//! that answers key operations 503 `sealed` until the master key is unsealed.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorResponses, JsonBody};
use super::{AppState, Caller};
use crate::audit::{Action, Event};
use crate::config::Scope;
use crate::custody::rotate::{Pace, RotationStatus};
use crate::providers::ProviderError;

/// The master key now and the rotation's progress.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SealState {
    /// The seal's name (`file`, `vault-transit:<mount>/<key>`, …).
    seal: String,
    /// The generation new items are sealed under; absent while sealed.
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u32>,
    rotation: RotationStatus,
}

fn state_of(custody: &crate::custody::Custody) -> SealState {
    SealState {
        seal: custody.seal.name(),
        generation: custody.master.generation(),
        rotation: custody.rotation.status(),
    }
}

fn custody(state: &AppState) -> Result<&std::sync::Arc<crate::custody::Custody>, ApiError> {
    state.custody.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            crate::error_code::ErrorCode::InvalidRequest,
            "this gateway has no master key custody",
        )
    })
}

/// How fast a rotation goes (both optional).
#[derive(serde::Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotateRequest {
    /// Sealed items rewrapped per transaction, 1 to 10000 (default 256).
    #[schema(minimum = 1, maximum = 10000)]
    batch: Option<usize>,
    /// Pause between transactions in milliseconds, at most 60000 (default 0).
    #[schema(maximum = 60000)]
    pause_ms: Option<u64>,
}

/// Starts a master key rotation: a new generation becomes current, and every
/// sealed item is rewrapped under it in the background while signs go on (a
/// rotation left unfinished is resumed instead). Progress: `GET` on this route.
#[utoipa::path(post, path = "/admin/seal/rotate", tag = "operations",
    request_body(content = RotateRequest, description = "Optional pacing"),
    responses((status = 202, description = "The rotation started; its state now", body = SealState),
        (status = 409, description = "A rotation is running", body = super::error::ErrorBody),
        ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Caller,
    JsonBody(request): JsonBody<RotateRequest>,
) -> Result<(StatusCode, Json<SealState>), ApiError> {
    principal.require(Scope::Admin)?;
    let default = Pace::default();
    let pace = Pace {
        batch: request.batch.unwrap_or(default.batch),
        pause: request
            .pause_ms
            .map_or(default.pause, std::time::Duration::from_millis),
    };
    if !(1..=10_000).contains(&pace.batch) || pace.pause.as_millis() > 60_000 {
        return Err(ApiError::bad_request(
            crate::error_code::ErrorCode::InvalidField,
            "batch is 1 to 10000 and pauseMs at most 60000",
        ));
    }
    let custody = std::sync::Arc::clone(custody(&state)?);
    if let Some(cause) = custody.master.sealed_because() {
        return Err(sealed(cause));
    }
    if custody.rotation.status().running {
        return Err(ApiError::bad_request(
            crate::error_code::ErrorCode::RotationRunning,
            "a master key rotation is running already; follow it with GET /admin/seal/rotate",
        ));
    }
    let audit = state.audit.clone();
    let actor = principal.key_id.clone();
    tokio::spawn({
        let custody = std::sync::Arc::clone(&custody);
        async move {
            let result = custody.rotate(true, pace, &|_, _| {}).await;
            let outcome = match &result {
                Ok(done) => {
                    tracing::info!(
                        generation = done.generation,
                        rewrapped = done.rewrapped,
                        "master key rotation finished"
                    );
                    "ok"
                }
                Err(e) => {
                    tracing::error!(error = %e, "master key rotation failed; POST again to resume");
                    "failed"
                }
            };
            custody.count(Action::SealRotate.as_str(), outcome).await;
            let event = Event {
                api_key: actor,
                tenant: None,
                action: Action::SealRotate,
                kid: None,
                provider: Some(custody.seal.name()),
                outcome,
                message_sha256s: Vec::new(),
            };
            if let Err(e) = audit.record_durably(event).await {
                tracing::error!(error = %e, "the seal-rotate record could not be written");
            }
        }
    });
    // The answer shows the run as started, whatever the task has done yet.
    let mut shown = state_of(&custody);
    shown.rotation.running = true;
    Ok((StatusCode::ACCEPTED, Json(shown)))
}

/// The master key's generation and the last rotation's progress.
#[utoipa::path(get, path = "/admin/seal/rotate", tag = "operations",
    responses((status = 200, description = "The master key now", body = SealState), ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn rotation(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Json<SealState>, ApiError> {
    principal.require(Scope::Admin)?;
    Ok(Json(state_of(custody(&state)?)))
}

fn sealed(cause: String) -> ApiError {
    ApiError::Gateway(ProviderError::Sealed(format!("the gateway is sealed: {cause}")).into())
}

/// Answers 503 `sealed` while the master key is not unsealed.
pub async fn unsealed(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let cause = state.custody.as_ref().and_then(|c| {
        c.master
            .sealed_because()
            .map(|cause| format!("seal `{}`: {cause}", c.seal.name()))
    });
    match cause {
        Some(cause) => sealed(cause).into_response(),
        None => next.run(request).await,
    }
}
