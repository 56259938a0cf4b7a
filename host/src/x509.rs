//! X.509 for kmsgw keys: certification requests and certificates whose signature
//! a provider makes (so a key never leaves its backend: the gateway builds the
//! to-be-signed bytes, the key's provider signs them, the gateway assembles the
//! result), and the checks an imported chain must pass.
//!
//! Built on RustCrypto's `x509-cert`: [`prepare_request`] and
//! [`prepare_certificate`] give the bytes to sign, [`Prepared::finish`] turns a
//! JOSE signature into the DER object.

use std::time::{Duration, SystemTime};

use der::asn1::{BitString, OctetString};
use der::flagset::FlagSet;
use der::{Decode, Encode, EncodePem};
use signature::Keypair;
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder, RequestBuilder};
use x509_cert::certificate::{Certificate, TbsCertificate};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectAltName,
    SubjectKeyIdentifier,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{
    AlgorithmIdentifierOwned, DynSignatureAlgorithmIdentifier, EncodePublicKey, ObjectIdentifier,
    SubjectPublicKeyInfoOwned, SubjectPublicKeyInfoRef,
};
use x509_cert::time::Validity;

use crate::crypto::{Alg, Curve, KeyKind, MlDsa, PublicJwk, decode_base64};
use crate::error_code::ErrorCode;

mod names;
pub use names::{MAX_ALT_NAMES, MAX_ATTRIBUTES, MAX_SUBJECT, MAX_URI, alt_names, subject};

/// Most certificates in an imported chain.
pub const MAX_CHAIN: usize = 10;
/// Largest imported chain, PEM bytes.
pub const MAX_CHAIN_PEM: usize = 64 * 1024;

/// Why a request or certificate could not be made, or a chain was refused. The
/// codes are the API's.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// `certificate_not_pem`
    #[error("not a PEM certificate chain: {0}")]
    NotPem(String),
    /// `certificate_key_mismatch`
    #[error("the leaf certificate holds another public key than the key's current version")]
    KeyMismatch,
    /// `certificate_not_valid_now`
    #[error(
        "certificate {index} of the chain is outside its validity period ({not_before} to {not_after})"
    )]
    NotValidNow {
        index: usize,
        not_before: String,
        not_after: String,
    },
    /// `certificate_chain_broken`
    #[error("certificate {index} of the chain is not signed by certificate {next}")]
    ChainBroken { index: usize, next: usize },
    /// `issuer_not_ca`
    #[error(
        "key `{0}` has no CA certificate to issue with (issue it one with `ca: true`, or import one)"
    )]
    IssuerNotCa(String),
    /// `issuer_certificate_not_ca`: an issuing certificate of an imported chain
    /// may not issue (no basic constraints `cA`, no `keyCertSign`, or more CAs
    /// below it than its path length allows).
    #[error("certificate {index} of the chain may not issue certificate {below}: {why}")]
    IssuerMayNotIssue {
        index: usize,
        below: usize,
        why: &'static str,
    },
    /// `invalid_subject`
    #[error("{0}")]
    InvalidSubject(String),
    /// `invalid_dns_name`
    #[error("{0}")]
    InvalidDnsName(String),
    /// `invalid_uri`
    #[error("{0}")]
    InvalidUri(String),
    /// `certificate_input_too_large`: past a documented bound.
    #[error("{0}")]
    TooLarge(String),
    /// `invalid_certificate_request`
    #[error("{0}")]
    Invalid(String),
    /// Encoding failed; a bug or an unusable key.
    #[error("X.509 encoding: {0}")]
    Encoding(String),
}

impl CertError {
    /// The stable code the API answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            CertError::NotPem(_) => ErrorCode::CertificateNotPem,
            CertError::KeyMismatch => ErrorCode::CertificateKeyMismatch,
            CertError::NotValidNow { .. } => ErrorCode::CertificateNotValidNow,
            CertError::ChainBroken { .. } => ErrorCode::CertificateChainBroken,
            CertError::IssuerNotCa(_) => ErrorCode::IssuerNotCa,
            CertError::IssuerMayNotIssue { .. } => ErrorCode::IssuerCertificateNotCa,
            CertError::InvalidSubject(_) => ErrorCode::InvalidSubject,
            CertError::InvalidDnsName(_) => ErrorCode::InvalidDnsName,
            CertError::InvalidUri(_) => ErrorCode::InvalidUri,
            CertError::TooLarge(_) => ErrorCode::CertificateInputTooLarge,
            CertError::Invalid(_) => ErrorCode::InvalidCertificateRequest,
            // A bug or an unusable key: not the client's mistake.
            CertError::Encoding(_) => ErrorCode::InternalError,
        }
    }
}

