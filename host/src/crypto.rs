//! The key model and the host's cryptography: the JOSE algorithms, public JWKs of
//! every key type (EC P-256/384/521, OKP Ed25519, RSA, AKP ML-DSA) and their verification,
//! private keys from JWKs or generated, signers backed by aws-lc-rs, and the base64
//! forms the API accepts.

pub mod der;
pub mod master;
mod private;
pub mod publisher;
pub mod seal;

use std::fmt;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ECDSA_P521_SHA512_FIXED, ED25519, ML_DSA_44,
    ML_DSA_44_SIGNING, ML_DSA_65, ML_DSA_65_SIGNING, ML_DSA_87, ML_DSA_87_SIGNING,
    PqdsaSigningAlgorithm, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde::{Deserialize, Serialize};

pub use self::private::{PrivateKey, Signer};

const INDIFFERENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD_ANY_PAD: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, INDIFFERENT);
const URL_SAFE_ANY_PAD: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::URL_SAFE, INDIFFERENT);

/// Decodes standard or url-safe base64, padded or not.
///
/// # Errors
/// When the text is neither form.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    STANDARD_ANY_PAD
        .decode(text)
        .or_else(|_| URL_SAFE_ANY_PAD.decode(text))
}

/// Encodes as unpadded base64url (the JOSE form).
pub fn base64url(bytes: &[u8]) -> String {
    general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What a signature covers: the message itself, or the digest of it that a
/// client computed with the algorithm's hash ([`Alg::prehash`]). `T` is one
/// input (`&[u8]`) or a batch of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToSign<T> {
    Message(T),
    Digest(T),
}

impl<T> ToSign<T> {
    /// The message or digest.
    pub fn bytes(&self) -> &T {
        match self {
            ToSign::Message(bytes) | ToSign::Digest(bytes) => bytes,
        }
    }

    /// The same kind of input around other bytes.
    pub fn with<U>(&self, bytes: U) -> ToSign<U> {
        match self {
            ToSign::Message(_) => ToSign::Message(bytes),
            ToSign::Digest(_) => ToSign::Digest(bytes),
        }
    }

    /// Whether this is a client's digest.
    pub fn is_digest(&self) -> bool {
        matches!(self, ToSign::Digest(_))
    }
}

/// A JOSE signing algorithm the gateway knows (RFC 7518, RFC 8037, RFC 9864,
/// RFC 9964).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Alg {
    /// ECDSA on P-256 with SHA-256; raw `r‖s`, 64 bytes.
    ES256,
    /// ECDSA on P-384 with SHA-384; raw `r‖s`, 96 bytes.
    ES384,
    /// ECDSA on P-521 with SHA-512; raw `r‖s`, 132 bytes.
    ES512,
    /// Ed25519; 64 bytes.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256; modulus-sized.
    RS256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a 32-byte salt; modulus-sized.
    PS256,
    /// Ed25519 under its fully specified name (RFC 9864); the same signature as `EdDSA`.
    Ed25519,
    /// ML-DSA-44 (FIPS 204, pure, empty context); 2420 bytes.
    #[serde(rename = "ML-DSA-44")]
    #[schema(rename = "ML-DSA-44")]
    MlDsa44,
    /// ML-DSA-65; 3309 bytes.
    #[serde(rename = "ML-DSA-65")]
    #[schema(rename = "ML-DSA-65")]
    MlDsa65,
    /// ML-DSA-87; 4627 bytes.
    #[serde(rename = "ML-DSA-87")]
    #[schema(rename = "ML-DSA-87")]
    MlDsa87,
}

