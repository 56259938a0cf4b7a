//! The web console (`server.ui`) in headless Chromium, driven by Playwright
//! (`tests/fixtures/console/drive.py`): sign in, find a key, rotate it, issue a
//! short-lived certificate and see its warning, see a guest's storage grow,
//! verify the audit chain and see a break; a key without the rotate scope is
//! offered no rotation and a forged one is refused; no request leaves for any
//! host but the gateway. Screenshots of each page are kept under
//! `$CARGO_TARGET_DIR/test-artifacts/console/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use kmsgw_tests::*;
use serde_json::{Value, json};

const ADMIN: &str = "console-admin-token-0123456789";
const READER: &str = "console-reader-token-0123456789";

fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("test-artifacts").join("console")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let site = Site::new(Db::Sqlite).await;
    std::fs::copy(guest("soft_signer"), site.dir.path().join("soft.wasm")).unwrap();
    let gw = site.start_configured(&json!({
        "server": {"ui": true},
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "soft", "type": "wasm", "component": "soft.wasm"},
        ],
        "auth": {"apiKeys": [
            {"id": "operator", "token": ADMIN, "scopes": ["admin"]},
            {"id": "viewer", "token": READER, "scopes": ["keys:read"]},
        ]},
    }));
    // More keys than the keys page details (100): it says how many it shows
    // (these sort after the ones the driver looks at).
    let bulk: Vec<String> = (0..110).map(|i| format!("zz-bulk-{i:03}")).collect();
    for kid in ["console-key-1", "other-1", "other-2"]
        .into_iter()
        .chain(bulk.iter().map(String::as_str))
    {
        let (status, key) = gw
            .call(
                Some(ADMIN),
                reqwest::Method::POST,
                "/keys",
                Some(json!({"kid": kid})),
            )
            .await;
        assert_eq!(status, 200, "{key}");
    }
    let shots = artefacts();
    let _ = std::fs::remove_dir_all(&shots);
    let database = site.database();
    let output = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/console/drive.py"))
        .args([
            "--url",
            &gw.base,
            "--admin-token",
            ADMIN,
            "--reader-token",
            READER,
        ])
        .args([
            "--guest",
            "soft",
            "--database",
            database.trim_start_matches("sqlite://"),
        ])
        .arg("--shots")
        .arg(&shots)
        .output()
        .expect("python3 with playwright (scripts/test installs it and Debian's chromium)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    let taken = summary["screenshots"].as_array().unwrap();
    assert_eq!(taken.len(), 8, "{summary}");
    for shot in taken {
        let png = std::fs::read(shot.as_str().unwrap()).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{shot}");
    }
    // The rotation and the issue went through the public API, as the audit log says.
    let (_, page) = gw
        .call(
            Some(ADMIN),
            reqwest::Method::GET,
            "/audit?kid=console-key-1",
            None,
        )
        .await;
    let actions: Vec<(&str, &str)> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["action"].as_str().unwrap(), r["apiKey"].as_str().unwrap()))
        .collect();
    for action in ["rotate", "certificate-issue", "csr"] {
        assert!(actions.contains(&(action, "operator")), "{actions:?}");
    }
    assert!(
        !actions.iter().any(|(_, key)| *key == "viewer"),
        "{actions:?}"
    );
    println!("console screenshots: {}", shots.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_unless_configured() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let (status, body) = gw.get("/ui/").await;
    assert_eq!(status, 404, "{body}");
}
