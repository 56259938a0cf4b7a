//! The `aws-kms` provider: AWS KMS (or a stand-in at `endpoint`) through
//! aws-sdk-kms. Keys are `ECC_NIST_P256/P384/P521` or `RSA_2048/3072/4096`,
//! `SIGN_VERIFY`, tagged with the kid, the provider id and `ManagedBy=kmsgw`. Sign
//! sends the message `RAW` when it is 1 to 4096 bytes (the KMS limits) and a host
//! digest (`DIGEST`) otherwise; KMS answers ECDSA in DER, which becomes raw `r‖s`. Import is
//! not possible for asymmetric KMS keys; Ed25519 is left out (not every KMS, and
//! not the stand-in, has it).

use std::time::Instant;

use async_trait::async_trait;
use aws_sdk_kms::Client;
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    KeySpec as AwsKeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag,
};
use secrecy::ExposeSecret;

use super::remote::{self, retrying};
use super::{
    Alg, Capabilities, Health, KeyMaterial, KeyRef, KeySpec, Provider, ProviderError, ProviderKind,
    ToSign,
};
use crate::config::AwsKmsConfig;
use crate::crypto::{KeyKind, PrivateKey, PublicJwk, ecdsa_der_to_raw};

/// Largest message KMS signs as `RAW`.
pub const RAW_LIMIT: usize = 4096;
/// Pending window of a scheduled deletion (the minimum KMS allows).
const DELETION_WINDOW_DAYS: i32 = 7;

/// An AWS KMS region (or stand-in).
pub struct AwsKmsProvider {
    id: String,
    client: Client,
    capabilities: Capabilities,
}

fn sdk_error<E, R>(op: &str, e: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &e {
        SdkError::TimeoutError(_) => ProviderError::Timeout,
        SdkError::DispatchFailure(failure) if failure.is_timeout() => ProviderError::Timeout,
        SdkError::DispatchFailure(_) => ProviderError::Unavailable(format!(
            "AWS KMS unreachable during {op}: {}",
            DisplayErrorContext(&e)
        )),
        SdkError::ServiceError(service) => {
            let err = service.err();
            let detail = format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("")
            );
            // AWS error codes are stable identifiers of the API, not free text.
            match err.code() {
                Some("NotFoundException") => ProviderError::KeyNotFound(detail),
                _ => ProviderError::Backend(format!("AWS KMS {op}: {detail}")),
            }
        }
        _ => ProviderError::Backend(format!("AWS KMS {op}: {}", DisplayErrorContext(&e))),
    }
}

fn tag(key: &str, value: &str) -> Result<Tag, ProviderError> {
    Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .map_err(|e| ProviderError::Internal(e.to_string()))
}

/// A client for `config`: static credentials when both keys are given, else
/// the SDK's default credential chain; our timeouts, no SDK retries.
pub(crate) async fn client(config: &AwsKmsConfig) -> Client {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(remote::DEFAULT_CONNECT_TIMEOUT)
        .operation_attempt_timeout(remote::DEFAULT_TIMEOUT)
        .build();
    let region = Region::new(config.region.clone());
    let mut builder = match (&config.access_key_id, &config.secret_access_key) {
        (Some(key_id), Some(secret)) => aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(Credentials::new(
                key_id,
                secret.expose_secret(),
                None,
                None,
                "kms.json",
            )),
        _ => {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(region)
                .load()
                .await;
            aws_sdk_kms::config::Builder::from(&shared)
        }
    };
    // Retries are ours to choose: only for calls that are safe to repeat.
    builder = builder
        .timeout_config(timeouts)
        .retry_config(RetryConfig::disabled());
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
    }
    Client::from_conf(builder.build())
}

impl AwsKmsProvider {
    /// A provider named `id`: static credentials when both keys are given, else the
    /// SDK's default credential chain.
    pub async fn new(id: String, config: AwsKmsConfig) -> Self {
        AwsKmsProvider {
            id,
            client: client(&config).await,
            capabilities: Capabilities {
                can_create: true,
                can_import: false,
                can_delete: true,
                supported_algs: vec![
                    Alg::ES256,
                    Alg::ES384,
                    Alg::ES512,
                    Alg::RS256,
                    Alg::PS256,
                    Alg::MlDsa44,
                    Alg::MlDsa65,
                    Alg::MlDsa87,
                ],
                default_alg: Alg::ES256,
                signs_digests: true,
                signs_in_process: false,
            },
        }
    }

    async fn public_jwk(&self, key_id: &str) -> Result<PublicJwk, ProviderError> {
        let answer = retrying(|| async {
            self.client
                .get_public_key()
                .key_id(key_id)
                .send()
                .await
                .map_err(|e| sdk_error("GetPublicKey", e))
        })
        .await?;
        let der = answer
            .public_key()
            .ok_or_else(|| ProviderError::Backend("AWS KMS returned no public key".into()))?;
        PublicJwk::from_spki(der.as_ref()).map_err(|e| {
            ProviderError::Backend(format!("AWS KMS returned an unusable public key: {e}"))
        })
    }
}

