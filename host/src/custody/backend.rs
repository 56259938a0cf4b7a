//! The seals: what wraps each generation of the master key. `file` is a key
//! in the data directory (or `KMSGW_MASTER_KEY`); the others call a KMS or an
//! HSM that never gives its key out: Vault Transit's encrypt/decrypt, AWS KMS's
//! Encrypt/Decrypt, AES-GCM on a PKCS#11 token.

use std::path::{Path, PathBuf};

use aws_sdk_kms::primitives::Blob;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::CustodyError;
use crate::config::{Pkcs11Seal, SealConfig, VaultTransitSeal};
use crate::crypto::seal::{self, KEY_LEN, KeyBytes};
use crate::providers::{ProviderError, remote};
use crate::redact::Redactor;

/// The name of the master key file in the data directory.
pub const KEY_FILE: &str = "master.key";

/// A configured seal.
pub enum Seal {
    File(FileSeal),
    VaultTransit(VaultSeal),
    AwsKms(AwsSeal),
    Pkcs11(Pkcs11SealKey),
}

/// The file seal's key, and where it came from.
pub struct FileSeal {
    key: KeyBytes,
    /// The key file, or `None` when the key came from `KMSGW_MASTER_KEY`.
    pub path: Option<PathBuf>,
}

/// A Vault Transit key.
pub struct VaultSeal {
    client: reqwest::Client,
    config: VaultTransitSeal,
    redactor: Redactor,
}

/// An AWS KMS key.
pub struct AwsSeal {
    client: aws_sdk_kms::Client,
    key_id: String,
}

/// An AES key on a PKCS#11 token.
pub struct Pkcs11SealKey {
    config: Pkcs11Seal,
}

