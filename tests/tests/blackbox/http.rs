//! The `http` provider against the reference remote-KMS service with every auth
//! mode, against a second kmsgw, and against backends that hang or talk nonsense.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::{any, post};
use kmsgw_tests::*;
use serde_json::{Value, json};

fn http_entry(id: &str, base: &str, extra: Value) -> Value {
    let mut entry = json!({"id": id, "type": "http", "baseUrl": base, "canImport": true});
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    entry
}

/// Generate, sign (two sizes), import, delete: all through the gateway, all verified.
async fn round_trip(gw: &Gateway, provider: &str) {
    let kid = format!("{provider}-k");
    let key = gw.create(json!({"kid": kid, "provider": provider})).await;
    for message in [&b"short"[..], &[7u8; 20_000]] {
        let signature = gw.sign(&kid, message).await;
        assert_verifies(&key["publicJwk"], message, &signature);
    }
    import_known_key_and_verify(gw, &format!("{provider}-imported"), provider).await;
    delete_and_check_gone(gw, &kid).await;
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_and_bearer_auth_and_a_wrong_token_is_a_clear_502() {
    let site = Site::new(Db::Sqlite).await;
    let open = start_remote_kms(site.dir.path(), &[]);
    let guarded_dir = tempfile::tempdir().unwrap();
    let guarded = start_remote_kms(guarded_dir.path(), &["--token", "s3cret-token"]);
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        http_entry("open", &open.base, json!({"auth": {"type": "none"}})),
        http_entry("bearer", &guarded.base, json!({"apiKey": "s3cret-token"})),
        http_entry("wrong", &guarded.base, json!({"auth": {"type": "bearer", "token": "not-the-token"}})),
    ]}));
    round_trip(&gw, "open").await;
    round_trip(&gw, "bearer").await;

    let (status, body) = gw
        .post("/keys", json!({"kid": "w", "provider": "wrong"}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("refused the gateway's credentials") && message.contains("401"),
        "{message}"
    );
    assert!(!gw.log_text().contains("not-the-token") && !gw.log_text().contains("s3cret-token"));

    let (_, health) = gw.get("/health/kms").await;
    let by_id = |id: &str| {
        health
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["providerId"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("open")["ok"], true);
    assert_eq!(by_id("wrong")["ok"], false, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_fetches_one_token_for_many_signs_and_a_new_one_after_expiry() {
    let site = Site::new(Db::Sqlite).await;
    let remote = start_remote_kms(site.dir.path(), &["--token", "issued-token"]);
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = issued.clone();
    let token_url = serve(Router::new().route(
        "/token",
        post(move |body: String| {
            let counter = counter.clone();
            async move {
                assert!(body.contains("grant_type=client_credentials"), "{body}");
                assert!(body.contains("client_id=kmsgw") && body.contains("client_secret=c-secret"), "{body}");
                counter.fetch_add(1, Ordering::SeqCst);
                // 32 s minus the 30 s early refresh: the token is reused for 2 s.
                axum::Json(json!({"access_token": "issued-token", "token_type": "Bearer", "expires_in": 32}))
            }
        }),
    ))
    .await;
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        http_entry("oauth", &remote.base, json!({"auth": {
            "type": "oauth2-client-credentials", "tokenUrl": format!("{token_url}/token"),
            "clientId": "kmsgw", "clientSecret": "c-secret"}})),
    ]}));
    let key = gw.create(json!({"kid": "o", "provider": "oauth"})).await;
    for i in 0..10 {
        let message = format!("message {i}");
        let signature = gw.sign("o", message.as_bytes()).await;
        assert_verifies(&key["publicJwk"], message.as_bytes(), &signature);
    }
    assert_eq!(
        issued.load(Ordering::SeqCst),
        1,
        "one token serves many requests"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let signature = gw.sign("o", b"after expiry").await;
    assert_verifies(&key["publicJwk"], b"after expiry", &signature);
    assert_eq!(issued.load(Ordering::SeqCst), 2, "a new token after expiry");
    assert!(!gw.log_text().contains("c-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_works_with_the_client_certificate_and_the_service_refuses_without_it() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["kmsgw-client".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = write("ca.pem", ca_cert.pem());
    let server_pem = write("server.pem", server_cert.pem());
    let server_key_pem = write("server.key", server_key.serialize_pem());
    let client_pem = write("client.pem", client_cert.pem());
    let client_key_pem = write("client.key", client_key.serialize_pem());

    let remote = start_remote_kms(
        dir,
        &[
            "--tls-cert",
            &server_pem,
            "--tls-key",
            &server_key_pem,
            "--client-ca",
            &ca,
        ],
    );
    let base = remote.base.replace("127.0.0.1", "localhost");
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        http_entry("mtls", &base, json!({"auth": {"type": "mtls", "certFile": client_pem, "keyFile": client_key_pem, "caFile": ca}})),
    ]}));
    round_trip(&gw, "mtls").await;

    // The same service, trusted but without a client certificate: refused.
    let ca_cert = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca_cert)
        .build()
        .unwrap();
    let refused = client.get(format!("{base}/health")).send().await;
    assert!(
        refused.is_err(),
        "the service answered a client without a certificate: {refused:?}"
    );
    assert!(!gw.log_text().contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_gateway_chains_to_a_signing_gateway() {
    let signing_site = Site::new(Db::Sqlite).await;
    let signing = signing_site.start();
    let edge_site = Site::new(Db::Sqlite).await;
    let edge = edge_site.start_configured(&json!({"defaultProvider": "signing", "providers": [
        {"id": "db", "type": "db"},
        http_entry("signing", &signing.base, json!({})),
    ]}));
    round_trip(&edge, "signing").await;
    // The keys live in the signing gateway.
    assert_eq!(
        signing.get("/keys/signing-imported").await.0,
        StatusCode::OK
    );
    assert_eq!(
        signing.get("/keys/signing-k").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_backend_is_a_504_within_the_timeout_and_garbage_is_a_502() {
    // Accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_base = format!("http://{}", silent.local_addr().unwrap());
    let garbage_base = serve(Router::new().fallback(any(|| async { "this is not JSON" }))).await;
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        http_entry("silent", &silent_base, json!({"timeoutMs": 400})),
        http_entry("garbage", &garbage_base, json!({})),
    ]}));
    let started = Instant::now();
    let (status, body) = gw
        .post("/keys", json!({"kid": "s", "provider": "silent"}))
        .await;
    let elapsed = started.elapsed();
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("backend_timeout")),
        "{body}"
    );
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_millis(1000),
        "{elapsed:?}"
    );

    let (status, body) = gw
        .post("/keys", json!({"kid": "g", "provider": "garbage"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("backend_error")),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("publicJwk"),
        "{body}"
    );
    // Nothing was recorded for either failure.
    assert_eq!(gw.get("/keys/s").await.0, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("/keys/g").await.0, StatusCode::NOT_FOUND);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_passes_every_alg_to_the_reference_remote_kms() {
    let dir = tempfile::tempdir().unwrap();
    let remote = start_remote_kms(dir.path(), &[]);
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            http_entry("remote", &remote.base, json!({"canImport": true, "algs": ALGS})),
        ]
    }));
    alg_matrix(&gw, "remote", true).await;
    let key = gw
        .create(
            json!({"kid": "remote-4096", "alg": "RS256", "keySize": 4096, "provider": "remote"}),
        )
        .await;
    let signature = gw.sign("remote-4096", b"4096").await;
    assert_verifies(&key["publicJwk"], b"4096", &signature);
}
