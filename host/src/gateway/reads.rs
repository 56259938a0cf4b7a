//! Records not in memory: cold reads, coalesced (the records that concurrent
//! signs miss are read by one query for many of them instead of one query each:
//! on SQLite every query is a round trip to the connection's thread, and those
//! switches were most of a cold sign's cost), and the warm-up at start of the
//! keys that signed last.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::Gateway;
use crate::catalog::{Catalog, CatalogError, KeyRecord};
use crate::providers::KeyRef;

/// Queries in flight at once; misses arriving meanwhile wait for the next one.
const IN_FLIGHT: usize = 2;
/// Records read by one query at most.
const PER_QUERY: usize = 64;

/// What a waiting read learns: its record (or that there is none), or that the
/// shared query failed (the reader then reads alone, for its own error).
type Answer = Result<Option<KeyRecord>, ()>;

/// The reads waiting for a query, and how many queries run.
#[derive(Default)]
struct Queue {
    waiting: Vec<(String, oneshot::Sender<Answer>)>,
    running: usize,
}

/// Reads key records by id, many per query when many are wanted at once.
pub(super) struct ColdReads {
    catalog: Catalog,
    queue: Arc<Mutex<Queue>>,
}

impl ColdReads {
    pub(super) fn new(catalog: Catalog) -> Self {
        ColdReads {
            catalog,
            queue: Arc::default(),
        }
    }

    /// The record with id `id`, read from the catalog with whatever other
    /// records are wanted at the same time.
    pub(super) async fn get(&self, id: &str) -> Result<Option<KeyRecord>, CatalogError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().expect("reads lock");
            queue.waiting.push((id.to_owned(), reply));
            let start = queue.running < IN_FLIGHT;
            queue.running += usize::from(start);
            start
        };
        if start {
            // A task of its own: the batch is answered even when the request
            // that started it goes away.
            tokio::spawn(drain(self.catalog.clone(), Arc::clone(&self.queue)));
        }
        match answer.await {
            Ok(Ok(record)) => Ok(record),
            // The shared query failed (or its task died): read alone.
            Ok(Err(())) | Err(_) => self.catalog.get(id).await,
        }
    }
}

/// Gives a drain's place back if it ends by a panic (it gives it back itself,
/// under the lock, when it finds nothing waiting), so reads never stall.
struct Place(Arc<Mutex<Queue>>);

impl Drop for Place {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(mut queue) = self.0.lock()
        {
            queue.running -= 1;
        }
    }
}

/// Reads queued records, up to `PER_QUERY` per query, until none wait.
async fn drain(catalog: Catalog, queue: Arc<Mutex<Queue>>) {
    let _place = Place(Arc::clone(&queue));
    loop {
        let taken: Vec<_> = {
            let mut queue = queue.lock().expect("reads lock");
            if queue.waiting.is_empty() {
                queue.running -= 1;
                return;
            }
            let keep = queue.waiting.len().saturating_sub(PER_QUERY);
            queue.waiting.split_off(keep)
        };
        let ids: Vec<&str> = taken.iter().map(|(id, _)| id.as_str()).collect();
        match catalog.get_many(&ids).await {
            Ok(records) => {
                let mut found: HashMap<String, (KeyRecord, usize)> = records
                    .into_iter()
                    .map(|r| (r.id.clone(), (r, 0)))
                    .collect();
                for (id, _) in &taken {
                    if let Some((_, wanted)) = found.get_mut(id) {
                        *wanted += 1;
                    }
                }
                for (id, reply) in taken {
                    // The same id wanted twice: all but the last asker get a copy.
                    let record = match found.get_mut(&id) {
                        Some((record, wanted)) if *wanted > 1 => {
                            *wanted -= 1;
                            Some(record.clone())
                        }
                        Some(_) => found.remove(&id).map(|(record, _)| record),
                        None => None,
                    };
                    let _ = reply.send(Ok(record));
                }
            }
            Err(_) => {
                for (_, reply) in taken {
                    let _ = reply.send(Err(()));
                }
            }
        }
    }
}

