//! Operator routes: liveness, readiness, providers and their health, the audit
//! log, metrics.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorResponses;
use super::error::{ApiError, ErrorBody};
use super::paging::{page_limit, query_of};
use super::{AppState, Caller};
use crate::audit::AuditFilter;
use crate::audit::{Action, AuditRecord, Verification};
use crate::config::Scope;
use crate::error_code::ErrorCode;
use crate::providers::wasm::limits::GuestLimits;
use crate::providers::{Capabilities, ProviderKind};

/// Liveness.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    ok: bool,
}

/// The contract's liveness probe: the process is up.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive", body = Liveness),
              (status = 401, description = "An `Authorization` header that holds no valid API key", body = ErrorBody)))]
pub async fn health() -> Json<Liveness> {
    Json(Liveness { ok: true })
}

/// A provider that is not ready, and why.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Waiting {
    provider_id: String,
    error: String,
}

/// Readiness.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    ready: bool,
    /// The providers that have not initialised yet.
    waiting_for: Vec<Waiting>,
    /// While the master key is not unsealed: its seal and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

/// A master key still sealed.
#[derive(Serialize, ToSchema)]
pub struct Sealed {
    /// The seal's name (`vault-transit:<mount>/<key>`, …).
    seal: String,
    /// Why it could not be unsealed (the last attempt).
    error: String,
}

/// Ready once the master key is unsealed and every provider has initialised
/// (answered a health probe).
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Every provider initialised", body = Readiness),
              (status = 401, description = "An `Authorization` header that holds no valid API key", body = ErrorBody),
              (status = 503, description = "Sealed, or some provider has not initialised", body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let waiting_for: Vec<_> = state
        .gateway
        .not_ready()
        .await
        .into_iter()
        .map(|h| Waiting {
            provider_id: h.provider_id,
            error: h.health.error.unwrap_or_else(|| "not initialised".into()),
        })
        .collect();
    let sealed = state.custody.as_ref().and_then(|c| {
        c.master.sealed_because().map(|error| Sealed {
            seal: c.seal.name(),
            error,
        })
    });
    let ready = waiting_for.is_empty() && sealed.is_none();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            waiting_for,
            sealed,
        }),
    )
}

/// One provider's health.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderHealthLine {
    provider_id: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    ok: bool,
    latency_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Every provider probed in parallel (EUDIPLO's shape).
#[utoipa::path(get, path = "/health/kms", tag = "operations",
    responses((status = 200, description = "One line per provider", body = [ProviderHealthLine]), ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn health_kms(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Json<Vec<ProviderHealthLine>>, ApiError> {
    principal.require(Scope::Admin)?;
    let lines = state
        .gateway
        .health()
        .await
        .into_iter()
        .map(|h| ProviderHealthLine {
            provider_id: h.provider_id,
            kind: h.kind,
            ok: h.health.ok,
            latency_ms: u64::try_from(h.health.latency.as_millis()).unwrap_or(u64::MAX),
            error: h.health.error,
        })
        .collect();
    Ok(Json(lines))
}

/// A configured provider.
#[derive(Serialize, ToSchema)]
pub struct ProviderInfo {
    id: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    capabilities: Capabilities,
    /// What a guest may make the host hold (guests only).
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<GuestLimits>,
    /// The named guest type the entry was written as (`azure-kv`, `cosmian-kms`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    adapter: Option<String>,
    /// Where a guest's component came from: a file, or the pinned `oci://`
    /// reference (`admin` scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    component: Option<String>,
    /// The key id (JWK thumbprint) of the publisher whose signature the guest's
    /// component carries, when its entry requires one (`publicKeys`; `admin` scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    publisher: Option<String>,
    /// What a guest holds and has been through (guests; `admin` scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<GuestUsage>,
    /// The master key generation new keys are sealed under (`db` providers;
    /// absent while sealed).
    #[serde(rename = "sealGeneration", skip_serializing_if = "Option::is_none")]
    seal_generation: Option<u32>,
}

/// A guest's use of what the host lends it, since the gateway started.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestUsage {
    /// Bytes in its storage (against `limits.storageBytes`).
    storage_bytes: i64,
    /// Entries in its storage (against `limits.storageEntries`).
    storage_entries: i64,
    log_lines_dropped: u64,
    traps: u64,
    timeouts: u64,
    denied_egress: u64,
    /// Instances dropped because a call left resources behind.
    recycled: u64,
    instances: usize,
    instances_in_use: usize,
}

/// Who the caller is: its API key, tenant and scopes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The API key's id; null when the gateway has no API keys.
    api_key: Option<String>,
    /// The tenant whose keys the caller works on; null outside tenants.
    tenant: Option<String>,
    scopes: Vec<Scope>,
}

/// The caller's API key, tenant and scopes (what a console shows and offers).
#[utoipa::path(get, path = "/whoami", tag = "operations",
    responses((status = 200, description = "The caller", body = Identity), ErrorResponses))]
