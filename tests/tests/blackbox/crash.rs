//! kill -9 in the middle of concurrent creates and signs loses no acknowledged key
//! and leaves an audit chain that verifies, on SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kmsgw_tests::*;
use serde_json::{Value, json};

on_both_databases!(kill_9_during_creates_and_signs_loses_no_acknowledged_key);

async fn kill_9_during_creates_and_signs_loses_no_acknowledged_key(db: Db) {
    let mut site = Site::new(db).await;
    site.master_key = Some(random_master_key());
    let gw = Arc::new(site.start());
    let warm = gw.create(json!({"kid": "warm"})).await;
    let acknowledged: Arc<Mutex<HashMap<String, Value>>> = Arc::default();

    let mut workers = Vec::new();
    for worker in 0..6 {
        let (gw, acknowledged) = (gw.clone(), acknowledged.clone());
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let result = if worker < 4 {
                    let kid = format!("crash-{worker}-{i}");
                    gw.try_post("/keys", json!({"kid": kid}))
                        .await
                        .map(|(status, body)| {
                            if status == StatusCode::OK {
                                acknowledged
                                    .lock()
                                    .unwrap()
                                    .insert(kid, body["publicJwk"].clone());
                            }
                        })
                } else {
                    gw.try_post("/keys/warm/sign", json!({"data": "c2lnbg=="}))
                        .await
                        .map(drop)
                };
                if result.is_err() {
                    return i;
                }
            }
            unreachable!()
        }));
    }
    // Kill once the load has run for a while, in the middle of it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acknowledged.lock().unwrap().len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "too few creates succeed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = Command::new("kill")
        .args(["-9", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut operations = 0;
    for worker in workers {
        operations += worker.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        operations > 40,
        "the load was too light to mean anything: {operations} operations"
    );

    let gw = site.start();
    for (kid, jwk) in &acknowledged {
        let signature = gw.sign(kid, b"after the crash").await;
        assert_verifies(jwk, b"after the crash", &signature);
    }
    let signature = gw.sign("warm", b"warm too").await;
    assert_verifies(&warm["publicJwk"], b"warm too", &signature);

    let (_, verdict) = gw.get("/audit/verify").await;
    assert_eq!(verdict["ok"], true, "{verdict}");
    // Every acknowledged create has its record.
    let mut audited = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let (_, page) = gw
            .get(&format!("/audit?action=create&limit=1000&after={after}"))
            .await;
        for record in page["records"].as_array().unwrap() {
            if record["outcome"] == "ok" {
                audited.insert(record["kid"].as_str().unwrap().to_owned());
            }
        }
        match page["nextAfter"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    for kid in acknowledged.keys() {
        assert!(
            audited.contains(kid),
            "no audit record of acknowledged create {kid}"
        );
    }
}
