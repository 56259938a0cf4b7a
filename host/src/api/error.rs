//! API errors: the only place an HTTP status and a stable `code` are chosen.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use utoipa::{IntoResponses, ToSchema};

use super::AppState;
use crate::audit::AuditError;
use crate::auth::AuthError;
use crate::config::Scope;
use crate::error_code::ErrorCode;
use crate::gateway::GatewayError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client sent something unusable; `code` says which kind.
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// Something the request names does not exist; `code` says what.
    #[error("{message}")]
    NotFoundCode { code: ErrorCode, message: String },
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    #[error("this API key lacks the `{}` scope", scope_name(*.0))]
    Forbidden(Scope),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("a request handler panicked")]
    Panicked,
    #[error(transparent)]
    Gateway(#[from] GatewayError),
}

fn scope_name(scope: Scope) -> String {
    serde_json::to_value(scope)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The JSON body of every error response.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable snake_case code, for a program.
    pub code: &'static str,
}

/// Every error status a route may answer, each with [`ErrorBody`].
#[derive(IntoResponses)]
#[allow(dead_code)] // only read by the OpenAPI generator
pub enum ErrorResponses {
    /// Bad input: malformed JSON, a wrong type, bad base64, an invalid kid or JWK.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No API key, or one that is not valid.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The API key lacks the route's scope.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// Unknown key, provider or route.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The provider cannot do this, or the method is not allowed.
    #[response(status = 405)]
    Unsupported(ErrorBody),
    /// The kid is taken.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body exceeds the limit.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// The gateway failed; details are in its log.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// The backend refused or answered nonsense.
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// The backend, the database or the audit log is unavailable.
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The gateway's database is full: nothing was written.
    #[response(status = 507)]
    InsufficientStorage(ErrorBody),
    /// The backend or guest did not answer in time.
    #[response(status = 504)]
    Timeout(ErrorBody),
}

impl ApiError {
    /// A 400 with `code`.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The stable code a client gets for this error (its `outcome` in the audit
    /// log), which decides the status.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::BadRequest { code, .. } | ApiError::NotFoundCode { code, .. } => *code,
            ApiError::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            ApiError::RouteNotFound(_) => ErrorCode::RouteNotFound,
            ApiError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::Audit(_) => ErrorCode::AuditUnavailable,
            ApiError::Panicked => ErrorCode::InternalError,
            ApiError::Gateway(e) => e.code(),
        }
    }
}

impl ApiError {
    /// What the client is told: the error itself, or, where its detail may name
    /// storage internals, a plain sentence (the detail goes to the log).
    pub fn public_message(&self) -> String {
        let code = self.code();
        let status = code.status();
        if status == StatusCode::INTERNAL_SERVER_ERROR
            || matches!(&self, ApiError::Gateway(GatewayError::Catalog(_)))
        {
            tracing::error!(error = %self, "internal error");
            match code {
                ErrorCode::StorageFull => {
                    "the gateway's database has no room for this write; nothing \
                                   was written (reads and signs of existing keys go on)"
                        .to_owned()
                }
                ErrorCode::KeyChanged => {
                    "the key was rotated or deleted meanwhile; nothing was written".to_owned()
                }
                ErrorCode::StorageUnavailable => {
                    "the gateway's database is unavailable; nothing was written".to_owned()
                }
                _ => "internal error; see the gateway log".to_owned(),
            }
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %self, "backend failure");
            }
            self.to_string()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = code.status();
        crate::telemetry::record_outcome(code.as_str());
        let error = self.public_message();
        let body = ErrorBody {
            error,
            code: code.as_str(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON request body, read whatever its content type, with every failure as an
/// [`ApiError`]. An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.max_body_bytes,
                }
            } else {
                ApiError::bad_request(ErrorCode::UnreadableBody, rejection.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(JsonBody).map_err(|e| {
            if e.is_data() {
                ApiError::bad_request(ErrorCode::InvalidField, e.to_string())
            } else {
                ApiError::bad_request(
                    ErrorCode::MalformedJson,
                    format!("the body is not valid JSON: {e}"),
                )
            }
        })
    }
}
