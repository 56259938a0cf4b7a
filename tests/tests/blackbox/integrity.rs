//! Integrity under faults and hostile input: no request can break the audit
//! chain, a failed audit write leaves no change behind, and a full disk refuses
//! writes quickly, loses nothing acknowledged and heals by itself.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kmsgw_tests::audit::Tamper;
use kmsgw_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Connection;

fn b64(message: &[u8]) -> String {
    STANDARD.encode(message)
}

/// Every record of the log, in chain order.
async fn all_records(gw: &Gateway) -> Vec<Value> {
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = gw.get(&format!("/audit?limit=1000&after={after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let batch = page["records"].as_array().unwrap().clone();
        if batch.is_empty() {
            return records;
        }
        after = batch.last().unwrap()["seq"].as_i64().unwrap();
        records.extend(batch);
    }
}

async fn verify(gw: &Gateway) -> Value {
    let (status, verdict) = gw.get("/audit/verify").await;
    assert_eq!(status, StatusCode::OK, "{verdict}");
    verdict
}

/// Makes the database refuse (or take again) every audit row: a failure
/// injected between an operation and its record.
async fn refuse_audit_rows(site: &Site, refuse: bool) {
    let statement = if refuse {
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log \
         BEGIN SELECT RAISE(ABORT, 'injected audit failure'); END"
    } else {
        "DROP TRIGGER refuse_audit"
    };
    site.execute(&[statement]).await;
}

on_both_databases!(no_malformed_request_breaks_the_audit_chain);

async fn no_malformed_request_breaks_the_audit_chain(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    gw.create_and_sign(json!({"kid": "k1"}), b"before").await;
    let (private, _) = known_private_jwk();
    let long = "x".repeat(100_000);
    let nul = "a\u{0}b";
    let creates = [
        json!({"kid": ""}),
        json!({"provider": ""}),
        json!({"alg": ""}),
        json!({"kid": "", "provider": "", "alg": ""}),
        json!({"kid": nul}),
        json!({"provider": nul}),
        json!({"kid": long}),
        json!({"provider": long}),
        json!({"kid": "\u{1b}[31mred\n"}),
        json!({"kid": "ok", "keySize": 1}),
        json!({"kid": "k1"}),
        json!({"kid": "p", "rotation": {"every": ""}}),
        json!({"kid": "c", "rotation": {"certificate": {"issuerKid": "", "validityDays": 0, "subject": ""}}}),
        json!({"kid": 5}),
        json!([]),
    ];
    for body in &creates {
        let (status, answer) = gw.post("/keys", body.clone()).await;
        assert!(status.is_client_error(), "{body} → {status} {answer}");
    }
    let (status, _) = gw
        .raw(Method::POST, "/keys", Some(b"{\"kid\":".to_vec()))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bad_jwk = json!({"privateJwk": {"kty": "EC", "crv": "P-256", "d": ""}});
    for (path, body) in [
        ("/keys/k1/sign", json!({"data": "!!"})),
        ("/keys/k1/sign", json!({"data": b64(b"m"), "alg": ""})),
        ("/keys/%00/sign", json!({"data": b64(b"m")})),
        ("/keys/a%0Ab/sign", json!({"data": b64(b"m")})),
        ("/keys/k1/sign/batch", json!({"data": []})),
        ("/keys/k1/sign/batch", json!({"data": ["!!"]})),
        ("/keys/k1/sign", json!({"digest": ""})),
        ("/keys/k1/sign", json!({"digest": b64(&[7; 5000])})),
        (
            "/keys/k1/sign",
            json!({"digest": b64(b"m"), "data": b64(b"m")}),
        ),
        (
            "/keys/k1/sign/batch",
            json!({"digest": ["", b64(&[1; 32])]}),
        ),
        ("/keys/k1/sign/batch", json!({"digest": []})),
        (
            "/csc/v2/signatures/signHash",
            json!({"credentialID": "k1", "hashes": [""], "signAlgo": ""}),
        ),
        (
            "/csc/v2/signatures/signHash",
            json!({"credentialID": nul, "hashes": [], "signAlgo": nul}),
        ),
        (
            "/csc/v2/credentials/authorize",
            json!({"credentialID": "k1", "numSignatures": 0, "hashes": [""]}),
        ),
        ("/keys//import", json!({"privateJwk": private})),
        ("/keys/%00/import", json!({"privateJwk": private})),
        ("/keys/x/import", bad_jwk.clone()),
        (
            "/keys/x/import",
            json!({"privateJwk": private, "provider": nul}),
        ),
        ("/keys/%00/rotate", json!({})),
        ("/keys/k1/csr", json!({"subject": "CN=\"a,O=evil\""})),
        ("/keys/k1/csr", json!({"subject": "CN=a", "dnsNames": [""]})),
        ("/keys/k1/certificate", json!({"certificate": "not pem"})),
        (
            "/keys/k1/certificate/issue",
            json!({"subject": "CN=a\u{0}", "validityDays": 1}),
        ),
        (
            "/keys/%00/certificate/issue",
            json!({"subject": "CN=a", "validityDays": 1}),
        ),
    ] {
        let (status, answer) = gw.post(path, body.clone()).await;
        assert!(
            status.is_client_error(),
            "{path} {body} → {status} {answer}"
        );
    }
    for path in ["/keys/%00", "/keys/nope", "/keys/%1B%5B0m?force=true"] {
        let (status, answer) = gw.delete(path).await;
        assert!(status.is_client_error(), "{path} → {status} {answer}");
    }
    for path in [
        "/keys?cursor=%00",
        "/audit?kid=%00",
        "/keys/%00",
        "/keys/%00/certificate",
    ] {
        let (status, answer) = gw.get(path).await;
        assert!(status.is_client_error(), "{path} → {status} {answer}");
    }
    // Two creates in a row (rows of their own), then signs at once (that share
    // links).
    gw.create(json!({"kid": "n1"})).await;
    gw.create(json!({"kid": "n2"})).await;
    let messages: Vec<Vec<u8>> = (0..64).map(|i| format!("m{i}").into_bytes()).collect();
    futures::future::join_all(messages.iter().map(|m| gw.sign("k1", m))).await;
    gw.sign("k1", b"after").await;

    let last = json!(sha256_hex_of(b"after"));
    wait_until(
        Duration::from_secs(10),
        "the last sign's record",
        || async {
            all_records(&gw)
                .await
                .last()
                .is_some_and(|r| r["messageSha256"] == last)
        },
    )
    .await;
    let records = all_records(&gw).await;
    let verdict = verify(&gw).await;
    assert_eq!(
        verdict,
        json!({"ok": true, "checked": records.len()}),
        "{records:#?}"
    );
    // Each of the signs made at once is listed on its own with its message's
    // hash, and some of them share a link.
    for m in &messages {
        let hash = json!(sha256_hex_of(m));
        assert!(
            records
                .iter()
                .any(|r| r["action"] == "sign" && r["kid"] == "k1" && r["messageSha256"] == hash),
            "{m:?} has no record"
        );
    }
    assert!(
        records
            .iter()
            .any(|r| r["link"]["lastSeq"].as_i64() > r["link"]["firstSeq"].as_i64()),
        "no link carries more than one record"
    );
    // What was sent is what is recorded: an empty kid is "", an absent provider null.
    let empty_kid = records
        .iter()
        .find(|r| r["action"] == "create" && r["kid"] == "")
        .expect("the refused create with an empty kid is recorded");
    assert_eq!(empty_kid["provider"], Value::Null);
    assert_eq!(empty_kid["outcome"], "invalid_request");
    let cut = records
        .iter()
        .filter_map(|r| r["kid"].as_str())
        .find(|kid| kid.starts_with("xxx"))
        .unwrap();
    assert!(cut.ends_with('…') && cut.chars().count() == 257, "{cut}");
    assert!(
        records
            .iter()
            .any(|r| r["kid"] == json!("a\\u{0}b") || r["provider"] == json!("a\\u{0}b"))
    );

    // Changed, removed and reordered records still break the chain, whether a
    // record has a row of its own or shares a link.
    let n = records.len();
    let original = records[2]["outcome"].clone();
    let bad = site
        .tamper_audit(3, Tamper::Set("outcome", json!("ok")))
        .await;
    assert_eq!(verify(&gw).await["firstBadSeq"], bad);
    site.tamper_audit(3, Tamper::Set("outcome", original)).await;
    assert_eq!(verify(&gw).await, json!({"ok": true, "checked": n}));
    // Two neighbours that differ, in a link and as rows of their own.
    let in_link = |r: &Value| r["link"].is_object();
    let pair = |linked: bool| {
        records
            .windows(2)
            .find(|w| {
                in_link(&w[0]) == linked
                    && in_link(&w[1]) == linked
                    && w[0]["link"] == w[1]["link"]
                    && (&w[0]["kid"], &w[0]["messageSha256"], &w[0]["outcome"])
                        != (&w[1]["kid"], &w[1]["messageSha256"], &w[1]["outcome"])
            })
            .map(|w| w[0]["seq"].as_i64().unwrap())
            .expect("two different neighbours")
    };
    for linked in [true, false] {
        let seq = pair(linked);
        let bad = site.tamper_audit(seq, Tamper::SwapWithNext).await;
        assert_eq!(verify(&gw).await["firstBadSeq"], bad, "linked: {linked}");
        site.tamper_audit(seq, Tamper::SwapWithNext).await;
        assert_eq!(verify(&gw).await["ok"], true);
    }
    let bad = site.tamper_audit(2, Tamper::Remove).await;
    assert_eq!(verify(&gw).await["firstBadSeq"], bad);
}

/// A failure of the audit write, injected between a change and its record (a
/// trigger that refuses every audit row): the change is not made and is not
/// answered 2xx; signs go on and their records are written once the database
/// takes them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_audit_write_leaves_neither_the_change_nor_its_record() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let root = gw
        .create_and_sign(json!({"kid": "root", "alg": "ES384"}), b"r")
        .await;
    let (status, answer) = gw
        .post(
            "/keys/root/certificate/issue",
            json!({"subject": "CN=Root", "validityDays": 30, "ca": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let kept = gw.create_and_sign(json!({"kid": "kept"}), b"k").await;
    let before = all_records(&gw).await.len();

    refuse_audit_rows(&site, true).await;
    let (private, _) = known_private_jwk();
    let attempts = [
        (Method::POST, "/keys", Some(json!({"kid": "new"}))),
        (
            Method::POST,
            "/keys/imported/import",
            Some(json!({"privateJwk": private})),
        ),
        (Method::POST, "/keys/kept/rotate", None),
        (
            Method::POST,
            "/keys/kept/certificate/issue",
            Some(json!({"subject": "CN=kept", "validityDays": 5, "issuerKid": "root"})),
        ),
        (Method::DELETE, "/keys/kept", None),
        (Method::DELETE, "/keys/root?force=true", None),
    ];
    for (method, path, body) in attempts {
        let (status, answer) = gw.call(None, method.clone(), path, body).await;
        assert!(
            status.is_server_error(),
            "{method} {path} answered {status} {answer} while its record could not be written"
        );
    }
    // Nothing of it happened.
    for kid in ["new", "imported"] {
        assert_eq!(
            gw.get(&format!("/keys/{kid}")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (_, record) = gw.get("/keys/kept").await;
    assert_eq!(record["version"], 1, "{record}");
    assert!(record.get("x5c").is_none(), "{record}");
    assert_eq!(record["publicJwk"], kept["publicJwk"]);
    assert_eq!(gw.get("/keys/root").await.0, StatusCode::OK);
    // Signs go on meanwhile; their records wait in the writer's queue.
    let signature = gw.sign("kept", b"during").await;
    assert_verifies(&kept["publicJwk"], b"during", &signature);
    assert_verifies(&root["publicJwk"], b"r2", &gw.sign("root", b"r2").await);

    refuse_audit_rows(&site, false).await;
    let r2 = json!(sha256_hex_of(b"r2"));
    wait_until(Duration::from_secs(10), "the queued records", || async {
        all_records(&gw)
            .await
            .iter()
            .any(|r| r["messageSha256"] == r2)
    })
    .await;
    let records = all_records(&gw).await;
    let added: Vec<(&str, &str)> = records[before..]
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        added
            .iter()
            .all(|(action, outcome)| *action == "sign" || *outcome != "ok"),
        "a change that was refused is recorded as done: {added:?}"
    );
    for message in [b"during".as_slice(), b"r2"] {
        let hash = json!(sha256_hex_of(message));
        assert!(records.iter().any(|r| r["messageSha256"] == hash));
    }
    assert_eq!(
        added.iter().filter(|(a, _)| *a != "sign").count(),
        6,
        "each refused change is recorded once: {added:?}"
    );
    assert_eq!(
        verify(&gw).await,
        json!({"ok": true, "checked": records.len()})
    );
    // And the gateway writes again by itself.
    gw.create_and_sign(json!({"kid": "new"}), b"n").await;
}

/// A tmpfs mounted at a directory for the length of a test.
pub(crate) struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount");
        assert!(
            status.success(),
            "the disk-full test mounts a tmpfs and needs root (CI runs as root)"
        );
        Tmpfs(dir.to_owned())
    }

    /// Fills what is left with a file; returns its path.
    pub(crate) fn fill(&self) -> std::path::PathBuf {
        let path = self.0.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", path.display()))
            .stderr(std::process::Stdio::null())
            .status();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The data directory on a small tmpfs, filled until writes fail, then freed:
/// refusals are quick and say so, signs of existing keys go on, writes heal
/// without a restart, and after a restart everything answered 2xx is there and
/// nothing refused is. Three rounds: the failure was intermittent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_quickly_loses_nothing_and_heals() {
    for round in 0..3 {
        full_disk_round(round).await;
    }
}

async fn full_disk_round(round: usize) {
    let site = Site::new(Db::Sqlite).await;
    let disk = Tmpfs::mount(&site.data_dir(), "24m");
    let gw = site.start();
    let mut acknowledged: Vec<(String, Value)> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut signed: Vec<Vec<u8>> = Vec::new();
    for i in 0..5 {
        let key = gw.create(json!({"kid": format!("pre-{i}")})).await;
        acknowledged.push((format!("pre-{i}"), key["publicJwk"].clone()));
    }
    let filler = disk.fill();

    // Writes against the full disk: each answer quick and true.
    let mut full_answers = BTreeSet::new();
    for i in 0..40 {
        let kid = format!("full-{round}-{i}");
        let started = Instant::now();
        let (status, answer) = gw.post("/keys", json!({"kid": kid})).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "create took {took:?}: {answer}"
        );
        if status == StatusCode::OK {
            acknowledged.push((kid, answer["publicJwk"].clone()));
        } else {
            assert!(
                status == StatusCode::INSUFFICIENT_STORAGE
                    || status == StatusCode::SERVICE_UNAVAILABLE,
                "{status} {answer}"
            );
            full_answers.insert(answer["code"].as_str().unwrap().to_owned());
            refused.push(kid);
        }
        // Signs of existing keys go on.
        let message = format!("full {round} {i}").into_bytes();
        let (status, answer) = gw
            .post("/keys/pre-0/sign", json!({"data": b64(&message)}))
            .await;
        if status == StatusCode::OK {
            assert_verifies(
                &acknowledged[0].1,
                &message,
                answer["signature"].as_str().unwrap(),
            );
            signed.push(message);
        } else {
            assert_eq!(answer["code"], "audit_unavailable", "{answer}");
        }
    }
    assert!(
        !refused.is_empty(),
        "the full disk refused no create (round {round})"
    );
    assert!(
        full_answers.contains("storage_full"),
        "a full disk is named as such: {full_answers:?}"
    );
    assert!(
        !signed.is_empty(),
        "no sign went through while the disk was full"
    );

    // Room again: writes work within seconds, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let healed = Instant::now();
    let mut i = 0;
    loop {
        let kid = format!("after-{round}-{i}");
        let (status, answer) = gw.post("/keys", json!({"kid": kid})).await;
        if status == StatusCode::OK {
            acknowledged.push((kid, answer["publicJwk"].clone()));
            break;
        }
        refused.push(kid);
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "writes still refused 10 s after space returned: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        i += 1;
    }
    for j in 0..5 {
        let kid = format!("later-{round}-{j}");
        let key = gw.create(json!({"kid": kid})).await;
        acknowledged.push((kid, key["publicJwk"].clone()));
    }
    let message = format!("after {round}").into_bytes();
    gw.sign("pre-1", &message).await;
    signed.push(message);
    assert_eq!(gw.stop().code(), Some(0));

    // After a restart: what was acknowledged is there, what was refused is not.
    let gw = site.start();
    for (kid, jwk) in &acknowledged {
        let message = format!("check {kid}").into_bytes();
        assert_verifies(jwk, &message, &gw.sign(kid, &message).await);
    }
    for kid in &refused {
        let (status, answer) = gw.get(&format!("/keys/{kid}")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "refused `{kid}` exists: {answer}"
        );
    }
    let records = all_records(&gw).await;
    let hashes: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["messageSha256"].as_str())
        .collect();
    for message in &signed {
        assert!(
            hashes.contains(sha256_hex_of(message).as_str()),
            "a sign answered 200 has no audit record ({})",
            String::from_utf8_lossy(message)
        );
    }
    let created: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["action"] == "create" && r["outcome"] == "ok")
        .map(|r| r["kid"].as_str().unwrap())
        .collect();
    for (kid, _) in &acknowledged {
        assert!(
            created.contains(kid.as_str()),
            "`{kid}` has no create record"
        );
    }
    for kid in &refused {
        assert!(
            !created.contains(kid.as_str()),
            "refused `{kid}` is recorded as created"
        );
    }
    assert_eq!(verify(&gw).await["ok"], true);
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    gw.stop();
    drop(disk);
}

const VAULT_TOKEN: &str = "vault-token-the-echo-must-not-return-1";
const API_KEY: &str = "bearer-api-key-the-echo-must-not-return-2";
const CLIENT_SECRET: &str = "oauth2-client-secret-not-returned-3";
const REFUSED_SECRET: &str = "oauth2-secret-of-a-refusing-endpoint-4";
const GUEST_BEARER: &str = "guest-egress-bearer-not-returned-5";
const OBTAINED: &str = "obtained-access-token-echoed-back-9f3a";

/// A backend that echoes every credential it receives in its error bodies
/// (`tests/standins/echo_backend.py`): a Vault token, an `http` API key, an
/// OAuth2 client secret (at a token endpoint that refuses), the access token
/// obtained with another, and a guest's host-held bearer. None of them reaches
/// an answer, `/health/kms`, `/providers`, `/metrics` or the log at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_never_carry_our_secrets() {
    let site = Site::new(Db::Sqlite).await;
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("standins/echo_backend.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .args(["--port", &port.to_string(), "--token", OBTAINED]);
    let _echo = Background::start(
        &mut cmd,
        &site.dir.path().join("echo.log"),
        port,
        "the echo backend",
    );
    let base = format!("http://127.0.0.1:{port}");
    let oauth = |id: &str, path: &str, secret: &str| {
        json!({"id": id, "type": "http", "baseUrl": base, "auth": {
            "type": "oauth2-client-credentials", "tokenUrl": format!("{base}/{path}"),
            "clientId": "kmsgw", "clientSecret": secret}})
    };
    let path = site.write_config(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "vault", "type": "vault", "vaultUrl": base, "vaultToken": VAULT_TOKEN},
            {"id": "bearer", "type": "http", "baseUrl": base, "apiKey": API_KEY},
            oauth("oauth", "token", CLIENT_SECRET),
            oauth("refused", "token-refused", REFUSED_SECRET),
            {"id": "guest", "type": "wasm", "component": guest("remote_http"),
             "config": {"baseUrl": base}, "allowedHosts": [base],
             "egressAuth": [{"host": format!("127.0.0.1:{port}"), "type": "bearer", "token": GUEST_BEARER}]},
        ]
    }));
    let gw = site.start_with(
        &["--config", path.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    let mut seen = String::new();
    for provider in ["vault", "bearer", "oauth", "refused", "guest"] {
        let (status, answer) = gw.post("/keys", json!({"provider": provider})).await;
        assert!(status.is_server_error(), "{provider}: {status} {answer}");
        let text = answer.to_string();
        assert!(
            text.contains("[redacted]"),
            "{provider}: the echo did not reach the answer, so this proves nothing: {text}"
        );
        seen.push_str(&text);
        let (_, answer) = gw
            .post(
                "/keys/echoed/import",
                json!({"privateJwk": known_private_jwk().0, "provider": provider}),
            )
            .await;
        seen.push_str(&answer.to_string());
    }
    for route in ["/health/kms", "/providers", "/metrics", "/ready"] {
        seen.push_str(&gw.text(None, route).await.1);
    }
    assert!(seen.contains("[redacted]"));
    let log = gw.log_text();
    assert!(
        log.contains("DEBUG"),
        "the gateway did not log at debug level"
    );
    for secret in [
        VAULT_TOKEN,
        API_KEY,
        CLIENT_SECRET,
        REFUSED_SECRET,
        GUEST_BEARER,
        OBTAINED,
    ] {
        assert!(
            !seen.contains(secret),
            "`{secret}` reached an answer:\n{seen}"
        );
        assert!(!log.contains(secret), "`{secret}` reached the log");
    }
}

/// The writer's queue is bounded (`audit.queueRecords`): while the database
/// refuses records, signs go on until the queue is full, then wait a moment and
/// are refused with 503 `audit_unavailable` without signing; every sign answered
/// 200 gets its record once the database takes records again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_queue_refuses_signs_without_signing() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "audit": {"queueRecords": 20},
    }));
    let key = gw.create(json!({"kid": "k"})).await;
    refuse_audit_rows(&site, true).await;
    let mut answered = Vec::new();
    let mut refused = Vec::new();
    for i in 0..60 {
        let message = format!("m{i}").into_bytes();
        let started = Instant::now();
        let (status, answer) = gw
            .post("/keys/k/sign", json!({"data": b64(&message)}))
            .await;
        match status {
            StatusCode::OK => {
                assert_verifies(
                    &key["publicJwk"],
                    &message,
                    answer["signature"].as_str().unwrap(),
                );
                answered.push(message);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer["code"], "audit_unavailable", "{answer}");
                assert!(
                    started.elapsed() < Duration::from_secs(4),
                    "{:?}",
                    started.elapsed()
                );
                refused.push(message);
                if refused.len() == 2 {
                    break;
                }
            }
            other => panic!("{other} {answer}"),
        }
    }
    assert_eq!(refused.len(), 2);
    refuse_audit_rows(&site, false).await;
    let last = json!(sha256_hex_of(answered.last().unwrap()));
    wait_until(Duration::from_secs(10), "the queued records", || async {
        all_records(&gw)
            .await
            .iter()
            .any(|r| r["messageSha256"] == last)
    })
    .await;
    // The writer held one batch (what reached it while it lingered, told in its
    // log once written) and the queue 20 more: exactly those signs were answered.
    let log = gw.log_text();
    let held: usize = log
        .lines()
        .find(|line| line.contains("audit records written after the database refused them"))
        .and_then(|line| line.split("records=").nth(1))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no held batch in the log:\n{log}"));
    assert!(held >= 1, "{held}");
    assert_eq!(answered.len(), held + 20, "{held} held");
    let records = all_records(&gw).await;
    let hashes: BTreeSet<&str> = records
        .iter()
        .filter_map(|r| r["messageSha256"].as_str())
        .collect();
    for message in &answered {
        assert!(hashes.contains(sha256_hex_of(message).as_str()));
    }
    for message in &refused {
        assert!(!hashes.contains(sha256_hex_of(message).as_str()));
    }
    assert_eq!(verify(&gw).await["ok"], true);
    // A refused sign did not sign: the key counts the answered ones only.
    let (_, record) = gw.get("/keys/k").await;
    assert_eq!(record["signCount"], answered.len(), "{record}");
}

