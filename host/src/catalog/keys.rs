//! Key records: one row per key (its current version's external id and public
//! JWK, its rotation policy), the `db` provider's sealed material of version 1,
//! and the lookups the gateway's hot path and listings make.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::Row;

use super::usage::usage_of;
use super::{Catalog, CatalogError, KeyUsage, Write, from_millis, key_id, millis, optional_millis};
use crate::crypto::{Alg, PublicJwk};

/// A key as the catalog knows it: public data only.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// The gateway-wide id: [`key_id`] of tenant and kid. Backends name keys by it.
    pub id: String,
    /// The kid its tenant knows it by.
    pub kid: String,
    /// The tenant it belongs to; `None` outside tenants.
    pub tenant: Option<String>,
    pub provider: String,
    pub external_id: String,
    pub alg: Alg,
    /// The public JWK of `version`, labelled with its [`KeyRecord::jwk_kid`].
    pub public_jwk: PublicJwk,
    pub created_at: SystemTime,
    /// The version this record describes (1, 2, …); the catalog's `keys` row holds
    /// the current one.
    pub version: u32,
    /// This version's private key sealed under the master key, when the `db`
    /// provider holds it: read with the record, so a key not in memory signs after
    /// one database read.
    pub sealed: Option<SealedKey>,
    /// Whether this version has a certificate chain: read with the record by
    /// [`Catalog::get`] (what a sign looks up) and known for
    /// [`Catalog::certified_keys`]; `false` in other listings, which do not ask.
    pub certified: bool,
}

/// A `db` key's private material as the catalog stores it: sealed (AES-256-GCM
/// under the master key, bound to the version's id). Never printed.
#[derive(Clone)]
pub struct SealedKey(Arc<[u8]>);

impl SealedKey {
    /// The sealed bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedKey({} bytes)", self.0.len())
    }
}

impl KeyRecord {
    /// The id backends know this version by: the key id for version 1, else
    /// `<key id>@v<version>` (`@` never occurs in a kid).
    pub fn backend_id(&self) -> String {
        version_id(&self.id, self.version)
    }

    /// The `kid` a JWS header names this version by: the kid for version 1, else
    /// `<kid>@v<version>`.
    pub fn jwk_kid(&self) -> String {
        version_id(&self.kid, self.version)
    }
}

/// `name` for version 1, else `<name>@v<version>`.
pub fn version_id(name: &str, version: u32) -> String {
    if version <= 1 {
        name.to_owned()
    } else {
        format!("{name}@v{version}")
    }
}

/// When a key rotates by itself, how long a replaced version stays published,
/// and which CA certifies each new version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RotationPolicy {
    pub every: Option<Duration>,
    pub grace: Option<Duration>,
    pub certificate: Option<CertificatePolicy>,
}

/// The leaf certificate each new version of a key gets, and that is renewed near
/// its expiry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificatePolicy {
    /// The key acting as CA (same tenant); its certificate must be a CA certificate.
    pub issuer_kid: String,
    /// How long each leaf is valid, in days.
    pub validity_days: u32,
    /// The leaf's subject, RFC 4514 (`CN=issuer.example.org, O=Example`).
    pub subject: String,
}