fn encoding(e: impl std::fmt::Display) -> CertError {
    CertError::Encoding(e.to_string())
}

/// The RSASSA-PSS parameters of PS256 (RFC 4055 §3.1): SHA-256, MGF1 with
/// SHA-256, a 32-byte salt, trailer field 1.
const PSS_SHA256_PARAMS: [u8; 54] = [
    0x30, 0x34, 0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
    0x01, 0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
    0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
];

/// RSASSA-PSS-params (RFC 4055 §3.1); absent fields take their defaults
/// (SHA-1, MGF1 with SHA-1, salt 20, trailer 1).
#[derive(der::Sequence)]
struct PssParams {
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    hash: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "1", tag_mode = "EXPLICIT", optional = "true")]
    mask_gen: Option<AlgorithmIdentifierOwned>,
    #[asn1(context_specific = "2", tag_mode = "EXPLICIT", optional = "true")]
    salt_length: Option<u32>,
    #[asn1(context_specific = "3", tag_mode = "EXPLICIT", optional = "true")]
    trailer_field: Option<u32>,
}

const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");

/// Whether DER RSASSA-PSS-params are PS256's: SHA-256, MGF1 with SHA-256, a
/// 32-byte salt and trailer 1, with or without NULL hash parameters.
pub fn is_ps256_params(der: &[u8]) -> bool {
    let sha256 = |id: &AlgorithmIdentifierOwned| {
        id.oid == SHA256
            && id
                .parameters
                .as_ref()
                .is_none_or(|p| p.to_der().ok().as_deref() == Some(&[0x05, 0x00][..]))
    };
    let Ok(params) = PssParams::from_der(der) else {
        return false;
    };
    let mgf_sha256 = params.mask_gen.as_ref().is_some_and(|mgf| {
        mgf.oid == MGF1
            && mgf
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<AlgorithmIdentifierOwned>().ok())
                .is_some_and(|h| sha256(&h))
    });
    params.hash.as_ref().is_some_and(sha256)
        && mgf_sha256
        && params.salt_length == Some(32)
        && params.trailer_field.is_none_or(|t| t == 1)
}

/// What a client sees of a certificate: its names, serial and validity.
pub struct Description {
    /// RFC 4514.
    pub subject: String,
    /// RFC 4514.
    pub issuer: String,
    /// Upper-case hex.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The names, serial and validity of `certificate`.
pub fn describe(certificate: &Certificate) -> Description {
    let tbs = certificate.tbs_certificate();
    let (not_before, not_after) = validity(certificate);
    Description {
        subject: tbs.subject().to_string(),
        issuer: tbs.issuer().to_string(),
        serial: hex::encode_upper(tbs.serial_number().as_bytes()),
        not_before,
        not_after,
    }
}

const ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const ECDSA_SHA512: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.4");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const RSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// id-ml-dsa-44/65/87 (RFC 9881): the key's algorithm and the signature's.
const ML_DSA_44: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17");
const ML_DSA_65: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18");
const ML_DSA_87: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19");

fn ml_dsa_oid(level: MlDsa) -> ObjectIdentifier {
    match level {
        MlDsa::L44 => ML_DSA_44,
        MlDsa::L65 => ML_DSA_65,
        MlDsa::L87 => ML_DSA_87,
    }
}

/// The X.509 signature algorithm of a JOSE algorithm.
pub fn signature_algorithm(alg: Alg) -> AlgorithmIdentifierOwned {
    let (oid, parameters) = match alg {
        Alg::ES256 => (ECDSA_SHA256, None),
        Alg::ES384 => (ECDSA_SHA384, None),
        Alg::ES512 => (ECDSA_SHA512, None),
        Alg::EdDSA | Alg::Ed25519 => (ED25519, None),
        Alg::MlDsa44 => (ML_DSA_44, None),
        Alg::MlDsa65 => (ML_DSA_65, None),
        Alg::MlDsa87 => (ML_DSA_87, None),
        Alg::RS256 => (RSA_SHA256, Some(der::asn1::Null.into())),
        Alg::PS256 => (
            RSA_PSS,
            Some(der::Any::from_der(&PSS_SHA256_PARAMS).expect("constant PSS parameters")),
        ),
    };
    AlgorithmIdentifierOwned { oid, parameters }
}

/// The JOSE algorithm of an X.509 signature algorithm kmsgw can check.
fn alg_of(algorithm: &AlgorithmIdentifierOwned) -> Option<Alg> {
    Some(match algorithm.oid {
        ECDSA_SHA256 => Alg::ES256,
        ECDSA_SHA384 => Alg::ES384,
        ECDSA_SHA512 => Alg::ES512,
        ED25519 => Alg::EdDSA,
        // RFC 9881: the parameters are absent.
        ML_DSA_44 | ML_DSA_65 | ML_DSA_87 if algorithm.parameters.is_some() => return None,
        ML_DSA_44 => Alg::MlDsa44,
        ML_DSA_65 => Alg::MlDsa65,
        ML_DSA_87 => Alg::MlDsa87,
        RSA_SHA256 => Alg::RS256,
        RSA_PSS
            if algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.to_der().ok())
                .is_some_and(|p| is_ps256_params(&p)) =>
        {
            Alg::PS256
        }
        _ => return None,
    })
}

