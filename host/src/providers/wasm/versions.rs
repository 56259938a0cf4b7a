//! The WIT versions a guest may be built against, behind one face: a component's
//! version is read from its export, its calls go through [`Guest`], and answers of
//! 0.1.0 guests are converted to the current types (Zed's model: the old package
//! frozen, conversions on the host). The `storage` and `log` imports of every
//! version delegate to the one implementation in `host`.

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::bindings::kmsgw::adapter::types::{
    Alg, Capabilities, Error as GuestError, KeyMaterial, KeySpec,
};
use super::bindings::{v0_1, v0_2};
use super::host::{HostState, LogLevel};

/// The WIT package versions the host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WitVersion {
    V0_1,
    V0_2,
}

impl WitVersion {
    /// The version of the `kmsgw:adapter/adapter` interface a component exports
    /// (`export_name` like `kmsgw:adapter/adapter@0.2.0`).
    pub fn of_export(export_name: &str) -> Option<WitVersion> {
        match export_name.strip_prefix("kmsgw:adapter/adapter@")? {
            "0.1.0" => Some(WitVersion::V0_1),
            "0.2.0" => Some(WitVersion::V0_2),
            _ => None,
        }
    }

    /// The version's name.
    pub fn as_str(self) -> &'static str {
        match self {
            WitVersion::V0_1 => "0.1.0",
            WitVersion::V0_2 => "0.2.0",
        }
    }
}

/// A linked component, ready to instantiate, of either version.
#[derive(Clone)]
pub enum GuestPre {
    V0_1(v0_1::ProviderPre<HostState>),
    V0_2(v0_2::ProviderPre<HostState>),
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
        })
    }
}

/// A live guest instance's exports, of either version.
pub enum Guest {
    V0_1(v0_1::Provider),
    V0_2(v0_2::Provider),
}

/// What a guest call gives: a trap (outer) or the guest's answer (inner).
type Call<T> = wasmtime::Result<Result<T, GuestError>>;

impl Guest {
    /// `init`.
    pub async fn init(&self, store: &mut Store<HostState>, config: &str) -> Call<Capabilities> {
        match self {
            Guest::V0_2(g) => g.kmsgw_adapter_adapter().call_init(store, config).await,
            Guest::V0_1(g) => Ok(g
                .kmsgw_adapter_adapter()
                .call_init(store, config)
                .await?
                .map(|c| Capabilities {
                    can_create: c.can_create,
                    can_import: c.can_import,
                    can_delete: c.can_delete,
                    algs: c.algs.into_iter().map(from_v0_1_alg).collect(),
                    default_alg: from_v0_1_alg(c.default_alg),
                })
                .map_err(from_v0_1_error)),
        }
    }

    /// `generate-key`.
    pub async fn generate_key(
        &self,
        store: &mut Store<HostState>,
        kid: &str,
        spec: KeySpec,
    ) -> Call<KeyMaterial> {
        match self {
            Guest::V0_2(g) => {
                g.kmsgw_adapter_adapter()
                    .call_generate_key(store, kid, spec)
                    .await
            }
            Guest::V0_1(g) => {
                let Some(alg) = to_v0_1_alg(spec.alg) else {
                    return Ok(Err(only_es256()));
                };
                Ok(g.kmsgw_adapter_adapter()
                    .call_generate_key(store, kid, alg)
                    .await?
                    .map(from_v0_1_material)
                    .map_err(from_v0_1_error))
            }
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
        match self {
            Guest::V0_2(g) => {
                g.kmsgw_adapter_adapter()
                    .call_import_key(store, kid, private_jwk, alg)
                    .await
            }
            Guest::V0_1(g) => {
                let Some(alg) = to_v0_1_alg(alg) else {
                    return Ok(Err(only_es256()));
                };
                Ok(g.kmsgw_adapter_adapter()
                    .call_import_key(store, kid, private_jwk, alg)
                    .await?
                    .map(from_v0_1_material)
                    .map_err(from_v0_1_error))
            }
        }
    }

    /// `sign`.
    pub async fn sign(
        &self,
        store: &mut Store<HostState>,
        external_id: &str,
        message: &[u8],
        alg: Alg,
    ) -> Call<Vec<u8>> {
        match self {
            Guest::V0_2(g) => {
                g.kmsgw_adapter_adapter()
                    .call_sign(store, external_id, message, alg)
                    .await
            }
            Guest::V0_1(g) => {
                let Some(alg) = to_v0_1_alg(alg) else {
                    return Ok(Err(only_es256()));
                };
                Ok(g.kmsgw_adapter_adapter()
                    .call_sign(store, external_id, message, alg)
                    .await?
                    .map_err(from_v0_1_error))
            }
        }
    }

    /// `delete-key`.
    pub async fn delete_key(&self, store: &mut Store<HostState>, external_id: &str) -> Call<()> {
        match self {
            Guest::V0_2(g) => {
                g.kmsgw_adapter_adapter()
                    .call_delete_key(store, external_id)
                    .await
            }
            Guest::V0_1(g) => Ok(g
                .kmsgw_adapter_adapter()
                .call_delete_key(store, external_id)
                .await?
                .map_err(from_v0_1_error)),
        }
    }

    /// `health`.
    pub async fn health(&self, store: &mut Store<HostState>) -> Call<()> {
        match self {
            Guest::V0_2(g) => g.kmsgw_adapter_adapter().call_health(store).await,
            Guest::V0_1(g) => Ok(g
                .kmsgw_adapter_adapter()
                .call_health(store)
                .await?
                .map_err(from_v0_1_error)),
        }
    }
}

fn only_es256() -> GuestError {
    GuestError::Unsupported("guests built against kmsgw:adapter@0.1.0 sign ES256 only".into())
}

fn to_v0_1_alg(alg: Alg) -> Option<v0_1::kmsgw::adapter::types::Alg> {
    (alg == Alg::Es256).then_some(v0_1::kmsgw::adapter::types::Alg::Es256)
}

fn from_v0_1_alg(alg: v0_1::kmsgw::adapter::types::Alg) -> Alg {
    match alg {
        v0_1::kmsgw::adapter::types::Alg::Es256 => Alg::Es256,
    }
}

fn from_v0_1_material(m: v0_1::kmsgw::adapter::types::KeyMaterial) -> KeyMaterial {
    KeyMaterial {
        external_id: m.external_id,
        public_jwk: m.public_jwk,
    }
}

fn from_v0_1_error(e: v0_1::kmsgw::adapter::types::Error) -> GuestError {
    use v0_1::kmsgw::adapter::types::Error as Old;
    match e {
        Old::NotFound(m) => GuestError::NotFound(m),
        Old::Unsupported(m) => GuestError::Unsupported(m),
        Old::InvalidInput(m) => GuestError::InvalidInput(m),
        Old::Denied(m) => GuestError::Denied(m),
        Old::Unavailable(m) => GuestError::Unavailable(m),
        Old::Internal(m) => GuestError::Internal(m),
    }
}

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
    Ok(())
}
