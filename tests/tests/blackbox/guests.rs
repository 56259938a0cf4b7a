//! Guest adapters through the real binary: shipped guests behind the REST API,
//! `kmsgw adapter check`, hostile guests, sealed guest storage, the compiled cache.

use std::io::Read;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kmsgw_tests::*;
use serde_json::{Value, json};

pub(crate) fn wasm_entry(id: &str, component: &str, extra: Value) -> Value {
    let mut entry = json!({"id": id, "type": "wasm", "component": guest(component)});
    entry
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    entry
}

pub(crate) async fn sign_data(gw: &Gateway, kid: &str, message: &[u8]) -> (StatusCode, Value) {
    gw.post(
        &format!("/keys/{kid}/sign"),
        json!({"data": STANDARD.encode(message)}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_soft_signer_and_remote_http_keys_serve_through_one_api() {
    let _serial = GUEST_SERIAL.lock().await;
    // The remote KMS is a second kmsgw: it speaks the contract the guest consumes.
    let remote_site = Site::new(Db::Sqlite).await;
    let remote = remote_site.start();
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            wasm_entry("soft", "soft_signer", json!({"limits": {"instances": 2}})),
            wasm_entry("remote", "remote_http", json!({
                "config": {"baseUrl": remote.base, "canImport": true},
                "allowedHosts": [remote.authority()],
            })),
        ]
    }));

    let (_, providers) = gw.get("/providers").await;
    let kinds: Vec<_> = providers
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["db", "wasm", "wasm"]);
    assert_eq!(providers[1]["capabilities"]["canImport"], true);

    for provider in ["db", "soft", "remote"] {
        let kid = format!("{provider}-key");
        let key = gw.create(json!({"kid": kid, "provider": provider})).await;
        assert_eq!(key["provider"], provider);
        for message in [&b""[..], b"hello", &[0xfe; 5000]] {
            let signature = gw.sign(&kid, message).await;
            assert_verifies(&key["publicJwk"], message, &signature);
        }
        let (_, jwks) = gw.get("/.well-known/jwks.json").await;
        assert!(
            jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str())
        );
    }
    // The remote guest really went over HTTP: the remote service holds the key.
    assert_eq!(remote.get("/keys/remote-key").await.0, StatusCode::OK);

    for provider in ["soft", "remote"] {
        import_known_key_and_verify(&gw, &format!("{provider}-imported"), provider).await;
    }

    for provider in ["soft", "remote"] {
        let kid = format!("{provider}-key");
        assert_eq!(
            gw.delete(&format!("/keys/{kid}")).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(sign_data(&gw, &kid, b"x").await.0, StatusCode::NOT_FOUND);
    }
    assert_eq!(
        remote.get("/keys/remote-key").await.0,
        StatusCode::NOT_FOUND
    );

    let (_, health) = gw.get("/health/kms").await;
    for line in health.as_array().unwrap() {
        assert_eq!(line["ok"], true, "{health}");
    }
}

fn adapter_check(component: &str, args: &[&str]) -> (Option<i32>, String) {
    adapter_check_file(&guest(component), args)
}

