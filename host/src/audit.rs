//! The audit log: every create, import, delete and sign becomes a record whose hash
//! covers the previous record's hash, so changing, removing or reordering a stored
//! record shows up in [`Audit::verify`].
//!
//! One writer task per gateway appends records in batches (group commit): whatever
//! arrived while the previous batch was being written goes into the next
//! transaction. Create, import and delete wait until their record is committed
//! before they are answered. Signs wait too with `signs: "durable"`; with the
//! default `"batched"` they are answered at once and their records follow within
//! one commit, so a crash can lose the records of the signs answered in the last
//! moments before it, never a record of an answered create, import or delete.
//! On PostgreSQL, replicas take a transaction-scoped advisory lock to extend the
//! chain, so it stays one line whatever the number of writers.

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::catalog::{AuditFilter, Catalog, CatalogError};
use crate::config::{AuditConfig, SignAudit};

/// The previous-hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Largest batch written in one transaction.
const MAX_BATCH: usize = 1024;
/// How long batched sign records may wait for company before their commit.
const LINGER: Duration = Duration::from_millis(5);
/// Attempts to write one batch before its records are given up.
const APPEND_ATTEMPTS: u64 = 3;
/// Records waiting for the writer before appends wait for room.
const QUEUE: usize = 64 * 1024;

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Import,
    Delete,
    /// A delete with `force=true`: the key left the catalog whatever its backend said.
    ForceDelete,
    Sign,
    /// A new version of a key became current (by an API key or the scheduler).
    Rotate,
    /// A certification request was signed for a key.
    Csr,
    /// A certificate chain was imported for a key's current version.
    CertificateImport,
    /// A certificate was issued to a key's current version (by an API key, or by
    /// the scheduler under the key's policy).
    CertificateIssue,
    /// kms.json was reloaded (by an API key, or `sighup`).
    Reload,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Import => "import",
            Action::Delete => "delete",
            Action::ForceDelete => "force-delete",
            Action::Rotate => "rotate",
            Action::Sign => "sign",
            Action::Csr => "csr",
            Action::CertificateImport => "certificate-import",
            Action::CertificateIssue => "certificate-issue",
            Action::Reload => "reload",
        }
    }

    /// The action stored as `name`.
    pub fn parse(name: &str) -> Option<Action> {
        [
            Action::Create,
            Action::Import,
            Action::Delete,
            Action::ForceDelete,
            Action::Sign,
            Action::Rotate,
            Action::Csr,
            Action::CertificateImport,
            Action::CertificateIssue,
            Action::Reload,
        ]
        .into_iter()
        .find(|a| a.as_str() == name)
    }
}

/// One operation, as the API layer reports it.
#[derive(Clone, Debug)]
pub struct Event {
    pub api_key: Option<String>,
    pub tenant: Option<String>,
    pub action: Action,
    pub kid: Option<String>,
    pub provider: Option<String>,
    /// `ok`, or the error code the client got.
    pub outcome: String,
    /// Hex SHA-256 of each signed message, in order (signs only; a batch sign has
    /// one per message).
    pub message_sha256s: Vec<String>,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// Position in the chain, from 1 without gaps.
    pub seq: i64,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub api_key: Option<String>,
    pub tenant: Option<String>,
    #[schema(value_type = String)]
    pub action: String,
    pub kid: Option<String>,
    pub provider: Option<String>,
    pub outcome: String,
    /// Hex SHA-256 of the signed message (a sign of one message).
    pub message_sha256: Option<String>,
    /// Hex SHA-256 of each message of a batch sign, in order: one record for the
    /// batch. Stored in the `message_sha256` column, separated by spaces.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub message_sha256s: Vec<String>,
    pub prev_hash: String,
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record must carry: SHA-256 over its previous hash and every field.
    pub fn expected_hash(&self) -> String {
        let canonical = serde_json::to_vec(&(
            &self.prev_hash,
            self.seq,
            self.time,
            &self.api_key,
            &self.tenant,
            &self.action,
            &self.kid,
            &self.provider,
            &self.outcome,
            &self.stored_message_hashes(),
        ))
        .expect("plain values serialise");
        hex::encode(digest(&SHA256, &canonical))
    }

