//! Encrypted backup and restore of a whole catalog: keys, versions,
//! certificates, rotation policies, usage, guest storage, the audit log.
//!
//! A backup is read in one transaction (a consistent snapshot, beside a live
//! gateway). The file is a JSON header line (format, the seal's name and the
//! master key generations as that seal wraps them) and then chunks of rows,
//! each a line of base64 sealed under the current master key generation with
//! its position as associated data, the last one counting the rows: without
//! the seal nothing in it can be read, and a chunk changed, moved, dropped or
//! cut off fails the restore. Key material inside stays sealed as it was.
//!
//! A restore needs an empty database and the backup's seal; it writes
//! everything in one transaction, so a failure writes nothing.

use std::collections::BTreeMap;
use std::io::BufRead;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::{Custody, CustodyError, Seal};
use crate::catalog::{Backend, Catalog, CatalogError};
use crate::crypto::seal::{KeyBytes, Keyring};

const FORMAT: u32 = 1;
/// Rows per sealed chunk.
const CHUNK_ROWS: usize = 500;

/// A column's type as the backup carries it.
#[derive(Clone, Copy)]
enum Column {
    Text,
    Int,
}

use Column::{Int, Text};

/// A table a backup holds: its columns and the order its rows are read in.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Column)],
    order: &'static str,
    /// How many of the last columns came after backups began: a backup
    /// without them restores them as NULL.
    added: usize,
}

/// The tables a backup holds, in an order that restores without breaking a
/// reference (every column read as nullable).
const TABLES: &[Table] = &[
    Table {
        name: "keys",
        columns: &[
            ("kid", Text),
            ("provider", Text),
            ("external_id", Text),
            ("alg", Text),
            ("public_jwk", Text),
            ("created_at", Int),
            ("tenant", Text),
            ("sign_count", Int),
            ("last_used_at", Int),
            ("version", Int),
            ("rotated_at", Int),
            ("rotate_every_ms", Int),
            ("grace_ms", Int),
            ("certificate_policy", Text),
        ],
        order: "kid",
        added: 0,
    },
    Table {
        name: "db_key_material",
        columns: &[("kid", Text), ("sealed", Text), ("generation", Int)],
        order: "kid",
        added: 0,
    },
    Table {
        name: "key_versions",
        columns: &[
            ("kid", Text),
            ("version", Int),
            ("state", Text),
            ("external_id", Text),
            ("public_jwk", Text),
            ("created_at", Int),
            ("grace_until", Int),
            ("retired_at", Int),
            ("x5c", Text),
            ("cert_not_before", Int),
            ("cert_not_after", Int),
        ],
        order: "kid, version",
        added: 0,
    },
    Table {
        name: "db_version_material",
        columns: &[("id", Text), ("sealed", Text), ("generation", Int)],
        order: "id",
        added: 0,
    },
    Table {
        name: "guest_kv",
        columns: &[
            ("provider", Text),
            ("key", Text),
            ("value", Text),
            ("size", Int),
            ("generation", Int),
        ],
        order: "provider, key",
        added: 0,
    },
    Table {
        name: "guest_usage",
        columns: &[("provider", Text), ("entries", Int), ("bytes", Int)],
        order: "provider",
        added: 0,
    },
    Table {
        name: "audit_log",
        columns: &[
            ("seq", Int),
            ("time", Int),
            ("api_key", Text),
            ("tenant", Text),
            ("action", Text),
            ("kid", Text),
            ("provider", Text),
            ("outcome", Text),
            ("message_sha256", Text),
            ("prev_hash", Text),
            ("hash", Text),
            ("encoding", Int),
            ("first_seq", Int),
            ("entries", Text),
        ],
        order: "seq",
        added: 2,
    },
    Table {
        name: "meta",
        columns: &[("name", Text), ("value", Text)],
        order: "name",
        added: 0,
    },
];

/// The first line of a backup file.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    kmsgw_backup: u32,
    created_at: u64,
    seal: String,
    generations: Vec<Wrapped>,
}

#[derive(Serialize, Deserialize)]
struct Wrapped {
    generation: u32,
    wrapped: String,
}

