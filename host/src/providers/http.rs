//! The `http` provider: a remote KMS service speaking the seed's contract
//! (`POST {keysPath}`, `POST {keysPath}/{kid}/sign`, `DELETE {keysPath}/{kid}`,
//! `GET {healthPath}`, optional `POST {keysPath}/{kid}/import`), with the
//! contract's four client auth modes: none, bearer, OAuth2 client credentials, mTLS.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use super::remote::{self, backend_message, retrying, transport_error};
use super::{
    Alg, Capabilities, Health, KeyMaterial, KeyRef, KeySpec, Provider, ProviderError, ProviderKind,
    ToSign,
};
use crate::config::{BearerAuth, HttpAuth, HttpConfig};
use crate::crypto::{KeyKind, PrivateKey, PublicJwk, decode_base64};
use crate::providers::credentials::{CredentialError, Credentials};
use crate::redact::Redactor;

/// Why an `http` provider entry cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HttpSetupError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("unusable TLS material: {0}")]
    Tls(String),
}

/// A remote KMS behind the HTTP contract.
pub struct HttpProvider {
    id: String,
    client: reqwest::Client,
    base: String,
    keys_path: String,
    health_path: String,
    /// Credentials for the `Authorization` header; `None` with no auth or mTLS.
    auth: Option<Credentials>,
    /// Keeps the credentials out of what the remote KMS says back.
    redactor: Redactor,
    capabilities: Capabilities,
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, HttpSetupError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| HttpSetupError::Read {
            what,
            path: path.display().to_string(),
            source,
        })
}

impl HttpProvider {
    /// A provider named `id` for `config`.
    ///
    /// # Errors
    /// When mTLS files cannot be read or parsed.
    pub fn new(id: String, config: HttpConfig) -> Result<Self, HttpSetupError> {
        let mut identity = None;
        let mut ca = None;
        let auth = match (config.api_key, config.auth) {
            (Some(token), _) => Some(Credentials::bearer(BearerAuth { token })),
            (None, Some(HttpAuth::Bearer(bearer))) => Some(Credentials::bearer(bearer)),
            (None, None | Some(HttpAuth::None(_))) => None,
            (None, Some(HttpAuth::Oauth2ClientCredentials(o))) => {
                Some(Credentials::client_credentials(o))
            }
            (None, Some(HttpAuth::Mtls(m))) => {
                let mut pem = read("client certificate", &m.cert_file)?;
                pem.extend_from_slice(b"\n");
                pem.extend_from_slice(&read("client key", &m.key_file)?);
                identity = Some(
                    reqwest::Identity::from_pem(&pem)
                        .map_err(|e| HttpSetupError::Tls(e.to_string()))?,
                );
                if let Some(ca_file) = &m.ca_file {
                    let ca_pem = read("CA certificate", ca_file)?;
                    ca = Some(
                        reqwest::Certificate::from_pem(&ca_pem)
                            .map_err(|e| HttpSetupError::Tls(e.to_string()))?,
                    );
                }
                None
            }
        };
        let connect = config
            .connect_timeout_ms
            .map_or(remote::DEFAULT_CONNECT_TIMEOUT, Duration::from_millis);
        let timeout = config
            .timeout_ms
            .map_or(remote::DEFAULT_TIMEOUT, Duration::from_millis);
        let client = remote::client(connect, timeout, identity, ca)
            .map_err(|e| HttpSetupError::Tls(e.to_string()))?;
        let redactor = Redactor::default().joined(auth.as_ref().map(Credentials::redactor));
        Ok(HttpProvider {
            id,
            redactor,
            client,
            base: config.base_url.as_str().trim_end_matches('/').to_owned(),
            keys_path: config.keys_path.unwrap_or_else(|| "/keys".into()),
            health_path: config.health_path.unwrap_or_else(|| "/health".into()),
            auth,
            capabilities: {
                let algs = config
                    .algs
                    .filter(|algs| !algs.is_empty())
                    .unwrap_or_else(|| vec![Alg::ES256]);
                Capabilities {
                    can_create: true,
                    can_import: config.can_import,
                    can_delete: true,
                    default_alg: algs[0],
                    supported_algs: algs,
                    // The remote-KMS contract signs messages only.
                    signs_digests: false,
                    signs_in_process: false,
                }
            },
        })
    }

    fn key_url(&self, kid: &str, suffix: &str) -> String {
        format!("{}{}/{kid}{suffix}", self.base, self.keys_path)
    }

    async fn authorised(
        &self,
        request: RequestBuilder,
        fresh_token: bool,
    ) -> Result<RequestBuilder, ProviderError> {
        let Some(credentials) = &self.auth else {
            return Ok(request);
        };
        let token = credentials
            .token(&self.client, fresh_token)
            .await
            .map_err(|e| {
                match e {
                    CredentialError::Unreachable { .. } => {
                        ProviderError::Unavailable(e.to_string())
                    }
                    CredentialError::Refused { .. } | CredentialError::Setup(_) => {
                        ProviderError::Backend(e.to_string())
                    }
                }
                .scrubbed(&self.redactor)
            })?;
        Ok(request.bearer_auth(token.expose_secret()))
    }

