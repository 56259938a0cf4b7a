//! The `pkcs11` provider: an HSM (or SoftHSM2) through its PKCS#11 library, via
//! cryptoki. Every PKCS#11 call runs on the blocking pool, bounded by the number
//! of open sessions; sessions log in once and are reused. Keys (EC P-256/384/521,
//! Ed25519, RSA) are token objects labelled with the kid and identified by a random
//! `CKA_ID` (the external id), so a race for one kid can never leave two keys under
//! one name. Signing hashes on the host where the mechanism takes a digest:
//! `CKM_ECDSA` (SoftHSM2 has no `CKM_ECDSA_SHA256`), `CKM_RSA_PKCS` over a
//! SHA-256 DigestInfo, `CKM_RSA_PKCS_PSS` over a SHA-256 digest; `CKM_EDDSA` signs
//! the message itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use dashmap::DashMap;
use secrecy::ExposeSecret;
use tokio::sync::Semaphore;

use super::{
    Alg, Capabilities, Health, KeyMaterial, KeyRef, KeySpec, Provider, ProviderError, ProviderKind,
    ToSign,
};
use crate::config::{Pkcs11Config, Pkcs11Slot};
use crate::crypto::{Curve, KeyKind, PrivateKey, PublicJwk};

/// DER of id-Ed25519 (1.3.101.112), the `CKA_EC_PARAMS` of Ed25519 keys.
const ED25519_PARAMS: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// DER prefix of a SHA-256 DigestInfo, which `CKM_RSA_PKCS` signs (RFC 8017 §9.2).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
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

/// A PKCS#11 failure as a provider error, saying what was being done (a wrong or
/// locked PIN in words).
pub(crate) fn ck(context: &str, e: CkError) -> ProviderError {
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

/// `CKA_EC_PARAMS` of a curve: the DER of its OID.
fn ec_params(curve: Curve) -> Vec<u8> {
    let oid = curve.oid();
    let mut params = vec![0x06, u8::try_from(oid.len()).expect("short OID")];
    params.extend_from_slice(oid);
    params
}

/// A DER OCTET STRING around `bytes`, as `CKA_EC_POINT` holds a point.
fn octet_string(bytes: &[u8]) -> Vec<u8> {
    let mut der = vec![0x04];
    match bytes.len() {
        n if n < 0x80 => der.push(n as u8),
        n => der.extend([0x81, n as u8]),
    }
    der.extend_from_slice(bytes);
    der
}

/// The key inside `CKA_EC_POINT`: a DER OCTET STRING (what the standard says), or
/// the raw bytes (what some tokens return), `len` bytes long.
fn unwrap_point(ec_point: &[u8], len: usize) -> Result<&[u8], ProviderError> {
    let inner = match ec_point {
        [0x04, 0x81, n, rest @ ..] if usize::from(*n) == rest.len() => rest,
        [0x04, n, rest @ ..] if usize::from(*n) == rest.len() => rest,
        raw => raw,
    };
    if inner.len() == len {
        Ok(inner)
    } else {
        Err(ProviderError::Backend(
            "token returned an unexpected CKA_EC_POINT".into(),
        ))
    }
}

/// The public JWK of the public key object `handle`, of `kind`.
fn read_public(
    session: &Session,
    handle: ObjectHandle,
    kind: KeyKind,
) -> Result<PublicJwk, ProviderError> {
    let wanted: &[AttributeType] = match kind {
        KeyKind::Rsa => &[AttributeType::Modulus, AttributeType::PublicExponent],
        _ => &[AttributeType::EcPoint],
    };
    let attributes = session
        .get_attributes(handle, wanted)
        .map_err(|e| ck("reading the public key", e))?;
    let unusable = |e: crate::crypto::JwkError| ProviderError::Backend(format!("token key: {e}"));
    match (kind, attributes.as_slice()) {
        (KeyKind::Ec(curve), [Attribute::EcPoint(point)]) => {
            PublicJwk::ec(curve, unwrap_point(point, 1 + 2 * curve.size())?).map_err(unusable)
        }
        (KeyKind::Ed25519, [Attribute::EcPoint(point)]) => {
            PublicJwk::ed25519(unwrap_point(point, 32)?).map_err(unusable)
        }
        (KeyKind::Rsa, [Attribute::Modulus(n), Attribute::PublicExponent(e)]) => {
            PublicJwk::rsa(n, e).map_err(unusable)
        }
        _ => Err(ProviderError::Backend(
            "token did not return the public key's attributes".into(),
        )),
    }
}

/// The algorithms the provider offers: all but ML-DSA, which PKCS#11 3.2
/// defines (`CKM_ML_DSA`) but SoftHSM2 and most tokens do not implement yet.
fn offered() -> Vec<Alg> {
    Alg::ALL
        .iter()
        .copied()
        .filter(|alg| !matches!(alg.key_kind(), KeyKind::MlDsa(_)))
        .collect()
}

fn not_offered(alg: Alg) -> ProviderError {
    ProviderError::Unsupported(format!("the pkcs11 provider does not offer {alg}"))
}

/// The `C_Sign` mechanism of `alg` (one [`sign_input`] accepted).
fn mechanism(alg: Alg) -> Mechanism<'static> {
    match alg {
        Alg::EdDSA | Alg::Ed25519 => Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure)),
        Alg::RS256 => Mechanism::RsaPkcs,
        Alg::PS256 => Mechanism::RsaPkcsPss(PkcsPssParams {
            hash_alg: MechanismType::SHA256,
            mgf: PkcsMgfType::MGF1_SHA256,
            s_len: 32.into(),
        }),
        _ => Mechanism::Ecdsa,
    }
}

