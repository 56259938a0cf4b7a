//! The Cloud Signature Consortium API v2 (v2.0.0.2) under `/csc/v2`, for remote
//! document-signing clients: a credential is a key whose current version has a
//! certificate, its `credentialID` the kid; the service is authorised with a
//! kmsgw API key as bearer token, and tenants and scopes apply as on the REST
//! API. Credentials are in `implicit` mode: `credentials/authorize` hands out a
//! short-lived, single-use SAD bound to the hashes it was given (kept in the
//! catalog, so any replica redeems it once), and `signatures/signHash` signs
//! digests through the key's provider like `POST /keys/{kid}/sign` with
//! `digest`. Errors are CSC's `{error, error_description}`.

use std::time::SystemTime;

use aws_lc_rs::digest::{SHA256, digest};
use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoResponses, ToSchema};

use super::error::JsonBody;
use super::keys::event;
use super::{ApiError, AppState, Caller};
use crate::audit::Action;
use crate::catalog::{Authorization, KeyRecord};
use crate::config::Scope;
use crate::crypto::{Alg, Curve, KeyKind, ToSign, decode_base64, der};
use crate::error_code::ErrorCode;
use crate::gateway::GatewayError;
use crate::providers::ProviderError;
use crate::x509;

/// The CSC specification version served.
const SPEC: &str = "2.0.0.2";
/// Most hashes in one `signHash` (and one SAD): the credential's `multisign`.
const MULTISIGN: usize = 1000;
/// Most unexpired SADs one API key may hold.
const MAX_OUTSTANDING_SADS: i64 = 1000;
/// Page size of `credentials/list` when `maxResults` is absent, and its largest.
const LIST_PAGE: u32 = 100;

/// The methods served, as `info` lists them.
const METHODS: [&str; 5] = [
    "info",
    "credentials/list",
    "credentials/info",
    "credentials/authorize",
    "signatures/signHash",
];

/// OIDs: hash algorithms, signature algorithms, key algorithms, curves.
mod oid {
    pub const SHA256: &str = "2.16.840.1.101.3.4.2.1";
    pub const SHA384: &str = "2.16.840.1.101.3.4.2.2";
    pub const SHA512: &str = "2.16.840.1.101.3.4.2.3";
    pub const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    pub const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
    pub const ECDSA_SHA512: &str = "1.2.840.10045.4.3.4";
    pub const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
    pub const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
    pub const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    pub const P256: &str = "1.2.840.10045.3.1.7";
    pub const P384: &str = "1.3.132.0.34";
    pub const P521: &str = "1.3.132.0.35";
}

/// The hash OID whose digests a key of `alg` signs; `None` for algorithms
/// without a pre-hashed form (which are no CSC credentials).
fn hash_oid(alg: Alg) -> Option<&'static str> {
    Some(match alg {
        Alg::ES256 | Alg::RS256 | Alg::PS256 => oid::SHA256,
        Alg::ES384 => oid::SHA384,
        Alg::ES512 => oid::SHA512,
        _ => return None,
    })
}

/// The signature algorithm OID of a key of `alg` (`key.algo`).
fn sign_algo(alg: Alg) -> Option<&'static str> {
    Some(match alg {
        Alg::ES256 => oid::ECDSA_SHA256,
        Alg::ES384 => oid::ECDSA_SHA384,
        Alg::ES512 => oid::ECDSA_SHA512,
        Alg::RS256 => oid::SHA256_WITH_RSA,
        Alg::PS256 => oid::RSASSA_PSS,
        _ => return None,
    })
}

/// Whether a `signAlgo` names what a key of `alg` signs: its signature
/// algorithm, or its key algorithm (ecPublicKey, rsaEncryption for PKCS#1
/// v1.5) with the hash given apart.
fn accepts_sign_algo(alg: Alg, asked: &str) -> bool {
    sign_algo(alg) == Some(asked)
        || match alg.key_kind() {
            KeyKind::Ec(_) => asked == oid::EC_PUBLIC_KEY,
            KeyKind::Rsa => alg == Alg::RS256 && asked == oid::RSA_ENCRYPTION,
            _ => false,
        }
}