/// One sealed chunk's content.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Chunk {
    Rows {
        table: String,
        rows: Vec<Vec<Value>>,
    },
    End {
        counts: BTreeMap<String, u64>,
    },
}

fn chunk_aad(index: u64) -> String {
    format!("kmsgw:backup:{FORMAT}:{index}")
}

/// What a backup or restore moved: rows per table.
pub type Counts = BTreeMap<String, u64>;

/// Writes the sealed chunks of a backup to `out`, counting rows.
struct ChunkWriter<'a, W: std::io::Write> {
    out: &'a mut W,
    ring: &'a Keyring,
    index: u64,
}

impl<W: std::io::Write> ChunkWriter<'_, W> {
    fn write(&mut self, chunk: &Chunk) -> Result<(), CustodyError> {
        let json = zeroize::Zeroizing::new(serde_json::to_vec(chunk).expect("rows serialise"));
        let sealed = self.ring.seal(&chunk_aad(self.index), &json);
        self.index += 1;
        writeln!(self.out, "{}", STANDARD.encode(sealed))
            .map_err(|e| CustodyError::Refused(format!("cannot write the backup: {e}")))
    }
}

impl Custody {
    /// Writes a backup of the whole catalog to `out` from one consistent
    /// snapshot; returns the rows per table.
    ///
    /// # Errors
    /// The seal, the database or the output failing.
    pub async fn backup(&self, out: &mut impl std::io::Write) -> Result<Counts, CustodyError> {
        self.unseal().await?;
        let ring = self
            .master
            .keyring()
            .map_err(|e| CustodyError::Sealed(e.to_string()))?;
        let mut conn = self
            .catalog
            .pool()
            .acquire()
            .await
            .map_err(CatalogError::from)?;
        let begin = match self.catalog.backend() {
            Backend::Sqlite => "BEGIN",
            Backend::Postgres => "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        };
        sqlx::query(begin)
            .execute(&mut *conn)
            .await
            .map_err(CatalogError::from)?;
        let result = async {
            // The wrapped generations from the same snapshot as the items they open.
            let name = self.seal.name();
            let rows = sqlx::query(
                "SELECT generation, wrapped FROM seal_keys WHERE seal = $1 ORDER BY generation",
            )
            .bind(&name)
            .fetch_all(&mut *conn)
            .await
            .map_err(CatalogError::from)?;
            let mut generations = Vec::new();
            for row in rows {
                generations.push(Wrapped {
                    generation: u32::try_from(
                        row.try_get::<i64, _>("generation")
                            .map_err(CatalogError::from)?,
                    )
                    .unwrap_or(0),
                    wrapped: row.try_get("wrapped").map_err(CatalogError::from)?,
                });
            }
            let header = Header {
                kmsgw_backup: FORMAT,
                created_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                seal: name,
                generations,
            };
            let io =
                |e: std::io::Error| CustodyError::Refused(format!("cannot write the backup: {e}"));
            serde_json::to_writer(&mut *out, &header).map_err(|e| io(e.into()))?;
            writeln!(out).map_err(io)?;
            let mut writer = ChunkWriter {
                out,
                ring: &ring,
                index: 0,
            };
            let mut counts = Counts::new();
            for Table {
                name: table,
                columns,
                order,
                ..
            } in TABLES
            {
                let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
                let query = format!("SELECT {} FROM {table} ORDER BY {order}", names.join(", "));
                let mut stream = sqlx::query(sqlx::AssertSqlSafe(query)).fetch(&mut *conn);
                let mut rows = Vec::with_capacity(CHUNK_ROWS);
                let mut count = 0u64;
                while let Some(row) = stream.try_next().await.map_err(CatalogError::from)? {
                    let mut values = Vec::with_capacity(columns.len());
                    for (i, (_, kind)) in columns.iter().enumerate() {
                        values.push(match kind {
                            Text => row
                                .try_get::<Option<String>, _>(i)
                                .map_err(CatalogError::from)?
                                .map_or(Value::Null, Value::String),
                            Int => row
                                .try_get::<Option<i64>, _>(i)
                                .map_err(CatalogError::from)?
                                .map_or(Value::Null, Value::from),
                        });
                    }
                    rows.push(values);
                    count += 1;
                    if rows.len() == CHUNK_ROWS {
                        writer.write(&Chunk::Rows {
                            table: (*table).to_owned(),
                            rows: std::mem::take(&mut rows),
                        })?;
                    }
                }
                if !rows.is_empty() {
                    writer.write(&Chunk::Rows {
                        table: (*table).to_owned(),
                        rows,
                    })?;
                }
                counts.insert((*table).to_owned(), count);
            }
            writer.write(&Chunk::End {
                counts: counts.clone(),
            })?;
            Ok(counts)
        }
        .await;
        let _ = sqlx::query("COMMIT").execute(&mut *conn).await;
        result
    }
}

/// Restores a backup read from `input` into the empty catalog of `seal`'s
/// gateway; returns the rows per table.
///
/// # Errors
/// A backup sealed by another seal, or not opened by this seal's key; a
/// damaged, reordered or cut-off file; a database that is not empty. In every
/// case nothing was written.
pub async fn restore(
    catalog: &Catalog,
    seal: &Seal,
    input: impl BufRead,
) -> Result<Counts, CustodyError> {
    let mut lines = input.lines();
    let bad = |what: &str| CustodyError::Damaged(format!("not a kmsgw backup: {what}"));
    let first = lines
        .next()
        .ok_or_else(|| bad("the file is empty"))?
        .map_err(|e| CustodyError::Refused(format!("cannot read the backup: {e}")))?;
    let header: Header =
        serde_json::from_str(&first).map_err(|_| bad("the first line is not its header"))?;
    if header.kmsgw_backup != FORMAT {
        return Err(bad(&format!(
            "format {} (this kmsgw reads {FORMAT})",
            header.kmsgw_backup
        )));
    }
    if header.seal != seal.name() {
        return Err(CustodyError::Mismatch(format!(
            "the backup's master key is wrapped by seal `{}`; kms.json's seal is `{}`",
            header.seal,
            seal.name()
        )));
    }
    if header.generations.is_empty() {
        return Err(bad("it holds no master key"));
    }
    let mut keys: Vec<(u32, KeyBytes)> = Vec::new();
    for wrapped in &header.generations {
        let key = seal
            .unwrap(wrapped.generation, &wrapped.wrapped)
            .await
            .map_err(|e| {
                CustodyError::Seal(format!(
                    "this seal does not open the backup's master key: {e}"
                ))
            })?;
        keys.push((wrapped.generation, key));
    }
    let ring = Keyring::new(keys.iter().map(|(g, k)| (*g, &**k)));

    let mut tx = catalog.begin_write().await?;
    let mut existing = 0i64;
    for table in ["keys", "seal_keys", "audit_log", "guest_kv"] {
        existing += sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {table}"
        )))
        .fetch_one(&mut *tx)
        .await
        .map_err(CatalogError::from)?;
    }
    if existing > 0 {
        tx.rollback().await;
        return Err(CustodyError::Refused(
            "the database is not empty: restore into a new database".into(),
        ));
    }
    // `meta` may hold rows the gateway writes at its first start; the backup's win.
    sqlx::query("DELETE FROM meta")
        .execute(&mut *tx)
        .await
        .map_err(CatalogError::from)?;
    let mut counts = Counts::new();
    let mut ended = None;
    for (index, line) in lines.enumerate() {
        let line =
            line.map_err(|e| CustodyError::Refused(format!("cannot read the backup: {e}")))?;
        if ended.is_some() {
            return Err(bad("lines after its end"));
        }
        let sealed = STANDARD
            .decode(line.trim())
            .map_err(|_| bad(&format!("chunk {index} is not base64")))?;
        let json = ring.open(&chunk_aad(index as u64), &sealed).map_err(|_| {
            bad(&format!(
                "chunk {index} does not open (damaged, moved, or another master key)"
            ))
        })?;
        match serde_json::from_slice::<Chunk>(&json)
            .map_err(|_| bad(&format!("chunk {index} is not rows")))?
        {
            Chunk::Rows { table, rows } => {
                let Some(Table { columns, added, .. }) = TABLES.iter().find(|t| t.name == table)
                else {
                    return Err(bad(&format!("unknown table `{table}`")));
                };
                insert_rows(catalog, &mut tx, &table, columns, *added, &rows).await?;
                *counts.entry(table).or_default() += rows.len() as u64;
            }
            Chunk::End { counts } => ended = Some(counts),
        }
    }
    let Some(expected) = ended else {
        return Err(bad("it is cut off (no end chunk)"));
    };
    for (table, n) in &expected {
        if counts.get(table).copied().unwrap_or(0) != *n {
            return Err(bad(&format!("table `{table}` should have {n} rows")));
        }
    }
    for wrapped in &header.generations {
        sqlx::query(
            "INSERT INTO seal_keys (generation, seal, wrapped, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(i64::from(wrapped.generation))
        .bind(&header.seal)
        .bind(&wrapped.wrapped)
        .bind(i64::try_from(header.created_at).unwrap_or(0))
        .execute(&mut *tx)
        .await
        .map_err(CatalogError::from)?;
    }
    tx.commit().await?;
    Ok(expected)
}

