//! Master key custody's rows: the master key's generations as each seal wraps
//! them, and the sealed items (db key material of every version, guest storage
//! values) a rotation rewraps.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::{Catalog, CatalogError, Write, millis};
use crate::crypto::seal::{db_key_aad, guest_value_aad};

/// One generation of the master key as one seal wraps it.
#[derive(Clone, Debug)]
pub struct WrappedGeneration {
    pub generation: u32,
    /// The seal's name (`file`, `vault-transit:<mount>/<key>`, …).
    pub seal: String,
    /// What the seal made of the key (its own text form).
    pub wrapped: String,
}

/// Where a sealed item lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ItemPlace {
    /// Version 1 of a db key, by key id.
    DbKey(String),
    /// A later version of a db key, by version id (`<key id>@v<n>`).
    DbVersion(String),
    /// A guest storage value.
    Guest { provider: String, key: String },
}

impl ItemPlace {
    /// The associated data the item was sealed with.
    pub fn aad(&self) -> String {
        match self {
            ItemPlace::DbKey(id) | ItemPlace::DbVersion(id) => db_key_aad(id),
            ItemPlace::Guest { provider, key } => guest_value_aad(provider, key),
        }
    }
}

/// A sealed item as stored.
#[derive(Clone, Debug)]
pub struct SealedItem {
    pub place: ItemPlace,
    /// The stored text (base64 of the sealed blob), compared on rewrap.
    pub stored: String,
}

impl SealedItem {
    /// The sealed blob.
    ///
    /// # Errors
    /// [`CatalogError::Corrupt`] when the stored text is not base64.
    pub fn blob(&self) -> Result<Vec<u8>, CatalogError> {
        STANDARD
            .decode(&self.stored)
            .map_err(|_| CatalogError::Corrupt(format!("{:?}", self.place)))
    }
}

