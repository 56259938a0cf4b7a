//! Reading the provider entry's config with errors that name the field, so the
//! gateway reports them at their JSON path in kms.json.

use serde::de::DeserializeOwned;

use crate::Error;

/// Decodes the config as `T`. On failure the message starts with the path of
/// the offending field (`vaultUrl: invalid type: …`); the gateway turns that
/// into `providers[i].vaultUrl` in its start-up error.
///
/// # Errors
/// [`Error::InvalidInput`] naming the field.
pub fn parse<T: DeserializeOwned>(config: serde_json::Value) -> Result<T, Error> {
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        Error::InvalidInput(if path == "." {
            message
        } else {
            format!("{path}: {message}")
        })
    })
}

/// A config complaint about `field` in the form [`parse`] gives.
pub fn invalid(field: &str, message: impl std::fmt::Display) -> Error {
    Error::InvalidInput(format!("{field}: {message}"))
}

/// The base URL in config field `field`, without a trailing `/`: it must be
/// `https://`, or plain `http://` to a loopback address (test servers).
///
/// # Errors
/// [`Error::InvalidInput`] naming the field otherwise.
pub fn base_url(field: &str, url: &str) -> Result<String, Error> {
    let url = url.trim_end_matches('/');
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|prefix| url.starts_with(prefix));
    if url.starts_with("https://") || loopback {
        Ok(url.to_owned())
    } else {
        Err(invalid(
            field,
            "must be an https:// URL (http:// only for loopback test servers)",
        ))
    }
}
