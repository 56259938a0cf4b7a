//! Key versions and rotation: a rotated key signs with its new version, the old one
//! stays published through its grace period and is then retired (unpublished, its
//! material destroyed); the scheduler rotates due keys; a crash mid-rotation leaves
//! one active version.

use std::sync::Arc;
use std::time::Duration;

use kmsgw_tests::*;
use serde_json::{Value, json};

pub(crate) fn with_scheduler(providers: Value) -> Value {
    json!({"providers": providers, "scheduler": {"interval": "250ms"}})
}

/// Rotates `kid` on `gw` and checks the answer: the next version is current.
pub(crate) async fn rotate(gw: &Gateway, kid: &str) -> Value {
    let (_, before) = gw.get(&format!("/keys/{kid}")).await;
    let (status, key) = gw.post(&format!("/keys/{kid}/rotate"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let version = before["version"].as_u64().unwrap() + 1;
    assert_eq!(key["version"], version);
    assert_eq!(key["jwkKid"], format!("{kid}@v{version}"));
    assert_eq!(key["publicJwk"]["kid"], format!("{kid}@v{version}"));
    key
}

/// Rotates `kid` once and signs with the new version, verified with the JWK the
/// JWKS publishes under the new `jwkKid`.
pub(crate) async fn rotate_and_sign(gw: &Gateway, kid: &str) {
    let key = rotate(gw, kid).await;
    let answer = sign_answer(gw, kid, b"after rotation").await;
    assert_eq!(answer["jwkKid"], key["jwkKid"], "{answer}");
    let published = jwks_entry(gw, key["jwkKid"].as_str().unwrap())
        .await
        .expect("the new version is published");
    assert_verifies(
        &published,
        b"after rotation",
        answer["signature"].as_str().unwrap(),
    );
}

on_both_databases!(db_rotation_keeps_the_old_version_through_its_grace_then_retires_it);

async fn db_rotation_keeps_the_old_version_through_its_grace_then_retires_it(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start_configured(&with_scheduler(json!([{"id": "db", "type": "db"}])));
    let key = gw
        .create(json!({"kid": "k", "alg": "ES384", "rotation": {"grace": "2s"}}))
        .await;
    assert_eq!(
        (key["version"].as_u64(), key["jwkKid"].as_str()),
        (Some(1), Some("k"))
    );
    let old = sign_answer(&gw, "k", b"old").await;
    assert_eq!(old["version"], 1);
    let old_signature = old["signature"].as_str().unwrap().to_owned();

    let rotated = rotate(&gw, "k").await;
    let states: Vec<_> = rotated["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].clone())
        .collect();
    assert_eq!(states, [json!("grace"), json!("active")], "{rotated}");
    assert_eq!(rotated["alg"], "ES384");
    let new = sign_answer(&gw, "k", b"new").await;
    assert_eq!(
        (new["version"].as_u64(), new["jwkKid"].as_str()),
        (Some(2), Some("k@v2"))
    );
    let published_new = jwks_entry(&gw, "k@v2").await.expect("v2 published");
    assert_verifies(&published_new, b"new", new["signature"].as_str().unwrap());
    let published_old = jwks_entry(&gw, "k").await.expect("v1 published in grace");
    assert_verifies(&published_old, b"old", &old_signature);
    assert!(verifies_at_gateway(&gw, "k", b"old", &old_signature).await);
    assert_eq!(
        count_rows(
            &site,
            "SELECT COUNT(*) FROM db_key_material WHERE kid = 'k'"
        )
        .await,
        1
    );

    // The grace period (2 s) ends: v1 leaves the JWKS, its sealed material is deleted.
    wait_until(Duration::from_secs(6), "the end of v1's grace", || async {
        jwks_entry(&gw, "k").await.is_none()
    })
    .await;
    let (_, key) = gw.get("/keys/k").await;
    assert_eq!(key["versions"][0]["state"], "retired", "{key}");
    assert!(key["versions"][0]["retiredAt"].is_string());
    assert!(!verifies_at_gateway(&gw, "k", b"old", &old_signature).await);
    assert!(verifies_at_gateway(&gw, "k", b"new", new["signature"].as_str().unwrap()).await);
    assert_eq!(
        count_rows(
            &site,
            "SELECT COUNT(*) FROM db_key_material WHERE kid = 'k'"
        )
        .await,
        0
    );
    assert_eq!(
        count_rows(
            &site,
            "SELECT COUNT(*) FROM db_version_material WHERE id = 'k@v2'"
        )
        .await,
        1
    );
    let (_, audit) = gw.get("/audit?kid=k&action=rotate").await;
    assert_eq!(audit["records"][0]["outcome"], "ok", "{audit}");

    // Deleting the key deletes every version's material.
    assert_eq!(gw.delete("/keys/k").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        count_rows(&site, "SELECT COUNT(*) FROM db_version_material").await,
        0
    );
    assert_eq!(
        count_rows(&site, "SELECT COUNT(*) FROM key_versions").await,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_rotates_a_due_key_without_a_request_and_audits_it() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&with_scheduler(json!([{"id": "db", "type": "db"}])));
    let key = gw
        .create(json!({"kid": "auto", "rotation": {"every": "2s", "grace": "1s"}}))
        .await;
    assert_eq!(key["rotation"]["every"], "2s", "{key}");
    wait_until(Duration::from_secs(6), "a scheduled rotation", || async {
        gw.get("/keys/auto").await.1["version"].as_u64() >= Some(2)
    })
    .await;

    // A policy set later (no `every`: no more scheduled rotations), and a bad one.
    let (status, key) = gw
        .call(
            None,
            reqwest::Method::PUT,
            "/keys/auto/rotation",
            Some(json!({"grace": "7d"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    assert_eq!(
        (
            key["rotation"]["every"].clone(),
            key["rotation"]["grace"].clone()
        ),
        (Value::Null, json!("7days"))
    );
    // A scheduled rotation already claimed may still commit: let it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, key) = gw.get("/keys/auto").await;
    let version = key["version"].as_u64().unwrap();
    let (_, audit) = gw.get("/audit?kid=auto&action=rotate").await;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len() as u64, version - 1, "{audit}");
    assert!(
        records
            .iter()
            .all(|r| r["apiKey"] == "scheduler" && r["outcome"] == "ok"),
        "{audit}"
    );
    rotate_and_sign(&gw, "auto").await;
    let (status, body) = gw
        .call(
            None,
            reqwest::Method::PUT,
            "/keys/auto/rotation",
            Some(json!({"every": "soon"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_field")),
        "{body}"
    );
    let (_, metrics) = gw.text(None, "/metrics").await;
    assert!(
        metrics.contains("kmsgw_rotations_total{outcome=\"ok\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kmsgw_key_versions{state=\"active\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_key_rotates_to_a_new_backend_key() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&with_scheduler(json!([
        {"id": "db", "type": "db"},
        crate::guests::wasm_entry("soft", "soft_signer", json!({"limits": {"instances": 1}})),
    ])));
    gw.create(json!({"kid": "g", "alg": "EdDSA", "provider": "soft"}))
        .await;
    rotate_and_sign(&gw, "g").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_rotations_leaves_one_active_version_and_every_signature_verifies() {
    let site = Site::new(Db::Sqlite).await;
    let config = with_scheduler(json!([{"id": "db", "type": "db"}]));
    let gw = Arc::new(site.start_configured(&config));
    gw.create(json!({"kid": "r"})).await;
    let signed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..2 {
        let (gw, signed) = (gw.clone(), signed.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let message = format!("w{worker}-{i}");
                let Ok((status, answer)) = gw
                    .try_post("/keys/r/sign", json!({"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &message)}))
                    .await
                else {
                    return;
                };
                if status == StatusCode::OK {
                    signed.lock().unwrap().push((message, answer["signature"].as_str().unwrap().to_owned()));
                }
            }
        }));
    }
    let rotator = {
        let gw = gw.clone();
        tokio::spawn(async move {
            while let Ok((status, _)) = gw.try_post("/keys/r/rotate", json!({})).await {
                assert!(status == StatusCode::OK || status == StatusCode::CONFLICT);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::process::Command::new("kill")
        .args(["-9", &gw.pid().to_string()])
        .status()
        .unwrap();
    for task in tasks {
        let _ = task.await;
    }
    let _ = rotator.await;
    let signed = std::mem::take(&mut *signed.lock().unwrap());
    drop(gw);

    let gw = site.start_configured(&config);
    let (_, key) = gw.get("/keys/r").await;
    let versions = key["versions"].as_array().unwrap();
    let active: Vec<_> = versions.iter().filter(|v| v["state"] == "active").collect();
    assert_eq!(active.len(), 1, "{key}");
    assert_eq!(active[0]["version"], key["version"]);
    println!(
        "{} versions, {} acknowledged signatures",
        versions.len(),
        signed.len()
    );
    assert!(
        versions.len() >= 2 && signed.len() >= 10,
        "{} versions, {} signatures",
        versions.len(),
        signed.len()
    );
    for (message, signature) in &signed {
        assert!(
            verifies_at_gateway(&gw, "r", message.as_bytes(), signature).await,
            "{message}"
        );
    }
}
