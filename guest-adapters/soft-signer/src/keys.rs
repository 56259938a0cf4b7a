//! The keys `soft-signer` holds: one type per algorithm family, their stored form
//! (a tag byte, then the private key), generation, JWK import and signing.

use kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes;
use kmsgw_guest_sdk::{Alg, Error, KeySpec, jwk};
use ml_dsa::signature::Keypair;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, PrivateKey};
use serde_json::Value;

/// A private key inside the guest.
pub enum SoftKey {
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
    P521(p521::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<PrivateKey>),
    MlDsa44(Box<ml_dsa::SigningKey<ml_dsa::MlDsa44>>),
    MlDsa65(Box<ml_dsa::SigningKey<ml_dsa::MlDsa65>>),
    MlDsa87(Box<ml_dsa::SigningKey<ml_dsa::MlDsa87>>),
}

/// The ML-DSA key of `alg` expanded from a 32-byte seed (FIPS 204's ξ); `None`
/// for other algorithms.
fn ml_dsa_from_seed(alg: Alg, seed: &[u8; 32]) -> Option<SoftKey> {
    let seed = ml_dsa::Seed::from(*seed);
    Some(match alg {
        Alg::MlDsa44 => SoftKey::MlDsa44(Box::new(ml_dsa::SigningKey::from_seed(&seed))),
        Alg::MlDsa65 => SoftKey::MlDsa65(Box::new(ml_dsa::SigningKey::from_seed(&seed))),
        Alg::MlDsa87 => SoftKey::MlDsa87(Box::new(ml_dsa::SigningKey::from_seed(&seed))),
        _ => return None,
    })
}

fn random_seed() -> Result<[u8; 32], Error> {
    get_random_bytes(32)
        .try_into()
        .map_err(|_| Error::Internal("short random read".into()))
}

/// Randomness from `wasi:random`, for RSA key generation and PSS salts.
struct WasiRng;

impl rsa::rand_core::TryRng for WasiRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        let random = get_random_bytes(dst.len() as u64);
        dst.copy_from_slice(&random);
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for WasiRng {}

fn invalid(what: &str) -> Error {
    Error::InvalidInput(what.into())
}

/// A random scalar accepted by `from_slice` (rejection sampling; P-521 keeps the
/// top byte's low bit only, so almost every draw fits).
fn random_scalar<K>(len: usize, from_slice: impl Fn(&[u8]) -> Option<K>) -> Result<K, Error> {
    (0..64)
        .find_map(|_| {
            let mut bytes = get_random_bytes(len as u64);
            if len == 66 {
                bytes[0] &= 1;
            }
            from_slice(&bytes)
        })
        .ok_or_else(|| Error::Internal("no valid scalar from the random source".into()))
}

