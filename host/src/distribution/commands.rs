//! `kmsgw adapter keygen | sign | push | inspect | pull`: a publisher's key,
//! signing a component, shipping it to a registry, looking inside one, and
//! filling a data directory's cache ahead of an air-gapped start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use der::Encode;
use secrecy::SecretString;
use serde_json::json;

use super::cache::Cache;
use super::capabilities::Requested;
use super::registry::Registry;
use super::signature;
use super::{Fetched, fetch};
use crate::config::{BasicAuth, BearerAuth, OciReference, RegistryAuth};
use crate::crypto::Alg;
use crate::crypto::publisher::{PublisherKey, SigningKey};

/// The registry credentials the CLI takes from its environment:
/// `KMSGW_REGISTRY_USERNAME` with `KMSGW_REGISTRY_PASSWORD`, or `KMSGW_REGISTRY_TOKEN`.
pub fn registry_auth_from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Option<RegistryAuth> {
    if let (Some(username), Some(password)) = (
        lookup("KMSGW_REGISTRY_USERNAME"),
        lookup("KMSGW_REGISTRY_PASSWORD"),
    ) {
        return Some(RegistryAuth::Basic(BasicAuth {
            username,
            password: SecretString::from(password),
        }));
    }
    lookup("KMSGW_REGISTRY_TOKEN").map(|token| {
        RegistryAuth::Bearer(BearerAuth {
            token: SecretString::from(token),
        })
    })
}

/// Writes a new publisher key: `out` (PKCS#8 PEM, mode 0600) and the public
/// key beside it (`*.pub.pem`); returns what to put in `publicKeys`.
///
/// # Errors
/// An unknown algorithm, an existing file, or a write that fails.
pub fn keygen(out: &Path, alg: &str) -> Result<String, String> {
    let alg = match alg {
        "ed25519" => Alg::EdDSA,
        "p256" => Alg::ES256,
        other => return Err(format!("--alg {other}: use ed25519 or p256")),
    };
    let public_path = out.with_extension("pub.pem");
    for path in [out, public_path.as_path()] {
        if path.exists() {
            return Err(format!("{} exists; choose another --out", path.display()));
        }
    }
    let (key, der) = SigningKey::generate(alg).map_err(|e| e.to_string())?;
    let private = pem_rfc7468::encode_string("PRIVATE KEY", pem_rfc7468::LineEnding::LF, &der)
        .map_err(|e| e.to_string())?;
    let spki = crate::x509::spki_of(key.public().jwk())
        .map_err(|e| e.to_string())?
        .to_der()
        .map_err(|e| e.to_string())?;
    let public = pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &spki)
        .map_err(|e| e.to_string())?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    file.write_all(private.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    std::fs::write(&public_path, &public)
        .map_err(|e| format!("cannot write {}: {e}", public_path.display()))?;
    let jwk = serde_json::to_string(key.public().jwk()).expect("a JWK serialises");
    Ok(format!(
        "wrote {} (private, mode 0600) and {}\nkey id {}\nfor kms.json \"publicKeys\": [{jwk}]",
        out.display(),
        public_path.display(),
        key.public().id()
    ))
}

/// Signs `component` with the PEM key at `key`, writing `out` (default: in place).
///
/// # Errors
/// An unreadable key or component, or one that is not WebAssembly.
pub fn sign(component: &Path, key: &Path, out: Option<&Path>) -> Result<String, String> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(key).map_err(|e| format!("cannot read {}: {e}", key.display()))?,
    );
    let key = SigningKey::from_pem(&text).map_err(|e| e.to_string())?;
    let bytes = std::fs::read(component)
        .map_err(|e| format!("cannot read {}: {e}", component.display()))?;
    let signed =
        signature::sign(&bytes, &key).map_err(|e| format!("{}: {e}", component.display()))?;
    let out = out.unwrap_or(component);
    std::fs::write(out, signed).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(format!(
        "signed {} with key {}",
        out.display(),
        key.public().id()
    ))
}