/// A JOSE signature as X.509 wants it: ECDSA `r‖s` as a DER `SEQUENCE { r, s }`,
/// the others as they are.
fn x509_signature(alg: Alg, jose: &[u8]) -> Result<Vec<u8>, CertError> {
    if !matches!(alg, Alg::ES256 | Alg::ES384 | Alg::ES512) {
        return Ok(jose.to_vec());
    }
    crate::crypto::der::ecdsa_raw_to_der(jose).map_err(encoding)
}

/// An X.509 signature as the JOSE form [`PublicJwk::verify`] takes.
fn jose_signature(alg: Alg, x509: &[u8]) -> Option<Vec<u8>> {
    let size = match alg {
        Alg::ES256 => 32,
        Alg::ES384 => 48,
        Alg::ES512 => 66,
        _ => return Some(x509.to_vec()),
    };
    crate::crypto::der::ecdsa_der_to_raw(x509, size).ok()
}

/// The SubjectPublicKeyInfo of a public JWK.
///
/// # Errors
/// [`CertError::Encoding`] when the JWK's parts are not base64url.
pub fn spki_of(jwk: &PublicJwk) -> Result<SubjectPublicKeyInfoOwned, CertError> {
    let part = |value: &Option<String>, name: &str| {
        value
            .as_deref()
            .and_then(|v| decode_base64(v).ok())
            .ok_or_else(|| CertError::Encoding(format!("the JWK has no usable `{name}`")))
    };
    let kind = jwk.kind().map_err(encoding)?;
    let (algorithm, key) = match kind {
        KeyKind::Ec(curve) => {
            let mut point = vec![4u8];
            point.extend(part(&jwk.x, "x")?);
            point.extend(part(&jwk.y, "y")?);
            let curve_oid = match curve {
                Curve::P256 => "1.2.840.10045.3.1.7",
                Curve::P384 => "1.3.132.0.34",
                Curve::P521 => "1.3.132.0.35",
            };
            let parameters = der::Any::from(ObjectIdentifier::new(curve_oid).map_err(encoding)?);
            (
                AlgorithmIdentifierOwned {
                    oid: EC_PUBLIC_KEY,
                    parameters: Some(parameters),
                },
                point,
            )
        }
        KeyKind::Ed25519 => (
            AlgorithmIdentifierOwned {
                oid: ED25519,
                parameters: None,
            },
            part(&jwk.x, "x")?,
        ),
        KeyKind::MlDsa(level) => (
            AlgorithmIdentifierOwned {
                oid: ml_dsa_oid(level),
                parameters: None,
            },
            part(&jwk.pub_, "pub")?,
        ),
        KeyKind::Rsa => {
            let (n, e) = (part(&jwk.n, "n")?, part(&jwk.e, "e")?);
            let key = crate::crypto::der::rsa_public_key(&n, &e).map_err(encoding)?;
            (
                AlgorithmIdentifierOwned {
                    oid: RSA_ENCRYPTION,
                    parameters: Some(der::asn1::Null.into()),
                },
                key,
            )
        }
    };
    Ok(SubjectPublicKeyInfoOwned {
        algorithm,
        subject_public_key: BitString::from_bytes(&key).map_err(encoding)?,
    })
}

