//! Guest distribution: components pulled from OCI registries by digest and
//! cached under the data directory, publisher signatures checked against the
//! operator's keys, and the capabilities a guest asks for weighed against what
//! its entry grants — all before anything is compiled.

pub mod cache;
pub mod capabilities;
pub mod commands;
pub mod registry;
pub mod sections;
pub mod signature;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use self::cache::Cache;
use self::capabilities::Requested;
use self::registry::{Registry, RegistryError, component_layer};
use crate::config::{ComponentSource, OciReference, Problem, RegistryAuth, WasmConfig, WasmLimits};
use crate::providers::wasm::host::AllowedHost;
use crate::providers::wasm::limits::GuestLimits;

/// Why a component could not be had from its registry (or the cache).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{reference}: {reason}")]
    Layout { reference: String, reason: String },
    #[error("cannot write the component cache: {0}")]
    Cache(#[from] std::io::Error),
}

/// A component on disk, pulled (or found in the cache) and checked.
#[derive(Debug)]
pub struct Fetched {
    /// The reference, pinned to the manifest's digest.
    pub reference: OciReference,
    /// The component's file in the cache.
    pub path: PathBuf,
    /// The component layer's digest (`sha256:…`).
    pub layer_digest: String,
    /// The component, as checked against that digest.
    pub bytes: Vec<u8>,
}

