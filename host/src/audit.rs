//! The audit log: every create, import, delete, rotation, certificate operation
//! and sign becomes a record whose hash covers the previous record's hash, so
//! changing, removing or reordering a stored record shows up in
//! [`Audit::verify`].
//!
//! A change to the catalog and its record commit in one transaction
//! ([`Audit::begin`]): either both are durable and the change is answered 2xx,
//! or neither happened. Signs and refusals go through a queue that one writer
//! task appends in batches (group commit), each batch as one chain link that
//! carries all its records (see [`link`]); a sign takes its place in the queue
//! before it signs, and when no place frees up in time it is refused without
//! signing. The writer never gives records up while the process lives: it
//! retries with backoff until the database takes them. On PostgreSQL, replicas
//! take a transaction-scoped advisory lock to extend the chain, so it stays one
//! line whatever the number of writers.

mod link;
mod store;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{SHA256, digest};
use prometheus::core::Collector;
use prometheus::{Counter, IntCounter};
use serde::Serialize;
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, mpsc, oneshot};
use tracing::Instrument as _;
use utoipa::ToSchema;

pub use store::{AuditFilter, End};

use crate::catalog::{Catalog, CatalogError, Write};
use crate::config::{AuditConfig, SignAudit};

/// The previous-hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The encoding new records are written in (see [`AuditRecord::expected_hash`]).
pub const ENCODING: u8 = 2;
/// Largest batch written in one transaction.
const MAX_BATCH: usize = link::MAX_RECORDS;
/// How long batched sign records may wait for company before their commit
/// (unless a record somebody waits for comes: then at once). Each commit costs
/// the database thread some 250 µs of CPU (on this project's 2-core machine) and
/// a sync to disk, so that a busy gateway commits at most 50 times a second.
const LINGER: Duration = Duration::from_millis(20);
/// How long a sign or refusal waits for room in a full queue before it is
/// refused with `audit_unavailable`.
const ROOM_WAIT: Duration = Duration::from_secs(2);
/// How long a request waits for its queued record to be committed (durable
/// signs, reloads).
const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How long a change waits for the records queued before it to be written, so
/// that the chain shows what was answered in the order it was answered.
const ORDER_WAIT: Duration = Duration::from_millis(300);
/// The longest pause between the writer's attempts at a batch.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The most characters of a client-given field (a kid, a provider id) a record
/// keeps; longer values are cut and marked.
const MAX_FIELD: usize = 256;

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Create,
    Import,
    Delete,
    /// A delete with `force=true`: the key left the catalog whatever its backend said.
    ForceDelete,
    Sign,
    /// A sign of digests the client computed; the record holds those digests.
    SignDigest,
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
    /// The master key was rotated (a new generation, every sealed item rewrapped).
    SealRotate,
    /// The master key was moved under another seal.
    SealMigrate,
    /// The catalog was backed up.
    Backup,
    /// The catalog was restored from a backup.
    Restore,
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
            Action::SignDigest => "sign-digest",
            Action::Csr => "csr",
            Action::CertificateImport => "certificate-import",
            Action::CertificateIssue => "certificate-issue",
            Action::Reload => "reload",
            Action::SealRotate => "seal-rotate",
            Action::SealMigrate => "seal-migrate",
            Action::Backup => "backup",
            Action::Restore => "restore",
        }
    }

    /// Every action, in the order the README lists them.
    pub const ALL: [Action; 15] = [
        Action::Create,
        Action::Import,
        Action::Delete,
        Action::ForceDelete,
        Action::Sign,
        Action::SignDigest,
        Action::Rotate,
        Action::Csr,
        Action::CertificateImport,
        Action::CertificateIssue,
        Action::Reload,
        Action::SealRotate,
        Action::SealMigrate,
        Action::Backup,
        Action::Restore,
    ];

    /// The action stored as `name`.
    pub fn parse(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// Who an audited change is made by.
#[derive(Clone, Copy, Debug, Default)]
pub struct Actor<'a> {
    /// The API key's id (`None` without API keys), `scheduler` or `sighup`.
    pub api_key: Option<&'a str>,
    /// The tenant acted in; `None` outside tenants.
    pub tenant: Option<&'a str>,
}

impl<'a> Actor<'a> {
    /// The scheduler, working on a key of `tenant`.
    pub fn scheduler(tenant: Option<&'a str>) -> Self {
        Actor {
            api_key: Some("scheduler"),
            tenant,
        }
    }

