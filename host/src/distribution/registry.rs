//! An OCI distribution client for guest components: pulls and pushes the
//! wasm-component artifact layout that `wkg` and `oras` use (an image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one layer is
//! `application/wasm`). Every byte is checked against its digest before use.
//! Registries that answer with a `Bearer` challenge (the token flow of Docker
//! Hub, GHCR, Harbor, distribution's `token` auth) get the credentials at their
//! token endpoint and the token on the retried request.

use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::config::{OciReference, RegistryAuth, valid_digest};
use crate::redact::Redactor;

/// The media type of a wasm component layer.
pub const WASM_LAYER: &str = "application/wasm";
/// The media type of the wasm artifact's config.
pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The largest manifest read.
const MAX_MANIFEST: usize = 1 << 20;
/// The largest component pulled.
pub const MAX_COMPONENT: u64 = 256 << 20;

/// Why a registry operation failed. Messages carry no credential.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "registry {registry} asks for credentials ({challenge}); give registryAuth in kms.json (or KMSGW_REGISTRY_USERNAME/KMSGW_REGISTRY_PASSWORD to the CLI)"
    )]
    NeedsCredentials { registry: String, challenge: String },
    #[error("registry {registry} refused the credentials of registryAuth")]
    BadCredentials { registry: String },
    #[error("registry answered {status} to {method} {url}: {message}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        message: String,
    },
    #[error("{what} of {reference} has digest {actual}, not {expected}: refused before use")]
    Digest {
        what: &'static str,
        reference: String,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Layout(String),
}

/// A descriptor of a manifest's config or layer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The component layer a manifest names.
///
/// # Errors
/// When the manifest is malformed or has not exactly one `application/wasm` layer.
pub fn component_layer(manifest: &[u8]) -> Result<Descriptor, String> {
    let manifest: Manifest = serde_json::from_slice(manifest)
        .map_err(|e| format!("the manifest is not an OCI image manifest: {e}"))?;
    let mut wasm = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == WASM_LAYER);
    match (wasm.next(), wasm.next()) {
        (Some(layer), None) if valid_digest(&layer.digest) && layer.size <= MAX_COMPONENT => {
            Ok(layer.clone())
        }
        (Some(layer), None) if layer.size > MAX_COMPONENT => Err(format!(
            "the component layer is {} bytes; the most kmsgw pulls is {MAX_COMPONENT}",
            layer.size
        )),
        (Some(layer), None) => Err(format!("the layer digest `{}` is not sha256", layer.digest)),
        (Some(_), Some(_)) => Err(format!("the manifest has several `{WASM_LAYER}` layers")),
        (None, _) => Err(format!(
            "the manifest has no `{WASM_LAYER}` layer (layers: {}); push components with `kmsgw adapter push`, `wkg oci push` or `oras push … file.wasm:{WASM_LAYER}`",
            manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The `sha256:…` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!(
        "sha256:{}",
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
    )
}

/// The largest token answer read.
const MAX_TOKEN_ANSWER: u64 = 64 << 10;

/// A client of one registry, with its credentials.
pub struct Registry<'a> {
    http: reqwest::Client,
    reference: &'a OciReference,
    auth: Option<&'a RegistryAuth>,
    redactor: Redactor,
    /// The token the registry's token endpoint gave last.
    token: std::sync::Mutex<Option<secrecy::SecretString>>,
}

/// A `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge.
#[derive(Debug, PartialEq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

impl Challenge {
    /// The Bearer challenge in `header`, if it is one.
    fn parse(header: &str) -> Option<Challenge> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut params = std::collections::HashMap::new();
        let mut rest = rest.trim();
        while !rest.is_empty() {
            let (name, after) = rest.split_once('=')?;
            let (value, after) = match after.strip_prefix('"') {
                Some(quoted) => {
                    let end = quoted.find('"')?;
                    (&quoted[..end], &quoted[end + 1..])
                }
                None => after.split_once(',').unwrap_or((after, "")),
            };
            params.insert(name.trim().to_ascii_lowercase(), value.to_owned());
            rest = after.trim_start_matches([',', ' ']);
        }
        Some(Challenge {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        })
    }
}

