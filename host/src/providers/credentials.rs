//! Credentials the gateway holds for a backend and turns into bearer tokens: a
//! fixed token, OAuth2 client credentials (Azure AD and any RFC 6749 server), or a
//! Google service account (an RS256 JWT assertion exchanged at the key file's
//! `token_uri`, RFC 7523). Tokens are cached until shortly before they expire and
//! fetched again when a backend refuses one. The `http` provider and the guests'
//! `egressAuth` use them; a guest never sees a secret or a token.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;
use url::Url;
use zeroize::Zeroizing;

use crate::config::{BearerAuth, GoogleServiceAccountAuth, OAuth2Auth};
use crate::crypto::{Alg, KeyKind, PrivateKey, base64url};
use crate::redact::Redactor;

/// A token is fetched again this long before it expires.
const EARLY_REFRESH: Duration = Duration::from_secs(30);
/// Lifetime assumed when a token endpoint gives no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// Lifetime asked for in a service-account assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Google's default scope for Cloud APIs.
const GOOGLE_DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Largest token answer read, in bytes.
const MAX_TOKEN_ANSWER: usize = 64 * 1024;

/// Why no token could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The token endpoint could not be reached.
    #[error("token endpoint {url} unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    /// The token endpoint refused the credentials or answered nonsense.
    #[error("token endpoint {url} refused: {reason}")]
    Refused { url: String, reason: String },
    /// The credentials themselves are unusable (unreadable key file, bad key).
    #[error("{0}")]
    Setup(String),
}

/// Where tokens come from.
enum Source {
    Fixed(SecretString),
    ClientCredentials {
        token_url: Url,
        client_id: String,
        client_secret: SecretString,
        scope: Option<String>,
    },
    ServiceAccount(Box<ServiceAccount>),
}

/// A Google service account: who it is, its key, and what it asks for.
struct ServiceAccount {
    token_url: Url,
    client_email: String,
    key_id: Option<String>,
    key: PrivateKey,
    scope: String,
}

/// A token request's form fields.
type Form = Vec<(&'static str, Zeroizing<String>)>;

/// One set of credentials and the token last obtained with them.
pub struct Credentials {
    source: Source,
    cached: Mutex<Option<(SecretString, Instant)>>,
    fetches: AtomicU64,
    /// The secrets above and every token and assertion made with them.
    redactor: Redactor,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.source {
            Source::Fixed(_) => "Credentials(bearer)",
            Source::ClientCredentials { .. } => "Credentials(oauth2-client-credentials)",
            Source::ServiceAccount(_) => "Credentials(google-service-account)",
        })
    }
}

/// The fields of a Google service-account key file that are used.
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: SecretString,
    private_key_id: Option<String>,
    token_uri: Url,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

impl Credentials {
    fn with(source: Source, secrets: &[&str]) -> Self {
        Credentials {
            source,
            cached: Mutex::new(None),
            fetches: AtomicU64::new(0),
            redactor: Redactor::new(secrets.iter().copied()),
        }
    }

    /// What to remove from a backend's texts: these credentials' secrets and
    /// the tokens obtained with them.
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// A fixed bearer token.
    pub fn bearer(auth: BearerAuth) -> Self {
        let secret = auth.token.expose_secret().to_owned();
        Self::with(Source::Fixed(auth.token), &[secret.as_str()])
    }

    /// OAuth2 client credentials.
    pub fn client_credentials(auth: OAuth2Auth) -> Self {
        let secret = auth.client_secret.expose_secret().to_owned();
        Self::with(
            Source::ClientCredentials {
                token_url: auth.token_url,
                client_id: auth.client_id,
                client_secret: auth.client_secret,
                scope: auth.scope,
            },
            &[secret.as_str()],
        )
    }