    /// The record of `action` on key `kid` of `provider` with `outcome`.
    pub fn event(&self, action: Action, kid: &str, provider: &str, outcome: &'static str) -> Event {
        Event {
            api_key: self.api_key.map(str::to_owned),
            tenant: self.tenant.map(str::to_owned),
            action,
            kid: Some(kid.to_owned()),
            provider: Some(provider.to_owned()),
            outcome,
            message_sha256s: Vec::new(),
        }
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
    pub outcome: &'static str,
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
    /// The encoding the hash covers: 1 for records of earlier releases, 2 for a
    /// record with a row of its own, 3 for one of a link.
    #[serde(skip)]
    pub encoding: u8,
    /// The positions of the records that share this record's chain link (its
    /// `prevHash` and `hash` are the link's); absent for a record with a link of
    /// its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkSpan>,
}

/// The records one chain link carries: positions `firstSeq` to `lastSeq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpan {
    pub first_seq: i64,
    pub last_seq: i64,
}

impl AuditRecord {
    /// The hash this record must carry: hex SHA-256 of its canonical encoding.
    ///
    /// Encoding 2 is the compact JSON array `["kmsgw-audit-2", prevHash, seq,
    /// time, apiKey, tenant, action, kid, provider, outcome, [messageSha256…]]`
    /// where an absent field is `null` (an empty one `""`), and the list holds the
    /// one hash of a sign, a batch's hashes in order, or nothing. Encoding 1 (records
    /// of earlier releases) is the same array without the tag and with the
    /// message hashes as one string joined by spaces, or `null`.
    pub fn expected_hash(&self) -> String {
        self.hash_with(
            self.api_key.as_deref(),
            self.tenant.as_deref(),
            self.kid.as_deref(),
            self.provider.as_deref(),
        )
    }

    fn hash_with(
        &self,
        api_key: Option<&str>,
        tenant: Option<&str>,
        kid: Option<&str>,
        provider: Option<&str>,
    ) -> String {
        let canonical = if self.encoding >= 2 {
            serde_json::to_vec(&(
                "kmsgw-audit-2",
                &self.prev_hash,
                self.seq,
                self.time,
                api_key,
                tenant,
                &self.action,
                kid,
                provider,
                &self.outcome,
                self.message_hashes(),
            ))
        } else {
            serde_json::to_vec(&(
                &self.prev_hash,
                self.seq,
                self.time,
                api_key,
                tenant,
                &self.action,
                kid,
                provider,
                &self.outcome,
                &self.stored_message_hashes(),
            ))
        };
        hex::encode(digest(&SHA256, &canonical.expect("plain values serialise")))
    }

