//! Key routes: create, import, sign, delete, read, list, JWKS.

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorResponses;
use super::error::{ApiError, JsonBody};
use super::paging::{page_limit, query_of};
use super::{AppState, Caller};
use crate::audit::{Action, Event};
use crate::auth::Principal;
use crate::catalog::{
    CertificatePolicy, KeyRecord, KeyUsage, KeyVersion, RotationPolicy, VersionState, version_id,
};
use crate::config::Scope;
use crate::crypto::Alg;
use crate::crypto::{PrivateKey, PublicJwk, ToSign, base64url, decode_base64};
use crate::error_code::ErrorCode;
use crate::gateway::{DEFAULT_GRACE, GatewayError, NewKey, Retraction, valid_kid};
use std::sync::Arc;
use std::time::SystemTime;

/// `POST /keys`: every field optional.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Generated (a UUID) when absent.
    kid: Option<String>,
    /// `ES256`, `ES384`, `ES512`, `EdDSA`, `RS256` or `PS256`; default: the
    /// provider's default algorithm (ES256).
    alg: Option<String>,
    /// RSA modulus bits: 2048 (default), 3072 or 4096; RSA algorithms only.
    #[serde(rename = "keySize")]
    key_size: Option<u32>,
    /// Default: `defaultProvider`. EUDIPLO calls this `kmsProvider`; both spellings work.
    #[serde(alias = "kmsProvider")]
    provider: Option<String>,
    /// When the key rotates by itself, and how long a replaced version stays published.
    rotation: Option<RotationRequest>,
}

/// A rotation policy; durations like `30s`, `12h`, `7d`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationRequest {
    /// Rotate this long after the current version became current; absent: only on request.
    every: Option<String>,
    /// Keep a replaced version published this long (default 24h).
    grace: Option<String>,
    /// Certify each new version with a leaf from this CA key (and renew it near
    /// its expiry).
    certificate: Option<CertificatePolicy>,
}

impl RotationRequest {
    fn policy(&self) -> Result<RotationPolicy, ApiError> {
        let duration = |field: &str, text: &Option<String>| {
            text.as_deref()
                .map(|text| {
                    crate::config::span(text)
                        .filter(|d| !d.is_zero() || field == "grace")
                        .ok_or_else(|| {
                            ApiError::bad_request(
                                ErrorCode::InvalidField,
                                format!("rotation.{field} `{text}` is not a duration like 30s, 12h or 7d"),
                            )
                        })
                })
                .transpose()
        };
        Ok(RotationPolicy {
            every: duration("every", &self.every)?,
            grace: duration("grace", &self.grace)?,
            certificate: self.certificate.clone(),
        })
    }
}

/// `POST /keys/{kid}/import`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImportKeyRequest {
    /// A private JWK: `EC` (P-256/384/521: `crv`, `x`, `y`, `d`), `OKP` (Ed25519:
    /// `crv`, `x`, `d`) or `RSA` (`n`, `e`, `d`, `p`, `q`, `dp`, `dq`, `qi`).
    #[schema(value_type = Object)]
    private_jwk: serde_json::Value,
    alg: Option<String>,
    #[serde(alias = "kmsProvider")]
    provider: Option<String>,
}

/// `POST /keys/{kid}/sign`: `data` or `digest`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// The message, base64 (standard or url-safe, padded or not).
    data: Option<String>,
    /// Instead of `data`: the hash of the message under the key algorithm's
    /// hash, base64 (ES256, RS256, PS256: SHA-256, 32 bytes; ES384: SHA-384;
    /// ES512: SHA-512). EdDSA and ML-DSA keys sign messages only.
    digest: Option<String>,
    /// When given, must be the key's algorithm.
    alg: Option<String>,
}

/// What a sign request names: exactly one of `data` and `digest`, decoded by
/// `decode` (one base64 text, or a batch of them).
fn to_sign<T, U>(
    data: Option<T>,
    digest: Option<T>,
    decode: impl FnOnce(&'static str, T) -> Result<U, ApiError>,
) -> Result<ToSign<U>, ApiError> {
    match (data, digest) {
        (Some(data), None) => Ok(ToSign::Message(decode("data", data)?)),
        (None, Some(digest)) => Ok(ToSign::Digest(decode("digest", digest)?)),
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "give either `data` (the message) or `digest` (its hash), not both",
        )),
        (None, None) => Err(ApiError::bad_request(
            ErrorCode::InvalidField,
            "missing field `data` (the message, base64) or `digest` (its hash, base64)",
        )),
    }
}