/// The routes under `/csc/v2`: `info` open, the others behind an API key.
pub fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/csc/v2/credentials/list", post(credentials_list))
        .route("/csc/v2/credentials/info", post(credentials_info))
        .route("/csc/v2/credentials/authorize", post(credentials_authorize))
        .route("/csc/v2/signatures/signHash", post(sign_hash))
        .route("/csc/v2/signatures/timestamp", post(timestamp))
        .route("/csc/v2/signatures/signDoc", post(sign_doc))
        .route_layer(middleware::from_fn_with_state(
            state,
            super::authenticate::<CscError>,
        ));
    Router::new()
        .route("/csc/v2/info", post(info).get(info))
        .merge(protected)
}

/// A CSC error answer: status and `{error, error_description}`.
#[derive(Debug)]
pub struct CscError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

/// The body of every CSC error.
#[derive(Serialize, ToSchema)]
pub struct CscErrorBody {
    /// `invalid_request`, `invalid_token`, `access_denied`, `not_implemented`,
    /// `server_error` or `temporarily_unavailable`.
    error: String,
    /// What went wrong, for a person.
    error_description: String,
}

/// Every error status a CSC route may answer, each with [`CscErrorBody`].
#[derive(IntoResponses)]
#[allow(dead_code)] // only read by the OpenAPI generator
pub enum CscErrors {
    /// A bad or unknown parameter: credentialID, SAD, hashes, signAlgo, …
    #[response(status = 400)]
    BadRequest(CscErrorBody),
    /// No API key, or one that is not valid.
    #[response(status = 401)]
    Unauthorized(CscErrorBody),
    /// The API key lacks the scope.
    #[response(status = 403)]
    Forbidden(CscErrorBody),
    /// The body exceeds the limit.
    #[response(status = 413)]
    TooLarge(CscErrorBody),
    /// The gateway failed; details are in its log.
    #[response(status = 500)]
    Internal(CscErrorBody),
    /// The backend refused or answered nonsense.
    #[response(status = 502)]
    BadGateway(CscErrorBody),
    /// The backend, the database or the audit log is unavailable.
    #[response(status = 503)]
    Unavailable(CscErrorBody),
    /// The backend did not answer in time.
    #[response(status = 504)]
    Timeout(CscErrorBody),
}

/// A 400 that CSC calls `invalid_request`.
fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidRequest, description)
}

/// A failure inside the gateway (500; the detail goes to the log only).
fn internal(detail: String) -> ApiError {
    ApiError::Gateway(GatewayError::Provider(ProviderError::Internal(detail)))
}

impl From<ApiError> for CscError {
    fn from(e: ApiError) -> Self {
        let status = e.code().status();
        let description = e.public_message();
        let (status, error) = match status.as_u16() {
            401 => (status, "invalid_token"),
            403 => (status, "access_denied"),
            // An unknown key (credentialID) or an operation the provider cannot
            // do is an invalid request in CSC's terms.
            404 | 405 => (StatusCode::BAD_REQUEST, "invalid_request"),
            503 => (status, "temporarily_unavailable"),
            500..=599 => (status, "server_error"),
            _ => (status, "invalid_request"),
        };
        CscError {
            status,
            error,
            description,
        }
    }
}

