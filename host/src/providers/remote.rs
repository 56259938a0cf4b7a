//! What the providers that call a backend over HTTP share: client construction,
//! turning transport failures and error answers into [`ProviderError`]s, and
//! bounded retries for calls that are safe to repeat.

use std::time::Duration;

use super::ProviderError;
use crate::redact::Redactor;

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default whole-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pauses before the retries of a call that is safe to repeat.
const RETRY_BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(250)];
/// Longest backend message passed on to a client.
const MAX_MESSAGE: usize = 200;

/// A client with the given timeouts, keep-alive connection reuse, and optionally a
/// client identity and an extra trusted CA (mTLS).
///
/// # Errors
/// When the TLS material is unusable.
pub fn client(
    connect_timeout: Duration,
    timeout: Duration,
    identity: Option<reqwest::Identity>,
    ca: Option<reqwest::Certificate>,
) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .use_rustls_tls();
    if let Some(identity) = identity {
        builder = builder.identity(identity);
    }
    if let Some(ca) = ca {
        builder = builder.add_root_certificate(ca);
    }
    builder.build()
}

/// A transport failure: no answer in time is a timeout, anything else
/// unavailability; `redactor`'s secrets removed from the cause.
pub fn transport_error(backend: &str, e: &reqwest::Error, redactor: &Redactor) -> ProviderError {
    if e.is_timeout() {
        ProviderError::Timeout
    } else {
        // reqwest's message names the URL and the cause; it holds no credentials.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            cause = format!("{cause}: {inner}");
            source = inner.source();
        }
        ProviderError::Unavailable(format!(
            "{backend} unreachable: {}",
            clean(&redactor.scrub(&cause))
        ))
    }
}

/// The message of an error answer, for a person: the JSON `error`, `message` or
/// `errors` field when there is one, else the text; `redactor`'s secrets
/// removed (before anything is cut, so no part of one remains), control
/// characters removed and cut to a readable length.
pub fn backend_message(status: reqwest::StatusCode, body: &[u8], redactor: &Redactor) -> String {
    let text = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(json) => match (&json["error"], &json["message"], &json["errors"]) {
            // OAuth2 token endpoints (RFC 6749 §5.2): `error` and `error_description`.
            (serde_json::Value::String(e), _, _) if json["error_description"].is_string() => {
                format!(
                    "{e}: {}",
                    json["error_description"].as_str().unwrap_or_default()
                )
            }
            (serde_json::Value::String(e), _, _) | (_, serde_json::Value::String(e), _) => {
                e.clone()
            }
            (_, _, serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|e| e.as_str())
                .collect::<Vec<_>>()
                .join("; "),
            _ => json.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let text = clean(&redactor.scrub(&text));
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    }
}

fn clean(text: &str) -> String {
    let single: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match single.char_indices().nth(MAX_MESSAGE) {
        Some((cut, _)) => format!("{}…", &single[..cut]),
        None => single,
    }
}

/// Runs `call`, and again up to twice with a short backoff while the backend is
/// unreachable. Only for calls that are harmless to repeat (sign, reads, health).
pub async fn retrying<T, F, Fut>(mut call: F) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    for pause in RETRY_BACKOFF {
        match call().await {
            Err(ProviderError::Unavailable(_)) => tokio::time::sleep(pause).await,
            other => return other,
        }
    }
    call().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_messages_are_extracted_cleaned_and_cut() {
        let status = reqwest::StatusCode::BAD_REQUEST;
        let none = Redactor::default();
        assert_eq!(
            backend_message(status, br#"{"error":"bad\nkid"}"#, &none),
            "HTTP 400 Bad Request: bad kid"
        );
        assert_eq!(
            backend_message(status, br#"{"errors":["a","b"]}"#, &none),
            "HTTP 400 Bad Request: a; b"
        );
        let long = "x".repeat(500);
        assert!(
            backend_message(status, long.as_bytes(), &none)
                .chars()
                .count()
                < 230
        );
        assert_eq!(backend_message(status, b"", &none), "HTTP 400 Bad Request");
        // A secret that straddles the cut leaves no prefix behind.
        let secret = "s".repeat(30);
        let echo = format!("{}{secret}", "x".repeat(190));
        let said = backend_message(status, echo.as_bytes(), &Redactor::new([secret.as_str()]));
        assert!(!said.contains("ssss"), "{said}");
    }
}