impl Alg {
    /// Every algorithm the gateway knows.
    pub const ALL: &'static [Alg] = &[
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
        Alg::RS256,
        Alg::PS256,
        Alg::Ed25519,
        Alg::MlDsa44,
        Alg::MlDsa65,
        Alg::MlDsa87,
    ];

    /// The JOSE name of the algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
            Alg::RS256 => "RS256",
            Alg::PS256 => "PS256",
            Alg::Ed25519 => "Ed25519",
            Alg::MlDsa44 => "ML-DSA-44",
            Alg::MlDsa65 => "ML-DSA-65",
            Alg::MlDsa87 => "ML-DSA-87",
        }
    }

    /// Parses a JOSE algorithm name; `None` when the gateway does not know it.
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.iter().copied().find(|a| a.as_str() == name)
    }

    /// The kind of key the algorithm signs with.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Alg::ES256 => KeyKind::Ec(Curve::P256),
            Alg::ES384 => KeyKind::Ec(Curve::P384),
            Alg::ES512 => KeyKind::Ec(Curve::P521),
            Alg::EdDSA | Alg::Ed25519 => KeyKind::Ed25519,
            Alg::RS256 | Alg::PS256 => KeyKind::Rsa,
            Alg::MlDsa44 => KeyKind::MlDsa(MlDsa::L44),
            Alg::MlDsa65 => KeyKind::MlDsa(MlDsa::L65),
            Alg::MlDsa87 => KeyKind::MlDsa(MlDsa::L87),
        }
    }

    /// The hash the algorithm signs over, whose digest a client may send instead
    /// of the message; `None` for Ed25519 and ML-DSA, which sign the message itself.
    pub fn prehash(self) -> Option<&'static aws_lc_rs::digest::Algorithm> {
        use aws_lc_rs::digest::{SHA256, SHA384, SHA512};
        match self {
            Alg::ES256 | Alg::RS256 | Alg::PS256 => Some(&SHA256),
            Alg::ES384 => Some(&SHA384),
            Alg::ES512 => Some(&SHA512),
            Alg::EdDSA | Alg::Ed25519 | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => None,
        }
    }

    /// Whether a key of this algorithm may sign for a request naming `asked`:
    /// the same algorithm, or the other name of Ed25519 (`EdDSA`/`Ed25519` are
    /// one signature).
    pub fn answers_to(self, asked: Alg) -> bool {
        self == asked
            || (self.key_kind() == KeyKind::Ed25519 && asked.key_kind() == KeyKind::Ed25519)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NIST curve for ECDSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }

    /// Bytes of one coordinate, and of each half of a raw signature.
    pub fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// The DER contents of the curve's OID.
    pub fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => der::P256_OID,
            Curve::P384 => der::P384_OID,
            Curve::P521 => der::P521_OID,
        }
    }

    /// The ECDSA algorithm on this curve.
    pub fn alg(self) -> Alg {
        match self {
            Curve::P256 => Alg::ES256,
            Curve::P384 => Alg::ES384,
            Curve::P521 => Alg::ES512,
        }
    }

    fn from_name(name: &str) -> Option<Curve> {
        [Curve::P256, Curve::P384, Curve::P521]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

/// An ML-DSA parameter set (FIPS 204).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlDsa {
    L44,
    L65,
    L87,
}

impl MlDsa {
    /// The JOSE algorithm of this parameter set.
    pub fn alg(self) -> Alg {
        match self {
            MlDsa::L44 => Alg::MlDsa44,
            MlDsa::L65 => Alg::MlDsa65,
            MlDsa::L87 => Alg::MlDsa87,
        }
    }

    /// Bytes of a public key.
    pub fn public_len(self) -> usize {
        match self {
            MlDsa::L44 => 1312,
            MlDsa::L65 => 1952,
            MlDsa::L87 => 2592,
        }
    }

    /// Bytes of a signature.
    pub fn signature_len(self) -> usize {
        match self {
            MlDsa::L44 => 2420,
            MlDsa::L65 => 3309,
            MlDsa::L87 => 4627,
        }
    }

    /// The DER contents of the algorithm's OID (RFC 9881: id-ml-dsa-44/65/87,
    /// 2.16.840.1.101.3.4.3.17/18/19), which names both the key and the signature.
    pub fn oid(self) -> &'static [u8] {
        match self {
            MlDsa::L44 => der::ML_DSA_44_OID,
            MlDsa::L65 => der::ML_DSA_65_OID,
            MlDsa::L87 => der::ML_DSA_87_OID,
        }
    }

    /// Every parameter set.
    pub const ALL: [MlDsa; 3] = [MlDsa::L44, MlDsa::L65, MlDsa::L87];

    pub(crate) fn signing(self) -> &'static PqdsaSigningAlgorithm {
        match self {
            MlDsa::L44 => &ML_DSA_44_SIGNING,
            MlDsa::L65 => &ML_DSA_65_SIGNING,
            MlDsa::L87 => &ML_DSA_87_SIGNING,
        }
    }
}

/// The kind of key an algorithm needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Ec(Curve),
    Ed25519,
    Rsa,
    MlDsa(MlDsa),
}

