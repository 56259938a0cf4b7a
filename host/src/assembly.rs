//! Turns kms.json's provider entries into running providers, at start and again
//! on reload: on reload an entry whose text is unchanged (and, for a guest, whose
//! component file is unchanged) keeps its running provider; every other entry is
//! built anew.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::{
    ComponentSource, ConfigError, EgressAuthKind, Problem, ProviderConfig, ProviderEntry,
    WasmConfig,
};
use crate::crypto::master::MasterKey;
use crate::distribution::{self, cache::Cache};
use crate::gateway::Registered;
use crate::providers::Provider;
use crate::providers::aws_kms::AwsKmsProvider;
use crate::providers::credentials::Credentials;
use crate::providers::db::DbProvider;
use crate::providers::http::HttpProvider;
use crate::providers::pkcs11::Pkcs11Provider;
use crate::providers::vault::VaultProvider;
use crate::providers::wasm::host::AllowedHost;
use crate::providers::wasm::limits::GuestLimits;
use crate::providers::wasm::runtime::{PoolSizing, WasmRuntime};
use crate::providers::wasm::{WasmOptions, WasmProvider, WasmStartError};

/// What providers are built with.
pub struct Assembler {
    pub catalog: Catalog,
    pub master: Arc<MasterKey>,
    /// Where guests' compiled components are cached.
    pub data_dir: PathBuf,
    /// The directory of kms.json: relative paths in it are taken from there.
    pub base_dir: PathBuf,
    /// kms.json's name, for errors.
    pub source_name: String,
    /// The most decrypted keys a `db` provider holds (`cache.keys`).
    pub cache_keys: usize,
}

/// A running provider and what it was built from.
pub struct Built {
    registered: Registered,
    fingerprint: String,
}

impl Built {
    /// The provider, for the gateway.
    pub fn registered(&self) -> Registered {
        Registered {
            provider: Arc::clone(&self.registered.provider),
            description: self.registered.description.clone(),
        }
    }

    /// The provider's id.
    pub fn id(&self) -> &str {
        self.registered.provider.id()
    }

    /// Whether this is the very provider `other` is (kept by a reload).
    pub fn same_as(&self, other: &Built) -> bool {
        Arc::ptr_eq(&self.registered.provider, &other.registered.provider)
    }
}

impl Assembler {
    /// What tells whether `entry` changed: its text, and for a guest the SHA-256
    /// of its component.
    fn fingerprint(&self, entry: &ProviderEntry) -> String {
        match &entry.config {
            // A pulled component's layer digest was just checked against its bytes.
            ProviderConfig::Wasm(WasmConfig {
                component: ComponentSource::Pulled { .. },
                sha256: Some(digest),
                ..
            }) => format!("{} {digest}", entry.fingerprint),
            ProviderConfig::Wasm(wasm) => {
                let digest = wasm
                    .component
                    .resolved(&self.base_dir)
                    .bytes()
                    .map(|bytes| {
                        hex::encode(aws_lc_rs::digest::digest(
                            &aws_lc_rs::digest::SHA256,
                            &bytes,
                        ))
                    })
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                format!("{} {digest}", entry.fingerprint)
            }
            _ => entry.fingerprint.clone(),
        }
    }

