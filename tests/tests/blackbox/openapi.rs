//! The OpenAPI document against the running gateway: schemathesis (PyPI) generates
//! requests from it and checks every answer against it.

use std::process::Command;

use kmsgw_tests::*;
use serde_json::json;

const ADMIN: &str = "schemathesis-admin-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "auth": {"apiKeys": [{"id": "fuzzer", "token": ADMIN, "scopes": ["admin"]}]},
    }));
    // A few keys for the generated requests to find (one a CSC credential).
    for kid in ["a", "b-1", "c.2"] {
        let (status, body) = gw
            .call(
                Some(ADMIN),
                reqwest::Method::POST,
                "/keys",
                Some(json!({"kid": kid})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = gw
        .call(
            Some(ADMIN),
            reqwest::Method::POST,
            "/keys/a/certificate/issue",
            Some(json!({"subject": "CN=a", "validityDays": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The CSC routes are in the document the fuzzer reads.
    let (_, document) = gw.get("/openapi.json").await;
    for path in [
        "/csc/v2/info",
        "/csc/v2/credentials/list",
        "/csc/v2/credentials/info",
        "/csc/v2/credentials/authorize",
        "/csc/v2/signatures/signHash",
        "/csc/v2/signatures/timestamp",
    ] {
        assert!(
            document["paths"][path]["post"].is_object(),
            "{path} not documented"
        );
    }
    // schemathesis keeps a cache of found failures in its working directory; a
    // fresh one per run keeps runs independent and the checkout clean.
    let workdir = tempfile::tempdir().unwrap();
    let output = Command::new("schemathesis")
        .current_dir(workdir.path())
        .args([
            "run",
            &format!("{}/openapi.json", gw.base),
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "40",
            "--header",
            &format!("Authorization: Bearer {ADMIN}"),
            "--no-color",
            // CSC's timestamp and signDoc are answered 501 by design (the CSC
            // test checks them); the fuzzer counts every 5xx as a failure.
            "--exclude-path-regex",
            "^/csc/v2/signatures/(timestamp|signDoc)$",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("schemathesis on PATH (scripts/test installs it from PyPI)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "Test cases:\n  752 generated, 752 passed"
    let generated: u64 = stdout
        .lines()
        .find(|line| line.contains(" generated, "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no case count in:\n{stdout}"));
    assert!(generated >= 500, "only {generated} cases:\n{stdout}");
    assert!(!gw.log_text().contains("panicked"), "a handler panicked");
    // Whatever the fuzzer sent, the audit chain holds.
    let (status, verdict) = gw
        .call(Some(ADMIN), reqwest::Method::GET, "/audit/verify", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{verdict}");
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert!(verdict["checked"].as_u64().unwrap() > 3, "{verdict}");
}
