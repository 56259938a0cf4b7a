//! Logs and traces. Logs go to stderr as before; traces are exported over
//! OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) variable is set, and not at all
//! otherwise.
//!
//! Trace spans use the target [`TARGET`] (through [`span!`](crate::span)),
//! which the log output never shows: without an exporter no layer wants them,
//! so each costs one cached check on the hot path and nothing more.

use std::io::IsTerminal;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithHttpConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of trace spans.
pub const TARGET: &str = "kmsgw::trace";

/// Whether traces are exported (set once by [`init`]); what only matters to an
/// exporter checks this first, so it costs nothing otherwise.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether traces are exported (the OTLP variables asked for it at start).
pub fn is_exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

/// A trace span (INFO, target [`TARGET`]): `span!("name", field = value, …)`.
#[macro_export]
macro_rules! span {
    ($name:literal $($fields:tt)*) => {
        tracing::info_span!(target: "kmsgw::trace", $name $($fields)*)
    };
}

/// Keeps the trace exporter running; dropping it sends what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing traces at exit: {e}");
        }
    }
}

/// Whether the OTLP variables ask for traces.
fn exporting(lookup: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| lookup(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let traces_off = lookup("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled
        && !traces_off
        && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Sets up logging to stderr (`RUST_LOG`, default `info,sqlx=warn`) and, when
/// the OTLP variables are set, trace export. Call once, inside the tokio runtime.
///
/// # Errors
/// When the exporter cannot be built from the `OTEL_*` variables.
pub fn init() -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"))
        .add_directive(format!("{TARGET}=off").parse().expect("a valid directive"));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    if !exporting(|name| std::env::var(name).ok()) {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { provider: None });
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(ExportClient::new())
        .build()
        .map_err(|e| format!("OTLP trace exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(
                    std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "kmsgw".into()),
                )
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("kmsgw");
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::INFO),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .init();
    EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!("exporting traces over OTLP/HTTP");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The exporter's HTTP client: the gateway's reqwest, run on the tokio runtime
/// (the SDK's batch exporter waits on its own thread).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    fn new() -> ExportClient {
        ExportClient {
            http: reqwest::Client::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let request = reqwest::Request::try_from(request)?;
        self.runtime
            .spawn(async move {
                let response = http.execute(request).await?.error_for_status()?;
                let mut answer = http::Response::builder().status(response.status());
                if let Some(headers) = answer.headers_mut() {
                    *headers = response.headers().clone();
                }
                let body = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
            })
            .await?
    }
}

/// One span per request: route, method and status, and — recorded by the
/// handlers — kid, provider, alg and outcome. A W3C `traceparent` from the
/// client makes it part of the client's trace.
pub async fn request_span(request: Request, next: Next) -> Response {
    let span = crate::span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = "server",
        http.route = tracing::field::Empty,
        http.request.method = %request.method(),
        http.response.status_code = tracing::field::Empty,
        kid = tracing::field::Empty,
        provider = tracing::field::Empty,
        alg = tracing::field::Empty,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    // Without an exporter the span is disabled: nothing more is done or allocated.
    if span.is_disabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str);
    span.record("otel.name", format!("{} {route}", request.method()));
    span.record("http.route", route);
    let parent = TraceContextPropagator::new().extract(&HeaderReader(request.headers()));
    let _ = span.set_parent(parent);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if status.is_success() {
        span.record("outcome", "ok");
    }
    response
}

/// Records what a request is about on the current request span (no-op when
/// traces are off).
pub fn record_key(kid: &str, provider: &str, alg: &str) {
    if !is_exporting() {
        return;
    }
    let span = Span::current();
    if !span.is_disabled() {
        span.record("kid", kid);
        span.record("provider", provider);
        span.record("alg", alg);
    }
}

/// Records a refusal's error code as the current request span's outcome.
pub fn record_outcome(code: &str) {
    if !is_exporting() {
        return;
    }
    let span = Span::current();
    if !span.is_disabled() {
        span.record("outcome", code);
    }
}

/// Adds the current span's W3C `traceparent` (and `tracestate`) to `headers`,
/// when traces are exported.
pub fn inject(headers: &mut http::HeaderMap) {
    if !is_exporting() {
        return;
    }
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderWriter(headers));
}

/// `request` with the current span's `traceparent`, when traces are exported.
pub fn traced(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    if !is_exporting() {
        return request;
    }
    let mut headers = http::HeaderMap::new();
    inject(&mut headers);
    request.headers(headers)
}

struct HeaderReader<'a>(&'a http::HeaderMap);

impl Extractor for HeaderReader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeaderWriter<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exporting;

    #[test]
    fn traces_are_exported_only_when_an_endpoint_is_set_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!exporting(env(&[])));
        assert!(!exporting(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(exporting(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4318"
        )])));
        assert!(exporting(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!exporting(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!exporting(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }
}