    /// Sends one request and returns the status and body of a 2xx answer; a 401
    /// under OAuth2 fetches a new token and tries once more.
    async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, ProviderError> {
        let mut fresh_token = false;
        loop {
            let mut request = self.client.request(method.clone(), url);
            if let Some(body) = body {
                request = request.json(body);
            }
            let request = self.authorised(request, fresh_token).await?;
            let unreachable = |e| transport_error("remote KMS", &e, &self.redactor);
            let response = crate::telemetry::traced(request)
                .send()
                .await
                .map_err(unreachable)?;
            let status = response.status();
            let bytes = response.bytes().await.map_err(unreachable)?;
            let said = || backend_message(status, &bytes, &self.redactor);
            match status {
                s if s.is_success() => return Ok(bytes.to_vec()),
                StatusCode::UNAUTHORIZED
                    if self.auth.as_ref().is_some_and(Credentials::refreshable) && !fresh_token =>
                {
                    fresh_token = true
                }
                StatusCode::NOT_FOUND => {
                    return Err(ProviderError::KeyNotFound(said()));
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(ProviderError::Backend(format!(
                        "remote KMS refused the gateway's credentials: {}",
                        said()
                    )));
                }
                _ => {
                    return Err(ProviderError::Backend(format!("remote KMS: {}", said())));
                }
            }
        }
    }

    fn public_jwk(&self, body: &[u8]) -> Result<PublicJwk, ProviderError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct KeyAnswer {
            public_jwk: PublicJwk,
        }
        let answer: KeyAnswer = serde_json::from_slice(body).map_err(|e| {
            ProviderError::Backend(format!(
                "remote KMS answered without a usable publicJwk: {e}"
            ))
            .scrubbed(&self.redactor)
        })?;
        // The gateway checks the key against the algorithm when it records it.
        Ok(answer.public_jwk.unlabelled())
    }
}

#[async_trait]
impl Provider for HttpProvider {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Http
    }

    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    async fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, ProviderError> {
        let url = format!("{}{}", self.base, self.keys_path);
        let mut request = json!({"kid": kid, "alg": spec.alg});
        if spec.alg.key_kind() == KeyKind::Rsa {
            request["keySize"] = spec.rsa_bits.into();
        }
        let body = self.call(Method::POST, &url, Some(&request)).await?;
        Ok(KeyMaterial {
            external_id: kid.to_owned(),
            public_jwk: self.public_jwk(&body)?,
            sealed_secret: None,
        })
    }

    async fn import_key(
        &self,
        kid: &str,
        key: &PrivateKey,
        alg: Alg,
    ) -> Result<KeyMaterial, ProviderError> {
        if !self.capabilities.can_import {
            return Err(ProviderError::Unsupported(format!(
                "provider `{}` cannot import keys; set canImport: true in kms.json if the remote service supports it",
                self.id
            )));
        }
        let private_jwk: serde_json::Value = key
            .private_jwk()
            .map_err(|e| ProviderError::Internal(e.to_string()))
            .and_then(|jwk| {
                serde_json::from_str(jwk).map_err(|e| ProviderError::Internal(e.to_string()))
            })?;
        let request = json!({"privateJwk": private_jwk, "alg": alg});
        let body = self
            .call(Method::POST, &self.key_url(kid, "/import"), Some(&request))
            .await?;
        let returned = self.public_jwk(&body)?;
        Ok(KeyMaterial {
            external_id: kid.to_owned(),
            public_jwk: returned,
            sealed_secret: None,
        })
    }

    async fn sign(&self, key: &KeyRef<'_>, input: ToSign<&[u8]>) -> Result<Vec<u8>, ProviderError> {
        let ToSign::Message(message) = input else {
            return Err(ProviderError::Unsupported(
                "the remote-KMS contract signs messages, not digests".into(),
            ));
        };
        let alg = key.alg;
        #[derive(Deserialize)]
        struct SignAnswer {
            signature: String,
        }
        let url = self.key_url(key.external_id, "/sign");
        let request = json!({"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, message), "alg": alg});
        let body = retrying(|| self.call(Method::POST, &url, Some(&request))).await?;
        let answer: SignAnswer = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Backend(format!("remote KMS answered without a signature: {e}"))
                .scrubbed(&self.redactor)
        })?;
        decode_base64(&answer.signature).map_err(|_| {
            ProviderError::Backend("remote KMS returned a signature that is not base64url".into())
        })
    }

    async fn delete_key(&self, key: &KeyRef<'_>) -> Result<(), ProviderError> {
        match self
            .call(Method::DELETE, &self.key_url(key.external_id, ""), None)
            .await
        {
            Ok(_) | Err(ProviderError::KeyNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        let url = format!("{}{}", self.base, self.health_path);
        let result = retrying(|| self.call(Method::GET, &url, None)).await;
        Health::of(started, result.map(|_| ()))
    }
}
