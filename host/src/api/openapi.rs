//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

use super::error::ErrorBody;
use super::{certificates, keys, ops};

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

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "kmsgw", description = "A WebAssembly-extensible signing gateway"),
    paths(
        keys::create, keys::list, keys::get, keys::delete, keys::sign, keys::sign_batch, keys::verify,
        keys::import,
        keys::rotate, keys::set_rotation,
        keys::jwks,
        certificates::csr, certificates::import, certificates::issue, certificates::chain,
        ops::providers, ops::health, ops::ready, ops::health_kms, ops::audit_page,
        ops::audit_verify, ops::metrics, ops::reload, serve,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerScheme),
)]
struct Document;

/// The OpenAPI document of the whole API.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = Document::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}
