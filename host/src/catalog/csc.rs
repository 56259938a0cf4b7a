//! What the CSC API keeps in the catalog: the keys a tenant can use as CSC
//! credentials, and outstanding signature activation data (SAD), which any
//! replica can redeem exactly once.

use std::time::SystemTime;

use sqlx::Row;

use super::keys::record_of;
use super::versions::x5c_of;
use super::{Catalog, CatalogError, KeyRecord, key_id, millis};

/// One outstanding authorisation: what a SAD lets its holder sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The gateway-wide id of the key (credential) it is for.
    pub key_id: String,
    /// The API key that asked for it (`""` without API keys).
    pub api_key: String,
    /// The hashes it may sign, lower-case hex, in the order given.
    pub hashes: Vec<String>,
    pub expires_at: SystemTime,
}

impl Catalog {
    /// Up to `limit` keys of `tenant` after kid `after` (in kid order) whose
    /// current version has a certificate, with that chain (base64 DER, leaf first).
    ///
    /// # Errors
    /// Database failures.
    pub async fn certified_keys(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, Vec<String>)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT k.kid, k.tenant, k.provider, k.external_id, k.alg, k.public_jwk, k.created_at, \
             k.version, v.x5c FROM keys k JOIN key_versions v ON v.kid = k.kid AND v.version = k.version \
             WHERE k.tenant = $1 AND k.kid > $2 AND v.x5c IS NOT NULL ORDER BY k.kid LIMIT $3",
        )
        .bind(tenant.unwrap_or(""))
        .bind(key_id(tenant, after.unwrap_or("")))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let mut record = record_of(row)?;
                record.certified = true;
                let chain = x5c_of(row.try_get("x5c")?)
                    .ok()
                    .flatten()
                    .ok_or_else(|| CatalogError::Corrupt(record.id.clone()))?;
                Ok((record, chain))
            })
            .collect()
    }

    /// Stores an authorisation under the SHA-256 of its SAD, first dropping
    /// expired ones; refused (`Ok(false)`) when `api_key` already holds `most`
    /// unexpired ones.
    ///
    /// # Errors
    /// Database failures.
    pub async fn authorize(
        &self,
        sad_sha256: &str,
        authorization: &Authorization,
        most: i64,
        now: SystemTime,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM csc_authorizations WHERE expires_at < $1")
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        let held: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM csc_authorizations WHERE api_key = $1")
                .bind(&authorization.api_key)
                .fetch_one(&mut *tx)
                .await?;
        if held >= most {
            tx.rollback().await;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO csc_authorizations (sad_sha256, key_id, api_key, hashes, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(sad_sha256)
        .bind(&authorization.key_id)
        .bind(&authorization.api_key)
        .bind(authorization.hashes.join(" "))
        .bind(millis(authorization.expires_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Takes (deletes and returns) the authorisation stored under `sad_sha256`:
    /// of two replicas redeeming one SAD at once, exactly one gets it.
    ///
    /// # Errors
    /// Database failures.
    pub async fn take_authorization(
        &self,
        sad_sha256: &str,
    ) -> Result<Option<Authorization>, CatalogError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "DELETE FROM csc_authorizations WHERE sad_sha256 = $1 \
             RETURNING key_id, api_key, hashes, expires_at",
        )
        .bind(sad_sha256)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        row.map(|row| {
            let hashes: String = row.try_get("hashes")?;
            Ok(Authorization {
                key_id: row.try_get("key_id")?,
                api_key: row.try_get("api_key")?,
                hashes: hashes
                    .split(' ')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect(),
                expires_at: super::from_millis(row.try_get("expires_at")?),
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_sad_is_taken_once_and_a_holder_of_too_many_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        // Whole milliseconds, as stored.
        let now = crate::catalog::from_millis(millis(SystemTime::now()));
        let authorization = |key: &str| Authorization {
            key_id: key.into(),
            api_key: "signer".into(),
            hashes: vec!["00".repeat(32), "11".repeat(32)],
            expires_at: now + Duration::from_secs(60),
        };
        assert!(
            catalog
                .authorize("a", &authorization("k"), 2, now)
                .await
                .unwrap()
        );
        assert!(
            catalog
                .authorize("b", &authorization("k"), 2, now)
                .await
                .unwrap()
        );
        assert!(
            !catalog
                .authorize("c", &authorization("k"), 2, now)
                .await
                .unwrap()
        );
        let taken = catalog.take_authorization("a").await.unwrap();
        assert_eq!(taken, Some(authorization("k")));
        assert_eq!(catalog.take_authorization("a").await.unwrap(), None);
        // Expired ones leave room when the next is stored.
        let later = now + Duration::from_secs(120);
        assert!(
            catalog
                .authorize("d", &authorization("k"), 1, later)
                .await
                .unwrap()
        );
        assert_eq!(catalog.take_authorization("b").await.unwrap(), None);
    }
}
