//! The `aws-kms` provider against moto's KMS server, started through
//! `tests/standins/moto_kms_digest.py` (moto with `MessageType=DIGEST` honoured,
//! as real KMS does; see that file).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kmsgw_tests::*;
use serde_json::{Value, json};

/// A moto server on a loopback port, stopped when dropped.
pub(crate) struct Moto {
    /// Held for its `Drop`, which stops the server.
    _server: Background,
    pub(crate) url: String,
}

impl Moto {
    pub(crate) fn start(dir: &Path) -> Moto {
        let port = free_port();
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("standins/moto_kms_digest.py");
        let mut cmd = Command::new("python3");
        cmd.arg(launcher)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let server = Background::start(
            &mut cmd,
            &dir.join("moto.log"),
            port,
            "moto (python3 with moto[server]; scripts/test installs it)",
        );
        Moto {
            _server: server,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// A gateway on `site` with a `db` provider and this server as provider `aws`.
    fn gateway(&self, site: &Site) -> Gateway {
        site.start_configured(&json!({"providers": [
            {"id": "db", "type": "db"},
            {"id": "aws", "type": "aws-kms", "region": "eu-central-1", "accessKeyId": "testing",
             "secretAccessKey": "testing-secret", "endpoint": self.url},
        ]}))
    }

    /// One KMS API call in AWS's JSON protocol (moto does not check signatures).
    pub(crate) async fn call(&self, action: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(&self.url)
            .header("X-Amz-Target", format!("TrentService.{action}"))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-central-1/kms/aws4_request, SignedHeaders=host, Signature=x")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        response.json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_signs_raw_and_digest_tags_keys_and_reports_outages() {
    let site = Site::new(Db::Sqlite).await;
    let moto = Moto::start(site.dir.path());
    let gw = moto.gateway(&site);

    let key = gw.create(json!({"kid": "aws-1", "provider": "aws"})).await;
    // 100 bytes go RAW; 10 KB go as a host SHA-256 DIGEST.
    for size in [100usize, 10_000] {
        let message: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
        for _ in 0..4 {
            let signature = gw.sign("aws-1", &message).await;
            assert_verifies(&key["publicJwk"], &message, &signature);
        }
    }

    // Tags: the kid, the provider id, ManagedBy=kmsgw.
    let keys = moto.call("ListKeys", json!({})).await;
    let mut tagged = None;
    for entry in keys["Keys"].as_array().unwrap() {
        let tags = moto
            .call("ListResourceTags", json!({"KeyId": entry["KeyId"]}))
            .await;
        let tags: Vec<(String, String)> = tags["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["TagKey"].as_str().unwrap().to_owned(),
                    t["TagValue"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if tags.contains(&("kid".into(), "aws-1".into())) {
            tagged = Some(tags);
        }
    }
    let tags = tagged.expect("a key tagged kid=aws-1");
    assert!(
        tags.contains(&("ProviderId".into(), "aws".into())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("ManagedBy".into(), "kmsgw".into())),
        "{tags:?}"
    );

    let (private, _) = known_private_jwk();
    let (status, body) = gw
        .post(
            "/keys/nope/import",
            json!({"privateJwk": private, "provider": "aws"}),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");

    let (_, health) = gw.get("/health/kms").await;
    assert_eq!(health[1]["ok"], true, "{health}");

    assert_eq!(gw.delete("/keys/aws-1").await.0, StatusCode::NO_CONTENT);
    let (status, _) = gw.post("/keys/aws-1/sign", json!({"data": "eA=="})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!gw.log_text().contains("testing-secret"));

    // moto stopped: sign is a 503, health not ok.
    gw.create(json!({"kid": "aws-2", "provider": "aws"})).await;
    drop(moto);
    let started = Instant::now();
    let (status, body) = gw.post("/keys/aws-2/sign", json!({"data": "eA=="})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("backend_unavailable")),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, health) = gw.get("/health/kms").await;
    assert_eq!(health[1]["ok"], false, "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_signs_every_key_spec_it_advertises() {
    let site = Site::new(Db::Sqlite).await;
    let moto = Moto::start(site.dir.path());
    let gw = moto.gateway(&site);
    // AWS KMS takes no imported asymmetric keys; moto has no Ed25519.
    let worked = alg_matrix(&gw, "aws", false).await;
    assert!(!worked.iter().any(|a| a == "EdDSA"));
    // Above 4096 bytes the host sends a DIGEST of the algorithm's hash.
    let big: Vec<u8> = (0..10_000).map(|i| (i % 253) as u8).collect();
    for alg in &worked {
        let kid = format!("aws-{}", alg.to_ascii_lowercase());
        let (_, key) = gw.get(&format!("/keys/{kid}")).await;
        let signature = gw.sign(&kid, &big).await;
        assert_verifies(&key["publicJwk"], &big, &signature);
    }
    let (status, body) = gw
        .post(
            "/keys/aws-x/import",
            json!({"privateJwk": external_private_jwk("ES256"), "provider": "aws"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::METHOD_NOT_ALLOWED,
            Some("unsupported_operation")
        ),
        "{body}"
    );
}
