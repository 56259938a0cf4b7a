//! Certificate routes: a CSR for a key, a certificate imported or issued for its
//! current version, and the chain read back.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorResponses;
use super::error::{ApiError, JsonBody};
use super::keys::{KeyResponse, audited_record, event};
use super::{AppState, Caller};
use crate::audit::Action;
use crate::config::Scope;
use crate::error_code::ErrorCode;
use crate::gateway::IssueRequest;

/// `POST /keys/{kid}/csr`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CsrRequest {
    /// RFC 4514, e.g. `CN=issuer.example.org, O=Example`.
    subject: String,
    /// Subject alternative names of type DNS.
    #[serde(default)]
    dns_names: Vec<String>,
    /// Subject alternative names of type URI.
    #[serde(default)]
    uris: Vec<String>,
}

/// A certification request.
#[derive(Serialize, ToSchema)]
pub struct CsrResponse {
    /// PKCS#10, PEM.
    csr: String,
}

/// `POST /keys/{kid}/certificate`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportCertificateRequest {
    /// PEM: the leaf (for the key's current version), then its chain.
    certificate: String,
}

/// `POST /keys/{kid}/certificate/issue`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssueCertificateRequest {
    /// RFC 4514, e.g. `CN=issuer.example.org, O=Example`.
    subject: String,
    /// 1 to 36500.
    validity_days: u32,
    /// The CA key (its current version must hold a CA certificate); absent:
    /// self-signed.
    issuer_kid: Option<String>,
    /// Make a CA certificate (basic constraints cA, key usage keyCertSign).
    #[serde(default)]
    ca: bool,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    uris: Vec<String>,
    /// RFC 5280 key usages, e.g. `["nonRepudiation"]` for a document-signing
    /// leaf (`contentCommitment` is accepted too); absent: `digitalSignature`
    /// for a leaf, `keyCertSign`, `cRLSign`, `digitalSignature` for a CA.
    #[serde(default)]
    key_usage: Vec<String>,
}

/// Make a PKCS#10 request for a key's current version, signed through its provider.
#[utoipa::path(post, path = "/keys/{kid}/csr", tag = "certificates", request_body = CsrRequest,
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The request", body = CsrResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn csr(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<CsrRequest>,
) -> Result<Json<CsrResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    // A CSR is a signature: its place in the audit queue comes first, like a sign's.
    let slot = state.audit.reserve().await?;
    let result = state
        .gateway
        .csr(
            principal.tenant.as_deref(),
            &kid,
            &req.subject,
            &req.dns_names,
            &req.uris,
        )
        .await
        .map_err(ApiError::from);
    let target = (Some(kid.as_str()), None);
    slot.record(event(&principal, Action::Csr, target, Vec::new(), &result))
        .await?;
    Ok(Json(CsrResponse { csr: result? }))
}

/// Import a certificate chain for a key's current version.
#[utoipa::path(post, path = "/keys/{kid}/certificate", tag = "certificates",
    request_body = ImportCertificateRequest,
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The key with its certificate", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn import(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<ImportCertificateRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    let result = state
        .gateway
        .import_certificate(principal.actor(), &kid, &req.certificate)
        .await
        .map_err(ApiError::from);
    let action = Action::CertificateImport;
    audited_record(&state, &principal, action, (Some(&kid), None), result).await
}

/// Issue a certificate for a key's current version: self-signed, or by a CA key.
#[utoipa::path(post, path = "/keys/{kid}/certificate/issue", tag = "certificates",
    request_body = IssueCertificateRequest,
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The key with its certificate", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn issue(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<IssueCertificateRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    let request = IssueRequest {
        subject: req.subject,
        validity_days: req.validity_days,
        issuer_kid: req.issuer_kid,
        ca: req.ca,
        dns_names: req.dns_names,
        uris: req.uris,
        key_usage: req.key_usage,
    };
    let result = state
        .gateway
        .issue_certificate(principal.actor(), &kid, &request)
        .await
        .map_err(ApiError::from);
    let action = Action::CertificateIssue;
    audited_record(&state, &principal, action, (Some(&kid), None), result).await
}

/// The certificate chain of a key's current version, PEM, leaf first.
#[utoipa::path(get, path = "/keys/{kid}/certificate", tag = "certificates",
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The chain", body = String, content_type = "application/pem-certificate-chain"),
        ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn chain(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::KeysRead)?;
    match state
        .gateway
        .certificate_chain(principal.tenant.as_deref(), &kid)
        .await?
    {
        Some(pem) => Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/pem-certificate-chain")],
            pem,
        )),
        None => Err(ApiError::NotFoundCode {
            code: ErrorCode::CertificateNotFound,
            message: format!("key `{kid}` has no certificate for its current version"),
        }),
    }
}
