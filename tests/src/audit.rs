//! Tampering with a site's audit log behind the gateway's back, whether the
//! record is a row of its own or one of several a chain link carries.

use serde_json::Value;
use sqlx::{Connection, Row};

use crate::Site;

/// What to do to one record.
#[derive(Clone, Debug)]
pub enum Tamper {
    /// Set one field (`kid`, `outcome`, …) to a value.
    Set(&'static str, Value),
    /// Remove the record.
    Remove,
    /// Swap the record with the one after it (both rows of their own, or both
    /// in one link).
    SwapWithNext,
}

/// A record's fields in a link's entries.
const ENTRY_FIELDS: [&str; 8] = [
    "time",
    "api_key",
    "tenant",
    "action",
    "kid",
    "provider",
    "outcome",
    "message_sha256",
];

impl Site {
    /// Does `how` to the record at `seq` directly in the database; returns the
    /// seq `/audit/verify` must report (the record's own, or its link's first).
    pub async fn tamper_audit(&self, seq: i64, how: Tamper) -> i64 {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database())
            .await
            .unwrap();
        let row = sqlx::query(
            "SELECT seq, first_seq, entries FROM audit_log \
             WHERE seq >= $1 AND COALESCE(first_seq, seq) <= $1",
        )
        .bind(seq)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("no audit row holds seq {seq}: {e}"));
        let link_seq: i64 = row.get("seq");
        let Some(entries) = row.get::<Option<String>, _>("entries") else {
            let statements = match how {
                Tamper::Set(field, value) => vec![format!(
                    "UPDATE audit_log SET {field} = {} WHERE seq = {seq}",
                    sql_literal(&value)
                )],
                Tamper::Remove => vec![format!("DELETE FROM audit_log WHERE seq = {seq}")],
                Tamper::SwapWithNext => vec![
                    format!("UPDATE audit_log SET seq = -1 WHERE seq = {seq}"),
                    format!("UPDATE audit_log SET seq = {seq} WHERE seq = {}", seq + 1),
                    format!("UPDATE audit_log SET seq = {} WHERE seq = -1", seq + 1),
                ],
            };
            for statement in statements {
                sqlx::query(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await
                    .unwrap();
            }
            return seq;
        };
        let first: i64 = row.get("first_seq");
        let mut records: Vec<Value> = serde_json::from_str(&entries).unwrap();
        let at = usize::try_from(seq - first).unwrap();
        match how {
            Tamper::Set(field, value) => {
                let index = ENTRY_FIELDS.iter().position(|f| *f == field).unwrap();
                records[at][index] = value;
            }
            Tamper::Remove => {
                records.remove(at);
            }
            Tamper::SwapWithNext => {
                assert!(at + 1 < records.len(), "seq {seq} ends its link");
                records.swap(at, at + 1);
            }
        }
        sqlx::query("UPDATE audit_log SET entries = $1 WHERE seq = $2")
            .bind(serde_json::to_string(&records).unwrap())
            .bind(link_seq)
            .execute(&mut conn)
            .await
            .unwrap();
        first
    }
}

fn sql_literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        other => other.to_string(),
    }
}