/// One base64 field of a request.
fn base64_field(field: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    decode_base64(text).map_err(|_| {
        ApiError::bad_request(
            ErrorCode::InvalidBase64,
            format!("`{field}` is neither standard nor url-safe base64"),
        )
    })
}

/// The audit action of a sign and, when `hashed`, the hex hash it records of
/// each input: the SHA-256 of a message, or the client's digest as sent.
fn sign_record(input: Option<&ToSign<Vec<Vec<u8>>>>, hashed: bool) -> (Action, Vec<String>) {
    match input {
        None => (Action::Sign, Vec::new()),
        Some(ToSign::Message(messages)) => (
            Action::Sign,
            messages
                .iter()
                .filter(|_| hashed)
                .map(|m| crate::audit::hex(digest(&SHA256, m).as_ref()))
                .collect(),
        ),
        Some(ToSign::Digest(digests)) => (
            Action::SignDigest,
            digests
                .iter()
                .filter(|_| hashed)
                .map(|d| crate::audit::hex(d))
                .collect(),
        ),
    }
}

/// `GET /keys` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only keys that have not signed for this long (`30s`, `12h`, `30d`) and
    /// existed before then: candidates for retirement.
    #[serde(rename = "unusedFor")]
    #[param(rename = "unusedFor")]
    unused_for: Option<String>,
}

/// A key's public record.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyResponse {
    kid: String,
    provider: String,
    alg: Alg,
    public_jwk: PublicJwk,
    /// RFC 3339.
    created_at: String,
    /// Signs so far (this replica's count is current; others' within their flush interval).
    sign_count: u64,
    /// RFC 3339 time of the latest sign; null when the key never signed.
    last_used_at: Option<String>,
    /// The current version.
    version: u32,
    /// The `kid` of the current version in the JWKS and in JWS headers.
    jwk_kid: String,
    /// Every version (absent in lists; read the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<Vec<VersionResponse>>,
    /// The rotation policy (absent in lists; read the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation: Option<RotationResponse>,
    /// The current version's certificate chain, base64 DER, leaf first (absent in
    /// lists and without a certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
    /// The current version's leaf certificate, described (absent in lists and
    /// without a certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificateSummary>,
    /// When the rotation policy makes the next version, RFC 3339 (absent in lists
    /// and without `rotation.every`).
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_at: Option<String>,
}

/// The names and validity of a leaf certificate.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSummary {
    /// RFC 4514.
    subject: String,
    /// RFC 4514.
    issuer: String,
    /// RFC 3339.
    not_before: String,
    /// RFC 3339.
    not_after: String,
}

impl CertificateSummary {
    /// The summary of the leaf of `x5c` (base64 DER), when it parses.
    fn of(x5c: &[String]) -> Option<CertificateSummary> {
        use base64::Engine as _;
        let der = base64::engine::general_purpose::STANDARD
            .decode(x5c.first()?)
            .ok()?;
        let leaf = crate::x509::from_der(&[der]).ok()?.pop()?;
        let described = crate::x509::describe(&leaf);
        Some(CertificateSummary {
            subject: described.subject,
            issuer: described.issuer,
            not_before: rfc3339(described.not_before),
            not_after: rfc3339(described.not_after),
        })
    }
}

/// One version of a key.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionResponse {
    version: u32,
    jwk_kid: String,
    state: VersionState,
    public_jwk: PublicJwk,
    created_at: String,
    /// When a version in grace leaves the JWKS.
    #[serde(skip_serializing_if = "Option::is_none")]
    grace_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retired_at: Option<String>,
    /// The version's certificate chain, base64 DER, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

/// A key's rotation policy.
#[derive(Serialize, ToSchema)]
pub struct RotationResponse {
    /// Null: rotates only on request.
    every: Option<String>,
    /// How long a replaced version stays published.
    grace: String,
    /// The CA that certifies each new version.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificate: Option<CertificatePolicy>,
}

fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

