//! The little DER kmsgw reads from backends: ECDSA signatures (`SEQUENCE { r, s }`,
//! what AWS KMS and PKCS#11 wrappers return) and SubjectPublicKeyInfo (what Vault
//! and AWS KMS return as public keys); and the two structures it writes: ECDSA
//! signatures (X.509, CSC) and RSA public keys.

use der::Encode;
use der::asn1::UintRef;

#[derive(der::Sequence)]
struct EcdsaSignature<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

#[derive(der::Sequence)]
struct RsaPublicKey<'a> {
    n: UintRef<'a>,
    e: UintRef<'a>,
}

/// Converts a raw `r‖s` ECDSA signature to DER `SEQUENCE { r, s }`.
///
/// # Errors
/// When the halves are not usable integers.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, der::Error> {
    let (r, s) = raw.split_at(raw.len() / 2);
    EcdsaSignature {
        r: UintRef::new(r)?,
        s: UintRef::new(s)?,
    }
    .to_der()
}

/// PKCS#1 `RSAPublicKey { n, e }` in DER.
///
/// # Errors
/// When a part is not a usable integer.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Result<Vec<u8>, der::Error> {
    RsaPublicKey {
        n: UintRef::new(n)?,
        e: UintRef::new(e)?,
    }
    .to_der()
}

/// One DER element: its tag, its contents, and what follows it.
fn element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let [tag, first, rest @ ..] = input else {
        return Err("truncated DER".into());
    };
    let (len, rest) = if *first < 0x80 {
        (usize::from(*first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 3 || rest.len() < count {
            return Err("bad DER length".into());
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[count..])
    };
    if rest.len() < len {
        return Err("DER element longer than its input".into());
    }
    let (contents, after) = rest.split_at(len);
    Ok((*tag, contents, after))
}

fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    match element(input)? {
        (t, contents, after) if t == tag => Ok((contents, after)),
        _ => Err(format!("{what} is not where DER needs it")),
    }
}

/// An unsigned DER INTEGER's value without sign padding.
fn unsigned(value: &[u8]) -> &[u8] {
    match value {
        [0, tail @ ..] if !tail.is_empty() => tail,
        v => v,
    }
}

/// Converts a DER ECDSA signature to the raw `r‖s` of JOSE, each `size` bytes
/// (32 for P-256, 48 for P-384, 66 for P-521), left-padding short integers.
///
/// # Errors
/// A message when the input is not such a DER structure or a value is too long.
pub fn ecdsa_der_to_raw(der: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let (body, rest) = expect(der, 0x30, "the signature SEQUENCE")?;
    if !rest.is_empty() {
        return Err("trailing bytes after the signature".into());
    }
    let (r, body) = expect(body, 0x02, "r")?;
    let (s, body) = expect(body, 0x02, "s")?;
    if !body.is_empty() {
        return Err("trailing bytes after s".into());
    }
    let mut raw = vec![0u8; 2 * size];
    for (i, (name, value)) in [("r", r), ("s", s)].into_iter().enumerate() {
        let value = unsigned(value);
        if value.is_empty() || value.len() > size {
            return Err(format!("{name} does not fit in {size} bytes"));
        }
        raw[(i + 1) * size - value.len()..(i + 1) * size].copy_from_slice(value);
    }
    Ok(raw)
}

/// What a SubjectPublicKeyInfo holds.
#[derive(Debug, PartialEq, Eq)]
pub enum SpkiKey<'a> {
    /// An EC key: the curve's OID (DER contents) and the SEC1 point.
    Ec {
        curve_oid: &'a [u8],
        point: &'a [u8],
    },
    /// An Ed25519 key: its 32 bytes.
    Ed25519(&'a [u8]),
    /// An RSA key: modulus and exponent, big-endian without sign padding.
    Rsa { n: &'a [u8], e: &'a [u8] },
    /// An ML-DSA key: its parameter set and raw public key.
    MlDsa { level: super::MlDsa, key: &'a [u8] },
}

/// OID contents of id-ecPublicKey, rsaEncryption and id-Ed25519.
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// OID contents of the named curves P-256, P-384 and P-521.
pub const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
pub const P521_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
/// OID contents of id-ml-dsa-44, -65 and -87 (2.16.840.1.101.3.4.3.17/18/19).
pub const ML_DSA_44_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x11];
pub const ML_DSA_65_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12];
pub const ML_DSA_87_OID: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x13];

/// Reads a DER SubjectPublicKeyInfo.
///
/// # Errors
/// A message when it is not one, or holds a key type kmsgw does not know.
pub fn spki(der: &[u8]) -> Result<SpkiKey<'_>, String> {
    let (info, _) = expect(der, 0x30, "SubjectPublicKeyInfo")?;
    let (algorithm, rest) = expect(info, 0x30, "the algorithm")?;
    let (bits, _) = expect(rest, 0x03, "the key BIT STRING")?;
    let [0, key @ ..] = bits else {
        return Err("the key BIT STRING has unused bits".into());
    };
    let (oid, params) = expect(algorithm, 0x06, "the algorithm OID")?;
    match oid {
        EC_PUBLIC_KEY => {
            let (curve_oid, _) = expect(params, 0x06, "the curve OID")?;
            Ok(SpkiKey::Ec {
                curve_oid,
                point: key,
            })
        }
        ED25519 => Ok(SpkiKey::Ed25519(key)),
        RSA_ENCRYPTION => {
            let (body, _) = expect(key, 0x30, "RSAPublicKey")?;
            let (n, body) = expect(body, 0x02, "the modulus")?;
            let (e, _) = expect(body, 0x02, "the exponent")?;
            Ok(SpkiKey::Rsa {
                n: unsigned(n),
                e: unsigned(e),
            })
        }
        _ => match super::MlDsa::ALL.into_iter().find(|l| l.oid() == oid) {
            Some(level) if params.is_empty() => Ok(SpkiKey::MlDsa { level, key }),
            Some(_) => Err("an ML-DSA key's algorithm has parameters (RFC 9881: absent)".into()),
            None => Err("the public key's algorithm is not EC, Ed25519, RSA or ML-DSA".into()),
        },
    }
}

