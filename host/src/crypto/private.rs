//! Private keys on the host: parsed and checked from a private JWK, generated, or
//! loaded from sealed PKCS#8; and the signers made from them. Key bytes live in
//! zeroized buffers and in aws-lc, which wipes them when freed.

use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, ECDH_P521};
use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPairComponents, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair,
    PqdsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256, RsaKeyPair,
};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{Alg, Curve, JwkError, KeyKind, MlDsa, PublicJwk, ToSign, URL_SAFE_ANY_PAD, base64url};
use aws_lc_rs::digest::Digest;
use base64::Engine;

/// A validated private key: its kind, its PKCS#8 form, its public JWK and, where
/// known, its private JWK (for backends that import JWKs).
pub struct PrivateKey {
    kind: KeyKind,
    pkcs8: Zeroizing<Vec<u8>>,
    private_jwk: Option<Zeroizing<String>>,
    public: PublicJwk,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// The fields of a private JWK that matter; others (`kid`, `use`, …) are ignored.
#[derive(Deserialize)]
struct Fields {
    kty: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    d: Option<String>,
    n: Option<String>,
    e: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
    alg: Option<String>,
    #[serde(rename = "pub")]
    pub_: Option<String>,
    #[serde(rename = "priv")]
    priv_: Option<String>,
}

fn secret(name: &str, text: Option<&str>) -> Result<Zeroizing<Vec<u8>>, JwkError> {
    let text = text.ok_or_else(|| JwkError(format!("privateJwk has no `{name}`")))?;
    URL_SAFE_ANY_PAD
        .decode(text)
        .map(Zeroizing::new)
        .map_err(|_| JwkError(format!("`{name}` is not base64url")))
}

fn signing(curve: Curve) -> &'static EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &ECDSA_P384_SHA384_FIXED_SIGNING,
        Curve::P521 => &ECDSA_P521_SHA512_FIXED_SIGNING,
    }
}

fn ecdh(curve: Curve) -> &'static agreement::Algorithm {
    match curve {
        Curve::P256 => &ECDH_P256,
        Curve::P384 => &ECDH_P384,
        Curve::P521 => &ECDH_P521,
    }
}

impl PrivateKey {
    /// Validates a private JWK: `EC` on P-256/384/521 with `d` (and `x`/`y`, when
    /// given, belonging to `d`), `OKP` Ed25519 with `d` (and `x`), `RSA` with
    /// `n`, `e`, `d` and the CRT parameters `p`, `q`, `dp`, `dq`, `qi`, or `AKP`
    /// with `alg`, `priv` (the 32-byte ML-DSA seed) and the `pub` derived from it.
    ///
    /// # Errors
    /// A [`JwkError`] naming what is wrong.
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<Self, JwkError> {
        let f = Fields::deserialize(jwk)
            .map_err(|e| JwkError(format!("privateJwk is not a JWK object: {e}")))?;
        let kty = f
            .kty
            .clone()
            .ok_or_else(|| JwkError("privateJwk has no `kty`".into()))?;
        let kind = PublicJwk {
            crv: f.crv.clone(),
            alg: f.alg.clone(),
            ..PublicJwk::bare(&kty, None)
        }
        .kind()?;
        if let KeyKind::MlDsa(level) = kind {
            return Self::from_akp_jwk(level, &f);
        }
        if f.d.is_none() {
            return Err(JwkError(
                "privateJwk has no private part `d` (a public JWK cannot be imported)".into(),
            ));
        }
        let key = match kind {
            KeyKind::Ec(curve) => {
                let d = secret("d", f.d.as_deref())?;
                let key = Self::from_ec_scalar(curve, &d)?;
                match (&f.x, &f.y) {
                    (Some(x), Some(y)) => {
                        let given = PublicJwk {
                            x: Some(x.clone()),
                            y: Some(y.clone()),
                            ..key.public.clone()
                        };
                        given.check(curve.alg())?;
                        if !given.same_key(&key.public) {
                            return Err(JwkError(
                                "`x`/`y` do not belong to the private key `d`".into(),
                            ));
                        }
                    }
                    (None, None) => {}
                    _ => return Err(JwkError("privateJwk has only one of `x` and `y`".into())),
                }
                key
            }
            KeyKind::Ed25519 => {
                let d = secret("d", f.d.as_deref())?;
                let pair = Ed25519KeyPair::from_seed_unchecked(&d)
                    .map_err(|_| JwkError("`d` is not a 32-byte Ed25519 private key".into()))?;
                let key = Self::from_ed25519(&pair)?;
                if let Some(x) = &f.x
                    && Some(x) != key.public.x.as_ref()
                {
                    return Err(JwkError(
                        "`x` does not belong to the private key `d`".into(),
                    ));
                }
                key
            }
            KeyKind::Rsa => Self::from_rsa_jwk(&f)?,
            KeyKind::MlDsa(_) => unreachable!("AKP keys returned above"),
        };
        Ok(key)
    }

