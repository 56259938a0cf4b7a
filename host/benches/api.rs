//! In-process costs around the signer: a whole sign request through the router
//! (JSON, base64, API-key check, metrics, audit) without the network, the audit
//! log's share of it, CSC `signHash` with 1 and 100 hashes per call, a catalog
//! lookup, and base64 handling.
//!
//! `cargo bench -p kmsgw --bench api`

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsgw::api::{AppState, Shared, app};
use kmsgw::audit::{Actor, Audit};
use kmsgw::auth::ApiKeys;
use kmsgw::catalog::Catalog;
use kmsgw::config::{AuditConfig, AuthConfig};
use kmsgw::crypto::master::MasterKey;
use kmsgw::crypto::{base64url, decode_base64};
use kmsgw::gateway::{Gateway, IssueRequest, NewKey, Registered};
use kmsgw::providers::db::DbProvider;
use tower::ServiceExt;

const BODY: &str = r#"{"data":"WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWg=="}"#;

async fn state(dir: &tempfile::TempDir, audit: bool) -> AppState {
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("bench.db").display()
    );
    let catalog = Catalog::connect(&url).await.unwrap();
    let master = Arc::new(MasterKey::from_bytes(&[9; 32]));
    let db = DbProvider::new("db".into(), catalog.clone(), master);
    let registered = vec![Registered {
        provider: Arc::new(db),
        description: None,
    }];
    let config = AuditConfig {
        enabled: audit,
        ..AuditConfig::default()
    };
    let audit = Audit::start(&config, catalog.clone());
    let gateway =
        Arc::new(Gateway::new(registered, "db".into(), catalog.clone()).with_audit(audit.clone()));
    gateway
        .create_key(
            Actor::default(),
            NewKey {
                kid: Some("bench".into()),
                ..NewKey::default()
            },
        )
        .await
        .unwrap();
    // A certificate makes the key a CSC credential.
    let certificate = IssueRequest {
        subject: "CN=bench".into(),
        validity_days: 1,
        ..IssueRequest::default()
    };
    gateway
        .issue_certificate(Actor::default(), "bench", &certificate)
        .await
        .unwrap();
    Shared::new(
        gateway,
        1 << 20,
        ApiKeys::new(&AuthConfig::default()),
        audit,
    )
    .into()
}

async fn sign_request(router: &axum::Router) {
    let request = Request::post("/keys/bench/sign")
        .body(Body::from(BODY))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

fn api(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("api");
    group.throughput(Throughput::Elements(1));
    for (name, audit) in [
        ("router_sign_audit_off", false),
        ("router_sign_audit_batched", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let router = runtime.block_on(async {
            let router = app(state(&dir, audit).await);
            sign_request(&router).await;
            router
        });
        group.bench_function(name, |b| b.iter(|| runtime.block_on(sign_request(&router))));
    }

    group.finish();

    // CSC signHash on db, audited: per hash, with 1 and 100 hashes per call.
    let mut group = c.benchmark_group("csc");
    let dir = tempfile::tempdir().unwrap();
    let router = runtime.block_on(async { app(state(&dir, true).await) });
    for hashes in [1usize, 100] {
        let hash = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x42u8; 32]);
        let body = serde_json::json!({
            "credentialID": "bench",
            "hashes": vec![hash; hashes],
            "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
            "signAlgo": "1.2.840.10045.4.3.2",
        })
        .to_string();
        let call = || async {
            let request = Request::post("/csc/v2/signatures/signHash")
                .body(Body::from(body.clone()))
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        };
        runtime.block_on(call());
        group.throughput(Throughput::Elements(hashes as u64));
        group.bench_function(format!("sign_hash_{hashes}"), |b| {
            b.iter(|| runtime.block_on(call()))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("api");
    let dir = tempfile::tempdir().unwrap();
    let catalog = runtime.block_on(async {
        let state = state(&dir, false).await;
        state.gateway.catalog().clone()
    });
    group.bench_function("catalog_get_sqlite", |b| {
        b.iter(|| runtime.block_on(catalog.get("bench")).unwrap().unwrap())
    });

    let message = [0x5au8; 100];
    let encoded = base64url(&message);
    group.bench_function("base64_decode_100B", |b| {
        b.iter(|| decode_base64(&encoded).unwrap())
    });
    group.bench_function("base64url_encode_64B", |b| {
        b.iter(|| base64url(&message[..64]))
    });
    group.finish();
}

criterion_group!(benches, api);
criterion_main!(benches);
