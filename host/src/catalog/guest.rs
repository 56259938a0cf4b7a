//! Guest storage: one namespace per guest provider, values stored as given (the
//! caller seals them), every namespace within its quota of entries and bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::{Catalog, CatalogError, Write};

/// Guest storage: one namespace per provider id; values are stored as given (the
/// caller seals them).
impl Catalog {
    /// The value under `key` in `provider`'s namespace.
    ///
    /// # Errors
    /// Database failures.
    pub async fn guest_get(
        &self,
        provider: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, CatalogError> {
        let row = sqlx::query("SELECT value FROM guest_kv WHERE provider = $1 AND key = $2")
            .bind(provider)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let text: String = r.try_get("value")?;
            STANDARD
                .decode(text)
                .map_err(|_| CatalogError::Corrupt(format!("{provider}/{key}")))
        })
        .transpose()
    }

    /// Stores `value` under `key` in `provider`'s namespace, replacing any value,
    /// unless that takes the namespace past `quota` (a write that does not grow
    /// the namespace is always allowed).
    ///
    /// # Errors
    /// [`GuestWriteError::Quota`] naming the quota; database failures.
    pub async fn guest_set(
        &self,
        provider: &str,
        key: &str,
        value: &[u8],
        quota: StorageQuota,
    ) -> Result<(), GuestWriteError> {
        let generation = super::keys::sealed_generation(value);
        let value = STANDARD.encode(value);
        let size = (key.len() + value.len()) as i64;
        let mut tx = self.begin_write().await?;
        let (entries, bytes) = lock_usage(&mut tx, provider).await?;
        let old: Option<i64> =
            sqlx::query_scalar("SELECT size FROM guest_kv WHERE provider = $1 AND key = $2")
                .bind(provider)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(CatalogError::from)?;
        let new_entries = entries + i64::from(old.is_none());
        let new_bytes = bytes - old.unwrap_or(0) + size;
        let over = |used: i64, limit: u64| used > i64::try_from(limit).unwrap_or(i64::MAX);
        if new_entries > entries && over(new_entries, quota.entries) {
            tx.rollback().await;
            return Err(GuestWriteError::Quota(format!(
                "storage quota reached: {entries} of {} entries in use (limits.storageEntries)",
                quota.entries
            )));
        }
        if new_bytes > bytes && over(new_bytes, quota.bytes) {
            tx.rollback().await;
            return Err(GuestWriteError::Quota(format!(
                "storage quota reached: {bytes} of {} bytes in use, this write needs {size} (limits.storageBytes)",
                quota.bytes
            )));
        }
        sqlx::query(
            "INSERT INTO guest_kv (provider, key, value, size, generation) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (provider, key) DO UPDATE SET value = excluded.value, size = excluded.size, \
             generation = excluded.generation",
        )
        .bind(provider)
        .bind(key)
        .bind(value)
        .bind(size)
        .bind(generation)
        .execute(&mut *tx)
        .await
        .map_err(CatalogError::from)?;
        set_usage(&mut tx, provider, new_entries, new_bytes).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes `key` from `provider`'s namespace; returns whether it was there.
    ///
    /// # Errors
    /// Database failures.
    pub async fn guest_delete(&self, provider: &str, key: &str) -> Result<bool, CatalogError> {
        let mut tx = self.begin_write().await?;
        let (entries, bytes) = lock_usage(&mut tx, provider).await?;
        let removed: Option<i64> = sqlx::query_scalar(
            "DELETE FROM guest_kv WHERE provider = $1 AND key = $2 RETURNING size",
        )
        .bind(provider)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(size) = removed {
            set_usage(&mut tx, provider, entries - 1, bytes - size).await?;
        }
        tx.commit().await?;
        Ok(removed.is_some())
    }

    /// Entries and bytes each guest namespace holds, by provider id.
    ///
    /// # Errors
    /// Database failures.
    pub async fn guest_usage(&self) -> Result<Vec<(String, i64, i64)>, CatalogError> {
        let rows = sqlx::query("SELECT provider, entries, bytes FROM guest_usage")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// The keys in `provider`'s namespace that start with `prefix`, ascending.
    ///
    /// # Errors
    /// Database failures.
    pub async fn guest_list(
        &self,
        provider: &str,
        prefix: &str,
    ) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query(
            "SELECT key FROM guest_kv WHERE provider = $1 AND substr(key, 1, length($2)) = $2 ORDER BY key",
        )
        .bind(provider)
        .bind(prefix)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("key")?)).collect()
    }
}

