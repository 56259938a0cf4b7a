//! Seal migration: the same master key generations, wrapped by another seal.
//! No sealed item is touched; the new wrapped copies replace the old ones in
//! one transaction, and the old seal's copy outside the database (a file
//! seal's key file) is removed once that is committed.

use super::{Custody, CustodyError, Seal};
use crate::catalog::WrappedGeneration;

/// What a migration did.
#[derive(Debug)]
pub struct Migrated {
    pub from: String,
    pub to: String,
    pub generations: Vec<u32>,
    /// The old seal's key file, removed.
    pub removed: Option<std::path::PathBuf>,
}

impl Custody {
    /// Rewraps every generation of the master key under `to` and forgets the
    /// copies this custody's seal wrapped.
    ///
    /// # Errors
    /// Either seal failing, the database, or `to` being this seal: nothing changed.
    pub async fn migrate(&self, to: &Seal) -> Result<Migrated, CustodyError> {
        let from = self.seal.name();
        if to.name() == from {
            return Err(CustodyError::Refused(format!(
                "the master key is wrapped by seal `{from}` already"
            )));
        }
        self.unseal().await?;
        let mut rewrapped = Vec::new();
        for row in self.catalog.seal_keys().await? {
            if row.seal != from {
                continue;
            }
            let key = self.seal.unwrap(row.generation, &row.wrapped).await?;
            rewrapped.push(WrappedGeneration {
                generation: row.generation,
                seal: to.name(),
                wrapped: to.wrap(row.generation, &key).await?,
            });
        }
        // Proves the new seal opens what it wrapped before anything is replaced.
        for row in &rewrapped {
            to.unwrap(row.generation, &row.wrapped).await?;
        }
        self.catalog
            .replace_seal(&from, &rewrapped)
            .await
            .map_err(|e| match e {
                crate::catalog::CatalogError::Conflict => CustodyError::Refused(
                    "the master key's generations changed meanwhile (a rotation ran); try again"
                        .into(),
                ),
                other => other.into(),
            })?;
        let mut removed = None;
        if let Some(path) = self.seal.as_file().and_then(|file| file.path.clone()) {
            match std::fs::remove_file(&path) {
                Ok(()) => removed = Some(path),
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "the old master key file could not be removed; remove it by hand")
                }
            }
        }
        Ok(Migrated {
            from,
            to: to.name(),
            generations: rewrapped.iter().map(|r| r.generation).collect(),
            removed,
        })
    }
}