/// What `C_Sign` signs for `alg`: the hash (ECDSA, PSS) or the SHA-256
/// DigestInfo (PKCS#1 v1.5) of the message, or of a client's digest as it is,
/// or the message itself (EdDSA).
fn sign_input(alg: Alg, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
    if matches!(alg.key_kind(), KeyKind::MlDsa(_)) {
        return Err(not_offered(alg));
    }
    // The token hashes nothing. SoftHSM2 does not check a digest's length: the
    // gateway has checked a client's, and each hash here is the algorithm's.
    let hash = match (input, alg.prehash()) {
        (ToSign::Message(message), Some(hash)) => {
            aws_lc_rs::digest::digest(hash, message).as_ref().to_vec()
        }
        (ToSign::Digest(digest), Some(_)) => digest.to_vec(),
        (ToSign::Message(message), None) => return Ok(message.to_vec()),
        (ToSign::Digest(_), None) => {
            return Err(ProviderError::Unsupported(format!(
                "{alg} signs the message itself, not a digest"
            )));
        }
    };
    Ok(if alg == Alg::RS256 {
        [&SHA256_DIGEST_INFO[..], &hash].concat()
    } else {
        hash
    })
}

fn unhex(text: &str) -> Result<Vec<u8>, ProviderError> {
    hex::decode(text)
        .map_err(|_| ProviderError::Internal(format!("external id `{text}` is not hex")))
}

/// The process's one initialised context per library. A PKCS#11 library has one
/// state per process: finalising it (which dropping a `Pkcs11` does) would close the
/// sessions of every provider on it, so contexts live as long as the process.
pub(crate) fn library(path: &Path) -> Result<Pkcs11, ProviderError> {
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

/// The slot `slot` names: by index among the slots holding an initialised
/// token, or by its token's label.
pub(crate) fn find_slot(pkcs11: &Pkcs11, slot: &Pkcs11Slot) -> Result<Slot, ProviderError> {
    let slots = pkcs11
        .get_slots_with_initialized_token()
        .map_err(|e| ck("listing slots", e))?;
    match slot {
        Pkcs11Slot::Index(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| slots.get(i).copied())
            .ok_or_else(|| {
                ProviderError::Unavailable(format!(
                    "no initialised token at slot index {i} ({} found)",
                    slots.len()
                ))
            }),
        Pkcs11Slot::Label(label) => slots
            .iter()
            .copied()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .is_ok_and(|t| t.label().trim_end() == label)
            })
            .ok_or_else(|| ProviderError::Unavailable(format!("no token labelled `{label}`"))),
    }
}

