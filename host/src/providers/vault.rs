//! The `vault` provider: HashiCorp Vault (or OpenBao) Transit. Keys are
//! `ecdsa-p256/p384/p521`, `ed25519` or `rsa-2048/3072/4096`, not exportable;
//! ECDSA signatures come back in JWS form (raw `r‖s`), RSA-PSS uses a salt as long
//! as the hash; messages above [`PREHASH_ABOVE`] are hashed here and sent with
//! `prehashed` (not Ed25519, which signs the message itself), and so are a
//! client's digests. A batch is one request with `batch_input`.
//! Import uses Transit's BYOK flow: the PKCS#8 key wrapped with an ephemeral
//! AES-256 key (KWP), that key wrapped with RSA-OAEP-SHA256 under the mount's
//! wrapping key.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::remote::{self, backend_message, retrying, transport_error};
use super::{
    Alg, Capabilities, Health, KeyMaterial, KeyRef, KeySpec, Provider, ProviderError, ProviderKind,
    ToSign,
};
use crate::config::VaultConfig;
use crate::crypto::{KeyKind, MlDsa, PrivateKey, PublicJwk, decode_base64};
use crate::redact::Redactor;

/// Messages longer than this are hashed on the host and signed as a digest.
pub const PREHASH_ABOVE: usize = 32 * 1024;

/// A Vault Transit mount.
pub struct VaultProvider {
    id: String,
    client: reqwest::Client,
    base: String,
    token: SecretString,
    /// Keeps the token out of what Vault says back.
    redactor: Redactor,
    mount: String,
    mount_ready: AtomicBool,
    capabilities: Capabilities,
}

/// An answer that is not a 2xx.
struct Refusal {
    status: StatusCode,
    message: String,
}