impl Catalog {
    /// Inserts a key record (and sealed material, if any) in `tx`.
    ///
    /// # Errors
    /// [`CatalogError::Exists`] when the kid is taken.
    pub async fn insert(
        &self,
        tx: &mut Write,
        record: &KeyRecord,
        sealed: Option<&[u8]>,
        policy: RotationPolicy,
    ) -> Result<(), CatalogError> {
        let jwk = serde_json::to_string(&record.public_jwk).expect("a JWK serialises");
        let inserted = sqlx::query(
            "INSERT INTO keys (kid, tenant, provider, external_id, alg, public_jwk, created_at, \
             rotated_at, rotate_every_ms, grace_ms, certificate_policy) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)",
        )
        .bind(&record.id)
        .bind(record.tenant.as_deref().unwrap_or(""))
        .bind(&record.provider)
        .bind(&record.external_id)
        .bind(record.alg.as_str())
        .bind(&jwk)
        .bind(millis(record.created_at))
        .bind(optional_millis(policy.every))
        .bind(optional_millis(policy.grace))
        .bind(policy_json(policy.certificate.as_ref()))
        .execute(&mut **tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(CatalogError::Exists);
            }
            other => other?,
        };
        sqlx::query(
            "INSERT INTO key_versions (kid, version, state, external_id, public_jwk, created_at) \
             VALUES ($1, 1, 'active', $2, $3, $4)",
        )
        .bind(&record.id)
        .bind(&record.external_id)
        .bind(&jwk)
        .bind(millis(record.created_at))
        .execute(&mut **tx)
        .await?;
        if let Some(sealed) = sealed {
            sqlx::query(
                "INSERT INTO db_key_material (kid, sealed, generation) VALUES ($1, $2, $3)",
            )
            .bind(&record.id)
            .bind(STANDARD.encode(sealed))
            .bind(sealed_generation(sealed))
            .execute(&mut **tx)
            .await?;
        }
        // Other replicas' JWKS documents gain the key.
        self.announce(tx, &record.id).await
    }

    /// The record with gateway-wide id `id`, if any.
    ///
    /// # Errors
    /// Database failures.
    pub async fn get(&self, id: &str) -> Result<Option<KeyRecord>, CatalogError> {
        Ok(self.get_many(&[id]).await?.pop())
    }

    /// The records of those of `ids` that exist, in no particular order, read
    /// by one query (with their sealed material and whether their current
    /// version is certified).
    ///
    /// # Errors
    /// Database failures.
    pub async fn get_many(&self, ids: &[&str]) -> Result<Vec<KeyRecord>, CatalogError> {
        let sql = format!(
            "SELECT k.kid, k.tenant, k.provider, k.external_id, k.alg, k.public_jwk, k.created_at, \
             k.version, COALESCE(m.sealed, vm.sealed) AS sealed, \
             CAST(CASE WHEN cv.x5c IS NULL THEN 0 ELSE 1 END AS BIGINT) AS certified FROM keys k \
             LEFT JOIN db_key_material m ON k.version <= 1 AND m.kid = k.kid \
             LEFT JOIN db_version_material vm ON k.version > 1 AND vm.id = k.kid || '@v' || k.version \
             LEFT JOIN key_versions cv ON cv.kid = k.kid AND cv.version = k.version \
             WHERE k.kid IN {}",
            self.placeholders(1, ids.len())
        );
        // Only placeholders are formatted in; the ids are bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let mut record = record_of(row)?;
                record.sealed = row
                    .try_get::<Option<String>, _>("sealed")?
                    .map(|text| decode_sealed(&record.id, &text))
                    .transpose()?
                    .map(|bytes| SealedKey(bytes.into()));
                record.certified = row.try_get::<i64, _>("certified")? != 0;
                Ok(record)
            })
            .collect()
    }

    /// Up to `limit` records of `tenant` with kid greater than `after`, in kid order,
    /// with their usage; with `unused_since`, only keys that have not signed since
    /// then (and existed before then).
    ///
    /// # Errors
    /// Database failures.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: u32,
        unused_since: Option<SystemTime>,
    ) -> Result<Vec<(KeyRecord, KeyUsage)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT kid, tenant, provider, external_id, alg, public_jwk, created_at, version, sign_count, last_used_at \
             FROM keys WHERE tenant = $1 AND kid > $2 \
             AND ($3 < 0 OR COALESCE(last_used_at, created_at) <= $3) ORDER BY kid LIMIT $4",
        )
        .bind(tenant.unwrap_or(""))
        .bind(key_id(tenant, after.unwrap_or("")))
        .bind(unused_since.map_or(-1, millis))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((record_of(row)?, usage_of(row)?)))
            .collect()
    }

    /// The sealed material stored for key `id`, if any.
    ///
    /// # Errors
    /// Database failures.
    pub async fn sealed_secret(&self, id: &str) -> Result<Option<Vec<u8>>, CatalogError> {
        let row = sqlx::query(
            "SELECT sealed FROM db_key_material WHERE kid = $1 \
             UNION ALL SELECT sealed FROM db_version_material WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| decode_sealed(id, &r.try_get::<String, _>("sealed")?))
            .transpose()
    }

    /// Deletes key `id` and its material in `tx` and, on PostgreSQL, announces the
    /// deletion to other replicas at commit.
    ///
    /// # Errors
    /// [`CatalogError::Conflict`] when the key is not there (deleted meanwhile);
    /// database failures.
    pub async fn delete(&self, tx: &mut Write, id: &str) -> Result<(), CatalogError> {
        sqlx::query("DELETE FROM db_key_material WHERE kid = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "DELETE FROM db_version_material WHERE substr(id, 1, length($1) + 2) = $1 || '@v'",
        )
        .bind(id)
        .execute(&mut **tx)
        .await?;
        sqlx::query("DELETE FROM key_versions WHERE kid = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM keys WHERE kid = $1")
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(CatalogError::Conflict);
        }
        self.announce(tx, id).await
    }

    /// Key `id`'s rotation policy.
    ///
    /// # Errors
    /// Database failures.
    pub async fn policy(&self, id: &str) -> Result<RotationPolicy, CatalogError> {
        let row = sqlx::query(
            "SELECT rotate_every_ms, grace_ms, certificate_policy FROM keys WHERE kid = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(RotationPolicy::default());
        };
        let duration = |name: &str| -> Result<Option<Duration>, CatalogError> {
            Ok(row
                .try_get::<Option<i64>, _>(name)?
                .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0))))
        };
        let certificate: Option<String> = row.try_get("certificate_policy")?;
        Ok(RotationPolicy {
            every: duration("rotate_every_ms")?,
            grace: duration("grace_ms")?,
            certificate: certificate
                .map(|text| {
                    serde_json::from_str(&text)
                        .map_err(|_| CatalogError::Corrupt("a certificate policy".into()))
                })
                .transpose()?,
        })
    }

    /// Sets key `id`'s rotation policy; returns whether the key exists.
    ///
    /// # Errors
    /// Database failures.
    pub async fn set_policy(&self, id: &str, policy: RotationPolicy) -> Result<bool, CatalogError> {
        let done = sqlx::query(
            "UPDATE keys SET rotate_every_ms = $2, grace_ms = $3, certificate_policy = $4 WHERE kid = $1",
        )
        .bind(id)
        .bind(optional_millis(policy.every))
        .bind(optional_millis(policy.grace))
        .bind(policy_json(policy.certificate.as_ref()))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The ids of keys whose policy makes them due for rotation at `now`, each with
    /// the time its current version became current (the claim token of
    /// [`Catalog::claim_rotation`]).
    ///
    /// # Errors
    /// Database failures.
    pub async fn due_rotations(&self, now: SystemTime) -> Result<Vec<(String, i64)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT kid, rotated_at FROM keys WHERE rotate_every_ms IS NOT NULL \
             AND rotated_at + rotate_every_ms <= $1",
        )
        .bind(millis(now))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("kid")?, row.try_get("rotated_at")?)))
            .collect()
    }

    /// Claims the rotation of key `id` that became due since `rotated_at`: true for
    /// exactly one caller across replicas.
    ///
    /// # Errors
    /// Database failures.
    pub async fn claim_rotation(
        &self,
        id: &str,
        rotated_at: i64,
        now: SystemTime,
    ) -> Result<bool, CatalogError> {
        let done =
            sqlx::query("UPDATE keys SET rotated_at = $3 WHERE kid = $1 AND rotated_at = $2")
                .bind(id)
                .bind(rotated_at)
                .bind(millis(now))
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }
}