    /// A Google service account from its key file (read now, relative paths from `base_dir`).
    ///
    /// # Errors
    /// [`CredentialError::Setup`] when the file cannot be read or holds no usable RSA key.
    pub fn google_service_account(
        auth: &GoogleServiceAccountAuth,
        base_dir: &Path,
    ) -> Result<Self, CredentialError> {
        let path = base_dir.join(&auth.credentials_file);
        let shown = path.display();
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .map_err(|e| CredentialError::Setup(format!("cannot read {shown}: {e}")))?,
        );
        // serde's messages quote the offending value, which may be the key: say where only.
        let file: ServiceAccountFile = serde_json::from_str(&text).map_err(|e| {
            CredentialError::Setup(format!(
                "{shown} is not a service-account key file (type, client_email, private_key, token_uri; problem at line {} column {})",
                e.line(),
                e.column()
            ))
        })?;
        if file.kind != "service_account" {
            return Err(CredentialError::Setup(format!(
                "{shown} has type `{}`, not `service_account`",
                file.kind
            )));
        }
        let der = Zeroizing::new(
            pem_rfc7468::decode_vec(file.private_key.expose_secret().as_bytes())
                .map_err(|e| {
                    CredentialError::Setup(format!("{shown}: private_key is not PEM: {e}"))
                })?
                .1,
        );
        let key = PrivateKey::from_pkcs8(KeyKind::Rsa, &der).map_err(|_| {
            CredentialError::Setup(format!("{shown}: private_key is not an RSA PKCS#8 key"))
        })?;
        Ok(Self::with(
            Source::ServiceAccount(Box::new(ServiceAccount {
                token_url: file.token_uri,
                client_email: file.client_email,
                key_id: file.private_key_id,
                key,
                scope: auth
                    .scope
                    .clone()
                    .unwrap_or_else(|| GOOGLE_DEFAULT_SCOPE.to_owned()),
            })),
            &[file.private_key.expose_secret()],
        ))
    }

    /// Whether a refused token is worth replacing (false for a fixed token).
    pub fn refreshable(&self) -> bool {
        !matches!(self.source, Source::Fixed(_))
    }

    /// How many tokens were fetched from a token endpoint so far.
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The current token: the cached one while it is valid, else a new one.
    /// `fresh` forgets the cached token first (the backend refused it).
    ///
    /// # Errors
    /// [`CredentialError`] when the token endpoint cannot give one.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        fresh: bool,
    ) -> Result<SecretString, CredentialError> {
        if let Source::Fixed(token) = &self.source {
            return Ok(token.clone());
        }
        let mut cached = self.cached.lock().await;
        if !fresh
            && let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let (url, form) = self.token_request()?;
        self.fetches.fetch_add(1, Ordering::Relaxed);
        if let Some((_, assertion)) = form.iter().find(|(name, _)| *name == "assertion") {
            // A signed assertion is a credential for its lifetime.
            self.redactor.add_obtained(assertion);
        }
        let answer = fetch(client, url, &form, &self.redactor).await?;
        self.redactor.add_obtained(&answer.access_token);
        let lifetime = answer
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let valid_until = Instant::now() + lifetime.saturating_sub(EARLY_REFRESH);
        let token = SecretString::from(answer.access_token);
        *cached = Some((token.clone(), valid_until));
        Ok(token)
    }

    /// The token endpoint and the form to post to it.
    fn token_request(&self) -> Result<(&Url, Form), CredentialError> {
        let text = |s: &str| Zeroizing::new(s.to_owned());
        match &self.source {
            Source::Fixed(_) => unreachable!("fixed tokens are not fetched"),
            Source::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let mut form = vec![
                    ("grant_type", text("client_credentials")),
                    ("client_id", text(client_id)),
                    ("client_secret", text(client_secret.expose_secret())),
                ];
                if let Some(scope) = scope {
                    form.push(("scope", text(scope)));
                }
                Ok((token_url, form))
            }
            Source::ServiceAccount(account) => {
                let assertion = assertion(account)?;
                Ok((
                    &account.token_url,
                    vec![
                        (
                            "grant_type",
                            text("urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ),
                        ("assertion", assertion),
                    ],
                ))
            }
        }
    }
}

/// The signed JWT a service account presents: issued by its e-mail, for `scope`,
/// addressed to the token endpoint, valid for an hour.
fn assertion(account: &ServiceAccount) -> Result<Zeroizing<String>, CredentialError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut header = json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &account.key_id {
        header["kid"] = kid.as_str().into();
    }
    let claims = json!({
        "iss": account.client_email,
        "scope": account.scope,
        "aud": account.token_url.as_str(),
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let signer = account
        .key
        .signer(Alg::RS256)
        .map_err(|e| CredentialError::Setup(format!("service-account key: {e}")))?;
    let signature = signer.sign(signing_input.as_bytes());
    Ok(Zeroizing::new(format!(
        "{signing_input}.{}",
        base64url(&signature)
    )))
}

async fn fetch(
    client: &reqwest::Client,
    url: &Url,
    form: &[(&'static str, Zeroizing<String>)],
    redactor: &Redactor,
) -> Result<TokenAnswer, CredentialError> {
    let shown = url.as_str().to_owned();
    let unreachable = |e: reqwest::Error| CredentialError::Unreachable {
        url: shown.clone(),
        reason: redactor.scrub(&e.without_url().to_string()),
    };
    let pairs: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = client
        .post(url.clone())
        .form(&pairs)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body = response.bytes().await.map_err(unreachable)?;
    let refused = |reason: String| CredentialError::Refused {
        url: shown.clone(),
        reason: redactor.scrub(&reason),
    };
    if body.len() > MAX_TOKEN_ANSWER {
        return Err(refused(format!("answer of {} bytes", body.len())));
    }
    if !status.is_success() {
        return Err(refused(super::remote::backend_message(
            status, &body, redactor,
        )));
    }
    serde_json::from_slice(&body).map_err(|_| refused(format!("{status} without an access_token")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A token endpoint on loopback answering every request with `body`; counts requests.
    async fn endpoint(body: Vec<u8>) -> (Url, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/token", listener.local_addr().unwrap())).unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            }
        });
        (url, hits)
    }

    fn credentials(token_url: Url) -> Credentials {
        Credentials::client_credentials(OAuth2Auth {
            token_url,
            client_id: "client".into(),
            client_secret: SecretString::from("the-client-secret"),
            scope: None,
        })
    }

    #[tokio::test]
    async fn a_token_is_fetched_once_and_reused_until_refreshed() {
        let (url, hits) = endpoint(br#"{"access_token":"tok-1","expires_in":3600}"#.to_vec()).await;
        let credentials = credentials(url);
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let token = credentials.token(&client, false).await.unwrap();
            assert_eq!(token.expose_secret(), "tok-1");
        }
        assert_eq!(
            (hits.load(Ordering::Relaxed), credentials.fetches()),
            (1, 1)
        );
        credentials.token(&client, true).await.unwrap();
        assert_eq!(credentials.fetches(), 2);
    }

    #[tokio::test]
    async fn an_oversized_token_answer_is_refused_without_the_secret() {
        let mut body = br#"{"access_token":""#.to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_TOKEN_ANSWER + 1));
        body.extend(br#"","expires_in":3600}"#);
        let (url, _) = endpoint(body).await;
        let error = credentials(url)
            .token(&reqwest::Client::new(), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("answer of"), "{error}");
        assert!(!error.contains("the-client-secret"), "{error}");
    }
}
