//! The `pkcs11` provider: an HSM (or SoftHSM2) through its PKCS#11 library, via
//! cryptoki. Every PKCS#11 call runs on the blocking pool, bounded by the number
//! of open sessions; sessions log in once and are reused. Keys are P-256 token
//! objects labelled with the kid and identified by a random `CKA_ID` (the external
//! id), so a race for one kid can never leave two keys under one name. Signing
//! hashes on the host and uses `CKM_ECDSA` (SoftHSM2 has no `CKM_ECDSA_SHA256`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use dashmap::DashMap;
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::{Alg, Capabilities, Health, KeyMaterial, Provider, ProviderError, ProviderKind};
use crate::catalog::KeyRecord;
use crate::config::{Pkcs11Config, Pkcs11Slot};
use crate::crypto::{PrivateKey, PublicJwk};

/// DER of the P-256 curve OID (1.2.840.10045.3.1.7), as `CKA_EC_PARAMS` wants it.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Default number of sessions.
const DEFAULT_SESSIONS: u32 = 4;

/// A connected token: the library, the slot, and idle logged-in sessions.
struct Token {
    pkcs11: Pkcs11,
    slot: Slot,
    read_only: bool,
    idle: Mutex<Vec<Session>>,
}

/// An HSM token as a provider.
pub struct Pkcs11Provider {
    id: String,
    config: Pkcs11Config,
    capabilities: Capabilities,
    token: Mutex<Option<Arc<Token>>>,
    permits: Semaphore,
    /// Private key handles by external id, so a sign is one `C_Sign`.
    handles: DashMap<String, ObjectHandle>,
}

