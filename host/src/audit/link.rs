//! Links that carry many records: the writer commits the records it batched
//! (signs, refusals, reloads) as one row whose hash covers them all (encoding
//! 3), so a commit costs one row and one chain hash whatever it carries.
//!
//! The row's `entries` is the compact JSON array of its records, each
//! `[time, apiKey, tenant, action, kid, provider, outcome, [messageSha256, …]]`,
//! at positions `first_seq` to `seq`; its hash is hex SHA-256 of
//! `["kmsgw-audit-3", prevHash, firstSeq, lastSeq, <entries>]`.

use aws_lc_rs::digest::{Context, SHA256};

use super::{AuditRecord, Event, recorded};

/// The encoding of a link row.
pub const ENCODING: u8 = 3;
/// The `action` column of a link row (its records carry their own).
pub const ACTION: &str = "link";
/// Most records in one link.
pub const MAX_RECORDS: usize = 1024;
/// A link is closed once its entries pass this size (a batch sign's record holds
/// up to 1000 hashes: some 67 KB).
const MAX_BYTES: usize = 256 << 10;

/// The records of one link, encoded as they are stored and hashed.
pub struct Draft {
    entries: String,
    count: i64,
    last_time: i64,
}

/// Encodes `events` (with their times) into links of at most [`MAX_RECORDS`]
/// records and about 256 KiB each, in order.
pub fn drafts(events: &[(i64, Event)]) -> Vec<Draft> {
    let mut drafts = Vec::new();
    let mut entries = Vec::with_capacity(events.len().min(MAX_RECORDS) * 200);
    let mut count = 0;
    for (i, (time, event)) in events.iter().enumerate() {
        entries.push(if count == 0 { b'[' } else { b',' });
        serde_json::to_writer(
            &mut entries,
            &(
                time,
                event.api_key.as_deref(),
                event.tenant.as_deref(),
                event.action.as_str(),
                event.kid.as_deref().map(recorded),
                event.provider.as_deref().map(recorded),
                recorded(event.outcome),
                &event.message_sha256s,
            ),
        )
        .expect("plain values serialise");
        count += 1;
        if count == MAX_RECORDS || entries.len() >= MAX_BYTES || i + 1 == events.len() {
            entries.push(b']');
            drafts.push(Draft {
                entries: String::from_utf8(std::mem::take(&mut entries))
                    .expect("serde_json writes UTF-8"),
                count: i64::try_from(count).expect("at most MAX_RECORDS"),
                last_time: *time,
            });
            count = 0;
        }
    }
    drafts
}

/// A link row as stored.
#[derive(Clone, Debug)]
pub struct StoredLink {
    pub first_seq: i64,
    /// The last record's position: the link's place in the chain.
    pub seq: i64,
    /// The last record's time.
    pub time: i64,
    pub prev_hash: String,
    pub hash: String,
    pub entries: String,
    /// Whether the columns a link does not use hold what the writer left there
    /// (NULL, [`ACTION`], an empty outcome).
    pub bare: bool,
}

/// One record as a link stores it.
type Entry = (
    i64,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    Vec<String>,
);

impl StoredLink {
    /// The link `draft` makes after the chain's end `(seq, hash)`.
    pub fn after(previous: (i64, &str), draft: Draft) -> StoredLink {
        let first_seq = previous.0 + 1;
        let seq = previous.0 + draft.count;
        StoredLink {
            first_seq,
            seq,
            time: draft.last_time,
            prev_hash: previous.1.to_owned(),
            hash: hash(previous.1, first_seq, seq, &draft.entries),
            entries: draft.entries,
            bare: true,
        }
    }

    /// The link's records, each with its position and the link's hashes.
    ///
    /// # Errors
    /// What is wrong with the stored entries.
    pub fn records(&self) -> Result<Vec<AuditRecord>, String> {
        let entries: Vec<Entry> = serde_json::from_str(&self.entries)
            .map_err(|e| format!("the entries of audit link {}: {e}", self.seq))?;
        if i64::try_from(entries.len()).ok() != Some(self.seq - self.first_seq + 1) {
            return Err(format!(
                "audit link {} holds {} records for positions {} to {}",
                self.seq,
                entries.len(),
                self.first_seq,
                self.seq
            ));
        }
        Ok(entries
            .into_iter()
            .zip(self.first_seq..)
            .map(
                |((time, api_key, tenant, action, kid, provider, outcome, hashes), seq)| {
                    let (message_sha256, message_sha256s) = match <[String; 1]>::try_from(hashes) {
                        Ok([one]) => (Some(one), Vec::new()),
                        Err(many) => (None, many),
                    };
                    AuditRecord {
                        seq,
                        time,
                        api_key,
                        tenant,
                        action,
                        kid,
                        provider,
                        outcome,
                        message_sha256,
                        message_sha256s,
                        prev_hash: self.prev_hash.clone(),
                        hash: self.hash.clone(),
                        encoding: ENCODING,
                        link: Some(super::LinkSpan {
                            first_seq: self.first_seq,
                            last_seq: self.seq,
                        }),
                    }
                },
            )
            .collect())
    }

    /// Whether the link is as the writer stored it: its hash covers its
    /// entries and positions, it holds as many records as positions, and its
    /// time is its last record's.
    pub fn holds(&self) -> bool {
        self.bare
            && self.first_seq <= self.seq
            && self.hash == hash(&self.prev_hash, self.first_seq, self.seq, &self.entries)
            && self
                .records()
                .is_ok_and(|records| records.last().is_some_and(|r| r.time == self.time))
    }
}

/// Hex SHA-256 of `["kmsgw-audit-3", prevHash, firstSeq, lastSeq, <entries>]`.
fn hash(prev_hash: &str, first_seq: i64, last_seq: i64, entries: &str) -> String {
    let head = serde_json::to_string(&("kmsgw-audit-3", prev_hash, first_seq, last_seq))
        .expect("plain values serialise");
    let mut context = Context::new(&SHA256);
    // The head without its closing bracket, the entries, then the bracket.
    context.update(&head.as_bytes()[..head.len() - 1]);
    context.update(b",");
    context.update(entries.as_bytes());
    context.update(b"]");
    hex::encode(context.finish())
}