    fn from_akp_jwk(level: MlDsa, f: &Fields) -> Result<Self, JwkError> {
        if f.priv_.is_none() {
            return Err(JwkError(
                "privateJwk has no private part `priv` (a public JWK cannot be imported)".into(),
            ));
        }
        let seed = secret("priv", f.priv_.as_deref())?;
        let key = Self::from_ml_dsa_seed(level, &seed)?;
        match &f.pub_ {
            Some(given) if Some(given) != key.public.pub_.as_ref() => Err(JwkError(
                "`pub` is not the public key derived from the seed `priv`".into(),
            )),
            Some(_) => Ok(key),
            None => Err(JwkError("privateJwk has no `pub`".into())),
        }
    }

    /// The ML-DSA key that `seed` (FIPS 204's ξ, 32 bytes) expands to.
    fn from_ml_dsa_seed(level: MlDsa, seed: &[u8]) -> Result<Self, JwkError> {
        if seed.len() != 32 {
            return Err(JwkError(format!(
                "`priv` must be the 32-byte {} seed, got {} bytes",
                level.alg(),
                seed.len()
            )));
        }
        let internal = |what: &str| JwkError(format!("cannot {what} the {} key", level.alg()));
        let pair =
            PqdsaKeyPair::from_seed(level.signing(), seed).map_err(|_| internal("expand"))?;
        let public = PublicJwk::ml_dsa(level, pair.public_key().as_ref())?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| internal("encode"))?;
        let private_jwk = serde_json::json!({
            "kty": "AKP", "alg": level.alg().as_str(), "pub": public.pub_,
            "priv": base64url(seed),
        });
        Ok(PrivateKey {
            kind: KeyKind::MlDsa(level),
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            private_jwk: Some(Zeroizing::new(private_jwk.to_string())),
            public,
        })
    }

    fn from_ec_scalar(curve: Curve, d: &[u8]) -> Result<Self, JwkError> {
        if d.len() != curve.size() {
            return Err(JwkError(format!(
                "`d` must be {} bytes for {}, got {}",
                curve.size(),
                curve.name(),
                d.len()
            )));
        }
        let invalid = || JwkError(format!("`d` is not a valid {} private key", curve.name()));
        let public = agreement::PrivateKey::from_private_key(ecdh(curve), d)
            .map_err(|_| invalid())?
            .compute_public_key()
            .map_err(|_| invalid())?;
        let pair =
            EcdsaKeyPair::from_private_key_and_public_key(signing(curve), d, public.as_ref())
                .map_err(|_| invalid())?;
        Self::from_ecdsa(curve, &pair)
    }

    fn from_ecdsa(curve: Curve, pair: &EcdsaKeyPair) -> Result<Self, JwkError> {
        let internal = |what: &str| JwkError(format!("cannot {what} the {} key", curve.name()));
        let public = PublicJwk::ec(curve, pair.public_key().as_ref())?;
        let d = pair
            .private_key()
            .as_be_bytes()
            .map_err(|_| internal("read"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| internal("encode"))?;
        let private_jwk = serde_json::json!({
            "kty": "EC", "crv": curve.name(), "x": public.x, "y": public.y,
            "d": base64url(d.as_ref()),
        });
        Ok(PrivateKey {
            kind: KeyKind::Ec(curve),
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            private_jwk: Some(Zeroizing::new(private_jwk.to_string())),
            public,
        })
    }

    fn from_ed25519(pair: &Ed25519KeyPair) -> Result<Self, JwkError> {
        let internal = |what: &str| JwkError(format!("cannot {what} the Ed25519 key"));
        let public = PublicJwk::ed25519(pair.public_key().as_ref())?;
        let seed = pair.seed().map_err(|_| internal("read"))?;
        let seed = seed.as_be_bytes().map_err(|_| internal("read"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| internal("encode"))?;
        let private_jwk = serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "x": public.x, "d": base64url(seed.as_ref()),
        });
        Ok(PrivateKey {
            kind: KeyKind::Ed25519,
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            private_jwk: Some(Zeroizing::new(private_jwk.to_string())),
            public,
        })
    }

    fn from_rsa_jwk(f: &Fields) -> Result<Self, JwkError> {
        let missing: Vec<&str> = [
            ("p", &f.p),
            ("q", &f.q),
            ("dp", &f.dp),
            ("dq", &f.dq),
            ("qi", &f.qi),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_none())
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(JwkError(format!(
                "an RSA privateJwk needs the CRT parameters too; missing: {}",
                missing.join(", ")
            )));
        }
        let public = PublicJwk {
            n: f.n.clone(),
            e: f.e.clone(),
            ..PublicJwk::bare("RSA", None)
        };
        public.check(Alg::RS256)?;
        let (n, e) = public.parts()?;
        let part = |name: &str, value: &Option<String>| secret(name, value.as_deref());
        let (d, p, q) = (part("d", &f.d)?, part("p", &f.p)?, part("q", &f.q)?);
        let (dp, dq, qi) = (part("dp", &f.dp)?, part("dq", &f.dq)?, part("qi", &f.qi)?);
        let components = KeyPairComponents {
            public_key: PublicKeyComponents {
                n: super::strip_zeros(&n),
                e: super::strip_zeros(&e),
            },
            d: d.as_slice(),
            p: p.as_slice(),
            q: q.as_slice(),
            dP: dp.as_slice(),
            dQ: dq.as_slice(),
            qInv: qi.as_slice(),
        };
        let pair = RsaKeyPair::from_components(&components).map_err(|_| {
            JwkError(
                "the RSA key's parts are inconsistent (n ≠ p·q, or d, dp, dq, qi do not match)"
                    .into(),
            )
        })?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| JwkError("cannot encode the RSA key".into()))?;
        let private_jwk = serde_json::json!({
            "kty": "RSA", "n": public.n, "e": public.e, "d": f.d, "p": f.p, "q": f.q,
            "dp": f.dp, "dq": f.dq, "qi": f.qi,
        });
        Ok(PrivateKey {
            kind: KeyKind::Rsa,
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            private_jwk: Some(Zeroizing::new(private_jwk.to_string())),
            public,
        })
    }

    fn from_rsa(pair: &RsaKeyPair) -> Result<Self, JwkError> {
        let public = rsa_public(pair)?;
        let pkcs8 = pair
            .as_der()
            .map_err(|_| JwkError("cannot encode the RSA key".into()))?;
        let [n, e, d, p, q, dp, dq, qi] =
            super::der::rsa_private_parts(pkcs8.as_ref()).map_err(JwkError)?;
        let private_jwk = serde_json::json!({
            "kty": "RSA", "n": base64url(n), "e": base64url(e), "d": base64url(d),
            "p": base64url(p), "q": base64url(q), "dp": base64url(dp), "dq": base64url(dq),
            "qi": base64url(qi),
        });
        Ok(PrivateKey {
            kind: KeyKind::Rsa,
            pkcs8: Zeroizing::new(pkcs8.as_ref().to_vec()),
            private_jwk: Some(Zeroizing::new(private_jwk.to_string())),
            public,
        })
    }

    /// Generates a key for `alg`; RSA keys have `rsa_bits` (2048, 3072 or 4096;
    /// default 2048).
    ///
    /// # Errors
    /// An unsupported RSA size.
    pub fn generate(alg: Alg, rsa_bits: Option<usize>) -> Result<Self, JwkError> {
        let failed = || JwkError(format!("{alg} key generation failed"));
        match alg.key_kind() {
            KeyKind::Ec(curve) => Self::from_ecdsa(
                curve,
                &EcdsaKeyPair::generate(signing(curve)).map_err(|_| failed())?,
            ),
            KeyKind::Ed25519 => {
                Self::from_ed25519(&Ed25519KeyPair::generate().map_err(|_| failed())?)
            }
            KeyKind::Rsa => {
                let size = match rsa_bits.unwrap_or(2048) {
                    2048 => KeySize::Rsa2048,
                    3072 => KeySize::Rsa3072,
                    4096 => KeySize::Rsa4096,
                    other => {
                        return Err(JwkError(format!(
                            "keySize {other} is not supported; use 2048, 3072 or 4096"
                        )));
                    }
                };
                Self::from_rsa(&RsaKeyPair::generate(size).map_err(|_| failed())?)
            }
            KeyKind::MlDsa(level) => {
                let mut seed = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(seed.as_mut()).map_err(|_| failed())?;
                Self::from_ml_dsa_seed(level, seed.as_ref())
            }
        }
    }

    /// Loads a key of `kind` from PKCS#8 (or, for P-256, the bare 32-byte scalar
    /// that gateways before 0.2 sealed).
    ///
    /// # Errors
    /// When the bytes are not such a key.
    pub fn from_pkcs8(kind: KeyKind, der: &[u8]) -> Result<Self, JwkError> {
        let bad = || JwkError("the stored key does not load".into());
        match kind {
            KeyKind::Ec(Curve::P256) if der.len() == 32 => Self::from_ec_scalar(Curve::P256, der),
            KeyKind::Ec(curve) => Self::from_ecdsa(
                curve,
                &EcdsaKeyPair::from_pkcs8(signing(curve), der).map_err(|_| bad())?,
            ),
            KeyKind::Ed25519 => {
                Self::from_ed25519(&Ed25519KeyPair::from_pkcs8(der).map_err(|_| bad())?)
            }
            KeyKind::Rsa => Self::from_rsa(&RsaKeyPair::from_pkcs8(der).map_err(|_| bad())?),
            KeyKind::MlDsa(level) => {
                Self::from_ml_dsa_seed(level, super::der::ml_dsa_seed(der).map_err(JwkError)?)
            }
        }
    }

    /// The kind of key.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> &PublicJwk {
        &self.public
    }

    /// The PKCS#8 (v1) DER of the key.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private JWK (JSON), for backends that import JWKs.
    ///
    /// # Errors
    /// Never for keys made by this module; kept fallible for keys whose private
    /// parts cannot be exported.
    pub fn private_jwk(&self) -> Result<&str, JwkError> {
        self.private_jwk
            .as_deref()
            .map(String::as_str)
            .ok_or_else(|| JwkError("this key has no private JWK form".into()))
    }

    /// One base64url field of the private JWK, decoded (`d`, `p`, `qi`, …).
    ///
    /// # Errors
    /// When the key has no private JWK or the field is absent.
    pub fn jwk_part(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, JwkError> {
        let jwk: Zeroizing<String> = Zeroizing::new(self.private_jwk()?.to_owned());
        let fields = Fields::deserialize(
            &serde_json::from_str::<serde_json::Value>(&jwk)
                .map_err(|e| JwkError(e.to_string()))?,
        )
        .map_err(|e| JwkError(e.to_string()))?;
        let value = match name {
            "d" => fields.d,
            "x" => fields.x,
            "y" => fields.y,
            "n" => fields.n,
            "e" => fields.e,
            "p" => fields.p,
            "q" => fields.q,
            "dp" => fields.dp,
            "dq" => fields.dq,
            "qi" => fields.qi,
            "pub" => fields.pub_,
            "priv" => fields.priv_,
            _ => None,
        };
        secret(name, value.as_deref())
    }

    /// A signer of this key for `alg`.
    ///
    /// # Errors
    /// When `alg` does not fit the key.
    pub fn signer(&self, alg: Alg) -> Result<Signer, JwkError> {
        if alg.key_kind() != self.kind {
            return Err(JwkError(format!(
                "a {} key cannot sign {alg}",
                self.public.describe()
            )));
        }
        let bad = || JwkError("the key does not load into aws-lc".into());
        Ok(match self.kind {
            KeyKind::Ec(curve) => Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(signing(curve), &self.pkcs8).map_err(|_| bad())?,
            ),
            KeyKind::Ed25519 => {
                Signer::Ed25519(Ed25519KeyPair::from_pkcs8(&self.pkcs8).map_err(|_| bad())?)
            }
            KeyKind::Rsa => Signer::Rsa(
                RsaKeyPair::from_pkcs8(&self.pkcs8).map_err(|_| bad())?,
                rsa_encoding(alg),
            ),
            KeyKind::MlDsa(level) => Signer::MlDsa(
                PqdsaKeyPair::from_pkcs8(level.signing(), &self.pkcs8).map_err(|_| bad())?,
            ),
        })
    }
}

