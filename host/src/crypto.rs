//! Key formats and the host signer: P-256 JWKs (public and private), the base64
//! forms the API accepts, and an ES256 signer backed by aws-lc-rs.

pub mod seal;

use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

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

fn decode_coordinate(name: &str, text: &str) -> Result<Zeroizing<[u8; 32]>, JwkError> {
    let bytes = Zeroizing::new(
        URL_SAFE_ANY_PAD
            .decode(text)
            .map_err(|_| JwkError(format!("`{name}` is not base64url")))?,
    );
    let array: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        JwkError(format!(
            "`{name}` must be 32 bytes for P-256, got {}",
            bytes.len()
        ))
    })?;
    Ok(Zeroizing::new(array))
}

/// A JWK that cannot be used, with the reason for a person.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JwkError(String);

/// The public half of a P-256 key as a JWK (RFC 7517/7518).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

impl PublicJwk {
    /// The JWK of an uncompressed SEC1 point (`04 ‖ x ‖ y`).
    ///
    /// # Errors
    /// When the bytes are not a point on P-256.
    pub fn from_sec1(point: &[u8]) -> Result<Self, JwkError> {
        let key = p256::PublicKey::from_sec1_bytes(point)
            .map_err(|_| JwkError("not a point on P-256".into()))?;
        // P-256 public keys serialise uncompressed: 04 ‖ x ‖ y.
        let encoded = key.to_sec1_bytes();
        if encoded.len() != 65 {
            return Err(JwkError("not a point on P-256".into()));
        }
        Ok(PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: base64url(&encoded[1..33]),
            y: base64url(&encoded[33..]),
            kid: None,
            alg: None,
            use_: None,
        })
    }

    /// The uncompressed SEC1 point of this JWK.
    ///
    /// # Errors
    /// When the JWK is not a valid P-256 public key.
    pub fn to_sec1(&self) -> Result<[u8; 65], JwkError> {
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(JwkError("not a P-256 EC key".into()));
        }
        let mut point = [0u8; 65];
        point[0] = 4;
        point[1..33].copy_from_slice(decode_coordinate("x", &self.x)?.as_slice());
        point[33..].copy_from_slice(decode_coordinate("y", &self.y)?.as_slice());
        p256::PublicKey::from_sec1_bytes(&point)
            .map_err(|_| JwkError("the point (x, y) is not on the P-256 curve".into()))?;
        Ok(point)
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
}

/// A validated P-256 private key: the scalar (zeroized on drop) and its public point.
pub struct PrivateKey {
    scalar: Zeroizing<[u8; 32]>,
    public: [u8; 65],
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public_x", &base64url(&self.public[1..33]))
            .finish_non_exhaustive()
    }
}

/// The fields of a private JWK that matter; others (`kid`, `use`, …) are ignored.
#[derive(Deserialize)]
struct PrivateJwkFields {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
}