fn adapter_check_file(component: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let output = std::process::Command::new(kmsgw_bin())
        .args(["adapter", "check"])
        .arg(component)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_check_passes_the_shipped_guests_and_names_what_a_wrong_guest_gets_wrong() {
    let _serial = GUEST_SERIAL.lock().await;
    // soft-signer advertises every algorithm: each is generated, imported and signed.
    let (code, text) = adapter_check("soft_signer", &[]);
    assert_eq!(code, Some(0), "{text}");
    for alg in ALGS {
        assert!(
            text.contains(&format!("PASS  generate → sign → verify ({alg})")),
            "{text}"
        );
        assert!(
            text.contains(&format!("PASS  import → sign → verify ({alg})")),
            "{text}"
        );
    }
    // It signs digests too: each algorithm over a hash, generated and imported.
    for alg in ["ES256", "ES384", "ES512", "RS256", "PS256"] {
        assert!(
            text.contains(&format!("PASS  generate → sign → verify ({alg}), digests")),
            "{text}"
        );
        assert!(
            text.contains(&format!("PASS  import → sign → verify ({alg}), digests")),
            "{text}"
        );
    }
    assert!(text.contains("all 45 checks passed"), "{text}");

    // remote-http advertises what its config lists, and refuses the rest.
    let remote_site = Site::new(Db::Sqlite).await;
    let remote = remote_site.start();
    let config = json!({"baseUrl": remote.base}).to_string();
    let (code, text) = adapter_check(
        "remote_http",
        &["--config", &config, "--allow-host", remote.authority()],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("PASS  generate → sign → verify (ES256)"),
        "{text}"
    );
    assert!(
        text.contains("PASS  PS256: unadvertised → refused"),
        "{text}"
    );
    let all = json!({"baseUrl": remote.base, "algs": ALGS}).to_string();
    let (code, text) = adapter_check(
        "remote_http",
        &["--config", &all, "--allow-host", remote.authority()],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("PASS  generate → sign → verify (EdDSA)"),
        "{text}"
    );

    // Without the destination allowed, the remote guest cannot reach its backend.
    let (code, text) = adapter_check("remote_http", &["--config", &config]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("HttpRequestDenied"), "{text}");

    let (code, text) = adapter_check("hostile", &["--config", r#"{"signature": "der"}"#]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  generate → sign → verify (ES256)") && text.contains("not DER"),
        "{text}"
    );

    let (code, text) = adapter_check("hostile", &["--config", r#"{"signature": "wrong-key"}"#]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("FAIL  generate → sign → verify (ES256)") && text.contains("does not verify"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_guests_cost_one_request_and_never_the_gateway() {
    let _serial = GUEST_SERIAL.lock().await;
    let timeout_ms = 300;
    let site = Site::new(Db::Sqlite).await;
    let gw = Arc::new(site.start_configured(&json!({
        "providers": [
            {"id": "db", "type": "db"},
            wasm_entry("soft", "soft_signer", json!({})),
            wasm_entry("evil", "hostile", json!({"limits": {"instances": 2, "timeoutMs": timeout_ms, "memoryMb": 16}})),
        ]
    })));
    let healthy = gw.create(json!({"kid": "healthy"})).await;
    let evil = gw
        .create(json!({"kid": "evil-key", "provider": "evil"}))
        .await;
    gw.create(json!({"kid": "soft-secret", "provider": "soft"}))
        .await;

    // The healthy provider keeps answering during and after every attack.
    let watcher = SignWatcher::start(
        gw.clone(),
        "healthy",
        healthy["publicJwk"].clone(),
        Duration::from_millis(10),
    );

    // An infinite loop: 504 within the deadline plus 100 ms.
    let started = Instant::now();
    let (status, body) = sign_data(&gw, "evil-key", b"loop").await;
    let elapsed = started.elapsed();
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("backend_timeout")),
        "{body}"
    );
    assert!(
        elapsed < Duration::from_millis(timeout_ms + 100),
        "loop answered after {elapsed:?}"
    );

    // A memory bomb: 502, and the 16 MiB cap holds (the gateway does not balloon).
    let (status, body) = sign_data(&gw, "evil-key", b"oom").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("backend_error")),
        "{body}"
    );
    let rss = proc_kib(gw.pid(), "VmRSS");
    assert!(rss < 400 * 1024, "gateway RSS grew to {rss} KiB");
    assert!(
        gw.log_text().contains("memory allocation"),
        "the guest's panic message is logged"
    );

    // A trap: 502, and the next request succeeds on a fresh instance.
    let (status, body) = sign_data(&gw, "evil-key", b"trap").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    for _ in 0..3 {
        let signature = gw.sign("evil-key", b"honest again").await;
        assert_verifies(&evil["publicJwk"], b"honest again", &signature);
    }

    // Egress to a host not in allowedHosts: denied, logged, and never received.
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let url = format!("http://{}/steal", target.local_addr().unwrap());
    let (status, body) = sign_data(&gw, "evil-key", format!("egress:{url}").as_bytes()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    match target.accept() {
        Ok((mut stream, _)) => {
            let mut buf = Vec::new();
            let _ = stream.read_to_end(&mut buf);
            panic!(
                "the target received a connection: {}",
                String::from_utf8_lossy(&buf)
            );
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock),
    }
    assert!(
        gw.log_text().contains("guest HTTP request denied"),
        "denial is logged"
    );

    // Reading another guest's storage: it sees only its own key.
    let (status, body) = sign_data(&gw, "evil-key", b"snoop:key/soft-secret").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("snoop found=false listed=1"),
        "{body}"
    );

    assert!(watcher.finish().await.len() >= 5);
    let (_, health) = gw.get("/health/kms").await;
    assert!(
        health.as_array().unwrap().iter().all(|h| h["ok"] == true),
        "{health}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_storage_is_sealed_and_survives_a_restart() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let config = json!({"providers": [{"id": "db", "type": "db"}, wasm_entry("soft", "soft_signer", json!({}))]});
    let gw = site.start_configured(&config);
    let (private, scalar) = known_private_jwk();
    let (status, _) = gw
        .post(
            "/keys/soft-imported/import",
            json!({"privateJwk": private, "provider": "soft"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let generated = gw
        .create(json!({"kid": "soft-generated", "provider": "soft"}))
        .await;
    let log = gw.log.clone();
    assert!(gw.stop().success());

    let mut files = files_under(&site.data_dir());
    files.push(log);
    assert_scalar_absent(&files, &scalar);

    let gw = site.start_configured(&config);
    let signature = gw.sign("soft-imported", b"after restart").await;
    assert_verifies(&private, b"after restart", &signature);
    let signature = gw.sign("soft-generated", b"after restart").await;
    assert_verifies(&generated["publicJwk"], b"after restart", &signature);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sha256_refuses_to_start_and_the_compiled_cache_is_reused() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let component = site.dir.path().join("guest.wasm");
    std::fs::copy(guest("soft_signer"), &component).unwrap();
    let digest = sha256_hex(&component);
    let config = json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "soft", "type": "wasm", "component": "guest.wasm", "sha256": digest},
    ]});

    let first = site.start_configured(&config);
    assert!(
        first.log_text().contains("cache=\"miss\""),
        "{}",
        first.log_text()
    );
    assert!(first.stop().success());
    let second = site.start_configured(&config);
    let log = second.log_text();
    let loaded = log
        .lines()
        .find(|l| l.contains("guest component loaded"))
        .unwrap();
    assert!(loaded.contains("cache=\"hit\""), "{log}");
    println!("second start: {loaded}");
    assert!(second.stop().success());

    std::fs::copy(guest("hostile"), &component).unwrap();
    let path = site.write_config(&config);
    let output = site
        .command(&["--config", path.to_str().unwrap()], &[])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("kms.json pins {digest}")),
        "{stderr}"
    );
    assert!(stderr.contains("providers[1]"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_built_against_0_1_0_2_and_0_3_serve_beside_a_0_4_guest() {
    let _serial = GUEST_SERIAL.lock().await;
    let fixture = |version: &str| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("fixtures/guests/soft_signer-{version}.wasm"))
    };
    let (v0_1, v0_2, v0_3) = (fixture("0.1.0"), fixture("0.2.0"), fixture("0.3.0"));
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "oldest", "type": "wasm", "component": v0_1, "limits": {"instances": 1}},
            {"id": "old", "type": "wasm", "component": v0_2, "limits": {"instances": 1}},
            {"id": "recent", "type": "wasm", "component": v0_3, "limits": {"instances": 1}},
            wasm_entry("new", "soft_signer", json!({"limits": {"instances": 1}})),
        ]
    }));
    let log = gw.log_text();
    for version in ["0.1.0", "0.2.0", "0.3.0", "0.4.0"] {
        assert!(
            log.contains(&format!("wit=\"{version}\"")),
            "{version}: {log}"
        );
    }
    // Each signs what its contract has; ML-DSA (and, for 0.1.0, all but ES256)
    // is 405 naming the provider, and so is a digest for all but 0.4.0 (the
    // matrix signs digests where `signsDigests` says so, else expects 405).
    assert_eq!(supported_algs(&gw, "oldest").await, ["ES256"]);
    assert_eq!(alg_matrix(&gw, "oldest", true).await, ["ES256"]);
    let mut classic = CLASSIC_ALGS.to_vec();
    classic.push("Ed25519");
    assert_eq!(alg_matrix(&gw, "old", true).await, classic);
    assert_eq!(alg_matrix(&gw, "recent", true).await, ALGS);
    assert_eq!(alg_matrix(&gw, "new", true).await, ALGS);
    for (provider, digests) in [
        ("oldest", false),
        ("old", false),
        ("recent", false),
        ("new", true),
    ] {
        assert_eq!(signs_digests(&gw, provider).await, digests, "{provider}");
    }
    // The older builds still pass the conformance run, refusing what they lack
    // (the host refuses ML-DSA for them without calling the guest).
    for (component, signs, lacks) in [(&v0_1, "ES256", "EdDSA"), (&v0_2, "PS256", "ML-DSA-65")] {
        let (code, text) = adapter_check_file(component, &[]);
        assert_eq!(code, Some(0), "{text}");
        assert!(
            text.contains(&format!("PASS  import → sign → verify ({signs})")),
            "{text}"
        );
        assert!(
            text.contains(&format!("PASS  {lacks}: unadvertised → refused")),
            "{text}"
        );
    }
}

