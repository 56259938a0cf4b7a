//! The REST contract, black-box against the real binary, on SQLite and PostgreSQL.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kmsgw_tests::*;
use reqwest::Method;
use serde_json::{Value, json};

on_both_databases!(
    the_jwks_has_an_etag_and_is_unchanged_until_a_key_changes,
    generate_sign_verify_import_delete,
    messages_from_empty_to_256_kib_sign_in_both_base64_forms,
    every_bad_input_gets_a_4xx_with_error_and_code,
    keys_survive_a_restart,
    private_keys_are_sealed_at_rest_and_never_logged,
    concurrent_creates_of_one_kid_yield_exactly_one_key,
    list_pages_through_every_key,
);

async fn generate_sign_verify_import_delete(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();

    let (status, body) = gw.get("/health").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"ok": true})));

    // Generate without a kid: one is assigned; the default provider is used.
    let created = gw.create(json!({})).await;
    let kid = created["kid"].as_str().unwrap().to_owned();
    assert_eq!(created["provider"], "db");
    assert_eq!(created["alg"], "ES256");
    assert_eq!(created["publicJwk"]["kid"], kid.as_str());
    let signature = gw.sign(&kid, b"hello kmsgw").await;
    assert_verifies(&created["publicJwk"], b"hello kmsgw", &signature);
    assert!(verify(&created["publicJwk"], b"hello kmsgW", &signature).is_err());

    // The JWKS publishes the same key.
    let (status, jwks) = gw.get("/.well-known/jwks.json").await;
    assert_eq!(status, StatusCode::OK);
    let published = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("key in JWKS")
        .clone();
    assert_verifies(&published, b"hello kmsgw", &signature);

    // The seed contract's request shape: {kid, alg}.
    let named = gw.create(json!({"kid": "issuer-1", "alg": "ES256"})).await;
    assert_eq!(named["kid"], "issuer-1");
    let signature = gw.sign("issuer-1", b"x").await;
    assert_verifies(&named["publicJwk"], b"x", &signature);

    // Import a known private key; the signature verifies with *its* public key.
    let (private, _) = known_private_jwk();
    let (status, imported) = gw
        .post(
            "/keys/imported-1/import",
            json!({"privateJwk": private, "alg": "ES256"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{imported}");
    assert_eq!(imported["publicJwk"]["x"], private["x"]);
    assert_eq!(imported["publicJwk"]["y"], private["y"]);
    assert!(
        imported["publicJwk"].get("d").is_none(),
        "private part leaked: {imported}"
    );
    let mut public_only = private.clone();
    public_only.as_object_mut().unwrap().remove("d");
    let signature = gw.sign("imported-1", b"imported").await;
    assert_verifies(&public_only, b"imported", &signature);

    let (status, record) = gw.get("/keys/imported-1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(record["provider"], "db");
    assert!(record.to_string().find("\"d\"").is_none());

    let (status, providers) = gw.get("/providers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(providers[0]["id"], "db");
    assert_eq!(providers[0]["capabilities"]["canImport"], true);
    let (status, health) = gw.get("/health/kms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health[0]["providerId"], "db");
    assert_eq!(health[0]["type"], "db");
    assert_eq!(health[0]["ok"], true);

    // Delete: 204, then the key is gone everywhere.
    let (status, body) = gw.delete("/keys/issuer-1").await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    let (status, body) = gw
        .post("/keys/issuer-1/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "key_not_found");
    assert_eq!(gw.get("/keys/issuer-1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(gw.delete("/keys/issuer-1").await.0, StatusCode::NOT_FOUND);
    let (_, jwks) = gw.get("/.well-known/jwks.json").await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != "issuer-1")
    );
    // The kid is free again, for a new key.
    let again = gw.create(json!({"kid": "issuer-1"})).await;
    assert_ne!(again["publicJwk"]["x"], named["publicJwk"]["x"]);
    let signature = gw.sign("issuer-1", b"y").await;
    assert_verifies(&again["publicJwk"], b"y", &signature);
}

async fn messages_from_empty_to_256_kib_sign_in_both_base64_forms(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    let key = gw.create(json!({"kid": "sizes"})).await;
    for size in [0usize, 1, 2, 3, 55, 64, 1000, 4097, 65_536, 262_144] {
        // Bytes near 0xff make `+`/`/` (standard) and `-`/`_` (url-safe) appear.
        let message: Vec<u8> = (0..size).map(|j| (j * 7 + 0xf8) as u8).collect();
        for data in [STANDARD.encode(&message), URL_SAFE_NO_PAD.encode(&message)] {
            let (status, body) = gw.post("/keys/sizes/sign", json!({"data": data})).await;
            assert_eq!(status, StatusCode::OK, "size {size}: {body}");
            assert_eq!(body["kid"], "sizes");
            assert_eq!(body["alg"], "ES256");
            assert_verifies(
                &key["publicJwk"],
                &message,
                body["signature"].as_str().unwrap(),
            );
        }
    }
}

async fn every_bad_input_gets_a_4xx_with_error_and_code(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    gw.create(json!({"kid": "taken"})).await;
    let (private, _) = known_private_jwk();
    let mut public_only = private.clone();
    public_only.as_object_mut().unwrap().remove("d");
    let mut wrong_curve = private.clone();
    wrong_curve["crv"] = "P-384".into();
    let mut off_curve = private.clone();
    off_curve["y"] = private["x"].clone();
    let mut short_d = private.clone();
    short_d["d"] = "AAAA".into();
    let rsa = json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"});
    let over_limit = format!("{{\"data\": \"{}\"}}", "A".repeat(1_100_000));

    let post = Method::POST;
    let body = |v: Value| Some(v.to_string());
    #[rustfmt::skip]
    let cases: Vec<(Method, &str, Option<String>, u16, &str)> = vec![
        (post.clone(), "/keys", Some("{\"kid\":".into()), 400, "malformed_json"),
        (post.clone(), "/keys", Some("{\"kid\": \"a\",}".into()), 400, "malformed_json"),
        (post.clone(), "/keys", Some("[1, 2]".into()), 400, "invalid_field"),
        (post.clone(), "/keys", body(json!({"kid": 5})), 400, "invalid_field"),
        (post.clone(), "/keys", body(json!({"kidd": "x"})), 400, "invalid_field"),
        (post.clone(), "/keys", body(json!({"alg": "ES999"})), 400, "unsupported_alg"),
        (post.clone(), "/keys", body(json!({"provider": "nope"})), 404, "provider_not_found"),
        (post.clone(), "/keys", body(json!({"kid": "has space"})), 400, "invalid_request"),
        (post.clone(), "/keys", body(json!({"kid": "taken"})), 409, "key_exists"),
        (post.clone(), "/keys/taken/sign", body(json!({"data": "***"})), 400, "invalid_base64"),
        (post.clone(), "/keys/taken/sign", body(json!({"data": 5})), 400, "invalid_field"),
        (post.clone(), "/keys/taken/sign", Some("{}".into()), 400, "invalid_field"),
        (post.clone(), "/keys/taken/sign", body(json!({"data": "aGk=", "alg": "HS256"})), 400, "unsupported_alg"),
        (post.clone(), "/keys/taken/sign", body(json!({"data": "aGk=", "alg": "RS256"})), 400, "invalid_request"),
        (post.clone(), "/keys/nope/sign", body(json!({"data": "aGk="})), 404, "key_not_found"),
        (post.clone(), "/keys/taken/sign", Some(over_limit), 413, "payload_too_large"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": public_only})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": wrong_curve})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": off_curve})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": short_d})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": rsa})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": "x"})), 400, "invalid_jwk"),
        (post.clone(), "/keys/imp/import", body(json!({"privateJwk": private, "provider": "nope"})), 404, "provider_not_found"),
        (post.clone(), "/keys/taken/import", body(json!({"privateJwk": private})), 409, "key_exists"),
        (Method::DELETE, "/keys/nope", None, 404, "key_not_found"),
        (Method::GET, "/keys/nope", None, 404, "key_not_found"),
        (Method::GET, "/keys?limit=abc", None, 400, "invalid_query"),
        (Method::GET, "/keys?limit=0", None, 400, "invalid_query"),
        (Method::GET, "/no/such/route", None, 404, "route_not_found"),
        (Method::PUT, "/keys", Some("{}".into()), 405, "method_not_allowed"),
    ];
    for (method, path, body, status, code) in cases {
        let shown = format!("{method} {path}");
        let (got, json) = gw.raw(method, path, body.map(String::into_bytes)).await;
        assert_eq!(got.as_u16(), status, "{shown}: {json}");
        assert_eq!(json["code"], code, "{shown}: {json}");
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{shown}: {json}"
        );
    }
    // Nothing was half-created by the failed imports, and the gateway still serves.
    assert_eq!(gw.get("/keys/imp").await.0, StatusCode::NOT_FOUND);
    assert_eq!(gw.get("/health").await.0, StatusCode::OK);
    assert!(!gw.log_text().contains("panicked"));
}