impl PrivateKey {
    /// Validates a private JWK: EC on P-256, with `d`, and with `x`/`y` (when given)
    /// on the curve and belonging to `d`.
    ///
    /// # Errors
    /// A [`JwkError`] naming what is wrong.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, JwkError> {
        let fields = PrivateJwkFields::deserialize(jwk)
            .map_err(|e| JwkError(format!("privateJwk is not a JWK object: {e}")))?;
        match fields.kty.as_deref() {
            Some("EC") => {}
            Some(other) => {
                return Err(JwkError(format!(
                    "key type `{other}` is not supported; only EC keys on P-256 are"
                )));
            }
            None => return Err(JwkError("privateJwk has no `kty`".into())),
        }
        match fields.crv.as_deref() {
            Some("P-256") => {}
            Some(other) => {
                return Err(JwkError(format!(
                    "curve `{other}` is not supported; only P-256 is"
                )));
            }
            None => return Err(JwkError("privateJwk has no `crv`".into())),
        }
        let Some(d) = fields.d.as_deref() else {
            return Err(JwkError(
                "privateJwk has no private part `d` (a public JWK cannot be imported)".into(),
            ));
        };
        let scalar = decode_coordinate("d", d)?;
        let secret = p256::SecretKey::from_slice(scalar.as_slice())
            .map_err(|_| JwkError("`d` is not a valid P-256 private scalar".into()))?;
        let derived = PublicJwk::from_sec1(&secret.public_key().to_sec1_bytes())?;
        match (fields.x, fields.y) {
            (Some(x), Some(y)) => {
                let given = PublicJwk {
                    x,
                    y,
                    ..derived.clone()
                };
                given.to_sec1()?;
                if given.x != derived.x || given.y != derived.y {
                    return Err(JwkError(
                        "`x`/`y` do not belong to the private key `d`".into(),
                    ));
                }
            }
            (None, None) => {}
            _ => return Err(JwkError("privateJwk has only one of `x` and `y`".into())),
        }
        let public = derived.to_sec1()?;
        Ok(PrivateKey { scalar, public })
    }

    /// Builds a key from its raw scalar, deriving the public point.
    ///
    /// # Errors
    /// When the bytes are not a valid P-256 scalar.
    pub fn from_scalar(bytes: &[u8]) -> Result<Self, JwkError> {
        let secret = p256::SecretKey::from_slice(bytes)
            .map_err(|_| JwkError("not a valid P-256 private scalar".into()))?;
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(bytes);
        let public: [u8; 65] = secret
            .public_key()
            .to_sec1_bytes()
            .as_ref()
            .try_into()
            .map_err(|_| JwkError("unexpected public point encoding".into()))?;
        Ok(PrivateKey { scalar, public })
    }

    /// Generates a fresh key.
    pub fn generate() -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("aws-lc-rs P-256 key generation does not fail");
        let bin = pair
            .private_key()
            .as_be_bytes()
            .expect("a generated P-256 key has a scalar");
        let mut scalar = Zeroizing::new([0u8; 32]);
        scalar.copy_from_slice(bin.as_ref());
        let mut public = [0u8; 65];
        public.copy_from_slice(pair.public_key().as_ref());
        PrivateKey { scalar, public }
    }

    /// The raw 32-byte scalar.
    pub fn scalar(&self) -> &[u8; 32] {
        &self.scalar
    }

    /// The uncompressed public point.
    pub fn public_point(&self) -> &[u8; 65] {
        &self.public
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> PublicJwk {
        PublicJwk::from_sec1(&self.public).expect("a valid key has a valid public point")
    }

    /// An ES256 signer for this key.
    pub fn signer(&self) -> Es256Signer {
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            self.scalar.as_slice(),
            &self.public,
        )
        .expect("a validated P-256 key loads into aws-lc-rs");
        Es256Signer { pair }
    }
}

/// Signs with ES256 on the host. The key lives in aws-lc, which wipes it when freed.
pub struct Es256Signer {
    pair: EcdsaKeyPair,
}

impl Es256Signer {
    /// SHA-256 of `message`, signed; returns the 64-byte raw `r‖s`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // SystemRandom is a zero-sized handle onto aws-lc's DRBG.
        let signature = self
            .pair
            .sign(&SystemRandom::new(), message)
            .expect("ECDSA signing with a loaded key does not fail");
        signature.as_ref().to_vec()
    }
}

