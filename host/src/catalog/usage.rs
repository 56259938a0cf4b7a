//! Key usage: how often each key signed and when it last did, written in
//! multi-row statements by the usage flusher.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::Row;

use super::{Catalog, CatalogError, millis};

/// How often a key has signed and when it last did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub sign_count: u64,
    pub last_used_at: Option<SystemTime>,
}

/// Keys per usage UPDATE statement (3 parameters each).
const USAGE_ROWS_PER_UPDATE: usize = 256;

impl Catalog {
    /// How often and when key `id` last signed, as written to the database.
    ///
    /// # Errors
    /// Database failures.
    pub async fn usage(&self, id: &str) -> Result<KeyUsage, CatalogError> {
        let row = sqlx::query("SELECT sign_count, last_used_at FROM keys WHERE kid = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map_or(Ok(KeyUsage::default()), |row| usage_of(&row))
    }

    /// The ids of up to `limit` keys that signed most recently, most recent first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn recently_used(&self, limit: usize) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query(
            "SELECT kid FROM keys WHERE last_used_at IS NOT NULL \
             ORDER BY last_used_at DESC LIMIT $1",
        )
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok(row.try_get("kid")?)).collect()
    }

    /// Adds counted signs: per key id, the count and the time of the latest.
    ///
    /// # Errors
    /// Database failures (nothing of the batch is written then).
    pub async fn add_usage(&self, batch: &[(String, u64, SystemTime)]) -> Result<(), CatalogError> {
        let mut tx = self.begin_write().await?;
        // Many keys per statement: a flush after signs with 10^5 keys is a few
        // hundred statements, not 10^5 round trips holding the write lock.
        for chunk in batch.chunks(USAGE_ROWS_PER_UPDATE) {
            let sql = format!(
                "UPDATE keys SET sign_count = sign_count + v.column2, \
                 last_used_at = CASE WHEN last_used_at IS NULL OR last_used_at < v.column3 \
                 THEN v.column3 ELSE last_used_at END \
                 FROM (VALUES {}) AS v WHERE keys.kid = v.column1",
                self.placeholders(chunk.len(), 3)
            );
            // The statement is built only from our own placeholders.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, count, last) in chunk {
                query = query
                    .bind(id.as_str())
                    .bind(i64::try_from(*count).unwrap_or(i64::MAX))
                    .bind(millis(*last));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// How many keys have never signed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn never_used(&self) -> Result<i64, CatalogError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM keys WHERE sign_count = 0")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

pub(super) fn usage_of(row: &sqlx::any::AnyRow) -> Result<KeyUsage, CatalogError> {
    let count: i64 = row.try_get("sign_count")?;
    let last: Option<i64> = row.try_get("last_used_at")?;
    Ok(KeyUsage {
        sign_count: u64::try_from(count).unwrap_or(0),
        last_used_at: last
            .map(|ms| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::keys::tests::{insert, record};
    use crate::catalog::test_catalog;

    #[tokio::test]
    async fn a_flush_adds_counts_per_key_across_statements_and_keeps_the_latest_use() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let kids: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        for kid in &kids {
            insert(&catalog, &record(None, kid), None).await;
        }
        assert_eq!(catalog.never_used().await.unwrap(), 300);
        let early = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let late = early + Duration::from_secs(60);
        // More keys than one statement holds (USAGE_ROWS_PER_UPDATE).
        let batch: Vec<_> = kids
            .iter()
            .enumerate()
            .map(|(i, kid)| {
                (
                    kid.clone(),
                    i as u64 + 1,
                    if i % 2 == 0 { late } else { early },
                )
            })
            .collect();
        catalog.add_usage(&batch).await.unwrap();
        catalog
            .add_usage(&[("k000".into(), 5, early), ("k299".into(), 1, late)])
            .await
            .unwrap();
        let usage = |kid: &str| {
            let catalog = catalog.clone();
            let kid = kid.to_owned();
            async move { catalog.usage(&kid).await.unwrap() }
        };
        let first = usage("k000").await;
        assert_eq!(first.sign_count, 6);
        assert_eq!(
            first.last_used_at,
            Some(late),
            "an earlier use does not win"
        );
        assert_eq!(usage("k256").await.sign_count, 257);
        let last = usage("k299").await;
        assert_eq!((last.sign_count, last.last_used_at), (301, Some(late)));
        assert_eq!(catalog.never_used().await.unwrap(), 0);
        assert_eq!(usage("unknown").await, KeyUsage::default());
    }
}
