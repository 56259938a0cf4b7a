//! Master key custody: the master key ([`MasterKey`], the keyring every sealed
//! item opens with) and where it lives ([`Seal`]). The database holds each
//! generation of the master key only wrapped by the configured seal; a gateway
//! unwraps them at start ([`Custody::unseal`], retried until the seal answers)
//! and is sealed until then. [`rotate`] makes a new generation and rewraps every
//! sealed item online; [`migrate`] rewraps the generations under another seal;
//! [`backup`] moves a whole catalog between databases.

pub mod backend;
pub mod backup;
pub mod migrate;
pub mod rotate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::future::BoxFuture;
use zeroize::Zeroizing;

pub use backend::{KeySource, Seal};

use crate::catalog::{Catalog, CatalogError, WrappedGeneration};
pub use crate::crypto::master::MasterKey;
use crate::crypto::master::Refresh;
use crate::crypto::seal::{KeyBytes, Keyring, random_key};

/// The `meta` row by which a database made before generations checked its master key.
pub const MASTER_KEY_CHECK: &str = "master-key-check";

/// Why custody of the master key failed.
#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    /// The seal could not be reached, refused, or did not open a wrapped key.
    #[error("{0}")]
    Seal(String),
    /// The database's master key is not wrapped by the configured seal.
    #[error("{0}")]
    Mismatch(String),
    /// A wrapped key or sealed item is damaged.
    #[error("{0}")]
    Damaged(String),
    /// The master key is not unsealed.
    #[error("the gateway is sealed: {0}")]
    Sealed(String),
    /// Another seal operation holds the database, or the request makes no sense now.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// Unseal attempts by this process, `[ok, failed]`, for `/metrics` (the other
/// seal operations are counted in the database, by whichever process ran them).
#[derive(Default)]
pub struct UnsealCounts(pub [AtomicU64; 2]);

/// The master key, its seal and the catalog that holds the wrapped generations.
pub struct Custody {
    pub seal: Seal,
    pub catalog: Catalog,
    pub master: Arc<MasterKey>,
    pub unseals: UnsealCounts,
    pub rotation: rotate::Progress,
}

impl Refresh for Custody {
    fn refresh(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move { self.unseal().await.map(|_| ()).map_err(|e| e.to_string()) })
    }
}

impl Custody {
    /// Custody of `catalog`'s master key by `seal`; sealed until [`Custody::unseal`].
    pub fn new(seal: Seal, catalog: Catalog) -> Arc<Custody> {
        let master = Arc::new(MasterKey::sealed(&seal.name()));
        let custody = Arc::new(Custody {
            seal,
            catalog,
            master,
            unseals: UnsealCounts::default(),
            rotation: rotate::Progress::default(),
        });
        let weak: Weak<dyn Refresh> = Arc::downgrade(&custody) as Weak<dyn Refresh>;
        custody.master.set_refresher(weak);
        custody
    }

    /// Reads the wrapped generations, unwraps them with the seal and installs
    /// the keyring; the first time on a database, makes generation 1 (the file
    /// seal's own key for a database that predates generations) and stores it
    /// wrapped. Returns the keyring's generations.
    ///
    /// # Errors
    /// [`CustodyError`] saying why: the seal, a mismatch, the database.
    pub async fn unseal(&self) -> Result<Vec<u32>, CustodyError> {
        let result = self.try_unseal().await;
        self.unseals.0[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(_) => {}
            Err(e) => self.master.set_cause(e.to_string()),
        }
        result
    }

    async fn try_unseal(&self) -> Result<Vec<u32>, CustodyError> {
        let name = self.seal.name();
        let mut rows = self.catalog.seal_keys().await?;
        if rows.is_empty() {
            self.first_generation().await?;
            rows = self.catalog.seal_keys().await?;
        }
        let mine: Vec<&WrappedGeneration> = rows.iter().filter(|r| r.seal == name).collect();
        if mine.is_empty() {
            let mut others: Vec<&str> = rows.iter().map(|r| r.seal.as_str()).collect();
            others.dedup();
            return Err(CustodyError::Mismatch(format!(
                "this database's master key is wrapped by seal `{}`, not by kms.json's seal `{name}`; \
                 move it with `kmsgw seal migrate --to <kms.json>` first",
                others.join("`, `")
            )));
        }
        let mut keys: Vec<(u32, KeyBytes)> = Vec::with_capacity(mine.len());
        for row in mine {
            keys.push((
                row.generation,
                self.seal.unwrap(row.generation, &row.wrapped).await?,
            ));
        }
        let ring = Keyring::new(keys.iter().map(|(g, k)| (*g, &**k)));
        let generations = ring.generations();
        self.master.install(ring);
        Ok(generations)
    }