    /// The `message_sha256` column: the hash of a single message, or a batch's
    /// hashes separated by spaces.
    pub fn stored_message_hashes(&self) -> Option<Cow<'_, str>> {
        if self.message_sha256s.is_empty() {
            self.message_sha256.as_deref().map(Cow::Borrowed)
        } else {
            Some(Cow::Owned(self.message_sha256s.join(" ")))
        }
    }

    /// Sets the message hashes from the `message_sha256` column's `stored` value.
    pub fn with_stored_message_hashes(mut self, stored: Option<String>) -> Self {
        match stored {
            Some(list) if list.contains(' ') => {
                self.message_sha256s = list.split(' ').map(str::to_owned).collect();
            }
            single => self.message_sha256 = single,
        }
        self
    }

    /// The record following `head` (or the first one) for `event` at `time`.
    pub fn chained(head: Option<&AuditRecord>, time: i64, event: &Event) -> AuditRecord {
        // One hash is a single sign's; several are a batch's.
        let (message_sha256, message_sha256s) = match event.message_sha256s.as_slice() {
            [one] => (Some(one.clone()), Vec::new()),
            hashes => (None, hashes.to_vec()),
        };
        let mut record = AuditRecord {
            seq: head.map_or(1, |h| h.seq + 1),
            time,
            api_key: event.api_key.clone(),
            tenant: event.tenant.clone(),
            action: event.action.as_str().to_owned(),
            kid: event.kid.clone(),
            provider: event.provider.clone(),
            outcome: event.outcome.clone(),
            message_sha256,
            message_sha256s,
            prev_hash: head.map_or_else(|| GENESIS.to_owned(), |h| h.hash.clone()),
            hash: String::new(),
        };
        record.hash = record.expected_hash();
        record
    }
}

/// The answer of `GET /audit/verify`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub ok: bool,
    /// Records checked.
    pub checked: u64,
    /// The first record that is not what the chain says it must be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<i64>,
}

/// Why a record could not be written (the detail is logged, not shown to clients).
#[derive(Debug, thiserror::Error)]
#[error(
    "the operation was carried out but its audit record could not be written ({0}); see the gateway log"
)]
pub struct AuditError(&'static str);

struct Job {
    time: i64,
    event: Option<Event>,
    done: Option<oneshot::Sender<Result<(), ()>>>,
}

/// The audit log's handle: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Audit {
    queue: Option<mpsc::Sender<Job>>,
    signs: SignAudit,
    catalog: Catalog,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Audit {
    /// Starts the writer task (when enabled).
    pub fn start(config: &AuditConfig, catalog: Catalog) -> Audit {
        let queue = config.enabled.then(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(write_batches(catalog.clone(), rx));
            tx
        });
        Audit {
            queue,
            signs: config.signs,
            catalog,
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Records `event`; returns once it is committed, or at once for a batched sign.
    ///
    /// # Errors
    /// [`AuditError`] when a record that must be durable could not be written.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let wait = event.action != Action::Sign || self.signs == SignAudit::Durable;
        let (done, committed) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let job = Job {
            time: now_millis(),
            event: Some(event),
            done,
        };
        queue
            .send(job)
            .await
            .map_err(|_| AuditError("the audit writer has stopped"))?;
        match committed {
            Some(rx) => match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(())) => Err(AuditError("the database refused it")),
                Err(_) => Err(AuditError("the audit writer has stopped")),
            },
            None => Ok(()),
        }
    }

    /// Waits until everything recorded so far is committed (at shutdown).
    pub async fn flush(&self) {
        let Some(queue) = &self.queue else { return };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            time: 0,
            event: None,
            done: Some(tx),
        };
        if queue.send(job).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// A page of records matching `filter`, in chain order.
    ///
    /// # Errors
    /// Database failures.
    pub async fn page(&self, filter: &AuditFilter<'_>) -> Result<Vec<AuditRecord>, CatalogError> {
        self.catalog.audit_page(filter).await
    }

    /// Recomputes the whole chain.
    ///
    /// # Errors
    /// Database failures.
    pub async fn verify(&self) -> Result<Verification, CatalogError> {
        let mut previous: Option<AuditRecord> = None;
        let mut checked = 0u64;
        loop {
            let filter = AuditFilter {
                after: previous.as_ref().map_or(0, |r| r.seq),
                limit: 1000,
                ..AuditFilter::default()
            };
            let page = self.catalog.audit_page(&filter).await?;
            if page.is_empty() {
                return Ok(Verification {
                    ok: true,
                    checked,
                    first_bad_seq: None,
                });
            }
            for record in page {
                let expected_seq = previous.as_ref().map_or(1, |p| p.seq + 1);
                let expected_prev = previous.as_ref().map_or(GENESIS, |p| p.hash.as_str());
                if record.seq != expected_seq
                    || record.prev_hash != expected_prev
                    || record.hash != record.expected_hash()
                {
                    return Ok(Verification {
                        ok: false,
                        checked,
                        first_bad_seq: Some(expected_seq.min(record.seq)),
                    });
                }
                checked += 1;
                previous = Some(record);
            }
        }
    }
}