async fn keys_survive_a_restart(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    let created = gw.create(json!({"kid": "durable"})).await;
    let (private, _) = known_private_jwk();
    let (status, _) = gw
        .post("/keys/imported/import", json!({"privateJwk": private}))
        .await;
    assert_eq!(status, StatusCode::OK);
    gw.sign("durable", b"warm the cache").await;
    let status = gw.stop();
    assert!(
        status.success(),
        "SIGTERM must end the gateway cleanly: {status}"
    );

    let gw = site.start();
    let signature = gw.sign("durable", b"after restart").await;
    assert_verifies(&created["publicJwk"], b"after restart", &signature);
    let signature = gw.sign("imported", b"after restart").await;
    assert_verifies(&private, b"after restart", &signature);
}

async fn private_keys_are_sealed_at_rest_and_never_logged(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start_with(&[], &[("RUST_LOG", "debug")]);
    let (private, scalar) = known_private_jwk();
    let (status, _) = gw
        .post("/keys/secret/import", json!({"privateJwk": private}))
        .await;
    assert_eq!(status, StatusCode::OK);
    gw.sign("secret", b"m").await;
    gw.create(json!({"kid": "generated"})).await;
    let log = gw.log.clone();
    assert!(gw.stop().success());

    let mut files = files_under(&site.data_dir());
    files.push(log);
    if db == Db::Postgres {
        // Flush PostgreSQL's buffers so its data files hold the rows, then scan them.
        let url = site.database_url.as_ref().unwrap();
        let mut conn = <sqlx::postgres::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap();
        sqlx::query("CHECKPOINT").execute(&mut conn).await.unwrap();
        let pgdata = std::env::var("KMSGW_TEST_PGDATA").expect("KMSGW_TEST_PGDATA");
        files.extend(files_under(std::path::Path::new(&pgdata)));
    }
    assert_scalar_absent(&files, &scalar);
}