/// A key whose private half is elsewhere: it names the public key and the
/// signature algorithm the builders put into the to-be-signed bytes.
struct RemoteKey {
    public: PublicKeyInfo,
    alg: Alg,
}

/// A SubjectPublicKeyInfo as the builders' verifying key.
#[derive(Clone)]
struct PublicKeyInfo(SubjectPublicKeyInfoOwned);

impl EncodePublicKey for PublicKeyInfo {
    fn to_public_key_der(&self) -> x509_cert::spki::Result<der::Document> {
        Ok(der::Document::encode_msg(&self.0)?)
    }
}

impl Keypair for RemoteKey {
    type VerifyingKey = PublicKeyInfo;

    fn verifying_key(&self) -> PublicKeyInfo {
        self.public.clone()
    }
}

impl DynSignatureAlgorithmIdentifier for RemoteKey {
    fn signature_algorithm_identifier(&self) -> x509_cert::spki::Result<AlgorithmIdentifierOwned> {
        Ok(signature_algorithm(self.alg))
    }
}

/// A request or certificate waiting for its signature.
pub struct Prepared<B> {
    builder: B,
    signer: RemoteKey,
    /// The bytes the signing key must sign (with its own algorithm).
    pub to_sign: Vec<u8>,
}

impl<B: Builder> Prepared<B> {
    /// The finished object, from the signing key's JOSE signature of [`Prepared::to_sign`].
    ///
    /// # Errors
    /// [`CertError::Encoding`].
    pub fn finish(self, jose_signature: &[u8]) -> Result<B::Output, CertError> {
        let signature = x509_signature(self.signer.alg, jose_signature)?;
        self.builder
            .assemble(
                BitString::from_bytes(&signature).map_err(encoding)?,
                &self.signer,
            )
            .map_err(encoding)
    }
}

/// A PKCS#10 request for the key `jwk` (signed with `alg`), with `subject` and,
/// when given, subject alternative names.
///
/// # Errors
/// [`CertError`] for a bad subject or name, or an unusable key.
pub fn prepare_request(
    subject_name: &str,
    dns_names: &[String],
    uris: &[String],
    jwk: &PublicJwk,
    alg: Alg,
) -> Result<Prepared<RequestBuilder>, CertError> {
    let mut builder = RequestBuilder::new(subject(subject_name)?).map_err(encoding)?;
    let names = alt_names(dns_names, uris)?;
    if !names.is_empty() {
        builder
            .add_extension(&SubjectAltName(names))
            .map_err(encoding)?;
    }
    prepared(builder, jwk, alg)
}

fn prepared<B: Builder>(
    mut builder: B,
    jwk: &PublicJwk,
    alg: Alg,
) -> Result<Prepared<B>, CertError> {
    let signer = RemoteKey {
        public: PublicKeyInfo(spki_of(jwk)?),
        alg,
    };
    let to_sign = builder.finalize(&signer).map_err(encoding)?;
    Ok(Prepared {
        builder,
        signer,
        to_sign,
    })
}

/// A request in PEM.
///
/// # Errors
/// [`CertError::Encoding`].
pub fn request_pem(request: &x509_cert::request::CertReq) -> Result<String, CertError> {
    request.to_pem(der::pem::LineEnding::LF).map_err(encoding)
}

/// What a new certificate says.
pub struct CertificateSpec<'a> {
    pub subject: &'a str,
    pub validity: Duration,
    pub ca: bool,
    pub dns_names: &'a [String],
    pub uris: &'a [String],
    /// The key usage names (RFC 5280's, e.g. `nonRepudiation`); empty: the
    /// default for a CA or a leaf.
    pub key_usage: &'a [String],
}