impl From<GatewayError> for CscError {
    fn from(e: GatewayError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for CscError {
    fn into_response(self) -> Response {
        let body = CscErrorBody {
            error: self.error.to_owned(),
            error_description: self.description,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON request body whose failures are CSC errors.
pub struct CscBody<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for CscBody<T> {
    type Rejection = CscError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, CscError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        Ok(CscBody(body))
    }
}

/// `info`: what this service is and serves.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfoResponse {
    specs: &'static str,
    name: &'static str,
    description: &'static str,
    lang: &'static str,
    /// `external`: kmsgw API keys, given as bearer tokens.
    auth_type: Vec<&'static str>,
    methods: Vec<&'static str>,
}

/// CSC `info`: the service, its authorisation type and methods (no token needed).
#[utoipa::path(post, path = "/csc/v2/info", tag = "csc",
    responses((status = 200, description = "The service", body = InfoResponse)))]
pub async fn info() -> Json<InfoResponse> {
    Json(InfoResponse {
        specs: SPEC,
        name: "kmsgw",
        description: "Remote signing over kmsgw keys: a credential is a key with a certificate",
        lang: "en",
        auth_type: vec!["external"],
        methods: METHODS.to_vec(),
    })
}

/// How much of its certificate chain a credential shows.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Certificates {
    None,
    #[default]
    Single,
    Chain,
}

/// `credentials/list` (a `userID` is ignored: the API key's tenant decides
/// whose credentials are listed).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListRequest {
    /// Also return each credential's information (`credentialInfos`).
    #[serde(default)]
    credential_info: bool,
    /// With `credentialInfo`: how much of each chain.
    #[serde(default)]
    certificates: Certificates,
    /// With `credentialInfo`: the leaf's names, serial and validity.
    #[serde(default)]
    cert_info: bool,
    /// Only credentials whose certificate is valid now.
    #[serde(default)]
    only_valid: bool,
    /// Page size, 1 to 100 (default 100).
    max_results: Option<u32>,
    /// The `nextPageToken` of the previous page.
    page_token: Option<String>,
}

/// A page of credentials.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    #[serde(rename = "credentialIDs")]
    credential_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_infos: Option<Vec<CredentialInfo>>,
    /// Whether `onlyValid` was applied.
    only_valid: bool,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

/// CSC `credentials/list`: the caller's tenant's keys that have a certificate
/// and can sign digests (algorithm and provider), in kid order.
#[utoipa::path(post, path = "/csc/v2/credentials/list", tag = "csc", request_body = ListRequest,
    responses((status = 200, description = "The credentials", body = ListResponse), CscErrors),
    security(("bearer" = ["keys:read"])))]
pub async fn credentials_list(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<ListRequest>,
) -> Result<Json<ListResponse>, CscError> {
    principal.require(Scope::KeysRead)?;
    let limit = match req.max_results {
        None => LIST_PAGE,
        Some(n @ 1..=LIST_PAGE) => n,
        Some(n) => {
            return Err(invalid(format!(
                "Invalid parameter maxResults: {n} is not 1 to {LIST_PAGE}"
            ))
            .into());
        }
    };
    let after = match req.page_token.as_deref() {
        Some(token) if !crate::gateway::valid_kid(token) => {
            return Err(invalid("Invalid parameter pageToken").into());
        }
        token => token,
    };
    let tenant = principal.tenant.as_deref();
    let page = state.gateway.certified_keys(tenant, after, limit).await?;
    let next_page_token = (page.len() == limit as usize)
        .then(|| page.last().map(|(record, _)| record.kid.clone()))
        .flatten();
    let now = SystemTime::now();
    let options = InfoOptions {
        certificates: req.certificates,
        cert_info: req.cert_info,
    };
    let mut ids = Vec::new();
    let mut infos = Vec::new();
    for (record, x5c) in &page {
        if !state.gateway.signs_digests(record) {
            continue;
        }
        let info = credential_info(record, x5c, options, now)?;
        if req.only_valid && info.cert.status != "valid" {
            continue;
        }
        ids.push(record.kid.clone());
        if req.credential_info {
            infos.push(CredentialInfo {
                credential_id: Some(record.kid.clone()),
                ..info
            });
        }
    }
    Ok(Json(ListResponse {
        credential_ids: ids,
        credential_infos: req.credential_info.then_some(infos),
        only_valid: req.only_valid,
        next_page_token,
    }))
}

