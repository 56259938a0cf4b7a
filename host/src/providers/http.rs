//! The `http` provider: a remote KMS service speaking the seed's contract
//! (`POST {keysPath}`, `POST {keysPath}/{kid}/sign`, `DELETE {keysPath}/{kid}`,
//! `GET {healthPath}`, optional `POST {keysPath}/{kid}/import`), with the
//! contract's four client auth modes: none, bearer, OAuth2 client credentials, mTLS.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

use super::remote::{self, backend_message, retrying, transport_error};
use super::{
    Alg, Capabilities, Health, KeyMaterial, KeySpec, Provider, ProviderError, ProviderKind,
};
use crate::catalog::KeyRecord;
use crate::config::{HttpAuth, HttpConfig};
use crate::crypto::{KeyKind, PrivateKey, PublicJwk, decode_base64};

/// An OAuth2 token is refreshed this long before it expires.
const TOKEN_EARLY_REFRESH: Duration = Duration::from_secs(30);
/// Lifetime assumed when the token endpoint gives no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

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

enum Auth {
    None,
    Bearer(SecretString),
    OAuth2(Box<OAuth2>),
}

struct OAuth2 {
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    scope: Option<String>,
    cached: Mutex<Option<(SecretString, Instant)>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

/// A remote KMS behind the HTTP contract.
pub struct HttpProvider {
    id: String,
    client: reqwest::Client,
    base: String,
    keys_path: String,
    health_path: String,
    auth: Auth,
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
            (Some(token), _)
            | (None, Some(HttpAuth::Bearer(crate::config::BearerAuth { token }))) => {
                Auth::Bearer(token)
            }
            (None, None | Some(HttpAuth::None(_))) => Auth::None,
            (None, Some(HttpAuth::Oauth2ClientCredentials(o))) => Auth::OAuth2(Box::new(OAuth2 {
                token_url: o.token_url,
                client_id: o.client_id,
                client_secret: o.client_secret,
                scope: o.scope,
                cached: Mutex::new(None),
            })),
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
                Auth::None
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
        Ok(HttpProvider {
            id,
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
                }
            },
        })
    }

    fn key_url(&self, kid: &str, suffix: &str) -> String {
        format!("{}{}/{kid}{suffix}", self.base, self.keys_path)
    }

    async fn oauth2_token(
        &self,
        oauth: &OAuth2,
        fresh: bool,
    ) -> Result<SecretString, ProviderError> {
        let mut cached = oauth.cached.lock().await;
        if !fresh
            && let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", oauth.client_id.as_str()),
            ("client_secret", oauth.client_secret.expose_secret()),
        ];
        if let Some(scope) = &oauth.scope {
            form.push(("scope", scope));
        }
        let response = self
            .client
            .post(oauth.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error("token endpoint", &e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| transport_error("token endpoint", &e))?;
        if !status.is_success() {
            return Err(ProviderError::Backend(format!(
                "token endpoint refused the client credentials: {}",
                backend_message(status, &body)
            )));
        }
        let token: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            ProviderError::Backend("token endpoint answered without an access_token".into())
        })?;
        let lifetime = token
            .expires_in
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let valid_until = Instant::now() + lifetime.saturating_sub(TOKEN_EARLY_REFRESH);
        let secret = SecretString::from(token.access_token);
        *cached = Some((secret.clone(), valid_until));
        Ok(secret)
    }

    async fn authorised(
        &self,
        request: RequestBuilder,
        fresh_token: bool,
    ) -> Result<RequestBuilder, ProviderError> {
        Ok(match &self.auth {
            Auth::None => request,
            Auth::Bearer(token) => request.bearer_auth(token.expose_secret()),
            Auth::OAuth2(oauth) => {
                request.bearer_auth(self.oauth2_token(oauth, fresh_token).await?.expose_secret())
            }
        })
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
            let response = request
                .send()
                .await
                .map_err(|e| transport_error("remote KMS", &e))?;
            let status = response.status();
            let bytes = response
                .bytes()
                .await
                .map_err(|e| transport_error("remote KMS", &e))?;
            match status {
                s if s.is_success() => return Ok(bytes.to_vec()),
                StatusCode::UNAUTHORIZED
                    if matches!(self.auth, Auth::OAuth2(_)) && !fresh_token =>
                {
                    fresh_token = true
                }
                StatusCode::NOT_FOUND => {
                    return Err(ProviderError::KeyNotFound(backend_message(status, &bytes)));
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(ProviderError::Backend(format!(
                        "remote KMS refused the gateway's credentials: {}",
                        backend_message(status, &bytes)
                    )));
                }
                _ => {
                    return Err(ProviderError::Backend(format!(
                        "remote KMS: {}",
                        backend_message(status, &bytes)
                    )));
                }
            }
        }
    }

    fn public_jwk(body: &[u8]) -> Result<PublicJwk, ProviderError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct KeyAnswer {
            public_jwk: PublicJwk,
        }
        let answer: KeyAnswer = serde_json::from_slice(body).map_err(|e| {
            ProviderError::Backend(format!(
                "remote KMS answered without a usable publicJwk: {e}"
            ))
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
            public_jwk: Self::public_jwk(&body)?,
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
        let returned = Self::public_jwk(&body)?;
        Ok(KeyMaterial {
            external_id: kid.to_owned(),
            public_jwk: returned,
            sealed_secret: None,
        })
    }

    async fn sign(
        &self,
        key: &KeyRecord,
        message: &[u8],
        alg: Alg,
    ) -> Result<Vec<u8>, ProviderError> {
        #[derive(Deserialize)]
        struct SignAnswer {
            signature: String,
        }
        let url = self.key_url(&key.external_id, "/sign");
        let request = json!({"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, message), "alg": alg});
        let body = retrying(|| self.call(Method::POST, &url, Some(&request))).await?;
        let answer: SignAnswer = serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Backend(format!("remote KMS answered without a signature: {e}"))
        })?;
        decode_base64(&answer.signature).map_err(|_| {
            ProviderError::Backend("remote KMS returned a signature that is not base64url".into())
        })
    }

    async fn delete_key(&self, key: &KeyRecord) -> Result<(), ProviderError> {
        match self
            .call(Method::DELETE, &self.key_url(&key.external_id, ""), None)
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