async fn concurrent_creates_of_one_kid_yield_exactly_one_key(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    for round in 0..3 {
        let kid = format!("race-{round}");
        let attempts = (0..8).map(|_| gw.post("/keys", json!({"kid": kid})));
        let results = futures::future::join_all(attempts).await;
        let winners: Vec<_> = results
            .iter()
            .filter(|(s, _)| *s == StatusCode::OK)
            .collect();
        let conflicts = results
            .iter()
            .filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "key_exists");
        assert_eq!(winners.len(), 1, "{results:?}");
        assert_eq!(conflicts.count(), 7, "{results:?}");
        let signature = gw.sign(&kid, b"race").await;
        assert_verifies(&winners[0].1["publicJwk"], b"race", &signature);
    }
    let (_, page) = gw.get("/keys").await;
    assert_eq!(page["keys"].as_array().unwrap().len(), 3);
}

async fn list_pages_through_every_key(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    let mut expected: Vec<String> = Vec::new();
    for i in 0..7 {
        let kid = format!("k{i:02}");
        gw.create(json!({"kid": kid})).await;
        expected.push(kid);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/keys?limit=3&cursor={c}"),
            None => "/keys?limit=3".to_owned(),
        };
        let (status, page) = gw.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for key in page["keys"].as_array().unwrap() {
            assert!(key["publicJwk"].get("d").is_none());
            seen.push(key["kid"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, expected);
}

async fn the_jwks_has_an_etag_and_is_unchanged_until_a_key_changes(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    gw.create(json!({"kid": "first"})).await;
    let (status, etag, body) = jwks_with_etag(&gw, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(etag.starts_with('"') && etag.len() == 66, "{etag}");
    assert!(body.contains("\"kid\":\"first\""), "{body}");
    let (status, again, body) = jwks_with_etag(&gw, Some(&etag)).await;
    assert_eq!(
        (status, again.as_str(), body.as_str()),
        (StatusCode::NOT_MODIFIED, etag.as_str(), "")
    );
    // Every change to what is published is a new document.
    let mut seen = vec![etag];
    for change in ["create", "rotate", "certificate", "delete"] {
        match change {
            "create" => drop(gw.create(json!({"kid": "second"})).await),
            "rotate" => drop(gw.post("/keys/first/rotate", json!({})).await),
            "certificate" => {
                let (status, body) = gw
                    .post(
                        "/keys/second/certificate/issue",
                        json!({"subject": "CN=second", "validityDays": 1}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
            }
            _ => assert_eq!(gw.delete("/keys/second").await.0, StatusCode::NO_CONTENT),
        }
        let (status, etag, body) = jwks_with_etag(&gw, seen.last().map(String::as_str)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "after {change}: the old document was still current"
        );
        assert!(!seen.contains(&etag), "after {change}: an ETag seen before");
        assert_eq!(
            body.contains("\"kid\":\"second\""),
            change != "delete",
            "{change}: {body}"
        );
        seen.push(etag);
    }
}