/// `credentials/info`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfoRequest {
    /// The kid.
    #[serde(rename = "credentialID")]
    credential_id: String,
    /// How much of the chain (default `single`).
    #[serde(default)]
    certificates: Certificates,
    /// The leaf's names, serial and validity.
    #[serde(default)]
    cert_info: bool,
}

/// A credential's key.
#[derive(Serialize, ToSchema)]
pub struct KeyInfo {
    /// `enabled`.
    status: &'static str,
    /// The signature algorithm OIDs the key signs with.
    algo: Vec<&'static str>,
    /// Bits: the modulus of an RSA key, the curve's size of an EC key.
    len: u32,
    /// The curve OID of an EC key.
    #[serde(skip_serializing_if = "Option::is_none")]
    curve: Option<&'static str>,
}

/// A credential's certificate.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertInfo {
    /// `valid`, or `expired` outside the leaf's validity period.
    status: &'static str,
    /// Base64 DER, leaf first, as much as `certificates` asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    certificates: Option<Vec<String>>,
    #[serde(rename = "issuerDN", skip_serializing_if = "Option::is_none")]
    issuer_dn: Option<String>,
    /// Hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    serial_number: Option<String>,
    #[serde(rename = "subjectDN", skip_serializing_if = "Option::is_none")]
    subject_dn: Option<String>,
    /// GeneralizedTime, `YYYYMMDDHHMMSSZ`.
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_to: Option<String>,
}

/// How a credential is authorised.
#[derive(Serialize, ToSchema)]
pub struct AuthInfo {
    /// `implicit`: the bearer token authorises; a SAD is optional.
    mode: &'static str,
}

/// What a credential is.
#[derive(Serialize, ToSchema)]
pub struct CredentialInfo {
    /// In `credentialInfos` of a list.
    #[serde(rename = "credentialID", skip_serializing_if = "Option::is_none")]
    credential_id: Option<String>,
    description: String,
    key: KeyInfo,
    cert: CertInfo,
    auth: AuthInfo,
    /// `1`: a SAD need not be bound to hashes (kmsgw binds it anyway).
    #[serde(rename = "SCAL")]
    scal: &'static str,
    /// Most hashes per `signHash` and per SAD.
    multisign: usize,
    lang: &'static str,
}

/// What a credential's information includes.
#[derive(Clone, Copy)]
struct InfoOptions {
    certificates: Certificates,
    cert_info: bool,
}

/// The CSC view of `record` with chain `x5c`.
fn credential_info(
    record: &KeyRecord,
    x5c: &[String],
    options: InfoOptions,
    now: SystemTime,
) -> Result<CredentialInfo, ApiError> {
    let damaged = || {
        internal(format!(
            "the stored certificate of `{}` is unreadable",
            record.kid
        ))
    };
    let leaf = x5c
        .first()
        .and_then(|b64| STANDARD.decode(b64).ok())
        .and_then(|der| x509::from_der(&[der]).ok())
        .and_then(|mut chain| chain.pop())
        .ok_or_else(damaged)?;
    let described = x509::describe(&leaf);
    let status = if (described.not_before..=described.not_after).contains(&now) {
        "valid"
    } else {
        "expired"
    };
    let (len, curve) = match record.alg.key_kind() {
        KeyKind::Ec(Curve::P256) => (256, Some(oid::P256)),
        KeyKind::Ec(Curve::P384) => (384, Some(oid::P384)),
        KeyKind::Ec(Curve::P521) => (521, Some(oid::P521)),
        _ => (
            record
                .public_jwk
                .signature_len(record.alg)
                .map_or(0, |bytes| u32::try_from(bytes * 8).unwrap_or(0)),
            None,
        ),
    };
    let certificates = match options.certificates {
        Certificates::None => None,
        Certificates::Single => Some(x5c[..1].to_vec()),
        Certificates::Chain => Some(x5c.to_vec()),
    };
    let generalized = |time: SystemTime| {
        humantime::format_rfc3339_seconds(time)
            .to_string()
            .chars()
            .filter(char::is_ascii_digit)
            .chain(['Z'])
            .collect::<String>()
    };
    let info = options.cert_info.then_some(&described);
    Ok(CredentialInfo {
        credential_id: None,
        description: format!(
            "{} key `{}` on provider `{}`",
            record.alg, record.kid, record.provider
        ),
        key: KeyInfo {
            status: "enabled",
            algo: sign_algo(record.alg).into_iter().collect(),
            len,
            curve,
        },
        cert: CertInfo {
            status,
            certificates,
            issuer_dn: info.map(|d| d.issuer.clone()),
            serial_number: info.map(|d| d.serial.clone()),
            subject_dn: info.map(|d| d.subject.clone()),
            valid_from: info.map(|d| generalized(d.not_before)),
            valid_to: info.map(|d| generalized(d.not_after)),
        },
        auth: AuthInfo { mode: "implicit" },
        scal: "1",
        multisign: MULTISIGN,
        lang: "en",
    })
}