pub async fn whoami(Extension(principal): Caller) -> Json<Identity> {
    Json(Identity {
        api_key: principal.key_id.clone(),
        tenant: principal.tenant.clone(),
        scopes: principal.scopes().to_vec(),
    })
}

/// What each configured provider is and can do.
#[utoipa::path(get, path = "/providers", tag = "operations",
    responses((status = 200, description = "The providers", body = [ProviderInfo]), ErrorResponses),
    security(("bearer" = ["keys:read"])))]
pub async fn providers(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Json<Vec<ProviderInfo>>, ApiError> {
    principal.require(Scope::KeysRead)?;
    let storage = if principal.may(Scope::Admin) {
        state
            .gateway
            .catalog()
            .guest_usage()
            .await
            .map_err(storage)?
    } else {
        Vec::new()
    };
    Ok(Json(
        state
            .gateway
            .registry()
            .providers()
            .iter()
            .map(|r| {
                let guest = r.provider.describe();
                let id = r.provider.id();
                let admin = guest.filter(|_| principal.may(Scope::Admin));
                let usage = admin.as_ref().map(|g| {
                    let (entries, bytes) = storage
                        .iter()
                        .find(|(provider, _, _)| provider == id)
                        .map_or((0, 0), |(_, entries, bytes)| (*entries, *bytes));
                    GuestUsage {
                        storage_bytes: bytes,
                        storage_entries: entries,
                        log_lines_dropped: g.stats.log_lines_dropped,
                        traps: g.stats.traps,
                        timeouts: g.stats.timeouts,
                        denied_egress: g.stats.denied_egress,
                        recycled: g.stats.recycled,
                        instances: g.stats.instances,
                        instances_in_use: g.stats.instances_in_use,
                    }
                });
                ProviderInfo {
                    id: id.to_owned(),
                    kind: r.provider.kind(),
                    description: r.description.clone(),
                    capabilities: r.provider.capabilities().clone(),
                    limits: guest.map(|g| g.limits.clone()),
                    adapter: guest.and_then(|g| g.adapter).map(str::to_owned),
                    component: admin.as_ref().map(|g| g.component.to_owned()),
                    publisher: admin.as_ref().and_then(|g| g.publisher).map(str::to_owned),
                    usage,
                    seal_generation: state
                        .custody
                        .as_ref()
                        .filter(|_| r.provider.kind() == ProviderKind::Db)
                        .and_then(|c| c.master.generation()),
                }
            })
            .collect(),
    ))
}

/// Metrics in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain"), ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<impl IntoResponse, ApiError> {
    principal.require(Scope::Admin)?;
    let reloads = state.reloader.as_ref().map(|r| r.counts());
    let text = state
        .metrics
        .render(&state.gateway, reloads, state.custody.as_deref())
        .await;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// `GET /audit` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this seq (the `nextAfter` of the previous page).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Only records of this kid.
    kid: Option<String>,
    /// Only records of this action: create, import, delete, force-delete, sign, sign-digest,
    /// rotate, csr, certificate-import, certificate-issue, reload, seal-rotate, seal-migrate,
    /// backup or restore.
    action: Option<String>,
}