    /// Whether the stored hash is the one this record must carry. A record of
    /// encoding 1 stored an absent field and an empty one alike (`''`), and a
    /// refused request with an empty kid, provider or key was hashed over the
    /// empty string: such a field is checked both ways, which lets no stored
    /// byte change unnoticed.
    pub fn hash_holds(&self) -> bool {
        if self.hash == self.expected_hash() {
            return true;
        }
        if self.encoding >= 2 {
            return false;
        }
        let fields = [&self.api_key, &self.tenant, &self.kid, &self.provider];
        let absent: Vec<usize> = (0..4).filter(|&i| fields[i].is_none()).collect();
        (1u32..1 << absent.len()).any(|mask| {
            let mut values = fields.map(|f| f.as_deref());
            for (bit, &i) in absent.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    values[i] = Some("");
                }
            }
            self.hash == self.hash_with(values[0], values[1], values[2], values[3])
        })
    }

    /// Every message hash of the record, in order.
    fn message_hashes(&self) -> Vec<&str> {
        match &self.message_sha256 {
            Some(one) => vec![one.as_str()],
            None => self.message_sha256s.iter().map(String::as_str).collect(),
        }
    }

    /// The `message_sha256` column: the hash of a single message, or a batch's
    /// hashes separated by spaces.
    pub fn stored_message_hashes(&self) -> Option<String> {
        match (&self.message_sha256, self.message_sha256s.is_empty()) {
            (Some(one), _) => Some(one.clone()),
            (None, false) => Some(self.message_sha256s.join(" ")),
            (None, true) => None,
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

    /// The record following `previous` (seq and hash; 0 and [`GENESIS`] for the
    /// first) for `event` at `time`, in the current encoding. Client-given fields
    /// are kept as given when they are short and printable, else escaped and cut
    /// (see [`recorded`]).
    pub fn chained(previous: (i64, &str), time: i64, event: &Event) -> AuditRecord {
        // One hash is a single sign's; several are a batch's.
        let (message_sha256, message_sha256s) = match event.message_sha256s.as_slice() {
            [one] => (Some(one.clone()), Vec::new()),
            hashes => (None, hashes.to_vec()),
        };
        let mut record = AuditRecord {
            seq: previous.0 + 1,
            time,
            api_key: event.api_key.clone(),
            tenant: event.tenant.clone(),
            action: event.action.as_str().to_owned(),
            kid: event.kid.as_deref().map(|kid| recorded(kid).into_owned()),
            provider: event.provider.as_deref().map(|p| recorded(p).into_owned()),
            outcome: recorded(event.outcome).into_owned(),
            message_sha256,
            message_sha256s,
            prev_hash: previous.1.to_owned(),
            hash: String::new(),
            encoding: ENCODING,
            link: None,
        };
        record.hash = record.expected_hash();
        record
    }
}

/// A hash as a record keeps it: lower-case hex, written in one allocation
/// (`hex::encode` grows its string a character at a time; this is on the sign
/// path).
pub fn hex(bytes: &[u8]) -> String {
    let mut text = vec![0; bytes.len() * 2];
    hex::encode_to_slice(bytes, &mut text).expect("twice the length");
    String::from_utf8(text).expect("hex digits")
}

/// A client-given value as a record keeps it: as given when it is at most
/// 256 characters without control characters (every valid kid and
/// provider id is), else with control characters escaped (`\u{0}`; PostgreSQL
/// text holds no NUL) and cut to 256 characters, marked with `…`.
pub fn recorded(value: &str) -> Cow<'_, str> {
    if value.chars().count() <= MAX_FIELD && !value.chars().any(char::is_control) {
        return Cow::Borrowed(value);
    }
    let escaped: String = value
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    Cow::Owned(match escaped.char_indices().nth(MAX_FIELD) {
        Some((cut, _)) => format!("{}…", &escaped[..cut]),
        None => escaped,
    })
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

/// Why a sign or refusal could not be recorded: the writer cannot keep up (the
/// database refuses writes, or is too slow). Nothing was signed.
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot take records now ({0}); nothing was done, try again later")]
pub struct AuditError(&'static str);

struct Job {
    time: i64,
    event: Option<Event>,
    done: Option<oneshot::Sender<()>>,
}

/// The chain's end as this process knows it, shared by the writer and by the
/// transactions that carry a change with its record; `None` when unknown (at
/// start, after a failed write, and always on PostgreSQL, where it is read
/// under the replicas' lock).
type Head = Arc<Mutex<Option<End>>>;

/// The audit log's handle: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Audit {
    /// `None` when the log is off.
    queue: Option<mpsc::Sender<Job>>,
    /// Ends the writer's linger when a record somebody waits for is queued.
    hurry: Arc<Notify>,
    head: Head,
    signs: SignAudit,
    catalog: Catalog,
    chain: ChainUse,
}

/// This process's use of the chain, for `/metrics`: commits that extended it,
/// the records they carried, the time from each transaction's start until it
/// held the chain (SQLite's write lock; on PostgreSQL the replicas' advisory
/// lock, taken after a change's own statements) and the time it held it until
/// the commit was done. On PostgreSQL the hold time bounds how many commits
/// all replicas together can make a second.
#[derive(Clone)]
pub struct ChainUse {
    commits: IntCounter,
    records: IntCounter,
    waited: Counter,
    held: Counter,
}

impl ChainUse {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let seconds = |name: &str, help: &str| Counter::new(name, help).expect("valid metric");
        ChainUse {
            commits: counter(
                "kmsgw_audit_commits_total",
                "Commits by this replica that extended the audit chain",
            ),
            records: counter(
                "kmsgw_audit_records_total",
                "Audit records those commits carried",
            ),
            waited: seconds(
                "kmsgw_audit_chain_wait_seconds_total",
                "Time from those commits' start until they held the audit chain's lock",
            ),
            held: seconds(
                "kmsgw_audit_chain_hold_seconds_total",
                "Time those commits held the audit chain's lock, up to the end of the commit",
            ),
        }
    }

    /// Counts a commit of `records` that began at `began` and had the chain at `locked`.
    fn count(&self, records: usize, began: Instant, locked: Instant) {
        self.commits.inc();
        self.records.inc_by(records as u64);
        self.waited.inc_by((locked - began).as_secs_f64());
        self.held.inc_by(locked.elapsed().as_secs_f64());
    }

    /// The four counters, to register with a metrics registry.
    pub fn collectors(&self) -> [Box<dyn Collector>; 4] {
        [
            Box::new(self.commits.clone()),
            Box::new(self.records.clone()),
            Box::new(self.waited.clone()),
            Box::new(self.held.clone()),
        ]
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A write transaction whose change commits together with its audit record.
pub struct Audited {
    write: Write,
    /// Held from the start of the transaction to its end (`None`: log off).
    head: Option<OwnedMutexGuard<Option<End>>>,
    catalog: Catalog,
    chain: ChainUse,
    began: Instant,
}

impl std::ops::Deref for Audited {
    type Target = Write;
    fn deref(&self) -> &Write {
        &self.write
    }
}

impl std::ops::DerefMut for Audited {
    fn deref_mut(&mut self) -> &mut Write {
        &mut self.write
    }
}

impl Audited {
    /// Appends `event`'s record and commits it with the change: both are
    /// durable, or neither is.
    ///
    /// # Errors
    /// Database failures: nothing was committed.
    pub async fn commit(self, event: Event) -> Result<(), CatalogError> {
        let Audited {
            mut write,
            head,
            catalog,
            chain,
            began,
        } = self;
        let Some(mut head) = head else {
            return write.commit().await;
        };
        // Unknown until this commit is known to have happened.
        let known = head.take();
        let span = crate::span!("audit.commit");
        let (new_head, locked) = store::append(&catalog, &mut write, known, now_millis(), &event)
            .instrument(span.clone())
            .await?;
        write.commit().instrument(span).await?;
        chain.count(1, began, locked);
        *head = Some(new_head);
        Ok(())
    }
}

/// A place in the writer's queue, taken before a sign so that a sign answered
/// 200 always has its record.
pub struct Slot {
    permit: Option<mpsc::OwnedPermit<Job>>,
    /// Set for a durable record: the writer to hurry.
    durable: Option<Arc<Notify>>,
}

impl Slot {
    /// Records `event` in this place; waits for its commit when signs are durable.
    ///
    /// # Errors
    /// [`AuditError`] when a durable record was not committed in time.
    pub async fn record(self, event: Event) -> Result<(), AuditError> {
        let hurry = self.durable.clone();
        let span = crate::span!("audit.record", audit.durable = hurry.is_some());
        let committed = span.in_scope(|| self.send(event, hurry.is_some()));
        match (committed, hurry) {
            (Some(committed), Some(hurry)) => {
                hurry.notify_one();
                wait_for_commit(committed).instrument(span).await
            }
            _ => Ok(()),
        }
    }

    /// Puts `event` in this place; with `tell`, returns what says when it is
    /// committed (nothing when the log is off).
    fn send(self, event: Event, tell: bool) -> Option<oneshot::Receiver<()>> {
        let permit = self.permit?;
        let (done, committed) = if tell {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        permit.send(Job {
            time: now_millis(),
            event: Some(event),
            done,
        });
        committed
    }
}

async fn wait_for_commit(rx: oneshot::Receiver<()>) -> Result<(), AuditError> {
    match tokio::time::timeout(COMMIT_WAIT, rx).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(AuditError("the audit writer has stopped")),
        Err(_) => Err(AuditError("the record is not committed yet")),
    }
}

impl Audit {
    /// Starts the writer task (when enabled).
    pub fn start(config: &AuditConfig, catalog: Catalog) -> Audit {
        let head = Head::default();
        let hurry = Arc::new(Notify::new());
        let chain = ChainUse::new();
        let queue = config.enabled.then(|| {
            let (tx, rx) = mpsc::channel(config.queue_records.max(1));
            let writer = Writer {
                catalog: catalog.clone(),
                head: Arc::clone(&head),
                hurry: Arc::clone(&hurry),
                chain: chain.clone(),
            };
            tokio::spawn(writer.run(rx));
            tx
        });
        Audit {
            queue,
            hurry,
            head,
            signs: config.signs,
            catalog,
            chain,
        }
    }

    /// A log that records nothing (audit off), over `catalog`.
    pub fn off(catalog: Catalog) -> Audit {
        Audit {
            queue: None,
            hurry: Arc::default(),
            head: Head::default(),
            signs: SignAudit::Batched,
            catalog,
            chain: ChainUse::new(),
        }
    }

    /// Whether records are written at all.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Starts a write transaction whose change commits with its record
    /// ([`Audited::commit`]). While it is open, no other record joins the chain
    /// from this process.
    ///
    /// # Errors
    /// Database failures.
    pub async fn begin(&self) -> Result<Audited, CatalogError> {
        let head = match self.queue {
            Some(_) => {
                // Records of signs answered before this change come before it (a
                // database that refuses writes does not hold the change up long:
                // its own transaction then fails at once).
                self.flush(ORDER_WAIT).await;
                Some(Arc::clone(&self.head).lock_owned().await)
            }
            None => None,
        };
        let began = Instant::now();
        Ok(Audited {
            write: self.catalog.begin_write().await?,
            head,
            catalog: self.catalog.clone(),
            chain: self.chain.clone(),
            began,
        })
    }

    /// This process's use of the chain (for `/metrics`).
    pub fn chain_use(&self) -> &ChainUse {
        &self.chain
    }

    /// Takes a place in the queue for a sign's record, waiting a little for room.
    ///
    /// # Errors
    /// [`AuditError`] when the queue stays full: the sign must not happen.
    pub async fn reserve(&self) -> Result<Slot, AuditError> {
        let Some(queue) = &self.queue else {
            return Ok(Slot {
                permit: None,
                durable: None,
            });
        };
        // Room at once (the usual case) needs no timer.
        let permit = match queue.clone().try_reserve_owned() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(AuditError("the audit writer has stopped"));
            }
            Err(mpsc::error::TrySendError::Full(queue)) => {
                match tokio::time::timeout(ROOM_WAIT, queue.reserve_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(AuditError("the audit writer has stopped")),
                    Err(_) => return Err(AuditError("the audit writer is behind")),
                }
            }
        };
        Ok(Slot {
            permit: Some(permit),
            durable: (self.signs == SignAudit::Durable).then(|| Arc::clone(&self.hurry)),
        })
    }

    /// Queues the record of a refused change and waits a moment for its commit,
    /// so that it is in the log when the refusal is answered; a refusal is true
    /// whether or not its record is written yet, so a slow database only delays it.
    ///
    /// # Errors
    /// [`AuditError`] when the queue stays full.
    pub async fn record(&self, event: Event) -> Result<(), AuditError> {
        let slot = self.reserve().await?;
        if let Some(committed) = slot.send(event, true) {
            self.hurry.notify_one();
            let _ = tokio::time::timeout(ORDER_WAIT, committed).await;
        }
        Ok(())
    }

    /// Queues `event` and waits until it is committed.
    ///
    /// # Errors
    /// [`AuditError`] when the queue stays full or the commit does not come in time.
    pub async fn record_durably(&self, event: Event) -> Result<(), AuditError> {
        let slot = self.reserve().await?;
        Slot {
            durable: Some(Arc::clone(&self.hurry)),
            ..slot
        }
        .record(event)
        .await
    }

    /// Waits until everything recorded so far is committed, at most `limit`
    /// (at shutdown); returns whether it was.
    pub async fn flush(&self, limit: Duration) -> bool {
        let Some(queue) = &self.queue else {
            return true;
        };
        let (tx, rx) = oneshot::channel();
        let job = Job {
            time: 0,
            event: None,
            done: Some(tx),
        };
        let flushed = async {
            let queued = queue.send(job).await.is_ok();
            self.hurry.notify_one();
            queued && rx.await.is_ok()
        };
        tokio::time::timeout(limit, flushed).await.unwrap_or(false)
    }

    /// A page of records matching `filter`, in chain order.
    ///
    /// # Errors
    /// Database failures.
    pub async fn page(&self, filter: &AuditFilter<'_>) -> Result<Vec<AuditRecord>, CatalogError> {
        store::page(&self.catalog, filter).await
    }

    /// Recomputes the whole chain: every row's hash, and that each follows the
    /// one before it without a gap. `checked` counts records (a link's each).
    ///
    /// # Errors
    /// Database failures.
    pub async fn verify(&self) -> Result<Verification, CatalogError> {
        let mut end = End {
            seq: 0,
            hash: GENESIS.to_owned(),
        };
        let mut checked = 0u64;
        loop {
            let rows = store::rows(&self.catalog, end.seq, None).await?;
            if rows.is_empty() {
                return Ok(Verification {
                    ok: true,
                    checked,
                    first_bad_seq: None,
                });
            }
            for row in rows {
                let expected_seq = end.seq + 1;
                let first_seq = row.first_seq();
                if first_seq != expected_seq || !row.holds_after(&end) {
                    return Ok(Verification {
                        ok: false,
                        checked,
                        first_bad_seq: Some(expected_seq.min(first_seq)),
                    });
                }
                let next = row.into_end();
                checked += u64::try_from(next.seq - end.seq).unwrap_or(0);
                end = next;
            }
        }
    }
}