    /// Builds `entries` (in order), reusing a provider of `previous` whose entry
    /// is unchanged.
    ///
    /// # Errors
    /// Every entry's problem, with its JSON path; then nothing is built.
    pub async fn build(
        &self,
        mut entries: Vec<ProviderEntry>,
        previous: &[Built],
    ) -> Result<Vec<Built>, Vec<Problem>> {
        self.prepare_guests(&mut entries).await?;
        let (kept, fresh): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .enumerate()
            .map(|(i, entry)| {
                let fingerprint = self.fingerprint(&entry);
                let reused = previous
                    .iter()
                    .find(|b| b.id() == entry.id && b.fingerprint == fingerprint);
                (i, entry, fingerprint, reused)
            })
            .partition(|(_, _, _, reused)| reused.is_some());
        let to_build: Vec<&ProviderEntry> = fresh.iter().map(|(_, entry, _, _)| entry).collect();
        let runtime = wasm_runtime(&to_build, &self.data_dir).map_err(|message| {
            vec![Problem {
                path: "providers".into(),
                message,
            }]
        })?;
        let mut built: Vec<(usize, Built)> = kept
            .into_iter()
            .map(|(i, entry, fingerprint, reused)| {
                let reused = reused.expect("partitioned on reuse");
                (
                    i,
                    Built {
                        registered: Registered {
                            provider: Arc::clone(&reused.registered.provider),
                            description: entry.description,
                        },
                        fingerprint,
                    },
                )
            })
            .collect();
        let mut failures = Vec::new();
        for (i, entry, fingerprint, _) in fresh {
            fn shared(provider: impl Provider + 'static) -> Arc<dyn Provider> {
                Arc::new(provider)
            }
            let path = format!("providers[{i}]");
            let made: Result<Arc<dyn Provider>, String> = match entry.config {
                ProviderConfig::Db(_) => Ok(shared(
                    DbProvider::new(entry.id, self.catalog.clone(), self.master.clone())
                        .with_cache(self.cache_keys),
                )),
                ProviderConfig::Wasm(wasm) => {
                    let runtime = runtime
                        .as_ref()
                        .expect("a runtime exists when a wasm provider does");
                    let named = wasm.adapter.is_some();
                    let options = match wasm_options(
                        entry.id,
                        wasm,
                        &self.base_dir,
                        &path,
                        &self.source_name,
                    ) {
                        Ok(options) => options,
                        Err(ConfigError::Invalid { problems, .. }) => {
                            failures.extend(problems);
                            continue;
                        }
                        Err(ConfigError::Read { path, source }) => {
                            failures.push(Problem {
                                path,
                                message: source.to_string(),
                            });
                            continue;
                        }
                        Err(other) => {
                            failures.push(Problem {
                                path: path.clone(),
                                message: other.to_string(),
                            });
                            continue;
                        }
                    };
                    match WasmProvider::start(
                        runtime,
                        options,
                        self.catalog.clone(),
                        self.master.clone(),
                    )
                    .await
                    {
                        Ok(provider) => Ok(shared(provider)),
                        // A named type's fields are the entry's own; a `wasm` entry's are under `config`.
                        Err(WasmStartError::Config { field, message }) => {
                            let inside = if named { "" } else { ".config" };
                            failures.push(Problem {
                                path: match field {
                                    Some(field) => format!("{path}{inside}.{field}"),
                                    None => format!("{path}{inside}"),
                                },
                                message,
                            });
                            continue;
                        }
                        Err(e @ WasmStartError::Load(_)) if named => Err(format!(
                            "{e} (shipped adapters come from the binary, or from $KMSGW_ADAPTER_DIR when it is set)"
                        )),
                        Err(e) => Err(e.to_string()),
                    }
                }
                ProviderConfig::Http(http) => HttpProvider::new(entry.id, http)
                    .map(shared)
                    .map_err(|e| e.to_string()),
                ProviderConfig::Vault(vault) => VaultProvider::new(entry.id, vault)
                    .map(shared)
                    .map_err(|e| e.to_string()),
                // Connects on first use: a wrong PIN or a missing token shows in health.
                ProviderConfig::Pkcs11(pkcs11) => Ok(shared(Pkcs11Provider::new(entry.id, pkcs11))),
                ProviderConfig::AwsKms(aws) => Ok(shared(AwsKmsProvider::new(entry.id, aws).await)),
            };
            match made {
                Ok(provider) => built.push((
                    i,
                    Built {
                        registered: Registered {
                            provider,
                            description: entry.description,
                        },
                        fingerprint,
                    },
                )),
                Err(message) => failures.push(Problem { path, message }),
            }
        }
        if !failures.is_empty() {
            failures.sort_by(|a, b| a.path.cmp(&b.path));
            return Err(failures);
        }
        built.sort_by_key(|(i, _)| *i);
        Ok(built.into_iter().map(|(_, b)| b).collect())
    }

