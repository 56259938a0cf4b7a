//! Publisher signatures of guest components: a custom section `kmsgw-signature`,
//! the binary's last, holding Ed25519 or ECDSA P-256 signatures over the SHA-256
//! of every byte before it. Signing appends (or extends) the section; verifying
//! needs one signature that one of the operator's public keys accepts.

use serde::{Deserialize, Serialize};

use super::sections;
use crate::crypto::publisher::{PublisherKey, SigningKey};
use crate::crypto::{base64url, decode_base64};

/// The signature section's name.
pub const SECTION: &str = "kmsgw-signature";
/// The most signatures a section may carry (each is tried against every key).
const MAX_SIGNATURES: usize = 16;
/// What each signature covers besides the digest, so it means nothing elsewhere.
const CONTEXT: &[u8] = b"kmsgw component signature v1\n";

/// Why a component's signature was not accepted (or could not be made).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error(
        "the component is not signed (no `{SECTION}` section), and publicKeys requires a publisher's signature"
    )]
    Unsigned,
    #[error("the `{SECTION}` section is not the component's last: bytes were added after signing")]
    NotLast,
    #[error("the `{SECTION}` section is malformed: {0}")]
    Malformed(String),
    #[error(
        "no signature on the component is valid for a configured public key (signed by key ids: {0})"
    )]
    NoValidSignature(String),
    #[error("{0}")]
    Binary(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureSection {
    version: u32,
    signatures: Vec<Entry>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Entry {
    alg: String,
    key_id: String,
    signature: String,
}

/// What a component's signature section says, for `kmsgw adapter inspect`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signed {
    pub key_ids: Vec<String>,
    /// Whether the section is the binary's last (else the component changed after signing).
    pub last: bool,
}

/// The signatures `bytes` carries, if any.
///
/// # Errors
/// When the binary or the section is malformed.
pub fn signatures(bytes: &[u8]) -> Result<Option<Signed>, SignatureError> {
    let Some((section, last)) = section_of(bytes)? else {
        return Ok(None);
    };
    Ok(Some(Signed {
        key_ids: section.signatures.into_iter().map(|e| e.key_id).collect(),
        last,
    }))
}

fn section_of(bytes: &[u8]) -> Result<Option<(SignatureSection, bool)>, SignatureError> {
    let found = sections::custom_sections(bytes).map_err(SignatureError::Binary)?;
    let mut ours = found.iter().filter(|s| s.name == SECTION);
    let Some(section) = ours.next() else {
        return Ok(None);
    };
    if ours.next().is_some() {
        return Err(SignatureError::Malformed(
            "the component has more than one".into(),
        ));
    }
    let parsed: SignatureSection = serde_json::from_slice(section.data)
        .map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if parsed.signatures.len() > MAX_SIGNATURES {
        return Err(SignatureError::Malformed(format!(
            "{} signatures; at most {MAX_SIGNATURES}",
            parsed.signatures.len()
        )));
    }
    if parsed.version != 1 {
        return Err(SignatureError::Malformed(format!(
            "version {} (this gateway reads version 1)",
            parsed.version
        )));
    }
    Ok(Some((parsed, sections::is_last(bytes, &section.range))))
}

fn signed_message(content: &[u8]) -> Vec<u8> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, content);
    [CONTEXT, digest.as_ref()].concat()
}

/// `bytes` signed by `key`: its signature joins those already on the same
/// content; signatures over other content (the component changed) are dropped.
///
/// # Errors
/// When `bytes` is not a WebAssembly binary.
pub fn sign(bytes: &[u8], key: &SigningKey) -> Result<Vec<u8>, SignatureError> {
    let mut kept = match section_of(bytes) {
        Ok(Some((section, true))) => section.signatures,
        _ => Vec::new(),
    };
    let content = sections::without(bytes, SECTION).map_err(SignatureError::Binary)?;
    let signature = key.sign(&signed_message(&content));
    kept.retain(|entry| entry.key_id != key.public().id());
    kept.push(Entry {
        alg: key.public().alg().as_str().to_owned(),
        key_id: key.public().id().to_owned(),
        signature: base64url(&signature),
    });
    if kept.len() > MAX_SIGNATURES {
        return Err(SignatureError::Malformed(format!(
            "it already carries {MAX_SIGNATURES} signatures, the most a component may have"
        )));
    }
    let section = SignatureSection {
        version: 1,
        signatures: kept,
    };
    let data = serde_json::to_vec(&section).expect("a signature section serialises");
    Ok(sections::append(&content, SECTION, &data))
}

