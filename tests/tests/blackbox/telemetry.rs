//! OpenTelemetry traces: a receiver of OTLP/HTTP (protobuf) on loopback gets,
//! for a sign through `vault` (OpenBao) and one through a guest with egress
//! (`gcp-kms` against its emulator), one trace each under the client's
//! `traceparent`, spans nested request → catalog / backend / audit (→ guest →
//! its HTTP request), and the backends received the trace context. Without the
//! OTLP variables nothing is exported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use kmsgw_tests::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

use crate::cloud::{emulator_stats, gcp_entry, start_gcp};

/// A span as received: ids in hex, attributes as text.
#[derive(Clone, Debug)]
struct Received {
    trace_id: String,
    span_id: String,
    parent_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver that keeps every span it is sent.
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
    requests: Arc<Mutex<u32>>,
    url: String,
}

impl Receiver {
    async fn start_on(listener: tokio::net::TcpListener) -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(0));
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (kept, counted) = (Arc::clone(&spans), Arc::clone(&requests));
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let (kept, counted) = (Arc::clone(&kept), Arc::clone(&counted));
                async move {
                    *counted.lock().unwrap() += 1;
                    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    let mut kept = kept.lock().unwrap();
                    for resource in request.resource_spans {
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                kept.push(Received {
                                    trace_id: hex(&span.trace_id),
                                    span_id: hex(&span.span_id),
                                    parent_id: hex(&span.parent_span_id),
                                    name: span.name,
                                    attributes: span
                                        .attributes
                                        .into_iter()
                                        .map(|kv| (kv.key, text(kv.value.and_then(|v| v.value))))
                                        .collect(),
                                });
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        Vec::<u8>::new(),
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            spans,
            requests,
            url,
        }
    }

    /// The spans of `trace_id` once `count` of them have arrived.
    async fn trace(&self, trace_id: &str, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<Received> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if spans.len() >= count {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "trace {trace_id}: {} spans arrived, {count} expected: {spans:#?}",
                spans.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// The one span of `spans` named `name`.
fn named<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found: Vec<&Received> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` in {spans:#?}");
    found[0]
}

/// `child`'s parent is `parent`.
fn nests(child: &Received, parent: &Received) {
    assert_eq!(
        child.parent_id, parent.span_id,
        "`{}` under `{}`",
        child.name, parent.name
    );
}

/// Signs `message` with `kid` under the client's trace `trace_id` (parent span
/// `client_span`) and verifies the signature.
async fn traced_sign(
    gw: &Gateway,
    kid: &str,
    key: &Value,
    message: &[u8],
    trace_id: &str,
    client_span: &str,
) {
    use base64::Engine;
    let response = reqwest::Client::new()
        .post(format!("{}/keys/{kid}/sign", gw.base))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"data": base64::engine::general_purpose::STANDARD.encode(message)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_verifies(
        &key["publicJwk"],
        message,
        body["signature"].as_str().unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_through_vault_and_through_a_guest_each_make_one_nested_trace() {
    let receiver =
        Receiver::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await;
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    // OpenBao with a file audit device that keeps each request's `traceparent`.
    let audit_log = dir.join("openbao-audit.log");
    let audit_config = dir.join("openbao-audit.hcl");
    std::fs::write(
        &audit_config,
        format!(
            "audit \"file\" \"kmsgw-test\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
            audit_log.display()
        ),
    )
    .unwrap();
    let bao_port = free_port();
    let _bao = OpenBao::start_with(
        bao_port,
        dir,
        &[&format!("-config={}", audit_config.display())],
    );
    let (status, _) = reqwest::Client::new()
        .put(format!(
            "http://127.0.0.1:{bao_port}/v1/sys/config/auditing/request-headers/traceparent"
        ))
        .header("X-Vault-Token", "kmsgw-test-root")
        .json(&json!({"hmac": false}))
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert!(status.is_success(), "{status}");
    let (gcp, credentials) = start_gcp(dir, 3599);

    let config = json!({"defaultProvider": "vault", "providers": [
        {"id": "vault", "type": "vault", "vaultUrl": format!("http://127.0.0.1:{bao_port}"), "vaultToken": "kmsgw-test-root"},
        gcp_entry("gcp", gcp.port, &credentials),
    ]});
    let gw = site.start_with(
        &["--config", site.write_config(&config).to_str().unwrap()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "kmsgw-under-test"),
        ],
    );
    let vault_key = gw.create(json!({"kid": "traced-vault"})).await;
    let gcp_key = gw
        .create(json!({"kid": "traced-gcp", "provider": "gcp"}))
        .await;
    let message = b"a message whose bytes never reach a span";

    // Through vault.
    let (trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    traced_sign(&gw, "traced-vault", &vault_key, message, trace, client_span).await;
    let spans = receiver.trace(trace, 4).await;
    let request = named(&spans, "POST /keys/{kid}/sign");
    assert_eq!(
        request.parent_id, client_span,
        "the client's span is the parent"
    );
    for (name, value) in [
        ("http.route", "/keys/{kid}/sign"),
        ("kid", "traced-vault"),
        ("provider", "vault"),
        ("alg", "ES256"),
        ("outcome", "ok"),
        ("http.response.status_code", "200"),
    ] {
        assert_eq!(
            request.attributes.get(name).map(String::as_str),
            Some(value),
            "{name}: {request:#?}"
        );
    }
    let catalog = named(&spans, "catalog.key");
    let backend = named(&spans, "vault sign");
    let audit = named(&spans, "audit.record");
    for child in [catalog, backend, audit] {
        nests(child, request);
    }
    assert_eq!(backend.attributes["provider.id"], "vault");
    // OpenBao's audit device saw a request carrying this trace, from the backend span.
    let expected = format!("00-{trace}-{}-01", backend.span_id);
    let audited = std::fs::read_to_string(&audit_log).unwrap();
    assert!(
        audited.contains(&expected),
        "{expected} not in OpenBao's audit log"
    );

    // Through a guest whose backend is reached over wasi:http.
    let (trace, client_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    traced_sign(&gw, "traced-gcp", &gcp_key, message, trace, client_span).await;
    let spans = receiver.trace(trace, 6).await;
    let request = named(&spans, "POST /keys/{kid}/sign");
    assert_eq!(request.parent_id, client_span);
    assert_eq!(request.attributes["provider"], "gcp");
    let backend = named(&spans, "wasm sign");
    nests(backend, request);
    nests(named(&spans, "catalog.key"), request);
    nests(named(&spans, "audit.record"), request);
    let guest = named(&spans, "guest sign");
    nests(guest, backend);
    let egress: Vec<&Received> = spans
        .iter()
        .filter(|s| s.name.starts_with("guest POST") || s.name.starts_with("guest GET"))
        .collect();
    assert!(!egress.is_empty(), "{spans:#?}");
    for http in &egress {
        nests(http, guest);
    }
    let seen = emulator_stats(gcp.port).await;
    let carried: Vec<&str> = seen["traceparents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["traceparent"].as_str())
        .filter(|t| t.contains(trace))
        .collect();
    assert!(
        !carried.is_empty(),
        "the emulator saw no request of trace {trace}: {seen}"
    );
    for traceparent in &carried {
        assert!(
            egress
                .iter()
                .any(|http| *traceparent == format!("00-{trace}-{}-01", http.span_id)),
            "{traceparent} is not one of the guest's HTTP spans"
        );
    }

    // No attribute of any span holds the message (in any encoding) or a secret.
    use base64::Engine;
    let forbidden = [
        String::from_utf8_lossy(message).into_owned(),
        base64::engine::general_purpose::STANDARD.encode(message),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(message),
        sha256_of(message),
        "kmsgw-test-root".to_owned(),
    ];
    let account: Value =
        serde_json::from_str(&std::fs::read_to_string(&credentials).unwrap()).unwrap();
    let key_id = account["private_key_id"].as_str().unwrap();
    let all = receiver.spans.lock().unwrap().clone();
    assert!(all.len() >= 10, "{all:#?}");
    for span in &all {
        for (key, value) in &span.attributes {
            for secret in
                forbidden
                    .iter()
                    .map(String::as_str)
                    .chain([key_id, "PRIVATE KEY", "Bearer"])
            {
                assert!(
                    !value.contains(secret),
                    "{key} of `{}` holds {secret}",
                    span.name
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_otlp_variables_nothing_is_exported() {
    // The exporters' default endpoint, in case the gateway used it anyway.
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:4318").await else {
        panic!("port 4318 (OTLP/HTTP's default) is taken on this machine; the test needs it free");
    };
    let receiver = Receiver::start_on(listener).await;
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_with(&[], &[]);
    let key = gw.create(json!({"kid": "untraced"})).await;
    traced_sign(
        &gw,
        "untraced",
        &key,
        b"m",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(gw);
    assert_eq!(
        *receiver.requests.lock().unwrap(),
        0,
        "nothing sent to the default endpoint"
    );
}
