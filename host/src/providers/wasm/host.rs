//! What the host grants a guest instance: its store state, the `storage` and `log`
//! imports, WASI (clocks, random, io; `wasi:filesystem` and `wasi:cli` linked with
//! no directories and an empty environment, as JavaScript engines import them;
//! no sockets), and
//! outgoing HTTP filtered against the provider's `allowedHosts`. Everything a guest
//! can make the host hold here is bounded by the provider's [`GuestLimits`]:
//! storage by a quota, the log by line length and rate, outgoing HTTP by body sizes
//! and requests in flight, and wasi resources by the instance's table size.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use secrecy::ExposeSecret;

use super::limits::{BODY_CHUNK_BYTES, GuestLimits, MAX_HEADER_BYTES, sanitize};
use crate::catalog::{Catalog, GuestWriteError, StorageQuota};
use crate::crypto::master::MasterKey;
use crate::providers::credentials::Credentials;
use crate::redact::Redactor;

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

    /// Whether the destination is a loopback address (where plain HTTP may carry credentials).
    pub fn is_loopback(host: &str) -> bool {
        crate::config::is_loopback(host)
    }

    /// Whether every destination `other` allows, this allows too.
    pub fn covers(&self, other: &AllowedHost) -> bool {
        self.host == other.host
            && self.port == other.port
            && (self.scheme.is_none() || self.scheme == other.scheme)
    }

    fn matches(&self, scheme: &str, host: &str, port: u16) -> bool {
        let default_port = if scheme == "https" { 443 } else { 80 };
        self.scheme.as_deref().is_none_or(|s| s == scheme)
            && self.host == host
            && self.port.unwrap_or(default_port) == port
    }
}

/// Counters of one guest provider, for `/metrics`.
#[derive(Default)]
pub struct GuestCounters {
    pub traps: AtomicU64,
    pub timeouts: AtomicU64,
    pub denied_egress: AtomicU64,
    pub log_lines_dropped: AtomicU64,
    /// Instances dropped after a call because they held resources the call left behind.
    pub recycled: AtomicU64,
}

/// What every instance of one guest provider shares: its identity, limits,
/// storage, log budget, egress allow-list and counters.
pub struct GuestShared {
    pub provider_id: Arc<str>,
    pub limits: GuestLimits,
    pub allowed: Vec<AllowedHost>,
    /// Credentials the host adds to requests to each of these destinations.
    pub egress_auth: Vec<(AllowedHost, Arc<Credentials>)>,
    pub catalog: Catalog,
    pub master: Arc<MasterKey>,
    pub counters: GuestCounters,
    /// The egress credentials' secrets and tokens, kept out of what the guest
    /// reports (an echoing backend can hand them to it).
    pub redactor: Redactor,
    log_budget: Mutex<LogBudget>,
}

impl GuestShared {
    /// The shared state of provider `provider_id`.
    pub fn new(
        provider_id: &str,
        limits: GuestLimits,
        (allowed, egress_auth): (Vec<AllowedHost>, Vec<(AllowedHost, Arc<Credentials>)>),
        catalog: Catalog,
        master: Arc<MasterKey>,
    ) -> Self {
        let per_second = f64::from(limits.log_lines_per_second);
        let redactor = Redactor::default().joined(egress_auth.iter().map(|(_, c)| c.redactor()));
        GuestShared {
            redactor,
            provider_id: Arc::from(provider_id),
            allowed,
            egress_auth,
            catalog,
            master,
            counters: GuestCounters::default(),
            log_budget: Mutex::new(LogBudget {
                tokens: per_second,
                refilled: Instant::now(),
                dropped: 0,
            }),
            limits,
        }
    }

    fn aad(&self, key: &str) -> String {
        crate::crypto::seal::guest_value_aad(&self.provider_id, key)
    }

    fn quota(&self) -> StorageQuota {
        StorageQuota {
            bytes: self.limits.storage_bytes,
            entries: self.limits.storage_entries,
        }
    }

