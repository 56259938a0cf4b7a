//! What the host grants a guest instance: its store state, the `storage` and `log`
//! imports, WASI (clocks, random, io; no filesystem, environment or sockets), and
//! outgoing HTTP filtered against the provider's `allowedHosts`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::bindings::kmsgw::adapter::{log, storage};
use crate::catalog::Catalog;
use crate::crypto::seal::MasterKey;

/// Largest guest storage key, in bytes.
const MAX_STORAGE_KEY: usize = 256;
/// Largest guest storage value, in bytes.
const MAX_STORAGE_VALUE: usize = 64 * 1024;
/// How much of a guest's stderr (panic messages) is kept for the log.
pub const STDERR_CAPACITY: usize = 16 * 1024;

/// One destination a guest may reach: scheme and port are optional in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedHost {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

impl AllowedHost {
    /// Parses `host`, `host:port`, `scheme://host` or `scheme://host:port`.
    ///
    /// # Errors
    /// A message for the config error when the entry is not one of these forms.
    pub fn parse(entry: &str) -> Result<Self, String> {
        let (scheme, rest) = match entry.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (Some(scheme.to_owned()), rest),
            Some((other, _)) => return Err(format!("scheme `{other}` is not http or https")),
            None => (None, entry),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                Some(
                    port.parse::<u16>()
                        .map_err(|_| format!("`{port}` is not a port"))?,
                ),
            ),
            None => (rest, None),
        };
        if host.is_empty() || host.contains('/') {
            return Err(format!(
                "`{entry}` is not host[:port] or scheme://host[:port]"
            ));
        }
        Ok(AllowedHost {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let default_port = if scheme == "https" { 443 } else { 80 };
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.host == host
            && self.port.unwrap_or(default_port) == port
    }
}

/// Decides which outgoing requests a guest may make; everything else is denied.
pub struct EgressFilter {
    provider_id: Arc<str>,
    allowed: Arc<[AllowedHost]>,
    denied: Arc<AtomicU64>,
}

impl EgressFilter {
    fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else { return false };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|a| a.matches(scheme, &host, port))
    }
}

impl WasiHttpHooks for EgressFilter {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<
            dyn Future<Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>> + Send,
        >,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<WasiBody>,
                    Box<
                        dyn Future<
                                Output = wasmtime_wasi_http::Result<(), wasmtime_wasi_http::Error>,
                            > + Send,
                    >,
                )>,
            > + Send,
    > {
        if !self.allows(request.uri()) {
            self.denied.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(provider = %self.provider_id, uri = %request.uri(),
                "guest HTTP request denied: destination not in allowedHosts");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        Box::new(async move {
            let response = send_pooled(request, options).await?;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The HTTP client all guests' allowed requests go through: connections are kept
/// and reused (wasmtime's default opens a new one, and a new TLS session, per
/// request), redirects are not followed (a redirect could leave `allowedHosts`),
/// and no proxy from the environment is used.
fn egress_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client with the built-in TLS roots")
    })
}

/// Sends a guest's request on the pooled client. Bodies of requests to a KMS are
/// small, so the request body is read whole first; the response streams.
async fn send_pooled(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<http::Response<WasiBody>, HttpError> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let body = body.collect().await?.to_bytes();
    let mut outgoing = egress_client()
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body);
    if let Some(options) = options {
        if let Some(connect) = options.connect_timeout {
            outgoing = outgoing.timeout(connect + options.first_byte_timeout.unwrap_or(connect));
        } else if let Some(first_byte) = options.first_byte_timeout {
            outgoing = outgoing.timeout(first_byte);
        }
    }
    let response = outgoing.send().await.map_err(|e| {
        if e.is_timeout() {
            HttpError::ConnectionTimeout
        } else if e.is_connect() {
            HttpError::ConnectionRefused
        } else {
            HttpError::InternalError(Some(e.to_string()))
        }
    })?;
    let response: http::Response<reqwest::Body> = response.into();
    Ok(response.map(|body| {
        body.map_err(|e| HttpError::InternalError(Some(e.to_string())))
            .boxed_unsync()
    }))
}

