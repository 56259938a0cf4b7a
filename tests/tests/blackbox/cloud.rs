//! The named guests shipped with kmsgw against their backends: `cosmian-kms`
//! against the real Cosmian KMS server (built by `scripts/test`, binary in
//! `KMSGW_COSMIAN_BIN`), `azure-kv` and `gcp-kms` against the emulators in
//! `tests/standins/` (no runnable Azure or Google service exists). Each backend
//! demands credentials that only the host holds (`egressAuth`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kmsgw_tests::*;
use serde_json::{Value, json};

fn standin(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("standins")
        .join(name)
}

/// `kmsgw adapter check` of provider `id` in the kms.json at `config`; panics
/// with the report unless every check passes.
fn adapter_check(config: &Path, id: &str) -> String {
    let output = Command::new(kmsgw_bin())
        .args(["adapter", "check", "--kms-json"])
        .arg(config)
        .args(["--provider", id])
        .env_remove("KMSGW_ADAPTER_DIR")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kmsgw adapter check");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && report.contains("checks passed"),
        "adapter check of `{id}` failed:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    report
}

/// A provider's entry in `GET /health/kms`.
async fn health_of(gw: &Gateway, id: &str) -> Value {
    let (_, health) = gw.get("/health/kms").await;
    health
        .as_array()
        .and_then(|all| all.iter().find(|p| p["providerId"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no `{id}` in {health}"))
}

/// The backend's id for key `kid`, from the gateway's catalog.
async fn external_id(site: &Site, kid: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .unwrap();
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT external_id FROM keys WHERE kid = '{kid}'"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

// ---------------------------------------------------------------- Cosmian KMS

/// A Cosmian KMS server on loopback that accepts only its API token.
struct Cosmian {
    server: Background,
    token: String,
}

fn ttlv(tag: &str, kind: &str, value: Value) -> Value {
    json!({"tag": tag, "type": kind, "value": value})
}

impl Cosmian {
    fn bin() -> PathBuf {
        std::env::var_os("KMSGW_COSMIAN_BIN").map(PathBuf::from).expect(
            "KMSGW_COSMIAN_BIN: the Cosmian KMS server binary (scripts/test builds it and sets this)",
        )
    }

    fn spawn(dir: &Path, port: u16, token_id: Option<&str>) -> Background {
        let mut cmd = Command::new(Self::bin());
        cmd.args(["--hostname", "127.0.0.1", "--port", &port.to_string()])
            .args(["--database-type", "sqlite", "--sqlite-path"])
            .arg(dir.join("cosmian-db"))
            .arg("--root-data-path")
            .arg(dir.join("cosmian-root"))
            .arg("--tmp-path")
            .arg(dir);
        if let Some(id) = token_id {
            cmd.args(["--api-token-id", id]);
        }
        let log = dir.join(format!(
            "cosmian-{}.log",
            token_id.map_or("setup", |_| "kms")
        ));
        Background::start(&mut cmd, &log, port, "the Cosmian KMS server")
    }

    /// Starts the server, makes its API token (an AES key whose base64 value is
    /// the token, as Cosmian's `--api-token-id` wants) and restarts it requiring it.
    async fn start(dir: &Path) -> Cosmian {
        let port = free_port();
        let mut setup = Self::spawn(dir, port, None);
        let attributes = json!([
            ttlv("CryptographicAlgorithm", "Enumeration", json!("AES")),
            ttlv("CryptographicLength", "Integer", json!(256)),
            ttlv("CryptographicUsageMask", "Integer", json!(12)),
            ttlv("ObjectType", "Enumeration", json!("SymmetricKey")),
        ]);
        let created = kmip(
            port,
            None,
            ttlv(
                "Create",
                "Structure",
                json!([
                    ttlv("ObjectType", "Enumeration", json!("SymmetricKey")),
                    ttlv("Attributes", "Structure", attributes)
                ]),
            ),
        )
        .await
        .1;
        let id = find(&created, "UniqueIdentifier").expect("an id")["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let uid = ttlv("UniqueIdentifier", "TextString", json!(id));
        kmip(port, None, ttlv("Activate", "Structure", json!([uid]))).await;
        let got = kmip(
            port,
            None,
            ttlv(
                "Get",
                "Structure",
                json!([uid, ttlv("KeyFormatType", "Enumeration", json!("Raw"))]),
            ),
        )
        .await
        .1;
        let raw = find(&got, "KeyMaterial").expect("key bytes")["value"]
            .as_str()
            .unwrap()
            .to_owned();
        let bytes: Vec<u8> = (0..raw.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&raw[i..i + 2], 16).unwrap())
            .collect();
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .to_lowercase();
        setup.stop();
        Cosmian {
            server: Self::spawn(dir, port, Some(&id)),
            token,
        }
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.server.port)
    }
}

/// One KMIP operation in JSON TTLV: the status and the answer (JSON, or the
/// error text as a string).
async fn kmip(port: u16, token: Option<&str>, operation: Value) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/kmip/2_1"))
        .json(&operation);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("Cosmian KMS answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The first item tagged `tag` anywhere in a TTLV answer.
fn find<'a>(item: &'a Value, tag: &str) -> Option<&'a Value> {
    if item["tag"] == tag {
        return Some(item);
    }
    item["value"]
        .as_array()?
        .iter()
        .find_map(|child| find(child, tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosmian_kms_guest_creates_signs_and_deletes_on_the_real_server() {
    let site = Site::new(Db::Sqlite).await;
    let cosmian = Cosmian::start(site.dir.path()).await;
    let query = ttlv(
        "Query",
        "Structure",
        json!([ttlv(
            "QueryFunction",
            "Enumeration",
            json!("QueryServerInformation")
        )]),
    );
    // The server takes no request without the token that only the host holds.
    let (status, _) = kmip(cosmian.server.port, None, query.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let config = json!({"defaultProvider": "cosmian", "providers": [
        {"id": "db", "type": "db"},
        {"id": "cosmian", "type": "cosmian-kms", "serverUrl": format!("http://{}", cosmian.authority()),
         "egressAuth": [{"host": cosmian.authority(), "type": "bearer", "token": cosmian.token}],
         "limits": {"timeoutMs": 10000}},
    ]});
    let gw = site.start_configured(&config);
    let (_, providers) = gw.get("/providers").await;
    assert_eq!(providers[1]["adapter"], "cosmian-kms", "{providers}");
    assert_eq!(health_of(&gw, "cosmian").await["ok"], true);

    // Every algorithm the guest advertises, each signature verified with RustCrypto.
    let algs = alg_matrix(&gw, "cosmian", false).await;
    // Not ML-DSA: the server's OpenSSL 3.0 has none (README).
    assert_eq!(
        algs,
        [
            "ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256", "Ed25519"
        ]
    );

    // The key lives on the server (as a sensitive key pair) and is gone after delete.
    gw.create_and_sign(json!({"kid": "issuer-1", "provider": "cosmian"}), b"issued")
        .await;
    let external = external_id(&site, "issuer-1").await;
    let private = external.split(',').next().unwrap().to_owned();
    let sign_at_server = ttlv(
        "Sign",
        "Structure",
        json!([
            ttlv("UniqueIdentifier", "TextString", json!(private)),
            ttlv("Data", "ByteString", json!("00"))
        ]),
    );
    let (status, _) = kmip(
        cosmian.server.port,
        Some(&cosmian.token),
        sign_at_server.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(gw.delete("/keys/issuer-1").await.0, StatusCode::NO_CONTENT);
    let (status, answer) = kmip(cosmian.server.port, Some(&cosmian.token), sign_at_server).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "the server still signs with a deleted key: {answer}"
    );
    let (status, _) = gw
        .post("/keys/issuer-1/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The conformance run passes against the same server, through the same entry.
    let report = adapter_check(&site.write_config(&config), "cosmian");
    assert!(report.contains("PASS  health"), "{report}");
    assert!(!gw.log_text().contains(&cosmian.token));

    // Server gone: signs are 503 and /health/kms says so.
    let kid = gw.create(json!({"kid": "before-outage"})).await["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cosmian = cosmian;
    cosmian.server.stop();
    let (status, body) = gw
        .post(&format!("/keys/{kid}/sign"), json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let health = health_of(&gw, "cosmian").await;
    assert_eq!(health["ok"], false, "{health}");
}

// ---------------------------------------------------------- Azure Key Vault

const AZURE_TENANT: &str = "b7e3c1a2-0000-4000-8000-kmsgwtests01";
const AZURE_CLIENT: &str = "4f1d2e3c-0000-4000-8000-kmsgwclient01";
const AZURE_SECRET: &str = "azure-client-secret-held-by-the-host-Qx7";

fn start_azure(dir: &Path, token_lifetime: u64) -> Background {
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(standin("azure_kv_emulator.py"))
        .args(["--port", &port.to_string(), "--tenant", AZURE_TENANT])
        .args(["--client-id", AZURE_CLIENT, "--client-secret", AZURE_SECRET])
        .args(["--token-lifetime", &token_lifetime.to_string()]);
    Background::start(
        &mut cmd,
        &dir.join("azure-emulator.log"),
        port,
        "the Key Vault emulator",
    )
}

/// EUDIPLO's `azure-kv` entry as its documentation writes it, pointed at the
/// emulator, plus the client secret the host holds for the vault's host.
fn azure_entry(id: &str, port: u16, secret: &str, extra: Value) -> Value {
    let mut entry = json!({
        "id": id, "type": "azure-kv", "description": "Azure Key Vault",
        "vaultUrl": format!("http://127.0.0.1:{port}"),
        "tenantId": AZURE_TENANT, "clientId": AZURE_CLIENT,
        "egressAuth": [{"host": format!("127.0.0.1:{port}"), "type": "oauth2-client-credentials",
            "tokenUrl": format!("http://127.0.0.1:{port}/{AZURE_TENANT}/oauth2/v2.0/token"),
            "clientId": AZURE_CLIENT, "clientSecret": secret,
            "scope": "https://vault.azure.net/.default"}],
        "limits": {"timeoutMs": 10000},
    });
    for (key, value) in extra.as_object().unwrap() {
        entry[key] = value.clone();
    }
    entry
}

pub(crate) async fn emulator_stats(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/_emulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_kv_entry_from_the_seed_creates_imports_signs_and_deletes() {
    let site = Site::new(Db::Sqlite).await;
    let azure = start_azure(site.dir.path(), 3599);
    let port = azure.port;
    let config = json!({"defaultProvider": "azure", "providers": [
        azure_entry("azure", port, AZURE_SECRET, json!({})),
        azure_entry("azure-wrong-secret", port, "not-the-secret", json!({})),
        azure_entry("azure-old-api", port, AZURE_SECRET, json!({"apiVersion": "2016-10-01"})),
    ]});
    let gw = site.start_configured(&config);
    assert_eq!(health_of(&gw, "azure").await["ok"], true);

    // Create and import for every algorithm Key Vault has; RustCrypto verifies.
    let algs = alg_matrix(&gw, "azure", true).await;
    assert_eq!(algs, ["ES256", "ES384", "ES512", "RS256", "PS256"]);
    import_known_key_and_verify(&gw, "azure-imported", "azure").await;
    let key = gw.create(json!({"kid": "azure-1"})).await;
    assert_verifies(&key["publicJwk"], b"m", &gw.sign("azure-1", b"m").await);
    assert_eq!(gw.delete("/keys/azure-1").await.0, StatusCode::NO_CONTENT);
    let (status, _) = gw.post("/keys/azure-1/sign", json!({"data": "eA=="})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The kid can be used again: a new backend name, not the soft-deleted one.
    let again = gw.create(json!({"kid": "azure-1"})).await;
    assert_verifies(&again["publicJwk"], b"n", &gw.sign("azure-1", b"n").await);
    // One token per entry holding the right secret (`azure`, `azure-old-api`), for
    // every create, import, sign and delete above.
    assert_eq!(emulator_stats(port).await["tokensIssued"], 2);

    // The emulator refuses what Key Vault refuses, and the errors reach the operator.
    let wrong = health_of(&gw, "azure-wrong-secret").await;
    assert_eq!(wrong["ok"], false);
    assert!(
        wrong.to_string().contains("AADSTS7000215"),
        "wrong client secret: {wrong}"
    );
    let old = health_of(&gw, "azure-old-api").await;
    assert!(
        old["ok"] == false && old.to_string().contains("BadParameter"),
        "unknown api-version: {old}"
    );
    let vault = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let anonymous = client
        .get(format!("{vault}/keys?api-version=7.5"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert!(anonymous.text().await.unwrap().contains("AKV10000"));
    let graph: Value = client
        .post(format!("{vault}/{AZURE_TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", AZURE_CLIENT),
            ("client_secret", AZURE_SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_audience = client
        .get(format!("{vault}/keys?api-version=7.5"))
        .bearer_auth(graph["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(other_audience.status(), StatusCode::UNAUTHORIZED);
    assert!(other_audience.text().await.unwrap().contains("AKV10022"));

    adapter_check(&site.write_config(&config), "azure");
    let log = gw.log_text();
    assert!(!log.contains(AZURE_SECRET) && !log.contains("eyJ0"));
}

// --------------------------------------------------------- Google Cloud KMS

const KEY_RING: &str = "projects/kmsgw-tests/locations/europe-west3/keyRings/issuers";

/// The emulator, and the service-account key file it made for its token endpoint.
pub(crate) fn start_gcp(dir: &Path, token_lifetime: u64) -> (Background, PathBuf) {
    let port = free_port();
    let credentials = dir.join("service-account.json");
    let mut cmd = Command::new("python3");
    cmd.arg(standin("gcp_kms_emulator.py"))
        .args(["--port", &port.to_string(), "--key-ring", KEY_RING])
        .arg("--write-credentials")
        .arg(&credentials)
        .args(["--token-lifetime", &token_lifetime.to_string()]);
    let server = Background::start(
        &mut cmd,
        &dir.join("gcp-emulator.log"),
        port,
        "the Cloud KMS emulator",
    );
    (server, credentials)
}

pub(crate) fn gcp_entry(id: &str, port: u16, credentials: &Path) -> Value {
    json!({
        "id": id, "type": "gcp-kms", "projectId": "kmsgw-tests",
        "location": "europe-west3", "keyRing": "issuers",
        "endpoint": format!("http://127.0.0.1:{port}"),
        "egressAuth": [{"host": format!("127.0.0.1:{port}"), "type": "google-service-account",
            "credentialsFile": credentials}],
        "limits": {"timeoutMs": 10000},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_kms_signs_with_one_cached_token_and_refreshes_it_after_expiry() {
    let site = Site::new(Db::Sqlite).await;
    // Tokens live 33 s; the host refreshes 30 s early, so each is used for ~3 s.
    let (gcp, credentials) = start_gcp(site.dir.path(), 33);
    let port = gcp.port;
    // The same account with a token_uri that is not the endpoint's audience.
    let mut account: Value =
        serde_json::from_str(&std::fs::read_to_string(&credentials).unwrap()).unwrap();
    account["token_uri"] = json!(format!("http://127.0.0.1:{port}/token?audience=other"));
    let misaddressed = site.dir.path().join("misaddressed.json");
    std::fs::write(&misaddressed, account.to_string()).unwrap();
    let config = json!({"defaultProvider": "gcp", "providers": [
        gcp_entry("gcp", port, &credentials),
        gcp_entry("gcp-misaddressed", port, &misaddressed),
    ]});
    let gw = site.start_configured(&config);

    let key = gw.create(json!({"kid": "wallet-1"})).await;
    for i in 0..5 {
        let message = format!("message {i}");
        let signature = gw.sign("wallet-1", message.as_bytes()).await;
        assert_verifies(&key["publicJwk"], message.as_bytes(), &signature);
    }
    assert_eq!(
        emulator_stats(port).await["tokensIssued"],
        1,
        "one token for a create and five signs"
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let signature = gw.sign("wallet-1", b"after expiry").await;
    assert_verifies(&key["publicJwk"], b"after expiry", &signature);
    assert_eq!(
        emulator_stats(port).await["tokensIssued"],
        2,
        "a new token after expiry"
    );

    let algs = alg_matrix(&gw, "gcp", false).await;
    assert_eq!(
        algs,
        [
            "ES256",
            "ES384",
            "EdDSA",
            "RS256",
            "PS256",
            "Ed25519",
            "ML-DSA-44",
            "ML-DSA-65",
            "ML-DSA-87"
        ]
    );
    assert_eq!(gw.delete("/keys/wallet-1").await.0, StatusCode::NO_CONTENT);
    let (status, _) = gw
        .post("/keys/wallet-1/sign", json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A JWT assertion for the wrong audience is refused as Google refuses it.
    let health = health_of(&gw, "gcp-misaddressed").await;
    assert!(
        health["ok"] == false && health.to_string().contains("audience"),
        "{health}"
    );
    let anonymous = reqwest::get(format!("http://127.0.0.1:{port}/v1/{KEY_RING}"))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.text().await.unwrap().contains("UNAUTHENTICATED"));

    adapter_check(&site.write_config(&config), "gcp");
    let private_key = account["private_key"].as_str().unwrap();
    let body = private_key.lines().nth(1).unwrap();
    assert!(!gw.log_text().contains(body) && !gw.log_text().contains("ya29."));
}

// ------------------------------------------------------------ what a guest sees

/// An HTTP server that records each request's headers and body and answers 200.
pub(crate) struct Recorder {
    pub(crate) port: u16,
    pub(crate) seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl Recorder {
    pub(crate) fn start() -> Recorder {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                log.lock()
                    .unwrap()
                    .push((head, String::from_utf8_lossy(&body).into_owned()));
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\nx-recorder: yes\r\n\r\nok",
                );
            }
        });
        Recorder { port, seen }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_never_sees_the_credentials_the_host_adds_for_it() {
    let site = Site::new(Db::Sqlite).await;
    let recorder = Recorder::start();
    let azure = start_azure(site.dir.path(), 3599);
    let bearer = "host-held-bearer-token-7c1f9a";
    let gw = site.start_configured(&json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "hostile", "type": "wasm", "component": guest("hostile"),
         "config": {"purpose": "dump everything"},
         "egressAuth": [
            {"host": format!("127.0.0.1:{}", recorder.port), "type": "bearer", "token": bearer},
            {"host": format!("127.0.0.1:{}", azure.port), "type": "oauth2-client-credentials",
             "tokenUrl": format!("http://127.0.0.1:{}/{AZURE_TENANT}/oauth2/v2.0/token", azure.port),
             "clientId": AZURE_CLIENT, "clientSecret": AZURE_SECRET,
             "scope": "https://vault.azure.net/.default"}]},
    ]}));
    gw.create(json!({"kid": "h1", "provider": "hostile"})).await;
    let attack = format!("dump:http://127.0.0.1:{}/probe", recorder.port);
    let (status, answer) = gw
        .post(
            "/keys/h1/sign",
            json!({"data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &attack)}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("dumped"),
        "{answer}"
    );

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the probe and the dump: {seen:?}");
    for (head, _) in &seen {
        let authorizations: Vec<&str> = head
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
            .collect();
        assert_eq!(
            authorizations,
            [format!("authorization: Bearer {bearer}").as_str()],
            "the host's credential replaces the guest's own: {head}"
        );
    }
    let dump = &seen[1].1;
    assert!(dump.contains("dump everything") && dump.contains("forged-by-the-guest"));
    assert!(dump.contains("answer x-recorder: yes"), "{dump}");
    for secret in [bearer, AZURE_SECRET] {
        assert!(!dump.contains(secret), "the guest saw `{secret}`:\n{dump}");
    }
    assert!(!gw.log_text().contains(bearer) && !gw.log_text().contains(AZURE_SECRET));
}

// ------------------------------------------------------------ all three shipped

/// The binary alone serves all three named guests (embedded at build time, no
/// `adapters` entry, no `KMSGW_ADAPTER_DIR`) and reaches each backend;
/// `KMSGW_ADAPTER_DIR` still overrides where they are read from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_guests_work_by_name_from_the_binary_alone() {
    let site = Site::new(Db::Sqlite).await;
    let cosmian = Cosmian::start(site.dir.path()).await;
    let azure = start_azure(site.dir.path(), 3599);
    let (gcp, credentials) = start_gcp(site.dir.path(), 3599);
    let config = json!({"defaultProvider": "db", "providers": [
        {"id": "db", "type": "db"},
        {"id": "cosmian", "type": "cosmian-kms", "serverUrl": format!("http://{}", cosmian.authority()),
         "egressAuth": [{"host": cosmian.authority(), "type": "bearer", "token": cosmian.token}],
         "limits": {"timeoutMs": 10000}},
        azure_entry("azure", azure.port, AZURE_SECRET, json!({})),
        gcp_entry("gcp", gcp.port, &credentials),
    ]});
    let gw = site.start_configured(&config);
    let (_, providers) = gw.get("/providers").await;
    for (id, adapter) in [
        ("cosmian", "cosmian-kms"),
        ("azure", "azure-kv"),
        ("gcp", "gcp-kms"),
    ] {
        let entry = providers
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("no `{id}` in {providers}"));
        assert_eq!(entry["adapter"], adapter, "{providers}");
        assert_eq!(health_of(&gw, id).await["ok"], true, "{id}");
        gw.create_and_sign(
            json!({"kid": format!("{id}-key"), "provider": id}),
            b"shipped",
        )
        .await;
    }
    let log = gw.log_text();
    for file in ["cosmian_kms.wasm", "azure_kv.wasm", "gcp_kms.wasm"] {
        assert!(
            log.contains(&format!("built-in {file}")),
            "{file} should come from the binary:\n{log}"
        );
    }
    drop(gw);

    // The override: a folder without the components is where they are looked for.
    let empty = site.dir.path().join("no-adapters");
    std::fs::create_dir_all(&empty).unwrap();
    let config_path = site.write_config(&config);
    let output = site
        .command(&["--config", config_path.to_str().unwrap()], &[])
        .env("KMSGW_ADAPTER_DIR", &empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        format!("{stdout}{stderr}").contains(&format!(
            "cannot read component {}",
            empty.join("cosmian_kms.wasm").display()
        )),
        "{stdout}{stderr}"
    );
}