fn span(duration: std::time::Duration) -> String {
    humantime::format_duration(duration).to_string()
}

impl KeyResponse {
    fn new(record: &KeyRecord, usage: KeyUsage) -> Self {
        KeyResponse {
            kid: record.kid.clone(),
            provider: record.provider.clone(),
            alg: record.alg,
            public_jwk: record.public_jwk.clone(),
            created_at: rfc3339(record.created_at),
            sign_count: usage.sign_count,
            last_used_at: usage.last_used_at.map(rfc3339),
            version: record.version,
            jwk_kid: record.jwk_kid(),
            versions: None,
            rotation: None,
            x5c: None,
            certificate: None,
            next_rotation_at: None,
        }
    }

    /// The record with every version and the rotation policy.
    fn with_history(mut self, versions: &[KeyVersion], policy: RotationPolicy) -> Self {
        self.versions = Some(
            versions
                .iter()
                .map(|v| VersionResponse {
                    version: v.version,
                    jwk_kid: version_id(&self.kid, v.version),
                    state: v.state,
                    public_jwk: v.public_jwk.clone(),
                    created_at: rfc3339(v.created_at),
                    grace_until: v.grace_until.map(rfc3339),
                    retired_at: v.retired_at.map(rfc3339),
                    x5c: v.x5c.clone(),
                })
                .collect(),
        );
        let current = versions.iter().find(|v| v.version == self.version);
        self.x5c = current.and_then(|v| v.x5c.clone());
        self.certificate = self.x5c.as_deref().and_then(CertificateSummary::of);
        self.next_rotation_at = current
            .zip(policy.every)
            .map(|(v, every)| rfc3339(v.created_at + every));
        self.rotation = Some(RotationResponse {
            every: policy.every.map(span),
            grace: span(policy.grace.unwrap_or(DEFAULT_GRACE)),
            certificate: policy.certificate,
        });
        self
    }
}

/// Answers with the full record of a change the gateway made (and recorded with
/// it, in one transaction), or records the refusal.
pub(super) async fn audited_record(
    state: &AppState,
    principal: &Principal,
    action: Action,
    target: (Option<&str>, Option<&str>),
    result: Result<Arc<KeyRecord>, ApiError>,
) -> Result<Json<KeyResponse>, ApiError> {
    audit_refusal(state, principal, action, target, &result).await?;
    let record = result?;
    Ok(Json(full_record(state, &record).await?))
}

/// The full record of `record`: usage, versions and rotation policy.
pub(super) async fn full_record(
    state: &AppState,
    record: &KeyRecord,
) -> Result<KeyResponse, ApiError> {
    let usage = state
        .gateway
        .usage()
        .of(&record.id)
        .await
        .map_err(GatewayError::from)?;
    let (versions, policy) = state.gateway.history(record).await?;
    Ok(KeyResponse::new(record, usage).with_history(&versions, policy))
}

/// `POST /keys/{kid}/verify`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The message, base64 (standard or url-safe, padded or not).
    data: String,
    /// The signature, base64url (or standard base64), in its JOSE form.
    signature: String,
}

/// Whether a signature is valid.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    valid: bool,
}

/// A signature.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignResponse {
    /// base64url (no padding) of the signature in its JOSE form: raw `r‖s` for
    /// ECDSA (64, 96 or 132 bytes), 64 bytes for EdDSA, modulus-sized for RSA.
    signature: String,
    kid: String,
    alg: Alg,
    /// The version that signed.
    version: u32,
    /// That version's `kid` in the JWKS: put it in the JWS header.
    jwk_kid: String,
}

/// A page of keys.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    keys: Vec<KeyResponse>,
    /// The cursor of the next page; null on the last page.
    next_cursor: Option<String>,
}

/// A JWK Set (RFC 7517).
#[derive(Serialize, ToSchema)]
pub struct Jwks {
    keys: Vec<JwksEntry>,
}
// `Jwks` and `JwksEntry` are the document's schema for OpenAPI; the gateway
// builds the document itself (`Gateway::jwks_document`).

/// A published version's public JWK, with its certificate chain when it has one.
#[derive(Serialize, ToSchema)]
pub struct JwksEntry {
    #[serde(flatten)]
    jwk: PublicJwk,
    /// The version's certificate chain, base64 DER, leaf first.
    #[serde(skip_serializing_if = "Option::is_none")]
    x5c: Option<Vec<String>>,
}