/// The key usages RFC 5280 names, by the names kmsgw accepts
/// (`contentCommitment` is X.509's later name for `nonRepudiation`).
const KEY_USAGES: [(&str, KeyUsages); 8] = [
    ("digitalSignature", KeyUsages::DigitalSignature),
    ("nonRepudiation", KeyUsages::NonRepudiation),
    ("contentCommitment", KeyUsages::NonRepudiation),
    ("keyEncipherment", KeyUsages::KeyEncipherment),
    ("dataEncipherment", KeyUsages::DataEncipherment),
    ("keyAgreement", KeyUsages::KeyAgreement),
    ("keyCertSign", KeyUsages::KeyCertSign),
    ("cRLSign", KeyUsages::CRLSign),
];

/// The key usage a certificate gets: the named ones, or by default
/// digitalSignature (a leaf) or keyCertSign, cRLSign and digitalSignature (a CA).
///
/// # Errors
/// An unknown name, or a CA without keyCertSign.
fn key_usage(names: &[String], ca: bool) -> Result<FlagSet<KeyUsages>, CertError> {
    if names.is_empty() {
        return Ok(if ca {
            KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature
        } else {
            KeyUsages::DigitalSignature.into()
        });
    }
    let mut usage = FlagSet::default();
    for name in names {
        let (_, flag) = KEY_USAGES
            .iter()
            .find(|(known, _)| known == name)
            .ok_or_else(|| {
                CertError::Invalid(format!(
                    "keyUsage `{name}` is not one of digitalSignature, nonRepudiation \
                     (contentCommitment), keyEncipherment, dataEncipherment, keyAgreement, \
                     keyCertSign, cRLSign"
                ))
            })?;
        usage |= *flag;
    }
    if ca && !usage.contains(KeyUsages::KeyCertSign) {
        return Err(CertError::Invalid(
            "a CA certificate's keyUsage must include keyCertSign".into(),
        ));
    }
    Ok(usage)
}

/// The issuer of a certificate being made: its certificate (to name it and
/// identify its key), its public key and the algorithm it signs with.
pub struct IssuerSpec<'a> {
    pub certificate: &'a Certificate,
    pub public_jwk: &'a PublicJwk,
    pub alg: Alg,
}

/// Who a certificate names, and the extensions kmsgw puts into it.
pub struct Profile {
    subject: Name,
    issuer: Option<Name>,
    issuer_key_id: Option<OctetString>,
    ca: bool,
    usage: FlagSet<KeyUsages>,
    alt_names: Vec<GeneralName>,
}

impl BuilderProfile for Profile {
    fn get_issuer(&self, subject: &Name) -> Name {
        self.issuer.clone().unwrap_or_else(|| subject.clone())
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        spk: SubjectPublicKeyInfoRef<'_>,
        issuer_spk: SubjectPublicKeyInfoRef<'_>,
        tbs: &TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let mut extensions: Vec<Extension> = Vec::new();
        let subject_key_id = SubjectKeyIdentifier::try_from(spk)?;
        let authority_key_id = match &self.issuer_key_id {
            Some(id) => id.clone(),
            None => SubjectKeyIdentifier::try_from(issuer_spk)?.0,
        };
        let usage = self.usage;
        let mut push = |extension: Extension| extensions.push(extension);
        let subject = tbs.subject();
        push(
            (&BasicConstraints {
                ca: self.ca,
                path_len_constraint: None,
            })
                .to_extension(subject, &[])?,
        );
        push((&KeyUsage(usage)).to_extension(subject, &[])?);
        push((&subject_key_id).to_extension(subject, &[])?);
        push(
            (&AuthorityKeyIdentifier {
                key_identifier: Some(authority_key_id),
                ..Default::default()
            })
                .to_extension(subject, &[])?,
        );
        if !self.alt_names.is_empty() {
            push((&SubjectAltName(self.alt_names.clone())).to_extension(subject, &[])?);
        }
        Ok(extensions)
    }
}

