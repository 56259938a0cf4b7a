//! The master key as a running gateway holds it: the keyring once unsealed
//! (see [`crate::custody`] for where it comes from), and until then why not.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::seal::{KEY_LEN, Keyring, SealError};

/// Re-reads the master key's generations (another replica or the CLI rotated).
pub trait Refresh: Send + Sync {
    /// Reads the generations again; the error says why not.
    fn refresh(&self) -> BoxFuture<'_, Result<(), String>>;
}

/// The master key as the gateway holds it: the keyring once unsealed, and
/// until then why not. Cheap to read on every seal and open.
pub struct MasterKey {
    ring: ArcSwapOption<Keyring>,
    seal_name: String,
    cause: Mutex<String>,
    refresher: OnceLock<Weak<dyn Refresh>>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A master key of one generation from raw bytes (tests, `adapter check`).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let key = Self::sealed("file");
        key.install(Keyring::single(bytes));
        key
    }

    /// A master key still to be unsealed by the seal named `seal_name`.
    pub fn sealed(seal_name: &str) -> Self {
        MasterKey {
            ring: ArcSwapOption::empty(),
            seal_name: seal_name.to_owned(),
            cause: Mutex::new("not unsealed yet".into()),
            refresher: OnceLock::new(),
        }
    }

    /// Makes `ring` the keyring (unsealed).
    pub fn install(&self, ring: Keyring) {
        self.ring.store(Some(Arc::new(ring)));
    }

    /// The keyring, or why the master key is sealed.
    ///
    /// # Errors
    /// [`SealError::Sealed`].
    pub fn keyring(&self) -> Result<Arc<Keyring>, SealError> {
        self.ring.load_full().ok_or_else(|| {
            SealError::Sealed(format!(
                "seal `{}`: {}",
                self.seal_name,
                self.cause.lock().expect("cause lock")
            ))
        })
    }

    /// The seal's name.
    pub fn seal_name(&self) -> &str {
        &self.seal_name
    }

    /// Records why the last unseal failed.
    pub fn set_cause(&self, cause: String) {
        *self.cause.lock().expect("cause lock") = cause;
    }

    /// Who reads new generations when a blob names one this keyring lacks.
    pub fn set_refresher(&self, refresher: Weak<dyn Refresh>) {
        let _ = self.refresher.set(refresher);
    }

    /// `None` once unsealed, else why the gateway is still sealed.
    pub fn sealed_because(&self) -> Option<String> {
        match self.ring.load().as_ref() {
            Some(_) => None,
            None => Some(self.cause.lock().expect("cause lock").clone()),
        }
    }

    /// The generation new items are sealed under (`None` while sealed).
    pub fn generation(&self) -> Option<u32> {
        self.ring.load().as_ref().map(|ring| ring.current())
    }

    /// Encrypts `plaintext` under the current generation, bound to `aad`.
    ///
    /// # Errors
    /// [`SealError::Sealed`] while the master key is not unsealed.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        Ok(self.keyring()?.seal(aad, plaintext))
    }

    /// Decrypts a sealed blob; a generation made since the keyring was read
    /// (by another replica's or the CLI's rotation) is fetched first.
    ///
    /// # Errors
    /// [`SealError`]: sealed, unknown generation, or a blob that does not open.
    pub async fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let ring = self.keyring()?;
        match ring.open(aad, sealed) {
            Err(SealError::UnknownGeneration(g)) if g > ring.current() => {
                let refresher = self.refresher.get().and_then(Weak::upgrade);
                if let Some(refresher) = refresher
                    && let Err(e) = refresher.refresh().await
                {
                    tracing::warn!(error = %e, "the master key's new generations could not be read");
                }
                self.keyring()?.open(aad, sealed)
            }
            other => other,
        }
    }
}
