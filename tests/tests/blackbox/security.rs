//! API keys, scopes and tenants, the audit log, metrics: black-box against the binary.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kmsgw_tests::audit::Tamper;
use kmsgw_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

/// One API key per scope, plus tenant keys; tokens are `<id>-token-0123456789`.
fn token(id: &str) -> String {
    format!("{id}-token-0123456789")
}

fn key(id: &str, scopes: &[&str], tenant: Option<&str>) -> Value {
    let mut key = json!({"id": id, "token": token(id), "scopes": scopes});
    if let Some(tenant) = tenant {
        key["tenant"] = json!(tenant);
    }
    key
}

fn config_with_keys(keys: Vec<Value>) -> Value {
    json!({"providers": [{"id": "db", "type": "db"}], "auth": {"apiKeys": keys}})
}

fn b64(message: &[u8]) -> String {
    STANDARD.encode(message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_401_401_403_and_2xx_by_credential() {
    let site = Site::new(Db::Sqlite).await;
    let scopes = [
        "keys:read",
        "keys:create",
        "keys:import",
        "keys:delete",
        "sign",
        "admin",
    ];
    let keys = scopes
        .iter()
        .map(|s| key(&s.replace(':', "-"), &[s], None))
        .collect();
    let gw = site.start_configured(&config_with_keys(keys));
    let (private, _) = known_private_jwk();
    // (method, path, body, scope, success status), in an order where each succeeds.
    let routes: Vec<(Method, &str, Option<Value>, &str, u16)> = vec![
        (
            Method::POST,
            "/keys",
            Some(json!({"kid": "m1"})),
            "keys:create",
            200,
        ),
        (Method::GET, "/keys", None, "keys:read", 200),
        (Method::GET, "/keys/m1", None, "keys:read", 200),
        (
            Method::GET,
            "/.well-known/jwks.json",
            None,
            "keys:read",
            200,
        ),
        (Method::GET, "/providers", None, "keys:read", 200),
        (
            Method::POST,
            "/keys/m1/sign",
            Some(json!({"data": b64(b"x")})),
            "sign",
            200,
        ),
        (
            Method::POST,
            "/keys/m2/import",
            Some(json!({"privateJwk": private})),
            "keys:import",
            200,
        ),
        (Method::GET, "/health/kms", None, "admin", 200),
        (Method::GET, "/audit", None, "admin", 200),
        (Method::GET, "/audit/verify", None, "admin", 200),
        (Method::GET, "/metrics", None, "admin", 200),
        (
            Method::POST,
            "/keys/m1/verify",
            Some(json!({"data": b64(b"x"), "signature": "AAAA"})),
            "keys:read",
            200,
        ),
        (
            Method::POST,
            "/keys/m1/sign/batch",
            Some(json!({"data": [b64(b"x"), b64(b"y")]})),
            "sign",
            200,
        ),
        (Method::POST, "/keys/m1/rotate", None, "keys:create", 200),
        (
            Method::PUT,
            "/keys/m1/rotation",
            Some(json!({"grace": "1h"})),
            "keys:create",
            200,
        ),
        (Method::DELETE, "/keys/m1", None, "keys:delete", 204),
    ];
    for (method, path, body, scope, success) in routes {
        let right = token(&scope.replace(':', "-"));
        // A key holding some other scope (never admin, which holds them all).
        let other = if scope == "sign" { "keys:read" } else { "sign" };
        let wrong = token(&other.replace(':', "-"));
        let cases = [
            (None, 401),
            (Some("not-a-configured-token-at-all"), 401),
            (Some(wrong.as_str()), 403),
            (Some(right.as_str()), success),
        ];
        for (credential, expected) in cases {
            let (status, answer) = if path == "/metrics" {
                let (status, text) = gw.text(credential, path).await;
                (status, serde_json::from_str(&text).unwrap_or(json!(text)))
            } else {
                gw.call(credential, method.clone(), path, body.clone())
                    .await
            };
            assert_eq!(
                status.as_u16(),
                expected,
                "{method} {path} with {credential:?}: {answer}"
            );
            if expected == 401 || expected == 403 {
                let code = if expected == 401 {
                    "unauthorized"
                } else {
                    "forbidden"
                };
                assert_eq!(answer["code"], code, "{method} {path}: {answer}");
            }
        }
    }
    // Probes and the API description need no key.
    for path in ["/health", "/ready", "/openapi.json"] {
        let (status, _) = gw.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // Tokens never reach the log.
    let log = gw.log_text();
    for scope in scopes {
        assert!(
            !log.contains(&token(&scope.replace(':', "-"))),
            "a token was logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_gateway_may_listen_beyond_loopback() {
    let site = Site::new(Db::Sqlite).await;
    let config = site.write_config(&config_with_keys(vec![key("ops", &["admin"], None)]));
    let gw = site.start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        &[],
    );
    let (status, _) = gw
        .call(Some(&token("ops")), Method::GET, "/keys", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = gw.call(None, Method::GET, "/keys", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_providers_api_key_is_a_client_credential() {
    let site = Site::new(Db::Sqlite).await;
    let signing = site.start_configured(&config_with_keys(vec![key(
        "edge",
        &["keys:create", "sign", "keys:delete"],
        None,
    )]));
    let edge_site = Site::new(Db::Sqlite).await;
    let http = |api_key: &str| json!({"id": "remote", "type": "http", "baseUrl": signing.base, "apiKey": api_key});
    let edge = edge_site.start_configured(&json!({
        "defaultProvider": "remote",
        "providers": [http(&token("edge"))],
    }));
    let created = edge.create(json!({"kid": "chained"})).await;
    let signature = edge.sign("chained", b"through two gateways").await;
    assert_verifies(&created["publicJwk"], b"through two gateways", &signature);

    let wrong_site = Site::new(Db::Sqlite).await;
    let wrong = wrong_site.start_configured(&json!({
        "defaultProvider": "remote",
        "providers": [http("wrong-token-0123456789")],
    }));
    let (status, body) = wrong.post("/keys", json!({"kid": "refused"})).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("API key"),
        "the remote's reason is passed on: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_with_the_same_kid_hold_different_keys_and_see_only_their_own() {
    let site = Site::new(Db::Sqlite).await;
    let all = ["keys:read", "keys:create", "keys:delete", "sign"];
    let gw = site.start_configured(&config_with_keys(vec![
        key("acme", &all, Some("acme")),
        key("globex", &all, Some("globex")),
        key("ops", &["admin"], None),
    ]));
    let (acme, globex, ops) = (token("acme"), token("globex"), token("ops"));
    let create = |tok: String, kid: &'static str| {
        let gw = &gw;
        async move {
            let (status, body) = gw
                .call(Some(&tok), Method::POST, "/keys", Some(json!({"kid": kid})))
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let sign = |tok: String, kid: &'static str| {
        let gw = &gw;
        async move {
            let path = format!("/keys/{kid}/sign");
            gw.call(
                Some(&tok),
                Method::POST,
                &path,
                Some(json!({"data": b64(b"m")})),
            )
            .await
        }
    };
    let a = create(acme.clone(), "shared").await;
    let g = create(globex.clone(), "shared").await;
    let o = create(ops.clone(), "shared").await;
    create(acme.clone(), "acme-only").await;
    assert_eq!(a["kid"], "shared");
    assert_ne!(a["publicJwk"]["x"], g["publicJwk"]["x"]);
    assert_ne!(a["publicJwk"]["x"], o["publicJwk"]["x"]);

    // Each tenant's `shared` signs with its own key only.
    for (tok, mine, theirs) in [(&acme, &a, &g), (&globex, &g, &a), (&ops, &o, &a)] {
        let (status, body) = sign(tok.clone(), "shared").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let signature = body["signature"].as_str().unwrap();
        assert_verifies(&mine["publicJwk"], b"m", signature);
        assert!(verify(&theirs["publicJwk"], b"m", signature).is_err());
    }

    // globex (and the tenantless operator) cannot sign with, read, or delete acme's key.
    for tok in [&globex, &ops] {
        let (status, _) = sign(tok.clone(), "acme-only").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = gw
            .call(Some(tok), Method::GET, "/keys/acme-only", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = gw
            .call(Some(tok), Method::DELETE, "/keys/acme-only", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    // The id the gateway uses inside does not reach another tenant's key either.
    let (status, _) = gw
        .call(Some(&ops), Method::GET, "/keys/acme~acme-only", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Lists and JWKS are per tenant.
    let kids_of = |body: &Value, field: &str, name: &str| -> Vec<String> {
        let mut kids: Vec<String> = body[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k[name].as_str().unwrap().to_owned())
            .collect();
        kids.sort();
        kids
    };
    for (tok, expected) in [
        (&acme, vec!["acme-only", "shared"]),
        (&globex, vec!["shared"]),
        (&ops, vec!["shared"]),
    ] {
        let (_, list) = gw.call(Some(tok), Method::GET, "/keys", None).await;
        assert_eq!(kids_of(&list, "keys", "kid"), expected);
        let (_, jwks) = gw
            .call(Some(tok), Method::GET, "/.well-known/jwks.json", None)
            .await;
        assert_eq!(kids_of(&jwks, "keys", "kid"), expected);
    }
    let (_, jwks) = gw
        .call(Some(&globex), Method::GET, "/.well-known/jwks.json", None)
        .await;
    assert_eq!(jwks["keys"][0]["x"], g["publicJwk"]["x"]);

    // Deleting acme's `shared` leaves the others' alone.
    let (status, _) = gw
        .call(Some(&acme), Method::DELETE, "/keys/shared", None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(sign(acme.clone(), "shared").await.0, StatusCode::NOT_FOUND);
    assert_eq!(sign(globex.clone(), "shared").await.0, StatusCode::OK);
    assert_eq!(sign(ops.clone(), "shared").await.0, StatusCode::OK);
}

on_both_databases!(the_audit_log_holds_exactly_what_happened_and_catches_tampering);

async fn the_audit_log_holds_exactly_what_happened_and_catches_tampering(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start_configured(&config_with_keys(vec![
        key("ops", &["admin"], None),
        key("acme", &["keys:create", "sign"], Some("acme")),
    ]));
    let (ops, acme) = (token("ops"), token("acme"));
    let (private, _) = known_private_jwk();
    let sign_body = |m: &[u8]| Some(json!({"data": b64(m)}));
    let steps: Vec<(&str, Method, &str, Option<Value>, u16)> = vec![
        (&ops, Method::POST, "/keys", Some(json!({"kid": "k1"})), 200),
        (
            &ops,
            Method::POST,
            "/keys/k1/sign",
            sign_body(b"first message"),
            200,
        ),
        (
            &ops,
            Method::POST,
            "/keys/nope/sign",
            sign_body(b"second"),
            404,
        ),
        (
            &ops,
            Method::POST,
            "/keys/k2/import",
            Some(json!({"privateJwk": private})),
            200,
        ),
        (
            &acme,
            Method::POST,
            "/keys",
            Some(json!({"kid": "k1"})),
            200,
        ),
        (
            &acme,
            Method::POST,
            "/keys/k1/sign",
            sign_body(b"tenant message"),
            200,
        ),
        (&ops, Method::POST, "/keys", Some(json!({"kid": "k1"})), 409),
        (&ops, Method::DELETE, "/keys/k1", None, 204),
    ];
    for (tok, method, path, body, expected) in &steps {
        let (status, answer) = gw.call(Some(tok), method.clone(), path, body.clone()).await;
        assert_eq!(status.as_u16(), *expected, "{method} {path}: {answer}");
    }
    // Reads are not audited; a 403 is not an operation either.
    gw.call(Some(&ops), Method::GET, "/keys", None).await;
    let (status, _) = gw.call(Some(&acme), Method::DELETE, "/keys/k1", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let sha = sha256_of;
    // (api key, tenant, action, kid, provider, outcome, message hash)
    let expected: Vec<(&str, Value, &str, &str, Value, &str, Value)> = vec![
        (
            "ops",
            Value::Null,
            "create",
            "k1",
            json!("db"),
            "ok",
            Value::Null,
        ),
        (
            "ops",
            Value::Null,
            "sign",
            "k1",
            json!("db"),
            "ok",
            json!(sha(b"first message")),
        ),
        (
            "ops",
            Value::Null,
            "sign",
            "nope",
            Value::Null,
            "key_not_found",
            json!(sha(b"second")),
        ),
        (
            "ops",
            Value::Null,
            "import",
            "k2",
            json!("db"),
            "ok",
            Value::Null,
        ),
        (
            "acme",
            json!("acme"),
            "create",
            "k1",
            json!("db"),
            "ok",
            Value::Null,
        ),
        (
            "acme",
            json!("acme"),
            "sign",
            "k1",
            json!("db"),
            "ok",
            json!(sha(b"tenant message")),
        ),
        (
            "ops",
            Value::Null,
            "create",
            "k1",
            Value::Null,
            "key_exists",
            Value::Null,
        ),
        (
            "ops",
            Value::Null,
            "delete",
            "k1",
            json!("db"),
            "ok",
            Value::Null,
        ),
    ];
    // Batched sign records are committed within moments; wait for all of them.
    let mut records = Vec::new();
    for _ in 0..50 {
        let (status, page) = gw
            .call(Some(&ops), Method::GET, "/audit?limit=1000", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        records = page["records"].as_array().unwrap().clone();
        if records.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(records.len(), expected.len(), "{records:#?}");
    for (i, (record, want)) in records.iter().zip(&expected).enumerate() {
        let got = (
            record["apiKey"].as_str().unwrap(),
            record["tenant"].clone(),
            record["action"].as_str().unwrap(),
            record["kid"].as_str().unwrap(),
            record["provider"].clone(),
            record["outcome"].as_str().unwrap(),
            record["messageSha256"].clone(),
        );
        assert_eq!(&got, want, "record {i}: {record}");
        assert_eq!(record["seq"], i + 1);
    }
    // Filters; a tenant's key sees its tenant's records only.
    let (_, signs) = gw
        .call(Some(&ops), Method::GET, "/audit?action=sign&kid=k1", None)
        .await;
    assert_eq!(signs["records"].as_array().unwrap().len(), 2);
    let (_, mine) = gw.call(Some(&acme), Method::GET, "/audit", None).await;
    assert_eq!(mine["code"], "forbidden", "the audit log needs admin");

    let (status, verdict) = gw
        .call(Some(&ops), Method::GET, "/audit/verify", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verdict, json!({"ok": true, "checked": expected.len()}));

    // Change one field of record 4 (an import: a row of its own) directly in
    // the database.
    let verify = async || {
        gw.call(Some(&ops), Method::GET, "/audit/verify", None)
            .await
            .1
    };
    site.tamper_audit(4, Tamper::Set("kid", json!("k3"))).await;
    assert_eq!(
        verify().await,
        json!({"ok": false, "checked": 3, "firstBadSeq": 4})
    );
    // Removing a record breaks the chain too (record 6, a sign: in a link).
    site.tamper_audit(4, Tamper::Set("kid", json!("k2"))).await;
    assert_eq!(verify().await["ok"], true);
    let bad = site.tamper_audit(6, Tamper::Remove).await;
    assert_eq!(
        verify().await,
        json!({"ok": false, "checked": bad - 1, "firstBadSeq": bad})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_requests_sign_latency_and_guest_counters_moving() {
    let site = Site::new(Db::Sqlite).await;
    let hostile = guest("hostile");
    let gw = site.start_configured(&json!({
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "bad", "type": "wasm", "component": hostile,
             "limits": {"timeoutMs": 300, "instances": 1}},
        ],
    }));
    let sample = |text: &str, prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0.0, |v| v.parse().unwrap())
    };
    let (status, before) = gw.text(None, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sample(
            &before,
            r#"kmsgw_sign_duration_seconds_count{provider="db"}"#
        ),
        0.0
    );
    assert_eq!(
        sample(&before, r#"kmsgw_guest_traps_total{provider="bad"}"#),
        0.0
    );
    assert_eq!(
        sample(&before, r#"kmsgw_provider_up{provider="db",type="db"}"#),
        1.0
    );
    assert_eq!(
        sample(&before, r#"kmsgw_guest_instances{provider="bad"}"#),
        1.0
    );

    gw.create(json!({"kid": "m"})).await;
    for _ in 0..5 {
        gw.sign("m", b"counted").await;
    }
    let bad = gw.create(json!({"kid": "t", "provider": "bad"})).await;
    assert_eq!(bad["provider"], "bad");
    for (kid, expected) in [("trap", 502), ("loop", 504)] {
        // The hostile guest traps or loops when asked to sign these messages.
        let (status, body) = gw
            .post("/keys/t/sign", json!({"data": b64(kid.as_bytes())}))
            .await;
        assert_eq!(status.as_u16(), expected, "{body}");
    }
    let (_, after) = gw.text(None, "/metrics").await;
    assert_eq!(
        sample(
            &after,
            r#"kmsgw_sign_duration_seconds_count{provider="db"}"#
        ),
        5.0
    );
    assert!(after.contains(r#"kmsgw_sign_duration_seconds_bucket{provider="db",le="0.005"}"#));
    assert_eq!(
        sample(&after, r#"kmsgw_guest_traps_total{provider="bad"}"#),
        1.0
    );
    assert_eq!(
        sample(&after, r#"kmsgw_guest_timeouts_total{provider="bad"}"#),
        1.0
    );
    assert!(
        sample(
            &after,
            r#"kmsgw_http_requests_total{method="POST",route="/keys/{kid}/sign",status="200"}"#
        ) >= 5.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_the_provider_that_has_not_initialised() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "remote", "type": "http", "baseUrl": "http://127.0.0.1:9", "connectTimeoutMs": 200},
    ]}));
    let (status, body) = gw.get("/ready").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["ready"], false);
    let waiting = body["waitingFor"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{body}");
    assert_eq!(waiting[0]["providerId"], "remote");
    assert!(!waiting[0]["error"].as_str().unwrap().is_empty());
    // Liveness is unaffected, and the db provider serves meanwhile.
    assert_eq!(gw.get("/health").await.0, StatusCode::OK);
    gw.create(json!({"kid": "still-serving"})).await;
}
