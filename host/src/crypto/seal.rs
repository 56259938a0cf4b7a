//! Sealing secrets at rest: AES-256-GCM under the gateway's master key, with a
//! caller-chosen associated data string (for keys, one naming the kid), so a
//! sealed blob moved to another row does not open.
//!
//! The master key has generations ([`Keyring`]): a blob names the generation
//! that sealed it, so a rotation can rewrap blobs one batch at a time while
//! both generations open. Where the generations themselves are kept (wrapped by
//! a seal) is [`crate::custody`]'s business.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// First format: `1 ‖ nonce(12) ‖ ciphertext ‖ tag(16)`, always generation 1.
const FORMAT_V1: u8 = 1;
/// Second format: `2 ‖ generation(4, big-endian) ‖ nonce(12) ‖ ciphertext ‖ tag(16)`.
const FORMAT_V2: u8 = 2;
const TAG_LEN: usize = 16;

/// Length of a master key generation, and of a file seal's key.
pub const KEY_LEN: usize = 32;

/// A master key generation's raw bytes, wiped when dropped.
pub type KeyBytes = Zeroizing<[u8; KEY_LEN]>;

/// Why a key could not be loaded or a blob not opened.
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
    /// The blob names a generation this keyring does not hold (made after it
    /// was loaded, or destroyed by a finished rotation).
    #[error("sealed under master key generation {0}, which this gateway does not hold")]
    UnknownGeneration(u32),
    /// The master key has not been unsealed yet.
    #[error("the gateway is sealed: {0}")]
    Sealed(String),
}

/// Fresh random key bytes.
pub fn random_key() -> KeyBytes {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    aws_lc_rs::rand::fill(bytes.as_mut_slice()).expect("system randomness");
    bytes
}

fn aes_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"))
}

/// AES-256-GCM of `plaintext` under `key`: `nonce ‖ ciphertext ‖ tag`.
pub fn encrypt(key: &[u8; KEY_LEN], aad: &str, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    seal_into(&aes_key(key), aad, plaintext, &mut out);
    out
}

/// Opens what [`encrypt`] made.
///
/// # Errors
/// [`SealError::Open`] for another key, another `aad` or damaged bytes.
pub fn decrypt(
    key: &[u8; KEY_LEN],
    aad: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    open_from(&aes_key(key), aad, sealed)
}

fn seal_into(key: &LessSafeKey, aad: &str, plaintext: &[u8], out: &mut Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let mut body = out.split_off(start);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad.as_bytes()),
        &mut body,
    )
    .expect("AES-GCM sealing does not fail for in-memory sizes");
    out.extend_from_slice(&body);
}

fn open_from(key: &LessSafeKey, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Open);
    }
    let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("length checked");
    let mut body = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
    let plain_len = key
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

/// The generation that sealed `blob`, from its header.
///
/// # Errors
/// [`SealError::Open`] when the blob has no known header.
pub fn generation_of(blob: &[u8]) -> Result<u32, SealError> {
    match blob.first() {
        Some(&FORMAT_V1) => Ok(1),
        Some(&FORMAT_V2) if blob.len() >= 5 => Ok(u32::from_be_bytes(
            blob[1..5].try_into().expect("length checked"),
        )),
        _ => Err(SealError::Open),
    }
}

/// The master key's generations; new blobs are sealed under the newest.
/// Never printed; aws-lc wipes the keys when dropped.
pub struct Keyring {
    keys: BTreeMap<u32, LessSafeKey>,
    current: u32,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring(generations {:?})", self.generations())
    }
}

impl Keyring {
    /// A keyring of the given generations; the highest seals.
    ///
    /// # Panics
    /// When `generations` is empty.
    pub fn new<'a>(generations: impl IntoIterator<Item = (u32, &'a [u8; KEY_LEN])>) -> Self {
        let keys: BTreeMap<u32, LessSafeKey> = generations
            .into_iter()
            .map(|(generation, bytes)| (generation, aes_key(bytes)))
            .collect();
        let current = *keys.keys().next_back().expect("a keyring has a generation");
        Keyring { keys, current }
    }

    /// A keyring holding only generation 1.
    pub fn single(bytes: &[u8; KEY_LEN]) -> Self {
        Self::new([(1, bytes)])
    }

    /// The generation new blobs are sealed under.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// Every generation held, oldest first.
    pub fn generations(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// Encrypts `plaintext` under the current generation, binding it to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(5 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(FORMAT_V2);
        out.extend_from_slice(&self.current.to_be_bytes());
        seal_into(&self.keys[&self.current], aad, plaintext, &mut out);
        out
    }

    /// Decrypts a blob made by [`Keyring::seal`] (or the first format) with the same `aad`.
    ///
    /// # Errors
    /// [`SealError::UnknownGeneration`] for a generation not held; [`SealError::Open`]
    /// when the blob is damaged, sealed under another key, or for another `aad`.
    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let generation = generation_of(sealed)?;
        let body = if sealed[0] == FORMAT_V1 {
            &sealed[1..]
        } else {
            &sealed[5..]
        };
        let key = self
            .keys
            .get(&generation)
            .ok_or(SealError::UnknownGeneration(generation))?;
        open_from(key, aad, body)
    }
}