    /// Makes generation 1 on a database that has none.
    async fn first_generation(&self) -> Result<(), CustodyError> {
        let check = self.catalog.meta(MASTER_KEY_CHECK).await?;
        let key = match (&self.seal, check) {
            // A database made before generations: its items are sealed by the
            // file key itself, which becomes generation 1.
            (Seal::File(file), Some(check)) => {
                let opens = STANDARD.decode(check).ok().is_some_and(|sealed| {
                    Keyring::single(file.key())
                        .open(MASTER_KEY_CHECK, &sealed)
                        .is_ok()
                });
                if !opens {
                    return Err(CustodyError::Mismatch(format!(
                        "the master key is not the one this database was created with (from {})",
                        file.describe()
                    )));
                }
                Zeroizing::new(**file.key())
            }
            (Seal::File(file), None) => Zeroizing::new(**file.key()),
            (_, Some(_)) => {
                return Err(CustodyError::Mismatch(
                    "this database's master key is the data directory's master.key (seal `file`); \
                     move it under kms.json's seal with `kmsgw seal migrate --to <kms.json>` \
                     run with the old configuration"
                        .into(),
                ));
            }
            (_, None) => random_key(),
        };
        let wrapped = WrappedGeneration {
            generation: 1,
            seal: self.seal.name(),
            wrapped: self.seal.wrap(1, &key).await?,
        };
        self.catalog
            .insert_seal_key(&wrapped, Some(MASTER_KEY_CHECK))
            .await?;
        Ok(())
    }

    /// Counts a seal operation (`seal-rotate`, …) in the database; a failure
    /// to count is logged, never the operation's failure.
    pub async fn count(&self, operation: &str, outcome: &str) {
        if let Err(e) = self.catalog.count_seal_operation(operation, outcome).await {
            tracing::warn!(operation, error = %e, "a seal operation could not be counted");
        }
    }

    /// Unseals now, and when that fails keeps trying in the background (1 s,
    /// doubling to 30 s) until it works or `stop` is set; then resumes a
    /// rotation left unfinished.
    pub fn spawn_unsealer(
        self: &Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let custody = Arc::clone(self);
        tokio::spawn(async move {
            let mut pause = Duration::from_secs(1);
            loop {
                match custody.unseal().await {
                    Ok(generations) => {
                        tracing::info!(seal = %custody.seal.name(), ?generations, "unsealed");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(seal = %custody.seal.name(), error = %e, retry_in = ?pause, "cannot unseal the master key; key operations answer 503 until it works");
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|stop| *stop) => return,
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            custody.resume_rotation().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::seal::SealError;

    #[tokio::test]
    async fn a_sealed_master_key_refuses_until_unsealed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let seal = Seal::open(
            &crate::config::SealConfig::File,
            KeySource::FileOrNew(&dir.path().join("master.key")),
        )
        .await
        .unwrap();
        let custody = Custody::new(seal, catalog.clone());
        assert!(matches!(
            custody.master.seal("a", b"x"),
            Err(SealError::Sealed(_))
        ));
        assert!(custody.master.sealed_because().is_some());
        assert_eq!(custody.unseal().await.unwrap(), vec![1]);
        let sealed = custody.master.seal("a", b"x").unwrap();
        assert_eq!(
            custody.master.open("a", &sealed).await.unwrap().as_slice(),
            b"x"
        );
        // The database holds generation 1 wrapped, never the key itself.
        let rows = catalog.seal_keys().await.unwrap();
        assert_eq!(rows.len(), 1);
        let key = crate::crypto::seal::read_key_file(&dir.path().join("master.key")).unwrap();
        assert!(!rows[0].wrapped.contains(&STANDARD.encode(key.as_slice())));
    }
}
