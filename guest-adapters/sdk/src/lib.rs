//! The kmsgw guest SDK: write a provider for the kmsgw signing gateway as a
//! WebAssembly component.
//!
//! Implement [`Adapter`] for a type, name it in [`export_adapter!`], and build the
//! crate as a `cdylib` for `wasm32-wasip2`. The SDK hides the WIT bindings; what an
//! adapter needs is re-exported here:
//! - [`storage`]: the provider's private key-value store (sealed by the host),
//! - [`http`]: a small blocking HTTP client over `wasi:http` (only `allowedHosts` reachable),
//! - [`config`]: the entry's config decoded with errors naming the field,
//! - [`crypto`]: digests, DER signatures to JOSE, SubjectPublicKeyInfo to JWK,
//! - [`jwk`], [`base64url`] and [`base64std`]: JWK (EC, OKP, RSA) and base64 helpers,
//! - [`log`]: lines in the gateway's log.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "kmsgw:adapter/provider@0.4.0",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_provider",
        default_bindings_module: "kmsgw_guest_sdk::bindings",
    });
}

pub mod config;
pub mod crypto;
pub mod http;
pub mod jwk;
pub mod log;
pub mod storage;

pub use bindings::kmsgw::adapter::types::{Alg, Capabilities, Error, KeyMaterial, KeySpec};

impl Alg {
    /// Every algorithm of the contract.
    pub const ALL: [Alg; 9] = [
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::Eddsa,
        Alg::Rs256,
        Alg::Ps256,
        Alg::MlDsa44,
        Alg::MlDsa65,
        Alg::MlDsa87,
    ];

    /// The classic algorithms (ECDSA, EdDSA, RSA): what a backend without
    /// post-quantum keys offers.
    pub const CLASSIC: [Alg; 6] = [
        Alg::Es256,
        Alg::Es384,
        Alg::Es512,
        Alg::Eddsa,
        Alg::Rs256,
        Alg::Ps256,
    ];

    /// The algorithm a JOSE name denotes: [`Alg::name`]'s, or `Ed25519` (RFC 9864's
    /// fully specified name of the EdDSA signature the contract calls `eddsa`).
    pub fn from_name(name: &str) -> Option<Alg> {
        if name == "Ed25519" {
            return Some(Alg::Eddsa);
        }
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE name of the algorithm (`ES256`, `EdDSA`, …).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::Es512 => "ES512",
            Alg::Eddsa => "EdDSA",
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
            Alg::MlDsa44 => "ML-DSA-44",
            Alg::MlDsa65 => "ML-DSA-65",
            Alg::MlDsa87 => "ML-DSA-87",
        }
    }
}
pub use serde_json;

/// Encodes and decodes unpadded base64url, the JOSE form.
pub mod base64url {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    /// Encodes `bytes` as unpadded base64url.
    pub fn encode(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes unpadded base64url.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when `text` is not base64url.
    pub fn decode(text: &str) -> Result<Vec<u8>, crate::Error> {
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| crate::Error::InvalidInput(format!("not base64url: {e}")))
    }
}

/// Encodes standard (padded) base64, the form of the remote-KMS contract's `data`.
pub mod base64std {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    /// Encodes `bytes` as standard padded base64.
    pub fn encode(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    /// Decodes standard padded base64.
    ///
    /// # Errors
    /// [`crate::Error::Internal`] when `text` is not base64 (it comes from a backend).
    pub fn decode(text: &str) -> Result<Vec<u8>, crate::Error> {
        STANDARD
            .decode(text)
            .map_err(|e| crate::Error::Internal(format!("not base64: {e}")))
    }
}

/// A provider implemented inside a guest. One value lives per instance, made by
/// [`Adapter::init`]; the host may run several instances of one component.
pub trait Adapter: Sized + 'static {
    /// Builds the adapter from the provider entry's `config` (JSON `null` when absent).
    ///
    /// # Errors
    /// When the configuration is unusable; the gateway then refuses to start.
    fn init(config: serde_json::Value) -> Result<Self, Error>;

    /// What this adapter can do. Default: create, sign and delete ES256 keys, no
    /// import, no digest signing.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: false,
            can_delete: true,
            algs: vec![Alg::Es256],
            default_alg: Alg::Es256,
            signs_digests: false,
        }
    }

    /// Creates a key named `kid` as `spec` says (its algorithm and, for RSA, its
    /// modulus size). Default: unsupported.
    ///
    /// # Errors
    /// Any [`Error`]; the host maps it to an HTTP status.
    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        let _ = (kid, spec);
        Err(Error::Unsupported("this adapter cannot create keys".into()))
    }

    /// Stores an existing private key (a JWK) under `kid`. Default: unsupported.
    ///
    /// # Errors
    /// Any [`Error`].
    fn import_key(
        &self,
        kid: &str,
        private_jwk: &serde_json::Value,
        alg: Alg,
    ) -> Result<KeyMaterial, Error> {
        let _ = (kid, private_jwk, alg);
        Err(Error::Unsupported("this adapter cannot import keys".into()))
    }

    /// Signs `message` with the key `external_id` and returns the JOSE form of the
    /// signature: raw `r‖s` for ECDSA, 64 bytes for EdDSA, modulus-sized for RSA.
    /// The host verifies it before a client sees it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown key, any other [`Error`] otherwise.
    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error>;

    /// Signs `digest`, a client's hash of the message under `alg`'s hash (the
    /// host has checked its length; never EdDSA or ML-DSA), with the key
    /// `external_id`: the signature [`Adapter::sign`] would give the message.
    /// Called only when [`Adapter::capabilities`] says `signs_digests`.
    /// Default: unsupported.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown key, any other [`Error`] otherwise.
    fn sign_digest(&self, external_id: &str, digest: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let _ = (external_id, digest, alg);
        Err(Error::Unsupported(
            "this adapter signs messages, not digests".into(),
        ))
    }

    /// Deletes the key `external_id`. Default: unsupported.
    ///
    /// # Errors
    /// Any [`Error`].
    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        let _ = external_id;
        Err(Error::Unsupported("this adapter cannot delete keys".into()))
    }

    /// Checks that the adapter and its backend work. Default: healthy.
    ///
    /// # Errors
    /// Any [`Error`]; the gateway reports the provider as not ok with its message.
    fn health(&self) -> Result<(), Error> {
        Ok(())
    }
}