fn parse_alg(alg: Option<&str>) -> Result<Option<Alg>, ApiError> {
    alg.map(|name| {
        Alg::parse(name).ok_or_else(|| {
            let known: Vec<_> = Alg::ALL.iter().map(|a| a.as_str()).collect();
            ApiError::bad_request(
                ErrorCode::UnknownAlg,
                format!(
                    "algorithm `{name}` is not supported; use one of {}",
                    known.join(", ")
                ),
            )
        })
    })
    .transpose()
}

/// The audit record of `action` on `target` (kid, provider) with `result`'s outcome.
pub(super) fn event<T>(
    principal: &Principal,
    action: Action,
    target: (Option<&str>, Option<&str>),
    message_sha256s: Vec<String>,
    result: &Result<T, ApiError>,
) -> Event {
    let (kid, provider) = target;
    Event {
        api_key: principal.key_id.clone(),
        tenant: principal.tenant.clone(),
        action,
        kid: kid.map(str::to_owned),
        provider: provider.map(str::to_owned),
        outcome: result.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok"),
        message_sha256s,
    }
}

/// Records the refusal of a change; a change that was made is recorded by the
/// gateway in the transaction that made it.
pub(super) async fn audit_refusal<T>(
    state: &AppState,
    principal: &Principal,
    action: Action,
    target: (Option<&str>, Option<&str>),
    result: &Result<T, ApiError>,
) -> Result<(), ApiError> {
    if result.is_err() {
        let event = event(principal, action, target, Vec::new(), result);
        state.audit.record(event).await?;
    }
    Ok(())
}

/// Create a key.
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = CreateKeyRequest,
    responses((status = 200, description = "The new key", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Caller,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    let result = async {
        let request = NewKey {
            kid: req.kid.clone(),
            alg: parse_alg(req.alg.as_deref())?,
            rsa_bits: req.key_size,
            provider: req.provider.clone(),
            rotation: req
                .rotation
                .as_ref()
                .map(RotationRequest::policy)
                .transpose()?
                .unwrap_or_default(),
        };
        if let Some(policy) = &request.rotation.certificate {
            state
                .gateway
                .check_certificate_policy(principal.tenant.as_deref(), policy)
                .await?;
        }
        Ok(state.gateway.create_key(principal.actor(), request).await?)
    }
    .await;
    let (kid, provider) = match &result {
        Ok(record) => (Some(record.kid.clone()), Some(record.provider.clone())),
        Err(_) => (req.kid.clone(), req.provider.clone()),
    };
    let target = (kid.as_deref(), provider.as_deref());
    if let Ok(record) = &result {
        certify_under_policy(&state, &principal, record).await?;
    }
    audited_record(&state, &principal, Action::Create, target, result).await
}

/// Issues `record`'s version its leaf when its key has a certificate policy; a
/// failed issue leaves the key usable (the scheduler tries again) and is
/// reported in the audit log and `/metrics`.
async fn certify_under_policy(
    state: &AppState,
    principal: &Principal,
    record: &KeyRecord,
) -> Result<(), ApiError> {
    let certified = state
        .gateway
        .certify_new_version(principal.actor(), record)
        .await;
    if let Some(certified) = certified {
        let target = (Some(record.kid.as_str()), Some(record.provider.as_str()));
        let result = certified.map_err(ApiError::from);
        audit_refusal(state, principal, Action::CertificateIssue, target, &result).await?;
    }
    Ok(())
}

/// Import a private key under a kid.
#[utoipa::path(post, path = "/keys/{kid}/import", tag = "keys", request_body = ImportKeyRequest,
    params(("kid" = String, Path, description = "The kid to import under", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The imported key", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:import"])))]
pub async fn import(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<ImportKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysImport)?;
    let result = async {
        let jwk_alg = req.private_jwk.get("alg").and_then(|a| a.as_str());
        let alg = parse_alg(req.alg.as_deref().or(jwk_alg))?;
        let key = PrivateKey::from_jwk(&req.private_jwk)
            .map_err(|e| ApiError::bad_request(ErrorCode::InvalidJwk, e.to_string()))?;
        Ok(state
            .gateway
            .import_key(
                principal.actor(),
                kid.clone(),
                &key,
                alg,
                req.provider.as_deref(),
            )
            .await?)
    }
    .await;
    let provider = match &result {
        Ok(record) => Some(record.provider.clone()),
        Err(_) => req.provider.clone(),
    };
    let target = (Some(kid.as_str()), provider.as_deref());
    audited_record(&state, &principal, Action::Import, target, result).await
}