/// Where a file seal's key comes from.
pub enum KeySource<'a> {
    /// `KMSGW_MASTER_KEY`.
    Env(&'a SecretString),
    /// The data directory's key file, made with a new key when absent.
    FileOrNew(&'a Path),
    /// The data directory's key file, which must exist.
    File(&'a Path),
    /// A new key file, which must not exist yet.
    NewFile(&'a Path),
}

impl Seal {
    /// The seal `config` describes; a file seal's key from `source`.
    ///
    /// # Errors
    /// A key file or key that cannot be read or made, an HTTP client that cannot be built.
    pub async fn open(config: &SealConfig, source: KeySource<'_>) -> Result<Seal, CustodyError> {
        Ok(match config {
            SealConfig::File => Seal::File(FileSeal::open(source)?),
            SealConfig::VaultTransit(config) => Seal::VaultTransit(VaultSeal {
                client: remote::client(
                    remote::DEFAULT_CONNECT_TIMEOUT,
                    remote::DEFAULT_TIMEOUT,
                    None,
                    None,
                )
                .map_err(|e| CustodyError::Seal(format!("HTTP client: {e}")))?,
                redactor: Redactor::new([config.token.expose_secret()]),
                config: config.clone(),
            }),
            SealConfig::AwsKms(config) => Seal::AwsKms(AwsSeal {
                client: crate::providers::aws_kms::client(&config.client_config()).await,
                key_id: config.key_id.clone(),
            }),
            SealConfig::Pkcs11(config) => Seal::Pkcs11(Pkcs11SealKey {
                config: config.clone(),
            }),
        })
    }

    /// The seal's name as the database records it beside what it wrapped: its
    /// type and which key (never a secret, never an address that may change).
    pub fn name(&self) -> String {
        match self {
            Seal::File(_) => "file".into(),
            Seal::VaultTransit(v) => format!(
                "vault-transit:{}/{}",
                v.config.mount.trim_matches('/'),
                v.config.key
            ),
            Seal::AwsKms(a) => format!("aws-kms:{}", a.key_id),
            Seal::Pkcs11(p) => format!(
                "pkcs11:{}/{}",
                p.config
                    .token_label
                    .clone()
                    .or_else(|| p.config.slot.map(|s| format!("slot {s}")))
                    .unwrap_or_default(),
                p.config.key_label
            ),
        }
    }

    /// The file seal, if this is one.
    pub fn as_file(&self) -> Option<&FileSeal> {
        match self {
            Seal::File(file) => Some(file),
            _ => None,
        }
    }

    /// Wraps generation `generation`'s key.
    ///
    /// # Errors
    /// [`CustodyError::Seal`] when the seal cannot be reached or refuses.
    pub async fn wrap(&self, generation: u32, key: &[u8; KEY_LEN]) -> Result<String, CustodyError> {
        let aad = aad(generation);
        match self {
            Seal::File(file) => Ok(STANDARD.encode(seal::encrypt(&file.key, &aad, key))),
            Seal::VaultTransit(vault) => vault.encrypt(key).await,
            Seal::AwsKms(aws) => aws.encrypt(generation, key).await,
            Seal::Pkcs11(token) => {
                let config = token.config.clone();
                let key = zeroize::Zeroizing::new(*key);
                blocking(move || pkcs11_encrypt(&config, &aad, key.as_slice())).await
            }
        }
    }

    /// Unwraps generation `generation`'s key.
    ///
    /// # Errors
    /// [`CustodyError::Seal`] when the seal cannot be reached, refuses, or what
    /// it returns is not a key (another seal's wrapping).
    pub async fn unwrap(&self, generation: u32, wrapped: &str) -> Result<KeyBytes, CustodyError> {
        let aad = aad(generation);
        let plain = match self {
            Seal::File(file) => {
                let bytes = STANDARD.decode(wrapped).map_err(|_| {
                    CustodyError::Damaged("a wrapped master key is not base64".into())
                })?;
                seal::decrypt(&file.key, &aad, &bytes).map_err(|_| {
                    CustodyError::Seal(format!(
                        "this master key is not the one that wrapped generation {generation} \
                         (the file seal's key, from {})",
                        file.describe()
                    ))
                })?
            }
            Seal::VaultTransit(vault) => vault.decrypt(wrapped).await?,
            Seal::AwsKms(aws) => aws.decrypt(generation, wrapped).await?,
            Seal::Pkcs11(token) => {
                let config = token.config.clone();
                let wrapped = wrapped.to_owned();
                blocking(move || pkcs11_decrypt(&config, &aad, &wrapped)).await?
            }
        };
        let key: [u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| {
            CustodyError::Seal(format!(
                "the seal returned {} bytes for master key generation {generation}, not a key",
                plain.len()
            ))
        })?;
        Ok(zeroize::Zeroizing::new(key))
    }
}

/// The associated data of a wrapped generation (where the seal takes one).
fn aad(generation: u32) -> String {
    format!("kmsgw:master-key:{generation}")
}

impl FileSeal {
    fn open(source: KeySource<'_>) -> Result<FileSeal, CustodyError> {
        let bad = |e: seal::SealError| CustodyError::Seal(e.to_string());
        Ok(match source {
            KeySource::Env(text) => FileSeal {
                key: seal::parse_key(text.expose_secret()).map_err(bad)?,
                path: None,
            },
            KeySource::FileOrNew(path) => FileSeal {
                key: seal::load_or_create_key_file(path).map_err(bad)?,
                path: Some(path.to_owned()),
            },
            KeySource::File(path) => FileSeal {
                key: seal::read_key_file(path).map_err(bad)?,
                path: Some(path.to_owned()),
            },
            KeySource::NewFile(path) => {
                let key = seal::random_key();
                seal::create_key_file(path, &key).map_err(bad)?;
                FileSeal {
                    key,
                    path: Some(path.to_owned()),
                }
            }
        })
    }

    /// The key itself: a database that predates generations was sealed with it directly.
    pub fn key(&self) -> &KeyBytes {
        &self.key
    }

    /// Where the key came from, for messages.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => "KMSGW_MASTER_KEY".into(),
        }
    }
}

impl VaultSeal {
    async fn call(
        &self,
        operation: &str,
        body: serde_json::Value,
    ) -> Result<serde_json::Value, CustodyError> {
        let url = format!(
            "{}/v1/{}/{operation}/{}",
            self.config.address.as_str().trim_end_matches('/'),
            self.config.mount.trim_matches('/'),
            self.config.key
        );
        let answer = crate::telemetry::traced(
            self.client
                .post(url)
                .header("X-Vault-Token", self.config.token.expose_secret())
                .json(&body),
        )
        .send()
        .await
        .map_err(|e| {
            CustodyError::Seal(
                remote::transport_error("Vault Transit", &e, &self.redactor).to_string(),
            )
        })?;
        let status = answer.status();
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| CustodyError::Seal(format!("Vault Transit {operation}: {e}")))?;
        if !status.is_success() {
            return Err(CustodyError::Seal(format!(
                "Vault Transit {operation} refused: {}",
                remote::backend_message(status, &bytes, &self.redactor)
            )));
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            CustodyError::Seal(format!("Vault Transit {operation}: the answer is not JSON"))
        })
    }

    async fn encrypt(&self, key: &[u8]) -> Result<String, CustodyError> {
        let answer = self
            .call("encrypt", json!({ "plaintext": STANDARD.encode(key) }))
            .await?;
        answer["data"]["ciphertext"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                CustodyError::Seal("Vault Transit encrypt: no ciphertext in the answer".into())
            })
    }

    async fn decrypt(&self, wrapped: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, CustodyError> {
        let answer = self
            .call("decrypt", json!({ "ciphertext": wrapped }))
            .await?;
        let text = answer["data"]["plaintext"].as_str().ok_or_else(|| {
            CustodyError::Seal("Vault Transit decrypt: no plaintext in the answer".into())
        })?;
        STANDARD
            .decode(text)
            .map(zeroize::Zeroizing::new)
            .map_err(|_| {
                CustodyError::Seal("Vault Transit decrypt: plaintext is not base64".into())
            })
    }
}