/// The key of `keys` that signed `bytes`.
///
/// # Errors
/// [`SignatureError`] saying why no signature was accepted.
pub fn verify<'k>(
    bytes: &[u8],
    keys: &'k [PublisherKey],
) -> Result<&'k PublisherKey, SignatureError> {
    let (section, last) = section_of(bytes)?.ok_or(SignatureError::Unsigned)?;
    if !last {
        return Err(SignatureError::NotLast);
    }
    let content_end = bytes.len()
        - sections::custom_sections(bytes)
            .map_err(SignatureError::Binary)?
            .last()
            .map_or(0, |s| s.range.len());
    let message = signed_message(&bytes[..content_end]);
    for entry in &section.signatures {
        let Ok(signature) = decode_base64(&entry.signature) else {
            continue;
        };
        // Every key is tried: the key id is a hint the signer wrote, not a proof.
        if let Some(key) = keys
            .iter()
            .find(|key| key.alg().as_str() == entry.alg && key.verifies(&message, &signature))
        {
            return Ok(key);
        }
    }
    let ids: Vec<&str> = section
        .signatures
        .iter()
        .map(|e| e.key_id.as_str())
        .collect();
    Err(SignatureError::NoValidSignature(if ids.is_empty() {
        "none".into()
    } else {
        ids.join(", ")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{Alg, PrivateKey};

    const COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";

    fn component() -> Vec<u8> {
        sections::append(COMPONENT, "kmsgw-capabilities", br#"{"hosts":[]}"#)
    }

    #[test]
    fn a_signature_verifies_with_its_key_and_no_other() {
        for alg in [Alg::EdDSA, Alg::ES256] {
            let (key, _) = SigningKey::generate(alg).unwrap();
            let (other, _) = SigningKey::generate(alg).unwrap();
            let signed = sign(&component(), &key).unwrap();
            let trusted = [key.public().clone()];
            assert_eq!(verify(&signed, &trusted).unwrap().id(), key.public().id());
            let wrong = [other.public().clone()];
            assert!(matches!(
                verify(&signed, &wrong),
                Err(SignatureError::NoValidSignature(ids)) if ids == key.public().id()
            ));
            // Both publishers sign; either key is enough.
            let both = sign(&signed, &other).unwrap();
            assert_eq!(verify(&both, &wrong).unwrap().id(), other.public().id());
            assert_eq!(verify(&both, &trusted).unwrap().id(), key.public().id());
            assert_eq!(signatures(&both).unwrap().unwrap().key_ids.len(), 2);
        }
    }

    #[test]
    fn changed_unsigned_and_appended_components_are_refused() {
        let (key, _) = SigningKey::generate(Alg::EdDSA).unwrap();
        let trusted = [key.public().clone()];
        assert!(matches!(
            verify(&component(), &trusted),
            Err(SignatureError::Unsigned)
        ));
        let signed = sign(&component(), &key).unwrap();
        // One byte of the signed content changed (inside the capabilities section).
        let mut changed = signed.clone();
        let at = changed.windows(5).position(|w| w == b"hosts").unwrap();
        changed[at] = b'H';
        assert!(matches!(
            verify(&changed, &trusted),
            Err(SignatureError::NoValidSignature(_))
        ));
        let appended = sections::append(&signed, "extra", b"x");
        assert!(matches!(
            verify(&appended, &trusted),
            Err(SignatureError::NotLast)
        ));
        // Re-signing what changed after signing drops the stale signature.
        let resigned = sign(&appended, &key).unwrap();
        assert_eq!(signatures(&resigned).unwrap().unwrap().key_ids.len(), 1);
        assert!(verify(&resigned, &trusted).is_ok());
    }

    #[test]
    fn a_component_carries_at_most_sixteen_signatures() {
        let mut signed = component();
        let keys: Vec<SigningKey> = (0..=MAX_SIGNATURES)
            .map(|_| SigningKey::generate(Alg::EdDSA).unwrap().0)
            .collect();
        for key in &keys[..MAX_SIGNATURES] {
            signed = sign(&signed, key).unwrap();
        }
        let last = [keys[MAX_SIGNATURES - 1].public().clone()];
        assert!(verify(&signed, &last).is_ok());
        assert!(matches!(
            sign(&signed, &keys[MAX_SIGNATURES]),
            Err(SignatureError::Malformed(_))
        ));
        // A section written by other means with one more is refused before any check.
        let section = sections::custom_sections(&signed).unwrap().pop().unwrap();
        let mut parsed: SignatureSection = serde_json::from_slice(section.data).unwrap();
        parsed.signatures.push(parsed.signatures[0].clone());
        let data = serde_json::to_vec(&parsed).unwrap();
        let crowded = sections::append(&signed[..section.range.start], SECTION, &data);
        assert!(matches!(
            verify(&crowded, &last),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn publisher_keys_parse_from_pem_and_jwk() {
        let (key, _) = SigningKey::generate(Alg::ES256).unwrap();
        let jwk = serde_json::to_string(key.public().jwk()).unwrap();
        assert_eq!(PublisherKey::parse(&jwk).unwrap().id(), key.public().id());
        let rsa = PrivateKey::generate(Alg::RS256, None).unwrap();
        let rsa_jwk = serde_json::to_string(rsa.public_jwk()).unwrap();
        assert!(
            PublisherKey::parse(&rsa_jwk)
                .unwrap_err()
                .to_string()
                .contains("Ed25519 or P-256")
        );
        assert!(
            PublisherKey::parse("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
        let private = PrivateKey::generate(Alg::EdDSA, None).unwrap();
        let with_d = private.private_jwk().unwrap();
        assert!(
            PublisherKey::parse(with_d)
                .unwrap_err()
                .to_string()
                .contains("private key")
        );
        let off_curve = r#"{"kty":"EC","crv":"P-256","x":"AQ","y":"AQ"}"#;
        assert!(PublisherKey::parse(off_curve).is_err());
    }
}