/// Converts a DER ECDSA signature (`SEQUENCE { INTEGER r, INTEGER s }`, what AWS
/// KMS returns) to the 64-byte raw `r‖s` of JOSE, left-padding short integers.
///
/// # Errors
/// A message when the input is not such a DER structure or a value exceeds 32 bytes.
pub fn der_to_raw_p256(der: &[u8]) -> Result<[u8; 64], String> {
    fn integer<'a>(input: &'a [u8], name: &str) -> Result<(&'a [u8], &'a [u8]), String> {
        let [0x02, len, rest @ ..] = input else {
            return Err(format!("{name} is not a DER INTEGER"));
        };
        let len = usize::from(*len);
        if len == 0 || len > 33 || rest.len() < len {
            return Err(format!("{name} has a bad length"));
        }
        let (value, rest) = rest.split_at(len);
        // A leading zero only marks a positive number whose top bit is set.
        let value = match value {
            [0, tail @ ..] if !tail.is_empty() => tail,
            v => v,
        };
        if value.len() > 32 {
            return Err(format!("{name} is longer than 32 bytes"));
        }
        Ok((value, rest))
    }
    let [0x30, len, body @ ..] = der else {
        return Err("not a DER SEQUENCE".into());
    };
    if usize::from(*len) != body.len() {
        return Err("DER SEQUENCE length does not match".into());
    }
    let (r, rest) = integer(body, "r")?;
    let (s, rest) = integer(rest, "s")?;
    if !rest.is_empty() {
        return Err("trailing bytes after s".into());
    }
    let mut raw = [0u8; 64];
    raw[32 - r.len()..32].copy_from_slice(r);
    raw[64 - s.len()..].copy_from_slice(s);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    #[test]
    fn der_to_raw_handles_short_and_padded_integers() {
        // r = 0x01 (one byte), s = 0x80 followed by 31 bytes (needs a zero pad byte).
        let mut s = vec![0x80];
        s.extend([0x11; 31]);
        let mut der = vec![0x30, 3 + 2 + 33, 0x02, 0x01, 0x01, 0x02, 33, 0x00];
        der.extend(&s);
        let raw = der_to_raw_p256(&der).unwrap();
        assert_eq!(raw[..31], [0; 31]);
        assert_eq!(raw[31], 1);
        assert_eq!(raw[32..], s[..]);

        // Both short: r = 0x7f00 (2 bytes), s = 0x05.
        let raw = der_to_raw_p256(&[0x30, 7, 0x02, 2, 0x7f, 0x00, 0x02, 1, 0x05]).unwrap();
        assert_eq!(&raw[30..32], &[0x7f, 0x00]);
        assert_eq!(raw[63], 5);
        assert!(raw[..30].iter().chain(&raw[32..63]).all(|b| *b == 0));
    }

    #[test]
    fn der_to_raw_matches_an_independent_encoder() {
        let key = p256::ecdsa::SigningKey::from_slice(&[0x21; 32]).unwrap();
        for message in [&b"a"[..], b"b", b"c", b"d", b"e", b"f"] {
            let signature: p256::ecdsa::Signature =
                p256::ecdsa::signature::Signer::sign(&key, message);
            let der = signature.to_der();
            assert_eq!(
                der_to_raw_p256(der.as_bytes()).unwrap()[..],
                signature.to_bytes()[..]
            );
        }
    }

    #[test]
    fn der_to_raw_rejects_malformed_input() {
        assert!(der_to_raw_p256(&[]).is_err());
        assert!(der_to_raw_p256(&[0x30, 3, 0x02, 1, 1]).is_err());
        let mut long = vec![0x30, 38, 0x02, 34, 0x01];
        long.extend([0x11; 33]);
        long.extend([0x02, 1, 1]);
        assert!(der_to_raw_p256(&long).is_err());
    }

    fn jwk_of(key: &PrivateKey) -> serde_json::Value {
        let public = key.public_jwk();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": public.x, "y": public.y,
            "d": base64url(key.scalar()),
        })
    }

    #[test]
    fn signature_verifies_with_an_independent_implementation() {
        let key = PrivateKey::generate();
        let signature = key.signer().sign(b"hello");
        assert_eq!(signature.len(), 64);
        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(key.public_point()).unwrap();
        let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        verifying.verify(b"hello", &signature).unwrap();
        assert!(verifying.verify(b"hellO", &signature).is_err());
    }

    #[test]
    fn private_jwk_round_trips() {
        let key = PrivateKey::generate();
        let parsed = PrivateKey::from_jwk(&jwk_of(&key)).unwrap();
        assert_eq!(parsed.public_point(), key.public_point());
    }

    #[test]
    fn private_jwk_rejects_public_only_wrong_curve_and_mismatched_points() {
        let key = PrivateKey::generate();
        let mut jwk = jwk_of(&key);
        jwk.as_object_mut().unwrap().remove("d");
        assert!(PrivateKey::from_jwk(&jwk).unwrap_err().0.contains("`d`"));

        let mut jwk = jwk_of(&key);
        jwk["crv"] = "P-384".into();
        assert!(PrivateKey::from_jwk(&jwk).unwrap_err().0.contains("P-384"));

        let other = PrivateKey::generate().public_jwk();
        let mut jwk = jwk_of(&key);
        jwk["x"] = other.x.into();
        jwk["y"] = other.y.into();
        assert!(
            PrivateKey::from_jwk(&jwk)
                .unwrap_err()
                .0
                .contains("do not belong")
        );

        let mut jwk = jwk_of(&key);
        jwk["y"] = jwk["x"].clone();
        assert!(
            PrivateKey::from_jwk(&jwk)
                .unwrap_err()
                .0
                .contains("not on the P-256")
        );
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
