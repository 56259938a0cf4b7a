//! Key routes: create, import, sign, delete, read, list, JWKS.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, JsonBody};
use crate::catalog::KeyRecord;
use crate::crypto::{PrivateKey, PublicJwk, base64url, decode_base64};
use crate::providers::Alg;

/// Largest page of `GET /keys`.
const MAX_PAGE: u32 = 1000;
/// Default page of `GET /keys`.
const DEFAULT_PAGE: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    kid: Option<String>,
    alg: Option<String>,
    /// EUDIPLO calls this `kmsProvider`; both spellings work.
    #[serde(alias = "kmsProvider")]
    provider: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ImportKeyRequest {
    private_jwk: serde_json::Value,
    alg: Option<String>,
    #[serde(alias = "kmsProvider")]
    provider: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    data: String,
    alg: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// A key's public record.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyResponse {
    kid: String,
    provider: String,
    alg: Alg,
    public_jwk: PublicJwk,
    created_at: String,
}

impl From<&KeyRecord> for KeyResponse {
    fn from(record: &KeyRecord) -> Self {
        KeyResponse {
            kid: record.kid.clone(),
            provider: record.provider.clone(),
            alg: record.alg,
            public_jwk: record.public_jwk.clone(),
            created_at: humantime::format_rfc3339_millis(record.created_at).to_string(),
        }
    }
}

#[derive(Serialize)]
pub struct SignResponse {
    signature: String,
    kid: String,
    alg: Alg,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyPage {
    keys: Vec<KeyResponse>,
    next_cursor: Option<String>,
}

#[derive(Serialize)]
pub struct Jwks {
    keys: Vec<PublicJwk>,
}

fn parse_alg(alg: Option<&str>) -> Result<Option<Alg>, ApiError> {
    alg.map(|name| {
        Alg::parse(name).ok_or_else(|| {
            let known: Vec<_> = Alg::ALL.iter().map(|a| a.as_str()).collect();
            ApiError::bad_request(
                "unsupported_alg",
                format!(
                    "algorithm `{name}` is not supported; use one of {}",
                    known.join(", ")
                ),
            )
        })
    })
    .transpose()
}

/// `POST /keys`
pub async fn create(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<CreateKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    let alg = parse_alg(req.alg.as_deref())?;
    let record = state
        .gateway
        .create_key(req.kid, alg, req.provider.as_deref())
        .await?;
    Ok(Json(KeyResponse::from(record.as_ref())))
}

/// `POST /keys/{kid}/import`
pub async fn import(
    State(state): State<AppState>,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<ImportKeyRequest>,
) -> Result<Json<KeyResponse>, ApiError> {
    let jwk_alg = req.private_jwk.get("alg").and_then(|a| a.as_str());
    let alg = parse_alg(req.alg.as_deref().or(jwk_alg))?;
    let key = PrivateKey::from_jwk(&req.private_jwk)
        .map_err(|e| ApiError::bad_request("invalid_jwk", e.to_string()))?;
    let record = state
        .gateway
        .import_key(kid, &key, alg, req.provider.as_deref())
        .await?;
    Ok(Json(KeyResponse::from(record.as_ref())))
}

/// `POST /keys/{kid}/sign`
pub async fn sign(
    State(state): State<AppState>,
    Path(kid): Path<String>,
    JsonBody(req): JsonBody<SignRequest>,
) -> Result<Json<SignResponse>, ApiError> {
    let alg = parse_alg(req.alg.as_deref())?;
    let message = decode_base64(&req.data).map_err(|_| {
        ApiError::bad_request(
            "invalid_base64",
            "`data` is neither standard nor url-safe base64",
        )
    })?;
    let (signature, alg) = state.gateway.sign(&kid, &message, alg).await?;
    Ok(Json(SignResponse {
        signature: base64url(&signature),
        kid,
        alg,
    }))
}

/// `DELETE /keys/{kid}`
pub async fn delete(
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.gateway.delete_key(&kid).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /keys/{kid}`
pub async fn get(
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<KeyResponse>, ApiError> {
    let record = state.gateway.key(&kid).await?;
    Ok(Json(KeyResponse::from(record.as_ref())))
}

/// `GET /keys?cursor=&limit=`: a page of keys in kid order; `nextCursor` is null on the last page.
pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("`limit` must be between 1 and {MAX_PAGE}"),
        ));
    }
    let records = state.gateway.list(query.cursor.as_deref(), limit).await?;
    let next_cursor = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.kid.clone()))
        .flatten();
    Ok(Json(KeyPage {
        keys: records.iter().map(KeyResponse::from).collect(),
        next_cursor,
    }))
}

/// `GET /.well-known/jwks.json`: the public JWKs of every live key.
pub async fn jwks(State(state): State<AppState>) -> Result<Json<Jwks>, ApiError> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = state.gateway.list(cursor.as_deref(), MAX_PAGE).await?;
        let full = page.len() == MAX_PAGE as usize;
        cursor = page.last().map(|r| r.kid.clone());
        keys.extend(page.into_iter().map(|r| r.public_jwk));
        if !full {
            break;
        }
    }
    Ok(Json(Jwks { keys }))
}
