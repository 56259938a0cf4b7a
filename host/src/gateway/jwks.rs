//! The JWKS document: each tenant's published keys as parts, one per key, and
//! the document made of them with a strong ETag, served from memory until a key
//! changes. A change re-reads only the keys it names (the gateway logs which
//! ids each invalidation was for) and patches their parts, so a document of
//! 10^5 keys is not read again from the database for one new key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::ArcSwap;

use super::{Gateway, GatewayError};
use crate::catalog::Published;

/// Invalidations remembered; a document older than the oldest is rebuilt whole.
const CHANGES_KEPT: usize = 4096;

/// A tenant's JWKS document.
#[derive(Debug)]
pub struct JwksDocument {
    /// The value of [`Gateway`]'s invalidation counter it was built at.
    generation: u64,
    /// The JSON text.
    pub body: bytes::Bytes,
    /// A strong entity tag: the SHA-256 of the body, quoted.
    pub etag: String,
}

/// A tenant's published keys as parts, and the document they make.
pub(super) struct TenantJwks {
    document: ArcSwap<JwksDocument>,
    /// Held by the one request that brings the document up to date.
    parts: tokio::sync::Mutex<Parts>,
}

impl Default for TenantJwks {
    fn default() -> Self {
        TenantJwks {
            document: ArcSwap::from_pointee(JwksDocument {
                generation: u64::MAX,
                body: bytes::Bytes::new(),
                etag: String::new(),
            }),
            parts: tokio::sync::Mutex::new(Parts::default()),
        }
    }
}

/// Each key's JWKS entries (its published versions, comma-separated JSON) by
/// key id, as of an invalidation count (`None`: never read).
#[derive(Default)]
struct Parts {
    generation: Option<u64>,
    by_key: BTreeMap<String, Vec<u8>>,
}

/// The key ids of the latest invalidations, in order (`None`: everything).
#[derive(Default)]
pub(super) struct Changes {
    log: VecDeque<(u64, Option<String>)>,
}

impl Changes {
    /// Records invalidation `generation`, of key `id` or (`None`) of everything.
    pub(super) fn record(&mut self, generation: u64, id: Option<&str>) {
        if self.log.len() == CHANGES_KEPT {
            self.log.pop_front();
        }
        self.log.push_back((generation, id.map(str::to_owned)));
    }

    /// The ids changed after invalidation `since`, or `None` when that is not
    /// known (everything changed, or the log no longer reaches back to it).
    fn since(&self, since: u64) -> Option<BTreeSet<String>> {
        let reaches = self
            .log
            .front()
            .is_none_or(|(first, _)| *first <= since + 1);
        if !reaches {
            return None;
        }
        let mut ids = BTreeSet::new();
        for (generation, id) in &self.log {
            if *generation > since {
                ids.insert(id.clone()?);
            }
        }
        Some(ids)
    }
}

/// One key's part: its entries as the document holds them.
fn entries(published: &[&Published]) -> Vec<u8> {
    let mut part = Vec::new();
    for (i, version) in published.iter().enumerate() {
        if i > 0 {
            part.push(b',');
        }
        let mut entry = serde_json::to_value(&version.jwk).expect("a JWK serialises");
        if let Some(x5c) = &version.x5c {
            entry["x5c"] = x5c.clone().into();
        }
        serde_json::to_writer(&mut part, &entry).expect("JSON serialises");
    }
    part
}

/// `published` grouped by key id, in the order read (by key, then version).
fn by_key(published: &[Published]) -> BTreeMap<&str, Vec<&Published>> {
    let mut grouped: BTreeMap<&str, Vec<&Published>> = BTreeMap::new();
    for version in published {
        grouped
            .entry(version.id.as_str())
            .or_default()
            .push(version);
    }
    grouped
}