    /// Takes one line from the log budget (a token bucket holding one second of
    /// lines). `None`: over the rate, drop the line. `Some(n)`: log it, after a note
    /// that `n` lines were dropped since the last one logged.
    fn admit_log_line(&self) -> Option<u64> {
        let per_second = f64::from(self.limits.log_lines_per_second);
        let mut budget = self.log_budget.lock().expect("log budget lock");
        let now = Instant::now();
        let earned = now.duration_since(budget.refilled).as_secs_f64() * per_second;
        budget.tokens = (budget.tokens + earned).min(per_second);
        budget.refilled = now;
        if budget.tokens < 1.0 {
            budget.dropped += 1;
            self.counters
                .log_lines_dropped
                .fetch_add(1, Ordering::Relaxed);
            return None;
        }
        budget.tokens -= 1.0;
        Some(std::mem::take(&mut budget.dropped))
    }
}

/// A provider's log rate: tokens, when they were last refilled, lines dropped since
/// the last line logged.
struct LogBudget {
    tokens: f64,
    refilled: Instant,
    dropped: u64,
}

/// Decides which outgoing requests a guest may make, and bounds what they hold.
pub struct EgressFilter {
    shared: Arc<GuestShared>,
    /// One permit per request in flight from this instance.
    in_flight: Arc<Semaphore>,
}

/// What the filter decided for one request.
enum Egress {
    Denied(&'static str),
    Allowed(Option<Arc<Credentials>>),
}

impl EgressFilter {
    fn decide(&self, uri: &http::Uri) -> Egress {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else {
            return Egress::Denied("the request names no host");
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = host.to_ascii_lowercase();
        if !self
            .shared
            .allowed
            .iter()
            .any(|a| a.matches(scheme, &host, port))
        {
            return Egress::Denied("destination not in allowedHosts");
        }
        let credentials = self
            .shared
            .egress_auth
            .iter()
            .find(|(a, _)| a.matches(scheme, &host, port))
            .map(|(_, credentials)| Arc::clone(credentials));
        if credentials.is_some() && scheme != "https" && !AllowedHost::is_loopback(&host) {
            return Egress::Denied("credentials are sent over https only (plain http to loopback)");
        }
        Egress::Allowed(credentials)
    }
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>,
)>;

impl WasiHttpHooks for EgressFilter {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let _ = fut;
        let provider = &self.shared.provider_id;
        let credentials = match self.decide(request.uri()) {
            Egress::Allowed(credentials) => credentials,
            Egress::Denied(reason) => {
                self.shared
                    .counters
                    .denied_egress
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(provider = %provider, uri = %request.uri(), reason,
                    "guest HTTP request denied");
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            }
        };
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            let limit = self.shared.limits.http_concurrent;
            return Box::new(async move {
                Err(HttpError::InternalError(Some(format!(
                    "kmsgw: at most {limit} outgoing requests in flight per instance (limits.httpConcurrent)"
                ))))
            });
        };
        let bounds = (
            self.shared.limits.http_request_bytes,
            self.shared.limits.http_response_bytes,
        );
        let provider = Arc::clone(provider);
        let span = crate::span!(
            "guest.http",
            otel.name = format!("guest {}", request.method()),
            otel.kind = "client",
            http.request.method = %request.method(),
            server.address = request.uri().host().unwrap_or_default(),
            http.response.status_code = tracing::field::Empty,
        );
        span.in_scope(|| crate::telemetry::inject(request.headers_mut()));
        Box::new(tracing::Instrument::instrument(
            async move {
                let response =
                    send_pooled(request, options, bounds, permit, credentials, &provider).await?;
                tracing::Span::current()
                    .record("http.response.status_code", response.status().as_u16());
                Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            },
            span,
        ))
    }

    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }
}

/// The HTTP client all guests' allowed requests go through: connections are kept
/// and reused (wasmtime's default opens a new one, and a new TLS session, per
/// request), redirects are not followed (a redirect could leave `allowedHosts`),
/// no proxy from the environment is used, and few idle connections are kept.
fn egress_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(16)
            .build()
            .expect("an HTTP client with the built-in TLS roots")
    })
}

