//! `oci://registry/repository:tag@sha256:…`: where a guest component lives in an
//! OCI registry.

use std::fmt;

/// A parsed `oci://` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciReference {
    /// `host` or `host:port`.
    pub registry: String,
    /// `name/space/repo`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:` and 64 lower-case hex digits: the manifest's digest.
    pub digest: Option<String>,
}

impl OciReference {
    /// Parses `oci://registry/repository[:tag][@sha256:hex]`.
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("oci://")
            .ok_or_else(|| format!("`{text}` is not an oci:// reference"))?;
        let (rest, digest) = match rest.split_once('@') {
            Some((rest, digest)) => {
                if !valid_digest(digest) {
                    return Err(format!(
                        "`{digest}` is not a digest: write sha256: and 64 lower-case hex digits"
                    ));
                }
                (rest, Some(digest.to_owned()))
            }
            None => (rest, None),
        };
        let (registry, path) = rest.split_once('/').ok_or_else(|| {
            format!("`{text}` names no repository: oci://registry/repository:tag@sha256:…")
        })?;
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag.to_owned())),
            _ => (path, None),
        };
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '@') {
            return Err(format!("`{registry}` is not a registry host"));
        }
        if !valid_repository(repository) {
            return Err(format!(
                "`{repository}` is not a repository name (lower-case letters, digits, `.`, `_`, `-`, `/`)"
            ));
        }
        if let Some(tag) = &tag
            && !valid_tag(tag)
        {
            return Err(format!(
                "`{tag}` is not a tag (up to 128 letters, digits, `_`, `.`, `-`)"
            ));
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!("`{text}` has neither a tag nor a digest"));
        }
        Ok(OciReference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// The registry's base URL: https, or http for a loopback registry.
    pub fn base_url(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, port)| port.parse::<u16>().is_ok())
            .map_or(self.registry.as_str(), |(host, _)| host);
        let scheme = if is_loopback(host) { "http" } else { "https" };
        format!("{scheme}://{}", self.registry)
    }

    /// The reference without its digest (what a tag resolves from).
    pub fn unpinned(&self) -> String {
        match &self.tag {
            Some(tag) => format!("oci://{}/{}:{tag}", self.registry, self.repository),
            None => format!("oci://{}/{}", self.registry, self.repository),
        }
    }

    /// This reference pinned to `digest`.
    #[must_use]
    pub fn pinned(&self, digest: &str) -> OciReference {
        OciReference {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.unpinned())?;
        match &self.digest {
            Some(digest) => write!(f, "@{digest}"),
            None => Ok(()),
        }
    }
}

/// Whether `host` is a loopback address (where plain HTTP is acceptable).
pub fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `sha256:` and 64 lower-case hex digits.
pub fn valid_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn valid_repository(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && part.as_bytes()[0].is_ascii_alphanumeric()
        })
}

fn valid_tag(tag: &str) -> bool {
    (1..=128).contains(&tag.len())
        && tag.as_bytes()[0] != b'.'
        && tag.as_bytes()[0] != b'-'
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_with_tag_digest_and_port() {
        let text = format!("oci://127.0.0.1:5000/kmsgw/soft-signer:1.0@{DIGEST}");
        let r = OciReference::parse(&text).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "kmsgw/soft-signer");
        assert_eq!(r.tag.as_deref(), Some("1.0"));
        assert_eq!(r.digest.as_deref(), Some(DIGEST));
        assert_eq!(r.to_string(), text);
        assert_eq!(r.base_url(), "http://127.0.0.1:5000");
        let r = OciReference::parse(&format!("oci://ghcr.io/acme/guest@{DIGEST}")).unwrap();
        assert_eq!(
            (r.tag.as_deref(), r.base_url().as_str()),
            (None, "https://ghcr.io")
        );
        let r = OciReference::parse("oci://localhost:5000/a/b:latest").unwrap();
        assert_eq!(
            (r.digest.as_deref(), r.base_url().as_str()),
            (None, "http://localhost:5000")
        );
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for (text, says) in [
            ("https://ghcr.io/a:1", "not an oci://"),
            ("oci://ghcr.io", "names no repository"),
            ("oci://ghcr.io/a", "neither a tag nor a digest"),
            ("oci://ghcr.io/A:1", "not a repository name"),
            ("oci://ghcr.io/a:-x", "not a tag"),
            ("oci://ghcr.io/a@sha256:abc", "not a digest"),
            ("oci://ghcr.io/a:1@sha512:00", "not a digest"),
        ] {
            let error = OciReference::parse(text).unwrap_err();
            assert!(error.contains(says), "{text}: {error}");
        }
    }
}
