//! The WIT versions a guest may be built against, behind one face: a component's
//! version is read from its export, its calls go through [`Guest`], and calls to
//! and answers of 0.1.0, 0.2.0 and 0.3.0 guests are converted from and to the
//! current types (Zed's model: the old package frozen, conversions on the host). The `storage` and `log` imports of every
//! version delegate to the one implementation in `host`.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::kmsgw::adapter::types::{
    Alg, Capabilities, Error as GuestError, KeyMaterial, KeySpec,
};
use super::bindings::{v0_1, v0_2, v0_3, v0_4};
use super::host::{HostState, LogLevel};
use crate::crypto::Alg as HostAlg;

/// The WIT package versions the host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitVersion {
    V0_1,
    V0_2,
    V0_3,
    V0_4,
}

impl WitVersion {
    /// The version of the `kmsgw:adapter/adapter` interface a component exports
    /// (`export_name` like `kmsgw:adapter/adapter@0.4.0`).
    pub fn of_export(export_name: &str) -> Option<WitVersion> {
        match export_name.strip_prefix("kmsgw:adapter/adapter@")? {
            "0.1.0" => Some(WitVersion::V0_1),
            "0.2.0" => Some(WitVersion::V0_2),
            "0.3.0" => Some(WitVersion::V0_3),
            "0.4.0" => Some(WitVersion::V0_4),
            _ => None,
        }
    }

    /// The version's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
            WitVersion::V0_3 => "0.3.0",
            WitVersion::V0_4 => "0.4.0",
        }
    }
}

/// A linked component, ready to instantiate, of any version.
#[derive(Clone)]
pub enum GuestPre {
    V0_1(v0_1::ProviderPre<HostState>),
    V0_2(v0_2::ProviderPre<HostState>),
    V0_3(v0_3::ProviderPre<HostState>),
    V0_4(v0_4::ProviderPre<HostState>),
}

impl GuestPre {
    /// Wraps `pre` as a component of `version`.
    ///
    /// # Errors
    /// When the component does not export what that version's world needs.
    pub fn new(version: WitVersion, pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        Ok(match version {
            WitVersion::V0_1 => GuestPre::V0_1(v0_1::ProviderPre::new(pre)?),
            WitVersion::V0_2 => GuestPre::V0_2(v0_2::ProviderPre::new(pre)?),
            WitVersion::V0_3 => GuestPre::V0_3(v0_3::ProviderPre::new(pre)?),
            WitVersion::V0_4 => GuestPre::V0_4(v0_4::ProviderPre::new(pre)?),
        })
    }

    /// A new instance in `store`.
    ///
    /// # Errors
    /// When instantiation traps or fails.
    pub async fn instantiate_async(&self, store: &mut Store<HostState>) -> wasmtime::Result<Guest> {
        Ok(match self {
            GuestPre::V0_1(pre) => Guest::V0_1(pre.instantiate_async(store).await?),
            GuestPre::V0_2(pre) => Guest::V0_2(pre.instantiate_async(store).await?),
            GuestPre::V0_3(pre) => Guest::V0_3(pre.instantiate_async(store).await?),
            GuestPre::V0_4(pre) => Guest::V0_4(pre.instantiate_async(store).await?),
        })
    }
}

/// A live guest instance's exports, of any version.
pub enum Guest {
    V0_1(v0_1::Provider),
    V0_2(v0_2::Provider),
    V0_3(v0_3::Provider),
    V0_4(v0_4::Provider),
}

/// What a guest call gives: a trap (outer) or the guest's answer (inner).
type Call<T> = wasmtime::Result<Result<T, GuestError>>;

/// Calls `$call` on whichever version `$guest` is (the same text, typed by each
/// version's bindings), converting an older version's answer with `$convert`.
macro_rules! each_version {
    ($guest:expr, |$adapter:ident| $call:expr, |$answer:ident| $convert:expr) => {
        match $guest {
            Guest::V0_4(g) => {
                let $adapter = g.kmsgw_adapter_adapter();
                $call
            }
            Guest::V0_3(g) => {
                let $adapter = g.kmsgw_adapter_adapter();
                let $answer = $call?;
                Ok($convert)
            }
            Guest::V0_2(g) => {
                let $adapter = g.kmsgw_adapter_adapter();
                let $answer = $call?;
                Ok($convert)
            }
            Guest::V0_1(g) => {
                let $adapter = g.kmsgw_adapter_adapter();
                let $answer = $call?;
                Ok($convert)
            }
        }
    };
}