/// Sign a message.
#[utoipa::path(post, path = "/keys/{kid}/sign", tag = "keys", request_body = SignRequest,
    params(("kid" = String, Path, description = "The key to sign with", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The signature", body = SignResponse), ErrorResponses),
    security(("bearer" = ["sign"])))]
pub async fn sign(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<SignRequest>,
) -> Result<Json<SignResponse>, ApiError> {
    principal.require(Scope::Sign)?;
    // A place for the record first: a sign answered 200 always has its record.
    let slot = state.audit.reserve().await?;
    let input = to_sign(req.data, req.digest, |field, text| {
        base64_field(field, &text).map(|bytes| vec![bytes])
    });
    let (action, mut hashes) = sign_record(input.as_ref().ok(), state.audit.enabled());
    let result = async {
        let alg = parse_alg(req.alg.as_deref())?;
        let input = input?;
        let bytes = input.bytes()[0].as_slice();
        Ok(state
            .gateway
            .sign(principal.tenant.as_deref(), &kid, input.with(bytes), alg)
            .await?)
    }
    .await;
    if action == Action::SignDigest && result.is_err() {
        // A refused digest may be of any length (even empty): not recorded.
        hashes.clear();
    }
    let provider = result.as_ref().ok().map(|(_, r)| r.provider.as_str());
    let target = (Some(kid.as_str()), provider);
    slot.record(event(&principal, action, target, hashes, &result))
        .await?;
    let (signature, record) = result?;
    Ok(Json(SignResponse {
        signature: base64url(&signature),
        alg: record.alg,
        version: record.version,
        jwk_kid: record.jwk_kid(),
        kid,
    }))
}

/// `POST /keys/{kid}/sign/batch`: `data` or `digest`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignBatchRequest {
    /// The messages, each base64 (standard or url-safe); 1 to 1000.
    data: Option<Vec<String>>,
    /// Instead of `data`: the messages' hashes, as `digest` of a single sign.
    digest: Option<Vec<String>>,
    /// When given, must be the key's algorithm.
    alg: Option<String>,
}

/// The signatures of a batch, in the order of the messages.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignBatchResponse {
    /// base64url (no padding), each in its JOSE form.
    signatures: Vec<String>,
    kid: String,
    alg: Alg,
    version: u32,
    jwk_kid: String,
}

/// Most messages in one batch.
const MAX_BATCH: usize = 1000;

/// Sign many messages with one key in one request; one bad message fails the
/// batch and nothing is signed.
#[utoipa::path(post, path = "/keys/{kid}/sign/batch", tag = "keys", request_body = SignBatchRequest,
    params(("kid" = String, Path, description = "The key to sign with", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The signatures, in order", body = SignBatchResponse), ErrorResponses),
    security(("bearer" = ["sign"])))]
pub async fn sign_batch(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<SignBatchRequest>,
) -> Result<Json<SignBatchResponse>, ApiError> {
    principal.require(Scope::Sign)?;
    let slot = state.audit.reserve().await?;
    let input = to_sign(req.data, req.digest, |field, texts: Vec<String>| {
        if !(1..=MAX_BATCH).contains(&texts.len()) {
            return Err(ApiError::bad_request(
                ErrorCode::InvalidRequest,
                format!(
                    "`{field}` holds {} items; a batch is 1 to {MAX_BATCH}",
                    texts.len()
                ),
            ));
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| base64_field(&format!("{field}[{i}]"), text))
            .collect::<Result<Vec<_>, _>>()
    });
    let (result, input) = match input {
        Err(e) => (Err(e), None),
        Ok(input) => {
            let result = async {
                let alg = parse_alg(req.alg.as_deref())?;
                let inputs = input.with(input.bytes().as_slice());
                Ok(state
                    .gateway
                    .sign_batch(principal.tenant.as_deref(), &kid, inputs, alg)
                    .await?)
            }
            .await;
            (result, Some(input))
        }
    };
    let provider = result.as_ref().ok().map(|(_, r)| r.provider.clone());
    let target = (Some(kid.as_str()), provider.as_deref());
    // One record for the batch, holding every input's hash in order.
    let (action, hashes) = sign_record(input.as_ref(), result.is_ok() && state.audit.enabled());
    slot.record(event(&principal, action, target, hashes, &result))
        .await?;
    let (signatures, record) = result?;
    Ok(Json(SignBatchResponse {
        signatures: signatures.iter().map(|s| base64url(s)).collect(),
        alg: record.alg,
        version: record.version,
        jwk_kid: record.jwk_kid(),
        kid,
    }))
}

