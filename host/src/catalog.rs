//! The key catalog in SQLite or PostgreSQL, through sqlx's `Any` driver so both
//! run the same queries: the connection, its write transactions ([`Write`]) and
//! migrations here; what is stored, by what it is, in [`keys`] (key records and
//! policies), [`versions`] (versions, certificates, rotations), [`usage`] (sign
//! counts), [`guest`] (guest storage) and [`csc`] (CSC credentials and
//! signature activation data). The audit log's table belongs to
//! [`crate::audit`].

mod csc;
mod guest;
mod keys;
mod seal;
mod usage;
mod versions;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Row};

pub use csc::Authorization;
pub use guest::{GuestWriteError, StorageQuota};
pub use keys::{CertificatePolicy, KeyRecord, RotationPolicy, SealedKey, version_id};
pub use seal::{ItemPlace, SealedItem, WrappedGeneration};
pub use usage::KeyUsage;
pub use versions::{KeyVersion, Published, VersionState};

/// The PostgreSQL channel on which deletions and rotations are announced to other
/// replicas (they forget what they cached about the key).
pub const DELETE_CHANNEL: &str = "kmsgw_key_deleted";

/// The payload on [`DELETE_CHANNEL`] that says the master key's generations
/// changed (never a key id: kids have no `#`).
pub const SEAL_CHANGED: &str = "#seal";

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
    e.code().as_deref().is_some_and(storage_full_code)
}

/// Whether an error code (SQLite's extended result code, PostgreSQL's SQLSTATE)
/// says the disk is full.
fn storage_full_code(code: &str) -> bool {
    code == "53100" || code.parse::<i32>().is_ok_and(|c| c & 0xff == 13)
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

    /// On PostgreSQL, tells the other replicas that the master key's
    /// generations changed (they read them again).
    ///
    /// # Errors
    /// Database failures.
    pub async fn announce_seal_change(&self) -> Result<(), CatalogError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
                .bind(DELETE_CHANNEL)
                .bind(SEAL_CHANGED)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
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
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn optional_millis(duration: Option<Duration>) -> Option<i64> {
    duration.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records for the unit tests of the catalog's users.
#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) use super::keys::tests::insert;

    /// A record of key `kid` outside tenants.
    pub(crate) fn record(kid: &str) -> super::KeyRecord {
        super::keys::tests::record(None, kid)
    }
}

/// An empty catalog in a fresh SQLite file, for the unit tests of its parts.
#[cfg(test)]
pub(crate) async fn test_catalog(dir: &tempfile::TempDir) -> Catalog {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display());
    Catalog::connect(&url).await.expect("a SQLite catalog")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_told_apart_from_other_failures() {
        assert!(storage_full_code("13"), "SQLITE_FULL");
        assert!(storage_full_code("53100"), "PostgreSQL disk_full");
        assert!(!storage_full_code("5"), "SQLITE_BUSY");
        assert!(!storage_full_code("778"), "SQLITE_IOERR_WRITE");
        assert!(!storage_full_code("23505"), "unique_violation");
    }

    #[tokio::test]
    async fn a_write_that_fails_leaves_nothing_and_the_next_one_works() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let mut tx = catalog.begin_write().await.unwrap();
        sqlx::query("INSERT INTO meta (name, value) VALUES ('a', '1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        // The second insert of the same name fails: the transaction is dropped
        // with its connection, which rolls back the first insert too.
        let failed = sqlx::query("INSERT INTO meta (name, value) VALUES ('a', '2')")
            .execute(&mut *tx)
            .await;
        assert!(failed.is_err());
        drop(tx);
        assert_eq!(catalog.meta("a").await.unwrap(), None);
        // Every connection of the pool can still write: none holds a transaction.
        for i in 0..20 {
            let mut tx = catalog.begin_write().await.unwrap();
            sqlx::query("INSERT INTO meta (name, value) VALUES ($1, 'x')")
                .bind(format!("n{i}"))
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        assert_eq!(catalog.meta("n19").await.unwrap().as_deref(), Some("x"));
        // A rolled-back write leaves nothing either.
        let mut tx = catalog.begin_write().await.unwrap();
        sqlx::query("INSERT INTO meta (name, value) VALUES ('b', '1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await;
        assert_eq!(catalog.meta("b").await.unwrap(), None);
    }
}
