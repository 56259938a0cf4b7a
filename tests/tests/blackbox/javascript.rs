//! Guests written in JavaScript (componentize-js), built by `scripts/js-guests`
//! into `KMSGW_JS_GUESTS_DIR`: the example passes `kmsgw adapter check`, serves
//! beside a Rust guest and the db provider, and a JavaScript guest reaches no
//! network it was not granted.

use std::path::PathBuf;
use std::process::Command;

use kmsgw_tests::*;
use serde_json::json;

fn js_guest(name: &str) -> PathBuf {
    let dir = std::env::var_os("KMSGW_JS_GUESTS_DIR")
        .expect("KMSGW_JS_GUESTS_DIR: the JavaScript guests (scripts/test builds them with scripts/js-guests)");
    PathBuf::from(dir).join(format!("{name}.wasm"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_guest_serves_beside_a_rust_guest_and_reaches_nothing_it_was_not_granted() {
    let checked = Command::new(kmsgw_bin())
        .args(["adapter", "check", "--timeout-ms", "10000"])
        .arg(js_guest("soft_signer_js"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && report.contains("checks passed"),
        "{report}"
    );

    let site = Site::new(Db::Sqlite).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = json!({"timeoutMs": 10000, "instances": 1});
    // The hostile guest signs like the example, except for its attack message.
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "rust", "type": "wasm", "component": guest("soft_signer")},
        {"id": "js", "type": "wasm", "component": js_guest("hostile_js"), "limits": limits},
    ]}));
    for provider in ["db", "rust", "js"] {
        let kid = format!("on-{provider}");
        let key = gw.create(json!({"kid": kid, "provider": provider})).await;
        for message in [&b""[..], b"a credential", &[0x42; 5000]] {
            assert_verifies(&key["publicJwk"], message, &gw.sign(&kid, message).await);
        }
        delete_and_check_gone(&gw, &kid).await;
    }

    // The hostile guest tries its only network, wasi:http, towards a listener not
    // in its allowedHosts (it has none): refused, and nothing connects.
    gw.create(json!({"kid": "h", "provider": "js"})).await;
    let attack = format!("connect:127.0.0.1:{port}");
    let (status, body) = gw
        .post("/keys/h/sign", json!({"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &attack)}))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("HTTP-request-denied"), "{error}");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the JavaScript guest reached the listener"
    );
    assert!(gw.log_text().contains("guest HTTP request denied"));
}
