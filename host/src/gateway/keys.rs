//! A key's life in the catalog and its backend: create, import, delete and
//! forced retraction, each committed with its audit record, and the backend
//! key removed again when its record cannot be written.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Gateway, GatewayError, valid_kid};
use crate::audit::{Action, Actor};
use crate::catalog::{CatalogError, KeyRecord, KeyUsage, RotationPolicy, VersionState, key_id};
use crate::crypto::{KeyKind, PrivateKey};
use crate::providers::{Alg, KeyRef, KeySpec, Provider, ProviderError};

/// What `create_key` makes.
#[derive(Debug, Default)]
pub struct NewKey {
    /// Generated (a UUID) when absent.
    pub kid: Option<String>,
    /// Default: the provider's default.
    pub alg: Option<Alg>,
    /// RSA modulus bits (2048, 3072, 4096); RSA algorithms only; default 2048.
    pub rsa_bits: Option<u32>,
    /// Default: the default provider.
    pub provider: Option<String>,
    pub rotation: RotationPolicy,
}

/// A key retracted by a forced delete.
#[derive(Debug)]
pub struct Retraction {
    /// The record as it was.
    pub record: Arc<KeyRecord>,
    /// Whether the backend deleted the key too; if not, why it may still hold it.
    pub backend: Result<(), String>,
}

impl Gateway {
    pub(super) fn check_new_kid(kid: &str) -> Result<(), GatewayError> {
        if valid_kid(kid) {
            Ok(())
        } else {
            Err(GatewayError::InvalidInput(format!(
                "kid `{kid}` is not valid: use 1 to 128 letters, digits, `-`, `_`, `.`, `:` or `~`"
            )))
        }
    }

    pub(super) fn choose_alg(
        provider: &dyn Provider,
        alg: Option<Alg>,
    ) -> Result<Alg, GatewayError> {
        let caps = provider.capabilities();
        let alg = alg.unwrap_or(caps.default_alg);
        if caps.supports(alg) {
            Ok(alg)
        } else {
            Err(GatewayError::UnsupportedAlg {
                provider: provider.id().to_owned(),
                alg,
            })
        }
    }

