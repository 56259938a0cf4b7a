//! kms.json handling of the real binary: broken files stop the start with every
//! problem named; EUDIPLO's sample files load; the listen address is guarded.

use std::path::{Path, PathBuf};
use std::process::Output;

use kmsgw_tests::*;

fn fixtures(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
}

fn run_with_config(site: &Site, config: &Path, env: &[(&str, &str)]) -> Output {
    let config = config.to_str().unwrap();
    site.command(&["--config", config], env)
        .output()
        .expect("run kmsgw")
}

#[tokio::test]
async fn each_broken_config_exits_non_zero_naming_the_path_or_variable() {
    let site = Site::new(Db::Sqlite).await;
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures("bad-config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let expected = std::fs::read_to_string(path.with_extension("expect")).unwrap();
        let output = run_with_config(&site, &path, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{}: {stderr}",
            path.display()
        );
        for needle in expected.lines().filter(|l| !l.is_empty()) {
            assert!(
                stderr.contains(needle),
                "{}: expected `{needle}` in:\n{stderr}",
                path.display()
            );
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} fixtures found");
}

#[tokio::test]
async fn a_missing_config_file_is_an_error() {
    let site = Site::new(Db::Sqlite).await;
    let output = run_with_config(&site, Path::new("/nonexistent/kms.json"), &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/kms.json"));
}

#[tokio::test]
async fn eudiplo_sample_files_load_and_start() {
    let env = [
        ("VAULT_URL", "http://127.0.0.1:8200"),
        ("VAULT_TOKEN", "t"),
        ("BACKUP_VAULT_URL", "http://127.0.0.1:8201"),
        ("BACKUP_VAULT_TOKEN", "t"),
        ("AWS_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("HSM_PIN", "1234"),
        ("SOFTHSM_PIN", "1234"),
        ("KMS_SERVICE_URL", "http://127.0.0.1:3001"),
        ("KMS_API_KEY", "k"),
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures("eudiplo")).unwrap() {
        let path = entry.unwrap().path();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let providers = file["providers"].as_array().unwrap();
        // Every provider type is built: each sample starts and lists its providers
        // (backends are reached only when used).
        let site = Site::new(Db::Sqlite).await;
        let gw = site.start_with(&["--config", path.to_str().unwrap()], &env);
        let (_, listed) = gw.get("/providers").await;
        let ids: Vec<_> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].clone())
            .collect();
        let expected: Vec<_> = providers.iter().map(|p| p["id"].clone()).collect();
        assert_eq!(ids, expected, "{}", path.display());
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[tokio::test]
async fn the_shipped_db_example_serves() {
    let site = Site::new(Db::Sqlite).await;
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kms.json");
    let gw = site.start_with(&["--config", config.to_str().unwrap()], &[]);
    let key = gw.create(serde_json::json!({})).await;
    let signature = gw.sign(key["kid"].as_str().unwrap(), b"example").await;
    assert_verifies(&key["publicJwk"], b"example", &signature);
}

#[tokio::test]
async fn listening_beyond_loopback_needs_an_explicit_insecure_opt_out() {
    let site = Site::new(Db::Sqlite).await;
    let output = site
        .command(&["--listen", "0.0.0.0:0"], &[])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("refusing to listen on 0.0.0.0:0"));

    let gw = site.start_with(&["--listen", "0.0.0.0:0", "--insecure-no-auth"], &[]);
    assert!(gw.log_text().contains("INSECURE"), "{}", gw.log_text());
}