impl Gateway {
    /// `tenant`'s JWKS document: `{"keys": [...]}` with the public JWK of every
    /// published version (current and in grace), each with its `x5c` when it has
    /// a certificate, by key id then version. Served from memory until a key of
    /// this gateway (or, on PostgreSQL, of any replica) changes; then only the
    /// changed keys are read again.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn jwks_document(
        &self,
        tenant: Option<&str>,
    ) -> Result<Arc<JwksDocument>, GatewayError> {
        let name = tenant.unwrap_or("");
        let state = match self.jwks_documents.get(name) {
            Some(state) => Arc::clone(&state),
            None => Arc::clone(&self.jwks_documents.entry(name.to_owned()).or_default()),
        };
        let current = |state: &TenantJwks| {
            let document = state.document.load_full();
            (document.generation == self.invalidations.load(Ordering::Acquire)).then_some(document)
        };
        if let Some(document) = current(&state) {
            return Ok(document);
        }
        let mut parts = state.parts.lock().await;
        // Another request may have brought it up to date meanwhile.
        if let Some(document) = current(&state) {
            return Ok(document);
        }
        // Read after this count: a change during the read bumps it, so the
        // document is never served for it, and the next one reads that key again.
        let generation = self.invalidations.load(Ordering::Acquire);
        let changed = parts
            .generation
            .and_then(|since| self.jwks_changes.lock().expect("changes lock").since(since));
        match changed {
            Some(ids) => {
                let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                let published = self.catalog.published_jwks_of(&ids).await?;
                for id in &ids {
                    parts.by_key.remove(*id);
                }
                let mine: Vec<Published> = published
                    .into_iter()
                    .filter(|p| p.tenant.as_deref() == tenant)
                    .collect();
                for (id, versions) in by_key(&mine) {
                    parts.by_key.insert(id.to_owned(), entries(&versions));
                }
            }
            None => {
                let published = self.catalog.published_jwks(tenant).await?;
                parts.by_key = by_key(&published)
                    .into_iter()
                    .map(|(id, versions)| (id.to_owned(), entries(&versions)))
                    .collect();
            }
        }
        parts.generation = Some(generation);
        let size: usize = parts.by_key.values().map(|p| p.len() + 1).sum();
        let mut body = Vec::with_capacity(size + 12);
        body.extend_from_slice(br#"{"keys":["#);
        for (i, part) in parts.by_key.values().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(part);
        }
        body.extend_from_slice(b"]}");
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let document = Arc::new(JwksDocument {
            generation,
            etag: format!("\"{}\"", hex::encode(digest)),
            body: body.into(),
        });
        state.document.store(Arc::clone(&document));
        Ok(document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;
    use crate::gateway::{NewKey, test_gateway};

    async fn create(gateway: &Gateway, kid: &str) {
        let request = NewKey {
            kid: Some(kid.into()),
            ..NewKey::default()
        };
        gateway.create_key(Actor::default(), request).await.unwrap();
    }

    #[tokio::test]
    async fn the_document_is_built_once_per_change_and_its_etag_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        let empty = gateway.jwks_document(None).await.unwrap();
        assert_eq!(&empty.body[..], br#"{"keys":[]}"#);
        create(&gateway, "a").await;
        let one = gateway.jwks_document(None).await.unwrap();
        assert_ne!(one.etag, empty.etag);
        let again = gateway.jwks_document(None).await.unwrap();
        assert!(
            Arc::ptr_eq(&one, &again),
            "served from memory while nothing changed"
        );
        let body: serde_json::Value = serde_json::from_slice(&one.body).unwrap();
        assert_eq!(body["keys"][0]["kid"], "a");
        // Another tenant's change is a change too (the counter is shared), but
        // the document still holds only this tenant's keys.
        let tenant = Actor {
            tenant: Some("acme"),
            ..Actor::default()
        };
        let request = NewKey {
            kid: Some("b".into()),
            ..NewKey::default()
        };
        gateway.create_key(tenant, request).await.unwrap();
        let rebuilt = gateway.jwks_document(None).await.unwrap();
        assert!(!Arc::ptr_eq(&one, &rebuilt));
        assert_eq!(rebuilt.etag, one.etag, "same keys, same tag");
        let acme = gateway.jwks_document(Some("acme")).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&acme.body).unwrap();
        assert_eq!(body["keys"].as_array().unwrap().len(), 1);
        assert_eq!(body["keys"][0]["kid"], "b");
        // A delete leaves the document at once.
        gateway.delete_key(Actor::default(), "a").await.unwrap();
        let after = gateway.jwks_document(None).await.unwrap();
        assert_eq!(after.etag, empty.etag);
    }

    #[tokio::test]
    async fn a_patched_document_is_the_document_built_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        for kid in ["m", "c", "x"] {
            create(&gateway, kid).await;
        }
        let first = gateway.jwks_document(None).await.unwrap();
        // Changes of every kind after it: a new key, a rotation (two versions
        // published), a delete, and a key of another tenant.
        create(&gateway, "a").await;
        gateway.rotate(Actor::default(), "c").await.unwrap();
        gateway.delete_key(Actor::default(), "x").await.unwrap();
        let tenant = Actor {
            tenant: Some("acme"),
            ..Actor::default()
        };
        let request = NewKey {
            kid: Some("t".into()),
            ..NewKey::default()
        };
        gateway.create_key(tenant, request).await.unwrap();
        let patched = gateway.jwks_document(None).await.unwrap();
        assert_ne!(patched.etag, first.etag);
        let body: serde_json::Value = serde_json::from_slice(&patched.body).unwrap();
        let kids: Vec<&str> = body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, ["a", "c", "c@v2", "m"]);
        // Built whole (everything invalidated): the same bytes.
        gateway.invalidate_all();
        let whole = gateway.jwks_document(None).await.unwrap();
        assert!(!Arc::ptr_eq(&patched, &whole));
        assert_eq!(whole.body, patched.body);
        assert_eq!(whole.etag, patched.etag);
    }

    #[test]
    fn changes_say_which_keys_or_that_they_do_not_know() {
        let mut changes = Changes::default();
        assert_eq!(changes.since(0), Some(BTreeSet::new()));
        changes.record(1, Some("a"));
        changes.record(2, Some("b"));
        changes.record(3, Some("a"));
        assert_eq!(
            changes.since(1).unwrap().into_iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(changes.since(3), Some(BTreeSet::new()));
        changes.record(4, None);
        assert_eq!(changes.since(3), None, "everything changed");
        for generation in 5..5 + CHANGES_KEPT as u64 {
            changes.record(generation, Some("k"));
        }
        assert_eq!(changes.since(1), None, "the log no longer reaches back");
        assert!(changes.since(5 + CHANGES_KEPT as u64 - 3).is_some());
    }
}