/// Sends a guest's request on the pooled client. The request body is read whole
/// first, up to `request_bytes`; the response streams, up to `response_bytes`, and
/// holds `permit` (a slot of the instance's requests in flight) until it is dropped.
/// With `credentials`, the guest's own `Authorization` is replaced by the host's
/// token, and a 401 answer is tried once more with a fresh token.
async fn send_pooled(
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    (request_bytes, response_bytes): (u64, u64),
    permit: OwnedSemaphorePermit,
    credentials: Option<Arc<Credentials>>,
    provider: &str,
) -> Result<http::Response<WasiBody>, HttpError> {
    use http_body_util::BodyExt;
    let (parts, body) = request.into_parts();
    let too_big = HttpError::HttpRequestBodySize(Some(request_bytes));
    if body.size_hint().lower() > request_bytes {
        return Err(too_big);
    }
    let limit = usize::try_from(request_bytes).unwrap_or(usize::MAX);
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Err(match e.downcast::<HttpError>() {
                Ok(inner) => *inner,
                Err(_) => too_big,
            });
        }
    };
    let mut headers = parts.headers;
    if credentials.is_some() {
        headers.remove(http::header::AUTHORIZATION);
    }
    let uri = parts.uri.to_string();
    let timeout = options.and_then(|o| match (o.connect_timeout, o.first_byte_timeout) {
        (Some(connect), first_byte) => Some(connect + first_byte.unwrap_or(connect)),
        (None, first_byte) => first_byte,
    });
    let mut fresh = false;
    let response = loop {
        let mut outgoing = egress_client()
            .request(parts.method.clone(), &uri)
            .headers(headers.clone())
            .body(body.clone());
        if let Some(timeout) = timeout {
            outgoing = outgoing.timeout(timeout);
        }
        if let Some(credentials) = &credentials {
            let token = credentials
                .token(egress_client(), fresh)
                .await
                .map_err(|e| {
                    tracing::warn!(provider, error = %e, "no token for a guest's request");
                    HttpError::InternalError(Some(format!("kmsgw egressAuth: {e}")))
                })?;
            outgoing = outgoing.bearer_auth(token.expose_secret());
        }
        let response = outgoing.send().await.map_err(|e| {
            if e.is_timeout() {
                HttpError::ConnectionTimeout
            } else if e.is_connect() {
                HttpError::ConnectionRefused
            } else {
                HttpError::InternalError(Some(e.without_url().to_string()))
            }
        })?;
        match &credentials {
            Some(credentials)
                if response.status() == reqwest::StatusCode::UNAUTHORIZED
                    && credentials.refreshable()
                    && !fresh =>
            {
                fresh = true;
            }
            _ => break response,
        }
    };
    if response
        .content_length()
        .is_some_and(|n| n > response_bytes)
    {
        return Err(HttpError::HttpResponseBodySize(response.content_length()));
    }
    let response: http::Response<reqwest::Body> = response.into();
    Ok(response.map(|body| {
        use http_body_util::BodyExt;
        BoundedBody {
            inner: body,
            left: response_bytes,
            limit: response_bytes,
            _permit: permit,
        }
        .boxed_unsync()
    }))
}

/// A response body cut off with an error after `limit` bytes; it holds its
/// request's slot until the guest drops it.
struct BoundedBody {
    inner: reqwest::Body,
    left: u64,
    limit: u64,
    _permit: OwnedSemaphorePermit,
}

impl Body for BoundedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(HttpError::InternalError(Some(e.to_string())))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let size = data.len() as u64;
            if size > self.left {
                self.left = 0;
                return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(self.limit)))));
            }
            self.left -= size;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What one guest instance's store holds.
pub struct HostState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    egress: EgressFilter,
    shared: Arc<GuestShared>,
    pub limits: StoreLimits,
    pub stderr: MemoryOutputPipe,
}