impl KeyKind {
    /// The algorithm a key of this kind signs with when no request names one:
    /// the curve's ECDSA, `EdDSA`, `RS256` or the parameter set's ML-DSA.
    pub fn default_alg(self) -> Alg {
        match self {
            KeyKind::Ec(curve) => curve.alg(),
            KeyKind::Ed25519 => Alg::EdDSA,
            KeyKind::Rsa => Alg::RS256,
            KeyKind::MlDsa(level) => level.alg(),
        }
    }
}

/// RSA moduli kmsgw accepts, in bits.
pub const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// A JWK that cannot be used, with the reason for a person.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JwkError(pub(crate) String);

/// A public key as a JWK (RFC 7517/7518/8037/9964): `EC` (`crv`, `x`, `y`), `OKP`
/// (`crv: Ed25519`, `x`), `RSA` (`n`, `e`) or `AKP` (`alg`, `pub`: ML-DSA).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// The ML-DSA public key of an `AKP` JWK.
    #[serde(rename = "pub", skip_serializing_if = "Option::is_none")]
    #[schema(rename = "pub")]
    pub pub_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

fn decode_part(name: &str, text: Option<&str>) -> Result<Vec<u8>, JwkError> {
    let text = text.ok_or_else(|| JwkError(format!("the JWK has no `{name}`")))?;
    URL_SAFE_ANY_PAD
        .decode(text)
        .map_err(|_| JwkError(format!("`{name}` is not base64url")))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

impl PublicJwk {
    fn bare(kty: &str, crv: Option<&str>) -> PublicJwk {
        PublicJwk {
            kty: kty.into(),
            crv: crv.map(str::to_owned),
            x: None,
            y: None,
            n: None,
            e: None,
            pub_: None,
            kid: None,
            alg: None,
            use_: None,
        }
    }

    /// The JWK of an uncompressed SEC1 point (`04 ‖ x ‖ y`) on `curve`.
    ///
    /// # Errors
    /// When the bytes are not a point on the curve.
    pub fn ec(curve: Curve, point: &[u8]) -> Result<Self, JwkError> {
        let size = curve.size();
        if point.len() != 1 + 2 * size || point[0] != 4 {
            return Err(JwkError(format!(
                "not an uncompressed {} point",
                curve.name()
            )));
        }
        let jwk = PublicJwk {
            x: Some(base64url(&point[1..=size])),
            y: Some(base64url(&point[1 + size..])),
            ..Self::bare("EC", Some(curve.name()))
        };
        jwk.check(curve.alg())?;
        Ok(jwk)
    }

    /// The JWK of a 32-byte Ed25519 public key.
    ///
    /// # Errors
    /// When it is not 32 bytes.
    pub fn ed25519(public: &[u8]) -> Result<Self, JwkError> {
        if public.len() != 32 {
            return Err(JwkError("an Ed25519 public key is 32 bytes".into()));
        }
        Ok(PublicJwk {
            x: Some(base64url(public)),
            ..Self::bare("OKP", Some("Ed25519"))
        })
    }

    /// The JWK of an RSA public key (big-endian modulus and exponent).
    ///
    /// # Errors
    /// When the modulus is not 2048 to 4096 bits or the exponent is not odd.
    pub fn rsa(n: &[u8], e: &[u8]) -> Result<Self, JwkError> {
        let jwk = PublicJwk {
            n: Some(base64url(strip_zeros(n))),
            e: Some(base64url(strip_zeros(e))),
            ..Self::bare("RSA", None)
        };
        jwk.check(Alg::RS256)?;
        Ok(jwk)
    }

    /// The `AKP` JWK of an ML-DSA public key.
    ///
    /// # Errors
    /// When it is not the parameter set's length.
    pub fn ml_dsa(level: MlDsa, public: &[u8]) -> Result<Self, JwkError> {
        if public.len() != level.public_len() {
            return Err(JwkError(format!(
                "an {} public key is {} bytes, not {}",
                level.alg(),
                level.public_len(),
                public.len()
            )));
        }
        Ok(PublicJwk {
            pub_: Some(base64url(public)),
            alg: Some(level.alg().as_str().to_owned()),
            ..Self::bare("AKP", None)
        })
    }

    /// The JWK of a DER SubjectPublicKeyInfo.
    ///
    /// # Errors
    /// When it is not one, or holds an unknown curve or key type.
    pub fn from_spki(spki: &[u8]) -> Result<Self, JwkError> {
        match der::spki(spki).map_err(JwkError)? {
            der::SpkiKey::Ec { curve_oid, point } => {
                let curve = [Curve::P256, Curve::P384, Curve::P521]
                    .into_iter()
                    .find(|c| c.oid() == curve_oid)
                    .ok_or_else(|| JwkError("the EC key is not on P-256, P-384 or P-521".into()))?;
                Self::ec(curve, point)
            }
            der::SpkiKey::Ed25519(key) => Self::ed25519(key),
            der::SpkiKey::Rsa { n, e } => Self::rsa(n, e),
            der::SpkiKey::MlDsa { level, key } => Self::ml_dsa(level, key),
        }
    }

    /// The kind of key this JWK holds.
    ///
    /// # Errors
    /// When `kty`/`crv` name no key kind kmsgw knows.
    pub fn kind(&self) -> Result<KeyKind, JwkError> {
        match (self.kty.as_str(), self.crv.as_deref()) {
            ("EC", Some(crv)) => Curve::from_name(crv)
                .map(KeyKind::Ec)
                .ok_or_else(|| JwkError(format!("curve `{crv}` is not P-256, P-384 or P-521"))),
            ("OKP", Some("Ed25519")) => Ok(KeyKind::Ed25519),
            ("RSA", _) => Ok(KeyKind::Rsa),
            ("AKP", _) => match self.alg.as_deref().and_then(Alg::parse).map(Alg::key_kind) {
                Some(kind @ KeyKind::MlDsa(_)) => Ok(kind),
                _ => Err(JwkError(format!(
                    "an AKP key needs `alg` ML-DSA-44, ML-DSA-65 or ML-DSA-87{}",
                    self.alg
                        .as_deref()
                        .map(|a| format!(", not `{a}`"))
                        .unwrap_or_default()
                ))),
            },
            (kty, crv) => Err(JwkError(format!(
                "key type `{kty}`{} is not supported (EC, OKP Ed25519, RSA or AKP)",
                crv.map(|c| format!(" `{c}`")).unwrap_or_default()
            ))),
        }
    }

    /// The public key bytes aws-lc-rs verifies with: the SEC1 point for EC, the
    /// 32 bytes for Ed25519, `(n, e)` for RSA and the raw public key for ML-DSA.
    fn parts(&self) -> Result<(Vec<u8>, Vec<u8>), JwkError> {
        match self.kind()? {
            KeyKind::Ec(curve) => {
                let (x, y) = (
                    decode_part("x", self.x.as_deref())?,
                    decode_part("y", self.y.as_deref())?,
                );
                if x.len() != curve.size() || y.len() != curve.size() {
                    return Err(JwkError(format!(
                        "`x` and `y` must be {} bytes for {}",
                        curve.size(),
                        curve.name()
                    )));
                }
                let mut point = Vec::with_capacity(1 + 2 * curve.size());
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Ok((point, Vec::new()))
            }
            KeyKind::Ed25519 => {
                let x = decode_part("x", self.x.as_deref())?;
                if x.len() != 32 {
                    return Err(JwkError("`x` must be 32 bytes for Ed25519".into()));
                }
                Ok((x, Vec::new()))
            }
            KeyKind::Rsa => {
                let n = decode_part("n", self.n.as_deref())?;
                let e = decode_part("e", self.e.as_deref())?;
                let bits = strip_zeros(&n).len() * 8;
                if !RSA_BITS.contains(&bits) {
                    return Err(JwkError(format!(
                        "an RSA modulus of about {bits} bits is not supported (2048 to 4096)"
                    )));
                }
                if e.last().is_none_or(|b| b % 2 == 0) {
                    return Err(JwkError("the RSA exponent `e` must be odd".into()));
                }
                Ok((n, e))
            }
            KeyKind::MlDsa(level) => {
                let key = decode_part("pub", self.pub_.as_deref())?;
                if key.len() != level.public_len() {
                    return Err(JwkError(format!(
                        "`pub` must be {} bytes for {}",
                        level.public_len(),
                        level.alg()
                    )));
                }
                Ok((key, Vec::new()))
            }
        }
    }

    /// Checks that this is a usable public key for `alg`: the right key type and
    /// curve, well-formed, and (for EC) a point on the curve.
    ///
    /// # Errors
    /// A [`JwkError`] naming what is wrong.
    pub fn check(&self, alg: Alg) -> Result<(), JwkError> {
        let kind = self.kind()?;
        if kind != alg.key_kind() {
            return Err(JwkError(format!(
                "a {} key cannot be used for {alg}",
                self.describe()
            )));
        }
        let (key, _) = self.parts()?;
        if let KeyKind::Ec(curve) = kind {
            aws_lc_rs::signature::ParsedPublicKey::new(verification(alg), &key).map_err(|_| {
                JwkError(format!(
                    "the point (x, y) is not on the {} curve",
                    curve.name()
                ))
            })?;
        }
        Ok(())
    }

    /// Whether `signature` is a valid `alg` signature of `message` by this key.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        let Ok((key, exponent)) = self.parts() else {
            return false;
        };
        if self.kind().ok() != Some(alg.key_kind()) {
            return false;
        }
        match alg.key_kind() {
            KeyKind::Rsa => RsaPublicKeyComponents {
                n: &key[..],
                e: &exponent[..],
            }
            .verify(rsa_params(alg), message, signature)
            .is_ok(),
            _ => UnparsedPublicKey::new(verification(alg), &key)
                .verify(message, signature)
                .is_ok(),
        }
    }

    /// Whether `signature` is a valid `alg` signature of what `input` names: a
    /// message, or the digest of one under the algorithm's hash.
    pub fn verify_input(&self, alg: Alg, input: ToSign<&[u8]>, signature: &[u8]) -> bool {
        let digest = match input {
            ToSign::Message(message) => return self.verify(alg, message, signature),
            ToSign::Digest(digest) => digest,
        };
        let Some(digest) = alg
            .prehash()
            .and_then(|hash| aws_lc_rs::digest::Digest::import_less_safe(digest, hash).ok())
        else {
            return false;
        };
        let Ok((key, exponent)) = self.parts() else {
            return false;
        };
        if self.kind().ok() != Some(alg.key_kind()) {
            return false;
        }
        let key = match alg.key_kind() {
            KeyKind::Rsa => match der::rsa_public_key(strip_zeros(&key), strip_zeros(&exponent)) {
                Ok(key) => key,
                Err(_) => return false,
            },
            _ => key,
        };
        UnparsedPublicKey::new(verification(alg), &key)
            .verify_digest(&digest, signature)
            .is_ok()
    }

    /// The length of every `alg` signature by this key: fixed for ECDSA, EdDSA
    /// and ML-DSA, the modulus length for RSA; `None` when the JWK is unusable.
    pub fn signature_len(&self, alg: Alg) -> Option<usize> {
        match alg.key_kind() {
            KeyKind::Ec(curve) => Some(2 * curve.size()),
            KeyKind::Ed25519 => Some(64),
            KeyKind::Rsa => self.parts().ok().map(|(n, _)| strip_zeros(&n).len()),
            KeyKind::MlDsa(level) => Some(level.signature_len()),
        }
    }

    /// Whether `other` is the same public key (labels aside; an AKP key's `alg`
    /// is part of the key).
    pub fn same_key(&self, other: &PublicJwk) -> bool {
        let akp_alg = |jwk: &PublicJwk| (jwk.kty == "AKP").then(|| jwk.alg.clone());
        (
            &self.kty, &self.crv, &self.x, &self.y, &self.n, &self.e, &self.pub_,
        ) == (
            &other.kty,
            &other.crv,
            &other.x,
            &other.y,
            &other.n,
            &other.e,
            &other.pub_,
        ) && akp_alg(self) == akp_alg(other)
    }

    /// FIPS 204's μ of `message` for this ML-DSA key (pure, empty context):
    /// SHAKE256(SHAKE256(pk, 64) ‖ 0x00 ‖ 0x00 ‖ message, 64), what a signer
    /// that takes an external μ signs instead of the message.
    ///
    /// # Errors
    /// When this is not a usable ML-DSA key.
    pub fn ml_dsa_mu(&self, message: &[u8]) -> Result<[u8; 64], JwkError> {
        use shake::{ExtendableOutput, Update, XofReader};
        let KeyKind::MlDsa(_) = self.kind()? else {
            return Err(JwkError(format!(
                "a {} key has no ML-DSA μ",
                self.describe()
            )));
        };
        let (public, _) = self.parts()?;
        let mut tr = [0u8; 64];
        shake::Shake256::default()
            .chain(&public)
            .finalize_xof()
            .read(&mut tr);
        let mut mu = [0u8; 64];
        shake::Shake256::default()
            .chain(tr)
            .chain([0, 0])
            .chain(message)
            .finalize_xof()
            .read(&mut mu);
        Ok(mu)
    }

    /// `EC P-384`, `OKP Ed25519`, `RSA`, `AKP ML-DSA-65`: for messages.
    pub fn describe(&self) -> String {
        match (&self.crv, &self.alg) {
            (Some(crv), _) => format!("{} {crv}", self.kty),
            (None, Some(alg)) if self.kty == "AKP" => format!("AKP {alg}"),
            _ => self.kty.clone(),
        }
    }

    /// The same key labelled with `kid` and `alg`, as published.
    pub fn labelled(&self, kid: &str, alg: &str) -> PublicJwk {
        PublicJwk {
            kid: Some(kid.to_owned()),
            alg: Some(alg.to_owned()),
            use_: Some("sig".into()),
            ..self.clone()
        }
    }

    /// The key without labels, as a backend returns it (an AKP key keeps its
    /// `alg`, which RFC 9964 makes part of the key).
    pub fn unlabelled(&self) -> PublicJwk {
        PublicJwk {
            kid: None,
            alg: if self.kty == "AKP" {
                self.alg.clone()
            } else {
                None
            },
            use_: None,
            ..self.clone()
        }
    }
}

