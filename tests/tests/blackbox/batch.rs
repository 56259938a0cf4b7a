//! Batch signing: 200 messages in one request, every signature verified in order,
//! the limits, one audit record per message, and the usage count.

use kmsgw_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_db_batch_signs_in_order_audits_every_message_and_refuses_bad_batches() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    for alg in ["ES256", "EdDSA", "PS256"] {
        let kid = format!("batch-{}", alg.to_ascii_lowercase());
        let key = gw.create(json!({"kid": kid, "alg": alg})).await;
        let messages = batch_round_trip(&gw, &kid, &key["publicJwk"]).await;

        // One audit record for the batch holds every message's hash in order, and
        // the chain still verifies.
        let (_, audit) = gw
            .get(&format!("/audit?kid={kid}&action=sign&limit=1000"))
            .await;
        let batches: Vec<&Value> = audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["outcome"] == "ok" && r["messageSha256s"].is_array())
            .collect();
        assert_eq!(batches.len(), 1, "{kid}: {audit}");
        let hashes: Vec<&str> = batches[0]["messageSha256s"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap())
            .collect();
        let expected: Vec<String> = messages.iter().map(|m| sha256_hex_of(m)).collect();
        assert_eq!(hashes, expected, "{kid}: the batch's hashes");
        assert!(batches[0].get("messageSha256").is_none_or(Value::is_null));
        let (_, key) = gw.get(&format!("/keys/{kid}")).await;
        assert_eq!(key["signCount"], 200, "{key}");
    }
    let (_, verified) = gw.get("/audit/verify").await;
    assert_eq!(verified["ok"], true, "{verified}");

    let cases = [
        (json!({"data": []}), "invalid_request"),
        (json!({"data": vec!["AA=="; 1001]}), "invalid_request"),
        (json!({"data": ["AA=="], "alg": "RS256"}), "invalid_request"),
        (json!({"data": "AA=="}), "invalid_field"),
    ];
    for (body, code) in cases {
        let (status, answer) = gw.post("/keys/batch-es256/sign/batch", body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, _) = gw
        .post("/keys/nope/sign/batch", json!({"data": ["AA=="]}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_batch_signs_in_order() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        crate::guests::wasm_entry("soft", "soft_signer", json!({"limits": {"instances": 2}})),
    ]}));
    let key = gw
        .create(json!({"kid": "guest-batch", "provider": "soft", "alg": "ES384"}))
        .await;
    batch_round_trip(&gw, "guest-batch", &key["publicJwk"]).await;
}
