//! Sealing secrets at rest: AES-256-GCM under the gateway's master key, with a
//! caller-chosen associated data string (for keys, one naming the kid), so a
//! sealed blob moved to another row does not open.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// Format version of a sealed blob: `1 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`.
const VERSION: u8 = 1;

/// Why the master key could not be loaded or a blob not opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("KMSGW_MASTER_KEY must be base64 of exactly 32 bytes")]
    BadEnvKey,
    #[error("master key file {path} must hold base64 of exactly 32 bytes")]
    BadKeyFile { path: String },
    #[error("cannot read or create master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("sealed data is damaged or was sealed under another master key")]
    Open,
}

/// The 256-bit master key. Never printed; aws-lc wipes it when dropped.
pub struct MasterKey(LessSafeKey);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// A key from 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key");
        MasterKey(LessSafeKey::new(unbound))
    }

    /// A key from base64 text (the `KMSGW_MASTER_KEY` form).
    ///
    /// # Errors
    /// [`SealError::BadEnvKey`] unless the text decodes to exactly 32 bytes.
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        Self::parse(text).ok_or(SealError::BadEnvKey)
    }

    fn parse(text: &str) -> Option<Self> {
        let bytes = Zeroizing::new(crate::crypto::decode_base64(text.trim()).ok()?);
        let array: &[u8; 32] = bytes.as_slice().try_into().ok()?;
        Some(Self::from_bytes(array))
    }

    /// Reads the key file at `path`, creating it (mode 0600, fresh random key) when absent.
    ///
    /// # Errors
    /// When the file cannot be read or created, or holds something else than a key.
    pub fn load_or_create(path: &Path) -> Result<Self, SealError> {
        let shown = path.display().to_string();
        let io_error = |source| SealError::KeyFile {
            path: shown.clone(),
            source,
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                aws_lc_rs::rand::fill(bytes.as_mut_slice()).expect("system randomness");
                let text = Zeroizing::new(STANDARD.encode(bytes.as_slice()));
                file.write_all(text.as_bytes())
                    .and_then(|()| file.write_all(b"\n"))
                    .and_then(|()| file.sync_all())
                    .map_err(io_error)?;
                Ok(Self::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = Zeroizing::new(fs::read_to_string(path).map_err(io_error)?);
                Self::parse(&text).ok_or(SealError::BadKeyFile { path: shown })
            }
            Err(e) => Err(io_error(e)),
        }
    }

    /// Encrypts `plaintext`, binding it to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + 16);
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let mut body = out.split_off(1 + NONCE_LEN);
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .expect("AES-GCM sealing does not fail for in-memory sizes");
        out.extend_from_slice(&body);
        out
    }

    /// Decrypts a blob made by [`MasterKey::seal`] with the same `aad`.
    ///
    /// # Errors
    /// [`SealError::Open`] when the blob is damaged, sealed under another key, or for another `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(SealError::Open);
        }
        let nonce: [u8; NONCE_LEN] = sealed[1..1 + NONCE_LEN].try_into().expect("length checked");
        let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let plain_len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Open)?
            .len();
        body.truncate(plain_len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_aad() {
        let key = MasterKey::from_bytes(&[7; 32]);
        let sealed = key.seal("kid-1", b"secret");
        assert_eq!(key.open("kid-1", &sealed).unwrap().as_slice(), b"secret");
        assert!(key.open("kid-2", &sealed).is_err());
        assert!(
            MasterKey::from_bytes(&[8; 32])
                .open("kid-1", &sealed)
                .is_err()
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(key.open("kid-1", &flipped).is_err());
    }

    #[test]
    fn key_file_is_created_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = MasterKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal("a", b"x");
        let second = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(second.open("a", &sealed).unwrap().as_slice(), b"x");
    }

    #[test]
    fn env_key_must_be_32_bytes() {
        assert!(MasterKey::from_base64("AAAA").is_err());
        assert!(MasterKey::from_base64(&STANDARD.encode([1u8; 32])).is_ok());
    }
}
