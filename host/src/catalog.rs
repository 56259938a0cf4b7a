//! The key catalog: one row per key (kid, provider, external id, alg, public JWK),
//! plus the `db` provider's sealed key material, in SQLite or PostgreSQL through
//! sqlx's `Any` driver so both run the same queries. Migrations run at connect.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

use crate::crypto::PublicJwk;
use crate::crypto::Alg;

/// The PostgreSQL channel on which deletions and rotations are announced to other
/// replicas (they forget what they cached about the key).
pub const DELETE_CHANNEL: &str = "kmsgw_key_deleted";

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

/// How often a key has signed and when it last did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    pub sign_count: u64,
    pub last_used_at: Option<SystemTime>,
}

/// The gateway-wide id of `kid` in `tenant`: the kid itself outside tenants, else
/// `<tenant>~<kid>` (tenant names never contain `~`).
pub fn key_id(tenant: Option<&str>, kid: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}~{kid}"),
        None => kid.to_owned(),
    }
}

/// Which database the catalog is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("a key with this kid already exists")]
    Exists,
    /// The row a write expected changed or went away meanwhile (another rotation
    /// won, the key was deleted); nothing was written.
    #[error("the key changed concurrently")]
    Conflict,
    #[error("unsupported database URL scheme (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    /// The database's disk is full: nothing was written; reads go on.
    #[error("the database's storage is full: {0}")]
    StorageFull(String),
    /// The database cannot be reached or gave no connection in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row for `{0}` is damaged")]
    Corrupt(String),
}

impl From<sqlx::Error> for CatalogError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::Database(db) if is_storage_full(db.as_ref()) => {
                CatalogError::StorageFull(db.message().to_owned())
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => CatalogError::Unavailable(e.to_string()),
            _ => CatalogError::Db(e),
        }
    }
}

/// SQLite's `SQLITE_FULL` (13), or PostgreSQL's `disk_full` (53100).
fn is_storage_full(e: &dyn sqlx::error::DatabaseError) -> bool {
    match e.code().as_deref() {
        Some("53100") => true,
        Some(code) => code.parse::<i32>().is_ok_and(|c| c & 0xff == 13),
        None => false,
    }
}

/// A write transaction on one pooled connection. Its connection goes back to
/// the pool only after a `COMMIT` or `ROLLBACK` that succeeded; dropped in any
/// other state (an error, a cancelled request) the connection is closed, which
/// rolls back whatever it held. A connection whose transaction state is unknown
/// is never reused: after `SQLITE_FULL`, SQLite may have rolled back on its own,
/// and a pooled connection that still believed itself inside a transaction once
/// held the write lock forever and turned later commits into savepoint releases.
pub struct Write {
    conn: sqlx::pool::PoolConnection<sqlx::Any>,
    clean: bool,
}

impl Write {
    /// Commits. On failure nothing was committed and the connection is closed.
    ///
    /// # Errors
    /// Database failures.
    pub async fn commit(mut self) -> Result<(), CatalogError> {
        match sqlx::query("COMMIT").execute(&mut *self.conn).await {
            Ok(_) => {
                self.clean = true;
                Ok(())
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
                Err(e.into())
            }
        }
    }

    /// Rolls back what this transaction did.
    pub async fn rollback(mut self) {
        self.clean = sqlx::query("ROLLBACK")
            .execute(&mut *self.conn)
            .await
            .is_ok();
    }
}

impl std::ops::Deref for Write {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Write {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.conn
    }
}

impl Drop for Write {
    fn drop(&mut self) {
        if !self.clean {
            self.conn.close_on_drop();
        }
    }
}

/// The key catalog.
#[derive(Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
}