/// The master key generation that sealed `blob`, as the material tables record
/// it (1 for bytes that carry no generation, as the unit tests' stand-ins).
pub(super) fn sealed_generation(blob: &[u8]) -> i64 {
    i64::from(crate::crypto::seal::generation_of(blob).unwrap_or(1))
}

pub(super) fn decode_sealed(id: &str, text: &str) -> Result<Vec<u8>, CatalogError> {
    STANDARD
        .decode(text)
        .map_err(|_| CatalogError::Corrupt(id.to_owned()))
}

pub(super) fn record_of(row: &sqlx::any::AnyRow) -> Result<KeyRecord, CatalogError> {
    let id: String = row.try_get("kid")?;
    let tenant: String = row.try_get("tenant")?;
    let corrupt = || CatalogError::Corrupt(id.clone());
    let (kid, tenant) = if tenant.is_empty() {
        (id.clone(), None)
    } else {
        let kid = id
            .strip_prefix(tenant.as_str())
            .and_then(|rest| rest.strip_prefix('~'))
            .ok_or_else(corrupt)?
            .to_owned();
        (kid, Some(tenant))
    };
    let alg: String = row.try_get("alg")?;
    let jwk: String = row.try_get("public_jwk")?;
    let created: i64 = row.try_get("created_at")?;
    Ok(KeyRecord {
        provider: row.try_get("provider")?,
        external_id: row.try_get("external_id")?,
        alg: Alg::parse(&alg).ok_or_else(corrupt)?,
        public_jwk: serde_json::from_str(&jwk).map_err(|_| corrupt())?,
        created_at: from_millis(created),
        version: u32::try_from(row.try_get::<i64, _>("version")?).map_err(|_| corrupt())?,
        id,
        kid,
        tenant,
        sealed: None,
        certified: false,
    })
}

