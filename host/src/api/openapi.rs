//! The OpenAPI document, generated from the handlers' annotations.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{certificates, csc, keys, ops, seal};

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
        ops::providers, ops::whoami, ops::health, ops::ready, ops::health_kms, ops::audit_page,
        ops::audit_verify, ops::metrics, ops::reload, seal::rotate, seal::rotation, serve,
        csc::info, csc::credentials::list, csc::credentials::info, csc::signing::authorize,
        csc::signing::sign_hash, csc::timestamp, csc::sign_doc,
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