/// `generate-key` on an older guest that has `key-spec`: the spec in its
/// version's types, the answer converted back.
macro_rules! older_generate_key {
    ($guest:expr, $version:ident, $alg:expr, $spec:expr, $store:expr, $kid:expr) => {{
        let spec = $version::kmsgw::adapter::types::KeySpec {
            alg: $alg,
            rsa_bits: $spec.rsa_bits,
        };
        Ok($guest
            .kmsgw_adapter_adapter()
            .call_generate_key($store, $kid, spec)
            .await?
            .map(Older::current)
            .map_err(Older::current))
    }};
}

impl Guest {
    /// The WIT version of this instance.
    fn version(&self) -> WitVersion {
        match self {
            Guest::V0_1(_) => WitVersion::V0_1,
            Guest::V0_2(_) => WitVersion::V0_2,
            Guest::V0_3(_) => WitVersion::V0_3,
            Guest::V0_4(_) => WitVersion::V0_4,
        }
    }

    /// `init`.
    pub async fn init(&self, store: &mut Store<HostState>, config: &str) -> Call<Capabilities> {
        each_version!(
            self,
            |adapter| adapter.call_init(store, config).await,
            |answer| answer
                .map(|c| Capabilities {
                    can_create: c.can_create,
                    can_import: c.can_import,
                    can_delete: c.can_delete,
                    algs: c.algs.into_iter().map(Older::current).collect(),
                    default_alg: c.default_alg.current(),
                    signs_digests: false,
                })
                .map_err(Older::current)
        )
    }

    /// `generate-key`.
    pub async fn generate_key(
        &self,
        store: &mut Store<HostState>,
        kid: &str,
        spec: KeySpec,
    ) -> Call<KeyMaterial> {
        let Some(alg) = self.older_alg(spec.alg) else {
            return Ok(Err(self.cannot(spec.alg)));
        };
        match self {
            Guest::V0_4(g) => {
                g.kmsgw_adapter_adapter()
                    .call_generate_key(store, kid, spec)
                    .await
            }
            Guest::V0_3(g) => older_generate_key!(g, v0_3, alg.v0_3, spec, store, kid),
            Guest::V0_2(g) => older_generate_key!(g, v0_2, alg.v0_2, spec, store, kid),
            Guest::V0_1(g) => Ok(g
                .kmsgw_adapter_adapter()
                .call_generate_key(store, kid, alg.v0_1)
                .await?
                .map(Older::current)
                .map_err(Older::current)),
        }
    }

    /// `import-key`.
    pub async fn import_key(
        &self,
        store: &mut Store<HostState>,
        kid: &str,
        private_jwk: &str,
        alg: Alg,
    ) -> Call<KeyMaterial> {
        let Some(old) = self.older_alg(alg) else {
            return Ok(Err(self.cannot(alg)));
        };
        each_version!(
            self,
            |adapter| {
                adapter
                    .call_import_key(store, kid, private_jwk, old.pick(alg))
                    .await
            },
            |answer| answer.map(Older::current).map_err(Older::current)
        )
    }

    /// `sign`.
    pub async fn sign(
        &self,
        store: &mut Store<HostState>,
        external_id: &str,
        message: &[u8],
        alg: Alg,
    ) -> Call<Vec<u8>> {
        let Some(old) = self.older_alg(alg) else {
            return Ok(Err(self.cannot(alg)));
        };
        each_version!(
            self,
            |adapter| {
                adapter
                    .call_sign(store, external_id, message, old.pick(alg))
                    .await
            },
            |answer| answer.map_err(Older::current)
        )
    }

    /// `sign-digest`: only guests of 0.4.0 and later have it.
    pub async fn sign_digest(
        &self,
        store: &mut Store<HostState>,
        external_id: &str,
        digest: &[u8],
        alg: Alg,
    ) -> Call<Vec<u8>> {
        match self {
            Guest::V0_4(g) => {
                g.kmsgw_adapter_adapter()
                    .call_sign_digest(store, external_id, digest, alg)
                    .await
            }
            _ => Ok(Err(GuestError::Unsupported(format!(
                "guests built against kmsgw:adapter@{} sign messages, not digests",
                self.version().as_str()
            )))),
        }
    }

    /// `delete-key`.
    pub async fn delete_key(&self, store: &mut Store<HostState>, external_id: &str) -> Call<()> {
        each_version!(
            self,
            |adapter| adapter.call_delete_key(store, external_id).await,
            |answer| answer.map_err(Older::current)
        )
    }

    /// `health`.
    pub async fn health(&self, store: &mut Store<HostState>) -> Call<()> {
        each_version!(self, |adapter| adapter.call_health(store).await, |answer| {
            answer.map_err(Older::current)
        })
    }

