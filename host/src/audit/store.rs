//! The audit log's table: appending records inside a write transaction (the one
//! that carries the change they describe, or the writer's own), and reading
//! them back exactly as they were hashed.

use sqlx::Row;

use super::{Action, AuditRecord, ENCODING, Event, GENESIS};
use crate::catalog::{Backend, Catalog, CatalogError, Write};

/// The columns of `audit_log`, in the order the queries below use.
macro_rules! audit_columns {
    () => {
        "seq, time, api_key, tenant, action, kid, provider, outcome, message_sha256, prev_hash, hash, encoding"
    };
}

/// Rows per audit INSERT statement (12 parameters each; far below both
/// databases' parameter limits).
const ROWS_PER_INSERT: usize = 64;
/// The advisory lock replicas on PostgreSQL take to extend the chain.
const CHAIN_LOCK: i64 = 0x6b6d_7367_7761_7564;

/// The end of the chain: the last record's seq and hash (0 and [`GENESIS`] for
/// an empty log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub seq: i64,
    pub hash: String,
}

/// Which records [`super::Audit::page`] returns.
#[derive(Debug)]
pub struct AuditFilter<'a> {
    /// Records with a greater seq.
    pub after: i64,
    pub limit: u32,
    /// Only this tenant's records (`Some(None)`: only those outside tenants); `None`: all.
    pub tenant: Option<Option<&'a str>>,
    pub kid: Option<&'a str>,
    pub action: Option<Action>,
}

impl Default for AuditFilter<'_> {
    fn default() -> Self {
        AuditFilter {
            after: 0,
            limit: 100,
            tenant: None,
            kid: None,
            action: None,
        }
    }
}

/// Appends `events` in `tx` after `head` (`None`: not known, read it). On
/// PostgreSQL the head is always read under an advisory lock held to the end of
/// `tx`, as other replicas append too. Returns the new head.
///
/// # Errors
/// Database failures (the caller's transaction then commits nothing).
pub async fn append(
    catalog: &Catalog,
    tx: &mut Write,
    head: Option<Link>,
    events: &[(i64, Event)],
) -> Result<Link, CatalogError> {
    let head = match (catalog.backend(), head) {
        (Backend::Sqlite, Some(head)) => head,
        (backend, _) => {
            if backend == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CHAIN_LOCK)
                    .execute(&mut **tx)
                    .await?;
            }
            let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut **tx)
                .await?;
            match row {
                Some(row) => Link {
                    seq: row.try_get("seq")?,
                    hash: row.try_get("hash")?,
                },
                None => Link {
                    seq: 0,
                    hash: GENESIS.to_owned(),
                },
            }
        }
    };
    let mut records: Vec<AuditRecord> = Vec::with_capacity(events.len());
    for (time, event) in events {
        let previous = records.last().map_or_else(
            || (head.seq, head.hash.as_str()),
            |r| (r.seq, r.hash.as_str()),
        );
        let record = AuditRecord::chained(previous, *time, event);
        records.push(record);
    }
    // Several rows per statement: one round trip to the driver per chunk.
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            concat!("INSERT INTO audit_log (", audit_columns!(), ") VALUES {}"),
            catalog.placeholders(chunk.len(), 12)
        );
        // The statement is built only from our own placeholders.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for record in chunk {
            query = query
                .bind(record.seq)
                .bind(record.time)
                .bind(record.api_key.as_deref())
                .bind(record.tenant.as_deref())
                .bind(record.action.as_str())
                .bind(record.kid.as_deref())
                .bind(record.provider.as_deref())
                .bind(record.outcome.as_str())
                .bind(record.stored_message_hashes())
                .bind(record.prev_hash.as_str())
                .bind(record.hash.as_str())
                .bind(i64::from(record.encoding));
        }
        query.execute(&mut **tx).await?;
    }
    Ok(records.pop().map_or(head, |last| Link {
        seq: last.seq,
        hash: last.hash,
    }))
}

/// Records matching `filter`, by seq.
///
/// # Errors
/// Database failures.
pub async fn page(
    catalog: &Catalog,
    filter: &AuditFilter<'_>,
) -> Result<Vec<AuditRecord>, CatalogError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        audit_columns!(),
        " FROM audit_log WHERE seq > $1 AND ($2 = '*' OR COALESCE(tenant, '') = $2) \
         AND ($3 = '' OR kid = $3) AND ($4 = '' OR action = $4) ORDER BY seq LIMIT $5"
    ))
    .bind(filter.after)
    .bind(match filter.tenant {
        None => "*",
        Some(tenant) => tenant.unwrap_or(""),
    })
    .bind(filter.kid.unwrap_or(""))
    .bind(filter.action.map_or("", Action::as_str))
    .bind(i64::from(filter.limit))
    .fetch_all(catalog.pool())
    .await?;
    rows.iter().map(record_of).collect()
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<AuditRecord, CatalogError> {
    let encoding = u8::try_from(row.try_get::<i64, _>("encoding")?)
        .ok()
        .filter(|e| (1..=ENCODING).contains(e))
        .ok_or_else(|| CatalogError::Corrupt("an audit record's encoding".into()))?;
    let optional = |name: &str| -> Result<Option<String>, CatalogError> {
        let value: Option<String> = row.try_get(name)?;
        // Encoding 1 stored an absent field as ''.
        Ok(value.filter(|v| encoding > 1 || !v.is_empty()))
    };
    let hashes: Option<String> = row.try_get("message_sha256")?;
    Ok(AuditRecord {
        seq: row.try_get("seq")?,
        time: row.try_get("time")?,
        api_key: optional("api_key")?,
        tenant: optional("tenant")?,
        action: row.try_get("action")?,
        kid: optional("kid")?,
        provider: optional("provider")?,
        outcome: row.try_get("outcome")?,
        message_sha256: None,
        message_sha256s: Vec::new(),
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        encoding,
    }
    .with_stored_message_hashes(hashes.filter(|h| !h.is_empty())))
}
