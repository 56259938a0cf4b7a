//! Pulled components under the data directory, as an OCI image layout
//! (`oci/blobs/sha256/…`, content-addressed): a second start needs no registry,
//! and an air-gapped install copies the directory. Every read is checked
//! against its digest again.

use std::path::{Path, PathBuf};

use super::registry::digest_of;

/// The cache of one data directory.
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// The cache under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Cache {
            dir: data_dir.join("oci"),
        }
    }

    /// Where the blob with `digest` (`sha256:…`) lives.
    pub fn path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join("blobs").join("sha256").join(hex)
    }

    /// The blob with `digest`, if cached and intact (a damaged one is removed).
    pub fn blob(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        if digest_of(&bytes) == digest {
            return Some(bytes);
        }
        tracing::warn!(file = %path.display(), "a cached blob does not match its digest; pulling it again");
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Stores `bytes` (whose digest was checked) under `digest`.
    ///
    /// # Errors
    /// When the directory cannot be written.
    pub fn put(&self, digest: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.path(digest);
        std::fs::create_dir_all(path.parent().expect("a blob path has a parent"))?;
        write_whole(&path, bytes)?;
        let layout = self.dir.join("oci-layout");
        if !layout.exists() {
            write_whole(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(path)
    }

    fn tag_file(&self, unpinned: &str) -> PathBuf {
        self.dir
            .join("tags")
            .join(&digest_of(unpinned.as_bytes())[7..])
    }

    /// Remembers that the unpinned reference `unpinned` resolved to `digest`.
    ///
    /// # Errors
    /// When the directory cannot be written.
    pub fn remember_tag(&self, unpinned: &str, digest: &str) -> std::io::Result<()> {
        let path = self.tag_file(unpinned);
        std::fs::create_dir_all(path.parent().expect("a tag path has a parent"))?;
        write_whole(&path, digest.as_bytes())
    }

    /// The digest `unpinned` resolved to last.
    pub fn tag(&self, unpinned: &str) -> Option<String> {
        std::fs::read_to_string(self.tag_file(unpinned)).ok()
    }
}

/// Writes `bytes` to `path` whole or not at all (a `.partial` file renamed into
/// place; removed again when the disk is full).
fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let partial = path.with_extension("partial");
    let written = std::fs::write(&partial, bytes).and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