    /// `alg` in each older version's terms; `None` when this instance's version
    /// lacks it.
    fn older_alg(&self, alg: Alg) -> Option<OlderAlg> {
        let v0_2 = v0_2_alg(alg);
        let v0_1 = (alg == Alg::Es256).then_some(v0_1::kmsgw::adapter::types::Alg::Es256);
        let known = match self.version() {
            WitVersion::V0_4 | WitVersion::V0_3 => true,
            WitVersion::V0_2 => v0_2.is_some(),
            WitVersion::V0_1 => v0_1.is_some(),
        };
        known.then(|| OlderAlg {
            v0_3: v0_3_alg(alg),
            v0_2: v0_2.unwrap_or(v0_2::kmsgw::adapter::types::Alg::Es256),
            v0_1: v0_1::kmsgw::adapter::types::Alg::Es256,
        })
    }

    fn cannot(&self, alg: Alg) -> GuestError {
        GuestError::Unsupported(format!(
            "guests built against kmsgw:adapter@{} cannot sign {}",
            self.version().as_str(),
            host_alg(alg)
        ))
    }
}

/// The guest's name of a host algorithm (`Ed25519` is `eddsa`: one signature).
pub fn guest_alg(alg: HostAlg) -> Alg {
    match alg {
        HostAlg::ES256 => Alg::Es256,
        HostAlg::ES384 => Alg::Es384,
        HostAlg::ES512 => Alg::Es512,
        HostAlg::EdDSA | HostAlg::Ed25519 => Alg::Eddsa,
        HostAlg::RS256 => Alg::Rs256,
        HostAlg::PS256 => Alg::Ps256,
        HostAlg::MlDsa44 => Alg::MlDsa44,
        HostAlg::MlDsa65 => Alg::MlDsa65,
        HostAlg::MlDsa87 => Alg::MlDsa87,
    }
}

/// The host's name of a guest algorithm.
pub fn host_alg(alg: Alg) -> HostAlg {
    match alg {
        Alg::Es256 => HostAlg::ES256,
        Alg::Es384 => HostAlg::ES384,
        Alg::Es512 => HostAlg::ES512,
        Alg::Eddsa => HostAlg::EdDSA,
        Alg::Rs256 => HostAlg::RS256,
        Alg::Ps256 => HostAlg::PS256,
        Alg::MlDsa44 => HostAlg::MlDsa44,
        Alg::MlDsa65 => HostAlg::MlDsa65,
        Alg::MlDsa87 => HostAlg::MlDsa87,
    }
}

/// An algorithm as each older version spells it (checked to exist there).
#[derive(Clone, Copy)]
struct OlderAlg {
    v0_3: v0_3::kmsgw::adapter::types::Alg,
    v0_2: v0_2::kmsgw::adapter::types::Alg,
    v0_1: v0_1::kmsgw::adapter::types::Alg,
}

/// Picks the spelling of the version whose call it is passed to.
trait PickAlg<T> {
    fn pick(self, current: Alg) -> T;
}

impl PickAlg<Alg> for OlderAlg {
    fn pick(self, current: Alg) -> Alg {
        current
    }
}

impl PickAlg<v0_3::kmsgw::adapter::types::Alg> for OlderAlg {
    fn pick(self, _: Alg) -> v0_3::kmsgw::adapter::types::Alg {
        self.v0_3
    }
}

impl PickAlg<v0_2::kmsgw::adapter::types::Alg> for OlderAlg {
    fn pick(self, _: Alg) -> v0_2::kmsgw::adapter::types::Alg {
        self.v0_2
    }
}

impl PickAlg<v0_1::kmsgw::adapter::types::Alg> for OlderAlg {
    fn pick(self, _: Alg) -> v0_1::kmsgw::adapter::types::Alg {
        self.v0_1
    }
}

/// The same nine algorithms in 0.3.0's terms.
fn v0_3_alg(alg: Alg) -> v0_3::kmsgw::adapter::types::Alg {
    use v0_3::kmsgw::adapter::types::Alg as Old;
    match alg {
        Alg::Es256 => Old::Es256,
        Alg::Es384 => Old::Es384,
        Alg::Es512 => Old::Es512,
        Alg::Eddsa => Old::Eddsa,
        Alg::Rs256 => Old::Rs256,
        Alg::Ps256 => Old::Ps256,
        Alg::MlDsa44 => Old::MlDsa44,
        Alg::MlDsa65 => Old::MlDsa65,
        Alg::MlDsa87 => Old::MlDsa87,
    }
}

fn v0_2_alg(alg: Alg) -> Option<v0_2::kmsgw::adapter::types::Alg> {
    use v0_2::kmsgw::adapter::types::Alg as Old;
    Some(match alg {
        Alg::Es256 => Old::Es256,
        Alg::Es384 => Old::Es384,
        Alg::Es512 => Old::Es512,
        Alg::Eddsa => Old::Eddsa,
        Alg::Rs256 => Old::Rs256,
        Alg::Ps256 => Old::Ps256,
        Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => return None,
    })
}