/// How much a guest provider may keep in its storage.
#[derive(Clone, Copy, Debug)]
pub struct StorageQuota {
    /// Key plus sealed-value bytes over all entries.
    pub bytes: u64,
    pub entries: u64,
}

/// Why a guest storage write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum GuestWriteError {
    /// The write would take the namespace past its quota; the message says which.
    #[error("{0}")]
    Quota(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Locks `provider`'s usage row for this transaction (a row lock on PostgreSQL;
/// SQLite has one writer) and returns its entries and bytes.
async fn lock_usage(tx: &mut Write, provider: &str) -> Result<(i64, i64), CatalogError> {
    sqlx::query(
        "INSERT INTO guest_usage (provider, entries, bytes) VALUES ($1, 0, 0) \
         ON CONFLICT (provider) DO NOTHING",
    )
    .bind(provider)
    .execute(&mut **tx)
    .await?;
    let row = sqlx::query(
        "UPDATE guest_usage SET entries = entries WHERE provider = $1 RETURNING entries, bytes",
    )
    .bind(provider)
    .fetch_one(&mut **tx)
    .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

async fn set_usage(
    tx: &mut Write,
    provider: &str,
    entries: i64,
    bytes: i64,
) -> Result<(), CatalogError> {
    sqlx::query("UPDATE guest_usage SET entries = $2, bytes = $3 WHERE provider = $1")
        .bind(provider)
        .bind(entries)
        .bind(bytes)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_catalog;

    #[tokio::test]
    async fn a_namespace_stays_within_its_quota_and_counts_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let quota = StorageQuota {
            bytes: 64,
            entries: 2,
        };
        catalog.guest_set("g", "a", b"12345", quota).await.unwrap();
        catalog.guest_set("g", "b", b"12345", quota).await.unwrap();
        let third = catalog.guest_set("g", "c", b"1", quota).await;
        assert!(
            matches!(&third, Err(GuestWriteError::Quota(m)) if m.contains("2 of 2 entries")),
            "{third:?}"
        );
        // Replacing a value does not grow the entry count; a value past the byte
        // quota is refused and leaves the old one.
        catalog.guest_set("g", "a", b"123", quota).await.unwrap();
        let big = vec![b'x'; 100];
        assert!(matches!(
            catalog.guest_set("g", "a", &big, quota).await,
            Err(GuestWriteError::Quota(_))
        ));
        assert_eq!(catalog.guest_get("g", "a").await.unwrap().unwrap(), b"123");
        assert_eq!(catalog.guest_list("g", "").await.unwrap(), ["a", "b"]);
        // Other namespaces are apart.
        assert!(catalog.guest_get("h", "a").await.unwrap().is_none());
        assert!(catalog.guest_delete("g", "a").await.unwrap());
        assert!(!catalog.guest_delete("g", "a").await.unwrap());
        let usage = catalog.guest_usage().await.unwrap();
        assert_eq!(usage.len(), 1);
        let (provider, entries, bytes) = &usage[0];
        assert_eq!((provider.as_str(), *entries), ("g", 1));
        // Key plus base64 of the value: "b" + "MTIzNDU=".
        assert_eq!(*bytes, 9);
        catalog.guest_set("g", "c", b"1", quota).await.unwrap();
    }
}