    /// Makes every guest's component a file on disk and vets it before anything
    /// is compiled: `oci://` components are pulled (or found in the cache) and
    /// checked against their digests, then signatures and grants are checked
    /// ([`distribution::vet`]).
    async fn prepare_guests(&self, entries: &mut [ProviderEntry]) -> Result<(), Vec<Problem>> {
        let cache = Cache::new(&self.data_dir);
        let mut problems = Vec::new();
        for (i, entry) in entries.iter_mut().enumerate() {
            if let ProviderConfig::Wasm(wasm) = &mut entry.config
                && let Err(found) =
                    distribution::prepare(wasm, i, &entry.id, &self.base_dir, &cache).await
            {
                problems.extend(found);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// A guest engine sized for the `wasm` entries among `entries`; `None` when there
/// are none. (Each build gets its own engine: a reload adds guests beyond what
/// the running engine's pool was sized for.)
fn wasm_runtime(
    entries: &[&ProviderEntry],
    data_dir: &Path,
) -> Result<Option<WasmRuntime>, String> {
    // Invalid limits are reported with their entry by `wasm_options`; defaults size the engine meanwhile.
    let limits: Vec<GuestLimits> = entries
        .iter()
        .filter_map(|p| match &p.config {
            ProviderConfig::Wasm(w) => {
                Some(GuestLimits::resolve(w.limits.as_ref()).unwrap_or_default())
            }
            _ => None,
        })
        .collect();
    if limits.is_empty() {
        return Ok(None);
    }
    let sizing = PoolSizing {
        // A failed instance's slot is freed before its replacement is made; the
        // spare slots cover warm-up overlapping a replacement.
        instances: limits
            .iter()
            .map(|l| u32::try_from(l.instances).unwrap_or(u32::MAX))
            .fold(4u32, u32::saturating_add),
        max_memory_bytes: limits
            .iter()
            .map(GuestLimits::memory_bytes)
            .max()
            .unwrap_or(0),
    };
    WasmRuntime::new(sizing, Some(data_dir.join("wasm-cache")))
        .map(Some)
        .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))
}

/// Turns a `wasm` entry into run options; a relative component path is taken
/// from the directory of kms.json.
pub(crate) fn wasm_options(
    id: String,
    config: WasmConfig,
    base_dir: &Path,
    path: &str,
    source_name: &str,
) -> Result<WasmOptions, ConfigError> {
    let mut problems = Vec::new();
    let allowed_hosts: Vec<AllowedHost> = config
        .allowed_hosts
        .iter()
        .enumerate()
        .filter_map(|(j, entry)| {
            AllowedHost::parse(entry)
                .map_err(|message| {
                    problems.push(Problem {
                        path: format!("{path}.allowedHosts[{j}]"),
                        message,
                    })
                })
                .ok()
        })
        .collect();
    let mut allowed_hosts: Vec<AllowedHost> = allowed_hosts;
    let mut egress_auth = Vec::new();
    for (j, item) in config.egress_auth.iter().enumerate() {
        let at = format!("{path}.egressAuth[{j}]");
        let host = match AllowedHost::parse(&item.host) {
            Ok(host) => host,
            Err(message) => {
                problems.push(Problem {
                    path: format!("{at}.host"),
                    message,
                });
                continue;
            }
        };
        let credentials = match &item.kind {
            EgressAuthKind::Bearer(bearer) => Ok(Credentials::bearer(bearer.clone())),
            EgressAuthKind::Oauth2ClientCredentials(oauth)
                if oauth.token_url.scheme() != "https"
                    && !AllowedHost::is_loopback(oauth.token_url.host_str().unwrap_or_default()) =>
            {
                Err(crate::providers::credentials::CredentialError::Setup(
                    "tokenUrl must be https:// (http:// only on loopback): the client secret travels in it".into(),
                ))
            }
            EgressAuthKind::Oauth2ClientCredentials(oauth) => {
                Ok(Credentials::client_credentials(oauth.clone()))
            }
            EgressAuthKind::GoogleServiceAccount(account) => {
                Credentials::google_service_account(account, base_dir)
            }
        };
        match credentials {
            Ok(credentials) => {
                if !allowed_hosts.contains(&host) {
                    allowed_hosts.push(host.clone());
                }
                egress_auth.push((host, Arc::new(credentials)));
            }
            Err(e) => problems.push(Problem {
                path: at,
                message: e.to_string(),
            }),
        }
    }
    let limits = GuestLimits::resolve(config.limits.as_ref())
        .map_err(|message| {
            problems.push(Problem {
                path: format!("{path}.limits"),
                message,
            })
        })
        .unwrap_or_default();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        });
    }
    Ok(WasmOptions {
        id,
        component: config.component.resolved(base_dir),
        sha256: config.sha256,
        config: config.config.unwrap_or(serde_json::Value::Null),
        allowed_hosts,
        egress_auth,
        limits,
        adapter: config.adapter,
        publisher: config.publisher,
    })
}