fn rsa_public(pair: &RsaKeyPair) -> Result<PublicJwk, JwkError> {
    let public = pair.public_key();
    PublicJwk::rsa(
        public.modulus().big_endian_without_leading_zero(),
        public.exponent().big_endian_without_leading_zero(),
    )
}

fn rsa_encoding(alg: Alg) -> &'static aws_lc_rs::signature::RsaSignatureEncoding {
    if alg == Alg::PS256 {
        &RSA_PSS_SHA256
    } else {
        &RSA_PKCS1_SHA256
    }
}

/// Signs on the host with a key held by aws-lc.
pub enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    Rsa(
        RsaKeyPair,
        &'static aws_lc_rs::signature::RsaSignatureEncoding,
    ),
    MlDsa(PqdsaKeyPair),
}

impl Signer {
    /// A signer for `alg` from sealed PKCS#8 (or a legacy bare P-256 scalar), and
    /// the key's public JWK, parsing the key once: the cold path of every `db` sign.
    ///
    /// # Errors
    /// When the bytes are not a key `alg` can use.
    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<(Signer, PublicJwk), JwkError> {
        let bad = || JwkError("the stored key does not load".into());
        match alg.key_kind() {
            KeyKind::Ec(Curve::P256) if der.len() == 32 => {
                let key = PrivateKey::from_ec_scalar(Curve::P256, der)?;
                Ok((key.signer(alg)?, key.public))
            }
            KeyKind::Ec(curve) => {
                let pair = EcdsaKeyPair::from_pkcs8(signing(curve), der).map_err(|_| bad())?;
                let public = PublicJwk::ec(curve, pair.public_key().as_ref())?;
                Ok((Signer::Ecdsa(pair), public))
            }
            KeyKind::Ed25519 => {
                let pair = Ed25519KeyPair::from_pkcs8(der).map_err(|_| bad())?;
                let public = PublicJwk::ed25519(pair.public_key().as_ref())?;
                Ok((Signer::Ed25519(pair), public))
            }
            KeyKind::Rsa => {
                let pair = RsaKeyPair::from_pkcs8(der).map_err(|_| bad())?;
                let public = rsa_public(&pair)?;
                Ok((Signer::Rsa(pair, rsa_encoding(alg)), public))
            }
            KeyKind::MlDsa(level) => {
                let pair = PqdsaKeyPair::from_pkcs8(level.signing(), der).map_err(|_| bad())?;
                let public = PublicJwk::ml_dsa(level, pair.public_key().as_ref())?;
                Ok((Signer::MlDsa(pair), public))
            }
        }
    }

