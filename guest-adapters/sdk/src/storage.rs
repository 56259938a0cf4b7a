//! The provider's private key-value store. The host keeps it in the gateway
//! database, sealed under the master key, namespaced by provider id: no other
//! provider can see it, and every gateway replica shares it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::bindings::kmsgw::adapter::storage as host;

fn failed(e: String) -> Error {
    Error::Internal(format!("storage: {e}"))
}

/// The bytes stored under `key`, if any.
///
/// # Errors
/// [`Error::Internal`] when the host cannot read its database.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    host::get(key).map_err(failed)
}

/// Stores `value` under `key`.
///
/// # Errors
/// [`Error::Internal`] when the host cannot write, or the key or value is too large.
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    host::set(key, value).map_err(failed)
}

/// Removes `key`; returns whether it was there.
///
/// # Errors
/// [`Error::Internal`] when the host cannot write.
pub fn delete(key: &str) -> Result<bool, Error> {
    host::delete(key).map_err(failed)
}

/// The stored keys starting with `prefix`, in ascending order.
///
/// # Errors
/// [`Error::Internal`] when the host cannot read.
pub fn list(prefix: &str) -> Result<Vec<String>, Error> {
    host::list_keys(prefix).map_err(failed)
}

/// The value under `key`, decoded from JSON.
///
/// # Errors
/// As [`get`], and [`Error::Internal`] when the stored bytes are not a `T`.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    get(key)?
        .map(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::Internal(format!("storage `{key}`: {e}")))
        })
        .transpose()
}

/// Stores `value` under `key` as JSON.
///
/// # Errors
/// As [`set`].
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), Error> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))?;
    set(key, &bytes)
}
