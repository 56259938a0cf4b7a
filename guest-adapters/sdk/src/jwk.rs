//! P-256 JWKs: building the public JWK the host expects, and reading the scalar
//! out of a private JWK.

use serde_json::{Value, json};

use crate::{Error, base64url};

/// The public JWK (serialised JSON) of an uncompressed SEC1 point `04 ‖ x ‖ y`.
///
/// # Errors
/// [`Error::Internal`] when `point` is not 65 bytes starting with 4.
pub fn p256_public_jwk(point: &[u8]) -> Result<String, Error> {
    if point.len() != 65 || point[0] != 4 {
        return Err(Error::Internal(
            "expected an uncompressed P-256 point".into(),
        ));
    }
    Ok(json!({
        "kty": "EC",
        "crv": "P-256",
        "x": base64url::encode(&point[1..33]),
        "y": base64url::encode(&point[33..]),
    })
    .to_string())
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
    let d = jwk["d"]
        .as_str()
        .ok_or_else(|| Error::InvalidInput("the JWK has no private part `d`".into()))?;
    base64url::decode(d)?
        .try_into()
        .map_err(|_| Error::InvalidInput("`d` must be 32 bytes".into()))
}
