//! JWKs: building the public JWK the host expects for each key type (EC, OKP,
//! RSA, AKP), and reading the base64url parts of a private JWK.

use serde_json::{Value, json};

use crate::{Alg, Error, base64url};

/// The public JWK (serialised JSON) of an uncompressed SEC1 point `04 ‖ x ‖ y` on
/// curve `crv` (`P-256`, `P-384` or `P-521`).
///
/// # Errors
/// [`Error::Internal`] when `point` is not an uncompressed point of that curve's size.
pub fn ec_public_jwk(crv: &str, point: &[u8]) -> Result<String, Error> {
    let size = match crv {
        "P-256" => 32,
        "P-384" => 48,
        "P-521" => 66,
        other => return Err(Error::Internal(format!("unknown curve `{other}`"))),
    };
    if point.len() != 1 + 2 * size || point[0] != 4 {
        return Err(Error::Internal(format!(
            "expected an uncompressed {crv} point"
        )));
    }
    Ok(json!({
        "kty": "EC",
        "crv": crv,
        "x": base64url::encode(&point[1..=size]),
        "y": base64url::encode(&point[1 + size..]),
    })
    .to_string())
}

/// The public JWK of a P-256 point (see [`ec_public_jwk`]).
///
/// # Errors
/// As [`ec_public_jwk`].
pub fn p256_public_jwk(point: &[u8]) -> Result<String, Error> {
    ec_public_jwk("P-256", point)
}

/// The public JWK of a 32-byte Ed25519 public key.
pub fn ed25519_public_jwk(public: &[u8; 32]) -> String {
    json!({"kty": "OKP", "crv": "Ed25519", "x": base64url::encode(public)}).to_string()
}

/// The public JWK of an RSA key (big-endian modulus and exponent).
pub fn rsa_public_jwk(n: &[u8], e: &[u8]) -> String {
    json!({"kty": "RSA", "n": base64url::encode(n), "e": base64url::encode(e)}).to_string()
}

/// The `AKP` public JWK (RFC 9964) of an ML-DSA public key for `alg`.
pub fn akp_public_jwk(alg: Alg, public: &[u8]) -> String {
    json!({"kty": "AKP", "alg": alg.name(), "pub": base64url::encode(public)}).to_string()
}

/// The base64url member `name` of a JWK, decoded.
///
/// # Errors
/// [`Error::InvalidInput`] when it is absent or not base64url.
pub fn part(jwk: &Value, name: &str) -> Result<Vec<u8>, Error> {
    let text = jwk[name]
        .as_str()
        .ok_or_else(|| Error::InvalidInput(format!("the JWK has no `{name}`")))?;
    base64url::decode(text)
}

/// The 32-byte private scalar `d` of a P-256 private JWK. The caller still has to
/// check that it is a valid scalar and matches `x`/`y`.
///
/// # Errors
/// [`Error::InvalidInput`] for another key type or curve, or a missing or malformed `d`.
pub fn p256_private_scalar(jwk: &Value) -> Result<[u8; 32], Error> {
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return Err(Error::InvalidInput(
            "only EC keys on P-256 are supported".into(),
        ));
    }
    part(jwk, "d")?
        .try_into()
        .map_err(|_| Error::InvalidInput("`d` must be 32 bytes".into()))
}
