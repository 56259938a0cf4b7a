//! The audit log's table: appending records inside a write transaction (a
//! change's record in the change's own, as a row of its own; the writer's
//! batches as links), and reading them back exactly as they were hashed.

use std::time::Instant;

use sqlx::Row as _;

use super::link::{self, StoredLink};
use super::{Action, AuditRecord, ENCODING as RECORD_ENCODING, Event, GENESIS};
use crate::catalog::{Backend, Catalog, CatalogError, Write};

/// The columns of `audit_log`, in the order the queries below use.
macro_rules! audit_columns {
    () => {
        "seq, time, api_key, tenant, action, kid, provider, outcome, message_sha256, prev_hash, hash, encoding"
    };
}

/// Rows read at once: with links of up to 256 KiB, at most some 25 MiB.
const READ_ROWS: i64 = 100;
/// The advisory lock replicas on PostgreSQL take to extend the chain.
const CHAIN_LOCK: i64 = 0x6b6d_7367_7761_7564;

/// The end of the chain: the last row's seq and hash (0 and [`GENESIS`] for
/// an empty log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct End {
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

impl AuditFilter<'_> {
    /// Whether `record` is one this filter asks for (positions aside).
    fn admits(&self, record: &AuditRecord) -> bool {
        self.tenant
            .is_none_or(|t| record.tenant.as_deref().unwrap_or("") == t.unwrap_or(""))
            && self
                .kid
                .is_none_or(|kid| record.kid.as_deref() == Some(kid))
            && self.action.is_none_or(|a| record.action == a.as_str())
    }
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

/// Reads the chain's end in `tx` unless `head` knows it (`None`: not known). On
/// PostgreSQL it is always read, under an advisory lock held to the end of
/// `tx`, as other replicas append too. Also returns when `tx` had the chain to
/// itself (on SQLite, a write transaction has it from its start).
async fn end(
    catalog: &Catalog,
    tx: &mut Write,
    head: Option<End>,
) -> Result<(End, Instant), CatalogError> {
    if let (Backend::Sqlite, Some(head)) = (catalog.backend(), &head) {
        return Ok((head.clone(), Instant::now()));
    }
    if catalog.backend() == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHAIN_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    let locked = Instant::now();
    let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut **tx)
        .await?;
    let end = match row {
        Some(row) => End {
            seq: row.try_get("seq")?,
            hash: row.try_get("hash")?,
        },
        None => End {
            seq: 0,
            hash: GENESIS.to_owned(),
        },
    };
    Ok((end, locked))
}

/// Appends `event`'s record (at `time`) as a row of its own in `tx` after
/// `head` (`None`: not known, read it). Returns the new head, and when `tx`
/// had the chain.
///
/// # Errors
/// Database failures (the caller's transaction then commits nothing).
pub async fn append(
    catalog: &Catalog,
    tx: &mut Write,
    head: Option<End>,
    time: i64,
    event: &Event,
) -> Result<(End, Instant), CatalogError> {
    let (head, locked) = end(catalog, tx, head).await?;
    let record = AuditRecord::chained((head.seq, &head.hash), time, event);
    sqlx::query(concat!(
        "INSERT INTO audit_log (",
        audit_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    ))
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
    .bind(i64::from(record.encoding))
    .execute(&mut **tx)
    .await?;
    let end = End {
        seq: record.seq,
        hash: record.hash,
    };
    Ok((end, locked))
}

/// Appends `events` (with their times) in `tx` after `head` as links that
/// carry many records each (see [`link`]). Returns the new head, and when `tx`
/// had the chain.
///
/// # Errors
/// Database failures (the caller's transaction then commits nothing).
pub async fn append_links(
    catalog: &Catalog,
    tx: &mut Write,
    head: Option<End>,
    events: &[(i64, Event)],
) -> Result<(End, Instant), CatalogError> {
    let (mut head, locked) = end(catalog, tx, head).await?;
    for draft in link::drafts(events) {
        let stored = StoredLink::after((head.seq, &head.hash), draft);
        sqlx::query(
            "INSERT INTO audit_log (seq, first_seq, time, action, outcome, entries, prev_hash, \
             hash, encoding) VALUES ($1, $2, $3, $4, '', $5, $6, $7, $8)",
        )
        .bind(stored.seq)
        .bind(stored.first_seq)
        .bind(stored.time)
        .bind(link::ACTION)
        .bind(stored.entries.as_str())
        .bind(stored.prev_hash.as_str())
        .bind(stored.hash.as_str())
        .bind(i64::from(link::ENCODING))
        .execute(&mut **tx)
        .await?;
        head = End {
            seq: stored.seq,
            hash: stored.hash,
        };
    }
    Ok((head, locked))
}

