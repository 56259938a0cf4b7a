//! Signing: one message or digest, or a batch, with a key's current version,
//! every signature a backend makes checked against the key before it is handed
//! out, and verification against a key's published versions.

use std::sync::Arc;

use tracing::Instrument as _;

use super::{Gateway, GatewayError, Registry};
use crate::catalog::{KeyRecord, VersionState};
use crate::crypto::KeyKind;
use crate::providers::{Alg, KeyRef, Provider, ProviderError, ToSign};

impl Gateway {
    /// Signs a message, or a client's digest of one, with `kid` of `tenant`;
    /// `alg`, when given, must be the key's algorithm. Returns the signature and
    /// the key's record.
    ///
    /// # Errors
    /// Unknown kid, algorithm mismatch, a digest the key cannot sign, backend failures.
    pub async fn sign(
        &self,
        tenant: Option<&str>,
        kid: &str,
        input: ToSign<&[u8]>,
        alg: Option<Alg>,
    ) -> Result<(Vec<u8>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        if input.is_digest() {
            digests_allowed(provider.as_ref(), &record, &[input.bytes()])?;
        }
        let started = std::time::Instant::now();
        let signature = provider
            .sign(&KeyRef::from(&*record), input)
            .instrument(backend_span(provider.as_ref(), "sign"))
            .await
            .map_err(|e| self.sign_failed(&record, e))?;
        self.check_signature(provider.as_ref(), &record, input, &signature)?;
        registry.sign_timers[index].observe(started.elapsed().as_secs_f64());
        self.usage.record(&record.id, 1);
        Ok((signature, record))
    }