/// The writer: takes whatever is queued (up to [`MAX_BATCH`]), appends it in one
/// transaction, then tells the waiters. A batch the database refuses is tried
/// again, with a growing pause, until it is written: records are never given up
/// while the process lives, and a full queue makes new signs wait, then refuses
/// them.
struct Writer {
    catalog: Catalog,
    head: Head,
    hurry: Arc<Notify>,
    chain: ChainUse,
}

impl Writer {
    async fn run(self, mut rx: mpsc::Receiver<Job>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            // Nobody waiting (batched signs only): linger so that one commit
            // carries many records, until somebody waits for one.
            if batch.iter().all(|job| job.done.is_none()) {
                tokio::select! {
                    () = tokio::time::sleep(LINGER) => {}
                    () = self.hurry.notified() => {}
                }
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
            self.write(&events).await;
            for waiter in waiters.into_iter().flatten() {
                let _ = waiter.send(());
            }
        }
    }

    /// Appends `events`, trying again until the database takes them.
    async fn write(&self, events: &[(i64, Event)]) {
        let mut attempt = 0u32;
        while !events.is_empty() {
            match self.append(events).await {
                Ok(()) => {
                    if attempt > 0 {
                        tracing::info!(
                            records = events.len(),
                            attempts = attempt + 1,
                            "audit records written after the database refused them"
                        );
                    }
                    return;
                }
                Err(e) => {
                    attempt += 1;
                    let pause = Duration::from_millis(50 << attempt.min(6)).min(MAX_BACKOFF);
                    tracing::warn!(error = %e, attempt, records = events.len(),
                        "audit records not written yet; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    async fn append(&self, events: &[(i64, Event)]) -> Result<(), CatalogError> {
        let mut head = self.head.lock().await;
        let began = Instant::now();
        let mut write = self.catalog.begin_write().await?;
        let known = head.take();
        let (new_head, locked) =
            store::append_links(&self.catalog, &mut write, known, events).await?;
        write.commit().await?;
        self.chain.count(events.len(), began, locked);
        *head = Some(new_head);
        Ok(())
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
            outcome: "ok",
            message_sha256s: vec!["ab".repeat(32)],
        }
    }

    /// Appends `events` as the writer does (links).
    async fn append(catalog: &Catalog, head: Option<End>, events: &[(i64, Event)]) -> End {
        let mut write = catalog.begin_write().await.unwrap();
        let (end, _) = store::append_links(catalog, &mut write, head, events)
            .await
            .unwrap();
        write.commit().await.unwrap();
        end
    }

    #[tokio::test]
    async fn batches_of_many_records_extend_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let batch: Vec<_> = (0..150).map(|i| (i, event(&format!("k{i}")))).collect();
        let head = append(&catalog, None, &batch[..100]).await;
        assert_eq!(head.seq, 100);
        let head = append(&catalog, Some(head), &batch[100..]).await;
        assert_eq!(head.seq, 150);
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 150, "{verdict:?}");
    }

    #[tokio::test]
    async fn a_batch_record_keeps_every_hash_in_order_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let hashes: Vec<String> = (0..3u8).map(|i| format!("{i:02x}").repeat(32)).collect();
        let batch = Event {
            message_sha256s: hashes.clone(),
            ..event("k")
        };
        append(&catalog, None, &[(1, event("k")), (2, batch)]).await;
        let audit = Audit::start(&AuditConfig::default(), catalog.clone());
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
        tamper(&catalog, |entries| {
            entries.replace(&hashes[1], &"ff".repeat(32))
        })
        .await;
        assert_eq!(audit.verify().await.unwrap().first_bad_seq, Some(1));
    }