    /// Signs `message` (hashing it as the algorithm says); returns the JOSE form.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        // SystemRandom is a zero-sized handle onto aws-lc's DRBG.
        let rng = SystemRandom::new();
        match self {
            Signer::Ecdsa(pair) => pair
                .sign(&rng, message)
                .expect("ECDSA signing with a loaded key does not fail")
                .as_ref()
                .to_vec(),
            Signer::Ed25519(pair) => pair.sign(message).as_ref().to_vec(),
            Signer::Rsa(pair, encoding) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(*encoding, &rng, message, &mut signature)
                    .expect("RSA signing with a loaded key does not fail");
                signature
            }
            Signer::MlDsa(pair) => {
                let mut signature = vec![0u8; pair.algorithm().signature_len()];
                pair.sign(message, &mut signature)
                    .expect("ML-DSA signing with a loaded key does not fail");
                signature
            }
        }
    }

    /// Signs what `input` names for `alg`: a message, or a digest of one under
    /// `alg`'s hash; returns the JOSE form.
    ///
    /// # Errors
    /// When `alg` has no pre-hash form or the digest is not its hash's length.
    pub fn sign_input(&self, alg: Alg, input: ToSign<&[u8]>) -> Result<Vec<u8>, JwkError> {
        let digest = match input {
            ToSign::Message(message) => return Ok(self.sign(message)),
            ToSign::Digest(digest) => digest,
        };
        let digest = alg
            .prehash()
            .and_then(|hash| Digest::import_less_safe(digest, hash).ok())
            .ok_or_else(|| JwkError(format!("{alg} cannot sign this digest")))?;
        let refused = |_| JwkError(format!("the {alg} key cannot sign a digest"));
        match self {
            Signer::Ecdsa(pair) => Ok(pair
                .sign_digest(&digest)
                .map_err(refused)?
                .as_ref()
                .to_vec()),
            Signer::Rsa(pair, encoding) => {
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign_digest(*encoding, &digest, &mut signature)
                    .map_err(refused)?;
                Ok(signature)
            }
            Signer::Ed25519(_) | Signer::MlDsa(_) => Err(JwkError(format!(
                "{alg} signs the message itself, not a digest"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_alg_generates_signs_and_verifies_and_fails_on_another_message() {
        for &alg in Alg::ALL {
            let key = PrivateKey::generate(alg, None).unwrap();
            let signature = key.signer(alg).unwrap().sign(b"hello");
            assert!(key.public_jwk().verify(alg, b"hello", &signature), "{alg}");
            assert!(!key.public_jwk().verify(alg, b"hellO", &signature), "{alg}");
            let reloaded = PrivateKey::from_pkcs8(key.kind(), key.pkcs8()).unwrap();
            assert!(reloaded.public_jwk().same_key(key.public_jwk()), "{alg}");
        }
    }

    #[test]
    fn digests_sign_like_their_messages_and_only_for_prehash_algorithms() {
        for &alg in Alg::ALL {
            let key = PrivateKey::generate(alg, None).unwrap();
            let signer = key.signer(alg).unwrap();
            let Some(hash) = alg.prehash() else {
                assert!(
                    signer.sign_input(alg, ToSign::Digest(&[0; 32])).is_err(),
                    "{alg}"
                );
                continue;
            };
            let digest = aws_lc_rs::digest::digest(hash, b"hello");
            let signature = signer
                .sign_input(alg, ToSign::Digest(digest.as_ref()))
                .unwrap();
            // A digest's signature is the message's signature.
            assert!(key.public_jwk().verify(alg, b"hello", &signature), "{alg}");
            let input = ToSign::Digest(digest.as_ref());
            assert!(
                key.public_jwk().verify_input(alg, input, &signature),
                "{alg}"
            );
            let other = aws_lc_rs::digest::digest(hash, b"hellO");
            let input = ToSign::Digest(other.as_ref());
            assert!(
                !key.public_jwk().verify_input(alg, input, &signature),
                "{alg}"
            );
            let short = &digest.as_ref()[1..];
            assert!(
                signer.sign_input(alg, ToSign::Digest(short)).is_err(),
                "{alg}"
            );
        }
    }

    #[test]
    fn private_jwks_round_trip_and_a_mismatched_public_part_is_refused() {
        for alg in [Alg::ES256, Alg::ES384, Alg::ES512, Alg::EdDSA] {
            let key = PrivateKey::generate(alg, None).unwrap();
            let jwk: serde_json::Value = serde_json::from_str(key.private_jwk().unwrap()).unwrap();
            let parsed = PrivateKey::from_jwk(&jwk).unwrap();
            assert!(parsed.public_jwk().same_key(key.public_jwk()), "{alg}");
            let other = PrivateKey::generate(alg, None).unwrap();
            let mut mixed = jwk.clone();
            mixed["x"] = other.public_jwk().x.clone().into();
            assert!(PrivateKey::from_jwk(&mixed).is_err(), "{alg}");
            let mut public_only = jwk;
            public_only.as_object_mut().unwrap().remove("d");
            assert!(
                PrivateKey::from_jwk(&public_only)
                    .unwrap_err()
                    .0
                    .contains("`d`")
            );
        }
    }

    #[test]
    fn akp_private_jwks_round_trip_and_bad_ones_are_refused() {
        for alg in [Alg::MlDsa44, Alg::MlDsa65, Alg::MlDsa87] {
            let key = PrivateKey::generate(alg, None).unwrap();
            let jwk: serde_json::Value = serde_json::from_str(key.private_jwk().unwrap()).unwrap();
            assert_eq!(jwk["kty"], "AKP");
            assert_eq!(jwk["alg"], alg.as_str());
            let parsed = PrivateKey::from_jwk(&jwk).unwrap();
            assert!(parsed.public_jwk().same_key(key.public_jwk()), "{alg}");
            let reloaded = PrivateKey::from_pkcs8(key.kind(), key.pkcs8()).unwrap();
            assert_eq!(reloaded.private_jwk().unwrap(), key.private_jwk().unwrap());

            let refused = |change: &dyn Fn(&mut serde_json::Value), says: &str| {
                let mut bad = jwk.clone();
                change(&mut bad);
                let error = PrivateKey::from_jwk(&bad).unwrap_err().0;
                assert!(error.contains(says), "{alg}: {error}");
            };
            let other = PrivateKey::generate(alg, None).unwrap();
            refused(
                &|j| j["pub"] = other.public_jwk().pub_.clone().into(),
                "not the public key derived",
            );
            refused(&|j| j["priv"] = base64url(&[7; 31]).into(), "32-byte");
            refused(
                &|j| {
                    j.as_object_mut().unwrap().remove("priv");
                },
                "`priv`",
            );
            refused(
                &|j| {
                    j.as_object_mut().unwrap().remove("pub");
                },
                "`pub`",
            );
            refused(&|j| j["alg"] = "ES256".into(), "AKP key needs");
        }
    }

    #[test]
    fn generated_rsa_keys_round_trip_through_their_private_jwk() {
        let key = PrivateKey::generate(Alg::PS256, None).unwrap();
        let jwk: serde_json::Value = serde_json::from_str(key.private_jwk().unwrap()).unwrap();
        let parsed = PrivateKey::from_jwk(&jwk).unwrap();
        assert!(parsed.public_jwk().same_key(key.public_jwk()));
    }

    #[test]
    fn legacy_p256_scalars_still_load() {
        let key = PrivateKey::generate(Alg::ES256, None).unwrap();
        let d = key.jwk_part("d").unwrap();
        let legacy = PrivateKey::from_pkcs8(KeyKind::Ec(Curve::P256), &d).unwrap();
        assert!(legacy.public_jwk().same_key(key.public_jwk()));
    }

    #[test]
    fn unsupported_rsa_sizes_are_refused() {
        assert!(
            PrivateKey::generate(Alg::RS256, Some(1024))
                .unwrap_err()
                .0
                .contains("1024")
        );
    }
}