/// The KMS key spec of a new key.
fn key_spec(spec: KeySpec) -> Result<AwsKeySpec, ProviderError> {
    Ok(match (spec.alg, spec.rsa_bits) {
        (Alg::ES256, _) => AwsKeySpec::EccNistP256,
        (Alg::ES384, _) => AwsKeySpec::EccNistP384,
        (Alg::ES512, _) => AwsKeySpec::EccNistP521,
        (Alg::RS256 | Alg::PS256, 3072) => AwsKeySpec::Rsa3072,
        (Alg::RS256 | Alg::PS256, 4096) => AwsKeySpec::Rsa4096,
        (Alg::RS256 | Alg::PS256, _) => AwsKeySpec::Rsa2048,
        (Alg::MlDsa44, _) => AwsKeySpec::MlDsa44,
        (Alg::MlDsa65, _) => AwsKeySpec::MlDsa65,
        (Alg::MlDsa87, _) => AwsKeySpec::MlDsa87,
        (alg @ (Alg::EdDSA | Alg::Ed25519), _) => {
            return Err(ProviderError::Unsupported(format!(
                "aws-kms does not support {alg}"
            )));
        }
    })
}

/// What AWS KMS's Sign takes for one input under `key`: the signing
/// algorithm, the message type and the bytes. ECDSA and RSA send 1 to 4096
/// bytes `RAW`, else their digest, and a client's digest as `DIGEST`; ML-DSA
/// sends 1 to 4096 bytes `RAW`, else FIPS 204's μ (`EXTERNAL_MU`), which it has
/// no digest form instead of.
fn sign_input(
    key: &KeyRef<'_>,
    input: ToSign<&[u8]>,
) -> Result<(SigningAlgorithmSpec, MessageType, Vec<u8>), ProviderError> {
    let algorithm = match key.alg {
        Alg::ES256 => SigningAlgorithmSpec::EcdsaSha256,
        Alg::ES384 => SigningAlgorithmSpec::EcdsaSha384,
        Alg::ES512 => SigningAlgorithmSpec::EcdsaSha512,
        Alg::RS256 => SigningAlgorithmSpec::RsassaPkcs1V15Sha256,
        Alg::PS256 => SigningAlgorithmSpec::RsassaPssSha256,
        Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => SigningAlgorithmSpec::MlDsaShake256,
        alg @ (Alg::EdDSA | Alg::Ed25519) => {
            return Err(ProviderError::Unsupported(format!(
                "aws-kms does not support {alg}"
            )));
        }
    };
    let (kind, bytes) = match (input, key.alg.prehash()) {
        (ToSign::Message(message), _) if (1..=RAW_LIMIT).contains(&message.len()) => {
            (MessageType::Raw, message.to_vec())
        }
        (ToSign::Message(message), Some(hash)) => (
            MessageType::Digest,
            aws_lc_rs::digest::digest(hash, message).as_ref().to_vec(),
        ),
        (ToSign::Message(message), None) => {
            let mu = key.public_jwk.ml_dsa_mu(message).map_err(|e| {
                ProviderError::Internal(format!("cannot compute the ML-DSA μ: {e}"))
            })?;
            (MessageType::ExternalMu, mu.to_vec())
        }
        (ToSign::Digest(digest), Some(_)) => (MessageType::Digest, digest.to_vec()),
        (ToSign::Digest(_), None) => {
            return Err(ProviderError::Unsupported(format!(
                "{} signs the message itself, not a digest",
                key.alg
            )));
        }
    };
    Ok((algorithm, kind, bytes))
}