/// A row of the chain: a record of its own, or a link carrying several.
pub enum Row {
    Record(AuditRecord),
    Link(StoredLink),
}

impl Row {
    /// The row's place in the chain (a link's last record).
    pub fn seq(&self) -> i64 {
        match self {
            Row::Record(record) => record.seq,
            Row::Link(link) => link.seq,
        }
    }

    /// The first record's position.
    pub fn first_seq(&self) -> i64 {
        match self {
            Row::Record(record) => record.seq,
            Row::Link(link) => link.first_seq,
        }
    }

    /// Whether the row follows `end` and holds what its hash covers.
    pub fn holds_after(&self, end: &End) -> bool {
        match self {
            Row::Record(r) => r.prev_hash == end.hash && r.hash_holds(),
            Row::Link(l) => l.prev_hash == end.hash && l.holds(),
        }
    }

    /// The chain's end once this row is in it.
    pub fn into_end(self) -> End {
        match self {
            Row::Record(r) => End {
                seq: r.seq,
                hash: r.hash,
            },
            Row::Link(l) => End {
                seq: l.seq,
                hash: l.hash,
            },
        }
    }
}

/// Up to [`READ_ROWS`] rows after position `after`, by seq; with `filter`,
/// records of their own only when they match it (links always: their records
/// are filtered by [`page`]).
///
/// # Errors
/// Database failures.
pub async fn rows(
    catalog: &Catalog,
    after: i64,
    filter: Option<&AuditFilter<'_>>,
) -> Result<Vec<Row>, CatalogError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        audit_columns!(),
        ", first_seq, entries FROM audit_log WHERE seq > $1 AND (encoding = $6 OR (\
         ($2 = '*' OR COALESCE(tenant, '') = $2) AND ($3 = '' OR kid = $3) \
         AND ($4 = '' OR action = $4))) ORDER BY seq LIMIT $5"
    ))
    .bind(after)
    .bind(match filter.and_then(|f| f.tenant) {
        None => "*",
        Some(tenant) => tenant.unwrap_or(""),
    })
    .bind(filter.and_then(|f| f.kid).unwrap_or(""))
    .bind(filter.and_then(|f| f.action).map_or("", Action::as_str))
    .bind(READ_ROWS)
    .bind(i64::from(link::ENCODING))
    .fetch_all(catalog.pool())
    .await?;
    rows.iter().map(row_of).collect()
}

/// Records matching `filter`, by seq: those of links one by one.
///
/// # Errors
/// Database failures; a link whose entries cannot be read.
pub async fn page(
    catalog: &Catalog,
    filter: &AuditFilter<'_>,
) -> Result<Vec<AuditRecord>, CatalogError> {
    let limit = filter.limit as usize;
    let mut records = Vec::new();
    let mut after = filter.after;
    while records.len() < limit {
        let rows = rows(catalog, after, Some(filter)).await?;
        let last_page = rows.len() < READ_ROWS as usize;
        for row in rows {
            after = row.seq();
            match row {
                Row::Record(record) => records.push(record),
                Row::Link(link) => records.extend(
                    link.records()
                        .map_err(CatalogError::Corrupt)?
                        .into_iter()
                        .filter(|r| r.seq > filter.after && filter.admits(r)),
                ),
            }
            if records.len() >= limit {
                break;
            }
        }
        if last_page {
            break;
        }
    }
    records.truncate(limit);
    Ok(records)
}

fn row_of(row: &sqlx::any::AnyRow) -> Result<Row, CatalogError> {
    let encoding = row.try_get::<i64, _>("encoding")?;
    if encoding != i64::from(link::ENCODING) {
        return record_of(row).map(Row::Record);
    }
    let seq: i64 = row.try_get("seq")?;
    let action: String = row.try_get("action")?;
    let outcome: String = row.try_get("outcome")?;
    let mut bare = action == link::ACTION && outcome.is_empty();
    for column in ["api_key", "tenant", "kid", "provider", "message_sha256"] {
        bare &= row.try_get::<Option<String>, _>(column)?.is_none();
    }
    Ok(Row::Link(StoredLink {
        // A link without a first position can hold no record.
        first_seq: row
            .try_get::<Option<i64>, _>("first_seq")?
            .unwrap_or(seq.saturating_add(1)),
        seq,
        time: row.try_get("time")?,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
        entries: row
            .try_get::<Option<String>, _>("entries")?
            .unwrap_or_default(),
        bare,
    }))
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<AuditRecord, CatalogError> {
    let encoding = u8::try_from(row.try_get::<i64, _>("encoding")?)
        .ok()
        .filter(|e| (1..=RECORD_ENCODING).contains(e))
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
        link: None,
    }
    .with_stored_message_hashes(hashes.filter(|h| !h.is_empty())))
}