/// The credential `credential_id` of the caller's tenant, with its chain: one
/// that is not there, has no certificate or cannot sign digests (its algorithm
/// or its provider) is CSC's invalid `credentialID`, and nothing more is said
/// or recorded.
async fn credential(
    state: &AppState,
    tenant: Option<&str>,
    credential_id: &str,
) -> Result<(std::sync::Arc<KeyRecord>, Vec<String>), ApiError> {
    let unknown = || invalid("Invalid parameter credentialID");
    if !crate::gateway::valid_kid(credential_id) {
        return Err(unknown());
    }
    match state.gateway.certified_key(tenant, credential_id).await {
        Ok((record, Some(x5c))) if state.gateway.signs_digests(&record) => Ok((record, x5c)),
        Ok(_) | Err(GatewayError::KeyNotFound(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

/// CSC `credentials/info`: a credential's key, certificate and authorisation mode.
#[utoipa::path(post, path = "/csc/v2/credentials/info", tag = "csc", request_body = InfoRequest,
    responses((status = 200, description = "The credential", body = CredentialInfo), CscErrors),
    security(("bearer" = ["keys:read"])))]
pub async fn credentials_info(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<InfoRequest>,
) -> Result<Json<CredentialInfo>, CscError> {
    principal.require(Scope::KeysRead)?;
    let (record, x5c) = credential(&state, principal.tenant.as_deref(), &req.credential_id).await?;
    let options = InfoOptions {
        certificates: req.certificates,
        cert_info: req.cert_info,
    };
    Ok(Json(credential_info(
        &record,
        &x5c,
        options,
        SystemTime::now(),
    )?))
}

/// The hashes of an `authorize` or `signHash`: v2's `hashes` or v1's `hash`,
/// each base64, 1 to [`MULTISIGN`] of the length `alg`'s hash gives.
fn hashes(
    v2: Option<Vec<String>>,
    v1: Option<Vec<String>>,
    alg: Alg,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let texts = match (v2, v1) {
        (Some(hashes), None) | (None, Some(hashes)) => hashes,
        (Some(_), Some(_)) => {
            return Err(invalid(
                "Invalid parameter hashes: give `hashes` (v2) or `hash` (v1), not both",
            ));
        }
        (None, None) => return Err(invalid("Missing (or invalid type) array parameter hashes")),
    };
    if !(1..=MULTISIGN).contains(&texts.len()) {
        return Err(invalid(format!(
            "Invalid parameter hashes: {} hashes; 1 to {MULTISIGN} per call",
            texts.len()
        )));
    }
    let expected = alg.prehash().map_or(0, |hash| hash.output_len);
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let hash = decode_base64(text)
                .map_err(|_| invalid(format!("Invalid parameter hashes: hash {i} is not base64")))?;
            if hash.len() != expected {
                return Err(invalid(format!(
                    "Invalid parameter hashes: hash {i} is {} bytes; this credential signs {expected}-byte hashes",
                    hash.len()
                )));
            }
            Ok(hash)
        })
        .collect()
}