/// Verify a signature against a key's public key.
#[utoipa::path(post, path = "/keys/{kid}/verify", tag = "keys", request_body = VerifyRequest,
    params(("kid" = String, Path, description = "The key whose public key checks the signature", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "Whether the signature is valid", body = VerifyResponse), ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn verify(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<VerifyRequest>,
) -> Result<Json<VerifyResponse>, ApiError> {
    principal.require(Scope::KeysRead)?;
    let invalid = |field: &str| {
        ApiError::bad_request(
            ErrorCode::InvalidBase64,
            format!("`{field}` is neither standard nor url-safe base64"),
        )
    };
    let message = decode_base64(&req.data).map_err(|_| invalid("data"))?;
    let signature = decode_base64(&req.signature).map_err(|_| invalid("signature"))?;
    let valid = state
        .gateway
        .verify(principal.tenant.as_deref(), &kid, &message, &signature)
        .await?;
    Ok(Json(VerifyResponse { valid }))
}

/// Rotate a key: a new version becomes current; the previous one stays published
/// for the key's grace period.
#[utoipa::path(post, path = "/keys/{kid}/rotate", tag = "keys",
    params(("kid" = String, Path, description = "The key to rotate", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The key with its new current version", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn rotate(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    let result = state
        .gateway
        .rotate(principal.actor(), &kid)
        .await
        .map_err(ApiError::from);
    let provider = result.as_ref().ok().map(|r| r.record.provider.clone());
    let target = (Some(kid.as_str()), provider.as_deref());
    let result = match result {
        Ok(rotated) => {
            if let Some(certified) = rotated.certificate {
                let certified = certified.map_err(ApiError::from);
                let action = Action::CertificateIssue;
                audit_refusal(&state, &principal, action, target, &certified).await?;
            }
            Ok(rotated.record)
        }
        Err(e) => Err(e),
    };
    audited_record(&state, &principal, Action::Rotate, target, result).await
}

/// Set a key's rotation policy.
#[utoipa::path(put, path = "/keys/{kid}/rotation", tag = "keys", request_body = RotationRequest,
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The key with its policy", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:create"])))]
pub async fn set_rotation(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<RotationRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysCreate)?;
    let tenant = principal.tenant.as_deref();
    let policy = req.policy()?;
    if let Some(certificate) = &policy.certificate {
        state
            .gateway
            .check_certificate_policy(tenant, certificate)
            .await?;
    }
    state.gateway.set_rotation(tenant, &kid, policy).await?;
    let record = state.gateway.key(tenant, &kid).await?;
    Ok(Json(full_record(&state, &record).await?))
}

/// `DELETE /keys/{kid}` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Retract the key from the catalog and JWKS even when its backend refuses the
    /// delete or its provider is no longer configured.
    force: Option<bool>,
}

/// What a forced delete did.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ForcedDelete {
    kid: String,
    provider: String,
    /// Whether the backend deleted the key as well.
    backend_deleted: bool,
    /// When the backend did not delete it: what may remain there, and why.
    may_remain: Option<String>,
}

