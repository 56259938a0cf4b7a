//! What the master key custody tests share: the seal commands of the CLI, the
//! wrapped generations in a site's database, OpenBao's Transit as a seal, and
//! signing with every key.

use std::collections::BTreeMap;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::{Gateway, OpenBao, Site, StatusCode, assert_verifies, free_port, kmsgw_bin};

/// The root token of the test OpenBao: must never reach a log or an answer.
pub const ROOT_TOKEN: &str = "kmsgw-test-root";

/// `kmsgw <args>` on `site`'s data directory and database.
pub fn cli(site: &Site, args: &[&str]) -> Output {
    let mut cmd = Command::new(kmsgw_bin());
    cmd.args(args)
        .arg("--data-dir")
        .arg(site.data_dir())
        .env_remove("KMSGW_CONFIG")
        .env_remove("KMSGW_DATABASE_URL")
        .env_remove("KMSGW_MASTER_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("KMSGW_ADAPTER_DIR");
    if let Some(url) = &site.database_url {
        cmd.arg("--database-url").arg(url);
    }
    if let Some(key) = &site.master_key {
        cmd.env("KMSGW_MASTER_KEY", key);
    }
    cmd.output().expect("run kmsgw")
}

/// stdout and stderr of a command, for assertion messages.
pub fn said(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The wrapped master key generations in `site`'s database: (generation, seal, wrapped).
pub async fn seal_rows(site: &Site) -> Vec<(i64, String, String)> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .unwrap();
    sqlx::query_as("SELECT generation, seal, wrapped FROM seal_keys ORDER BY generation, seal")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

/// Sealed items (db key material of every version, guest storage) per generation.
pub async fn items_by_generation(site: &Site) -> BTreeMap<i64, i64> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .unwrap();
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT generation, COUNT(*) FROM (SELECT generation FROM db_key_material UNION ALL \
         SELECT generation FROM db_version_material UNION ALL SELECT generation FROM guest_kv) AS items \
         GROUP BY generation",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Signs with every key in `kids` (its current version) and verifies each signature.
pub async fn sign_every(gw: &Gateway, kids: &[String]) {
    for kid in kids {
        let (status, key) = gw.get(&format!("/keys/{kid}")).await;
        assert_eq!(status, StatusCode::OK, "{kid}: {key}");
        let message = format!("every key: {kid}");
        let signature = gw.sign(kid, message.as_bytes()).await;
        assert_verifies(&key["publicJwk"], message.as_bytes(), &signature);
    }
}

/// Creates keys of several algorithms on `provider`; returns their kids.
pub async fn some_keys(gw: &Gateway, prefix: &str, provider: &str) -> Vec<String> {
    let mut kids = Vec::new();
    for alg in ["ES256", "ES384", "EdDSA", "PS256"] {
        let kid = format!("{prefix}-{}", alg.to_lowercase());
        gw.create(json!({"kid": kid, "alg": alg, "provider": provider}))
            .await;
        kids.push(kid);
    }
    kids
}

/// OpenBao with Transit mounted and an `aes256-gcm96` key `kmsgw-seal`.
pub async fn openbao_with_seal_key(dir: &std::path::Path) -> OpenBao {
    let bao = OpenBao::start(free_port(), dir);
    bao_call(&bao, "sys/mounts/transit", json!({"type": "transit"})).await;
    bao_call(
        &bao,
        "transit/keys/kmsgw-seal",
        json!({"type": "aes256-gcm96"}),
    )
    .await;
    bao
}

/// `POST /v1/<path>` on OpenBao with the root token; the JSON answer (if any).
pub async fn bao_call(bao: &OpenBao, path: &str, body: Value) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/{path}", bao.port))
        .header("X-Vault-Token", ROOT_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let text = answer.text().await.unwrap();
    assert!(status.is_success(), "OpenBao {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// The master key generation that OpenBao unwraps from `wrapped`.
pub async fn bao_unwrap(bao: &OpenBao, wrapped: &str) -> [u8; 32] {
    let answer = bao_call(
        bao,
        "transit/decrypt/kmsgw-seal",
        json!({"ciphertext": wrapped}),
    )
    .await;
    STANDARD
        .decode(answer["data"]["plaintext"].as_str().unwrap())
        .unwrap()
        .try_into()
        .expect("a 32-byte master key")
}

/// A `vault-transit` seal on `bao`'s key `kmsgw-seal` with `token`.
pub fn vault_seal(bao: &OpenBao, token: &str) -> Value {
    json!({"type": "vault-transit", "address": format!("http://127.0.0.1:{}", bao.port),
           "key": "kmsgw-seal", "token": token})
}

/// Waits until `/ready` says the gateway is sealed; returns its `sealed` part.
pub async fn sealed_readiness(gw: &Gateway) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, ready) = gw.get("/ready").await;
        if status == StatusCode::SERVICE_UNAVAILABLE && ready["sealed"].is_object() {
            return ready["sealed"].clone();
        }
        last = ready;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("not reported sealed: {last}");
}

/// A key operation on a sealed gateway: 503 `sealed`, saying which seal.
pub async fn assert_refused_sealed(gw: &Gateway, kid: &str, seal: &str) -> Value {
    let (status, body) = gw
        .post(&format!("/keys/{kid}/sign"), json!({"data": "eA=="}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "sealed", "{body}");
    assert!(body["error"].as_str().unwrap().contains(seal), "{body}");
    let (status, body) = gw.post("/keys", json!({"kid": "while-sealed"})).await;
    assert_eq!(
        (status, body["code"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("sealed")),
        "{body}"
    );
    body
}