/// A type of an older WIT version that has a current counterpart.
trait Older {
    type Current;
    fn current(self) -> Self::Current;
}

/// `Older` for a version's `alg`, whose cases are spelled as the current ones.
macro_rules! older_alg {
    ($version:ident: $($case:ident),+) => {
        impl Older for $version::kmsgw::adapter::types::Alg {
            type Current = Alg;
            fn current(self) -> Alg {
                use $version::kmsgw::adapter::types::Alg as Old;
                match self {
                    $(Old::$case => Alg::$case),+
                }
            }
        }
    };
}

older_alg!(v0_3: Es256, Es384, Es512, Eddsa, Rs256, Ps256, MlDsa44, MlDsa65, MlDsa87);
older_alg!(v0_2: Es256, Es384, Es512, Eddsa, Rs256, Ps256);
older_alg!(v0_1: Es256);

/// The key material and error types, the same in every older version.
macro_rules! older_shared_types {
    ($version:ident) => {
        impl Older for $version::kmsgw::adapter::types::KeyMaterial {
            type Current = KeyMaterial;
            fn current(self) -> KeyMaterial {
                KeyMaterial {
                    external_id: self.external_id,
                    public_jwk: self.public_jwk,
                }
            }
        }

        impl Older for $version::kmsgw::adapter::types::Error {
            type Current = GuestError;
            fn current(self) -> GuestError {
                use $version::kmsgw::adapter::types::Error as Old;
                match self {
                    Old::NotFound(m) => GuestError::NotFound(m),
                    Old::Unsupported(m) => GuestError::Unsupported(m),
                    Old::InvalidInput(m) => GuestError::InvalidInput(m),
                    Old::Denied(m) => GuestError::Denied(m),
                    Old::Unavailable(m) => GuestError::Unavailable(m),
                    Old::Internal(m) => GuestError::Internal(m),
                }
            }
        }
    };
}

older_shared_types!(v0_1);
older_shared_types!(v0_2);
older_shared_types!(v0_3);

/// Implements one version's `storage` and `log` imports by delegating to `host`.
macro_rules! host_imports {
    ($version:ident) => {
        impl $version::kmsgw::adapter::storage::Host for HostState {
            async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
                self.storage_get(key).await
            }
            async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
                self.storage_set(key, value).await
            }
            async fn delete(&mut self, key: String) -> Result<bool, String> {
                self.storage_delete(key).await
            }
            async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
                self.storage_list(prefix).await
            }
        }

        impl $version::kmsgw::adapter::log::Host for HostState {
            async fn log(&mut self, level: $version::kmsgw::adapter::log::Level, message: String) {
                use $version::kmsgw::adapter::log::Level;
                let level = match level {
                    Level::Trace => LogLevel::Trace,
                    Level::Debug => LogLevel::Debug,
                    Level::Info => LogLevel::Info,
                    Level::Warn => LogLevel::Warn,
                    Level::Error => LogLevel::Error,
                };
                self.log_line(level, &message);
            }
        }
    };
}

host_imports!(v0_1);
host_imports!(v0_2);
host_imports!(v0_3);
host_imports!(v0_4);

/// Adds every version's `storage` and `log` imports to `linker`.
///
/// # Errors
/// When wasmtime refuses a definition.
pub fn add_host_imports(
    linker: &mut wasmtime::component::Linker<HostState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    v0_1::kmsgw::adapter::storage::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_1::kmsgw::adapter::log::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_2::kmsgw::adapter::storage::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_2::kmsgw::adapter::log::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_3::kmsgw::adapter::storage::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_3::kmsgw::adapter::log::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_4::kmsgw::adapter::storage::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    v0_4::kmsgw::adapter::log::add_to_linker::<_, HasSelf<HostState>>(linker, |s| s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_crosses_the_boundary_and_back() {
        for &alg in crate::crypto::Alg::ALL {
            let back = host_alg(guest_alg(alg));
            assert!(back.answers_to(alg), "{alg} came back as {back}");
        }
    }

    #[test]
    fn a_0_3_guest_has_every_algorithm() {
        for alg in [Alg::Es256, Alg::Ps256, Alg::MlDsa44, Alg::MlDsa87] {
            assert_eq!(v0_3_alg(alg).current(), alg);
        }
    }

    #[test]
    fn a_0_2_guest_has_the_classic_algorithms_and_no_ml_dsa() {
        for alg in [
            Alg::Es256,
            Alg::Es384,
            Alg::Es512,
            Alg::Eddsa,
            Alg::Rs256,
            Alg::Ps256,
        ] {
            let old = v0_2_alg(alg).unwrap();
            assert_eq!(old.current(), alg);
        }
        for alg in [Alg::MlDsa44, Alg::MlDsa65, Alg::MlDsa87] {
            assert!(v0_2_alg(alg).is_none());
        }
    }
}