impl Token {
    fn connect(config: &Pkcs11Config) -> Result<Token, ProviderError> {
        let pkcs11 = library(&config.library)?;
        let slot = find_slot(&pkcs11, &config.slot)?;
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
                supported_algs: offered(),
                default_alg: Alg::ES256,
                signs_digests: true,
                signs_in_process: false,
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

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        self.writable()?;
        let id = random_id();
        let (kid_owned, id_owned) = (kid.to_owned(), id.clone());
        let kind = spec.alg.key_kind();
        if let KeyKind::MlDsa(_) = kind {
            return Err(not_offered(spec.alg));
        }
        let public_jwk = self
            .run(move |session| {
                // Domain parameters go in the public template only: the private key
                // takes them from the pair (SoftHSM2 refuses them there as read-only).
                let mut public = common(&kid_owned, &id_owned);
                public.extend([Attribute::Private(false), Attribute::Verify(true)]);
                let mechanism = match kind {
                    KeyKind::Ec(curve) => {
                        public.push(Attribute::EcParams(ec_params(curve)));
                        Mechanism::EccKeyPairGen
                    }
                    KeyKind::Ed25519 => {
                        public.push(Attribute::EcParams(ED25519_PARAMS.to_vec()));
                        Mechanism::EccEdwardsKeyPairGen
                    }
                    KeyKind::Rsa => {
                        public.extend([
                            Attribute::ModulusBits(u64::from(spec.rsa_bits).into()),
                            Attribute::PublicExponent(vec![1, 0, 1]),
                        ]);
                        Mechanism::RsaPkcsKeyPairGen
                    }
                    KeyKind::MlDsa(_) => unreachable!("refused above"),
                };
                let private = private_template(&kid_owned, &id_owned);
                let (public, _) = session
                    .generate_key_pair(&mechanism, &public, &private)
                    .map_err(|e| ck("generating the key pair", e))?;
                read_public(session, public, kind)
            })
            .await?;
        Ok(KeyMaterial {
            external_id: hex::encode(&id),
            public_jwk,
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
        let internal = |e: crate::crypto::JwkError| ProviderError::Internal(e.to_string());
        let part = |name: &str| key.jwk_part(name).map(|v| v.to_vec()).map_err(internal);
        let mut private = private_template(kid, &id);
        let mut public = common(kid, &id);
        public.extend([
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Private(false),
            Attribute::Verify(true),
        ]);
        private.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
        match key.kind() {
            KeyKind::Ec(curve) => {
                let mut point = vec![4];
                point.extend(part("x")?);
                point.extend(part("y")?);
                private.extend([
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(ec_params(curve)),
                    Attribute::Value(part("d")?),
                ]);
                public.extend([
                    Attribute::KeyType(KeyType::EC),
                    Attribute::EcParams(ec_params(curve)),
                    Attribute::EcPoint(octet_string(&point)),
                ]);
            }
            KeyKind::Ed25519 => {
                private.extend([
                    Attribute::KeyType(KeyType::EC_EDWARDS),
                    Attribute::EcParams(ED25519_PARAMS.to_vec()),
                    Attribute::Value(part("d")?),
                ]);
                public.extend([
                    Attribute::KeyType(KeyType::EC_EDWARDS),
                    Attribute::EcParams(ED25519_PARAMS.to_vec()),
                    Attribute::EcPoint(octet_string(&part("x")?)),
                ]);
            }
            KeyKind::Rsa => {
                private.extend([
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Modulus(part("n")?),
                    Attribute::PublicExponent(part("e")?),
                    Attribute::PrivateExponent(part("d")?),
                    Attribute::Prime1(part("p")?),
                    Attribute::Prime2(part("q")?),
                    Attribute::Exponent1(part("dp")?),
                    Attribute::Exponent2(part("dq")?),
                    Attribute::Coefficient(part("qi")?),
                ]);
                public.extend([
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Modulus(part("n")?),
                    Attribute::PublicExponent(part("e")?),
                ]);
            }
            KeyKind::MlDsa(level) => return Err(not_offered(level.alg())),
        }
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
            external_id: hex::encode(&id),
            public_jwk: key.public_jwk().clone(),
            sealed_secret: None,
        })
    }

    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let alg = key.alg;
        let handle = self.private_handle(key.external_id).await?;
        let input = sign_input(alg, input)?;
        let signature = self
            .run(move |session| {
                session
                    .sign(&mechanism(alg), handle, &input)
                    .map_err(|e| ck("signing", e))
            })
            .await;
        match signature {
            Ok(signature) => Ok(signature),
            Err(e) => {
                // A stale handle (object gone, token reinitialised): look it up next time.
                self.handles.remove(key.external_id);
                Err(e)
            }
        }
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        self.writable()?;
        self.handles.remove(key.external_id);
        let id = unhex(key.external_id)?;
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