#[doc(hidden)]
pub mod __private {
    use std::cell::OnceCell;

    use super::{Adapter, Capabilities, Error};

    thread_local! {
        static INSTANCE: OnceCell<Box<dyn std::any::Any>> = const { OnceCell::new() };
    }

    pub fn init<A: Adapter>(config: String) -> Result<Capabilities, Error> {
        let config: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| Error::InvalidInput(format!("config is not JSON: {e}")))?;
        let adapter = A::init(config)?;
        let capabilities = adapter.capabilities();
        INSTANCE.with(|cell| {
            cell.set(Box::new(adapter))
                .map_err(|_| Error::Internal("init called twice".into()))
        })?;
        Ok(capabilities)
    }

    pub fn with<A: Adapter, R>(f: impl FnOnce(&A) -> Result<R, Error>) -> Result<R, Error> {
        INSTANCE.with(|cell| {
            let adapter = cell
                .get()
                .and_then(|b| b.downcast_ref::<A>())
                .ok_or_else(|| Error::Internal("called before init".into()))?;
            f(adapter)
        })
    }
}

/// Exports `$adapter` (a type implementing [`Adapter`]) as the component's provider.
#[macro_export]
macro_rules! export_adapter {
    ($adapter:ty) => {
        struct __KmsgwGuest;

        impl $crate::bindings::exports::kmsgw::adapter::adapter::Guest for __KmsgwGuest {
            fn init(config: String) -> Result<$crate::Capabilities, $crate::Error> {
                $crate::__private::init::<$adapter>(config)
            }
            fn generate_key(kid: String, spec: $crate::KeySpec) -> Result<$crate::KeyMaterial, $crate::Error> {
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::generate_key(a, &kid, spec))
            }
            fn import_key(
                kid: String,
                private_jwk: String,
                alg: $crate::Alg,
            ) -> Result<$crate::KeyMaterial, $crate::Error> {
                let jwk: $crate::serde_json::Value = $crate::serde_json::from_str(&private_jwk)
                    .map_err(|e| $crate::Error::InvalidInput(format!("private JWK is not JSON: {e}")))?;
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::import_key(a, &kid, &jwk, alg))
            }
            fn sign(external_id: String, message: Vec<u8>, alg: $crate::Alg) -> Result<Vec<u8>, $crate::Error> {
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::sign(a, &external_id, &message, alg))
            }
            fn sign_digest(external_id: String, digest: Vec<u8>, alg: $crate::Alg) -> Result<Vec<u8>, $crate::Error> {
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::sign_digest(a, &external_id, &digest, alg))
            }
            fn delete_key(external_id: String) -> Result<(), $crate::Error> {
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::delete_key(a, &external_id))
            }
            fn health() -> Result<(), $crate::Error> {
                $crate::__private::with::<$adapter, _>(|a| $crate::Adapter::health(a))
            }
        }

        $crate::bindings::__export_provider!(__KmsgwGuest with_types_in $crate::bindings);
    };
}

/// Waits `millis` milliseconds (for backends that finish work asynchronously).
pub fn sleep(millis: u64) {
    bindings::wasi::clocks::monotonic_clock::subscribe_duration(millis.saturating_mul(1_000_000))
        .block();
}

/// A name for key `kid` that backends with strict naming accept: letters, digits
/// and `-` only, at most `max` characters (at least 16). A kid that had to be
/// changed to fit gets a suffix of its SHA-256, so distinct kids stay distinct.
pub fn backend_key_name(kid: &str, max: usize) -> String {
    use sha2::Digest;
    let cleaned: String = kid
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if cleaned == kid && kid.len() <= max && !kid.is_empty() {
        return cleaned;
    }
    let hash = sha2::Sha256::digest(kid.as_bytes());
    let suffix: String = hash[..5].iter().map(|b| format!("{b:02x}")).collect();
    let keep = max.max(16) - suffix.len() - 1;
    let prefix: String = cleaned.chars().take(keep).collect();
    format!("{prefix}-{suffix}")
}

/// [`backend_key_name`] followed by `-` and 8 random hex digits: for backends
/// that never free a name (Cloud KMS keys cannot be deleted, Key Vault keeps
/// deleted names), so a kid deleted and created again gets a new backend key.
pub fn unique_key_name(kid: &str, max: usize) -> String {
    let random = bindings::wasi::random::random::get_random_bytes(4);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{suffix}", backend_key_name(kid, max.max(25) - 9))
}
