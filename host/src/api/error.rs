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
use crate::gateway::GatewayError;
use crate::providers::ProviderError;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client sent something unusable; `code` says which kind.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// Something the request names does not exist; `code` says what.
    #[error("{message}")]
    NotFoundCode { code: &'static str, message: String },
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
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// The stable code a client gets for this error (also the audit log's outcome).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use crate::catalog::CatalogError as C;
        use GatewayError as G;
        use ProviderError as P;
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "route_not_found"),
            ApiError::NotFoundCode { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Audit(_) => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ApiError::Panicked => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
            ApiError::Gateway(e) => match e {
                G::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
                G::ProviderNotFound(_) => (StatusCode::NOT_FOUND, "provider_not_found"),
                G::KeyExists(_) => (StatusCode::CONFLICT, "key_exists"),
                G::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                G::InvalidJwk(_) => (StatusCode::BAD_REQUEST, "invalid_jwk"),
                G::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "unsupported_operation"),
                G::UnsupportedAlg { .. } => (StatusCode::METHOD_NOT_ALLOWED, "unsupported_alg"),
                G::ProviderGone { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "provider_not_configured")
                }
                G::Catalog(c) => match c {
                    C::StorageFull(_) => (StatusCode::INSUFFICIENT_STORAGE, "storage_full"),
                    C::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable"),
                    C::Conflict => (StatusCode::CONFLICT, "key_changed"),
                    _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
                },
                G::Certificate(c) => match c {
                    crate::x509::CertError::Encoding(_) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "internal_error")
                    }
                    other => (StatusCode::BAD_REQUEST, other.code()),
                },
                G::Provider(p) => match p {
                    P::KeyNotFound(_) => (StatusCode::NOT_FOUND, "key_not_found"),
                    P::Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "unsupported_operation"),
                    P::InvalidInput(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
                    P::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "backend_unavailable"),
                    P::Timeout => (StatusCode::GATEWAY_TIMEOUT, "backend_timeout"),
                    P::Backend(_) => (StatusCode::BAD_GATEWAY, "backend_error"),
                    P::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
                },
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let error = if status == StatusCode::INTERNAL_SERVER_ERROR
            || matches!(&self, ApiError::Gateway(GatewayError::Catalog(_)))
        {
            // The detail may name storage internals; it goes to the log only.
            tracing::error!(error = %self, "internal error");
            match code {
                "storage_full" => "the gateway's database has no room for this write; nothing \
                                   was written (reads and signs of existing keys go on)"
                    .to_owned(),
                "storage_unavailable" => {
                    "the gateway's database is unavailable; nothing was written".to_owned()
                }
                _ => "internal error; see the gateway log".to_owned(),
            }
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %self, "backend failure");
            }
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody { error, code })).into_response();
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
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(JsonBody).map_err(|e| {
            if e.is_data() {
                ApiError::bad_request("invalid_field", e.to_string())
            } else {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        })
    }
}