/// The encryption context of a wrapped generation: AWS KMS refuses to decrypt
/// under another.
const AWS_CONTEXT_KEY: &str = "kmsgw-master-key-generation";

fn aws_error<E: std::fmt::Display>(
    operation: &str,
    e: &aws_sdk_kms::error::SdkError<E>,
) -> CustodyError {
    use aws_sdk_kms::error::SdkError;
    let cause = match e {
        SdkError::ServiceError(service) => service.err().to_string(),
        SdkError::TimeoutError(_) => "timed out".into(),
        SdkError::DispatchFailure(_) => "unreachable".into(),
        other => other.to_string(),
    };
    CustodyError::Seal(format!("AWS KMS {operation}: {cause}"))
}

impl AwsSeal {
    async fn encrypt(&self, generation: u32, key: &[u8]) -> Result<String, CustodyError> {
        let answer = self
            .client
            .encrypt()
            .key_id(&self.key_id)
            .plaintext(Blob::new(key))
            .encryption_context(AWS_CONTEXT_KEY, generation.to_string())
            .send()
            .await
            .map_err(|e| aws_error("Encrypt", &e))?;
        let blob = answer.ciphertext_blob().ok_or_else(|| {
            CustodyError::Seal("AWS KMS Encrypt: no ciphertext in the answer".into())
        })?;
        Ok(STANDARD.encode(blob.as_ref()))
    }