async fn insert_rows(
    catalog: &Catalog,
    tx: &mut crate::catalog::Write,
    table: &str,
    columns: &[(&str, Column)],
    added: usize,
    rows: &[Vec<Value>],
) -> Result<(), CustodyError> {
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    // A few rows per statement, within every database's parameter limit.
    for group in rows.chunks(50) {
        let query_text = format!(
            "INSERT INTO {table} ({}) VALUES {}",
            names.join(", "),
            catalog.placeholders(group.len(), columns.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(query_text));
        for row in group {
            if row.len() > columns.len() || row.len() < columns.len() - added {
                return Err(CustodyError::Damaged(format!(
                    "a `{table}` row has {} values",
                    row.len()
                )));
            }
            let absent = std::iter::repeat_n(&Value::Null, columns.len() - row.len());
            for (value, (name, kind)) in row.iter().chain(absent).zip(columns) {
                let wrong = || {
                    CustodyError::Damaged(format!(
                        "`{table}.{name}` holds a value of the wrong type"
                    ))
                };
                query = match (kind, value) {
                    (Text, Value::String(s)) => query.bind(Some(s.clone())),
                    (Text, Value::Null) => query.bind(None::<String>),
                    (Int, Value::Number(n)) => query.bind(Some(n.as_i64().ok_or_else(wrong)?)),
                    (Int, Value::Null) => query.bind(None::<i64>),
                    _ => return Err(wrong()),
                };
            }
        }
        query.execute(&mut **tx).await.map_err(CatalogError::from)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backup taken before audit links existed holds 12 values per audit
    /// row: it restores, the later columns NULL, and the chain verifies.
    #[tokio::test]
    async fn audit_rows_of_a_backup_from_before_links_restore() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let record = crate::audit::AuditRecord::chained(
            (0, crate::audit::GENESIS),
            7,
            &crate::audit::Actor::default().event(crate::audit::Action::Create, "k", "db", "ok"),
        );
        let row = vec![
            Value::from(record.seq),
            Value::from(record.time),
            Value::Null,
            Value::Null,
            Value::from(record.action.clone()),
            Value::from("k"),
            Value::from("db"),
            Value::from("ok"),
            Value::Null,
            Value::from(record.prev_hash.clone()),
            Value::from(record.hash.clone()),
            Value::from(2),
        ];
        let table = TABLES.iter().find(|t| t.name == "audit_log").unwrap();
        let mut tx = catalog.begin_write().await.unwrap();
        insert_rows(
            &catalog,
            &mut tx,
            "audit_log",
            table.columns,
            table.added,
            std::slice::from_ref(&row),
        )
        .await
        .unwrap();
        // One value short of that is damage.
        let short = insert_rows(
            &catalog,
            &mut tx,
            "audit_log",
            table.columns,
            table.added,
            &[row[..11].to_vec()],
        )
        .await;
        assert!(matches!(short, Err(CustodyError::Damaged(_))), "{short:?}");
        tx.commit().await.unwrap();
        let audit = crate::audit::Audit::off(catalog);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 1, "{verdict:?}");
    }
}