/// The hash OID a request names (v2's `hashAlgorithmOID` or v1's `hashAlgo`),
/// checked against the credential's; absent when the `signAlgo` implies it.
fn check_hash_algorithm(v2: Option<&str>, v1: Option<&str>, alg: Alg) -> Result<(), ApiError> {
    match v2.or(v1) {
        Some(asked) if Some(asked) != hash_oid(alg) => Err(invalid(format!(
            "Invalid parameter hashAlgorithmOID: this credential signs {} hashes ({})",
            match alg.prehash().map(|h| h.output_len) {
                Some(48) => "SHA-384",
                Some(64) => "SHA-512",
                _ => "SHA-256",
            },
            hash_oid(alg).unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

/// `credentials/authorize`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeRequest {
    #[serde(rename = "credentialID")]
    credential_id: String,
    /// How many signatures the SAD allows: the number of hashes.
    num_signatures: u32,
    /// The hashes (base64) the SAD is bound to (v2 name).
    hashes: Option<Vec<String>>,
    /// The same, by its v1 name.
    hash: Option<Vec<String>>,
    /// The hash algorithm OID (v2 name); must be the credential's.
    #[serde(rename = "hashAlgorithmOID")]
    hash_algorithm_oid: Option<String>,
    /// The same, by its v1 name.
    hash_algo: Option<String>,
}

/// A signature activation datum.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizeResponse {
    #[serde(rename = "SAD")]
    sad: String,
    /// Seconds it may be used for (`csc.sadLifetime`).
    expires_in: u64,
}

/// CSC `credentials/authorize`: a single-use SAD bound to the given hashes.
#[utoipa::path(post, path = "/csc/v2/credentials/authorize", tag = "csc", request_body = AuthorizeRequest,
    responses((status = 200, description = "The SAD", body = AuthorizeResponse), CscErrors),
    security(("bearer" = ["sign"])))]
pub async fn credentials_authorize(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<AuthorizeRequest>,
) -> Result<Json<AuthorizeResponse>, CscError> {
    principal.require(Scope::Sign)?;
    let (record, _) = credential(&state, principal.tenant.as_deref(), &req.credential_id).await?;
    check_hash_algorithm(
        req.hash_algorithm_oid.as_deref(),
        req.hash_algo.as_deref(),
        record.alg,
    )?;
    let hashes = hashes(req.hashes, req.hash, record.alg)?;
    if req.num_signatures as usize != hashes.len() {
        return Err(invalid(format!(
            "Invalid parameter numSignatures: {} for {} hashes",
            req.num_signatures,
            hashes.len()
        ))
        .into());
    }
    let mut sad = [0u8; 32];
    aws_lc_rs::rand::fill(&mut sad).map_err(|_| internal("no randomness for a SAD".into()))?;
    let sad = crate::crypto::base64url(&sad);
    let now = SystemTime::now();
    let authorization = Authorization {
        key_id: record.id.clone(),
        api_key: principal.key_id.clone().unwrap_or_default(),
        hashes: hashes.iter().map(hex::encode).collect(),
        expires_at: now + state.sad_lifetime,
    };
    let stored = state
        .gateway
        .catalog()
        .authorize(&sad_digest(&sad), &authorization, MAX_OUTSTANDING_SADS, now)
        .await
        .map_err(GatewayError::from)?;
    if !stored {
        return Err(invalid(format!(
            "this API key holds {MAX_OUTSTANDING_SADS} unused SADs; use or let them expire first"
        ))
        .into());
    }
    Ok(Json(AuthorizeResponse {
        sad,
        expires_in: state.sad_lifetime.as_secs(),
    }))
}

/// The catalog's name for a SAD: its SHA-256, hex.
fn sad_digest(sad: &str) -> String {
    hex::encode(digest(&SHA256, sad.as_bytes()))
}

/// `signatures/signHash`.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignHashRequest {
    #[serde(rename = "credentialID")]
    credential_id: String,
    /// From `credentials/authorize`; optional in implicit mode, single-use when given.
    #[serde(rename = "SAD")]
    sad: Option<String>,
    /// The hashes to sign, base64 (v2 name).
    hashes: Option<Vec<String>>,
    /// The same, by its v1 name.
    hash: Option<Vec<String>>,
    /// The hash algorithm OID (v2 name); needed when `signAlgo` does not imply it.
    #[serde(rename = "hashAlgorithmOID")]
    hash_algorithm_oid: Option<String>,
    /// The same, by its v1 name.
    hash_algo: Option<String>,
    /// The signature algorithm OID: one of the credential's `key.algo`.
    sign_algo: String,
    /// DER RSASSA-PSS-params, base64, for `signAlgo` RSASSA-PSS: must be PS256's
    /// (SHA-256, MGF1-SHA-256, 32-byte salt).
    sign_algo_params: Option<String>,
}