/// Pushes `component` to `reference` (a tag); returns the pinned reference.
///
/// # Errors
/// A malformed reference, an unreadable component or a registry failure.
pub async fn push(
    component: &Path,
    reference: &str,
    auth: Option<&RegistryAuth>,
) -> Result<String, String> {
    let reference = OciReference::parse(reference)?;
    let bytes = std::fs::read(component)
        .map_err(|e| format!("cannot read {}: {e}", component.display()))?;
    let title = component.file_name().map_or("component.wasm".into(), |n| {
        n.to_string_lossy().into_owned()
    });
    let digest = Registry::new(&reference, auth)
        .push(&bytes, &title)
        .await
        .map_err(|e| e.to_string())?;
    Ok(reference.pinned(&digest).to_string())
}

/// What `kmsgw adapter pull` pulls: the `references` given (with the CLI's
/// credentials), and every `oci://` component of the providers in `config`
/// (with their `registryAuth`).
///
/// # Errors
/// A malformed reference, or a kms.json that does not load.
pub fn to_pull(
    references: &[String],
    config: Option<&Path>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(OciReference, Option<RegistryAuth>)>, String> {
    let mut wanted = Vec::new();
    for text in references {
        wanted.push((OciReference::parse(text)?, registry_auth_from_env(lookup)));
    }
    if let Some(path) = config {
        let config = crate::config::Config::load(path, lookup).map_err(|e| e.to_string())?;
        for entry in config.providers {
            if let crate::config::ProviderConfig::Wasm(wasm) = entry.config
                && let crate::config::ComponentSource::Oci(reference) = wasm.component
                && !wanted.iter().any(|(known, _)| *known == reference)
            {
                wanted.push((reference, wasm.registry_auth));
            }
        }
    }
    Ok(wanted)
}

/// Pulls each reference into the cache under `data_dir`; returns the pinned references.
///
/// # Errors
/// The first reference that cannot be had.
pub async fn pull(
    references: &[(OciReference, Option<RegistryAuth>)],
    data_dir: &Path,
) -> Result<String, String> {
    let cache = Cache::new(data_dir);
    let mut lines = Vec::new();
    for (reference, auth) in references {
        let fetched = fetch(reference, auth.as_ref(), &cache)
            .await
            .map_err(|e| e.to_string())?;
        lines.push(format!(
            "{} -> {}",
            fetched.reference,
            fetched.path.display()
        ));
    }
    if lines.is_empty() {
        return Err(
            "nothing to pull: give oci:// references, or --config with oci:// components".into(),
        );
    }
    Ok(lines.join("\n"))
}

/// What `source` (a file or an `oci://` reference) declares and who signed it,
/// as JSON; `keys` are PEM or JWK files to verify the signature with.
///
/// # Errors
/// An unreadable source or key, or a binary that is not WebAssembly.
pub async fn inspect(
    source: &str,
    keys: &[PathBuf],
    data_dir: Option<&Path>,
    auth: Option<&RegistryAuth>,
) -> Result<String, String> {
    let scratch;
    let (shown, bytes) = if source.starts_with("oci://") {
        let reference = OciReference::parse(source)?;
        let dir = match data_dir {
            Some(dir) => dir.to_owned(),
            None => {
                scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
                scratch.path().to_owned()
            }
        };
        let Fetched {
            reference, bytes, ..
        } = fetch(&reference, auth, &Cache::new(&dir))
            .await
            .map_err(|e| e.to_string())?;
        (reference.to_string(), bytes)
    } else {
        let bytes = std::fs::read(source).map_err(|e| format!("cannot read {source}: {e}"))?;
        (source.to_owned(), bytes)
    };
    let publishers = keys
        .iter()
        .map(|path| {
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| {
                    PublisherKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let capabilities = Requested::of(&bytes)?;
    let signed = signature::signatures(&bytes).map_err(|e| e.to_string())?;
    let verified = if publishers.is_empty() {
        json!(null)
    } else {
        match signature::verify(&bytes, &publishers) {
            Ok(key) => json!({"valid": true, "keyId": key.id()}),
            Err(e) => json!({"valid": false, "error": e.to_string()}),
        }
    };
    let report = json!({
        "component": shown,
        "sha256": hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)),
        "bytes": bytes.len(),
        "capabilities": capabilities,
        "signatures": signed,
        "verified": verified,
    });
    Ok(serde_json::to_string_pretty(&report).expect("a report serialises"))
}
