//! Operating kmsgw under a client such as EUDIPLO: the client configuration the
//! README gives, credentials visible at the health probe, and key usage to find
//! keys nobody signs with.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use kmsgw_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

const TOKEN: &str = "eudiplo-signing-token-0123456789";
const OPS: &str = "ops-admin-token-0123456789abcdef";

fn signing_gateway(site: &Site) -> Gateway {
    site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "auth": {"apiKeys": [
            {"id": "eudiplo", "token": TOKEN, "scopes": ["keys:create", "keys:import", "keys:delete", "sign", "keys:read"]},
            {"id": "ops", "token": OPS, "scopes": ["admin"]},
        ]},
        "usage": {"flushMs": 200},
    }))
}

/// A gateway whose kms.json is `examples/eudiplo-http-kms.json`, as EUDIPLO would
/// load it: the same contract client (`http` provider) with the same fields.
fn eudiplo_like_client(site: &Site, signing: &Gateway, token: &str) -> Gateway {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/eudiplo-http-kms.json");
    let mut cmd = site.command(&["--config", example.to_str().unwrap()], &[]);
    cmd.env("KMSGW_URL", &signing.base)
        .env("KMSGW_TOKEN", token);
    Gateway::spawn(&mut cmd, site.dir.path().join("eudiplo-like.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_eudiplo_configuration_signs_and_a_wrong_token_shows_at_health() {
    let signing_site = Site::new(Db::Sqlite).await;
    let signing = signing_gateway(&signing_site);
    let client_site = Site::new(Db::Sqlite).await;
    let client = eudiplo_like_client(&client_site, &signing, TOKEN);

    let key = client.create(json!({"kid": "issuer-key"})).await;
    assert_eq!(key["provider"], "kmsgw");
    let signature = client.sign("issuer-key", b"credential").await;
    assert_verifies(&key["publicJwk"], b"credential", &signature);
    let (status, _) = signing
        .call(Some(TOKEN), Method::GET, "/keys/issuer-key", None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the key lives in the signing gateway"
    );
    let (_, health) = client.get("/health/kms").await;
    assert_eq!(health[1]["ok"], true, "{health}");

    // The probes: no credential is fine; a valid one is fine; a wrong one is 401.
    for path in ["/health", "/ready"] {
        assert_eq!(
            signing.call(None, Method::GET, path, None).await.0,
            StatusCode::OK
        );
        assert_eq!(
            signing.call(Some(TOKEN), Method::GET, path, None).await.0,
            StatusCode::OK
        );
        let (status, body) = signing
            .call(Some("a-wrong-or-expired-token"), Method::GET, path, None)
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("unauthorized")),
            "{path}: {body}"
        );
    }

    // The same client with a wrong token: its health probe reports it at once.
    let wrong_site = Site::new(Db::Sqlite).await;
    let wrong = eudiplo_like_client(&wrong_site, &signing, "a-wrong-or-expired-token");
    let (_, health) = wrong.get("/health/kms").await;
    assert_eq!(health[1]["ok"], false, "{health}");
    assert!(
        health[1]["error"].as_str().unwrap().contains("credentials"),
        "{health}"
    );
    let (status, _) = wrong.post("/keys", json!({"kid": "never"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

async fn usage_of(gw: &Gateway, kid: &str) -> (u64, Value) {
    let (status, key) = gw
        .call(Some(TOKEN), Method::GET, &format!("/keys/{kid}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    (
        key["signCount"].as_u64().unwrap(),
        key["lastUsedAt"].clone(),
    )
}

async fn unused(gw: &Gateway, window: &str) -> Vec<String> {
    let (status, page) = gw
        .call(
            Some(TOKEN),
            Method::GET,
            &format!("/keys?unusedFor={window}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

async fn sign_n(gw: &Gateway, kid: &str, n: usize) {
    for _ in 0..n {
        let (status, body) = gw
            .call(
                Some(TOKEN),
                Method::POST,
                &format!("/keys/{kid}/sign"),
                Some(json!({"data": "aGk="})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_counts_and_last_use_find_unused_keys_and_survive_restarts() {
    let site = Site::new(Db::Sqlite).await;
    let gw = signing_gateway(&site);
    for kid in ["busy", "once", "idle"] {
        let (status, body) = gw
            .call(
                Some(TOKEN),
                Method::POST,
                "/keys",
                Some(json!({"kid": kid})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["signCount"], 0);
        assert!(body["lastUsedAt"].is_null());
    }
    sign_n(&gw, "once", 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sign_n(&gw, "busy", 3).await;

    let (count, last) = usage_of(&gw, "busy").await;
    assert_eq!(count, 3);
    assert!(last.is_string());
    assert_eq!(usage_of(&gw, "once").await.0, 1);
    assert_eq!(usage_of(&gw, "idle").await, (0, Value::Null));
    // Not signed for a second: `once` (1.5 s ago) and `idle` (never, created 1.5 s ago).
    assert_eq!(unused(&gw, "1s").await, ["idle", "once"]);
    // Nothing has existed for an hour yet.
    assert!(unused(&gw, "1h").await.is_empty());
    let (_, metrics) = gw.text(Some(OPS), "/metrics").await;
    assert!(metrics.contains("kmsgw_keys_never_used 1"), "{metrics}");
    let (status, body) = gw
        .call(Some(TOKEN), Method::GET, "/keys?unusedFor=soon", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_query")),
        "{body}"
    );

    // Counted signs reach the database within the flush interval (200 ms): a
    // kill -9 after that loses none of them.
    sign_n(&gw, "busy", 2).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(gw);
    let gw = signing_gateway(&site);
    // The two keys that signed are loaded at start, the idle one is not.
    wait_until(Duration::from_secs(5), "the warm-up", || async {
        gw.log_text()
            .contains("warmed up the keys that signed last")
    })
    .await;
    let log = gw.log_text();
    assert!(log.contains("keys=2"), "{log}");
    assert_eq!(usage_of(&gw, "busy").await.0, 5);
    // A graceful stop writes what is pending at once.
    sign_n(&gw, "busy", 1).await;
    assert!(gw.stop().success());
    let gw = signing_gateway(&site);
    assert_eq!(usage_of(&gw, "busy").await.0, 6);
}

/// One usage flush carrying more keys than one UPDATE statement holds (256): every
/// key's count lands, on SQLite and PostgreSQL.
async fn a_flush_of_many_keys_counts_each(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "usage": {"flushMs": 60000},
    }));
    // 16 creates at a time (as the many-keys benchmark does).
    let keys: Vec<(String, Value)> = futures::stream::iter(0..600)
        .map(|i| {
            let gw = &gw;
            async move {
                let kid = format!("u{i}");
                let key = gw.create(json!({"kid": kid, "alg": "EdDSA"})).await;
                (kid, key["publicJwk"].clone())
            }
        })
        .buffered(16)
        .collect()
        .await;
    for (i, (kid, jwk)) in keys.iter().enumerate() {
        for _ in 0..=(i % 2) {
            assert_verifies(jwk, b"counted", &gw.sign(kid, b"counted").await);
        }
    }
    // Reading a key flushes every pending count in one transaction first.
    for i in [0, 255, 256, 257, 511, 512, 599] {
        let (_, key) = gw.get(&format!("/keys/u{i}")).await;
        assert_eq!(key["signCount"], 1 + i % 2, "u{i}: {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_many_keys_counts_each_on_sqlite() {
    a_flush_of_many_keys_counts_each(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_many_keys_counts_each_on_postgres() {
    a_flush_of_many_keys_counts_each(Db::Postgres).await;
}
