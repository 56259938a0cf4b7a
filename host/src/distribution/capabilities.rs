//! What a guest asks for (a custom section `kmsgw-capabilities`, written by
//! `kmsgw adapter build` from `kmsgw-adapter.toml`) and what the operator's
//! entry grants: a grant beyond the request is refused, a request beyond the
//! grant is only a warning (the guest simply cannot use it).

use serde::{Deserialize, Serialize};

use super::sections;
use crate::providers::wasm::host::AllowedHost;

/// The capabilities section's name.
pub const SECTION: &str = "kmsgw-capabilities";

/// What a guest declares it needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    /// Destinations it wants to reach (`allowedHosts` syntax).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The key-value storage it needs.
    pub storage: Option<Storage>,
    /// Whether it expects the host to inject credentials (`egressAuth`).
    #[serde(default)]
    pub credentials: bool,
}

/// A storage request.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub bytes: u64,
    pub entries: u64,
}

impl Requested {
    /// The request `bytes` declares; `None` when the component declares nothing.
    ///
    /// # Errors
    /// When the binary or the section is malformed.
    pub fn of(bytes: &[u8]) -> Result<Option<Requested>, String> {
        let found = sections::custom_sections(bytes)?;
        let mut ours = found.iter().filter(|s| s.name == SECTION);
        let Some(section) = ours.next() else {
            return Ok(None);
        };
        if ours.next().is_some() {
            return Err(format!(
                "the component has more than one `{SECTION}` section"
            ));
        }
        let requested: Requested = serde_json::from_slice(section.data)
            .map_err(|e| format!("the `{SECTION}` section is malformed: {e}"))?;
        requested.check()?;
        Ok(Some(requested))
    }

    /// Whether every host parses.
    ///
    /// # Errors
    /// The first host that does not.
    pub fn check(&self) -> Result<(), String> {
        for host in &self.hosts {
            AllowedHost::parse(host).map_err(|e| format!("requested host `{host}`: {e}"))?;
        }
        match self.storage {
            Some(storage) if storage.bytes == 0 || storage.entries == 0 => Err(
                "a storage request needs bytes and entries above zero (leave storage out to ask for none)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// `bytes` declaring this request (replacing any earlier declaration).
    ///
    /// # Errors
    /// When `bytes` is not a WebAssembly binary.
    pub fn embed(&self, bytes: &[u8]) -> Result<Vec<u8>, String> {
        let rest = sections::without(bytes, SECTION)?;
        let data = serde_json::to_vec(self).expect("a capability request serialises");
        Ok(sections::append(&rest, SECTION, &data))
    }

    /// Whether `granted` is among the hosts asked for (same host and port; a
    /// request without a scheme covers both).
    pub fn asks_for(&self, granted: &AllowedHost) -> bool {
        self.hosts
            .iter()
            .filter_map(|host| AllowedHost::parse(host).ok())
            .any(|asked| asked.covers(granted))
    }
}