impl Catalog {
    /// Connects to `url` (`sqlite://…` or `postgres://…`) and applies migrations.
    ///
    /// # Errors
    /// When the database cannot be reached or migrated.
    pub async fn connect(url: &str) -> Result<Catalog, CatalogError> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(CatalogError::UnsupportedUrl);
        };
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            // A SQLite connection is a file handle that cannot be lost, and a ping
            // costs a round trip to its worker thread: half of a cold key read.
            .test_before_acquire(backend == Backend::Postgres)
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers proceed while a writer commits; it persists in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Catalog { pool, backend })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The connection pool, for the stores beside the catalog (the audit log).
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite, so the write lock
    /// is taken at once and a transaction that reads before it writes cannot fail
    /// on another writer's commit.
    ///
    /// # Errors
    /// Database failures.
    pub async fn begin_write(&self) -> Result<Write, CatalogError> {
        let conn = self.pool.acquire().await?;
        let mut write = Write { conn, clean: false };
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        sqlx::query(begin).execute(&mut *write.conn).await?;
        Ok(write)
    }

    /// A cheap round trip, for health probes.
    ///
    /// # Errors
    /// When the database does not answer.
    pub async fn ping(&self) -> Result<(), CatalogError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

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
            sqlx::query("INSERT INTO db_key_material (kid, sealed) VALUES ($1, $2)")
                .bind(&record.id)
                .bind(STANDARD.encode(sealed))
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
        let row = sqlx::query(
            "SELECT k.kid, k.tenant, k.provider, k.external_id, k.alg, k.public_jwk, k.created_at, \
             k.version, COALESCE(m.sealed, vm.sealed) AS sealed FROM keys k \
             LEFT JOIN db_key_material m ON k.version <= 1 AND m.kid = k.kid \
             LEFT JOIN db_version_material vm ON k.version > 1 AND vm.id = k.kid || '@v' || k.version \
             WHERE k.kid = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut record = record_of(&row)?;
        record.sealed = row
            .try_get::<Option<String>, _>("sealed")?
            .map(|text| decode_sealed(id, &text))
            .transpose()?
            .map(|bytes| SealedKey(bytes.into()));
        Ok(Some(record))
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

    /// `rows` groups of `columns` parameters for a multi-row statement:
    /// `(?, ?), (?, ?)` on SQLite, which resolves `$n` names one by one (a cost
    /// that grows with the square of the count), `($1, $2), ($3, $4)` on PostgreSQL.
    pub(crate) fn placeholders(&self, rows: usize, columns: usize) -> String {
        let mut text = String::with_capacity(rows * columns * 5);
        for row in 0..rows {
            text.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..columns {
                if column > 0 {
                    text.push_str(", ");
                }
                match self.backend {
                    Backend::Sqlite => text.push('?'),
                    Backend::Postgres => {
                        text.push_str(&format!("${}", row * columns + column + 1));
                    }
                }
            }
            text.push(')');
        }
        text
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
    /// version, each with its certificate chain (`x5c`) when it has one.
    ///
    /// # Errors
    /// Database failures.
    pub async fn published_jwks(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(PublicJwk, Option<Vec<String>>)>, CatalogError> {
        let rows = sqlx::query(
            "SELECT v.public_jwk, v.x5c FROM key_versions v JOIN keys k ON k.kid = v.kid \
             WHERE k.tenant = $1 AND v.state IN ('active', 'grace') ORDER BY v.kid, v.version",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let corrupt = || CatalogError::Corrupt("a published JWK".into());
                let jwk: String = row.try_get("public_jwk")?;
                Ok((
                    serde_json::from_str(&jwk).map_err(|_| corrupt())?,
                    x5c_of(row.try_get("x5c")?).map_err(|_| corrupt())?,
                ))
            })
            .collect()
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
            sqlx::query("INSERT INTO db_version_material (id, sealed) VALUES ($1, $2)")
                .bind(next.backend_id())
                .bind(STANDARD.encode(sealed))
                .execute(&mut **tx)
                .await?;
        }
        self.announce(tx, &current.id).await
    }

    /// On PostgreSQL, tells the other replicas at commit that key `id` changed.
    async fn announce(&self, tx: &mut Write, id: &str) -> Result<(), CatalogError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
                .bind(DELETE_CHANNEL)
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
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

    /// A value from the `meta` table.
    ///
    /// # Errors
    /// Database failures.
    pub async fn meta(&self, name: &str) -> Result<Option<String>, CatalogError> {
        let row = sqlx::query("SELECT value FROM meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Stores `value` under `name` unless a value is there already; returns the stored value.
    ///
    /// # Errors
    /// Database failures.
    pub async fn meta_insert_once(&self, name: &str, value: &str) -> Result<String, CatalogError> {
        let inserted = sqlx::query("INSERT INTO meta (name, value) VALUES ($1, $2)")
            .bind(name)
            .bind(value)
            .execute(&self.pool)
            .await;
        match inserted {
            Ok(_) => Ok(value.to_owned()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => self
                .meta(name)
                .await?
                .ok_or_else(|| CatalogError::Corrupt(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }
}

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
            "INSERT INTO guest_kv (provider, key, value, size) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider, key) DO UPDATE SET value = excluded.value, size = excluded.size",
        )
        .bind(provider)
        .bind(key)
        .bind(value)
        .bind(size)
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

/// Keys per usage UPDATE statement (3 parameters each).
const USAGE_ROWS_PER_UPDATE: usize = 256;

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn usage_of(row: &sqlx::any::AnyRow) -> Result<KeyUsage, CatalogError> {
    let count: i64 = row.try_get("sign_count")?;
    let last: Option<i64> = row.try_get("last_used_at")?;
    Ok(KeyUsage {
        sign_count: u64::try_from(count).unwrap_or(0),
        last_used_at: last
            .map(|ms| UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
    })
}

fn decode_sealed(id: &str, text: &str) -> Result<Vec<u8>, CatalogError> {
    STANDARD
        .decode(text)
        .map_err(|_| CatalogError::Corrupt(id.to_owned()))
}

fn record_of(row: &sqlx::any::AnyRow) -> Result<KeyRecord, CatalogError> {
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
    })
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn version_of(row: &sqlx::any::AnyRow) -> Result<KeyVersion, CatalogError> {
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

fn x5c_of(text: Option<String>) -> Result<Option<Vec<String>>, serde_json::Error> {
    text.map(|text| serde_json::from_str(&text)).transpose()
}

fn policy_json(policy: Option<&CertificatePolicy>) -> Option<String> {
    policy.map(|p| serde_json::to_string(p).expect("a policy serialises"))
}

fn optional_millis(duration: Option<Duration>) -> Option<i64> {
    duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