/// A certificate for the key `subject_jwk`: issued by `issuer`, or self-signed
/// with `self_alg` when there is none. Random 128-bit serial, valid from now for
/// `spec.validity`.
///
/// # Errors
/// [`CertError`] for bad input or an unusable key.
pub fn prepare_certificate(
    spec: &CertificateSpec<'_>,
    subject_jwk: &PublicJwk,
    issuer: Option<&IssuerSpec<'_>>,
    self_alg: Alg,
) -> Result<Prepared<CertificateBuilder<Profile>>, CertError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| encoding("no randomness"))?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let profile = Profile {
        subject: subject(spec.subject)?,
        issuer: issuer.map(|i| i.certificate.tbs_certificate().subject().clone()),
        issuer_key_id: issuer.and_then(|i| key_id(i.certificate)),
        ca: spec.ca,
        usage: key_usage(spec.key_usage, spec.ca)?,
        alt_names: alt_names(spec.dns_names, spec.uris)?,
    };
    let builder = CertificateBuilder::new(
        profile,
        SerialNumber::new(&serial).map_err(encoding)?,
        Validity::from_now(spec.validity).map_err(encoding)?,
        spki_of(subject_jwk)?,
    )
    .map_err(encoding)?;
    match issuer {
        Some(issuer) => prepared(builder, issuer.public_jwk, issuer.alg),
        None => prepared(builder, subject_jwk, self_alg),
    }
}

/// The subject key identifier a certificate carries, if any.
fn key_id(certificate: &Certificate) -> Option<OctetString> {
    certificate
        .tbs_certificate()
        .get_extension::<SubjectKeyIdentifier>()
        .ok()
        .flatten()
        .map(|(_, id)| id.0)
}

/// Whether a certificate may issue certificates with `below` CA certificates
/// under it: basic constraints `cA`, `keyCertSign` when it has a key usage, and a
/// path length (when it sets one) of at least `below`.
///
/// # Errors
/// What it lacks.
pub fn may_issue(certificate: &Certificate, below: usize) -> Result<(), &'static str> {
    let tbs = certificate.tbs_certificate();
    let constraints = tbs
        .get_extension::<BasicConstraints>()
        .ok()
        .flatten()
        .map(|(_, bc)| bc);
    let Some(constraints) = constraints.filter(|bc| bc.ca) else {
        return Err("it is not a CA certificate (basic constraints cA)");
    };
    let usage = tbs.get_extension::<KeyUsage>().ok().flatten();
    if usage.is_some_and(|(_, usage)| !usage.0.contains(KeyUsages::KeyCertSign)) {
        return Err("its key usage lacks keyCertSign");
    }
    if constraints
        .path_len_constraint
        .is_some_and(|limit| usize::from(limit) < below)
    {
        return Err("its path length constraint allows fewer CAs below it");
    }
    Ok(())
}

/// Whether a certificate is a CA certificate that may issue leaves.
pub fn is_ca(certificate: &Certificate) -> bool {
    may_issue(certificate, 0).is_ok()
}

/// The certificates of a PEM chain, leaf first.
///
/// # Errors
/// [`CertError::NotPem`] when the text holds no certificate or anything else;
/// [`CertError::TooLarge`] past [`MAX_CHAIN_PEM`] bytes or [`MAX_CHAIN`]
/// certificates.
pub fn parse_chain(pem: &str) -> Result<Vec<Certificate>, CertError> {
    if pem.len() > MAX_CHAIN_PEM {
        return Err(CertError::TooLarge(format!(
            "the chain is {} bytes of PEM; at most {MAX_CHAIN_PEM}",
            pem.len()
        )));
    }
    let chain = Certificate::load_pem_chain(pem.as_bytes())
        .map_err(|e| CertError::NotPem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NotPem("no CERTIFICATE block".into()));
    }
    if chain.len() > MAX_CHAIN {
        return Err(CertError::TooLarge(format!(
            "the chain holds {} certificates; at most {MAX_CHAIN}",
            chain.len()
        )));
    }
    Ok(chain)
}

/// Certificates from their DER.
///
/// # Errors
/// [`CertError::Encoding`] for a damaged stored certificate.
pub fn from_der(chain: &[Vec<u8>]) -> Result<Vec<Certificate>, CertError> {
    chain
        .iter()
        .map(|der| Certificate::from_der(der).map_err(encoding))
        .collect()
}

/// The DER of each certificate.
///
/// # Errors
/// [`CertError::Encoding`].
pub fn to_der(chain: &[Certificate]) -> Result<Vec<Vec<u8>>, CertError> {
    chain.iter().map(|c| c.to_der().map_err(encoding)).collect()
}

/// A chain in PEM, leaf first.
///
/// # Errors
/// [`CertError::Encoding`].
pub fn chain_pem(chain: &[Certificate]) -> Result<String, CertError> {
    chain
        .iter()
        .map(|c| c.to_pem(der::pem::LineEnding::LF).map_err(encoding))
        .collect()
}

