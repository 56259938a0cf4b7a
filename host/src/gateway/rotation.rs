//! Rotation and grace periods: a new version made current (on request or when
//! its policy makes it due, claimed by one replica), the previous one kept
//! published for its grace period and then retired in its backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use super::{Gateway, GatewayError};
use crate::audit::{Action, Actor};
use crate::catalog::{CatalogError, KeyRecord, KeyVersion, RotationPolicy};
use crate::crypto::KeyKind;
use crate::providers::{KeyRef, KeySpec, ProviderError};

/// A committed rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The key with its new current version.
    pub record: Arc<KeyRecord>,
    /// The new version's certificate under the key's policy; `None` without one.
    pub certificate: Option<Result<(), GatewayError>>,
}

/// How long a replaced version stays published when its key has no grace policy.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

impl Gateway {
    /// Makes a new version of `kid` in `tenant` (same provider and algorithm) its
    /// current one; the previous version stays published for the key's grace period.
    ///
    /// # Errors
    /// Unknown kid, a provider that cannot create keys or is gone, backend failures,
    /// [`GatewayError::KeyExists`] when another rotation of the key won a race.
    pub async fn rotate(&self, actor: Actor<'_>, kid: &str) -> Result<Rotated, GatewayError> {
        let current = self.stored_record(actor.tenant, kid).await?;
        self.rotate_and_certify(actor, &current).await
    }