impl SoftKey {
    /// A new key as `spec` says.
    ///
    /// # Errors
    /// An unsupported RSA size, or a failed RSA prime search.
    pub fn generate(spec: KeySpec) -> Result<SoftKey, Error> {
        Ok(match spec.alg {
            Alg::Es256 => SoftKey::P256(random_scalar(32, |b| {
                p256::ecdsa::SigningKey::from_slice(b).ok()
            })?),
            Alg::Es384 => SoftKey::P384(random_scalar(48, |b| {
                p384::ecdsa::SigningKey::from_slice(b).ok()
            })?),
            Alg::Es512 => SoftKey::P521(random_scalar(66, |b| {
                p521::ecdsa::SigningKey::from_slice(b).ok()
            })?),
            Alg::Eddsa => SoftKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&random_seed()?)),
            Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => {
                ml_dsa_from_seed(spec.alg, &random_seed()?).expect("an ML-DSA alg")
            }
            Alg::Rs256 | Alg::Ps256 => {
                if !matches!(spec.rsa_bits, 2048 | 3072 | 4096) {
                    return Err(invalid("RSA keys are 2048, 3072 or 4096 bits"));
                }
                let key = PrivateKey::new(&mut WasiRng, spec.rsa_bits as usize)
                    .map_err(|e| Error::Internal(format!("RSA key generation failed: {e}")))?;
                SoftKey::Rsa(Box::new(key))
            }
        })
    }

    /// The key of a private JWK, which must fit `alg`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the JWK is malformed, inconsistent or of another kind.
    pub fn from_jwk(private_jwk: &Value, alg: Alg) -> Result<SoftKey, Error> {
        let (kty, crv) = (private_jwk["kty"].as_str(), private_jwk["crv"].as_str());
        if kty == Some("AKP") {
            return Self::from_akp_jwk(private_jwk, alg);
        }
        let d = jwk::part(private_jwk, "d")?;
        let key = match (alg, kty, crv) {
            (Alg::Es256, Some("EC"), Some("P-256")) => SoftKey::P256(
                p256::ecdsa::SigningKey::from_slice(&d).map_err(|_| invalid("bad P-256 `d`"))?,
            ),
            (Alg::Es384, Some("EC"), Some("P-384")) => SoftKey::P384(
                p384::ecdsa::SigningKey::from_slice(&d).map_err(|_| invalid("bad P-384 `d`"))?,
            ),
            (Alg::Es512, Some("EC"), Some("P-521")) => SoftKey::P521(
                p521::ecdsa::SigningKey::from_slice(&d).map_err(|_| invalid("bad P-521 `d`"))?,
            ),
            (Alg::Eddsa, Some("OKP"), Some("Ed25519")) => {
                let seed: [u8; 32] = d
                    .try_into()
                    .map_err(|_| invalid("an Ed25519 `d` is 32 bytes"))?;
                SoftKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
            }
            (Alg::Rs256 | Alg::Ps256, Some("RSA"), _) => {
                let n = jwk::part(private_jwk, "n")?;
                let bits = (n.len() * 8) as u32;
                let number = |bytes: &[u8]| {
                    BoxedUint::from_be_slice(bytes, bits).map_err(|_| invalid("RSA part too long"))
                };
                let key = PrivateKey::from_components(
                    number(&n)?,
                    number(&jwk::part(private_jwk, "e")?)?,
                    number(&d)?,
                    vec![
                        number(&jwk::part(private_jwk, "p")?)?,
                        number(&jwk::part(private_jwk, "q")?)?,
                    ],
                )
                .map_err(|e| invalid(&format!("inconsistent RSA key: {e}")))?;
                SoftKey::Rsa(Box::new(key))
            }
            _ => {
                return Err(invalid(&format!(
                    "a {} {} JWK is not a {} key",
                    kty.unwrap_or("?"),
                    crv.unwrap_or(""),
                    alg.name()
                )));
            }
        };
        // A public part given with the JWK must be the key's.
        let public: Value =
            serde_json::from_str(&key.public_jwk()?).map_err(|e| Error::Internal(e.to_string()))?;
        for member in ["x", "y", "n", "e"] {
            if let Some(given) = private_jwk.get(member)
                && public.get(member).is_some_and(|mine| mine != given)
            {
                return Err(invalid(&format!(
                    "`{member}` does not belong to the private key"
                )));
            }
        }
        Ok(key)
    }

    /// The key of an `AKP` private JWK: `priv` is the 32-byte seed, and `pub`
    /// must be the public key it expands to.
    fn from_akp_jwk(private_jwk: &Value, alg: Alg) -> Result<SoftKey, Error> {
        if private_jwk["alg"].as_str() != Some(alg.name()) {
            return Err(invalid(&format!(
                "the AKP JWK is not an {} key",
                alg.name()
            )));
        }
        let seed: [u8; 32] = jwk::part(private_jwk, "priv")?
            .try_into()
            .map_err(|_| invalid("`priv` must be the 32-byte ML-DSA seed"))?;
        let key = ml_dsa_from_seed(alg, &seed)
            .ok_or_else(|| invalid(&format!("{} is not an ML-DSA algorithm", alg.name())))?;
        let public: Value =
            serde_json::from_str(&key.public_jwk()?).map_err(|e| Error::Internal(e.to_string()))?;
        if private_jwk.get("pub") != public.get("pub") {
            return Err(invalid("`pub` is not the public key of the seed `priv`"));
        }
        Ok(key)
    }

    /// The stored form: a tag byte and the private key (scalar, seed, or PKCS#8).
    ///
    /// # Errors
    /// When the RSA key cannot be encoded.
    pub fn to_stored(&self) -> Result<Vec<u8>, Error> {
        let (tag, bytes) = match self {
            SoftKey::P256(k) => (1, k.to_bytes().to_vec()),
            SoftKey::P384(k) => (2, k.to_bytes().to_vec()),
            SoftKey::P521(k) => (3, k.to_bytes().to_vec()),
            SoftKey::Ed25519(k) => (4, k.to_bytes().to_vec()),
            SoftKey::Rsa(k) => (
                5,
                k.to_pkcs8_der()
                    .map_err(|e| Error::Internal(format!("RSA key encoding: {e}")))?
                    .as_bytes()
                    .to_vec(),
            ),
            SoftKey::MlDsa44(k) => (6, k.to_seed().to_vec()),
            SoftKey::MlDsa65(k) => (7, k.to_seed().to_vec()),
            SoftKey::MlDsa87(k) => (8, k.to_seed().to_vec()),
        };
        Ok([&[tag][..], &bytes].concat())
    }

    /// A key from its stored form (or, for keys stored by soft-signer 0.1, the
    /// bare 32-byte P-256 scalar).
    ///
    /// # Errors
    /// When the stored bytes are damaged.
    pub fn from_stored(stored: &[u8]) -> Result<SoftKey, Error> {
        let damaged = || Error::Internal("stored key is damaged".into());
        if stored.len() == 32 {
            return p256::ecdsa::SigningKey::from_slice(stored)
                .map(SoftKey::P256)
                .map_err(|_| damaged());
        }
        let (tag, bytes) = stored.split_first().ok_or_else(damaged)?;
        Ok(match tag {
            1 => SoftKey::P256(p256::ecdsa::SigningKey::from_slice(bytes).map_err(|_| damaged())?),
            2 => SoftKey::P384(p384::ecdsa::SigningKey::from_slice(bytes).map_err(|_| damaged())?),
            3 => SoftKey::P521(p521::ecdsa::SigningKey::from_slice(bytes).map_err(|_| damaged())?),
            4 => SoftKey::Ed25519(ed25519_dalek::SigningKey::from_bytes(
                bytes.try_into().map_err(|_| damaged())?,
            )),
            5 => SoftKey::Rsa(Box::new(
                PrivateKey::from_pkcs8_der(bytes).map_err(|_| damaged())?,
            )),
            6..=8 => {
                let alg = [Alg::MlDsa44, Alg::MlDsa65, Alg::MlDsa87][usize::from(tag - 6)];
                ml_dsa_from_seed(alg, bytes.try_into().map_err(|_| damaged())?)
                    .expect("an ML-DSA alg")
            }
            _ => return Err(damaged()),
        })
    }

    /// The public JWK (serialised JSON).
    ///
    /// # Errors
    /// Only when the curve library returns an unexpected encoding.
    pub fn public_jwk(&self) -> Result<String, Error> {
        match self {
            SoftKey::P256(k) => jwk::ec_public_jwk("P-256", &k.verifying_key().to_sec1_bytes()),
            SoftKey::P384(k) => jwk::ec_public_jwk("P-384", &k.verifying_key().to_sec1_bytes()),
            SoftKey::P521(k) => jwk::ec_public_jwk("P-521", &k.verifying_key().to_sec1_bytes()),
            SoftKey::Ed25519(k) => Ok(jwk::ed25519_public_jwk(&k.verifying_key().to_bytes())),
            SoftKey::Rsa(k) => Ok(jwk::rsa_public_jwk(&k.n_bytes(), &k.e_bytes())),
            SoftKey::MlDsa44(k) => Ok(jwk::akp_public_jwk(
                Alg::MlDsa44,
                &k.verifying_key().encode(),
            )),
            SoftKey::MlDsa65(k) => Ok(jwk::akp_public_jwk(
                Alg::MlDsa65,
                &k.verifying_key().encode(),
            )),
            SoftKey::MlDsa87(k) => Ok(jwk::akp_public_jwk(
                Alg::MlDsa87,
                &k.verifying_key().encode(),
            )),
        }
    }

    /// Signs `message` with `alg`, which must be the key's.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when `alg` is not this key's algorithm.
    pub fn sign(&self, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let mismatch = || invalid(&format!("this key cannot sign {}", alg.name()));
        Ok(match (self, alg) {
            (SoftKey::P256(k), Alg::Es256) => {
                let signature: p256::ecdsa::Signature = k.sign(message);
                signature.to_bytes().to_vec()
            }
            (SoftKey::P384(k), Alg::Es384) => {
                let signature: p384::ecdsa::Signature = k.sign(message);
                signature.to_bytes().to_vec()
            }
            (SoftKey::P521(k), Alg::Es512) => {
                let signature: p521::ecdsa::Signature = k.sign(message);
                signature.to_bytes().to_vec()
            }
            (SoftKey::Ed25519(k), Alg::Eddsa) => k.sign(message).to_bytes().to_vec(),
            (SoftKey::Rsa(k), Alg::Rs256) => {
                rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(k.as_ref().clone())
                    .try_sign(message)
                    .map_err(|e| Error::Internal(format!("RSA signing failed: {e}")))?
                    .to_vec()
            }
            (SoftKey::Rsa(k), Alg::Ps256) => {
                rsa::pss::SigningKey::<rsa::sha2::Sha256>::new(k.as_ref().clone())
                    .try_sign_with_rng(&mut WasiRng, message)
                    .map_err(|e| Error::Internal(format!("RSA signing failed: {e}")))?
                    .to_vec()
            }
            // FIPS 204's deterministic variant, empty context.
            (SoftKey::MlDsa44(k), Alg::MlDsa44) => k.sign(message).encode().to_vec(),
            (SoftKey::MlDsa65(k), Alg::MlDsa65) => k.sign(message).encode().to_vec(),
            (SoftKey::MlDsa87(k), Alg::MlDsa87) => k.sign(message).encode().to_vec(),
            _ => return Err(mismatch()),
        })
    }

    /// Signs `digest`, the hash of a message under `alg`'s hash: the signature
    /// [`SoftKey::sign`] gives the message (RustCrypto's pre-hash signers).
    pub fn sign_digest(&self, digest: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        use rsa::signature::hazmat::{PrehashSigner, RandomizedPrehashSigner};
        fn refused(alg: Alg, e: impl std::fmt::Display) -> Error {
            invalid(&format!("cannot sign this {} digest: {e}", alg.name()))
        }
        Ok(match (self, alg) {
            (SoftKey::P256(k), Alg::Es256) => {
                let signature: p256::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|e| refused(alg, e))?;
                signature.to_bytes().to_vec()
            }
            (SoftKey::P384(k), Alg::Es384) => {
                let signature: p384::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|e| refused(alg, e))?;
                signature.to_bytes().to_vec()
            }
            (SoftKey::P521(k), Alg::Es512) => {
                let signature: p521::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|e| refused(alg, e))?;
                signature.to_bytes().to_vec()
            }
            (SoftKey::Rsa(k), Alg::Rs256) => {
                rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(k.as_ref().clone())
                    .sign_prehash(digest)
                    .map_err(|e| refused(alg, e))?
                    .to_vec()
            }
            (SoftKey::Rsa(k), Alg::Ps256) => {
                rsa::pss::SigningKey::<rsa::sha2::Sha256>::new(k.as_ref().clone())
                    .sign_prehash_with_rng(&mut WasiRng, digest)
                    .map_err(|e| refused(alg, e))?
                    .to_vec()
            }
            (_, Alg::Eddsa | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87) => {
                return Err(Error::Unsupported(format!(
                    "{} signs the message itself, not a digest",
                    alg.name()
                )));
            }
            _ => return Err(invalid(&format!("this key cannot sign {}", alg.name()))),
        })
    }
}