/// The eight integers of an RSA private key in PKCS#8 (RFC 5208 around RFC 8017's
/// `RSAPrivateKey`): `n, e, d, p, q, dp, dq, qi`, big-endian without sign padding.
///
/// # Errors
/// When the DER is not such a key.
pub fn rsa_private_parts(pkcs8: &[u8]) -> Result<[&[u8]; 8], String> {
    let (info, _) = expect(pkcs8, 0x30, "PrivateKeyInfo")?;
    let (_, rest) = expect(info, 0x02, "the PKCS#8 version")?;
    let (_, rest) = expect(rest, 0x30, "the algorithm")?;
    let (key, _) = expect(rest, 0x04, "the private key OCTET STRING")?;
    let (mut body, _) = expect(key, 0x30, "RSAPrivateKey")?;
    let (_, rest) = expect(body, 0x02, "the RSAPrivateKey version")?;
    body = rest;
    let mut parts: [&[u8]; 8] = [&[]; 8];
    for part in &mut parts {
        let (value, rest) = expect(body, 0x02, "an RSA key integer")?;
        *part = unsigned(value);
        body = rest;
    }
    Ok(parts)
}

/// The 32-byte seed of an ML-DSA private key in seed-form PKCS#8 (RFC 9881's
/// `ML-DSA-PrivateKey` choice `seed [0] IMPLICIT OCTET STRING`, alone or with
/// the expanded key).
///
/// # Errors
/// When the DER is not such a key or carries no seed.
pub fn ml_dsa_seed(pkcs8: &[u8]) -> Result<&[u8], String> {
    let (info, _) = expect(pkcs8, 0x30, "PrivateKeyInfo")?;
    let (_, rest) = expect(info, 0x02, "the PKCS#8 version")?;
    let (_, rest) = expect(rest, 0x30, "the algorithm")?;
    let (key, _) = expect(rest, 0x04, "the private key OCTET STRING")?;
    let key = match element(key)? {
        (0x30, both, _) => both,
        _ => key,
    };
    match element(key)? {
        (0x80, seed, _) if seed.len() == 32 => Ok(seed),
        _ => Err("the stored ML-DSA key holds no 32-byte seed".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_to_raw_handles_short_and_padded_integers() {
        // r = 0x01 (one byte), s = 0x80 followed by 31 bytes (needs a zero pad byte).
        let mut s = vec![0x80];
        s.extend([0x11; 31]);
        let mut der = vec![0x30, 3 + 2 + 33, 0x02, 0x01, 0x01, 0x02, 33, 0x00];
        der.extend(&s);
        let raw = ecdsa_der_to_raw(&der, 32).unwrap();
        assert_eq!(raw[..31], [0; 31]);
        assert_eq!(raw[31], 1);
        assert_eq!(raw[32..], s[..]);
        let raw = ecdsa_der_to_raw(&[0x30, 7, 0x02, 2, 0x7f, 0x00, 0x02, 1, 0x05], 48).unwrap();
        assert_eq!(raw.len(), 96);
        assert_eq!(&raw[46..48], &[0x7f, 0x00]);
        assert_eq!(raw[95], 5);
    }

    #[test]
    fn der_to_raw_matches_an_independent_encoder() {
        let key = p256::ecdsa::SigningKey::from_slice(&[0x21; 32]).unwrap();
        for message in [&b"a"[..], b"b", b"c", b"d", b"e", b"f"] {
            let signature: p256::ecdsa::Signature =
                p256::ecdsa::signature::Signer::sign(&key, message);
            let der = signature.to_der();
            assert_eq!(
                ecdsa_der_to_raw(der.as_bytes(), 32).unwrap(),
                signature.to_bytes()[..]
            );
        }
    }

    #[test]
    fn der_to_raw_rejects_malformed_input() {
        assert!(ecdsa_der_to_raw(&[], 32).is_err());
        assert!(ecdsa_der_to_raw(&[0x30, 3, 0x02, 1, 1], 32).is_err());
        let mut long = vec![0x30, 38, 0x02, 34, 0x01];
        long.extend([0x11; 33]);
        long.extend([0x02, 1, 1]);
        assert!(ecdsa_der_to_raw(&long, 32).is_err());
    }

    #[test]
    fn spki_reads_ec_ed25519_and_rsa_keys() {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::KeyPair;
        let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        )
        .unwrap();
        let der = ec.public_key().as_der().unwrap();
        let SpkiKey::Ec { curve_oid, point } = spki(der.as_ref()).unwrap() else {
            panic!("not EC")
        };
        assert_eq!((curve_oid, point), (P384_OID, ec.public_key().as_ref()));

        let ed = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
        let der = ed.public_key().as_der().unwrap();
        assert_eq!(
            spki(der.as_ref()).unwrap(),
            SpkiKey::Ed25519(ed.public_key().as_ref())
        );

        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = rsa.public_key().as_der().unwrap();
        let SpkiKey::Rsa { n, e } = spki(der.as_ref()).unwrap() else {
            panic!("not RSA")
        };
        assert_eq!(
            n,
            rsa.public_key().modulus().big_endian_without_leading_zero()
        );
        assert_eq!(e, [1, 0, 1]);
    }
}
