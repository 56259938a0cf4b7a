//! CSC `credentials/authorize` and `signatures/signHash`: signature activation
//! data kept in the catalog and redeemed once, and hashes signed through the
//! credential's provider.

use std::time::SystemTime;

use aws_lc_rs::digest::{SHA256, digest};
use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::credentials::credential;
use super::{
    CscBody, CscError, CscErrors, MAX_OUTSTANDING_SADS, MULTISIGN, accepts_sign_algo, hash_oid,
    internal, invalid, sign_algo,
};
use crate::api::keys::event;
use crate::api::{ApiError, AppState, Caller};
use crate::audit::Action;
use crate::catalog::{Authorization, KeyRecord};
use crate::config::Scope;
use crate::crypto::{Alg, KeyKind, ToSign, decode_base64, der};
use crate::gateway::GatewayError;
use crate::x509;

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
pub async fn authorize(
    State(state): State<AppState>,
    Extension(principal): Caller,
    CscBody(req): CscBody<AuthorizeRequest>,
) -> Result<Json<AuthorizeResponse>, CscError> {
    principal.require(Scope::Sign)?;
    let record = credential(&state, principal.tenant.as_deref(), &req.credential_id).await?;
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
    let record = credential(&state, tenant, &req.credential_id).await?;
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
        hashes.iter().map(|h| crate::audit::hex(h)).collect()
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
