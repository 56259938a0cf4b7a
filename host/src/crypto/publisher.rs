//! Publishers' keys for guest components: the Ed25519 or P-256 keys an operator
//! trusts (PEM `PUBLIC KEY` or JWK) and the private keys authors sign with.

use serde::Deserialize;
use zeroize::Zeroizing;

use super::private::Signer;
use super::{Alg, Curve, KeyKind, PrivateKey, PublicJwk, base64url};

/// Why a publisher key could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A publisher key the operator trusts.
#[derive(Clone, Debug)]
pub struct PublisherKey {
    jwk: PublicJwk,
    alg: Alg,
    id: String,
}

impl PublisherKey {
    /// A key from a PEM `PUBLIC KEY` or a JWK (JSON text), Ed25519 or P-256.
    ///
    /// # Errors
    /// When the text is neither, or the key is of another kind.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let jwk = if text.starts_with("-----BEGIN") {
            let (label, der) = pem_rfc7468::decode_vec(text.as_bytes())
                .map_err(|e| KeyError(format!("not a PEM public key: {e}")))?;
            if label != "PUBLIC KEY" {
                return Err(KeyError(format!(
                    "a PEM `{label}` is not a public key; give the `PUBLIC KEY` (SubjectPublicKeyInfo)"
                )));
            }
            PublicJwk::from_spki(&der).map_err(|e| KeyError(e.to_string()))?
        } else {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| KeyError(format!("neither a PEM public key nor a JWK: {e}")))?;
            if value.get("d").is_some() {
                return Err(KeyError(
                    "the JWK holds a private key (`d`); give only its public part".into(),
                ));
            }
            serde_json::from_value::<PublicJwk>(value)
                .map_err(|e| KeyError(format!("not a public JWK: {e}")))?
        };
        Self::of_jwk(jwk)
    }

    fn of_jwk(jwk: PublicJwk) -> Result<Self, KeyError> {
        let alg = match jwk.kind() {
            Ok(KeyKind::Ed25519) => Alg::EdDSA,
            Ok(KeyKind::Ec(Curve::P256)) => Alg::ES256,
            Ok(_) => {
                return Err(KeyError(format!(
                    "a {} key cannot sign components; use Ed25519 or P-256",
                    jwk.describe()
                )));
            }
            Err(e) => return Err(KeyError(e.to_string())),
        };
        jwk.check(alg).map_err(|e| KeyError(e.to_string()))?;
        let id = thumbprint(&jwk);
        Ok(PublisherKey { jwk, alg, id })
    }

    /// The key's id: its RFC 7638 JWK thumbprint.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public JWK.
    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    /// The algorithm its signatures use (`EdDSA` or `ES256`).
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Whether `signature` (JOSE form) over `message` is this key's.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.jwk.verify(self.alg, message, signature)
    }
}

/// In kms.json a publisher key is a PEM `PUBLIC KEY` string or a JWK object.
impl<'de> Deserialize<'de> for PublisherKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let text = match value {
            serde_json::Value::String(text) => text,
            object @ serde_json::Value::Object(_) => object.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "a public key is a PEM string or a JWK object",
                ));
            }
        };
        PublisherKey::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A publisher's signing key.
pub struct SigningKey {
    signer: Signer,
    key: PublisherKey,
}

impl SigningKey {
    /// A new Ed25519 or P-256 key; its PKCS#8 DER comes with it.
    ///
    /// # Errors
    /// When key generation fails.
    pub fn generate(alg: Alg) -> Result<(Self, Zeroizing<Vec<u8>>), KeyError> {
        let key = PrivateKey::generate(alg, None).map_err(|e| KeyError(e.to_string()))?;
        let der = Zeroizing::new(key.pkcs8().to_vec());
        Ok((Self::from_pkcs8(&der)?, der))
    }

    /// A key from PKCS#8 DER (Ed25519 or P-256).
    ///
    /// # Errors
    /// When the DER is neither.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        for alg in [Alg::EdDSA, Alg::ES256] {
            if let Ok((signer, jwk)) = Signer::from_pkcs8(alg, der) {
                return Ok(SigningKey {
                    signer,
                    key: PublisherKey::of_jwk(jwk)?,
                });
            }
        }
        Err(KeyError(
            "the key is not an Ed25519 or P-256 private key in PKCS#8 (`PRIVATE KEY` PEM)".into(),
        ))
    }

    /// A key from a PEM `PRIVATE KEY` (PKCS#8) or a P-256 `EC PRIVATE KEY` (SEC1).
    ///
    /// # Errors
    /// When the text is not one, or holds another kind of key.
    pub fn from_pem(text: &str) -> Result<Self, KeyError> {
        let (label, der) = pem_rfc7468::decode_vec(text.trim().as_bytes())
            .map_err(|e| KeyError(format!("not a PEM private key: {e}")))?;
        let der = Zeroizing::new(der);
        match label {
            "PRIVATE KEY" => Self::from_pkcs8(&der),
            // What `openssl ecparam -genkey` writes.
            "EC PRIVATE KEY" => {
                use p256::pkcs8::EncodePrivateKey;
                let key = p256::SecretKey::from_sec1_der(&der)
                    .map_err(|_| KeyError("the `EC PRIVATE KEY` is not a P-256 key".into()))?;
                let pkcs8 = key.to_pkcs8_der().map_err(|e| KeyError(e.to_string()))?;
                Self::from_pkcs8(pkcs8.as_bytes())
            }
            other => Err(KeyError(format!(
                "a PEM `{other}` is not a private key; give a PKCS#8 `PRIVATE KEY` (Ed25519 or P-256) or a P-256 `EC PRIVATE KEY`"
            ))),
        }
    }

    /// The public half.
    pub fn public(&self) -> &PublisherKey {
        &self.key
    }

    /// Signs `message`; the JOSE form.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.signer.sign(message)
    }
}

/// The RFC 7638 thumbprint of an Ed25519 or EC key, base64url.
fn thumbprint(jwk: &PublicJwk) -> String {
    let part = |value: &Option<String>| value.clone().unwrap_or_default();
    let canonical = match &jwk.y {
        Some(_) => format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}","y":"{}"}}"#,
            part(&jwk.crv),
            jwk.kty,
            part(&jwk.x),
            part(&jwk.y)
        ),
        None => format!(
            r#"{{"crv":"{}","kty":"{}","x":"{}"}}"#,
            part(&jwk.crv),
            jwk.kty,
            part(&jwk.x)
        ),
    };
    base64url(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()).as_ref())
}