/// The public key a certificate certifies.
///
/// # Errors
/// [`CertError::Encoding`] for a key kmsgw cannot read.
pub fn public_jwk(certificate: &Certificate) -> Result<PublicJwk, CertError> {
    let spki = certificate
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(encoding)?;
    PublicJwk::from_spki(&spki).map_err(encoding)
}

/// Whether `certificate` is signed by the key `issuer`.
fn signed_by(certificate: &Certificate, issuer: &PublicJwk) -> bool {
    let Some(alg) = alg_of(certificate.signature_algorithm()) else {
        return false;
    };
    let (Ok(tbs), Some(signature)) = (
        certificate.tbs_certificate().to_der(),
        certificate.signature().as_bytes(),
    ) else {
        return false;
    };
    jose_signature(alg, signature).is_some_and(|sig| issuer.verify(alg, &tbs, &sig))
}

/// A certificate's validity period.
pub fn validity(certificate: &Certificate) -> (SystemTime, SystemTime) {
    let validity = certificate.tbs_certificate().validity();
    (
        validity.not_before.to_system_time(),
        validity.not_after.to_system_time(),
    )
}

/// How far in the future a certificate's `notBefore` may be and still count as valid.
const NOT_BEFORE_LEEWAY: Duration = Duration::from_secs(60);