/// Key generation has its own deadline (`limits.generateTimeoutMs`): past it a
/// create is 504, while imports and signs keep the call deadline and work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_generation_has_its_own_deadline() {
    let _serial = GUEST_SERIAL.lock().await;
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            wasm_entry("tight", "soft_signer", json!({"limits": {"instances": 1, "generateTimeoutMs": 1}})),
            wasm_entry("roomy", "soft_signer", json!({"limits": {"instances": 1}})),
        ]
    }));
    let (status, answer) = gw
        .post(
            "/keys",
            json!({"provider": "tight", "alg": "RS256", "keySize": 4096}),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::GATEWAY_TIMEOUT, Some("backend_timeout")),
        "{answer}"
    );
    assert_eq!(gw.get("/keys").await.1["keys"], json!([]));
    import_known_key_and_verify(&gw, "imported", "tight").await;
    // The default deadline leaves room for RSA-4096 in wasm, also on a busy machine.
    let started = std::time::Instant::now();
    let key = gw
        .create_and_sign(
            json!({"provider": "roomy", "alg": "RS256", "keySize": 4096}),
            b"m",
        )
        .await;
    eprintln!(
        "RSA-4096 generation in the soft-signer guest: {:?}",
        started.elapsed()
    );
    assert_eq!(key["provider"], "roomy");
}
