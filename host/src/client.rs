//! A client of a running gateway's REST API: what `kmsgw keys|certs|audit|providers|health`
//! use. Every action goes through the public API with the operator's API key.

pub mod commands;
pub mod output;

use std::process::ExitCode;

use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// How a command ended, as its exit code says.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// The gateway answered, and the answer is "no": a signature that does not
    /// verify, an audit chain that is broken, a gateway that is not ready.
    pub const NEGATIVE: u8 = 1;
    /// The command line or a local input (a file, a JWK) is unusable.
    pub const USAGE: u8 = 2;
    /// The gateway could not be reached, or answered something that is not its API.
    pub const UNREACHABLE: u8 = 3;
    /// 401: no token, or one the gateway does not accept.
    pub const UNAUTHORIZED: u8 = 4;
    /// 403: the API key lacks the route's scope.
    pub const FORBIDDEN: u8 = 5;
    /// 404: no such key, certificate or provider (in this API key's tenant).
    pub const NOT_FOUND: u8 = 6;
    /// 409: the key exists, or changed under the request.
    pub const CONFLICT: u8 = 7;
    /// Any other 4xx: the gateway refused the request as given.
    pub const REFUSED: u8 = 8;
    /// 5xx: the gateway or a backend failed.
    pub const SERVER: u8 = 9;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway refused or failed the request.
    #[error("{}", describe(*.status, code, message, *.tenant))]
    Api {
        status: StatusCode,
        code: String,
        message: String,
        /// Whether the API key is bound to a tenant-visible space (a token was sent).
        tenant: bool,
    },
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The gateway answered something that is not its API.
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    /// A local input is unusable.
    #[error("{0}")]
    Usage(String),
}

fn describe(status: StatusCode, code: &str, message: &str, tenant: bool) -> String {
    match status {
        StatusCode::UNAUTHORIZED => format!(
            "unauthorized ({code}): {message}; give an API key's token with --token or KMSGW_TOKEN"
        ),
        StatusCode::FORBIDDEN => format!("forbidden by the API key's scopes ({code}): {message}"),
        StatusCode::NOT_FOUND if tenant => {
            format!("not found ({code}): {message} (an API key sees only its own tenant's keys)")
        }
        _ => format!("{} ({code}): {message}", status.as_u16()),
    }
}

impl ClientError {
    /// The process exit code for this failure (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Api { status, .. } => match *status {
                StatusCode::UNAUTHORIZED => exit::UNAUTHORIZED,
                StatusCode::FORBIDDEN => exit::FORBIDDEN,
                StatusCode::NOT_FOUND => exit::NOT_FOUND,
                StatusCode::CONFLICT => exit::CONFLICT,
                s if s.is_client_error() => exit::REFUSED,
                _ => exit::SERVER,
            },
            ClientError::Unreachable { .. } | ClientError::Protocol { .. } => exit::UNREACHABLE,
            ClientError::Usage(_) => exit::USAGE,
        }
    }

    /// Prints the failure to stderr and gives its exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("error: {self}");
        ExitCode::from(self.exit_code())
    }
}

/// A gateway's REST API, reached at one base URL with one optional API key.
pub struct Client {
    base: String,
    token: Option<SecretString>,
    http: reqwest::Client,
}

/// An answer: its status and JSON body (`Null` for an empty one, a string for text).
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Client {
    /// A client of the gateway at `base` (e.g. `http://127.0.0.1:8080`).
    ///
    /// # Errors
    /// When the URL is not http(s) or the TLS stack cannot start.
    pub fn new(base: &str, token: Option<SecretString>) -> Result<Client, ClientError> {
        let url =
            url::Url::parse(base).map_err(|e| ClientError::Usage(format!("--url {base}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Usage(format!(
                "--url {base}: the gateway is reached over http or https"
            )));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("kmsgw-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot start an HTTP client: {e}")))?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http,
        })
    }

    /// `GET path`.
    ///
    /// # Errors
    /// [`ClientError`] for any answer but 2xx.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await.map(|a| a.body)
    }

    /// `POST path` with a JSON body.
    ///
    /// # Errors
    /// [`ClientError`] for any answer but 2xx.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, path, Some(body))
            .await
            .map(|a| a.body)
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// [`ClientError`] for any answer but 2xx.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::DELETE, path, None).await.map(|a| a.body)
    }

    /// One request; 2xx gives the answer, any other status the gateway's error
    /// (`{error, code}`), except `also_ok`, which is answered like a 2xx.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn call_accepting(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        also_ok: StatusCode,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose_secret());
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let is_json = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        let text = response
            .text()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: self.base.clone(),
                reason: error_chain(&e),
            })?;
        let body = if text.is_empty() {
            Value::Null
        } else if is_json {
            serde_json::from_str(&text).map_err(|e| ClientError::Protocol {
                url: url.clone(),
                reason: format!("status {status} with malformed JSON: {e}"),
            })?
        } else {
            Value::String(text)
        };
        if status.is_success() || status == also_ok {
            return Ok(Answer { status, body });
        }
        match (&body["code"], &body["error"]) {
            (Value::String(code), Value::String(message)) => Err(ClientError::Api {
                status,
                code: code.clone(),
                message: message.clone(),
                tenant: self.token.is_some(),
            }),
            _ => Err(ClientError::Protocol {
                url,
                reason: format!("status {status} without the gateway's error body"),
            }),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        self.call_accepting(method, path, body, StatusCode::OK)
            .await
    }
}

/// A reqwest error with its causes (connection refused, DNS, TLS…).
fn error_chain(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `text` made safe as one path segment.
pub fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
