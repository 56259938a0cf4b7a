//! What a guest needs to put a backend's answers into the gateway's forms:
//! message digests for backends that sign a digest, ECDSA signatures from DER to
//! the JOSE `r‖s` form, and public keys from SubjectPublicKeyInfo to JWKs.

use der::Decode;
use der::asn1::UintRef;
use sha2::Digest;
use spki::{DecodePublicKey, SubjectPublicKeyInfoRef};

use crate::{Alg, Error, jwk};

/// The digest an algorithm signs: SHA-256, SHA-384 or SHA-512; `None` for EdDSA
/// and ML-DSA, which sign the message itself.
pub fn digest(alg: Alg, message: &[u8]) -> Option<Vec<u8>> {
    match alg {
        Alg::Es256 | Alg::Rs256 | Alg::Ps256 => Some(sha2::Sha256::digest(message).to_vec()),
        Alg::Es384 => Some(sha2::Sha384::digest(message).to_vec()),
        Alg::Es512 => Some(sha2::Sha512::digest(message).to_vec()),
        Alg::Eddsa | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => None,
    }
}

/// The size of one ECDSA signature half for `alg` (32, 48 or 66 bytes).
fn half(alg: Alg) -> Option<usize> {
    match alg {
        Alg::Es256 => Some(32),
        Alg::Es384 => Some(48),
        Alg::Es512 => Some(66),
        _ => None,
    }
}

#[derive(der::Sequence)]
struct EcdsaSignature<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// An ECDSA signature in DER (`SEQUENCE { r INTEGER, s INTEGER }`) as the JOSE
/// form, `r‖s` with each half left-padded to the curve size. Other algorithms'
/// signatures are returned as they are.
///
/// # Errors
/// [`Error::Internal`] when the bytes are not such a DER signature.
pub fn signature_to_jose(alg: Alg, signature: &[u8]) -> Result<Vec<u8>, Error> {
    let Some(size) = half(alg) else {
        return Ok(signature.to_vec());
    };
    let parsed = EcdsaSignature::from_der(signature)
        .map_err(|e| Error::Internal(format!("the backend's signature is not DER ECDSA: {e}")))?;
    let mut out = vec![0u8; 2 * size];
    for (i, part) in [parsed.r, parsed.s].iter().enumerate() {
        let bytes = part.as_bytes();
        if bytes.len() > size {
            return Err(Error::Internal(format!(
                "the backend's signature has a {}-byte half, expected at most {size}",
                bytes.len()
            )));
        }
        out[(i + 1) * size - bytes.len()..(i + 1) * size].copy_from_slice(bytes);
    }
    Ok(out)
}

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

/// The public JWK (serialised JSON) of a DER SubjectPublicKeyInfo: EC on P-256,
/// P-384 or P-521, Ed25519, or RSA.
///
/// # Errors
/// [`Error::Internal`] for anything else or malformed bytes.
pub fn spki_to_jwk(der: &[u8]) -> Result<String, Error> {
    let bad = |what: String| Error::Internal(format!("the backend's public key: {what}"));
    let info = SubjectPublicKeyInfoRef::from_der(der).map_err(|e| bad(e.to_string()))?;
    let key = info
        .subject_public_key
        .as_bytes()
        .ok_or_else(|| bad("unaligned bit string".into()))?;
    match info.algorithm.oid.to_string().as_str() {
        OID_EC => {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|e| bad(e.to_string()))?
                .to_string();
            let crv = match curve.as_str() {
                OID_P256 => "P-256",
                OID_P384 => "P-384",
                OID_P521 => "P-521",
                other => return Err(bad(format!("unsupported curve {other}"))),
            };
            jwk::ec_public_jwk(crv, key)
        }
        OID_ED25519 => {
            let key: &[u8; 32] = key
                .try_into()
                .map_err(|_| bad("an Ed25519 key is 32 bytes".into()))?;
            Ok(jwk::ed25519_public_jwk(key))
        }
        OID_RSA => {
            let rsa = pkcs1::RsaPublicKey::<UintRef<'_>>::from_der(key)
                .map_err(|e| bad(e.to_string()))?;
            Ok(jwk::rsa_public_jwk(
                rsa.modulus.as_bytes(),
                rsa.public_exponent.as_bytes(),
            ))
        }
        other => Err(bad(format!("unsupported key algorithm {other}"))),
    }
}

/// [`spki_to_jwk`] of a PEM `PUBLIC KEY` block.
///
/// # Errors
/// As [`spki_to_jwk`], or when the text is not such PEM.
pub fn spki_pem_to_jwk(pem: &str) -> Result<String, Error> {
    let doc = spki::Document::from_public_key_pem(pem)
        .map_err(|e| Error::Internal(format!("the backend's public key PEM: {e}")))?;
    spki_to_jwk(doc.as_bytes())
}