/// The Transit key name for a kid: the kid itself when Vault accepts it in a path,
/// else `x-` and its hex (plain names never start with `x-`, so the two never meet).
pub fn key_name(kid: &str) -> String {
    let plain = kid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !kid.starts_with("x-");
    if plain {
        kid.to_owned()
    } else {
        format!(
            "x-{}",
            kid.bytes().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

/// The Transit key type of a key for `alg` (RSA: of `rsa_bits`).
fn key_type(alg: Alg, rsa_bits: u32) -> String {
    match alg {
        Alg::ES256 => "ecdsa-p256".into(),
        Alg::ES384 => "ecdsa-p384".into(),
        Alg::ES512 => "ecdsa-p521".into(),
        Alg::EdDSA | Alg::Ed25519 => "ed25519".into(),
        Alg::RS256 | Alg::PS256 => format!("rsa-{rsa_bits}"),
        Alg::MlDsa44 => "mldsa-44".into(),
        Alg::MlDsa65 => "mldsa-65".into(),
        Alg::MlDsa87 => "mldsa-87".into(),
    }
}

/// Transit's name for the hash of an ECDSA or RSA `alg`, and the digest for
/// `prehashed` input; `None` for the algorithms that sign the message itself.
fn hash(alg: Alg) -> Option<(&'static str, &'static aws_lc_rs::digest::Algorithm)> {
    use aws_lc_rs::digest::{SHA256, SHA384, SHA512};
    match alg {
        Alg::ES384 => Some(("sha2-384", &SHA384)),
        Alg::ES512 => Some(("sha2-512", &SHA512)),
        Alg::ES256 | Alg::RS256 | Alg::PS256 => Some(("sha2-256", &SHA256)),
        Alg::EdDSA | Alg::Ed25519 | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => None,
    }
}

fn pem_body(pem: &str) -> Result<Vec<u8>, ProviderError> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD
        .decode(body.trim())
        .map_err(|_| ProviderError::Backend("Vault returned a malformed PEM key".into()))
}

impl VaultProvider {
    /// A provider named `id` for `config`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(id: String, config: VaultConfig) -> Result<Self, reqwest::Error> {
        Ok(VaultProvider {
            id,
            client: remote::client(
                remote::DEFAULT_CONNECT_TIMEOUT,
                remote::DEFAULT_TIMEOUT,
                None,
                None,
            )?,
            base: config.vault_url.as_str().trim_end_matches('/').to_owned(),
            redactor: Redactor::new([config.vault_token.expose_secret()]),
            token: config.vault_token,
            mount: config.mount.trim_matches('/').to_owned(),
            mount_ready: AtomicBool::new(false),
            capabilities: Capabilities {
                can_create: true,
                can_import: true,
                can_delete: true,
                supported_algs: Alg::ALL.to_vec(),
                default_alg: Alg::ES256,
                signs_digests: true,
                signs_in_process: false,
            },
        })
    }

    /// One request; `Ok(Err(_))` is an answer that is not a 2xx.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<Value, Refusal>, ProviderError> {
        let mut request = self
            .client
            .request(method, format!("{}/v1/{path}", self.base))
            .header("X-Vault-Token", self.token.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let unreachable = |e| transport_error("Vault", &e, &self.redactor);
        let response = crate::telemetry::traced(request)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if status.is_success() {
            let value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|_| {
                    ProviderError::Backend("Vault answered with invalid JSON".into())
                })?
            };
            Ok(Ok(value))
        } else {
            Ok(Err(Refusal {
                status,
                message: backend_message(status, &bytes, &self.redactor),
            }))
        }
    }

    /// Mounts the Transit engine if needed; returns whether this call created it.
    async fn ensure_mount(&self, force: bool) -> Result<bool, ProviderError> {
        if self.mount_ready.load(Ordering::Acquire) && !force {
            return Ok(false);
        }
        let created = match self
            .request(
                Method::POST,
                &format!("sys/mounts/{}", self.mount),
                Some(&json!({"type": "transit"})),
            )
            .await?
        {
            Ok(_) => true,
            // Vault answers 400 when the path is already mounted: that is success.
            Err(r) if r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::CONFLICT => {
                false
            }
            Err(r) => return Err(self.refused(r)),
        };
        self.mount_ready.store(true, Ordering::Release);
        Ok(created)
    }

    /// A key operation on the mount: mounts first, and on a 404 that turns out to
    /// be a missing mount (a new server, say), mounts and tries once more.
    async fn key_op(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Result<Value, Refusal>, ProviderError> {
        self.ensure_mount(false).await?;
        let path = format!("{}/{path}", self.mount);
        match self.request(method.clone(), &path, body).await? {
            Err(r) if r.status == StatusCode::NOT_FOUND => {
                if self.ensure_mount(true).await? {
                    self.request(method, &path, body).await
                } else {
                    Ok(Err(r))
                }
            }
            other => Ok(other),
        }
    }

    fn refused(&self, refusal: Refusal) -> ProviderError {
        match refusal.status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => {
                ProviderError::Backend(format!("Vault refused the token: {}", refusal.message))
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                ProviderError::Unavailable(format!("Vault: {}", refusal.message))
            }
            _ => ProviderError::Backend(format!("Vault: {}", refusal.message)),
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, ProviderError> {
        match self
            .key_op(Method::GET, &format!("keys/{name}"), None)
            .await?
        {
            Ok(_) => Ok(true),
            Err(r) if r.status == StatusCode::NOT_FOUND => Ok(false),
            Err(r) => Err(self.refused(r)),
        }
    }

    async fn public_jwk(&self, name: &str) -> Result<PublicJwk, ProviderError> {
        let key = match self
            .key_op(Method::GET, &format!("keys/{name}"), None)
            .await?
        {
            Ok(key) => key,
            Err(r) if r.status == StatusCode::NOT_FOUND => {
                return Err(ProviderError::KeyNotFound(name.to_owned()));
            }
            Err(r) => return Err(self.refused(r)),
        };
        let latest = key["data"]["latest_version"]
            .as_u64()
            .unwrap_or(1)
            .to_string();
        let public = key["data"]["keys"][&latest]["public_key"]
            .as_str()
            .ok_or_else(|| {
                ProviderError::Backend(format!("Vault key `{name}` has no public key"))
            })?;
        let unusable = |e: &dyn std::fmt::Display| {
            ProviderError::Backend(format!(
                "Vault key `{name}` has an unusable public key: {e}"
            ))
        };
        // ECDSA and RSA keys come as PEM; Ed25519 and ML-DSA keys as the base64
        // of their raw bytes.
        if public.starts_with("-----BEGIN") {
            return PublicJwk::from_spki(&pem_body(public)?).map_err(|e| unusable(&e));
        }
        let raw = decode_base64(public).map_err(|e| unusable(&e))?;
        let ml_dsa = |level| PublicJwk::ml_dsa(level, &raw);
        match key["data"]["type"].as_str() {
            Some("mldsa-44") => ml_dsa(MlDsa::L44),
            Some("mldsa-65") => ml_dsa(MlDsa::L65),
            Some("mldsa-87") => ml_dsa(MlDsa::L87),
            _ => PublicJwk::ed25519(&raw),
        }
        .map_err(|e| unusable(&e))
    }

    /// One Transit sign request (`inputs` of one: `input`; more: `batch_input`);
    /// returns the signatures in order.
    async fn sign_inputs(
        &self,
        key: &KeyRef<'_>,
        inputs: ToSign<&[&[u8]]>,
        alg: Alg,
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let hash = hash(alg);
        let messages = *inputs.bytes();
        // A batch shares `prehashed`: all are hashed here when one is large; a
        // client's digests are sent as they are.
        let hash_here = hash
            .filter(|_| !inputs.is_digest() && messages.iter().any(|m| m.len() > PREHASH_ABOVE));
        let prehash = inputs.is_digest() || hash_here.is_some();
        let encode = |message: &[u8]| match hash_here {
            Some((_, digest)) => {
                STANDARD.encode(aws_lc_rs::digest::digest(digest, message).as_ref())
            }
            None => STANDARD.encode(message),
        };
        let mut request = match messages {
            [message] => json!({"input": encode(message)}),
            _ => {
                json!({"batch_input": messages.iter().map(|m| json!({"input": encode(m)})).collect::<Vec<_>>()})
            }
        };
        if prehash {
            request["prehashed"] = true.into();
        }
        match alg.key_kind() {
            KeyKind::Ec(_) => request["marshaling_algorithm"] = "jws".into(),
            KeyKind::Rsa => {
                request["signature_algorithm"] =
                    if alg == Alg::PS256 { "pss" } else { "pkcs1v15" }.into();
                // The JOSE PS256 salt is as long as the hash; Transit's default is the longest.
                request["salt_length"] = "hash".into();
            }
            KeyKind::Ed25519 | KeyKind::MlDsa(_) => {}
        }
        let name = &key.external_id;
        let path = match hash {
            Some((hash_name, _)) => format!("sign/{name}/{hash_name}"),
            None => format!("sign/{name}"),
        };
        let answer = retrying(|| async {
            match self.key_op(Method::POST, &path, Some(&request)).await? {
                Ok(answer) => Ok(answer),
                // Transit answers 400 for a missing key; ask, rather than read the message.
                Err(r) if r.status == StatusCode::BAD_REQUEST && !self.exists(name).await? => {
                    Err(ProviderError::KeyNotFound(name.to_string()))
                }
                Err(r) => Err(self.refused(r)),
            }
        })
        .await?;
        let results = match answer["data"]["batch_results"].as_array() {
            Some(results) => results.iter().collect(),
            None => vec![&answer["data"]],
        };
        results
            .into_iter()
            .map(|result| {
                if let Some(error) = result["error"].as_str().filter(|e| !e.is_empty()) {
                    let error = self.redactor.scrub(error);
                    return Err(ProviderError::Backend(format!("Vault: {error}")));
                }
                let text = result["signature"].as_str().ok_or_else(|| {
                    ProviderError::Backend("Vault answered without a signature".into())
                })?;
                // "vault:v<version>:<base64>": base64url raw r‖s for ECDSA (jws), else standard.
                let encoded = text.rsplit(':').next().unwrap_or_default();
                decode_base64(encoded).map_err(|_| {
                    ProviderError::Backend("Vault returned a malformed signature".into())
                })
            })
            .collect()
    }
}

#[async_trait]
impl Provider for VaultProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Vault
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        let name = key_name(kid);
        let body = json!({"type": key_type(spec.alg, spec.rsa_bits), "exportable": false});
        self.key_op(Method::POST, &format!("keys/{name}"), Some(&body))
            .await?
            .map_err(|r| self.refused(r))?;
        Ok(KeyMaterial {
            public_jwk: self.public_jwk(&name).await?,
            external_id: name,
            sealed_secret: None,
        })
    }

    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        let name = key_name(kid);
        let rsa_bits = key
            .public_jwk()
            .n
            .as_deref()
            .and_then(|n| decode_base64(n).ok())
            .map_or(0, |n| n.len() * 8);
        let wrapping = self
            .key_op(Method::GET, "wrapping_key", None)
            .await?
            .map_err(|r| self.refused(r))?;
        let pem = wrapping["data"]["public_key"].as_str().ok_or_else(|| {
            ProviderError::Backend("Vault answered without a wrapping key".into())
        })?;
        let not_rsa = |_| ProviderError::Backend("Vault's wrapping key is not an RSA key".into());
        let rsa = PublicEncryptingKey::from_der(&pem_body(pem)?).map_err(not_rsa)?;
        let rsa = OaepPublicEncryptingKey::new(rsa)
            .map_err(|_| ProviderError::Backend("unusable wrapping key".into()))?;
        let pkcs8 = key.pkcs8();

        let mut ephemeral = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(ephemeral.as_mut_slice())
            .map_err(|_| ProviderError::Internal("no randomness".into()))?;
        let mut wrapped_aes = vec![0u8; rsa.ciphertext_size()];
        let wrapped_aes = rsa
            .encrypt(
                &OAEP_SHA256_MGF1SHA256,
                ephemeral.as_slice(),
                &mut wrapped_aes,
                None,
            )
            .map_err(|_| ProviderError::Internal("RSA-OAEP wrapping failed".into()))?
            .to_vec();
        let kek = AesKek::new(&AES_256, ephemeral.as_slice())
            .map_err(|_| ProviderError::Internal("bad AES key".into()))?;
        let mut wrapped_key = vec![0u8; pkcs8.len() + 16];
        let wrapped_key = kek
            .wrap_with_padding(pkcs8, &mut wrapped_key)
            .map_err(|_| ProviderError::Internal("AES key wrap failed".into()))?
            .to_vec();
        let ciphertext = STANDARD.encode([wrapped_aes, wrapped_key].concat());
        let key_type = key_type(alg, u32::try_from(rsa_bits).unwrap_or(0));
        let body = json!({"ciphertext": ciphertext, "type": key_type, "hash_function": "SHA256", "exportable": false});
        self.key_op(Method::POST, &format!("keys/{name}/import"), Some(&body))
            .await?
            .map_err(|r| self.refused(r))?;

        let public_jwk = self.public_jwk(&name).await?;
        if !public_jwk.same_key(key.public_jwk()) {
            return Err(ProviderError::Backend(format!(
                "Vault key `{name}` already exists with another key"
            )));
        }
        Ok(KeyMaterial {
            external_id: name,
            public_jwk,
            sealed_secret: None,
        })
    }

    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let alg = key.alg;
        let mut signatures = self
            .sign_inputs(key, input.with(&[*input.bytes()][..]), alg)
            .await?;
        signatures
            .pop()
            .ok_or_else(|| ProviderError::Backend("Vault answered without a signature".into()))
    }

    /// One Transit request with `batch_input`.
    async fn sign_batch(
        &self,
        key: &KeyRef<'_>,
        inputs: ToSign<&[Vec<u8>]>,
    ) -> Result<Vec<Vec<u8>>, ProviderError> {
        let alg = key.alg;
        let items: Vec<&[u8]> = inputs.bytes().iter().map(Vec::as_slice).collect();
        self.sign_inputs(key, inputs.with(&items[..]), alg).await
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        let name = &key.external_id;
        let allow = json!({"deletion_allowed": true});
        match self
            .key_op(Method::POST, &format!("keys/{name}/config"), Some(&allow))
            .await?
        {
            Ok(_) => {}
            Err(r) if r.status == StatusCode::NOT_FOUND => return Ok(()),
            // Transit answers 400 when the key does not exist.
            Err(r) if r.status == StatusCode::BAD_REQUEST && !self.exists(name).await? => {
                return Ok(());
            }
            Err(r) => return Err(self.refused(r)),
        }
        match self
            .key_op(Method::DELETE, &format!("keys/{name}"), None)
            .await?
        {
            Ok(_) => Ok(()),
            Err(r) if r.status == StatusCode::NOT_FOUND => Ok(()),
            Err(r) => Err(self.refused(r)),
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let result = retrying(|| async {
            match self
                .request(Method::GET, "sys/health?standbyok=true", None)
                .await?
            {
                Ok(_) => Ok(()),
                Err(r) => Err(ProviderError::Unavailable(match r.status.as_u16() {
                    501 => "Vault is not initialised".to_owned(),
                    503 => "Vault is sealed".to_owned(),
                    _ => r.message,
                })),
            }
        })
        .await;
        Health::of(started, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_path_safe_and_distinct() {
        assert_eq!(key_name("issuer-1.v2_x"), "issuer-1.v2_x");
        assert_eq!(key_name("a:b"), "x-613a62");
        assert_eq!(key_name("x-613a62"), "x-782d363133613632");
        assert_ne!(key_name("a:b"), key_name("x-613a62"));
    }
}
