//! Key versions and their certificates: the lifecycle of each version (active,
//! grace, retired), the chain a version carries, and the rotations and grace
//! periods the scheduler works through.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::keys::{KeyRecord, version_id};
use super::{Catalog, CatalogError, Write, from_millis, millis};
use crate::crypto::{Alg, PublicJwk};

/// The lifecycle state of a key version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// The current version: signs, published.
    Active,
    /// A previous version, still published until its grace period ends.
    Grace,
    /// No longer published; its material is destroyed in the backend.
    Retired,
}

impl VersionState {
    fn as_str(self) -> &'static str {
        match self {
            VersionState::Active => "active",
            VersionState::Grace => "grace",
            VersionState::Retired => "retired",
        }
    }

    fn parse(text: &str) -> Option<VersionState> {
        [
            VersionState::Active,
            VersionState::Grace,
            VersionState::Retired,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One version of a key.
#[derive(Clone, Debug)]
pub struct KeyVersion {
    pub version: u32,
    pub state: VersionState,
    pub external_id: String,
    pub public_jwk: PublicJwk,
    pub created_at: SystemTime,
    pub grace_until: Option<SystemTime>,
    pub retired_at: Option<SystemTime>,
    /// The version's certificate chain (base64 DER, leaf first), if it has one.
    pub x5c: Option<Vec<String>>,
}

/// A published version's public JWK, as the JWKS shows it.
#[derive(Debug)]
pub struct Published {
    /// The key's gateway-wide id.
    pub id: String,
    /// The key's tenant (`None` outside tenants).
    pub tenant: Option<String>,
    pub jwk: PublicJwk,
    /// Its certificate chain (base64 DER, leaf first).
    pub x5c: Option<Vec<String>>,
}

fn published_of(row: &sqlx::any::AnyRow) -> Result<Published, CatalogError> {
    let corrupt = || CatalogError::Corrupt("a published JWK".into());
    let jwk: String = row.try_get("public_jwk")?;
    let tenant: String = row.try_get("tenant")?;
    Ok(Published {
        id: row.try_get("kid")?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        jwk: serde_json::from_str(&jwk).map_err(|_| corrupt())?,
        x5c: x5c_of(row.try_get("x5c")?).map_err(|_| corrupt())?,
    })
}

impl Catalog {
    /// Every version of key `id`, oldest first.
    ///
    /// # Errors
    /// Database failures.
    pub async fn versions(&self, id: &str) -> Result<Vec<KeyVersion>, CatalogError> {
        let rows = sqlx::query(
            "SELECT version, state, external_id, public_jwk, created_at, grace_until, retired_at, x5c \
             FROM key_versions WHERE kid = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(version_of).collect()
    }

    /// The public JWKs of `tenant`'s active and in-grace versions, by key then
    /// version, each with its key's id and its certificate chain (`x5c`) when it
    /// has one.
    ///
    /// # Errors
    /// Database failures.
    pub async fn published_jwks(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<Published>, CatalogError> {
        let rows = sqlx::query(
            "SELECT v.kid, k.tenant, v.public_jwk, v.x5c FROM key_versions v JOIN keys k ON k.kid = v.kid \
             WHERE k.tenant = $1 AND v.state IN ('active', 'grace') ORDER BY v.kid, v.version",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(published_of).collect()
    }

    /// The published versions (as [`Catalog::published_jwks`]) of the keys `ids`,
    /// whatever their tenant.
    ///
    /// # Errors
    /// Database failures.
    pub async fn published_jwks_of(&self, ids: &[&str]) -> Result<Vec<Published>, CatalogError> {
        let mut published = Vec::new();
        for group in ids.chunks(500) {
            let query = format!(
                "SELECT v.kid, k.tenant, v.public_jwk, v.x5c FROM key_versions v JOIN keys k ON k.kid = v.kid \
                 WHERE v.state IN ('active', 'grace') AND v.kid IN {} ORDER BY v.kid, v.version",
                self.placeholders(1, group.len())
            );
            let mut statement = sqlx::query(sqlx::AssertSqlSafe(query));
            for id in group {
                statement = statement.bind(*id);
            }
            for row in statement.fetch_all(&self.pool).await? {
                published.push(published_of(&row)?);
            }
        }
        Ok(published)
    }

    /// Gives version `version` of key `id` the chain `x5c` (base64 DER, leaf
    /// first) whose leaf is valid from `not_before` to `not_after`, in `tx`.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the version is no longer published (retired
    /// or gone); database failures.
    pub async fn set_certificate(
        &self,
        tx: &mut Write,
        id: &str,
        version: u32,
        x5c: &[String],
        (not_before, not_after): (SystemTime, SystemTime),
    ) -> Result<(), CatalogError> {
        let done = sqlx::query(
            "UPDATE key_versions SET x5c = $3, cert_not_before = $4, cert_not_after = $5 \
             WHERE kid = $1 AND version = $2 AND state IN ('active', 'grace')",
        )
        .bind(id)
        .bind(i64::from(version))
        .bind(serde_json::to_string(x5c).expect("strings serialise"))
        .bind(millis(not_before))
        .bind(millis(not_after))
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(CatalogError::Conflict);
        }
        self.announce(tx, id).await
    }

    /// The keys with a certificate policy whose current version has no
    /// certificate yet, or one within the last tenth of its validity at `now`.
    ///
    /// # Errors
    /// Database failures.
    pub async fn certificates_due(&self, now: SystemTime) -> Result<Vec<String>, CatalogError> {
        let rows = sqlx::query_scalar(
            "SELECT k.kid FROM keys k JOIN key_versions v ON v.kid = k.kid AND v.version = k.version \
             WHERE k.certificate_policy IS NOT NULL \
             AND (v.x5c IS NULL OR v.cert_not_after - (v.cert_not_after - v.cert_not_before) / 10 <= $1)",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// Makes `next` (version `current.version + 1`, already created in the backend)
    /// the current version of `current`'s key and puts `current` in grace until
    /// `grace_until`, in `tx`.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the key is no longer at `current.version`
    /// (another rotation won, or it was deleted); database failures.
    pub async fn rotate(
        &self,
        tx: &mut Write,
        current: &KeyRecord,
        next: &KeyRecord,
        sealed: Option<&[u8]>,
        grace_until: SystemTime,
    ) -> Result<(), CatalogError> {
        let jwk = serde_json::to_string(&next.public_jwk).expect("a JWK serialises");
        let now = millis(next.created_at);
        let moved = sqlx::query(
            "UPDATE keys SET version = $2, external_id = $3, public_jwk = $4, rotated_at = $5 \
             WHERE kid = $1 AND version = $6",
        )
        .bind(&current.id)
        .bind(i64::from(next.version))
        .bind(&next.external_id)
        .bind(&jwk)
        .bind(now)
        .bind(i64::from(current.version))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Err(CatalogError::Conflict);
        }
        sqlx::query(
            "UPDATE key_versions SET state = 'grace', grace_until = $3 WHERE kid = $1 AND version = $2",
        )
        .bind(&current.id)
        .bind(i64::from(current.version))
        .bind(millis(grace_until))
        .execute(&mut **tx)
        .await?;
        sqlx::query(
            "INSERT INTO key_versions (kid, version, state, external_id, public_jwk, created_at) \
             VALUES ($1, $2, 'active', $3, $4, $5)",
        )
        .bind(&current.id)
        .bind(i64::from(next.version))
        .bind(&next.external_id)
        .bind(&jwk)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if let Some(sealed) = sealed {
            sqlx::query(
                "INSERT INTO db_version_material (id, sealed, generation) VALUES ($1, $2, $3)",
            )
            .bind(next.backend_id())
            .bind(STANDARD.encode(sealed))
            .bind(super::keys::sealed_generation(sealed))
            .execute(&mut **tx)
            .await?;
        }
        self.announce(tx, &current.id).await
    }

    /// Versions whose grace period has ended by `now`, with their key's record.
    ///
    /// # Errors
    /// Database failures.
    pub async fn ended_graces(
        &self,
        now: SystemTime,
    ) -> Result<Vec<(KeyRecord, KeyVersion)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT k.kid, k.tenant, k.provider, k.alg, k.created_at, k.version AS current_version, \
             v.version, v.state, v.external_id, v.public_jwk, v.created_at AS version_created_at, \
             v.grace_until, v.retired_at \
             FROM key_versions v JOIN keys k ON k.kid = v.kid \
             WHERE v.state = 'grace' AND v.grace_until <= $1",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        let mut ended = Vec::with_capacity(rows.len());
        for row in &rows {
            let corrupt = || CatalogError::Corrupt("key version".into());
            let id: String = row.try_get("kid")?;
            let tenant: String = row.try_get("tenant")?;
            let kid = match id.strip_prefix(&format!("{tenant}~")) {
                Some(kid) if !tenant.is_empty() => kid.to_owned(),
                _ => id.clone(),
            };
            let alg: String = row.try_get("alg")?;
            let jwk: String = row.try_get("public_jwk")?;
            let version = KeyVersion {
                version: u32::try_from(row.try_get::<i64, _>("version")?).map_err(|_| corrupt())?,
                state: VersionState::Grace,
                external_id: row.try_get("external_id")?,
                public_jwk: serde_json::from_str(&jwk).map_err(|_| corrupt())?,
                created_at: from_millis(row.try_get("version_created_at")?),
                grace_until: row
                    .try_get::<Option<i64>, _>("grace_until")?
                    .map(from_millis),
                retired_at: None,
                x5c: None,
            };
            let record = KeyRecord {
                external_id: version.external_id.clone(),
                public_jwk: version.public_jwk.clone(),
                version: version.version,
                provider: row.try_get("provider")?,
                alg: Alg::parse(&alg).ok_or_else(corrupt)?,
                created_at: from_millis(row.try_get("created_at")?),
                tenant: (!tenant.is_empty()).then_some(tenant),
                kid,
                id,
                sealed: None,
                certified: false,
            };
            ended.push((record, version));
        }
        Ok(ended)
    }

    /// Retires version `version` of key `id` (in grace until now): unpublished, and
    /// its db-held material deleted. Returns whether this call retired it.
    ///
    /// # Errors
    /// Database failures.
    pub async fn retire(
        &self,
        id: &str,
        version: u32,
        now: SystemTime,
    ) -> Result<bool, CatalogError> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "UPDATE key_versions SET state = 'retired', retired_at = $3, grace_until = NULL \
             WHERE kid = $1 AND version = $2 AND state = 'grace'",
        )
        .bind(id)
        .bind(i64::from(version))
        .bind(millis(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if version <= 1 {
            sqlx::query("DELETE FROM db_key_material WHERE kid = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        } else {
            sqlx::query("DELETE FROM db_version_material WHERE id = $1")
                .bind(version_id(id, version))
                .execute(&mut *tx)
                .await?;
        }
        self.announce(&mut tx, id).await?;
        tx.commit().await?;
        Ok(done > 0)
    }

    /// Versions per state, and when the oldest active version became current.
    ///
    /// # Errors
    /// Database failures.
    pub async fn version_stats(
        &self,
    ) -> Result<(Vec<(String, i64)>, Option<SystemTime>), CatalogError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM key_versions GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        let counts = rows
            .iter()
            .map(|row| Ok((row.try_get("state")?, row.try_get("n")?)))
            .collect::<Result<Vec<_>, CatalogError>>()?;
        let oldest: Option<i64> = sqlx::query_scalar("SELECT MIN(rotated_at) FROM keys")
            .fetch_one(&self.pool)
            .await?;
        Ok((counts, oldest.map(from_millis)))
    }
}

pub(super) fn version_of(row: &sqlx::any::AnyRow) -> Result<KeyVersion, CatalogError> {
    let corrupt = || CatalogError::Corrupt("key version".into());
    let state: String = row.try_get("state")?;
    let jwk: String = row.try_get("public_jwk")?;
    let optional = |name: &str| -> Result<Option<SystemTime>, CatalogError> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(from_millis))
    };
    Ok(KeyVersion {
        version: u32::try_from(row.try_get::<i64, _>("version")?).map_err(|_| corrupt())?,
        state: VersionState::parse(&state).ok_or_else(corrupt)?,
        external_id: row.try_get("external_id")?,
        public_jwk: serde_json::from_str(&jwk).map_err(|_| corrupt())?,
        created_at: from_millis(row.try_get("created_at")?),
        grace_until: optional("grace_until")?,
        retired_at: optional("retired_at")?,
        x5c: x5c_of(row.try_get("x5c")?).map_err(|_| corrupt())?,
    })
}

pub(super) fn x5c_of(text: Option<String>) -> Result<Option<Vec<String>>, serde_json::Error> {
    text.map(|text| serde_json::from_str(&text)).transpose()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::catalog::keys::tests::{insert, record};
    use crate::catalog::test_catalog;

    #[tokio::test]
    async fn a_rotation_moves_the_current_version_into_grace_and_then_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let v1 = record(None, "k");
        insert(&catalog, &v1, Some(b"v1 sealed")).await;
        let v2 = KeyRecord {
            version: 2,
            external_id: "k@v2".into(),
            ..v1.clone()
        };
        let grace_until = SystemTime::now() + Duration::from_secs(60);
        let mut tx = catalog.begin_write().await.unwrap();
        catalog
            .rotate(&mut tx, &v1, &v2, Some(b"v2 sealed"), grace_until)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let states: Vec<_> = catalog
            .versions("k")
            .await
            .unwrap()
            .iter()
            .map(|v| (v.version, v.state))
            .collect();
        assert_eq!(
            states,
            [(1, VersionState::Grace), (2, VersionState::Active)]
        );
        let current = catalog.get("k").await.unwrap().unwrap();
        assert_eq!(current.version, 2);
        assert_eq!(current.sealed.unwrap().bytes(), b"v2 sealed");
        assert_eq!(catalog.published_jwks(None).await.unwrap().len(), 2);

        // A rotation from a version that is no longer current changes nothing.
        let mut tx = catalog.begin_write().await.unwrap();
        let stale = catalog.rotate(&mut tx, &v1, &v2, None, grace_until).await;
        assert!(matches!(stale, Err(CatalogError::Conflict)), "{stale:?}");
        drop(tx);

        // The grace ends: version 1 is retired, unpublished, its material gone.
        assert!(
            catalog
                .ended_graces(SystemTime::now())
                .await
                .unwrap()
                .is_empty()
        );
        let after = grace_until + Duration::from_secs(1);
        let ended = catalog.ended_graces(after).await.unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].0.version, ended[0].1.version), (1, 1));
        assert!(catalog.retire("k", 1, after).await.unwrap());
        assert!(
            !catalog.retire("k", 1, after).await.unwrap(),
            "retired once"
        );
        assert!(catalog.sealed_secret("k").await.unwrap().is_none());
        assert_eq!(catalog.published_jwks(None).await.unwrap().len(), 1);
        let versions = catalog.versions("k").await.unwrap();
        assert_eq!(versions[0].state, VersionState::Retired);
        assert!(versions[0].retired_at.is_some());

        // A retired version takes no certificate; the current one does.
        let validity = (SystemTime::now(), after);
        let x5c = vec!["MIIB".to_owned()];
        let mut tx = catalog.begin_write().await.unwrap();
        let refused = catalog
            .set_certificate(&mut tx, "k", 1, &x5c, validity)
            .await;
        assert!(matches!(refused, Err(CatalogError::Conflict)));
        drop(tx);
        let mut tx = catalog.begin_write().await.unwrap();
        catalog
            .set_certificate(&mut tx, "k", 2, &x5c, validity)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let published = catalog.published_jwks(None).await.unwrap();
        assert_eq!(published[0].x5c.as_deref(), Some(x5c.as_slice()));
    }

    #[tokio::test]
    async fn certificates_are_due_without_one_and_in_the_last_tenth_of_their_validity() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        insert(&catalog, &record(None, "k"), None).await;
        let policy = crate::catalog::RotationPolicy {
            certificate: Some(crate::catalog::CertificatePolicy {
                issuer_kid: "ca".into(),
                validity_days: 10,
                subject: "CN=k".into(),
            }),
            ..Default::default()
        };
        catalog.set_policy("k", policy).await.unwrap();
        let now = SystemTime::now();
        assert_eq!(catalog.certificates_due(now).await.unwrap(), ["k"]);
        let day = Duration::from_secs(86_400);
        let mut tx = catalog.begin_write().await.unwrap();
        catalog
            .set_certificate(&mut tx, "k", 1, &["MIIB".into()], (now, now + 10 * day))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert!(catalog.certificates_due(now).await.unwrap().is_empty());
        assert!(
            catalog
                .certificates_due(now + 8 * day)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            catalog
                .certificates_due(now + 9 * day + 60 * Duration::from_secs(1))
                .await
                .unwrap(),
            ["k"]
        );
    }
}