/// Checks an imported chain for the key `key` at `now`: the leaf certifies `key`,
/// every certificate is within its validity period, each is signed by the next,
/// and each issuer may issue ([`may_issue`]: CA, keyCertSign, path length).
///
/// # Errors
/// The [`CertError`] of the first check that fails.
pub fn check_chain(
    chain: &[Certificate],
    key: &PublicJwk,
    now: SystemTime,
) -> Result<(), CertError> {
    let leaf = public_jwk(&chain[0]).map_err(|_| CertError::KeyMismatch)?;
    if !leaf.same_key(key) {
        return Err(CertError::KeyMismatch);
    }
    for (index, certificate) in chain.iter().enumerate() {
        let (not_before, not_after) = validity(certificate);
        // A minute of leeway for a CA whose clock runs a little ahead.
        if now + NOT_BEFORE_LEEWAY < not_before || now > not_after {
            let shown = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
            return Err(CertError::NotValidNow {
                index,
                not_before: shown(not_before),
                not_after: shown(not_after),
            });
        }
    }
    for (index, pair) in chain.windows(2).enumerate() {
        let issuer = public_jwk(&pair[1]).map_err(|_| CertError::ChainBroken {
            index,
            next: index + 1,
        })?;
        if !signed_by(&pair[0], &issuer) {
            return Err(CertError::ChainBroken {
                index,
                next: index + 1,
            });
        }
        // CAs below the issuer, the leaf not counted.
        may_issue(&pair[1], index).map_err(|why| CertError::IssuerMayNotIssue {
            index: index + 1,
            below: index,
            why,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::PrivateKey;

    #[test]
    fn chains_past_their_bounds_are_refused_before_parsing() {
        let big = "A".repeat(MAX_CHAIN_PEM + 1);
        assert!(matches!(parse_chain(&big), Err(CertError::TooLarge(m)) if m.contains("65536")));
    }

    #[test]
    fn subjects_read_as_people_write_them() {
        let spaced = subject("CN=issuer.example.org, O=Example").unwrap();
        assert_eq!(spaced, subject("CN=issuer.example.org,O=Example").unwrap());
        let escaped = subject(r"CN=Doe\, Jane, O=Example").unwrap();
        assert_eq!(escaped.to_string(), r"CN=Doe\, Jane,O=Example");
        assert!(subject("not a name").is_err());
        assert!(subject("").is_err());
    }

    #[test]
    fn every_algorithm_names_itself_in_x509() {
        for &alg in Alg::ALL {
            // X.509 has one identifier for Ed25519, whichever JOSE name the key has.
            let read = alg_of(&signature_algorithm(alg));
            assert!(read.is_some_and(|r| alg.answers_to(r)), "{alg}: {read:?}");
        }
        let with_parameters = AlgorithmIdentifierOwned {
            parameters: Some(der::asn1::Null.into()),
            ..signature_algorithm(Alg::MlDsa65)
        };
        assert_eq!(
            alg_of(&with_parameters),
            None,
            "RFC 9881: parameters absent"
        );
    }

    /// A self-signed CA certificate of `key`, signed in-process.
    fn self_signed(key: &PrivateKey, alg: Alg, ca: bool) -> Certificate {
        let spec = CertificateSpec {
            subject: "CN=unit test",
            validity: Duration::from_secs(3600),
            ca,
            dns_names: &[],
            uris: &[],
            key_usage: &[],
        };
        let prepared = prepare_certificate(&spec, key.public_jwk(), None, alg).unwrap();
        let signature = key.signer(alg).unwrap().sign(&prepared.to_sign);
        prepared.finish(&signature).unwrap()
    }

    #[test]
    fn certificates_of_every_algorithm_check_and_a_foreign_issuer_does_not() {
        for &alg in Alg::ALL {
            let root_key = PrivateKey::generate(alg, None).unwrap();
            let root = self_signed(&root_key, alg, true);
            assert!(is_ca(&root));
            let leaf_key = PrivateKey::generate(Alg::ES256, None).unwrap();
            let spec = CertificateSpec {
                subject: "CN=leaf",
                validity: Duration::from_secs(3600),
                ca: false,
                dns_names: &["leaf.example".to_owned()],
                uris: &[],
                key_usage: &[],
            };
            let issuer = IssuerSpec {
                certificate: &root,
                public_jwk: root_key.public_jwk(),
                alg,
            };
            let prepared =
                prepare_certificate(&spec, leaf_key.public_jwk(), Some(&issuer), alg).unwrap();
            let signature = root_key.signer(alg).unwrap().sign(&prepared.to_sign);
            let leaf = prepared.finish(&signature).unwrap();
            assert!(!is_ca(&leaf));
            let stranger = self_signed(&PrivateKey::generate(alg, None).unwrap(), alg, true);
            let now = SystemTime::now();
            check_chain(&[leaf.clone(), root], leaf_key.public_jwk(), now)
                .unwrap_or_else(|e| panic!("{alg}: {e}"));
            let broken = check_chain(&[leaf.clone(), stranger], leaf_key.public_jwk(), now);
            assert!(
                matches!(broken, Err(CertError::ChainBroken { index: 0, next: 1 })),
                "{alg}: {broken:?}"
            );
            assert!(matches!(
                check_chain(&[leaf], root_key.public_jwk(), now),
                Err(CertError::KeyMismatch)
            ));
        }
    }

    #[test]
    fn key_usage_names_map_to_flags_and_a_ca_needs_key_cert_sign() {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let usage = key_usage(&names(&["digitalSignature", "nonRepudiation"]), false).unwrap();
        assert_eq!(
            usage,
            KeyUsages::DigitalSignature | KeyUsages::NonRepudiation
        );
        let later_name = key_usage(&names(&["contentCommitment"]), false).unwrap();
        assert_eq!(later_name, FlagSet::from(KeyUsages::NonRepudiation));
        assert!(key_usage(&names(&["signEverything"]), false).is_err());
        assert!(key_usage(&names(&["digitalSignature"]), true).is_err());
        assert!(
            key_usage(&[], true)
                .unwrap()
                .contains(KeyUsages::KeyCertSign)
        );
    }

    #[test]
    fn ps256_parameters_are_recognised_with_and_without_null_hash_parameters() {
        assert!(is_ps256_params(&PSS_SHA256_PARAMS));
        // The same without the NULLs (as asn1crypto writes them).
        let bare: [u8; 50] = [
            0x30, 0x30, 0xa0, 0x0d, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x01, 0xa1, 0x1a, 0x30, 0x18, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7,
            0x0d, 0x01, 0x01, 0x08, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
            0x04, 0x02, 0x01, 0xa2, 0x03, 0x02, 0x01, 0x20,
        ];
        assert!(is_ps256_params(&bare));
        // Another salt, or the defaults (SHA-1), are not PS256.
        let mut other_salt = PSS_SHA256_PARAMS;
        other_salt[53] = 0xde;
        assert!(!is_ps256_params(&other_salt));
        assert!(!is_ps256_params(&[0x30, 0x00]));
    }
}
