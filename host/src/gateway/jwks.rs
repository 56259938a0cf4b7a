//! The JWKS document: built once per change of a tenant's published keys, with
//! a strong ETag, and served from memory until the next change.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Gateway, GatewayError};

/// A tenant's JWKS document, built once per change of the published keys.
#[derive(Debug)]
pub struct JwksDocument {
    /// The value of [`Gateway`]'s invalidation counter it was built at.
    generation: u64,
    /// The JSON text.
    pub body: bytes::Bytes,
    /// A strong entity tag: the SHA-256 of the body, quoted.
    pub etag: String,
}

impl Gateway {
    /// `tenant`'s JWKS document: `{"keys": [...]}` with the public JWK of every
    /// published version (current and in grace), each with its `x5c` when it has
    /// a certificate. Built once, then served from memory until a key of this
    /// gateway (or, on PostgreSQL, of any replica) changes.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn jwks_document(
        &self,
        tenant: Option<&str>,
    ) -> Result<Arc<JwksDocument>, GatewayError> {
        let name = tenant.unwrap_or("");
        let generation = self.invalidations.load(Ordering::Acquire);
        if let Some(document) = self.jwks_documents.get(name)
            && document.generation == generation
        {
            return Ok(Arc::clone(&document));
        }
        let keys: Vec<serde_json::Value> = self
            .jwks(tenant)
            .await?
            .into_iter()
            .map(|(jwk, x5c)| {
                let mut entry = serde_json::to_value(jwk).expect("a JWK serialises");
                if let Some(x5c) = x5c {
                    entry["x5c"] = x5c.into();
                }
                entry
            })
            .collect();
        let body = bytes::Bytes::from(
            serde_json::to_vec(&serde_json::json!({ "keys": keys })).expect("JSON serialises"),
        );
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
        let document = Arc::new(JwksDocument {
            generation,
            etag: format!("\"{}\"", hex::encode(digest)),
            body,
        });
        // Built from a read that began after `generation`: a change during the
        // build bumped the counter, so this document is never served for it.
        self.jwks_documents
            .insert(name.to_owned(), Arc::clone(&document));
        Ok(document)
    }

    /// The public JWKs of `tenant`'s published versions (current and in grace),
    /// each with its certificate chain when it has one.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn jwks(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<(crate::crypto::PublicJwk, Option<Vec<String>>)>, GatewayError> {
        Ok(self.catalog.published_jwks(tenant).await?)
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
}
