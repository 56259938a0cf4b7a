//! Two gateway processes on one PostgreSQL database behave as one service.

use std::time::{Duration, Instant};

use kmsgw_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_keys_and_a_delete_reaches_the_other_within_a_second() {
    let mut site_a = Site::new(Db::Postgres).await;
    site_a.master_key = Some(random_master_key());
    let site_b = site_a.replica();
    let a = site_a.start();
    let b = site_b.start();

    // Created through A, signs through B (and the reverse).
    let key = a.create(json!({"kid": "shared"})).await;
    for round in 0..3 {
        let message = format!("round {round}");
        let signature = b.sign("shared", message.as_bytes()).await;
        assert_verifies(&key["publicJwk"], message.as_bytes(), &signature);
    }
    let (_, etag, _) = jwks_with_etag(&a, None).await;
    let other = b.create(json!({"kid": "from-b"})).await;
    let signature = a.sign("from-b", b"hello").await;
    assert_verifies(&other["publicJwk"], b"hello", &signature);
    // A's cached JWKS document gains the key B created.
    wait_until(
        Duration::from_secs(2),
        "replica A's JWKS to show B's new key",
        || async {
            let (status, _, body) = jwks_with_etag(&a, Some(&etag)).await;
            status == StatusCode::OK && body.contains("\"kid\":\"from-b\"")
        },
    )
    .await;

    // B has the key warm in memory; a delete acknowledged by A must stop it fast.
    let (status, _) = a.delete("/keys/shared").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let acknowledged = Instant::now();
    loop {
        let (status, body) = b.post("/keys/shared/sign", json!({"data": "eA=="})).await;
        if status == StatusCode::NOT_FOUND {
            assert_eq!(body["code"], "key_not_found");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            acknowledged.elapsed() < Duration::from_secs(1),
            "replica B still signs with a key deleted through A after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(acknowledged.elapsed() < Duration::from_secs(1));

    // The same kid created again through A signs through B with the *new* key.
    let fresh = a.create(json!({"kid": "shared"})).await;
    let signature = b.sign("shared", b"new key").await;
    assert_verifies(&fresh["publicJwk"], b"new key", &signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_master_key_on_the_same_database_refuses_to_start() {
    let mut site = Site::new(Db::Postgres).await;
    site.master_key = Some(random_master_key());
    let gw = site.start();
    gw.create(json!({"kid": "k"})).await;
    drop(gw);
    site.master_key = Some(random_master_key());
    let output = site.command(&[], &[]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("master key is not the one"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_extend_one_audit_chain() {
    let mut site_a = Site::new(Db::Postgres).await;
    site_a.master_key = Some(random_master_key());
    let site_b = site_a.replica();
    let (a, b) = (site_a.start(), site_b.start());
    a.create(json!({"kid": "k"})).await;
    let signs = (0..200).map(|i| {
        let gw = if i % 2 == 0 { &a } else { &b };
        async move {
            gw.sign("k", format!("{i}").as_bytes()).await;
        }
    });
    futures::future::join_all(signs).await;
    // Sign records are batched: wait until all 201 are in, then check the chain.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, verdict) = b.get("/audit/verify").await;
        assert_eq!(verdict["ok"], true, "{verdict}");
        if verdict["checked"] == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "only {verdict} after 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each replica counts the records it wrote to the chain: together, every
    // record once; signs shared commits; both held the chain's lock a while.
    let mut records = 0.0;
    let mut commits = 0.0;
    for gw in [&a, &b] {
        records += gw.metric("kmsgw_audit_records_total").await;
        commits += gw.metric("kmsgw_audit_commits_total").await;
        assert!(gw.metric("kmsgw_audit_chain_hold_seconds_total").await > 0.0);
    }
    assert_eq!(records, 201.0);
    assert!(commits < 100.0, "{commits} commits for 201 records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_rotate_each_due_key_once_and_both_sign_with_the_new_version() {
    let mut site_a = Site::new(Db::Postgres).await;
    site_a.master_key = Some(random_master_key());
    let site_b = site_a.replica();
    let config = crate::rotation::with_scheduler(json!([{"id": "db", "type": "db"}]));
    let a = site_a.start_configured(&config);
    let b = site_b.start_configured(&config);
    a.create(json!({"kid": "due", "rotation": {"every": "2s", "grace": "1h"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(5300)).await;

    // Both schedulers ran every 250 ms; each due rotation happened exactly once.
    let (_, key) = a.get("/keys/due").await;
    let version = key["version"].as_u64().unwrap();
    let numbers: Vec<u64> = key["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..=version).collect::<Vec<_>>(), "{key}");
    assert!(
        (2..=3).contains(&version),
        "{version} versions in 5.3 s of a 2 s policy"
    );
    let (_, audit) = a.get("/audit?kid=due&action=rotate").await;
    assert_eq!(
        audit["records"].as_array().unwrap().len() as u64,
        version - 1,
        "{audit}"
    );

    // A rotation through A: B signs with the new version within a second.
    let (status, rotated) = a.post("/keys/due/rotate", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let acknowledged = Instant::now();
    loop {
        let answer = sign_answer(&b, "due", b"replica").await;
        if answer["version"] == rotated["version"] {
            assert_verifies(
                &rotated["publicJwk"],
                b"replica",
                answer["signature"].as_str().unwrap(),
            );
            break;
        }
        assert!(
            acknowledged.elapsed() < Duration::from_secs(1),
            "replica B still signs with version {} a second after the rotation",
            answer["version"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