/// Parses base64 text of a 32-byte key (the `KMSGW_MASTER_KEY` and key file form).
///
/// # Errors
/// [`SealError::BadEnvKey`] unless the text decodes to exactly 32 bytes.
pub fn parse_key(text: &str) -> Result<KeyBytes, SealError> {
    let bytes = Zeroizing::new(
        crate::crypto::decode_base64(text.trim()).map_err(|_| SealError::BadEnvKey)?,
    );
    let array: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SealError::BadEnvKey)?;
    Ok(Zeroizing::new(array))
}

/// Reads the key file at `path`.
///
/// # Errors
/// When the file cannot be read or holds something else than a key.
pub fn read_key_file(path: &Path) -> Result<KeyBytes, SealError> {
    let shown = path.display().to_string();
    let text = Zeroizing::new(
        fs::read_to_string(path).map_err(|source| SealError::KeyFile {
            path: shown.clone(),
            source,
        })?,
    );
    parse_key(&text).map_err(|_| SealError::BadKeyFile { path: shown })
}

/// Writes `key` as a new key file at `path` (mode 0600, synced).
///
/// # Errors
/// When the file exists already or cannot be written.
pub fn create_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), SealError> {
    let io_error = |source| SealError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    let text = Zeroizing::new(STANDARD.encode(key));
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io_error)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error)?;
    }
    Ok(())
}

/// Reads the key file at `path`, creating it (mode 0600, fresh random key) when absent.
///
/// # Errors
/// When the file cannot be read or created, or holds something else than a key.
pub fn load_or_create_key_file(path: &Path) -> Result<KeyBytes, SealError> {
    let key = random_key();
    match create_key_file(path, &key) {
        Ok(()) => Ok(key),
        Err(SealError::KeyFile { source, .. })
            if source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            read_key_file(path)
        }
        Err(e) => Err(e),
    }
}

/// The associated data binding a sealed `db` key to its version id.
pub fn db_key_aad(version_id: &str) -> String {
    format!("kmsgw:db-key:{version_id}")
}

/// The associated data binding a guest storage value to its provider and key.
pub fn guest_value_aad(provider: &str, key: &str) -> String {
    format!("kmsgw:guest:{provider}:{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_the_same_key_and_aad() {
        let key = Keyring::single(&[7; 32]);
        let sealed = key.seal("kid-1", b"secret");
        assert_eq!(key.open("kid-1", &sealed).unwrap().as_slice(), b"secret");
        assert!(key.open("kid-2", &sealed).is_err());
        assert!(Keyring::single(&[8; 32]).open("kid-1", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(key.open("kid-1", &flipped).is_err());
    }

    #[test]
    fn blobs_name_their_generation_and_both_formats_open() {
        let one = [1u8; 32];
        let two = [2u8; 32];
        let old = Keyring::single(&one);
        let sealed_by_one = old.seal("a", b"x");
        // The first format (no generation in the header) is generation 1.
        let mut v1 = vec![FORMAT_V1];
        v1.extend_from_slice(&encrypt(&one, "a", b"y"));
        let ring = Keyring::new([(1, &one), (2, &two)]);
        assert_eq!(ring.current(), 2);
        let sealed_by_two = ring.seal("a", b"z");
        assert_eq!(generation_of(&sealed_by_one).unwrap(), 1);
        assert_eq!(generation_of(&v1).unwrap(), 1);
        assert_eq!(generation_of(&sealed_by_two).unwrap(), 2);
        assert_eq!(ring.open("a", &sealed_by_one).unwrap().as_slice(), b"x");
        assert_eq!(ring.open("a", &v1).unwrap().as_slice(), b"y");
        assert_eq!(ring.open("a", &sealed_by_two).unwrap().as_slice(), b"z");
        assert!(matches!(
            old.open("a", &sealed_by_two),
            Err(SealError::UnknownGeneration(2))
        ));
        // A generation number changed in the header opens under no key.
        let mut moved = sealed_by_two.clone();
        moved[4] = 1;
        assert!(ring.open("a", &moved).is_err());
    }

    #[test]
    fn key_file_is_created_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let first = load_or_create_key_file(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_key_file(&path).unwrap();
        assert_eq!(*first, *second);
        assert!(create_key_file(&path, &first).is_err(), "never overwritten");
    }

    #[test]
    fn env_key_must_be_32_bytes() {
        assert!(parse_key("AAAA").is_err());
        assert!(parse_key(&STANDARD.encode([1u8; 32])).is_ok());
    }
}