/// Delete a key (204), or with `force=true` retract it whatever its backend says (200).
#[utoipa::path(delete, path = "/keys/{kid}", tag = "keys",
    params(("kid" = String, Path, description = "The key to delete", pattern = r"^[A-Za-z0-9._:~-]{1,128}$"), DeleteQuery),
    responses((status = 204, description = "Deleted"),
        (status = 200, description = "Retracted (force=true)", body = ForcedDelete), ErrorResponses),
    security(("bearer" = ["keys:delete"])))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::KeysDelete)?;
    if query_of(query)?.force == Some(true) {
        return force_delete(&state, &principal, kid).await;
    }
    let result = state
        .gateway
        .delete_key(principal.actor(), &kid)
        .await
        .map_err(ApiError::from);
    audit_refusal(
        &state,
        &principal,
        Action::Delete,
        (Some(&kid), None),
        &result,
    )
    .await?;
    result?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn force_delete(
    state: &AppState,
    principal: &Principal,
    kid: String,
) -> Result<Response, ApiError> {
    let result = state
        .gateway
        .retract_key(principal.actor(), &kid)
        .await
        .map_err(ApiError::from);
    let action = Action::ForceDelete;
    audit_refusal(state, principal, action, (Some(&kid), None), &result).await?;
    let Retraction { record, backend } = result?;
    let may_remain = backend.err().map(|reason| {
        format!(
            "provider `{}` may still hold the key (its id there: `{}`): {reason}",
            record.provider, record.external_id
        )
    });
    Ok(Json(ForcedDelete {
        backend_deleted: may_remain.is_none(),
        may_remain,
        provider: record.provider.clone(),
        kid,
    })
    .into_response())
}

/// Read one key's public record.
#[utoipa::path(get, path = "/keys/{kid}", tag = "keys",
    params(("kid" = String, Path, description = "The key", pattern = r"^[A-Za-z0-9._:~-]{1,128}$")),
    responses((status = 200, description = "The key", body = KeyResponse), ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn get(
    State(state): State<AppState>,
    Extension(principal): Caller,
    Path(kid): Path<String>,
) -> Result<Json<KeyResponse>, ApiError> {
    principal.require(Scope::KeysRead)?;
    let record = state.gateway.key(principal.tenant.as_deref(), &kid).await?;
    Ok(Json(full_record(&state, &record).await?))
}

/// A page of keys in kid order; `nextCursor` is null on the last page.
#[utoipa::path(get, path = "/keys", tag = "keys", params(ListQuery),
    responses((status = 200, description = "A page of keys", body = KeyPage), ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    principal.require(Scope::KeysRead)?;
    let query = query_of(query)?;
    let limit = page_limit(query.limit)?;
    let unused_since = query
        .unused_for
        .as_deref()
        .map(|text| {
            crate::config::span(text)
                .and_then(|d| SystemTime::now().checked_sub(d))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        ErrorCode::InvalidQuery,
                        format!("unusedFor `{text}` is not a duration like 30s, 12h or 30d"),
                    )
                })
        })
        .transpose()?;
    if let Some(cursor) = query.cursor.as_deref().filter(|c| !valid_kid(c)) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            format!(
                "cursor `{}` is not a kid (use the nextCursor of the previous page)",
                crate::audit::recorded(cursor)
            ),
        ));
    }
    let records = state
        .gateway
        .list(
            principal.tenant.as_deref(),
            query.cursor.as_deref(),
            limit,
            unused_since,
        )
        .await?;
    let next_cursor = (records.len() == limit as usize)
        .then(|| records.last().map(|(r, _)| r.kid.clone()))
        .flatten();
    Ok(Json(KeyPage {
        keys: records
            .iter()
            .map(|(record, usage)| KeyResponse::new(record, *usage))
            .collect(),
        next_cursor,
    }))
}

/// The public JWKs of every live key (of the caller's tenant).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "keys",
    params(("If-None-Match" = Option<String>, Header, description = "The ETag of a document already held")),
    responses((status = 200, description = "The public keys; `ETag` names the document", body = Jwks),
        (status = 304, description = "Unchanged since the document named by If-None-Match"),
        ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn jwks(
    State(state): State<AppState>,
    Extension(principal): Caller,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(Scope::KeysRead)?;
    let document = state
        .gateway
        .jwks_document(principal.tenant.as_deref())
        .await?;
    let unchanged = headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == document.etag
        });
    let tag = [
        (axum::http::header::ETAG, document.etag.clone()),
        (axum::http::header::CACHE_CONTROL, "no-cache".to_owned()),
    ];
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, tag).into_response());
    }
    Ok((
        StatusCode::OK,
        tag,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json".to_owned(),
        )],
        document.body.clone(),
    )
        .into_response())
}