/// The aws-lc-rs verification algorithm of `alg`.
fn verification(alg: Alg) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
    match alg {
        Alg::ES256 => &ECDSA_P256_SHA256_FIXED,
        Alg::ES384 => &ECDSA_P384_SHA384_FIXED,
        Alg::ES512 => &ECDSA_P521_SHA512_FIXED,
        Alg::EdDSA | Alg::Ed25519 => &ED25519,
        Alg::RS256 => &RSA_PKCS1_2048_8192_SHA256,
        Alg::PS256 => &RSA_PSS_2048_8192_SHA256,
        Alg::MlDsa44 => &ML_DSA_44,
        Alg::MlDsa65 => &ML_DSA_65,
        Alg::MlDsa87 => &ML_DSA_87,
    }
}

fn rsa_params(alg: Alg) -> &'static aws_lc_rs::signature::RsaParameters {
    match alg {
        Alg::PS256 => &RSA_PSS_2048_8192_SHA256,
        _ => &RSA_PKCS1_2048_8192_SHA256,
    }
}

/// Converts a DER ECDSA signature to the raw `r‖s` of JOSE for `alg`.
///
/// # Errors
/// When `alg` is not ECDSA or the DER is malformed.
pub fn ecdsa_der_to_raw(alg: Alg, der_signature: &[u8]) -> Result<Vec<u8>, String> {
    match alg.key_kind() {
        KeyKind::Ec(curve) => der::ecdsa_der_to_raw(der_signature, curve.size()),
        _ => Err(format!("{alg} signatures are not DER")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_jwks_check_their_algorithm_and_their_point() {
        let key = PrivateKey::generate(Alg::ES384, None).unwrap();
        let jwk = key.public_jwk().clone();
        assert!(jwk.check(Alg::ES384).is_ok());
        assert!(jwk.check(Alg::ES256).unwrap_err().0.contains("EC P-384"));
        let mut off_curve = jwk.clone();
        off_curve.y = off_curve.x.clone();
        assert!(
            off_curve
                .check(Alg::ES384)
                .unwrap_err()
                .0
                .contains("not on the P-384")
        );
        let rsa = PublicJwk {
            n: Some(base64url(&[0xc1; 128])),
            e: Some("AQAB".into()),
            ..PublicJwk::bare("RSA", None)
        };
        assert!(rsa.check(Alg::RS256).unwrap_err().0.contains("1024 bits"));
    }

    #[test]
    fn base64_accepts_both_alphabets_with_or_without_padding() {
        let bytes = [0xfb, 0xff, 0xfe, 0x01];
        for text in ["+//+AQ==", "+//+AQ", "-__-AQ==", "-__-AQ"] {
            assert_eq!(decode_base64(text).unwrap(), bytes, "{text}");
        }
        assert!(decode_base64("not base64!").is_err());
    }
}
