//! The `vault` provider against a real OpenBao dev server (same Transit API as
//! HashiCorp Vault), including the backend going away and coming back.

use std::time::{Duration, Instant};

use kmsgw_tests::*;
use serde_json::json;

/// A new OpenBao, and a gateway on `site` with a `db` provider and it as `vault`
/// (with the scheduler every 250 ms when `scheduler`).
pub(crate) fn beside_openbao(site: &Site, scheduler: bool) -> (OpenBao, Gateway) {
    let port = free_port();
    let bao = OpenBao::start(port, site.dir.path());
    let providers = json!([
        {"id": "db", "type": "db"},
        {"id": "vault", "type": "vault", "vaultUrl": format!("http://127.0.0.1:{port}"), "vaultToken": "kmsgw-test-root"},
    ]);
    let config = if scheduler {
        crate::rotation::with_scheduler(providers)
    } else {
        json!({ "providers": providers })
    };
    (bao, site.start_configured(&config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_signs_imports_deletes_and_survives_the_backend_going_away() {
    let site = Site::new(Db::Sqlite).await;
    let port = free_port();
    let bao = OpenBao::start(port, site.dir.path());
    let gw = site.start_configured(&json!({"defaultProvider": "vault", "providers": [
        {"id": "db", "type": "db"},
        {"id": "vault", "type": "vault", "vaultUrl": format!("http://127.0.0.1:{port}"), "vaultToken": "kmsgw-test-root"},
    ]}));

    let key = gw.create(json!({"kid": "issuer:1"})).await;
    assert_eq!(key["provider"], "vault");
    let big: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    for message in [&b"short"[..], &big] {
        let signature = gw.sign("issuer:1", message).await;
        assert_verifies(&key["publicJwk"], message, &signature);
    }

    let (private, _) = known_private_jwk();
    let (status, body) = gw
        .post("/keys/imported/import", json!({"privateJwk": private}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signature = gw.sign("imported", b"imported into Transit").await;
    assert_verifies(&private, b"imported into Transit", &signature);

    assert_eq!(gw.delete("/keys/imported").await.0, StatusCode::NO_CONTENT);
    let (status, _) = gw
        .post("/keys/imported/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, health) = gw.get("/health/kms").await;
    assert_eq!(health[1]["ok"], true, "{health}");
    assert!(
        !gw.log_text().contains("kmsgw-test-root"),
        "the token was logged"
    );

    // The backend goes away: health says why, sign is a 503, nothing hangs.
    drop(bao);
    let (_, health) = gw.get("/health/kms").await;
    assert_eq!(health[1]["ok"], false, "{health}");
    assert!(
        health[1]["error"].as_str().unwrap().contains("unreachable"),
        "{health}"
    );
    let started = Instant::now();
    let (status, body) = gw
        .post("/keys/issuer:1/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A new dev server on the same address: the gateway recovers without a restart.
    let _bao = OpenBao::start(port, site.dir.path());
    let (_, health) = gw.get("/health/kms").await;
    assert_eq!(health[1]["ok"], true, "{health}");
    let started = Instant::now();
    let (status, body) = gw
        .post("/keys/issuer:1/sign", json!({"data": "eA=="}))
        .await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::BAD_GATEWAY,
        "a key of the lost server: {status} {body}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let fresh = gw.create(json!({"kid": "after-restart"})).await;
    let signature = gw.sign("after-restart", b"recovered").await;
    assert_verifies(&fresh["publicJwk"], b"recovered", &signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_signs_every_transit_key_type_generated_and_imported() {
    let site = Site::new(Db::Sqlite).await;
    let (_bao, gw) = beside_openbao(&site, false);
    alg_matrix(&gw, "vault", true).await;
    // Above 32 KiB the host hashes and sends `prehashed` (not for Ed25519).
    let big: Vec<u8> = (0..100_000).map(|i| (i % 251) as u8).collect();
    for alg in ALGS {
        let kid = format!("vault-{}", alg.to_ascii_lowercase());
        let (_, key) = gw.get(&format!("/keys/{kid}")).await;
        let signature = gw.sign(&kid, &big).await;
        assert_verifies(&key["publicJwk"], &big, &signature);
    }
    let key = gw
        .create(
            json!({"kid": "vault-rsa-3072", "alg": "PS256", "keySize": 3072, "provider": "vault"}),
        )
        .await;
    let signature = gw.sign("vault-rsa-3072", b"3072").await;
    assert_eq!(signature.len(), 512, "a 384-byte signature in base64url");
    assert_verifies(&key["publicJwk"], b"3072", &signature);
}

/// The status of `GET /v1/transit/keys/{name}` on OpenBao.
async fn transit_key_status(port: u16, name: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/transit/keys/{name}"))
        .header("X-Vault-Token", "kmsgw-test-root")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_rotation_retires_the_old_transit_key_after_its_grace() {
    let site = Site::new(Db::Sqlite).await;
    let (bao, gw) = beside_openbao(&site, true);
    let port = bao.port;
    gw.create(
        json!({"kid": "vr", "provider": "vault", "alg": "PS256", "rotation": {"grace": "2s"}}),
    )
    .await;
    let old = sign_answer(&gw, "vr", b"old").await;
    crate::rotation::rotate_and_sign(&gw, "vr").await;
    // One Transit key per version: `vr`, and `vr@v2` under its path-safe name.
    let v2 = format!(
        "x-{}",
        b"vr@v2"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(
        (
            transit_key_status(port, "vr").await,
            transit_key_status(port, &v2).await
        ),
        (200, 200)
    );
    assert!(verifies_at_gateway(&gw, "vr", b"old", old["signature"].as_str().unwrap()).await);

    // The grace period (2 s) ends: v1's Transit key is deleted.
    wait_until(Duration::from_secs(6), "the end of v1's grace", || async {
        transit_key_status(port, "vr").await == 404
    })
    .await;
    assert_eq!(transit_key_status(port, &v2).await, 200);
    assert!(jwks_entry(&gw, "vr").await.is_none());
    assert!(!verifies_at_gateway(&gw, "vr", b"old", old["signature"].as_str().unwrap()).await);
    let (_, key) = gw.get("/keys/vr").await;
    assert_eq!(key["versions"][0]["state"], "retired", "{key}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_signs_a_batch_with_batch_input() {
    let site = Site::new(Db::Sqlite).await;
    let (_bao, gw) = beside_openbao(&site, false);
    for alg in ["ES256", "RS256"] {
        let kid = format!("vault-batch-{}", alg.to_ascii_lowercase());
        let key = gw
            .create(json!({"kid": kid, "alg": alg, "provider": "vault"}))
            .await;
        batch_round_trip(&gw, &kid, &key["publicJwk"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_key_gets_a_csr_and_a_leaf_from_a_root_ca_on_db() {
    let site = Site::new(Db::Sqlite).await;
    let (_bao, gw) = beside_openbao(&site, false);
    let key = gw
        .create(json!({"kid": "vault-issuer", "provider": "vault", "alg": "ES256"}))
        .await;
    check_csr(&gw, "vault-issuer", &key["publicJwk"]).await;
    gw.create(json!({"kid": "db-root", "provider": "db", "alg": "ES384"}))
        .await;
    let root = crate::certificates::make_root(&gw, "db-root").await;
    crate::certificates::issue_and_verify(&gw, "vault-issuer", "db-root", &root).await;
    // Vault's key signs as CA too: a leaf for a db key, issued through Transit.
    let (status, body) = gw
        .post(
            "/keys/vault-issuer/certificate/issue",
            json!({"subject": "CN=vault intermediate", "validityDays": 30, "issuerKid": "db-root", "ca": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    gw.create(json!({"kid": "db-leaf"})).await;
    crate::certificates::issue_and_verify(&gw, "db-leaf", "vault-issuer", &root).await;
    let chain = crate::certificates::certificate(&gw, "db-leaf").await;
    assert_eq!(pem_blocks(&chain).len(), 3, "leaf, intermediate, root");
}