    /// Rewrites the entries of every link with `change`.
    async fn tamper(catalog: &Catalog, change: impl Fn(&str) -> String) {
        let links: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, entries FROM audit_log WHERE entries IS NOT NULL")
                .fetch_all(catalog.pool())
                .await
                .unwrap();
        for (seq, entries) in links {
            sqlx::query("UPDATE audit_log SET entries = $1 WHERE seq = $2")
                .bind(change(&entries))
                .bind(seq)
                .execute(catalog.pool())
                .await
                .unwrap();
        }
    }

    /// The writer's path end to end: 10^5 signs queued as a busy gateway queues
    /// them become a few links; every record pages back one by one with its
    /// message hash, the chain verifies, and a record changed, removed or moved
    /// inside a link breaks it at that link.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hundred_thousand_signs_become_links_that_verify_and_page_one_by_one() {
        const SIGNS: usize = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let audit = Audit::start(&AuditConfig::default(), catalog.clone());
        let hash_of = |i: usize| hex::encode(digest(&SHA256, &i.to_be_bytes()));
        for i in 0..SIGNS {
            let slot = audit.reserve().await.unwrap();
            let tenant = (i % 2 == 0).then(|| "acme".to_owned());
            slot.record(Event {
                tenant,
                message_sha256s: vec![hash_of(i)],
                ..event(&format!("k{}", i % 7))
            })
            .await
            .unwrap();
        }
        assert!(audit.flush(Duration::from_secs(30)).await);
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log")
            .fetch_one(catalog.pool())
            .await
            .unwrap();
        assert!(
            rows <= (SIGNS / 50) as i64,
            "{rows} rows for {SIGNS} records"
        );
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == SIGNS as u64, "{verdict:?}");

        let mut after = 0;
        let mut seen = 0;
        loop {
            let filter = AuditFilter {
                after,
                limit: 1000,
                ..AuditFilter::default()
            };
            let page = audit.page(&filter).await.unwrap();
            let Some(last) = page.last() else { break };
            for record in &page {
                assert_eq!(record.seq, seen as i64 + 1);
                assert_eq!(
                    record.message_sha256.as_deref(),
                    Some(hash_of(seen).as_str())
                );
                assert_eq!(
                    record.kid.as_deref(),
                    Some(format!("k{}", seen % 7).as_str())
                );
                seen += 1;
            }
            after = last.seq;
        }
        assert_eq!(seen, SIGNS);
        // Filters reach into links: a tenant's records, one kid's, from the middle.
        let acme = AuditFilter {
            after: 500,
            limit: 1000,
            tenant: Some(Some("acme")),
            kid: Some("k3"),
            ..AuditFilter::default()
        };
        let page = audit.page(&acme).await.unwrap();
        assert_eq!(page.len(), 1000);
        assert!(page.iter().all(|r| r.seq > 500
            && r.tenant.as_deref() == Some("acme")
            && r.kid.as_deref() == Some("k3")));
        assert!(page.windows(2).all(|w| w[1].seq - w[0].seq == 14));

        // One record of the link holding seq 50 000: changed, removed, moved.
        let (seq, first_seq, entries): (i64, i64, String) = sqlx::query_as(
            "SELECT seq, first_seq, entries FROM audit_log WHERE first_seq <= 50000 AND seq >= 50000",
        )
        .fetch_one(catalog.pool())
        .await
        .unwrap();
        let set = |text: String| {
            let catalog = catalog.clone();
            async move {
                sqlx::query("UPDATE audit_log SET entries = $1 WHERE seq = $2")
                    .bind(text)
                    .bind(seq)
                    .execute(catalog.pool())
                    .await
                    .unwrap();
            }
        };
        let mut records: Vec<serde_json::Value> = serde_json::from_str(&entries).unwrap();
        let at = usize::try_from(50_000 - first_seq).unwrap();
        let original = records.clone();
        records[at][4] = "k9".into();
        set(serde_json::to_string(&records).unwrap()).await;
        assert_eq!(audit.verify().await.unwrap().first_bad_seq, Some(first_seq));
        records = original.clone();
        records.remove(at);
        set(serde_json::to_string(&records).unwrap()).await;
        assert_eq!(audit.verify().await.unwrap().first_bad_seq, Some(first_seq));
        records = original.clone();
        records.swap(at, at + 1);
        set(serde_json::to_string(&records).unwrap()).await;
        assert_eq!(audit.verify().await.unwrap().first_bad_seq, Some(first_seq));
        set(entries).await;
        assert!(audit.verify().await.unwrap().ok);
        // A whole link removed leaves a gap.
        sqlx::query("DELETE FROM audit_log WHERE seq = $1")
            .bind(seq)
            .execute(catalog.pool())
            .await
            .unwrap();
        assert_eq!(audit.verify().await.unwrap().first_bad_seq, Some(first_seq));
    }

    /// Batch signs of 1000 messages: a link closes at about 256 KiB, so one
    /// commit writes several links, each verifying after the one before.
    #[tokio::test]
    async fn large_records_split_a_commit_into_several_links() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let batch = Event {
            message_sha256s: (0..1000u32).map(|i| format!("{i:064x}")).collect(),
            ..event("k")
        };
        let events: Vec<_> = (0..40).map(|i| (i, batch.clone())).collect();
        let end = append(&catalog, None, &events).await;
        assert_eq!(end.seq, 40);
        let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM audit_log")
            .fetch_one(catalog.pool())
            .await
            .unwrap();
        assert!(rows >= 10, "{rows} links");
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 40, "{verdict:?}");
        let page = audit.page(&AuditFilter::default()).await.unwrap();
        assert_eq!(page.len(), 40);
        assert!(
            page.iter()
                .all(|r| r.message_sha256s == batch.message_sha256s)
        );
    }

    /// Small records fill a link up to its record cap and no further.
    #[tokio::test]
    async fn a_link_carries_at_most_its_cap_of_records() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let count = 2 * link::MAX_RECORDS + 452;
        let events: Vec<_> = (0..count)
            .map(|i| (i as i64, event(&format!("k{i}"))))
            .collect();
        let end = append(&catalog, None, &events).await;
        assert_eq!(end.seq, count as i64);
        let spans: Vec<(i64, i64)> =
            sqlx::query_as("SELECT first_seq, seq FROM audit_log ORDER BY seq")
                .fetch_all(catalog.pool())
                .await
                .unwrap();
        let sizes: Vec<i64> = spans.iter().map(|(first, last)| last - first + 1).collect();
        let cap = link::MAX_RECORDS as i64;
        assert_eq!(sizes, [cap, cap, 452], "{spans:?}");
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == count as u64, "{verdict:?}");
    }

    #[test]
    fn each_hash_covers_the_previous_one_and_every_field() {
        let first = AuditRecord::chained((0, GENESIS), 1, &event("a"));
        assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS));
        let second = AuditRecord::chained((first.seq, &first.hash), 2, &event("a"));
        assert_eq!(second.prev_hash, first.hash);
        assert!(second.hash_holds());
        let mut changed = second.clone();
        changed.outcome = "key_not_found".into();
        assert!(!changed.hash_holds());
        let mut relinked = second.clone();
        relinked.prev_hash = GENESIS.into();
        assert!(!relinked.hash_holds());
        let mut emptied = second.clone();
        emptied.kid = Some(String::new());
        assert!(!emptied.hash_holds(), "an empty kid is not the kid");
        let mut dropped = second.clone();
        dropped.provider = None;
        assert!(
            !dropped.hash_holds(),
            "an absent provider is not the provider"
        );
    }

    #[tokio::test]
    async fn absent_and_empty_fields_and_hostile_values_read_back_as_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let empty = Event {
            kid: Some(String::new()),
            provider: None,
            outcome: "invalid_request",
            message_sha256s: Vec::new(),
            ..event("")
        };
        let hostile = Event {
            kid: Some(format!("a\0b\u{1b}[31m{}", "x".repeat(10_000))),
            provider: Some(String::new()),
            api_key: None,
            ..empty.clone()
        };
        append(&catalog, None, &[(1, empty), (2, hostile), (3, event("k"))]).await;
        let audit = Audit::start(&AuditConfig::default(), catalog);
        let page = audit.page(&AuditFilter::default()).await.unwrap();
        assert_eq!(
            (page[0].kid.as_deref(), page[0].provider.as_deref()),
            (Some(""), None)
        );
        assert_eq!(page[1].provider.as_deref(), Some(""));
        assert_eq!(page[1].api_key, None);
        let kid = page[1].kid.as_deref().unwrap();
        assert!(
            kid.starts_with("a\\u{0}b\\u{1b}[31mxxx") && kid.ends_with('…'),
            "{kid}"
        );
        assert_eq!(kid.chars().count(), MAX_FIELD + 1);
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 3, "{verdict:?}");
    }

    /// A record written by an earlier release (encoding 1, absent as '') still
    /// verifies, also the one a refused request with an empty kid made then.
    #[tokio::test]
    async fn records_of_the_earlier_encoding_still_verify() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = crate::catalog::test_catalog(&dir).await;
        let mut previous = (0, GENESIS.to_owned());
        for (seq, kid) in [(1, Some("k1")), (2, Some("")), (3, None)] {
            let mut record = AuditRecord::chained(
                (previous.0, &previous.1),
                seq,
                &Event {
                    kid: kid.map(str::to_owned),
                    ..event("k")
                },
            );
            record.encoding = 1;
            record.hash = record.expected_hash();
            sqlx::query(
                "INSERT INTO audit_log (seq, time, api_key, tenant, action, kid, provider, outcome, \
                 message_sha256, prev_hash, hash) VALUES ($1, $2, $3, '', $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(record.seq)
            .bind(record.time)
            .bind(record.api_key.clone())
            .bind(record.action.clone())
            .bind(record.kid.clone().unwrap_or_default())
            .bind(record.provider.clone())
            .bind(record.outcome.clone())
            .bind(record.stored_message_hashes())
            .bind(record.prev_hash.clone())
            .bind(record.hash.clone())
            .execute(catalog.pool())
            .await
            .unwrap();
            previous = (record.seq, record.hash);
        }
        let audit = Audit::start(&AuditConfig::default(), catalog.clone());
        // New records follow the old ones.
        append(&catalog, None, &[(4, event("k4"))]).await;
        let verdict = audit.verify().await.unwrap();
        assert!(verdict.ok && verdict.checked == 4, "{verdict:?}");
        sqlx::query("UPDATE audit_log SET outcome = 'key_not_found' WHERE seq = 2")
            .execute(catalog.pool())
            .await
            .unwrap();
        let verdict = audit.verify().await.unwrap();
        assert_eq!(verdict.first_bad_seq, Some(2));
    }
}