/// The signatures, in the order of the hashes.
#[derive(Serialize, ToSchema)]
pub struct SignHashResponse {
    /// Base64: DER `SEQUENCE {r, s}` for ECDSA, the modulus-sized value for RSA.
    signatures: Vec<String>,
}

/// CSC `signatures/signHash`: signs each hash with the credential's key.
#[utoipa::path(post, path = "/csc/v2/signatures/signHash", tag = "csc", request_body = SignHashRequest,
    responses((status = 200, description = "The signatures", body = SignHashResponse), CscErrors),
    security(("bearer" = ["sign"])))]
pub async fn sign_hash(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<SignHashRequest>,
) -> Result<Json<SignHashResponse>, CscError> {
    principal.require(Scope::Sign)?;
    let tenant = principal.tenant.as_deref();
    let (record, _) = credential(&state, tenant, &req.credential_id).await?;
    // From here on every outcome is recorded, like a REST sign's.
    let slot = state.audit.reserve().await.map_err(ApiError::from)?;
    let checked = async {
        if !accepts_sign_algo(record.alg, &req.sign_algo) {
            return Err(invalid(format!(
                "Invalid parameter signAlgo: this credential signs with {}",
                sign_algo(record.alg).unwrap_or_default()
            )));
        }
        if let Some(params) = &req.sign_algo_params {
            let ps256 = decode_base64(params).is_ok_and(|der| x509::is_ps256_params(&der));
            if record.alg != Alg::PS256 || !ps256 {
                return Err(invalid(
                    "Invalid parameter signAlgoParams: only RSASSA-PSS with SHA-256, MGF1-SHA-256 \
                     and a 32-byte salt is signed (the credential's PS256)",
                ));
            }
        }
        check_hash_algorithm(
            req.hash_algorithm_oid.as_deref(),
            req.hash_algo.as_deref(),
            record.alg,
        )?;
        let hashes = hashes(req.hashes, req.hash, record.alg)?;
        if let Some(sad) = &req.sad {
            redeem(&state, sad, &record, principal.key_id.as_deref(), &hashes).await?;
        }
        Ok(hashes)
    }
    .await;
    let (hashes, result) = match checked {
        Err(e) => (Vec::new(), Err(e)),
        Ok(hashes) => {
            let signed = state
                .gateway
                .sign_batch(tenant, &record.kid, ToSign::Digest(&hashes[..]), None)
                .await
                .map_err(ApiError::from);
            (hashes, signed)
        }
    };
    let recorded: Vec<String> = if result.is_ok() && state.audit.enabled() {
        hashes.iter().map(hex::encode).collect()
    } else {
        Vec::new()
    };
    let target = (Some(record.kid.as_str()), Some(record.provider.as_str()));
    slot.record(event(
        &principal,
        Action::SignDigest,
        target,
        recorded,
        &result,
    ))
    .await
    .map_err(ApiError::from)?;
    let (signatures, _) = result?;
    let signatures = signatures
        .iter()
        .map(|signature| match record.alg.key_kind() {
            KeyKind::Ec(_) => der::ecdsa_raw_to_der(signature)
                .map(|der| STANDARD.encode(der))
                .map_err(|e| internal(format!("cannot encode the signature as DER: {e}"))),
            _ => Ok(STANDARD.encode(signature)),
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(Json(SignHashResponse { signatures }))
}

/// Takes the SAD's authorisation: it must exist (unused), be unexpired, be for
/// this credential and API key, and cover every hash.
async fn redeem(
    state: &AppState,
    sad: &str,
    record: &KeyRecord,
    api_key: Option<&str>,
    hashes: &[Vec<u8>],
) -> Result<(), ApiError> {
    let taken = state
        .gateway
        .catalog()
        .take_authorization(&sad_digest(sad))
        .await
        .map_err(GatewayError::from)?;
    let Some(authorization) = taken else {
        return Err(invalid(
            "Invalid parameter SAD: unknown, already used, or expired",
        ));
    };
    if authorization.expires_at < SystemTime::now() {
        return Err(invalid("Invalid parameter SAD: expired"));
    }
    if authorization.key_id != record.id || authorization.api_key != api_key.unwrap_or_default() {
        return Err(invalid(
            "Invalid parameter SAD: issued for another credential or API key",
        ));
    }
    let mut allowed = authorization.hashes;
    for (i, hash) in hashes.iter().enumerate() {
        let hash = hex::encode(hash);
        match allowed.iter().position(|a| *a == hash) {
            Some(at) => {
                allowed.swap_remove(at);
            }
            None => {
                return Err(invalid(format!(
                    "Invalid parameter SAD: hash {i} is not among the hashes it was issued for"
                )));
            }
        }
    }
    Ok(())
}

/// CSC `signatures/timestamp`: not served (501).
#[utoipa::path(post, path = "/csc/v2/signatures/timestamp", tag = "csc",
    responses((status = 501, description = "Not served", body = CscErrorBody),
        (status = 401, description = "No API key, or one that is not valid", body = CscErrorBody)),
    security(("bearer" = [])))]