#[async_trait]
impl Provider for AwsKmsProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::AwsKms
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        let created = self
            .client
            .create_key()
            .key_spec(key_spec(spec)?)
            .key_usage(KeyUsageType::SignVerify)
            .description(format!("kmsgw key {kid}"))
            .tags(tag("kid", kid)?)
            .tags(tag("ProviderId", &self.id)?)
            .tags(tag("ManagedBy", "kmsgw")?)
            .send()
            .await
            .map_err(|e| sdk_error("CreateKey", e))?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_owned())
            .ok_or_else(|| {
                ProviderError::Backend("AWS KMS answered CreateKey without a key id".into())
            })?;
        match self.public_jwk(&key_id).await {
            Ok(public_jwk) => Ok(KeyMaterial {
                external_id: key_id,
                public_jwk,
                sealed_secret: None,
            }),
            Err(e) => {
                let _ = self
                    .client
                    .schedule_key_deletion()
                    .key_id(&key_id)
                    .pending_window_in_days(DELETION_WINDOW_DAYS)
                    .send()
                    .await;
                Err(e)
            }
        }
    }

    async fn import_key(
        &self,
        _kid: &str,
        _key: &PrivateKey,
        _alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "provider `{}` cannot import keys: AWS KMS does not accept imported asymmetric key material; create the key in AWS KMS instead",
            self.id
        )))
    }

    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let alg = key.alg;
        let (algorithm, kind, input) = sign_input(key, input)?;
        let answer = retrying(|| async {
            self.client
                .sign()
                .key_id(key.external_id)
                .message(Blob::new(input.clone()))
                .message_type(kind.clone())
                .signing_algorithm(algorithm.clone())
                .send()
                .await
                .map_err(|e| sdk_error("Sign", e))
        })
        .await?;
        let der = answer.signature().ok_or_else(|| {
            ProviderError::Backend("AWS KMS answered Sign without a signature".into())
        })?;
        if matches!(alg.key_kind(), KeyKind::Rsa | KeyKind::MlDsa(_)) {
            return Ok(der.as_ref().to_vec());
        }
        ecdsa_der_to_raw(alg, der.as_ref()).map_err(|e| {
            ProviderError::Backend(format!("AWS KMS returned an unusable signature: {e}"))
        })
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        let result = self
            .client
            .schedule_key_deletion()
            .key_id(key.external_id)
            .pending_window_in_days(DELETION_WINDOW_DAYS)
            .send()
            .await;
        match result.map_err(|e| sdk_error("ScheduleKeyDeletion", e)) {
            Ok(_) | Err(ProviderError::KeyNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let result = retrying(|| async {
            self.client
                .list_keys()
                .limit(1)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| sdk_error("ListKeys", e))
        })
        .await;
        Health::of(started, result)
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn key_ref<'a>(alg: Alg, public_jwk: &'a PublicJwk) -> KeyRef<'a> {
        KeyRef {
            key_id: "k",
            version_id: Cow::Borrowed("k"),
            external_id: "external",
            alg,
            public_jwk,
            sealed: None,
        }
    }

    #[test]
    fn ml_dsa_sends_raw_up_to_4096_bytes_and_external_mu_otherwise() {
        let key = PrivateKey::generate(Alg::MlDsa65, None).unwrap();
        let key = key_ref(Alg::MlDsa65, key.public_jwk());
        for (len, expected) in [
            (0, MessageType::ExternalMu),
            (1, MessageType::Raw),
            (4096, MessageType::Raw),
            (4097, MessageType::ExternalMu),
        ] {
            let message = vec![7u8; len];
            let (algorithm, kind, input) = sign_input(&key, ToSign::Message(&message)).unwrap();
            assert_eq!(algorithm, SigningAlgorithmSpec::MlDsaShake256);
            assert_eq!(kind, expected, "{len} bytes");
            let sent = if kind == MessageType::Raw {
                message.clone()
            } else {
                key.public_jwk.ml_dsa_mu(&message).unwrap().to_vec()
            };
            assert_eq!(input, sent, "{len} bytes");
        }
        // μ depends on the key and the message.
        let other = PrivateKey::generate(Alg::MlDsa65, None).unwrap();
        assert_ne!(
            key.public_jwk.ml_dsa_mu(b"m").unwrap(),
            other.public_jwk().ml_dsa_mu(b"m").unwrap()
        );
        assert_ne!(
            key.public_jwk.ml_dsa_mu(b"m").unwrap(),
            key.public_jwk.ml_dsa_mu(b"n").unwrap()
        );
    }

    #[test]
    fn ecdsa_and_rsa_send_a_digest_past_4096_bytes_or_a_clients_digest_and_eddsa_is_refused() {
        let key = PrivateKey::generate(Alg::ES384, None).unwrap();
        let key = key_ref(Alg::ES384, key.public_jwk());
        let (_, kind, input) = sign_input(&key, ToSign::Message(&[1; 5000])).unwrap();
        assert_eq!((kind, input.len()), (MessageType::Digest, 48));
        // A client's digest goes as it is.
        let (_, kind, input) = sign_input(&key, ToSign::Digest(&[2; 48])).unwrap();
        assert_eq!((kind, input), (MessageType::Digest, vec![2; 48]));
        let ed = PrivateKey::generate(Alg::Ed25519, None).unwrap();
        let ed = key_ref(Alg::Ed25519, ed.public_jwk());
        assert!(matches!(
            sign_input(&ed, ToSign::Message(b"m")),
            Err(ProviderError::Unsupported(_))
        ));
        let ml = PrivateKey::generate(Alg::MlDsa44, None).unwrap();
        let ml = key_ref(Alg::MlDsa44, ml.public_jwk());
        assert!(matches!(
            sign_input(&ml, ToSign::Digest(&[0; 32])),
            Err(ProviderError::Unsupported(_))
        ));
    }
}