fn ck(context: &str, e: CkError) -> ProviderError {
    match e {
        CkError::Pkcs11(RvError::PinIncorrect, _) => {
            ProviderError::Backend(format!("{context}: the PIN is incorrect"))
        }
        CkError::Pkcs11(RvError::PinLocked, _) => {
            ProviderError::Backend(format!("{context}: the PIN is locked"))
        }
        CkError::LibraryLoading(e) => {
            ProviderError::Unavailable(format!("{context}: cannot load the PKCS#11 library: {e}"))
        }
        other => ProviderError::Backend(format!("{context}: {other}")),
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the uncompressed point.
fn point_of(ec_point: &[u8]) -> Result<[u8; 65], ProviderError> {
    let point = match ec_point {
        [0x04, 65, rest @ ..] if rest.len() == 65 => rest,
        raw if raw.len() == 65 => raw,
        _ => {
            return Err(ProviderError::Backend(
                "token returned an unexpected CKA_EC_POINT".into(),
            ));
        }
    };
    point
        .try_into()
        .map_err(|_| ProviderError::Backend("bad EC point".into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, ProviderError> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<_, _>>()
        .map_err(|_| ProviderError::Internal(format!("external id `{text}` is not hex")))
}

/// The process's one initialised context per library. A PKCS#11 library has one
/// state per process: finalising it (which dropping a `Pkcs11` does) would close the
/// sessions of every provider on it, so contexts live as long as the process.
fn library(path: &Path) -> Result<Pkcs11, ProviderError> {
    static LIBRARIES: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut libraries = LIBRARIES
        .get_or_init(Default::default)
        .lock()
        .expect("library lock");
    if let Some(pkcs11) = libraries.get(path) {
        return Ok(pkcs11.clone());
    }
    let pkcs11 = Pkcs11::new(path).map_err(|e| ck("loading the library", e))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(ck("C_Initialize", e)),
    }
    libraries.insert(path.to_owned(), pkcs11.clone());
    Ok(pkcs11)
}

impl Token {
    fn connect(config: &Pkcs11Config) -> Result<Token, ProviderError> {
        let pkcs11 = library(&config.library)?;
        let slots = pkcs11
            .get_slots_with_initialized_token()
            .map_err(|e| ck("listing slots", e))?;
        let slot = match &config.slot {
            Pkcs11Slot::Index(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| slots.get(i).copied())
                .ok_or_else(|| {
                    ProviderError::Unavailable(format!(
                        "no initialised token at slot index {i} ({} found)",
                        slots.len()
                    ))
                })?,
            Pkcs11Slot::Label(label) => slots
                .iter()
                .copied()
                .find(|s| {
                    pkcs11
                        .get_token_info(*s)
                        .is_ok_and(|t| t.label().trim_end() == label)
                })
                .ok_or_else(|| {
                    ProviderError::Unavailable(format!("no token labelled `{label}`"))
                })?,
        };
        let token = Token {
            pkcs11,
            slot,
            read_only: config.read_only,
            idle: Mutex::new(Vec::new()),
        };
        let session = token.open()?;
        let pin = AuthPin::from(config.pin.expose_secret().to_owned());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(ck("logging in", e)),
        }
        token.idle.lock().expect("session lock").push(session);
        Ok(token)
    }

    fn open(&self) -> Result<Session, ProviderError> {
        let session = if self.read_only {
            self.pkcs11.open_ro_session(self.slot)
        } else {
            self.pkcs11.open_rw_session(self.slot)
        };
        session.map_err(|e| ck("opening a session", e))
    }

    /// Runs `work` on an idle session (a new one if none is idle; logins are shared
    /// by all sessions of the application) and returns the session afterwards.
    fn with_session<T>(
        &self,
        work: impl FnOnce(&Session) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let idle = self.idle.lock().expect("session lock").pop();
        let session = match idle {
            Some(session) => session,
            None => self.open()?,
        };
        let result = work(&session);
        self.idle.lock().expect("session lock").push(session);
        result
    }
}

impl Pkcs11Provider {
    /// A provider named `id`; connecting happens at first use and again after a
    /// failure, so a wrong PIN or a missing token shows in health, not as a crash.
    pub fn new(id: String, config: Pkcs11Config) -> Self {
        let sessions = config.sessions.unwrap_or(DEFAULT_SESSIONS).max(1);
        let writable = !config.read_only;
        Pkcs11Provider {
            id,
            config,
            capabilities: Capabilities {
                can_create: writable,
                can_import: writable,
                can_delete: writable,
                supported_algs: vec![Alg::ES256],
                default_alg: Alg::ES256,
            },
            token: Mutex::new(None),
            permits: Semaphore::new(sessions as usize),
            handles: DashMap::new(),
        }
    }

    /// Runs `work` with a session on the blocking pool, bounded by the session count.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Session) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let _permit = self.permits.acquire().await.expect("never closed");
        let existing = self.token.lock().expect("token lock").clone();
        let config = self.config.clone();
        let (token, result) = tokio::task::spawn_blocking(move || {
            let token = match existing {
                Some(token) => token,
                None => match Token::connect(&config) {
                    Ok(token) => Arc::new(token),
                    Err(e) => return (None, Err(e)),
                },
            };
            let result = token.with_session(work);
            (Some(token), result)
        })
        .await
        .map_err(|e| ProviderError::Internal(format!("PKCS#11 task failed: {e}")))?;
        if let Some(token) = token {
            self.token.lock().expect("token lock").get_or_insert(token);
        }
        result
    }

    fn writable(&self) -> Result<(), ProviderError> {
        if self.config.read_only {
            Err(ProviderError::Unsupported(format!(
                "provider `{}` is read-only",
                self.id
            )))
        } else {
            Ok(())
        }
    }

    async fn private_handle(&self, external_id: &str) -> Result<ObjectHandle, ProviderError> {
        if let Some(handle) = self.handles.get(external_id) {
            return Ok(*handle);
        }
        let id = unhex(external_id)?;
        let handle = self
            .run(move |session| {
                let found = session
                    .find_objects(&[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::Id(id),
                    ])
                    .map_err(|e| ck("finding the key", e))?;
                Ok(found.first().copied())
            })
            .await?
            .ok_or_else(|| ProviderError::KeyNotFound(external_id.to_owned()))?;
        self.handles.insert(external_id.to_owned(), handle);
        Ok(handle)
    }
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 16];
    aws_lc_rs::rand::fill(&mut id).expect("system randomness");
    id
}