    /// Signs every one of `inputs` (messages, or a client's digests) with `kid`
    /// of `tenant`, in order, with one key lookup: the provider signs the batch
    /// the best way its backend allows.
    ///
    /// # Errors
    /// As [`Gateway::sign`]; one failed input fails the batch.
    pub async fn sign_batch(
        &self,
        tenant: Option<&str>,
        kid: &str,
        inputs: ToSign<&[Vec<u8>]>,
        alg: Option<Alg>,
    ) -> Result<(Vec<Vec<u8>>, Arc<KeyRecord>), GatewayError> {
        let (record, registry, index) = self.signing_key(tenant, kid, alg).await?;
        let provider = &registry.providers[index].provider;
        let messages = *inputs.bytes();
        if inputs.is_digest() {
            let digests: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
            digests_allowed(provider.as_ref(), &record, &digests)?;
        }
        let started = std::time::Instant::now();
        let signatures = provider
            .sign_batch(&KeyRef::from(&*record), inputs)
            .instrument(backend_span(provider.as_ref(), "sign_batch"))
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
            let input = inputs.with(message.as_slice());
            self.check_signature(provider.as_ref(), &record, input, signature)?;
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
        crate::telemetry::record_key(kid, &record.provider, record.alg.as_str());
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
        input: ToSign<&[u8]>,
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
        if !record.public_jwk.verify_input(record.alg, input, signature) {
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

    /// Whether `record`'s key can sign a client's digest: its algorithm signs
    /// over a hash and its provider (as configured now) signs digests.
    pub fn signs_digests(&self, record: &KeyRecord) -> bool {
        let registry = self.registry.load();
        record.alg.prehash().is_some()
            && registry.index_of_record(record).is_ok_and(|index| {
                registry.providers[index]
                    .provider
                    .capabilities()
                    .signs_digests
            })
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

/// Refuses digests a key cannot sign: one whose algorithm signs the message
/// itself (400), one of another length than its hash (400), or one on a
/// provider that signs only messages (405).
fn digests_allowed(
    provider: &dyn Provider,
    record: &KeyRecord,
    digests: &[&[u8]],
) -> Result<(), GatewayError> {
    let alg = record.alg;
    let Some(hash) = alg.prehash() else {
        return Err(GatewayError::DigestNotSupported(format!(
            "key `{}` is a {alg} key; {alg} signs the message itself and has no pre-hashed form: send `data`",
            record.kid
        )));
    };
    let expected = hash.output_len;
    if let Some((i, digest)) = digests
        .iter()
        .enumerate()
        .find(|(_, d)| d.len() != expected)
    {
        let which = if digests.len() == 1 {
            "the digest".to_owned()
        } else {
            format!("digest {i}")
        };
        return Err(GatewayError::InvalidDigest(format!(
            "{which} is {} bytes; a {alg} digest is the {expected}-byte {} hash of the message",
            digest.len(),
            match expected {
                32 => "SHA-256",
                48 => "SHA-384",
                _ => "SHA-512",
            }
        )));
    }
    if !provider.capabilities().signs_digests {
        return Err(GatewayError::Unsupported(format!(
            "provider `{}` signs messages only, not digests: send `data`",
            provider.id()
        )));
    }
    Ok(())
}

/// The span of one call into a provider's backend (native or guest).
fn backend_span(provider: &dyn Provider, operation: &'static str) -> tracing::Span {
    crate::span!(
        "provider.call",
        otel.name = format!("{} {operation}", provider.kind().as_str()),
        provider.id = provider.id(),
        provider.type = provider.kind().as_str(),
        provider.operation = operation,
    )
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
        async fn sign(
            &self,
            key: &KeyRef<'_>,
            input: ToSign<&[u8]>,
        ) -> Result<Vec<u8>, ProviderError> {
            let mut other = input.bytes().to_vec();
            other[0] ^= 1;
            let signer = self.key.signer(key.alg).unwrap();
            Ok(signer.sign_input(key.alg, input.with(&other)).unwrap())
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
                signs_digests: true,
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
        let refused = gateway
            .sign(None, "k", ToSign::Message(b"message"), None)
            .await;
        assert!(
            matches!(&refused, Err(GatewayError::Provider(ProviderError::Backend(m))) if m.contains("does not verify")),
            "{refused:?}"
        );
        let batch = gateway
            .sign_batch(
                None,
                "k",
                ToSign::Message(&[b"a".to_vec(), b"b".to_vec()][..]),
                None,
            )
            .await;
        assert!(batch.is_err());
        let digest = [7u8; 32];
        let refused = gateway.sign(None, "k", ToSign::Digest(&digest), None).await;
        assert!(
            matches!(&refused, Err(GatewayError::Provider(ProviderError::Backend(m))) if m.contains("does not verify")),
            "{refused:?}"
        );
    }

    #[tokio::test]
    async fn digests_sign_as_their_message_and_the_wrong_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        for (kid, alg) in [("ec", Alg::ES384), ("rsa", Alg::PS256), ("ed", Alg::EdDSA)] {
            let request = NewKey {
                kid: Some(kid.into()),
                alg: Some(alg),
                ..NewKey::default()
            };
            gateway.create_key(Actor::default(), request).await.unwrap();
        }
        let hash = |alg: Alg| aws_lc_rs::digest::digest(alg.prehash().unwrap(), b"doc");
        for (kid, alg) in [("ec", Alg::ES384), ("rsa", Alg::PS256)] {
            let digest = hash(alg);
            let digest = ToSign::Digest(digest.as_ref());
            let (signature, record) = gateway.sign(None, kid, digest, None).await.unwrap();
            assert!(record.public_jwk.verify(alg, b"doc", &signature), "{alg}");
            let batch = [hash(alg).as_ref().to_vec(), hash(alg).as_ref().to_vec()];
            let (signatures, _) = gateway
                .sign_batch(None, kid, ToSign::Digest(&batch[..]), None)
                .await
                .unwrap();
            assert!(
                record.public_jwk.verify(alg, b"doc", &signatures[1]),
                "{alg}"
            );
        }
        let short = gateway
            .sign(None, "ec", ToSign::Digest(&[0; 32]), None)
            .await;
        assert!(
            matches!(short, Err(GatewayError::InvalidDigest(_))),
            "{short:?}"
        );
        let batch = [vec![0; 32], vec![0; 31]];
        let short = gateway
            .sign_batch(None, "rsa", ToSign::Digest(&batch[..]), None)
            .await;
        assert!(
            matches!(&short, Err(GatewayError::InvalidDigest(m)) if m.starts_with("digest 1 is 31 bytes")),
            "{short:?}"
        );
        let ed = gateway
            .sign(None, "ed", ToSign::Digest(&[0; 32]), None)
            .await;
        assert!(
            matches!(ed, Err(GatewayError::DigestNotSupported(_))),
            "{ed:?}"
        );
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
        let (signature, _) = gateway
            .sign(None, "k", ToSign::Message(b"m"), None)
            .await
            .unwrap();
        assert!(record.public_jwk.verify(Alg::EdDSA, b"m", &signature));
        assert!(gateway.verify(None, "k", b"m", &signature).await.unwrap());
        assert!(
            !gateway
                .verify(None, "k", b"other", &signature)
                .await
                .unwrap()
        );
        let wrong = gateway
            .sign(None, "k", ToSign::Message(b"m"), Some(Alg::ES256))
            .await;
        assert!(
            matches!(wrong, Err(GatewayError::InvalidInput(_))),
            "{wrong:?}"
        );
        let unknown = gateway.sign(None, "k\0", ToSign::Message(b"m"), None).await;
        assert!(matches!(unknown, Err(GatewayError::KeyNotFound(_))));
        let (batch, _) = gateway
            .sign_batch(
                None,
                "k",
                ToSign::Message(&[b"x".to_vec(), b"y".to_vec()][..]),
                None,
            )
            .await
            .unwrap();
        assert!(record.public_jwk.verify(Alg::EdDSA, b"y", &batch[1]));
    }
}
