//! Where a guest's component comes from: a file, an OCI registry, or one of the
//! guests built into the binary.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use super::reference::OciReference;

/// A guest adapter shipped with kmsgw: usable by type name in kms.json without an
/// `adapters` entry, embedded in the binary at build time.
#[derive(Debug)]
pub struct Shipped {
    /// The type name in kms.json.
    pub name: &'static str,
    /// The component's file name (what `$KMSGW_ADAPTER_DIR` must hold to override it).
    pub file: &'static str,
    bytes: &'static [u8],
}

macro_rules! shipped {
    ($name:literal, $file:literal) => {
        Shipped {
            name: $name,
            file: $file,
            bytes: include_bytes!(concat!(env!("KMSGW_SHIPPED_DIR"), "/", $file)),
        }
    };
}

/// The shipped guest adapters.
pub static SHIPPED_ADAPTERS: [Shipped; 3] = [
    shipped!("cosmian-kms", "cosmian_kms.wasm"),
    shipped!("azure-kv", "azure_kv.wasm"),
    shipped!("gcp-kms", "gcp_kms.wasm"),
];

/// The component a guest provider runs.
#[derive(Clone, Debug, PartialEq)]
pub enum ComponentSource {
    /// A `.wasm` file (relative to kms.json's folder until resolved).
    File(PathBuf),
    /// A shipped guest, from the binary.
    Shipped(&'static Shipped),
    /// `oci://…`, not pulled yet.
    Oci(OciReference),
    /// An `oci://` component pulled into the cache: the pinned reference and its file.
    Pulled {
        reference: OciReference,
        path: PathBuf,
    },
}

impl PartialEq for Shipped {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl ComponentSource {
    /// The source of shipped type `name`: the file in `override_dir` when one is
    /// given (`$KMSGW_ADAPTER_DIR`), else the embedded component.
    pub fn shipped(name: &str, override_dir: Option<&Path>) -> Option<ComponentSource> {
        let shipped = SHIPPED_ADAPTERS.iter().find(|s| s.name == name)?;
        Some(match override_dir {
            Some(dir) => ComponentSource::File(dir.join(shipped.file)),
            None => ComponentSource::Shipped(shipped),
        })
    }

    /// A file's path made absolute against `base` (kms.json's folder).
    #[must_use]
    pub fn resolved(&self, base: &Path) -> ComponentSource {
        match self {
            ComponentSource::File(path) => ComponentSource::File(base.join(path)),
            other => other.clone(),
        }
    }

    /// The component's bytes.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn bytes(&self) -> std::io::Result<Cow<'static, [u8]>> {
        match self {
            ComponentSource::File(path) | ComponentSource::Pulled { path, .. } => {
                std::fs::read(path).map(Cow::Owned)
            }
            ComponentSource::Shipped(shipped) => Ok(Cow::Borrowed(shipped.bytes)),
            ComponentSource::Oci(reference) => Err(std::io::Error::other(format!(
                "{reference} is not pulled yet (`kmsgw adapter pull` fills the cache)"
            ))),
        }
    }
}

impl fmt::Display for ComponentSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ComponentSource::File(path) => path.display().fmt(f),
            ComponentSource::Shipped(shipped) => write!(f, "built-in {}", shipped.file),
            ComponentSource::Oci(reference) | ComponentSource::Pulled { reference, .. } => {
                reference.fmt(f)
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for ComponentSource {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.starts_with("oci://") {
            OciReference::parse(&text)
                .map(ComponentSource::Oci)
                .map_err(serde::de::Error::custom)
        } else {
            Ok(ComponentSource::File(PathBuf::from(text)))
        }
    }
}