fn common(kid: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Label(kid.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn private_template(kid: &str, id: &[u8]) -> Vec<Attribute> {
    let mut template = common(kid, id);
    template.extend([
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
    ]);
    template
}

#[async_trait]
impl Provider for Pkcs11Provider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Pkcs11
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, _alg: Alg) -> Result<KeyMaterial, ProviderError> {
        self.writable()?;
        let id = random_id();
        let (kid_owned, id_owned) = (kid.to_owned(), id.clone());
        let point = self
            .run(move |session| {
                // The curve goes in the public template only: the private key takes it
                // from the pair (SoftHSM2 refuses it there as read-only).
                let mut public = common(&kid_owned, &id_owned);
                public.extend([
                    Attribute::EcParams(P256_PARAMS.to_vec()),
                    Attribute::Private(false),
                    Attribute::Verify(true),
                ]);
                let private = private_template(&kid_owned, &id_owned);
                let (public, _) = session
                    .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                    .map_err(|e| ck("generating the key pair", e))?;
                let attributes = session
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .map_err(|e| ck("reading the public key", e))?;
                match attributes.first() {
                    Some(Attribute::EcPoint(point)) => point_of(point),
                    _ => Err(ProviderError::Backend(
                        "token returned no CKA_EC_POINT".into(),
                    )),
                }
            })
            .await?;
        Ok(KeyMaterial {
            external_id: hex(&id),
            public_jwk: PublicJwk::from_sec1(&point)
                .map_err(|e| ProviderError::Backend(e.to_string()))?,
            sealed_secret: None,
        })
    }

    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        _alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        self.writable()?;
        let id = random_id();
        let mut private = private_template(kid, &id);
        private.extend([
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Value(key.scalar().to_vec()),
        ]);
        let mut public = common(kid, &id);
        let mut ec_point = vec![0x04, 65];
        ec_point.extend_from_slice(key.public_point());
        public.extend([
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::EcPoint(ec_point),
        ]);
        self.run(move |session| {
            let private = session.create_object(&private).map_err(|e| match e {
                CkError::Pkcs11(
                    RvError::TemplateInconsistent
                    | RvError::AttributeValueInvalid
                    | RvError::FunctionNotSupported,
                    _,
                ) => ProviderError::Unsupported(format!(
                    "this token does not accept imported private keys: {e}"
                )),
                other => ck("creating the private key", other),
            })?;
            if let Err(e) = session.create_object(&public) {
                let _ = session.destroy_object(private);
                return Err(ck("creating the public key", e));
            }
            Ok(())
        })
        .await?;
        Ok(KeyMaterial {
            external_id: hex(&id),
            public_jwk: key.public_jwk(),
            sealed_secret: None,
        })
    }

    async fn sign(
        &self,
        key: &KeyRecord,
        message: &[u8],
        _alg: Alg,
    ) -> Result<Vec<u8>, ProviderError> {
        let handle = self.private_handle(&key.external_id).await?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, message);
        // SoftHSM2 does not check the digest length; CKM_ECDSA must get exactly 32 bytes.
        let digest: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        let signature = self
            .run(move |session| {
                session
                    .sign(&Mechanism::Ecdsa, handle, &digest)
                    .map_err(|e| ck("signing", e))
            })
            .await;
        match signature {
            Ok(signature) if signature.len() == 64 => Ok(signature),
            Ok(other) => Err(ProviderError::Backend(format!(
                "token returned a {}-byte signature",
                other.len()
            ))),
            Err(e) => {
                // A stale handle (object gone, token reinitialised): look it up next time.
                self.handles.remove(&key.external_id);
                Err(e)
            }
        }
    }

    async fn delete_key(&self, key: &KeyRecord) -> Result<(), ProviderError> {
        self.writable()?;
        self.handles.remove(&key.external_id);
        let id = unhex(&key.external_id)?;
        self.run(move |session| {
            let objects = session
                .find_objects(&[Attribute::Id(id)])
                .map_err(|e| ck("finding the key", e))?;
            for object in objects {
                session
                    .destroy_object(object)
                    .map_err(|e| ck("destroying the key", e))?;
            }
            Ok(())
        })
        .await
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let result = self
            .run(|session| {
                session
                    .get_session_info()
                    .map(|_| ())
                    .map_err(|e| ck("session", e))
            })
            .await;
        Health::of(started, result)
    }

    fn invalidate_all(&self) {
        self.handles.clear();
    }
}
