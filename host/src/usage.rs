//! Key usage: how often each key signed and when it last did, for finding keys
//! nobody uses. A sign only bumps two atomics of its key in memory; a background
//! task adds the counts to the catalog every `usage.flushMs` (and at shutdown), so
//! the hot path never writes to the database and replicas' counts add up. A crash
//! loses at most one flush interval of counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use dashmap::DashMap;

use crate::catalog::{Catalog, CatalogError, KeyUsage};

/// Signs counted since the last flush, for one key.
#[derive(Default)]
struct Pending {
    count: AtomicU64,
    /// Milliseconds since the epoch of the latest.
    last_ms: AtomicU64,
}

/// The usage counters of this gateway process.
pub struct Usage {
    catalog: Catalog,
    pending: DashMap<String, Pending>,
    enabled: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Usage {
    /// Counters writing to `catalog`; with `enabled` false, nothing is counted.
    pub fn new(catalog: Catalog, enabled: bool) -> Self {
        Usage {
            catalog,
            pending: DashMap::new(),
            enabled,
        }
    }

    /// Counts `signs` signs by key `id`.
    pub fn record(&self, id: &str, signs: u64) {
        if !self.enabled {
            return;
        }
        let now = now_ms();
        if let Some(pending) = self.pending.get(id) {
            pending.count.fetch_add(signs, Ordering::Relaxed);
            pending.last_ms.fetch_max(now, Ordering::Relaxed);
            return;
        }
        let entry = self.pending.entry(id.to_owned()).or_default();
        entry.count.fetch_add(signs, Ordering::Relaxed);
        entry.last_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// Adds what was counted since the last flush to the catalog. Counts of a
    /// failed write are put back for the next flush.
    ///
    /// # Errors
    /// Database failures.
    pub async fn flush(&self) -> Result<(), CatalogError> {
        let batch: Vec<(String, u64, SystemTime)> = self
            .pending
            .iter()
            .filter_map(|entry| {
                let count = entry.count.swap(0, Ordering::Relaxed);
                let last =
                    UNIX_EPOCH + Duration::from_millis(entry.last_ms.load(Ordering::Relaxed));
                (count > 0).then(|| (entry.key().clone(), count, last))
            })
            .collect();
        // Keys with nothing new leave the map (a sign racing with this re-adds its key).
        self.pending
            .retain(|_, pending| pending.count.load(Ordering::Relaxed) > 0);
        // After signs with many keys, give the table's room back.
        self.pending.shrink_to_fit();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.catalog.add_usage(&batch).await {
            for (id, count, _) in batch {
                let entry = self.pending.entry(id).or_default();
                entry.count.fetch_add(count, Ordering::Relaxed);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Flushes every `interval` until `stop` turns true, then once more.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> Option<JoinHandle<()>> {
        if !self.enabled {
            return None;
        }
        let usage = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = stop.wait_for(|stop| *stop) => true,
                };
                if let Err(e) = usage.flush().await {
                    tracing::warn!(error = %e, "key usage could not be written; retrying at the next flush");
                }
                if stopping {
                    return;
                }
            }
        }))
    }

    /// The usage of key `id` as this replica knows it: flushed, then read.
    ///
    /// # Errors
    /// Database failures.
    pub async fn of(&self, id: &str) -> Result<KeyUsage, CatalogError> {
        self.flush().await?;
        self.catalog.usage(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_catalog;

    #[tokio::test]
    async fn a_stopped_flusher_writes_what_it_counted_before_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        let mut tx = catalog.begin_write().await.unwrap();
        let record = crate::catalog::tests_support::record("k");
        catalog
            .insert(&mut tx, &record, None, Default::default())
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let usage = Arc::new(Usage::new(catalog.clone(), true));
        let (stop, stopping) = watch::channel(false);
        // An interval far beyond the test: only the stop makes it write.
        let task = usage
            .spawn_flusher(Duration::from_secs(3600), stopping)
            .unwrap();
        // The first tick of an interval is at once; let it pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        usage.record("k", 3);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the flusher ends when told")
            .unwrap();
        assert_eq!(catalog.usage("k").await.unwrap().sign_count, 3);
        let off = Arc::new(Usage::new(catalog, false));
        assert!(
            off.spawn_flusher(Duration::from_secs(1), stop.subscribe())
                .is_none()
        );
    }
}
