//! Master key rotation, online: a new generation becomes current (new items
//! are sealed under it at once), every item sealed under an older one is
//! rewrapped in bounded batches, each batch one transaction, while signs go on;
//! when none is left the older generations are destroyed. Every step is
//! committed, so a rotation killed half-way resumes where it stopped: a keyring
//! of more than one generation means a rotation is unfinished.

use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use utoipa::ToSchema;

use super::{Custody, CustodyError};
use crate::catalog::WrappedGeneration;
use crate::crypto::seal::{Keyring, random_key};

/// How long replicas on PostgreSQL get to learn of a new generation.
const REPLICA_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// How fast a rotation goes: items rewrapped per transaction, and a pause
/// between transactions (to leave the database to the signs on a busy site).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub batch: usize,
    pub pause: std::time::Duration,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            batch: 256,
            pause: std::time::Duration::ZERO,
        }
    }
}

/// A rotation's progress, as `GET /admin/seal/rotate` shows it.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// Whether a rotation is working now (in this process).
    pub running: bool,
    /// The generation items are being moved to (or were, by the last rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_generation: Option<u32>,
    /// Sealed items that were under an older generation when this run started.
    pub total: u64,
    /// Of those, rewrapped so far.
    pub done: u64,
    /// Milliseconds since the epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// Why the last run stopped, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The progress of this process's rotation.
#[derive(Default)]
pub struct Progress(Mutex<RotationStatus>);

impl Progress {
    /// A copy of the status now.
    pub fn status(&self) -> RotationStatus {
        self.0.lock().expect("progress lock").clone()
    }

    fn update(&self, change: impl FnOnce(&mut RotationStatus)) {
        change(&mut self.0.lock().expect("progress lock"));
    }

    /// Marks a run as started unless one is; returns whether this call started it.
    fn start(&self) -> bool {
        let mut status = self.0.lock().expect("progress lock");
        if status.running {
            return false;
        }
        *status = RotationStatus {
            running: true,
            started_at: Some(now_ms()),
            ..RotationStatus::default()
        };
        true
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotated {
    pub generation: u32,
    pub rewrapped: u64,
    pub elapsed: std::time::Duration,
}

impl Custody {
    /// Rotates the master key: with `new_generation`, makes a new one first
    /// (unless a rotation is unfinished, which this then finishes); rewraps
    /// every item under an older generation; destroys the older generations.
    /// `progress` is told `(done, total)` after each batch.
    ///
    /// # Errors
    /// [`CustodyError::Refused`] when a rotation is running in this process;
    /// the seal or the database failing (what was committed stays: call again
    /// to resume).
    pub async fn rotate(
        &self,
        new_generation: bool,
        pace: Pace,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Rotated, CustodyError> {
        if !self.rotation.start() {
            return Err(CustodyError::Refused(
                "a master key rotation is running already".into(),
            ));
        }
        let result = self.run_rotation(new_generation, pace, progress).await;
        self.rotation.update(|s| {
            s.running = false;
            s.finished_at = Some(now_ms());
            s.error = result.as_ref().err().map(ToString::to_string);
        });
        result
    }

    async fn run_rotation(
        &self,
        new_generation: bool,
        pace: Pace,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<Rotated, CustodyError> {
        let started = Instant::now();
        // The generations as the database has them now (another process may have rotated).
        let generations = self.unseal().await?;
        let current = *generations.last().expect("a keyring has a generation");
        let target = if new_generation && generations.len() == 1 {
            self.add_generation(current + 1).await?
        } else {
            current
        };
        self.rotation.update(|s| s.target_generation = Some(target));
        let total: u64 = self
            .catalog
            .sealed_by_generation()
            .await?
            .iter()
            .filter(|(g, _)| *g < target)
            .map(|(_, n)| n)
            .sum();
        self.rotation.update(|s| s.total = total);
        tracing::info!(
            generation = target,
            items = total,
            "rewrapping sealed items under the new master key generation"
        );
        let mut done = 0;
        // On PostgreSQL, replicas learn of the new generation through a
        // notification; items they sealed just before it are found by one
        // more sweep after this grace, before anything is destroyed.
        let mut replicas_waited = self.catalog.backend() != crate::catalog::Backend::Postgres;
        loop {
            let items = self.catalog.sealed_below(target, pace.batch.max(1)).await?;
            if items.is_empty() {
                if !replicas_waited {
                    replicas_waited = true;
                    tokio::time::sleep(REPLICA_GRACE).await;
                    continue;
                }
                if self.catalog.destroy_generation(target - 1).await? {
                    self.catalog.announce_seal_change().await?;
                    break;
                }
                continue;
            }
            let ring = self
                .master
                .keyring()
                .map_err(|e| CustodyError::Sealed(e.to_string()))?;
            let mut batch = Vec::with_capacity(items.len());
            for item in items {
                let blob = item.blob()?;
                let plain = ring.open(&item.place.aad(), &blob).map_err(|e| {
                    CustodyError::Damaged(format!(
                        "{:?} does not open ({e}); the rotation stops here, nothing was lost",
                        item.place
                    ))
                })?;
                let fresh = ring.seal(&item.place.aad(), &plain);
                batch.push((item, fresh, target));
            }
            let rewrapped = self.catalog.rewrap(&batch).await?;
            done += rewrapped;
            // Items changed meanwhile were sealed anew by their writer; the
            // next query finds any that are still under an old generation.
            self.rotation.update(|s| {
                s.done = done;
                s.total = s.total.max(done);
            });
            progress(done, total.max(done));
            if !pace.pause.is_zero() {
                tokio::time::sleep(pace.pause).await;
            }
        }
        // Only the target generation is left.
        let generations = self.unseal().await?;
        debug_assert_eq!(generations, vec![target]);
        tracing::info!(
            generation = target,
            rewrapped = done,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "master key rotated; older generations destroyed"
        );
        Ok(Rotated {
            generation: target,
            rewrapped: done,
            elapsed: started.elapsed(),
        })
    }

    /// Makes generation `generation`, stores it wrapped and makes it current here.
    async fn add_generation(&self, generation: u32) -> Result<u32, CustodyError> {
        let key = random_key();
        let wrapped = WrappedGeneration {
            generation,
            seal: self.seal.name(),
            wrapped: self.seal.wrap(generation, &key).await?,
        };
        if !self.catalog.insert_seal_key(&wrapped, None).await? {
            return Err(CustodyError::Refused(format!(
                "master key generation {generation} exists already (another rotation started); try again"
            )));
        }
        let generations = self.unseal().await?;
        tracing::info!(
            generation,
            ?generations,
            "new master key generation is current"
        );
        Ok(generation)
    }

    /// At start, after unsealing: finishes a rotation a crash left unfinished.
    pub async fn resume_rotation(&self) {
        let unfinished = self
            .master
            .keyring()
            .is_ok_and(|ring: std::sync::Arc<Keyring>| ring.generations().len() > 1);
        if !unfinished {
            return;
        }
        tracing::warn!("a master key rotation was left unfinished; resuming it");
        match self.rotate(false, Pace::default(), &|_, _| {}).await {
            Ok(done) => tracing::info!(
                generation = done.generation,
                rewrapped = done.rewrapped,
                "master key rotation resumed and finished"
            ),
            Err(e) => {
                tracing::error!(error = %e, "resuming the master key rotation failed; it resumes at the next start or rotation")
            }
        }
    }
}