impl<'a> Registry<'a> {
    /// A client for the registry of `reference`.
    pub fn new(reference: &'a OciReference, auth: Option<&'a RegistryAuth>) -> Self {
        let secrets: Vec<&str> = match auth {
            Some(RegistryAuth::Basic(basic)) => vec![basic.password.expose_secret()],
            Some(RegistryAuth::Bearer(bearer)) => vec![bearer.token.expose_secret()],
            None => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("a registry client builds");
        Registry {
            http,
            reference,
            auth,
            redactor: Redactor::new(secrets),
            token: std::sync::Mutex::new(None),
        }
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/v2/{}/{tail}",
            self.reference.base_url(),
            self.reference.repository
        )
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        if let Some(token) = self.token.lock().expect("not poisoned").as_ref() {
            return request.bearer_auth(token.expose_secret());
        }
        match self.auth {
            Some(RegistryAuth::Basic(basic)) => {
                request.basic_auth(&basic.username, Some(basic.password.expose_secret()))
            }
            Some(RegistryAuth::Bearer(bearer)) => request.bearer_auth(bearer.token.expose_secret()),
            None => request,
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        let attempt = || async {
            build(self.authorized(self.http.request(method.clone(), url)))
                .send()
                .await
                .map_err(|e| RegistryError::Unreachable {
                    url: url.to_owned(),
                    reason: self.redactor.scrub(&e.without_url().to_string()),
                })
        };
        let mut response = attempt().await?;
        // A Bearer challenge: a token from the realm (for this request's scope), then once more.
        if response.status() == StatusCode::UNAUTHORIZED
            && let Some(challenge) = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(Challenge::parse)
        {
            let token = self.fetch_token(&challenge).await?;
            *self.token.lock().expect("not poisoned") = Some(token);
            response = attempt().await?;
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let registry = self.reference.registry.clone();
        if status == StatusCode::UNAUTHORIZED {
            if self.auth.is_some() {
                return Err(RegistryError::BadCredentials { registry });
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("no challenge")
                .to_owned();
            return Err(RegistryError::NeedsCredentials {
                registry,
                challenge,
            });
        }
        let body = response.bytes().await.unwrap_or_default();
        Err(RegistryError::Status {
            method,
            url: url.to_owned(),
            status,
            message: self.redactor.scrub(&error_text(&body)),
        })
    }

    /// A token from the challenge's realm, presenting `registryAuth` when it is
    /// basic credentials (anonymous otherwise).
    async fn fetch_token(
        &self,
        challenge: &Challenge,
    ) -> Result<secrecy::SecretString, RegistryError> {
        let registry = self.reference.registry.clone();
        let realm = url::Url::parse(&challenge.realm).map_err(|_| {
            RegistryError::Layout(format!(
                "registry {registry} names a token realm that is not a URL"
            ))
        })?;
        if realm.scheme() != "https"
            && !crate::config::is_loopback(realm.host_str().unwrap_or_default())
        {
            return Err(RegistryError::Layout(format!(
                "registry {registry} names a token realm over {} ({realm}); credentials go over https only",
                realm.scheme()
            )));
        }
        let mut request = self.http.get(realm.clone());
        let query: Vec<(&str, &str)> =
            [("service", &challenge.service), ("scope", &challenge.scope)]
                .into_iter()
                .filter_map(|(name, value)| value.as_deref().map(|v| (name, v)))
                .collect();
        request = request.query(&query);
        if let Some(RegistryAuth::Basic(basic)) = self.auth {
            request = request.basic_auth(&basic.username, Some(basic.password.expose_secret()));
        }
        let shown = realm.to_string();
        let response = request
            .send()
            .await
            .map_err(|e| RegistryError::Unreachable {
                url: shown.clone(),
                reason: self.redactor.scrub(&e.without_url().to_string()),
            })?;
        match response.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if self.auth.is_some() => {
                return Err(RegistryError::BadCredentials { registry });
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::NeedsCredentials {
                    registry,
                    challenge: "Bearer".into(),
                });
            }
            status if !status.is_success() => {
                return Err(RegistryError::Status {
                    method: Method::GET,
                    url: shown,
                    status,
                    message: "the token endpoint refused".into(),
                });
            }
            _ => {}
        }
        #[derive(Deserialize)]
        struct Answer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = self.read_capped(response, &shown, MAX_TOKEN_ANSWER).await?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|_| {
            RegistryError::Layout(format!("the token endpoint {shown} answered no JSON token"))
        })?;
        let token = answer.token.or(answer.access_token).ok_or_else(|| {
            RegistryError::Layout(format!("the token endpoint {shown} answered no token"))
        })?;
        self.redactor.add_obtained(&token);
        Ok(secrecy::SecretString::from(token))
    }

