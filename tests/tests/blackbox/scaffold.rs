//! Adapter authoring outside this repository: `kmsgw adapter new` writes a Rust
//! project into an empty directory elsewhere, `kmsgw adapter build` builds it
//! with nothing but crates.io, and `kmsgw adapter check` passes it as generated;
//! the component then serves in a gateway.

use std::path::Path;
use std::process::{Command, Output};

use kmsgw_tests::*;
use serde_json::json;

fn adapter(args: &[&str], cwd: &Path) -> Output {
    Command::new(kmsgw_bin())
        .arg("adapter")
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kmsgw adapter")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rust_adapter_builds_outside_the_repository_and_passes_the_check() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path();
    let made = adapter(&["new", "acme-kms"], dir);
    assert!(made.status.success(), "{}", text(&made));
    let project = dir.join("acme-kms");
    for file in [
        "kmsgw-adapter.toml",
        "Cargo.toml",
        "src/lib.rs",
        "sdk/src/lib.rs",
        "wit/adapter.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
    }
    // Nothing in the project points back into this repository.
    for file in files_under(&project) {
        let content = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(
            !content.contains(env!("CARGO_MANIFEST_DIR")),
            "{} names the repository",
            file.display()
        );
    }

    let built = adapter(&["build", "acme-kms"], dir);
    assert!(built.status.success(), "{}", text(&built));
    let component = project.join("target/wasm32-wasip2/release/acme_kms.wasm");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).trim(),
        "acme-kms/target/wasm32-wasip2/release/acme_kms.wasm"
    );
    let checked = adapter(&["check", "acme-kms"], dir);
    assert!(
        checked.status.success() && text(&checked).contains("checks passed"),
        "{}",
        text(&checked)
    );

    // It serves in a gateway.
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "acme", "type": "wasm", "component": component},
    ]}));
    gw.create_and_sign(json!({"kid": "from-acme", "provider": "acme"}), b"acme")
        .await;

    // The WIT package as the gateway knows it, and refusals that say why.
    let wit_dir = dir.join("wit-copy");
    let wit = adapter(&["wit", "--out", wit_dir.to_str().unwrap()], dir);
    assert!(wit.status.success(), "{}", text(&wit));
    let repository_wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/adapter.wit");
    assert_eq!(
        std::fs::read_to_string(wit_dir.join("adapter.wit")).unwrap(),
        std::fs::read_to_string(repository_wit).unwrap()
    );
    let again = adapter(&["new", "acme-kms"], dir);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("is not empty"), "{}", text(&again));
    let bad = adapter(&["new", "Bad Name"], dir);
    assert!(
        text(&bad).contains("not a usable adapter name"),
        "{}",
        text(&bad)
    );

    // The HTTP-backend skeleton: a remote-KMS client that passes the check against
    // such a service (the reference one in examples/remote-kms).
    let made = adapter(&["new", "acme-remote", "--template", "http"], dir);
    assert!(made.status.success(), "{}", text(&made));
    let built = adapter(&["build", "acme-remote"], dir);
    assert!(built.status.success(), "{}", text(&built));
    let remote = start_remote_kms(dir, &[]);
    let config = json!({"baseUrl": remote.base}).to_string();
    let authority = remote.authority().to_owned();
    let checked = adapter(
        &[
            "check",
            "acme-remote",
            "--config",
            &config,
            "--allow-host",
            &authority,
        ],
        dir,
    );
    assert!(
        checked.status.success() && text(&checked).contains("checks passed"),
        "{}",
        text(&checked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_javascript_adapter_builds_outside_the_repository_and_passes_the_check() {
    let outside = tempfile::tempdir().unwrap();
    let dir = outside.path();
    let made = adapter(&["new", "acme-js", "--lang", "js"], dir);
    assert!(made.status.success(), "{}", text(&made));
    let project = dir.join("acme-js");
    for file in [
        "kmsgw-adapter.toml",
        "package.json",
        "build.mjs",
        "src/app.js",
        "sdk/kmsgw.js",
        "wit/adapter.wit",
    ] {
        assert!(project.join(file).is_file(), "{file} missing");
    }
    let built = adapter(&["build", "acme-js"], dir);
    assert!(built.status.success(), "{}", text(&built));
    assert!(project.join("dist/acme-js.wasm").is_file());
    let checked = adapter(&["check", "acme-js", "--timeout-ms", "10000"], dir);
    assert!(
        checked.status.success() && text(&checked).contains("checks passed"),
        "{}",
        text(&checked)
    );
}
