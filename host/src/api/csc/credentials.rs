//! CSC `credentials/list` and `credentials/info`: which keys are credentials,
//! and what a client is told of one.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    CscBody, CscError, CscErrors, LIST_PAGE, MULTISIGN, internal, invalid, oid, sign_algo,
};
use crate::api::{ApiError, AppState, Caller};
use crate::catalog::KeyRecord;
use crate::config::Scope;
use crate::crypto::{Curve, KeyKind};
use crate::gateway::GatewayError;
use crate::x509;

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
    /// Also return each credential's information (`credentialInfos`); `credInfo`
    /// is accepted too.
    #[serde(default, alias = "credInfo")]
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
pub async fn list(
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

/// The credential `credential_id` of the caller's tenant: a key that is not
/// there, has no certificate or cannot sign digests (its algorithm or its
/// provider) is CSC's invalid `credentialID`, and nothing more is said or
/// recorded. One cached record lookup: no database read for a known key.
pub(super) async fn credential(
    state: &AppState,
    tenant: Option<&str>,
    credential_id: &str,
) -> Result<Arc<KeyRecord>, ApiError> {
    let unknown = || invalid("Invalid parameter credentialID");
    if !crate::gateway::valid_kid(credential_id) {
        return Err(unknown());
    }
    match state.gateway.key(tenant, credential_id).await {
        Ok(record) if record.certified && state.gateway.signs_digests(&record) => Ok(record),
        Ok(_) | Err(GatewayError::KeyNotFound(_)) => Err(unknown()),
        Err(e) => Err(e.into()),
    }
}

/// CSC `credentials/info`: a credential's key, certificate and authorisation mode.
#[utoipa::path(post, path = "/csc/v2/credentials/info", tag = "csc", request_body = InfoRequest,
    responses((status = 200, description = "The credential", body = CredentialInfo), CscErrors),
    security(("bearer" = ["keys:read"])))]
pub async fn info(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<InfoRequest>,
) -> Result<Json<CredentialInfo>, CscError> {
    principal.require(Scope::KeysRead)?;
    let record = credential(&state, principal.tenant.as_deref(), &req.credential_id).await?;
    // A rotation between the lookups leaves the new version without a chain.
    let x5c = state
        .gateway
        .x5c_of(&record)
        .await?
        .ok_or_else(|| invalid("Invalid parameter credentialID"))?;
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