/// The guest's private key-value store: a namespace of the catalog, sealed.
#[derive(Clone)]
pub struct GuestStorage {
    pub provider_id: Arc<str>,
    pub catalog: Catalog,
    pub master: Arc<MasterKey>,
}

impl GuestStorage {
    fn aad(&self, key: &str) -> String {
        format!("kmsgw:guest:{}:{key}", self.provider_id)
    }
}

/// What one guest instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    egress: EgressFilter,
    storage: GuestStorage,
    pub limits: StoreLimits,
    pub stderr: MemoryOutputPipe,
}

impl HostState {
    /// State for a new instance of the provider that `storage` belongs to.
    pub fn new(
        storage: GuestStorage,
        allowed: Arc<[AllowedHost]>,
        denied: Arc<AtomicU64>,
        memory_bytes: usize,
    ) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No arguments, environment, preopened directories or stdin: an empty WASI.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        HostState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            egress: EgressFilter {
                provider_id: storage.provider_id.clone(),
                allowed,
                denied,
            },
            storage,
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            stderr,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

impl storage::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let s = &self.storage;
        let sealed = s
            .catalog
            .guest_get(&s.provider_id, &key)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage read failed");
                "storage is unavailable".to_owned()
            })?;
        sealed
            .map(|sealed| {
                s.master.open(&s.aad(&key), &sealed).map(|v| v.to_vec()).map_err(|e| {
                    tracing::error!(provider = %s.provider_id, error = %e, "guest storage value does not open");
                    "stored value is damaged".to_owned()
                })
            })
            .transpose()
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_STORAGE_KEY {
            return Err(format!("keys are at most {MAX_STORAGE_KEY} bytes"));
        }
        if value.len() > MAX_STORAGE_VALUE {
            return Err(format!("values are at most {MAX_STORAGE_VALUE} bytes"));
        }
        let s = &self.storage;
        let sealed = s.master.seal(&s.aad(&key), &value);
        s.catalog
            .guest_set(&s.provider_id, &key, &sealed)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage write failed");
                "storage is unavailable".to_owned()
            })
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        let s = &self.storage;
        s.catalog.guest_delete(&s.provider_id, &key).await.map_err(|e| {
            tracing::warn!(provider = %s.provider_id, error = %e, "guest storage delete failed");
            "storage is unavailable".to_owned()
        })
    }

    async fn list_keys(&mut self, prefix: String) -> Result<Vec<String>, String> {
        let s = &self.storage;
        s.catalog
            .guest_list(&s.provider_id, &prefix)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage list failed");
                "storage is unavailable".to_owned()
            })
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) {
        let provider = &*self.storage.provider_id;
        match level {
            log::Level::Trace => tracing::trace!(provider, "guest: {message}"),
            log::Level::Debug => tracing::debug!(provider, "guest: {message}"),
            log::Level::Info => tracing::info!(provider, "guest: {message}"),
            log::Level::Warn => tracing::warn!(provider, "guest: {message}"),
            log::Level::Error => tracing::error!(provider, "guest: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_scheme_host_and_port() {
        let exact = AllowedHost::parse("https://kms.example.com:8443").unwrap();
        assert!(exact.matches("https", "kms.example.com", 8443));
        assert!(!exact.matches("http", "kms.example.com", 8443));
        assert!(!exact.matches("https", "kms.example.com", 443));
        let any_scheme = AllowedHost::parse("127.0.0.1:3001").unwrap();
        assert!(any_scheme.matches("http", "127.0.0.1", 3001));
        assert!(!any_scheme.matches("http", "127.0.0.2", 3001));
        let default_port = AllowedHost::parse("https://Kms.Example.com").unwrap();
        assert!(default_port.matches("https", "kms.example.com", 443));
        assert!(AllowedHost::parse("ftp://x").is_err());
        assert!(AllowedHost::parse("x:notaport").is_err());
    }
}