    /// Rotates `current`'s key and certifies the new version under its policy.
    pub(super) async fn rotate_and_certify(
        &self,
        actor: Actor<'_>,
        current: &KeyRecord,
    ) -> Result<Rotated, GatewayError> {
        let result = self.rotate_record(actor, current).await;
        self.rotations[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        let record = result?;
        let certificate = self.certify_new_version(actor, &record).await;
        Ok(Rotated {
            record,
            certificate,
        })
    }

    pub(super) async fn rotate_record(
        &self,
        actor: Actor<'_>,
        current: &KeyRecord,
    ) -> Result<Arc<KeyRecord>, GatewayError> {
        let provider = self.provider_of(current)?;
        if !provider.capabilities().can_create {
            return Err(GatewayError::Unsupported(format!(
                "provider `{}` cannot create keys, so its keys cannot rotate",
                provider.id()
            )));
        }
        let rsa_bits = current
            .public_jwk
            .signature_len(current.alg)
            .filter(|_| current.alg.key_kind() == KeyKind::Rsa)
            .map_or(0, |bytes| u32::try_from(bytes * 8).unwrap_or(0));
        let version = current.version + 1;
        let backend_id = crate::catalog::version_id(&current.id, version);
        let material = provider
            .generate_key(
                &backend_id,
                KeySpec {
                    alg: current.alg,
                    rsa_bits,
                },
            )
            .await?;
        let (next, sealed) = Self::record_of(
            provider.as_ref(),
            current.tenant.as_deref(),
            current.kid.clone(),
            current.alg,
            material,
            version,
        );
        if let Err(e) = next.public_jwk.check(current.alg) {
            self.discard_orphan(provider.as_ref(), &next).await;
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned an unusable public key for {}: {e}",
                provider.id(),
                current.alg
            ))
            .into());
        }
        let grace = self
            .catalog
            .policy(&current.id)
            .await?
            .grace
            .unwrap_or(DEFAULT_GRACE);
        let event = actor.event(Action::Rotate, &current.kid, &current.provider, "ok");
        let committed = async {
            let mut tx = self.audit.begin().await?;
            let grace_until = next.created_at + grace;
            self.catalog
                .rotate(&mut tx, current, &next, sealed.as_deref(), grace_until)
                .await?;
            tx.commit(event).await
        }
        .await;
        match committed {
            Ok(()) => {
                self.invalidate(&current.id);
                Ok(Arc::new(next))
            }
            Err(CatalogError::Conflict) => {
                self.discard_orphan(provider.as_ref(), &next).await;
                Err(GatewayError::KeyExists(format!(
                    "{} (rotated concurrently; try again)",
                    current.kid
                )))
            }
            Err(e) => {
                self.discard_orphan(provider.as_ref(), &next).await;
                Err(e.into())
            }
        }
    }

    /// Rotates every key whose policy makes it due at `now`, each claimed by one
    /// replica only. Returns what was tried: the key's record and the outcome.
    pub async fn rotate_due(
        &self,
        now: SystemTime,
    ) -> Vec<(KeyRecord, Result<Rotated, GatewayError>)> {
        let due = match self.catalog.due_rotations(now).await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the keys due for rotation");
                return Vec::new();
            }
        };
        let mut done = Vec::new();
        for (id, rotated_at) in due {
            // The claim moves the key's due time on; exactly one replica wins it.
            match self.catalog.claim_rotation(&id, rotated_at, now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(key = %id, error = %e, "cannot claim a due rotation");
                    continue;
                }
            }
            let Ok(Some(current)) = self.catalog.get(&id).await else {
                continue;
            };
            let actor = Actor::scheduler(current.tenant.as_deref());
            let result = self.rotate_and_certify(actor, &current).await;
            done.push((current, result));
        }
        done
    }

    /// Retires every version whose grace period has ended by `now`: its backend
    /// key is deleted and it leaves the JWKS.
    pub async fn end_graces(&self, now: SystemTime) {
        let ended = match self.catalog.ended_graces(now).await {
            Ok(ended) => ended,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the versions whose grace ended");
                return;
            }
        };
        for (record, version) in ended {
            match self.provider_of(&record) {
                Ok(provider) => match provider.delete_key(&KeyRef::from(&record)).await {
                    Ok(()) | Err(ProviderError::KeyNotFound(_)) => {}
                    Err(e) => {
                        // Kept in grace: tried again at the next run.
                        tracing::warn!(kid = %record.kid, version = version.version, error = %e,
                            "the backend did not delete a version whose grace ended");
                        continue;
                    }
                },
                Err(e) => tracing::warn!(kid = %record.kid, error = %e,
                    "retiring a version whose provider is gone; its backend key may remain"),
            }
            match self.catalog.retire(&record.id, version.version, now).await {
                Ok(_) => self.invalidate(&record.id),
                Err(e) => tracing::warn!(kid = %record.kid, error = %e, "cannot retire a version"),
            }
        }
    }

    /// Rotations committed and failed since start.
    pub fn rotation_counts(&self) -> (u64, u64) {
        (
            self.rotations[0].load(Ordering::Relaxed),
            self.rotations[1].load(Ordering::Relaxed),
        )
    }

    /// Sets the rotation policy of `kid` in `tenant`.
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn set_rotation(
        &self,
        tenant: Option<&str>,
        kid: &str,
        policy: RotationPolicy,
    ) -> Result<(), GatewayError> {
        let record = self.key(tenant, kid).await?;
        if self.catalog.set_policy(&record.id, policy).await? {
            Ok(())
        } else {
            Err(GatewayError::KeyNotFound(kid.to_owned()))
        }
    }

    /// The versions and rotation policy of `record`'s key.
    ///
    /// # Errors
    /// Catalog failures.
    pub async fn history(
        &self,
        record: &KeyRecord,
    ) -> Result<(Vec<KeyVersion>, RotationPolicy), GatewayError> {
        Ok((
            self.catalog.versions(&record.id).await?,
            self.catalog.policy(&record.id).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditFilter;
    use crate::catalog::VersionState;
    use crate::gateway::{NewKey, test_gateway};
    use crate::providers::{Alg, ToSign};

    #[tokio::test]
    async fn a_replaced_version_verifies_until_its_grace_ends_and_each_rotation_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, audit) = test_gateway(&dir, Vec::new()).await;
        let grace = Duration::from_secs(30);
        let request = NewKey {
            kid: Some("k".into()),
            alg: Some(Alg::ES384),
            rotation: RotationPolicy {
                grace: Some(grace),
                ..RotationPolicy::default()
            },
            ..NewKey::default()
        };
        gateway.create_key(Actor::default(), request).await.unwrap();
        let (old, _) = gateway
            .sign(None, "k", ToSign::Message(b"m"), None)
            .await
            .unwrap();
        let rotated = gateway.rotate(Actor::default(), "k").await.unwrap();
        assert_eq!(rotated.record.version, 2);
        assert!(rotated.certificate.is_none(), "no certificate policy");
        let (new, record) = gateway
            .sign(None, "k", ToSign::Message(b"m"), None)
            .await
            .unwrap();
        assert_eq!((record.version, record.jwk_kid().as_str()), (2, "k@v2"));
        assert!(gateway.verify(None, "k", b"m", &old).await.unwrap());
        assert!(gateway.verify(None, "k", b"m", &new).await.unwrap());

        // A rotation from a stale record loses and leaves the key as it is.
        let (versions, _) = gateway.history(&record).await.unwrap();
        assert_eq!(versions.len(), 2);
        let stale = KeyRecord {
            version: 1,
            ..(*record).clone()
        };
        let lost = gateway.rotate_record(Actor::default(), &stale).await;
        assert!(matches!(lost, Err(GatewayError::KeyExists(_))), "{lost:?}");

        gateway.end_graces(SystemTime::now()).await;
        assert!(
            gateway.verify(None, "k", b"m", &old).await.unwrap(),
            "still in grace"
        );
        gateway
            .end_graces(SystemTime::now() + grace + Duration::from_secs(1))
            .await;
        assert!(!gateway.verify(None, "k", b"m", &old).await.unwrap());
        let (versions, _) = gateway.history(&record).await.unwrap();
        assert_eq!(versions[0].state, VersionState::Retired);
        assert_eq!(
            gateway.rotation_counts(),
            (1, 0),
            "one committed, none failed"
        );
        let filter = AuditFilter {
            action: Some(Action::Rotate),
            ..AuditFilter::default()
        };
        let records = audit.page(&filter).await.unwrap();
        assert_eq!(records.len(), 1, "the lost rotation left no record here");
        assert_eq!(records[0].outcome, "ok");
    }
}