    async fn decrypt(
        &self,
        generation: u32,
        wrapped: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, CustodyError> {
        let blob = STANDARD
            .decode(wrapped)
            .map_err(|_| CustodyError::Damaged("a wrapped master key is not base64".into()))?;
        let answer = self
            .client
            .decrypt()
            .key_id(&self.key_id)
            .ciphertext_blob(Blob::new(blob))
            .encryption_context(AWS_CONTEXT_KEY, generation.to_string())
            .send()
            .await
            .map_err(|e| aws_error("Decrypt", &e))?;
        answer
            .plaintext()
            .map(|p| zeroize::Zeroizing::new(p.as_ref().to_vec()))
            .ok_or_else(|| CustodyError::Seal("AWS KMS Decrypt: no plaintext in the answer".into()))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, CustodyError> + Send + 'static,
) -> Result<T, CustodyError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 task failed: {e}")))?
}

fn ck(context: &str, e: impl Into<ProviderError>) -> CustodyError {
    CustodyError::Seal(format!("PKCS#11 {context}: {}", e.into()))
}

/// A logged-in session on the seal's token and its AES key's handle.
fn pkcs11_key(
    config: &Pkcs11Seal,
) -> Result<(cryptoki::session::Session, cryptoki::object::ObjectHandle), CustodyError> {
    use crate::providers::pkcs11::{find_slot, library};
    let pkcs11 = library(&config.module).map_err(|e| ck("library", e))?;
    let slot_ref = config
        .slot()
        .ok_or_else(|| CustodyError::Seal("give one of `slot` and `tokenLabel`".into()))?;
    let slot = find_slot(&pkcs11, &slot_ref).map_err(|e| ck("token", e))?;
    let session = pkcs11
        .open_ro_session(slot)
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 opening a session: {e}")))?;
    let pin = AuthPin::from(config.pin.expose_secret().to_owned());
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(ck("login", crate::providers::pkcs11::ck("logging in", e))),
    }
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(config.key_label.as_bytes().to_vec()),
        ])
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 finding the key: {e}")))?;
    match found.as_slice() {
        [handle] => Ok((session, *handle)),
        [] => Err(CustodyError::Seal(format!(
            "PKCS#11: no secret key labelled `{}` on the token",
            config.key_label
        ))),
        _ => Err(CustodyError::Seal(format!(
            "PKCS#11: more than one secret key labelled `{}`",
            config.key_label
        ))),
    }
}

const GCM_IV_LEN: usize = 12;

/// `CKM_AES_GCM` with `iv`, `aad` and a 128-bit tag.
fn aes_gcm<'a>(iv: &'a mut [u8; GCM_IV_LEN], aad: &'a str) -> Result<Mechanism<'a>, CustodyError> {
    GcmParams::new(iv, aad.as_bytes(), 128.into())
        .map(Mechanism::AesGcm)
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 GCM parameters: {e}")))
}

/// `iv ‖ ciphertext ‖ tag` of `CKM_AES_GCM`, base64.
fn pkcs11_encrypt(config: &Pkcs11Seal, aad: &str, key: &[u8]) -> Result<String, CustodyError> {
    let (session, handle) = pkcs11_key(config)?;
    let mut iv = [0u8; GCM_IV_LEN];
    aws_lc_rs::rand::fill(&mut iv).expect("system randomness");
    let mut params_iv = iv;
    let sealed = session
        .encrypt(&aes_gcm(&mut params_iv, aad)?, handle, key)
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 C_Encrypt (CKM_AES_GCM): {e}")))?;
    let mut out = iv.to_vec();
    out.extend_from_slice(&sealed);
    Ok(STANDARD.encode(out))
}

fn pkcs11_decrypt(
    config: &Pkcs11Seal,
    aad: &str,
    wrapped: &str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CustodyError> {
    let bytes = STANDARD
        .decode(wrapped)
        .map_err(|_| CustodyError::Damaged("a wrapped master key is not base64".into()))?;
    if bytes.len() <= GCM_IV_LEN {
        return Err(CustodyError::Damaged(
            "a wrapped master key is too short".into(),
        ));
    }
    let (session, handle) = pkcs11_key(config)?;
    let mut iv: [u8; GCM_IV_LEN] = bytes[..GCM_IV_LEN].try_into().expect("length checked");
    session
        .decrypt(&aes_gcm(&mut iv, aad)?, handle, &bytes[GCM_IV_LEN..])
        .map(zeroize::Zeroizing::new)
        .map_err(|e| CustodyError::Seal(format!("PKCS#11 C_Decrypt (CKM_AES_GCM): {e}")))
}