    /// The manifest `reference` names (by digest when pinned, else by tag) and
    /// its digest; a pinned digest is checked.
    ///
    /// # Errors
    /// [`RegistryError`], including a digest mismatch.
    pub async fn manifest(&self) -> Result<(String, Vec<u8>), RegistryError> {
        let target = self
            .reference
            .digest
            .as_deref()
            .or(self.reference.tag.as_deref())
            .expect("a reference has a tag or a digest");
        let url = self.url(&format!("manifests/{target}"));
        let response = self
            .send(Method::GET, &url, |r| {
                r.header(ACCEPT, format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"))
            })
            .await
            .map_err(|e| match e {
                RegistryError::Status { status, .. } if status == StatusCode::NOT_FOUND => {
                    RegistryError::Layout(format!(
                        "registry {} has no manifest {target} in repository {}: check the reference (a digest names exactly one manifest)",
                        self.reference.registry, self.reference.repository
                    ))
                }
                other => other,
            })?;
        let bytes = self
            .read_capped(response, &url, MAX_MANIFEST as u64)
            .await?;
        let digest = digest_of(&bytes);
        if let Some(expected) = &self.reference.digest
            && *expected != digest
        {
            return Err(RegistryError::Digest {
                what: "the manifest",
                reference: self.reference.to_string(),
                expected: expected.clone(),
                actual: digest,
            });
        }
        Ok((digest, bytes))
    }

    /// The blob of `layer`, checked against its digest.
    ///
    /// # Errors
    /// [`RegistryError`], including a digest or size mismatch.
    pub async fn blob(&self, layer: &Descriptor) -> Result<Vec<u8>, RegistryError> {
        let url = self.url(&format!("blobs/{}", layer.digest));
        let response = self.send(Method::GET, &url, |r| r).await?;
        let bytes = self.read_capped(response, &url, layer.size).await?;
        let actual = digest_of(&bytes);
        if actual != layer.digest {
            return Err(RegistryError::Digest {
                what: "the component layer",
                reference: self.reference.to_string(),
                expected: layer.digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    async fn read_capped(
        &self,
        mut response: Response,
        url: &str,
        cap: u64,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RegistryError::Unreachable {
                url: url.to_owned(),
                reason: self.redactor.scrub(&e.without_url().to_string()),
            })?
        {
            if (bytes.len() + chunk.len()) as u64 > cap {
                return Err(RegistryError::Layout(format!(
                    "{url} sent more than the {cap} bytes expected"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Pushes `component` as a wasm artifact under the reference's tag; returns
    /// the manifest's digest.
    ///
    /// # Errors
    /// [`RegistryError`].
    pub async fn push(&self, component: &[u8], title: &str) -> Result<String, RegistryError> {
        let tag = match (&self.reference.tag, &self.reference.digest) {
            (Some(tag), None) => tag,
            _ => {
                return Err(RegistryError::Layout(
                    "push to a tag without a digest: oci://registry/repository:tag (the digest is printed)"
                        .into(),
                ));
            }
        };
        let layer_digest = digest_of(component);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer_digest],
        }))
        .expect("a config serialises");
        let mut title_note = serde_json::Map::new();
        title_note.insert(
            "org.opencontainers.image.title".into(),
            serde_json::Value::String(title.to_owned()),
        );
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: WASM_CONFIG.into(),
                digest: digest_of(&config),
                size: config.len() as u64,
                annotations: None,
            },
            layers: vec![Descriptor {
                media_type: WASM_LAYER.into(),
                digest: layer_digest,
                size: component.len() as u64,
                annotations: Some(title_note),
            }],
        };
        self.upload(&config).await?;
        self.upload(component).await?;
        let body = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let url = self.url(&format!("manifests/{tag}"));
        self.send(Method::PUT, &url, |r| {
            r.header(CONTENT_TYPE, OCI_MANIFEST).body(body.clone())
        })
        .await?;
        Ok(digest_of(&body))
    }

    /// Uploads one blob in a single request, unless the registry has it.
    async fn upload(&self, blob: &[u8]) -> Result<(), RegistryError> {
        let digest = digest_of(blob);
        let url = self.url(&format!("blobs/{digest}"));
        if self.send(Method::HEAD, &url, |r| r).await.is_ok() {
            return Ok(());
        }
        let start = self.url("blobs/uploads/");
        let response = self.send(Method::POST, &start, |r| r).await?;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Layout(format!("{start} gave no upload location")))?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.reference.base_url())
        } else {
            location.to_owned()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        self.send(Method::PUT, &put, |r| {
            r.header(CONTENT_TYPE, "application/octet-stream")
                .body(blob.to_vec())
        })
        .await?;
        Ok(())
    }
}

/// The `errors` of a registry's error body (distribution's JSON), else its start.
fn error_text(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(Deserialize)]
    struct Item {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(body) {
        return errors
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.code.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_parse_and_others_do_not() {
        let parsed = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            parsed,
            Challenge {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
        let bare = Challenge::parse("bearer realm=https://auth.example/token").unwrap();
        assert_eq!((bare.service, bare.scope), (None, None));
        assert_eq!(Challenge::parse(r#"Basic realm="registry""#), None);
        assert_eq!(Challenge::parse(r#"Bearer service="no realm""#), None);
    }
}