pub(super) fn policy_json(policy: Option<&CertificatePolicy>) -> Option<String> {
    policy.map(|p| serde_json::to_string(p).expect("a policy serialises"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::test_catalog;

    /// A record of key `kid` (in `tenant`) made for the tests.
    pub(crate) fn record(tenant: Option<&str>, kid: &str) -> KeyRecord {
        let jwk: PublicJwk = serde_json::from_value(serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }))
        .unwrap();
        KeyRecord {
            id: key_id(tenant, kid),
            kid: kid.into(),
            tenant: tenant.map(str::to_owned),
            provider: "db".into(),
            external_id: key_id(tenant, kid),
            alg: Alg::EdDSA,
            public_jwk: jwk,
            created_at: SystemTime::now(),
            version: 1,
            sealed: None,
            certified: false,
        }
    }

    pub(crate) async fn insert(catalog: &Catalog, record: &KeyRecord, sealed: Option<&[u8]>) {
        let mut tx = catalog.begin_write().await.unwrap();
        catalog
            .insert(&mut tx, record, sealed, RotationPolicy::default())
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    #[tokio::test]
    async fn a_key_reads_back_with_its_sealed_material_and_its_kid_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let key = record(None, "k1");
        insert(&catalog, &key, Some(b"sealed bytes")).await;
        let read = catalog.get("k1").await.unwrap().unwrap();
        assert_eq!((read.kid.as_str(), read.version), ("k1", 1));
        assert_eq!(read.sealed.unwrap().bytes(), b"sealed bytes");
        let mut tx = catalog.begin_write().await.unwrap();
        let again = catalog
            .insert(&mut tx, &key, None, RotationPolicy::default())
            .await;
        assert!(matches!(again, Err(CatalogError::Exists)), "{again:?}");
        drop(tx);
        assert!(catalog.get("nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn listing_pages_by_kid_within_a_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        for kid in ["c", "a", "b"] {
            insert(&catalog, &record(None, kid), None).await;
        }
        insert(&catalog, &record(Some("acme"), "a"), None).await;
        let page = catalog.list(None, None, 2, None).await.unwrap();
        let kids: Vec<_> = page.iter().map(|(r, _)| r.kid.as_str()).collect();
        assert_eq!(kids, ["a", "b"]);
        let next = catalog.list(None, Some("b"), 2, None).await.unwrap();
        assert_eq!(next.len(), 1);
        let acme = catalog.list(Some("acme"), None, 10, None).await.unwrap();
        assert_eq!(acme.len(), 1);
        assert_eq!(acme[0].0.tenant.as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn a_deleted_key_is_gone_and_a_second_delete_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        insert(&catalog, &record(None, "k"), Some(b"s")).await;
        let mut tx = catalog.begin_write().await.unwrap();
        catalog.delete(&mut tx, "k").await.unwrap();
        tx.commit().await.unwrap();
        assert!(catalog.get("k").await.unwrap().is_none());
        assert!(catalog.sealed_secret("k").await.unwrap().is_none());
        let mut tx = catalog.begin_write().await.unwrap();
        assert!(matches!(
            catalog.delete(&mut tx, "k").await,
            Err(CatalogError::Conflict)
        ));
    }

    #[tokio::test]
    async fn a_rotation_policy_is_kept_and_a_due_rotation_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        insert(&catalog, &record(None, "k"), None).await;
        let policy = RotationPolicy {
            every: Some(Duration::from_secs(60)),
            grace: Some(Duration::from_secs(5)),
            certificate: None,
        };
        assert!(catalog.set_policy("k", policy.clone()).await.unwrap());
        assert_eq!(catalog.policy("k").await.unwrap(), policy);
        let later = SystemTime::now() + Duration::from_secs(120);
        let due = catalog.due_rotations(later).await.unwrap();
        assert_eq!(due.len(), 1);
        let (id, token) = &due[0];
        assert!(catalog.claim_rotation(id, *token, later).await.unwrap());
        assert!(!catalog.claim_rotation(id, *token, later).await.unwrap());
        assert!(catalog.due_rotations(later).await.unwrap().is_empty());
    }
}