    /// Creates a key in `actor`'s tenant as `request` says; the key and its
    /// audit record commit together.
    ///
    /// # Errors
    /// Unknown provider, taken kid, unsupported alg or size, backend failures.
    pub async fn create_key(
        &self,
        actor: Actor<'_>,
        request: NewKey,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let tenant = actor.tenant;
        let NewKey {
            kid,
            alg,
            rsa_bits,
            provider,
            rotation,
        } = request;
        let provider = self.provider(provider.as_deref())?;
        if !provider.capabilities().can_create {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot create keys",
                provider.id()
            )));
        }
        let alg = Self::choose_alg(provider.as_ref(), alg)?;
        let rsa_bits = match (alg.key_kind(), rsa_bits) {
            (KeyKind::Rsa, None) => 2048,
            (KeyKind::Rsa, Some(bits @ (2048 | 3072 | 4096))) => bits,
            (KeyKind::Rsa, Some(bits)) => {
                return Err(GatewayError::InvalidInput(format!(
                    "keySize {bits} is not supported; use 2048, 3072 or 4096"
                )));
            }
            (_, Some(_)) => {
                return Err(GatewayError::InvalidInput(format!(
                    "keySize applies to RSA keys only, not to {alg}"
                )));
            }
            (_, None) => 0,
        };
        let kid = kid.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        Self::check_new_kid(&kid)?;
        let id = key_id(tenant, &kid);
        self.ensure_free(&id, &kid).await?;
        let material = provider
            .generate_key(&id, KeySpec { alg, rsa_bits })
            .await?;
        let new = (kid, alg, material);
        self.commit(provider.as_ref(), actor, Action::Create, new, rotation)
            .await
    }

    /// Imports `key` under `kid` in `actor`'s tenant into `provider` (default: the
    /// default provider). Without `alg`, the key's kind decides: ES256/384/512 by
    /// curve, EdDSA, or RS256 for RSA.
    ///
    /// # Errors
    /// Unknown provider, taken kid, an `alg` that does not fit the key, a provider
    /// that cannot import, backend failures.
    pub async fn import_key(
        &self,
        actor: Actor<'_>,
        kid: String,
        key: &PrivateKey,
        alg: Option<Alg>,
        provider: Option<&str>,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let tenant = actor.tenant;
        let provider = self.provider(provider)?;
        if !provider.capabilities().can_import {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot import keys",
                provider.id()
            )));
        }
        let alg = match alg {
            Some(alg) if alg.key_kind() != key.kind() => {
                return Err(GatewayError::InvalidJwk(format!(
                    "a {} key cannot be used for {alg}",
                    key.public_jwk().describe()
                )));
            }
            Some(alg) => alg,
            None => key.kind().default_alg(),
        };
        let alg = Self::choose_alg(provider.as_ref(), Some(alg))?;
        Self::check_new_kid(&kid)?;
        let id = key_id(tenant, &kid);
        self.ensure_free(&id, &kid).await?;
        let material = provider.import_key(&id, key, alg).await?;
        if !material.public_jwk.same_key(key.public_jwk()) {
            let (record, _) = Self::record_of(provider.as_ref(), tenant, kid, alg, material, 1);
            self.discard_orphan(provider.as_ref(), &record).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a public key that is not the imported key's",
                provider.id()
            ))
            .into());
        }
        self.commit(
            provider.as_ref(),
            actor,
            Action::Import,
            (kid, alg, material),
            RotationPolicy::default(),
        )
        .await
    }

    pub(super) async fn ensure_free(&self, id: &str, kid: &str) -> Result<(), GatewayError> {
        if self.catalog.get(id).await?.is_some() {
            return Err(GatewayError::KeyExists(kid.to_owned()));
        }
        Ok(())
    }

    pub(super) fn record_of(
        provider: &dyn Provider,
        tenant: Option<&str>,
        kid: String,
        alg: Alg,
        material: crate::providers::KeyMaterial,
        version: u32,
    ) -> (KeyRecord, Option<Vec<u8>>) {
        let mut record = KeyRecord {
            public_jwk: material.public_jwk.unlabelled(),
            id: key_id(tenant, &kid),
            tenant: tenant.map(str::to_owned),
            kid,
            provider: provider.id().to_owned(),
            external_id: material.external_id,
            alg,
            created_at: SystemTime::now(),
            version,
            sealed: None,
            certified: false,
        };
        record.public_jwk = record.public_jwk.labelled(&record.jwk_kid(), alg.as_str());
        (record, material.sealed_secret)
    }

    /// Records a key the backend now holds, with the audit record of `action`;
    /// if its public key is unusable or the records cannot be written, removes it
    /// from the backend again so nothing is left half-written.
    pub(super) async fn commit(
        &self,
        provider: &dyn Provider,
        actor: Actor<'_>,
        action: Action,
        (kid, alg, material): (String, Alg, crate::providers::KeyMaterial),
        rotation: RotationPolicy,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let (record, sealed) = Self::record_of(provider, actor.tenant, kid, alg, material, 1);
        if let Err(e) = record.public_jwk.check(alg) {
            self.discard_orphan(provider, &record).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned an unusable public key for {alg}: {e}",
                provider.id()
            ))
            .into());
        }
        let event = actor.event(action, &record.kid, &record.provider, "ok");
        let inserted = async {
            let mut tx = self.audit.begin().await?;
            self.catalog
                .insert(&mut tx, &record, sealed.as_deref(), rotation)
                .await?;
            tx.commit(event).await
        };
        if let Err(e) = inserted.await {
            // A backend that names keys by kid may hold the key of whichever request won
            // a race for that kid; only a backend-chosen name is surely ours to remove.
            if record.external_id != record.id {
                self.discard_orphan(provider, &record).await;
            }
            return Err(match e {
                CatalogError::Exists => GatewayError::KeyExists(record.kid),
                other => other.into(),
            });
        }
        // A new key changes the JWKS.
        self.invalidate(&record.id);
        Ok(Arc::new(record))
    }

    /// Removes a key the backend made but the catalog will not hold.
    pub(super) async fn discard_orphan(&self, provider: &dyn Provider, record: &KeyRecord) {
        if let Err(e) = provider.delete_key(&KeyRef::from(record)).await {
            tracing::warn!(kid = %record.kid, provider = provider.id(), error = %e,
                "could not remove a backend key whose catalog record was not written");
        }
    }

    /// Deletes `kid` of `actor`'s tenant from its backend, then from the catalog
    /// with its audit record. Returns the deleted key's record.
    ///
    /// # Errors
    /// Unknown kid, a provider that cannot delete, backend failures (the key stays).
    pub async fn delete_key(
        &self,
        actor: Actor<'_>,
        kid: &str,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let record = self.stored_record(actor.tenant, kid).await?;
        let provider = self.provider_of(&record)?;
        if !provider.capabilities().can_delete {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot delete keys",
                provider.id()
            )));
        }
        provider.delete_key(&KeyRef::from(&record)).await?;
        self.delete_graces(provider.as_ref(), &record).await?;
        self.forget(actor, Action::Delete, kid, record).await
    }

    /// Deletes the backend keys of `record`'s versions still in grace.
    pub(super) async fn delete_graces(
        &self,
        provider: &dyn Provider,
        record: &KeyRecord,
    ) -> Result<(), GatewayError> {
        for version in self.catalog.versions(&record.id).await? {
            if version.state != VersionState::Grace {
                continue;
            }
            let old = KeyRecord {
                external_id: version.external_id,
                public_jwk: version.public_jwk,
                version: version.version,
                sealed: None,
                certified: false,
                ..record.clone()
            };
            match provider.delete_key(&KeyRef::from(&old)).await {
                Ok(()) | Err(ProviderError::KeyNotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Retracts `kid` of `actor`'s tenant from the catalog (and so from the JWKS)
    /// whatever its backend says: the backend is asked to delete the key when its
    /// provider is configured and can, and the answer says why it may still hold it.
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn retract_key(
        &self,
        actor: Actor<'_>,
        kid: &str,
    ) -> Result<Retraction, GatewayError> {
        let record = self.stored_record(actor.tenant, kid).await?;
        let backend = match self.provider_of(&record) {
            Err(gone) => Err(gone.to_string()),
            Ok(provider) if !provider.capabilities().can_delete => {
                Err(format!("provider `{}` cannot delete keys", provider.id()))
            }
            Ok(provider) => match provider.delete_key(&KeyRef::from(&record)).await {
                Ok(()) | Err(ProviderError::KeyNotFound(_)) => self
                    .delete_graces(provider.as_ref(), &record)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(reason) = &backend {
            tracing::warn!(kid = %record.kid, provider = %record.provider, external_id = %record.external_id,
                %reason, "key retracted from the catalog; its backend may still hold it");
        }
        let record = self.forget(actor, Action::ForceDelete, kid, record).await?;
        Ok(Retraction { record, backend })
    }

    /// The catalog's record of `kid` in `tenant`, read from the database.
    pub(super) async fn stored_record(
        &self,
        tenant: Option<&str>,
        kid: &str,
    ) -> Result<KeyRecord, GatewayError> {
        // A kid no key can have is not looked up (PostgreSQL refuses a NUL in text).
        if !valid_kid(kid) {
            return Err(GatewayError::KeyNotFound(
                crate::audit::recorded(kid).into_owned(),
            ));
        }
        self.catalog
            .get(&key_id(tenant, kid))
            .await?
            .filter(|r| r.tenant.as_deref() == tenant)
            .ok_or_else(|| GatewayError::KeyNotFound(kid.to_owned()))
    }

    /// Removes `record` from the catalog, with the audit record of `action`, and
    /// from every cache.
    pub(super) async fn forget(
        &self,
        actor: Actor<'_>,
        action: Action,
        kid: &str,
        record: KeyRecord,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let event = actor.event(action, &record.kid, &record.provider, "ok");
        let deleted = async {
            let mut tx = self.audit.begin().await?;
            self.catalog.delete(&mut tx, &record.id).await?;
            tx.commit(event).await
        }
        .await;
        self.invalidate(&record.id);
        match deleted {
            Ok(()) => Ok(Arc::new(record)),
            Err(CatalogError::Conflict) => Err(GatewayError::KeyNotFound(kid.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// A page of `tenant`'s key records after `cursor` (a kid), in kid order, with
    /// their usage (this replica's counts flushed first); with `unused_since`, only
    /// keys that have not signed since then.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn list(
        &self,
        tenant: Option<&str>,
        cursor: Option<&str>,
        limit: u32,
        unused_since: Option<SystemTime>,
    ) -> Result<Vec<(KeyRecord, KeyUsage)>, GatewayError> {
        self.usage.flush().await?;
        Ok(self
            .catalog
            .list(tenant, cursor, limit, unused_since)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditFilter;
    use crate::gateway::test_gateway;

    #[tokio::test]
    async fn a_create_commits_with_its_record_and_a_taken_or_bad_kid_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, audit) = test_gateway(&dir, Vec::new()).await;
        let by = Actor {
            api_key: Some("ops"),
            tenant: None,
        };
        let new = |kid: &str| NewKey {
            kid: Some(kid.into()),
            ..NewKey::default()
        };
        let record = gateway.create_key(by, new("k")).await.unwrap();
        assert_eq!((record.alg, record.version), (Alg::ES256, 1));
        let records = audit.page(&AuditFilter::default()).await.unwrap();
        assert_eq!(
            records.len(),
            1,
            "committed with the key, before the answer"
        );
        assert_eq!(
            (records[0].action.as_str(), records[0].api_key.as_deref()),
            ("create", Some("ops"))
        );
        let taken = gateway.create_key(by, new("k")).await;
        assert!(
            matches!(taken, Err(GatewayError::KeyExists(_))),
            "{taken:?}"
        );
        for bad in ["", "a b", "k\0", &"x".repeat(129)] {
            let refused = gateway.create_key(by, new(bad)).await;
            assert!(
                matches!(refused, Err(GatewayError::InvalidInput(_))),
                "{bad:?}"
            );
        }
        let rsa = NewKey {
            kid: Some("r".into()),
            alg: Some(Alg::ES256),
            rsa_bits: Some(2048),
            ..NewKey::default()
        };
        assert!(matches!(
            gateway.create_key(by, rsa).await,
            Err(GatewayError::InvalidInput(m)) if m.contains("RSA keys only")
        ));
        let elsewhere = NewKey {
            provider: Some("nope".into()),
            ..new("p")
        };
        assert!(matches!(
            gateway.create_key(by, elsewhere).await,
            Err(GatewayError::ProviderNotFound(_))
        ));
        // Delete: gone, and a second delete is not found.
        gateway.delete_key(by, "k").await.unwrap();
        assert!(matches!(
            gateway.delete_key(by, "k").await,
            Err(GatewayError::KeyNotFound(_))
        ));
        let actions: Vec<String> = audit
            .page(&AuditFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.action)
            .collect();
        assert_eq!(actions, ["create", "delete"]);
    }

    #[tokio::test]
    async fn an_imported_key_keeps_its_public_key_and_its_kind_decides_the_alg() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        let key = PrivateKey::generate(Alg::EdDSA, None).unwrap();
        let record = gateway
            .import_key(Actor::default(), "i".into(), &key, None, None)
            .await
            .unwrap();
        assert_eq!(record.alg, Alg::EdDSA);
        assert!(record.public_jwk.same_key(key.public_jwk()));
        let mismatch = gateway
            .import_key(Actor::default(), "j".into(), &key, Some(Alg::ES256), None)
            .await;
        assert!(
            matches!(mismatch, Err(GatewayError::InvalidJwk(_))),
            "{mismatch:?}"
        );
    }
}