/// The component `reference` names: from the cache when pinned and cached,
/// else from the registry (then cached). An unpinned reference is resolved at
/// the registry each time (the digest it last resolved to serves while the
/// registry is unreachable).
///
/// # Errors
/// [`FetchError`].
pub async fn fetch(
    reference: &OciReference,
    auth: Option<&RegistryAuth>,
    cache: &Cache,
) -> Result<Fetched, FetchError> {
    if let Some(digest) = &reference.digest {
        if let Some(found) = cached(reference, digest, cache) {
            return Ok(found);
        }
        return pull(reference, auth, cache).await;
    }
    match pull(reference, auth, cache).await {
        Ok(fetched) => {
            let digest = fetched.reference.digest.clone().expect("pulled is pinned");
            cache.remember_tag(&reference.unpinned(), &digest)?;
            tracing::warn!(reference = %reference, digest = %digest, pinned = %fetched.reference, "an unpinned guest component resolved; pin it in kms.json");
            Ok(fetched)
        }
        Err(error @ FetchError::Registry(RegistryError::Unreachable { .. })) => {
            let last = cache
                .tag(&reference.unpinned())
                .and_then(|digest| cached(reference, &digest, cache));
            match last {
                Some(fetched) => {
                    tracing::warn!(reference = %reference, pinned = %fetched.reference, error = %error, "the registry is unreachable; running the digest this reference resolved to last");
                    Ok(fetched)
                }
                None => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

fn cached(reference: &OciReference, digest: &str, cache: &Cache) -> Option<Fetched> {
    let manifest = cache.blob(digest)?;
    let layer = component_layer(&manifest).ok()?;
    let bytes = cache.blob(&layer.digest)?;
    Some(Fetched {
        reference: reference.pinned(digest),
        path: cache.path(&layer.digest),
        layer_digest: layer.digest,
        bytes,
    })
}

async fn pull(
    reference: &OciReference,
    auth: Option<&RegistryAuth>,
    cache: &Cache,
) -> Result<Fetched, FetchError> {
    let registry = Registry::new(reference, auth);
    let (digest, manifest) = registry.manifest().await?;
    let layer = component_layer(&manifest).map_err(|reason| FetchError::Layout {
        reference: reference.to_string(),
        reason,
    })?;
    let component = registry.blob(&layer).await?;
    // The layer first: a cached manifest means its layer is cached too.
    let path = cache.put(&layer.digest, &component)?;
    cache.put(&digest, &manifest)?;
    let pinned = reference.pinned(&digest);
    tracing::info!(reference = %pinned, bytes = component.len(), "pulled a guest component");
    Ok(Fetched {
        reference: pinned,
        path,
        layer_digest: layer.digest,
        bytes: component,
    })
}

/// Makes the component of `wasm` (provider `id`, entry `i` of `providers`) a
/// file on disk and vets it before anything is compiled: an `oci://` component
/// is pulled (or found in `cache`) and checked against its digests, then its
/// signature and the entry's grants are checked ([`vet`]); warnings are logged.
///
/// # Errors
/// Every problem, with its JSON path.
pub async fn prepare(
    wasm: &mut WasmConfig,
    i: usize,
    id: &str,
    base_dir: &Path,
    cache: &Cache,
) -> Result<(), Vec<Problem>> {
    let paths = EntryPaths {
        source: match (&wasm.adapter, &wasm.component) {
            (_, ComponentSource::Shipped(_)) | (None, _) => format!("providers[{i}]"),
            (Some(name), _) => format!("adapters.{name}"),
        },
        entry: format!("providers[{i}]"),
    };
    let bytes = if let ComponentSource::Oci(reference) = &wasm.component {
        let fetched = fetch(reference, wasm.registry_auth.as_ref(), cache)
            .await
            .map_err(|e| {
                vec![Problem {
                    path: format!("{}.component", paths.source),
                    message: e.to_string(),
                }]
            })?;
        wasm.sha256 = Some(fetched.layer_digest["sha256:".len()..].to_owned());
        wasm.component = ComponentSource::Pulled {
            reference: fetched.reference,
            path: fetched.path,
        };
        Cow::Owned(fetched.bytes)
    } else {
        // An unreadable file is reported when the component is loaded.
        match wasm.component.resolved(base_dir).bytes() {
            Ok(bytes) => bytes,
            Err(_) => return Ok(()),
        }
    };
    for warning in vet(&bytes, wasm, &paths)? {
        tracing::warn!(provider = %id, "{warning}");
    }
    Ok(())
}

/// Where a guest entry's parts are in kms.json, for errors.
pub struct EntryPaths {
    /// Where the component and its publisher keys are given: `adapters.NAME`
    /// for a named guest type, else the entry itself.
    pub source: String,
    /// The provider entry (`providers[i]`): where grants are given.
    pub entry: String,
}

/// Checks the component `bytes` of `wasm` before it is compiled: a publisher's
/// signature when `publicKeys` is set, and the entry's grants against the
/// capabilities the component asks for (storage limits the entry leaves unset
/// become what it asks, within the defaults). Returns warnings to log.
///
/// # Errors
/// Every problem, with its JSON path.
pub fn vet(
    bytes: &[u8],
    wasm: &mut WasmConfig,
    paths: &EntryPaths,
) -> Result<Vec<String>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    if !wasm.public_keys.is_empty() {
        match signature::verify(bytes, &wasm.public_keys) {
            Ok(key) => {
                tracing::info!(component = %wasm.component, key = key.id(), "publisher signature verified");
                wasm.publisher = Some(key.id().to_owned());
            }
            Err(e) => problems.push(Problem {
                path: format!("{}.component", paths.source),
                message: format!("{}: {e}", wasm.component),
            }),
        }
    }
    match Requested::of(bytes) {
        Ok(Some(requested)) => {
            check_grants(&requested, wasm, &paths.entry, &mut problems, &mut warnings)
        }
        Ok(None) => {}
        Err(message) => problems.push(Problem {
            path: format!("{}.component", paths.source),
            message: format!("{}: {message}", wasm.component),
        }),
    }
    if problems.is_empty() {
        Ok(warnings)
    } else {
        Err(problems)
    }
}

fn check_grants(
    requested: &Requested,
    wasm: &mut WasmConfig,
    at: &str,
    problems: &mut Vec<Problem>,
    warnings: &mut Vec<String>,
) {
    let asked = if requested.hosts.is_empty() {
        "nothing".to_owned()
    } else {
        requested.hosts.join(", ")
    };
    let mut granted = Vec::new();
    for (j, host) in wasm.allowed_hosts.iter().enumerate() {
        let Ok(host) = AllowedHost::parse(host) else {
            continue; // reported with its path when the options are made
        };
        if !requested.asks_for(&host) {
            problems.push(Problem {
                path: format!("{at}.allowedHosts[{j}]"),
                message: format!(
                    "grants `{}`, which the component never asked for (it asks for {asked}); grant only what it asks",
                    wasm.allowed_hosts[j]
                ),
            });
        }
        granted.push(host);
    }
    for (j, item) in wasm.egress_auth.iter().enumerate() {
        let Ok(host) = AllowedHost::parse(&item.host) else {
            continue;
        };
        if !requested.credentials {
            problems.push(Problem {
                path: format!("{at}.egressAuth[{j}]"),
                message:
                    "the component does not ask for credentials held by the host; remove egressAuth"
                        .into(),
            });
        } else if !requested.asks_for(&host) {
            problems.push(Problem {
                path: format!("{at}.egressAuth[{j}].host"),
                message: format!(
                    "grants `{}`, which the component never asked for (it asks for {asked})",
                    item.host
                ),
            });
        }
        granted.push(host);
    }
    let ungranted: Vec<&str> = requested
        .hosts
        .iter()
        .filter(|host| {
            AllowedHost::parse(host).is_ok_and(|asked| !granted.iter().any(|g| asked.covers(g)))
        })
        .map(String::as_str)
        .collect();
    if !ungranted.is_empty() {
        warnings.push(format!(
            "the component asks to reach {} but the entry does not grant it; those requests will be refused",
            ungranted.join(", ")
        ));
    }
    let Some(storage) = requested.storage else {
        return;
    };
    let defaults = GuestLimits::default();
    let limits = wasm.limits.get_or_insert_with(WasmLimits::default);
    for (name, given, asked, default) in [
        (
            "storageBytes",
            &mut limits.storage_bytes,
            storage.bytes,
            defaults.storage_bytes,
        ),
        (
            "storageEntries",
            &mut limits.storage_entries,
            storage.entries,
            defaults.storage_entries,
        ),
    ] {
        match *given {
            Some(value) if value > asked => problems.push(Problem {
                path: format!("{at}.limits.{name}"),
                message: format!("grants {value}, more than the {asked} the component asks for"),
            }),
            Some(value) if value < asked => warnings.push(format!(
                "the component asks for {name} {asked}; the entry grants {value}"
            )),
            Some(_) => {}
            None => *given = Some(asked.min(default)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::capabilities::Storage;
    use super::*;

    const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn entry(grants: serde_json::Value) -> WasmConfig {
        let mut entry = serde_json::json!({"component": "guest.wasm"});
        entry
            .as_object_mut()
            .unwrap()
            .extend(grants.as_object().unwrap().clone());
        serde_json::from_value(entry).unwrap()
    }

    fn vetted(
        requested: &Requested,
        grants: serde_json::Value,
    ) -> (WasmConfig, Result<Vec<String>, Vec<Problem>>) {
        let bytes = requested.embed(COMPONENT).unwrap();
        let mut wasm = entry(grants);
        let paths = EntryPaths {
            source: "providers[0]".into(),
            entry: "providers[0]".into(),
        };
        let outcome = vet(&bytes, &mut wasm, &paths);
        (wasm, outcome)
    }

    fn paths(outcome: Result<Vec<String>, Vec<Problem>>) -> Vec<String> {
        outcome.unwrap_err().into_iter().map(|p| p.path).collect()
    }

    #[test]
    fn grants_within_the_request_pass_and_unset_storage_becomes_the_request() {
        let requested = Requested {
            hosts: vec!["kms.example".into(), "127.0.0.1:8200".into()],
            storage: Some(Storage {
                bytes: 1000,
                entries: 10,
            }),
            credentials: true,
        };
        let (wasm, outcome) = vetted(
            &requested,
            serde_json::json!({
                "allowedHosts": ["https://kms.example"],
                "egressAuth": [{"host": "127.0.0.1:8200", "type": "bearer", "token": "t"}],
            }),
        );
        assert_eq!(outcome.unwrap(), Vec::<String>::new());
        let limits = wasm.limits.unwrap();
        assert_eq!(
            (limits.storage_bytes, limits.storage_entries),
            (Some(1000), Some(10))
        );
        // Less than asked: a warning only; a host asked for and not granted: a warning.
        let (_, outcome) = vetted(
            &requested,
            serde_json::json!({"allowedHosts": ["kms.example"], "limits": {"storageBytes": 500}}),
        );
        let warnings = outcome.unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("127.0.0.1:8200"));
        assert!(warnings[1].contains("storageBytes 1000"));
    }

    #[test]
    fn grants_beyond_the_request_are_refused_with_their_paths() {
        let requested = Requested {
            hosts: vec!["https://kms.example".into()],
            storage: Some(Storage {
                bytes: 1000,
                entries: 10,
            }),
            credentials: false,
        };
        let (_, outcome) = vetted(
            &requested,
            serde_json::json!({
                "allowedHosts": ["https://kms.example", "http://kms.example", "other.example:443"],
                "egressAuth": [{"host": "https://kms.example", "type": "bearer", "token": "t"}],
                "limits": {"storageBytes": 1001, "storageEntries": 10},
            }),
        );
        assert_eq!(
            paths(outcome),
            [
                "providers[0].allowedHosts[1]",
                "providers[0].allowedHosts[2]",
                "providers[0].egressAuth[0]",
                "providers[0].limits.storageBytes",
            ]
        );
        // A component that declares nothing is granted what its entry says.
        let mut wasm = entry(serde_json::json!({"allowedHosts": ["anything.example"]}));
        let paths_of = EntryPaths {
            source: "providers[0]".into(),
            entry: "providers[0]".into(),
        };
        assert!(vet(COMPONENT, &mut wasm, &paths_of).unwrap().is_empty());
        assert!(wasm.limits.is_none());
    }
}