/// A page of audit records.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    records: Vec<AuditRecord>,
    /// The `after` of the next page; null on the last page.
    next_after: Option<i64>,
}

/// Audit records in chain order (a tenant's API key sees its tenant's records).
#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "A page of records", body = AuditPage), ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn audit_page(
    State(state): State<AppState>,
    Extension(principal): Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    principal.require(Scope::Admin)?;
    let query = query_of(query)?;
    let limit = page_limit(query.limit)?;
    if query.after.is_some_and(|a| a < 0) {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "`after` must be at least 0",
        ));
    }
    let action = match query.action.as_deref() {
        None => None,
        Some(name) => Some(Action::parse(name).ok_or_else(|| {
            let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
            ApiError::bad_request(
                ErrorCode::InvalidQuery,
                format!("`action` must be one of {}", names.join(", ")),
            )
        })?),
    };
    // Records hold no control characters (they are escaped), so such a filter
    // matches nothing; PostgreSQL would refuse a NUL.
    if query
        .kid
        .as_deref()
        .is_some_and(|kid| kid.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            ErrorCode::InvalidQuery,
            "`kid` holds a control character; recorded kids show them escaped (\\u{0})",
        ));
    }
    let filter = AuditFilter {
        after: query.after.unwrap_or(0),
        limit,
        tenant: principal.tenant.as_deref().map(Some),
        kid: query.kid.as_deref(),
        action,
    };
    let records = state.audit.page(&filter).await.map_err(storage)?;
    let next_after = (records.len() == limit as usize)
        .then(|| records.last().map(|r| r.seq))
        .flatten();
    Ok(Json(AuditPage {
        records,
        next_after,
    }))
}

/// Recomputes the whole hash chain.
#[utoipa::path(get, path = "/audit/verify", tag = "audit",
    responses((status = 200, description = "The verdict", body = Verification), ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn audit_verify(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Json<Verification>, ApiError> {
    principal.require(Scope::Admin)?;
    Ok(Json(state.audit.verify().await.map_err(storage)?))
}

fn storage(e: crate::catalog::CatalogError) -> ApiError {
    ApiError::Gateway(e.into())
}

/// Reload kms.json: added and changed providers (a guest's new component too) and
/// the API keys take effect; requests already running finish on the old
/// providers. An invalid file changes nothing and is answered with every problem.
#[utoipa::path(post, path = "/admin/reload", tag = "operations",
    responses((status = 200, description = "What the reload changed", body = crate::reload::ReloadReport),
        ErrorResponses),
    security(("bearer" = ["admin"])))]
pub async fn reload(
    State(state): State<AppState>,
    Extension(principal): Caller,
) -> Result<Json<crate::reload::ReloadReport>, ApiError> {
    principal.require(Scope::Admin)?;
    let Some(reloader) = &state.reloader else {
        return Err(ApiError::bad_request(
            ErrorCode::NoConfigFile,
            "this gateway cannot reload",
        ));
    };
    let actor = principal.key_id.as_deref().unwrap_or("anonymous");
    reloader.reload(actor).await.map(Json).map_err(|e| match e {
        crate::reload::ReloadError::NoFile => {
            ApiError::bad_request(ErrorCode::NoConfigFile, e.to_string())
        }
        crate::reload::ReloadError::Config(_) => {
            ApiError::bad_request(ErrorCode::InvalidConfig, e.to_string())
        }
        crate::reload::ReloadError::Refused(_) => {
            ApiError::bad_request(ErrorCode::ReloadRefused, e.to_string())
        }
    })
}