impl Catalog {
    /// Every wrapped generation, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn seal_keys(&self) -> Result<Vec<WrappedGeneration>, CatalogError> {
        let rows = sqlx::query(
            "SELECT generation, seal, wrapped FROM seal_keys ORDER BY generation, seal",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(WrappedGeneration {
                    generation: u32::try_from(row.try_get::<i64, _>("generation")?)
                        .map_err(|_| CatalogError::Corrupt("seal_keys.generation".into()))?,
                    seal: row.try_get("seal")?,
                    wrapped: row.try_get("wrapped")?,
                })
            })
            .collect()
    }

    /// Stores a wrapped generation unless that generation is already wrapped by
    /// the same seal; returns whether it was stored. With `retire_check`, the
    /// first-format master key check row goes in the same transaction.
    ///
    /// # Errors
    /// Database failures.
    pub async fn insert_seal_key(
        &self,
        key: &WrappedGeneration,
        retire_check: Option<&str>,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin_write().await?;
        let inserted = insert_wrapped(&mut tx, key).await?;
        if let Some(name) = retire_check {
            sqlx::query("DELETE FROM meta WHERE name = $1")
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    /// Replaces every generation wrapped by `old_seal` with `new` (the same
    /// generations wrapped by another seal), in one transaction.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the generations wrapped by `old_seal`
    /// are not those of `new` (a rotation ran meanwhile); database failures.
    pub async fn replace_seal(
        &self,
        old_seal: &str,
        new: &[WrappedGeneration],
    ) -> Result<(), CatalogError> {
        let mut tx = self.begin_write().await?;
        let mut held: Vec<i64> = sqlx::query_scalar(
            "SELECT generation FROM seal_keys WHERE seal = $1 ORDER BY generation",
        )
        .bind(old_seal)
        .fetch_all(&mut *tx)
        .await?;
        held.sort_unstable();
        let mut given: Vec<i64> = new.iter().map(|k| i64::from(k.generation)).collect();
        given.sort_unstable();
        if held != given {
            tx.rollback().await;
            return Err(CatalogError::Conflict);
        }
        sqlx::query("DELETE FROM seal_keys WHERE seal = $1")
            .bind(old_seal)
            .execute(&mut *tx)
            .await?;
        for key in new {
            insert_wrapped(&mut tx, key).await?;
        }
        tx.commit().await
    }

    /// Destroys generation `generation` (every seal's copy) if no sealed item
    /// names it any more; returns whether it did.
    ///
    /// # Errors
    /// Database failures.
    pub async fn destroy_generation(&self, generation: u32) -> Result<bool, CatalogError> {
        let mut tx = self.begin_write().await?;
        let left = count_at_most(&mut tx, generation).await?;
        if left > 0 {
            tx.rollback().await;
            return Ok(false);
        }
        sqlx::query("DELETE FROM seal_keys WHERE generation <= $1")
            .bind(i64::from(generation))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Sealed items of a generation below `generation`, at most `limit`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sealed_below(
        &self,
        generation: u32,
        limit: usize,
    ) -> Result<Vec<SealedItem>, CatalogError> {
        let generation = i64::from(generation);
        let limit_of = |taken: usize| i64::try_from(limit - taken).unwrap_or(i64::MAX);
        let mut items = Vec::new();
        for (query, place) in [
            (
                "SELECT kid AS a, '' AS b, sealed FROM db_key_material WHERE generation < $1 LIMIT $2",
                0,
            ),
            (
                "SELECT id AS a, '' AS b, sealed FROM db_version_material WHERE generation < $1 LIMIT $2",
                1,
            ),
            (
                "SELECT provider AS a, key AS b, value AS sealed FROM guest_kv WHERE generation < $1 LIMIT $2",
                2,
            ),
        ] {
            if items.len() >= limit {
                break;
            }
            let rows = sqlx::query(query)
                .bind(generation)
                .bind(limit_of(items.len()))
                .fetch_all(&self.pool)
                .await?;
            for row in rows {
                let a: String = row.try_get("a")?;
                let b: String = row.try_get("b")?;
                let place = match place {
                    0 => ItemPlace::DbKey(a),
                    1 => ItemPlace::DbVersion(a),
                    _ => ItemPlace::Guest {
                        provider: a,
                        key: b,
                    },
                };
                items.push(SealedItem {
                    place,
                    stored: row.try_get("sealed")?,
                });
            }
        }
        Ok(items)
    }

    /// Replaces each item's blob with its rewrapped one, in one transaction;
    /// an item changed or removed meanwhile is left as it is (its writer sealed
    /// it anew). Returns how many were replaced.
    ///
    /// # Errors
    /// Database failures.
    pub async fn rewrap(&self, items: &[(SealedItem, Vec<u8>, u32)]) -> Result<u64, CatalogError> {
        let mut tx = self.begin_write().await?;
        let mut done = 0;
        for (item, blob, generation) in items {
            let text = STANDARD.encode(blob);
            let generation = i64::from(*generation);
            let query = match &item.place {
                ItemPlace::DbKey(id) => sqlx::query(
                    "UPDATE db_key_material SET sealed = $1, generation = $2 WHERE kid = $3 AND sealed = $4",
                )
                .bind(text)
                .bind(generation)
                .bind(id.as_str()),
                ItemPlace::DbVersion(id) => sqlx::query(
                    "UPDATE db_version_material SET sealed = $1, generation = $2 WHERE id = $3 AND sealed = $4",
                )
                .bind(text)
                .bind(generation)
                .bind(id.as_str()),
                // The accounted size stays as written: quotas count what the guest stored.
                ItemPlace::Guest { provider, key } => sqlx::query(
                    "UPDATE guest_kv SET value = $1, generation = $2 \
                     WHERE provider = $3 AND key = $4 AND value = $5",
                )
                .bind(text)
                .bind(generation)
                .bind(provider.as_str())
                .bind(key.as_str()),
            };
            done += query
                .bind(item.stored.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Counts one seal operation (`seal-rotate`, …) with its outcome (`ok`, `failed`).
    ///
    /// # Errors
    /// Database failures.
    pub async fn count_seal_operation(
        &self,
        operation: &str,
        outcome: &str,
    ) -> Result<(), CatalogError> {
        sqlx::query(
            "INSERT INTO seal_operations (operation, outcome, count) VALUES ($1, $2, 1) \
             ON CONFLICT (operation, outcome) DO UPDATE SET count = seal_operations.count + 1",
        )
        .bind(operation)
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every seal operation's count: `(operation, outcome, count)`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn seal_operation_counts(&self) -> Result<Vec<(String, String, i64)>, CatalogError> {
        let rows = sqlx::query("SELECT operation, outcome, count FROM seal_operations")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("operation")?,
                    row.try_get("outcome")?,
                    row.try_get("count")?,
                ))
            })
            .collect()
    }

    /// Sealed items by generation: `(generation, count)`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sealed_by_generation(&self) -> Result<Vec<(u32, u64)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT generation, COUNT(*) AS n FROM (\
             SELECT generation FROM db_key_material UNION ALL \
             SELECT generation FROM db_version_material UNION ALL \
             SELECT generation FROM guest_kv) AS items GROUP BY generation ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let generation: i64 = row.try_get("generation")?;
                let n: i64 = row.try_get("n")?;
                Ok((
                    u32::try_from(generation).unwrap_or(0),
                    u64::try_from(n).unwrap_or(0),
                ))
            })
            .collect()
    }
}

async fn insert_wrapped(tx: &mut Write, key: &WrappedGeneration) -> Result<bool, CatalogError> {
    let inserted = sqlx::query(
        "INSERT INTO seal_keys (generation, seal, wrapped, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (generation, seal) DO NOTHING",
    )
    .bind(i64::from(key.generation))
    .bind(&key.seal)
    .bind(&key.wrapped)
    .bind(millis(std::time::SystemTime::now()))
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

async fn count_at_most(tx: &mut Write, generation: u32) -> Result<i64, CatalogError> {
    let generation = i64::from(generation);
    let mut left = 0;
    for query in [
        "SELECT COUNT(*) FROM db_key_material WHERE generation <= $1",
        "SELECT COUNT(*) FROM db_version_material WHERE generation <= $1",
        "SELECT COUNT(*) FROM guest_kv WHERE generation <= $1",
    ] {
        left += sqlx::query_scalar::<_, i64>(query)
            .bind(generation)
            .fetch_one(&mut **tx)
            .await?;
    }
    Ok(left)
}