/// The writer: takes whatever is queued (up to [`MAX_BATCH`]), appends it in one
/// transaction, then tells the waiters.
async fn write_batches(catalog: Catalog, mut rx: mpsc::Receiver<Job>) {
    let mut head: Option<Option<AuditRecord>> = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Nobody waiting (batched signs only): linger a moment so that one commit
        // carries many records instead of one each.
        if batch.iter().all(|job| job.done.is_none()) {
            tokio::time::sleep(LINGER).await;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let (events, waiters): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .map(|job| (job.event.map(|e| (job.time, e)), job.done))
            .unzip();
        let events: Vec<_> = events.into_iter().flatten().collect();
        let result = if events.is_empty() {
            Ok(())
        } else {
            let mut attempt = 1;
            loop {
                match catalog.audit_append(head.take(), &events).await {
                    Ok(new_head) => {
                        head = Some(Some(new_head));
                        break Ok(());
                    }
                    Err(e) if attempt < APPEND_ATTEMPTS => {
                        tracing::warn!(error = %e, attempt, "audit records not written yet; retrying");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                        attempt += 1;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, records = events.len(),
                            "audit records could not be written and are lost");
                        break Err(());
                    }
                }
            }
        };
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kid: &str) -> Event {
        Event {
            api_key: Some("ops".into()),
            tenant: None,
            action: Action::Sign,
            kid: Some(kid.into()),
            provider: Some("db".into()),
            outcome: "ok".into(),
            message_sha256s: vec!["ab".repeat(32)],
        }
    }

    #[tokio::test]
    async fn batches_of_many_records_extend_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let catalog = Catalog::connect(&url).await.unwrap();
        let batch: Vec<_> = (0..150).map(|i| (i, event(&format!("k{i}")))).collect();
        let head = catalog.audit_append(None, &batch[..100]).await.unwrap();
        assert_eq!(head.seq, 100);
        let head = catalog
            .audit_append(Some(Some(head)), &batch[100..])
            .await
            .unwrap();
        assert_eq!(head.seq, 150);
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 150, "{verdict:?}");
    }

    #[tokio::test]
    async fn a_batch_record_keeps_every_hash_in_order_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let catalog = Catalog::connect(&url).await.unwrap();
        let hashes: Vec<String> = (0..3u8).map(|i| format!("{i:02x}").repeat(32)).collect();
        let batch = Event {
            message_sha256s: hashes.clone(),
            ..event("k")
        };
        catalog
            .audit_append(None, &[(1, event("k")), (2, batch)])
            .await
            .unwrap();
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let page = audit.page(&AuditFilter::default()).await.unwrap();
        assert_eq!(page[0].message_sha256, Some("ab".repeat(32)));
        assert!(page[0].message_sha256s.is_empty());
        assert_eq!(
            (&page[1].message_sha256, &page[1].message_sha256s),
            (&None, &hashes)
        );
        let json = serde_json::to_value(&page[1]).unwrap();
        assert_eq!(json["messageSha256s"][2], hashes[2]);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 2, "{verdict:?}");
        // Changing one hash of the batch breaks the chain.
        let mut changed = page[1].clone();
        changed.message_sha256s[1] = "ff".repeat(32);
        assert_ne!(changed.expected_hash(), page[1].hash);
    }

    #[test]
    fn each_hash_covers_the_previous_one_and_every_field() {
        let first = AuditRecord::chained(None, 1, &event("a"));
        assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS));
        let second = AuditRecord::chained(Some(&first), 2, &event("a"));
        assert_eq!(second.prev_hash, first.hash);
        assert_eq!(second.hash, second.expected_hash());
        let mut changed = second.clone();
        changed.outcome = "key_not_found".into();
        assert_ne!(changed.expected_hash(), second.hash);
        let mut relinked = second.clone();
        relinked.prev_hash = GENESIS.into();
        assert_ne!(relinked.expected_hash(), second.hash);
    }
}