impl Gateway {
    /// Loads the records of up to `limit` keys that signed most recently, and
    /// has their providers get ready to sign with them (the `db` provider
    /// decrypts them), so the first signs after a start find them in memory.
    /// The most recent are loaded last, to be the last evicted. Returns how
    /// many keys were made ready.
    ///
    /// # Errors
    /// Database failures (what was loaded before stays).
    pub async fn warm_up(&self, limit: usize) -> Result<usize, CatalogError> {
        let mut ids = self.catalog.recently_used(limit).await?;
        ids.reverse();
        let mut ready = 0;
        for chunk in ids.chunks(PER_QUERY) {
            let seen = self.invalidations.load(Ordering::Acquire);
            let wanted: Vec<&str> = chunk.iter().map(String::as_str).collect();
            for record in self.catalog.get_many(&wanted).await? {
                if let Ok(provider) = self.provider_of(&record)
                    && provider.warm(&KeyRef::from(&record)).await.is_ok()
                {
                    ready += 1;
                }
                if self.records.get(&record.id).is_none() {
                    self.records.insert(record.id.clone(), Arc::new(record));
                }
            }
            // A key deleted meanwhile must not stay in memory.
            if self.invalidations.load(Ordering::Acquire) != seen {
                for id in chunk {
                    self.records.remove(id);
                }
            }
            tokio::task::yield_now().await;
        }
        Ok(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::test_catalog;
    use crate::catalog::tests_support::{insert, record};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_misses_each_get_their_own_record_and_the_queue_empties() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = test_catalog(&dir).await;
        for i in 0..300 {
            insert(
                &catalog,
                &record(&format!("k{i}")),
                Some(format!("sealed {i}").as_bytes()),
            )
            .await;
        }
        let reads = Arc::new(ColdReads::new(catalog.clone()));
        // Every key once, one key twenty times more, and ids that do not exist.
        let wanted = (0..300)
            .map(|i| format!("k{i}"))
            .chain((0..20).map(|_| "k7".to_owned()))
            .chain((0..80).map(|i| format!("missing{i}")));
        let readers: Vec<_> = wanted
            .map(|id| {
                let reads = Arc::clone(&reads);
                tokio::spawn(async move { (reads.get(&id).await.unwrap(), id) })
            })
            .collect();
        for reader in readers {
            let (read, id) = reader.await.unwrap();
            match id.strip_prefix('k') {
                Some(n) => {
                    let read = read.unwrap_or_else(|| panic!("{id} not found"));
                    assert_eq!(read.id, id);
                    assert_eq!(
                        read.sealed.unwrap().bytes(),
                        format!("sealed {n}").as_bytes()
                    );
                }
                None => assert!(read.is_none(), "{id} found"),
            }
        }
        assert_eq!(queued(&reads), (0, 0));

        // A query that fails: every reader gets the error of its own read.
        sqlx::query("DROP TABLE key_versions")
            .execute(catalog.pool())
            .await
            .unwrap();
        let readers: Vec<_> = (0..50)
            .map(|i| {
                let reads = Arc::clone(&reads);
                tokio::spawn(async move { reads.get(&format!("k{i}")).await })
            })
            .collect();
        for reader in readers {
            let read = reader.await.unwrap();
            assert!(matches!(read, Err(CatalogError::Db(_))), "{read:?}");
        }
        assert_eq!(queued(&reads), (0, 0));
    }

    #[tokio::test]
    async fn a_start_warms_the_most_recently_used_keys_up_to_its_bound() {
        use crate::audit::Actor;
        use crate::gateway::keys::NewKey;
        use crate::gateway::test_gateway;
        use crate::providers::ToSign;
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        for kid in ["a", "b", "c", "d"] {
            let new = NewKey {
                kid: Some(kid.into()),
                ..NewKey::default()
            };
            gateway.create_key(Actor::default(), new).await.unwrap();
        }
        // b, then c, then d sign (a never does), at distinct times.
        for kid in ["b", "c", "d"] {
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
            gateway
                .sign(None, kid, ToSign::Message(b"m"), None)
                .await
                .unwrap();
        }
        gateway.usage().flush().await.unwrap();

        // A gateway started afresh on the same database.
        let (fresh, _) = test_gateway(&dir, Vec::new()).await;
        assert_eq!(fresh.warm_up(2).await.unwrap(), 2);
        let held = |id: &str| fresh.records.get(id).is_some();
        assert!(
            held("d") && held("c"),
            "the two most recently used are in memory"
        );
        assert!(
            !held("b") && !held("a"),
            "nothing past the bound, nothing unused"
        );
        assert_eq!(fresh.warm_up(10).await.unwrap(), 3, "every key that signed");
        assert!(!held("a"));
        // Warmed keys sign, and the signatures verify.
        for kid in ["b", "c", "d"] {
            let (signature, record) = fresh
                .sign(None, kid, ToSign::Message(b"m"), None)
                .await
                .unwrap();
            assert!(
                record.public_jwk.verify(record.alg, b"m", &signature),
                "{kid}"
            );
        }
    }

    /// Reads waiting, and queries running.
    fn queued(reads: &ColdReads) -> (usize, usize) {
        let queue = reads.queue.lock().unwrap();
        (queue.waiting.len(), queue.running)
    }
}
