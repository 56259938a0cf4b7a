//! Signing: one message or a batch with a key's current version, every
//! signature a backend makes checked against the key before it is handed out,
//! and verification against a key's published versions.

use std::sync::Arc;

use super::{Gateway, GatewayError, Registry};
use crate::catalog::{KeyRecord, VersionState};
use crate::crypto::KeyKind;
use crate::providers::{Alg, KeyRef, Provider, ProviderError};

impl Gateway {
    /// Signs `message` with `kid` of `tenant`; `alg`, when given, must be the key's
    /// algorithm. Returns the signature and the key's record.
    ///
    /// # Errors
    /// Unknown kid, algorithm mismatch, backend failures.
    pub async fn sign(
        &self,
        tenant: Option<&str>,
        kid: &str,
        message: &[u8],
        alg: Option<Alg>,
    ) -> Result<(Vec<u8>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        let started = std::time::Instant::now();
        let signature = provider
            .sign(&KeyRef::from(&*record), message)
            .await
            .map_err(|e| self.sign_failed(&record, e))?;
        self.check_signature(provider.as_ref(), &record, message, &signature)?;
        registry.sign_timers[index].observe(started.elapsed().as_secs_f64());
        self.usage.record(&record.id, 1);
        Ok((signature, record))
    }

    /// Signs every one of `messages` with `kid` of `tenant`, in order, with one key
    /// lookup: the provider signs the batch the best way its backend allows.
    ///
    /// # Errors
    /// As [`Gateway::sign`]; one failed message fails the batch.
    pub async fn sign_batch(
        &self,
        tenant: Option<&str>,
        kid: &str,
        messages: &[Vec<u8>],
        alg: Option<Alg>,
    ) -> Result<(Vec<Vec<u8>>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        let started = std::time::Instant::now();
        let signatures = provider
            .sign_batch(&KeyRef::from(&*record), messages)
            .await
            .map_err(|e| self.sign_failed(&record, e))?;
        if signatures.len() != messages.len() {
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned {} signatures for {} messages",
                provider.id(),
                signatures.len(),
                messages.len()
            ))
            .into());
        }
        for (message, signature) in messages.iter().zip(&signatures) {
            self.check_signature(provider.as_ref(), &record, message, signature)?;
        }
        registry.sign_timers[index].observe(started.elapsed().as_secs_f64());
        self.usage.record(&record.id, messages.len() as u64);
        Ok((signatures, record))
    }

    /// The record of a key about to sign, and the registry and index of its provider.
    pub(super) async fn signing_key(
        &self,
        tenant: Option<&str>,
        kid: &str,
        alg: Option<Alg>,
    ) -> Result<(Arc<KeyRecord>, Arc<Registry>, usize), GatewayError> {
        let record = self.key(tenant, kid).await?;
        if let Some(alg) = alg
            && !record.alg.answers_to(alg)
        {
            return Err(GatewayError::InvalidInput(format!(
                "key `{kid}` is a {} key and cannot sign with {alg}",
                record.alg
            )));
        }
        let registry = self.registry.load_full();
        let index = registry.index_of_record(&record)?;
        Ok((record, registry, index))
    }

    pub(super) fn sign_failed(&self, record: &KeyRecord, error: ProviderError) -> GatewayError {
        match error {
            ProviderError::KeyNotFound(_) => {
                // The backend lost it, or another replica deleted it: forget it here too.
                self.invalidate(&record.id);
                GatewayError::KeyNotFound(record.kid.clone())
            }
            e => e.into(),
        }
    }

    /// A backend that lies, or a wrong conversion of its answer, must never hand a
    /// client a bad signature. `db` signs here, in-process, and is not checked again.
    pub(super) fn check_signature(
        &self,
        provider: &dyn Provider,
        record: &KeyRecord,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), GatewayError> {
        // A key the gateway holds signs through a library that checks itself.
        if provider.capabilities().signs_in_process {
            return Ok(());
        }
        let kid = &record.kid;
        if let Some(expected) = record.public_jwk.signature_len(record.alg)
            && signature.len() != expected
        {
            tracing::error!(
                provider = provider.id(),
                kid,
                len = signature.len(),
                expected,
                "backend signature has the wrong length"
            );
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a {}-byte signature; {} signatures of this key are {expected} bytes{}",
                provider.id(),
                signature.len(),
                record.alg,
                if matches!(record.alg.key_kind(), KeyKind::Ec(_)) { " (raw r‖s, not DER)" } else { "" }
            ))
            .into());
        }
        if !record.public_jwk.verify(record.alg, message, signature) {
            tracing::error!(
                provider = provider.id(),
                kid,
                len = signature.len(),
                "backend signature does not verify against the key's public JWK"
            );
            return Err(ProviderError::Backend(format!(
                "provider `{}` returned a signature that does not verify against the key's public JWK",
                provider.id()
            ))
            .into());
        }
        Ok(())
    }

    /// Whether `signature` of `message` verifies with a published version of
    /// `kid` in `tenant` (the current one or one in grace).
    ///
    /// # Errors
    /// Unknown kid, catalog failures.
    pub async fn verify(
        &self,
        tenant: Option<&str>,
        kid: &str,
        message: &[u8],
        signature: &[u8],
    ) -> Result<bool, GatewayError> {
        let record = self.key(tenant, kid).await?;
        if record.public_jwk.verify(record.alg, message, signature) {
            return Ok(true);
        }
        Ok(self
            .catalog
            .versions(&record.id)
            .await?
            .iter()
            .filter(|v| v.state == VersionState::Grace)
            .any(|v| v.public_jwk.verify(record.alg, message, signature)))
    }
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use crate::audit::Actor;
    use crate::crypto::PrivateKey;
    use crate::gateway::{NewKey, Registered, test_gateway};
    use crate::providers::{Capabilities, Health, KeyMaterial, KeySpec, ProviderKind};

    /// A backend that holds a real key but returns a signature of another message.
    struct Liar {
        key: PrivateKey,
        capabilities: Capabilities,
    }

    #[async_trait]
    impl Provider for Liar {
        fn id(&self) -> &str {
            "liar"
        }
        fn kind(&self) -> ProviderKind {
            ProviderKind::Http
        }
        fn capabilities(&self) -> &Capabilities {
            &self.capabilities
        }
        async fn generate_key(&self, kid: &str, _: KeySpec) -> Result<KeyMaterial, ProviderError> {
            Ok(KeyMaterial {
                external_id: kid.into(),
                public_jwk: self.key.public_jwk().clone(),
                sealed_secret: None,
            })
        }
        async fn import_key(
            &self,
            _: &str,
            _: &PrivateKey,
            _: Alg,
        ) -> Result<KeyMaterial, ProviderError> {
            Err(ProviderError::Unsupported("no".into()))
        }
        async fn sign(&self, key: &KeyRef<'_>, message: &[u8]) -> Result<Vec<u8>, ProviderError> {
            let mut other = message.to_vec();
            other.push(b'!');
            Ok(self.key.signer(key.alg).unwrap().sign(&other))
        }
        async fn delete_key(&self, _: &KeyRef<'_>) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn health(&self) -> Health {
            Health::of(std::time::Instant::now(), Ok::<(), String>(()))
        }
    }

    #[tokio::test]
    async fn a_signature_the_backend_got_wrong_is_never_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let liar = Liar {
            key: PrivateKey::generate(Alg::ES256, None).unwrap(),
            capabilities: Capabilities {
                can_create: true,
                can_import: false,
                can_delete: true,
                supported_algs: vec![Alg::ES256],
                default_alg: Alg::ES256,
                signs_in_process: false,
            },
        };
        let registered = Registered {
            provider: Arc::new(liar),
            description: None,
        };
        let (gateway, _) = test_gateway(&dir, vec![registered]).await;
        let request = NewKey {
            kid: Some("k".into()),
            provider: Some("liar".into()),
            ..NewKey::default()
        };
        gateway.create_key(Actor::default(), request).await.unwrap();
        let refused = gateway.sign(None, "k", b"message", None).await;
        assert!(
            matches!(&refused, Err(GatewayError::Provider(ProviderError::Backend(m))) if m.contains("does not verify")),
            "{refused:?}"
        );
        let batch = gateway
            .sign_batch(None, "k", &[b"a".to_vec(), b"b".to_vec()], None)
            .await;
        assert!(batch.is_err());
    }

    #[tokio::test]
    async fn signs_verify_against_the_key_and_a_wrong_alg_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        let request = NewKey {
            kid: Some("k".into()),
            alg: Some(Alg::EdDSA),
            ..NewKey::default()
        };
        let record = gateway.create_key(Actor::default(), request).await.unwrap();
        let (signature, _) = gateway.sign(None, "k", b"m", None).await.unwrap();
        assert!(record.public_jwk.verify(Alg::EdDSA, b"m", &signature));
        assert!(gateway.verify(None, "k", b"m", &signature).await.unwrap());
        assert!(
            !gateway
                .verify(None, "k", b"other", &signature)
                .await
                .unwrap()
        );
        let wrong = gateway.sign(None, "k", b"m", Some(Alg::ES256)).await;
        assert!(
            matches!(wrong, Err(GatewayError::InvalidInput(_))),
            "{wrong:?}"
        );
        let unknown = gateway.sign(None, "k\0", b"m", None).await;
        assert!(matches!(unknown, Err(GatewayError::KeyNotFound(_))));
        let (batch, _) = gateway
            .sign_batch(None, "k", &[b"x".to_vec(), b"y".to_vec()], None)
            .await
            .unwrap();
        assert!(record.public_jwk.verify(Alg::EdDSA, b"y", &batch[1]));
    }
}
