//! Reloading kms.json without a restart: providers added, a guest's component
//! swapped, providers removed and API keys replaced, by SIGHUP and by
//! `POST /admin/reload`, while a client signs with a db key in a loop that must
//! never see an error; a broken file is refused and changes nothing.

use std::sync::Arc;
use std::time::Duration;

use kmsgw_tests::*;
use serde_json::{Value, json};

fn hang_up(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

async fn provider_ids(gw: &Gateway) -> Vec<String> {
    let (_, providers) = gw.get("/providers").await;
    providers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn algs_of(gw: &Gateway, id: &str) -> Value {
    let (_, providers) = gw.get("/providers").await;
    providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .map(|p| p["capabilities"]["supportedAlgs"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_and_api_keys_change_on_reload_while_signing_goes_on() {
    let site = Site::new(Db::Sqlite).await;
    let component = site.dir.path().join("soft.wasm");
    std::fs::copy(guest("soft_signer"), &component).unwrap();
    let db_only = json!({"providers": [{"id": "db", "type": "db"}]});
    let with_guest = json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "soft", "type": "wasm", "component": component, "limits": {"instances": 2}},
    ]});
    let gw = Arc::new(site.start_configured(&db_only));
    let steady = gw.create(json!({"kid": "steady"})).await;
    let watcher = SignWatcher::start(
        Arc::clone(&gw),
        "steady",
        steady["publicJwk"].clone(),
        Duration::from_millis(5),
    );

    // Add a guest provider by editing kms.json and sending SIGHUP.
    site.write_config(&with_guest);
    hang_up(&gw);
    wait_until(
        Duration::from_secs(30),
        "the guest provider to appear",
        || async { provider_ids(&gw).await.contains(&"soft".to_owned()) },
    )
    .await;
    assert_eq!(
        algs_of(&gw, "soft").await.as_array().unwrap().len(),
        ALGS.len()
    );
    let key = gw
        .create(json!({"kid": "in-guest", "provider": "soft"}))
        .await;
    assert_verifies(&key["publicJwk"], b"g", &gw.sign("in-guest", b"g").await);

    // Swap the component for another build (the 0.1.0 soft signer: ES256 only).
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/guests");
    std::fs::copy(fixtures.join("soft_signer-0.1.0.wasm"), &component).unwrap();
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], json!(["soft"]), "{report}");
    assert_eq!(report["kept"], json!(["db"]), "{report}");
    assert_eq!(algs_of(&gw, "soft").await, json!(["ES256"]));
    let again = gw
        .create_and_sign(json!({"kid": "in-new-build", "provider": "soft"}), b"n")
        .await;

    // A broken file is refused with the start-up error list; nothing changes.
    std::fs::write(
        site.dir.path().join("kms.json"),
        r#"{"providers": [{"id": "db", "type": "db", "colour": 1}]}"#,
    )
    .unwrap();
    let (status, refused) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(
        (status, refused["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_config")),
        "{refused}"
    );
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("providers[0].colour: unknown field"),
        "{refused}"
    );
    std::fs::write(site.dir.path().join("kms.json"), "{ not json").unwrap();
    hang_up(&gw);
    wait_until(
        Duration::from_secs(10),
        "the refused SIGHUP reload in the log",
        || async { gw.log_text().contains("is not valid JSON") },
    )
    .await;
    assert_eq!(provider_ids(&gw).await, ["db", "soft"]);
    assert_verifies(
        &again["publicJwk"],
        b"m",
        &gw.sign("in-new-build", b"m").await,
    );

    // Remove the guest: its keys answer 503 (provider not configured), db serves on.
    site.write_config(&db_only);
    hang_up(&gw);
    wait_until(
        Duration::from_secs(10),
        "the guest provider to go",
        || async { provider_ids(&gw).await == ["db"] },
    )
    .await;
    let (status, body) = gw
        .post("/keys/in-guest/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("provider_not_configured")
        ),
        "{body}"
    );

    // The client signing with the db key all along never saw an error.
    // (It signs every 5 ms; the reloads above take 50 ms or more.)
    let latencies = watcher.finish().await;
    assert!(latencies.len() >= 5, "{} signs", latencies.len());

    // API keys take effect: with an admin key configured, anonymous calls stop.
    let token = "reload-admin-token-0123456789";
    let mut with_keys = db_only.clone();
    with_keys["auth"] = json!({"apiKeys": [{"id": "ops", "token": token, "scopes": ["admin"]}]});
    site.write_config(&with_keys);
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let (status, _) = gw.get("/keys/steady").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = gw
        .call(Some(token), reqwest::Method::GET, "/keys/steady", None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Every reload is audited, and counted.
    let (_, audit) = gw
        .call(
            Some(token),
            reqwest::Method::GET,
            "/audit?action=reload",
            None,
        )
        .await;
    let outcomes: Vec<(&str, &str)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["apiKey"].as_str().unwrap_or(""),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("sighup", "ok"),
            ("anonymous", "ok"),
            ("anonymous", "invalid_config"),
            ("sighup", "invalid_config"),
            ("sighup", "ok"),
            ("anonymous", "ok"),
        ],
        "{audit}"
    );
    let (_, metrics) = gw.text(Some(token), "/metrics").await;
    assert!(
        metrics.contains("kmsgw_config_reloads_total{outcome=\"ok\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kmsgw_config_reloads_total{outcome=\"failed\"} 2"),
        "{metrics}"
    );
}