pub async fn timestamp() -> CscError {
    not_served(
        "signatures/timestamp",
        "use a time-stamping authority of your choice",
    )
}

/// CSC `signatures/signDoc`: not served (501).
#[utoipa::path(post, path = "/csc/v2/signatures/signDoc", tag = "csc",
    responses((status = 501, description = "Not served", body = CscErrorBody),
        (status = 401, description = "No API key, or one that is not valid", body = CscErrorBody)),
    security(("bearer" = [])))]
pub async fn sign_doc() -> CscError {
    not_served(
        "signatures/signDoc",
        "compute the document's hash and call signatures/signHash",
    )
}

fn not_served(method: &str, instead: &str) -> CscError {
    CscError {
        status: StatusCode::NOT_IMPLEMENTED,
        error: "not_implemented",
        description: format!("{method} is not served by kmsgw: {instead}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_the_signature_algorithms_their_certificates_use() {
        for &alg in Alg::ALL {
            match sign_algo(alg) {
                Some(algo) => {
                    assert_eq!(x509::signature_algorithm(alg).oid.to_string(), algo);
                    assert!(accepts_sign_algo(alg, algo), "{alg}");
                    assert!(hash_oid(alg).is_some(), "{alg}");
                }
                None => assert!(alg.prehash().is_none() && hash_oid(alg).is_none(), "{alg}"),
            }
        }
        assert!(accepts_sign_algo(Alg::ES384, oid::EC_PUBLIC_KEY));
        assert!(accepts_sign_algo(Alg::RS256, oid::RSA_ENCRYPTION));
        assert!(!accepts_sign_algo(Alg::PS256, oid::RSA_ENCRYPTION));
        assert!(!accepts_sign_algo(Alg::ES256, oid::ECDSA_SHA384));
        assert!(!accepts_sign_algo(Alg::EdDSA, "1.3.101.112"));
    }
}