impl HostState {
    /// State for a new instance of the provider `shared` belongs to.
    pub fn new(shared: Arc<GuestShared>) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No arguments, environment, preopened directories or stdin: an empty WASI.
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HEADER_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(shared.limits.resources);
        HostState {
            wasi,
            http,
            table,
            egress: EgressFilter {
                shared: Arc::clone(&shared),
                in_flight: Arc::new(Semaphore::new(shared.limits.http_concurrent)),
            },
            limits: wasmtime::StoreLimitsBuilder::new()
                .memory_size(shared.limits.memory_bytes())
                .instances(64)
                .tables(64)
                .memories(16)
                .build(),
            shared,
            stderr,
        }
    }

    /// How many wasi resources (streams, requests, header sets, …) the guest holds.
    pub fn resources_held(&mut self) -> usize {
        self.table.iter_mut().count()
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

/// The `storage` and `log` imports, once for every WIT version (the traits each
/// version's bindings generate delegate here; see `versions`).
impl HostState {
    /// `storage.get`.
    pub async fn storage_get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let s = &self.shared;
        let sealed = s
            .catalog
            .guest_get(&s.provider_id, &key)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage read failed");
                "storage is unavailable".to_owned()
            })?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match s.master.open(&s.aad(&key), &sealed).await {
            Ok(value) => Ok(Some(value.to_vec())),
            Err(e @ crate::crypto::seal::SealError::Sealed(_)) => Err(e.to_string()),
            Err(e) => {
                tracing::error!(provider = %s.provider_id, error = %e, "guest storage value does not open");
                Err("stored value is damaged".to_owned())
            }
        }
    }

    /// `storage.set`.
    pub async fn storage_set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if key.len() > MAX_STORAGE_KEY {
            return Err(format!("keys are at most {MAX_STORAGE_KEY} bytes"));
        }
        if value.len() > MAX_STORAGE_VALUE {
            return Err(format!("values are at most {MAX_STORAGE_VALUE} bytes"));
        }
        let s = &self.shared;
        let sealed = s
            .master
            .seal(&s.aad(&key), &value)
            .map_err(|e| e.to_string())?;
        match s
            .catalog
            .guest_set(&s.provider_id, &key, &sealed, s.quota())
            .await
        {
            Ok(()) => Ok(()),
            Err(GuestWriteError::Quota(reason)) => {
                tracing::warn!(provider = %s.provider_id, %reason, "guest storage write refused");
                Err(reason)
            }
            Err(GuestWriteError::Catalog(e)) => {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage write failed");
                Err("storage is unavailable".to_owned())
            }
        }
    }

    /// `storage.delete`.
    pub async fn storage_delete(&mut self, key: String) -> Result<bool, String> {
        let s = &self.shared;
        s.catalog.guest_delete(&s.provider_id, &key).await.map_err(|e| {
            tracing::warn!(provider = %s.provider_id, error = %e, "guest storage delete failed");
            "storage is unavailable".to_owned()
        })
    }

    /// `storage.list-keys`.
    pub async fn storage_list(&mut self, prefix: String) -> Result<Vec<String>, String> {
        let s = &self.shared;
        s.catalog
            .guest_list(&s.provider_id, &prefix)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %s.provider_id, error = %e, "guest storage list failed");
                "storage is unavailable".to_owned()
            })
    }
}

/// A guest log line's severity, whatever the WIT version.
#[derive(Clone, Copy, Debug)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl HostState {
    /// `log.log`: rate-limited, cut and escaped.
    pub fn log_line(&mut self, level: LogLevel, message: &str) {
        let shared = &self.shared;
        let provider = &*shared.provider_id;
        let Some(dropped) = shared.admit_log_line() else {
            return;
        };
        if dropped > 0 {
            tracing::warn!(
                provider,
                dropped,
                "guest log lines dropped: the guest logged more than limits.logLinesPerSecond"
            );
        }
        let message = sanitize(
            &shared.redactor.scrub(message),
            shared.limits.log_line_bytes,
        );
        match level {
            LogLevel::Trace => tracing::trace!(provider, "guest: {message}"),
            LogLevel::Debug => tracing::debug!(provider, "guest: {message}"),
            LogLevel::Info => tracing::info!(provider, "guest: {message}"),
            LogLevel::Warn => tracing::warn!(provider, "guest: {message}"),
            LogLevel::Error => tracing::error!(provider, "guest: {message}"),
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