/// With `signs: "durable"` a sign is answered only once its record is committed;
/// when the database does not take it within 10 s the answer is 503
/// `audit_unavailable` and carries no signature, and the record is written
/// once the database takes records again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_sign_whose_record_cannot_be_committed_gets_no_signature() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "audit": {"signs": "durable"},
    }));
    let key = gw.create(json!({"kid": "k"})).await;
    assert_verifies(&key["publicJwk"], b"before", &gw.sign("k", b"before").await);
    refuse_audit_rows(&site, true).await;
    let started = Instant::now();
    let (status, answer) = gw
        .post("/keys/k/sign", json!({"data": b64(b"during")}))
        .await;
    let took = started.elapsed();
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("audit_unavailable")),
        "{answer}"
    );
    assert!(answer.get("signature").is_none(), "{answer}");
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(15)).contains(&took),
        "{took:?}"
    );
    refuse_audit_rows(&site, false).await;
    let during = json!(sha256_hex_of(b"during"));
    wait_until(Duration::from_secs(10), "the delayed record", || async {
        all_records(&gw)
            .await
            .iter()
            .any(|r| r["messageSha256"] == during)
    })
    .await;
    assert_eq!(verify(&gw).await["ok"], true);
    assert_verifies(&key["publicJwk"], b"after", &gw.sign("k", b"after").await);
}
