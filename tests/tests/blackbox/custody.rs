//! Master key custody against the real stand-ins: auto-unseal through OpenBao
//! Transit and moto's KMS (the PKCS#11 seal and migrations between seals are in
//! `tests/custody.rs`, which owns SoftHSM2's configuration), rotation under
//! load and after a kill -9, backup and restore between SQLite and PostgreSQL.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use kmsgw_tests::custody::*;
use kmsgw_tests::*;
use serde_json::{Value, json};

use crate::aws_kms::Moto;
use crate::guests::wasm_entry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openbao_transit_seal_unseals_at_start_and_a_gateway_without_it_cannot_sign() {
    let site = Site::new(Db::Sqlite).await;
    let bao = openbao_with_seal_key(site.dir.path()).await;
    let config = |token: &str| {
        json!({"providers": [{"id": "db", "type": "db"}, wasm_entry("soft", "soft_signer", json!({}))],
               "seal": vault_seal(&bao, token)})
    };

    let gw = site.start_configured(&config(ROOT_TOKEN));
    let mut kids = some_keys(&gw, "vt", "db").await;
    kids.extend(some_keys(&gw, "vt-guest", "soft").await);
    crate::rotation::rotate(&gw, "vt-es256").await;
    sign_every(&gw, &kids).await;
    let (_, providers) = gw.get("/providers").await;
    assert_eq!(providers[0]["sealGeneration"], 1, "{providers}");
    drop(gw);

    // The database holds the master key only as OpenBao wrapped it; the data
    // directory has no key file, and no file holds the key in any form.
    let rows = seal_rows(&site).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].0, rows[0].1.as_str()),
        (1, "vault-transit:transit/kmsgw-seal")
    );
    assert!(rows[0].2.starts_with("vault:v1:"), "{rows:?}");
    assert!(!site.data_dir().join("master.key").exists());
    let master = bao_unwrap(&bao, &rows[0].2).await;
    assert_scalar_absent(&files_under(site.dir.path()), &master);

    // A token OpenBao does not know yet: the gateway serves no key and says why,
    // retries, and unseals by itself once the token exists.
    let late = "kmsgw-late-token-5521";
    let gw = site.start_configured(&config(late));
    let sealed = sealed_readiness(&gw).await;
    assert_eq!(
        sealed["seal"], "vault-transit:transit/kmsgw-seal",
        "{sealed}"
    );
    assert!(
        sealed["error"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{sealed}"
    );
    let refusal = assert_refused_sealed(&gw, "vt-es256", "vault-transit:transit/kmsgw-seal").await;
    assert!(!refusal.to_string().contains(late));
    bao_call(
        &bao,
        "auth/token/create",
        json!({"id": late, "policies": ["root"]}),
    )
    .await;
    wait_until(
        Duration::from_secs(40),
        "the gateway unseals once the token exists",
        || async { gw.get("/ready").await.0 == StatusCode::OK },
    )
    .await;
    sign_every(&gw, &kids).await;
    let (_, metrics) = gw.text(None, "/metrics").await;
    assert!(
        metrics.contains("kmsgw_seal_generation{seal=\"vault-transit:transit/kmsgw-seal\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kmsgw_seal_operations_total{operation=\"unseal\",outcome=\"failed\"}"),
        "{metrics}"
    );
    let log = gw.log_text();
    assert!(log.contains("cannot unseal"), "{log}");
    drop(gw);

    // With the seal (debug logging on): every key signs; no secret anywhere.
    let path = site.write_config(&config(ROOT_TOKEN));
    let gw = site.start_with(
        &["--config", path.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    sign_every(&gw, &kids).await;
    let (_, providers) = gw.text(None, "/providers").await;
    let (_, metrics) = gw.text(None, "/metrics").await;
    let (_, seal) = gw.text(None, "/admin/seal/rotate").await;
    // The CLI will not rewrite a SQLite database under a running gateway.
    let refused = cli(
        &site,
        &["seal", "rotate", "--config", path.to_str().unwrap()],
    );
    assert!(!refused.status.success());
    assert!(
        said(&refused).contains("a gateway is running"),
        "{}",
        said(&refused)
    );
    for text in [&gw.log_text(), &providers, &metrics, &seal, &said(&refused)] {
        assert!(
            !text.contains(ROOT_TOKEN),
            "the OpenBao token leaked: {text}"
        );
        assert!(!text.contains(late));
        assert!(!text.contains(&STANDARD.encode(master)));
    }
    drop(gw);

    // The Transit key deleted: the master key is gone with it; the gateway says so.
    bao_call(
        &bao,
        "transit/keys/kmsgw-seal/config",
        json!({"deletion_allowed": true}),
    )
    .await;
    let deleted = reqwest::Client::new()
        .delete(format!(
            "http://127.0.0.1:{}/v1/transit/keys/kmsgw-seal",
            bao.port
        ))
        .header("X-Vault-Token", ROOT_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success());
    let gw = site.start_configured(&config(ROOT_TOKEN));
    let sealed = sealed_readiness(&gw).await;
    assert!(
        sealed["error"]
            .as_str()
            .unwrap()
            .contains("Vault Transit decrypt refused"),
        "{sealed}"
    );
    assert_refused_sealed(&gw, "vt-eddsa", "vault-transit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_kms_seal_unseals_at_start_and_an_unreachable_kms_leaves_it_sealed() {
    let site = Site::new(Db::Sqlite).await;
    let moto = Moto::start(site.dir.path());
    let created = moto
        .call(
            "CreateKey",
            json!({"KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT"}),
        )
        .await;
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let secret = "moto-secret-31337-kmsgw";
    let config = json!({"seal": {"type": "aws-kms", "keyId": key_id, "region": "eu-central-1",
                                 "endpoint": moto.url, "accessKeyId": "testing", "secretAccessKey": secret}});
    let gw = site.start_configured(&config);
    let kids = some_keys(&gw, "aws-sealed", "db").await;
    drop(gw);
    let rows = seal_rows(&site).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, format!("aws-kms:{key_id}"));
    assert!(!site.data_dir().join("master.key").exists());
    // moto hands the key back to its owner, with the generation as encryption context.
    let plain = moto
        .call(
            "Decrypt",
            json!({"CiphertextBlob": rows[0].2, "KeyId": key_id,
                                 "EncryptionContext": {"kmsgw-master-key-generation": "1"}}),
        )
        .await;
    let master: [u8; 32] = STANDARD
        .decode(plain["Plaintext"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert_scalar_absent(&files_under(site.dir.path()), &master);

    let gw = site.start_configured(&config);
    sign_every(&gw, &kids).await;
    assert!(!gw.log_text().contains(secret));
    drop(gw);

    // The KMS gone: sealed, saying it cannot reach it; nothing signs.
    drop(moto);
    let gw = site.start_configured(&config);
    let sealed = sealed_readiness(&gw).await;
    assert_eq!(sealed["seal"], format!("aws-kms:{key_id}"));
    assert!(
        sealed["error"]
            .as_str()
            .unwrap()
            .contains("AWS KMS Decrypt"),
        "{sealed}"
    );
    assert_refused_sealed(&gw, &kids[0], "aws-kms").await;
    assert!(!gw.log_text().contains(secret));
}

/// What a restored catalog must show.
struct Expected {
    config: Value,
    kids: Vec<String>,
    jwks: Value,
    rotation: Value,
    chain: String,
}

impl Expected {
    /// Starts a gateway on `target` and checks it against the original: the
    /// same JWKS, every key signs, the chain verifies (with the restore in it),
    /// the rotation policy and the certificate chain are there.
    async fn check(&self, target: &Site) -> Gateway {
        let gw = target.start_configured(&self.config);
        let set = |jwks: &Value| {
            let mut keys: Vec<String> = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(Value::to_string)
                .collect();
            keys.sort();
            keys
        };
        let (_, restored) = gw.get("/.well-known/jwks.json").await;
        assert_eq!(
            set(&restored),
            set(&self.jwks),
            "the JWKS differs after a restore into {}",
            target.database()
        );
        sign_every(&gw, &self.kids).await;
        let (_, verdict) = gw.get("/audit/verify").await;
        assert_eq!(verdict["ok"], true, "{verdict}");
        let (_, audit) = gw.get("/audit?action=restore").await;
        assert_eq!(audit["records"][0]["outcome"], "ok", "{audit}");
        let (_, key) = gw.get("/keys/b-eddsa").await;
        assert_eq!(key["rotation"], self.rotation, "{key}");
        let (_, chain) = gw.text(None, "/keys/b-es256/certificate").await;
        assert_eq!(chain, self.chain);
        gw
    }
}

/// `kmsgw restore` of `file` into `target` with `config` as its kms.json.
fn restore(target: &Site, config: &Value, file: &std::path::Path) -> std::process::Output {
    let path = target.write_config(config);
    cli(
        target,
        &[
            "restore",
            "--config",
            path.to_str().unwrap(),
            "--from",
            file.to_str().unwrap(),
        ],
    )
}

/// Signs in a loop over `kids` until stopped, verifying each signature;
/// returns how many signed. Panics on any failed or wrong signature.
struct Signer {
    stop: Arc<AtomicBool>,
    signed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Signer {
    fn start(gw: Arc<Gateway>, kids: Vec<(String, Value)>) -> Signer {
        let stop = Arc::new(AtomicBool::new(false));
        let signed = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, signed) = (stop.clone(), signed.clone());
            async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (kid, jwk) = &kids[i % kids.len()];
                    let message = format!("during the rotation {i}");
                    let signature = gw.sign(kid, message.as_bytes()).await;
                    assert_verifies(jwk, message.as_bytes(), &signature);
                    signed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Signer { stop, signed, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .expect("every sign during the rotation succeeded and verified");
        self.signed.load(Ordering::Relaxed)
    }
}

async fn rotation_state(gw: &Gateway) -> Value {
    let (status, state) = gw.get("/admin/seal/rotate").await;
    assert_eq!(status, StatusCode::OK, "{state}");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_sign_load_rewraps_everything_and_one_killed_half_way_resumes() {
    let mut site = Site::new(Db::Sqlite).await;
    site.master_key = Some(random_master_key());
    let config = json!({"providers": [{"id": "db", "type": "db"},
                                      wasm_entry("soft", "soft_signer", json!({"limits": {"storageEntries": 200}}))]});
    let gw = Arc::new(site.start_configured(&config));
    // 1000 db keys of mixed algorithms (every tenth one RSA), 20 of them
    // rotated (sealed versions), and guest keys in the guest's sealed storage.
    let algs = [
        "ES256", "ES384", "ES512", "EdDSA", "ES256", "ES384", "EdDSA", "ES256", "ES512", "PS256",
    ];
    let kids: Vec<String> = futures::stream::iter(0..1000)
        .map(|i| {
            let gw = gw.clone();
            async move {
                let kid = format!("many-{i}");
                let (status, body) = gw
                    .post("/keys", json!({"kid": kid, "alg": algs[i % algs.len()]}))
                    .await;
                assert_eq!(status, StatusCode::OK, "{body}");
                kid
            }
        })
        .buffered(16)
        .collect()
        .await;
    let mut kids = kids;
    for kid in kids.iter().take(20) {
        crate::rotation::rotate(&gw, kid).await;
    }
    kids.extend(some_keys(&gw, "guest", "soft").await);
    let before = items_by_generation(&site).await;
    assert_eq!(before.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert!(before[&1] >= 1024, "{before:?}");

    // A client signs continuously (over keys of each kind) through the rotation.
    let mut watched = Vec::new();
    for kid in [
        &kids[0],
        &kids[3],
        &kids[9],
        &kids[500],
        &kids[1000],
        &kids[1002],
    ] {
        let (_, key) = gw.get(&format!("/keys/{kid}")).await;
        watched.push((kid.clone(), key["publicJwk"].clone()));
    }
    let signer = Signer::start(gw.clone(), watched.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Pacing past its bounds, or of the wrong type: refused, nothing started.
    for bad in [
        json!({"batch": 0}),
        json!({"batch": 10_001}),
        json!({"pauseMs": 60_001}),
        json!({"batch": "x"}),
        json!({"speed": 1}),
    ] {
        let (status, body) = gw.post("/admin/seal/rotate", bad.clone()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_field")),
            "{bad}: {body}"
        );
    }
    assert_eq!(rotation_state(&gw).await["rotation"]["running"], false);
    let started = Instant::now();
    let (status, answer) = gw.post("/admin/seal/rotate", json!({"batch": 100})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, again) = gw.post("/admin/seal/rotate", json!({})).await;
    assert!(
        status == StatusCode::CONFLICT || status == StatusCode::ACCEPTED,
        "a second rotation while one runs: {status} {again}"
    );
    wait_until(
        Duration::from_secs(60),
        "the rotation to finish",
        || async {
            let state = rotation_state(&gw).await;
            state["rotation"]["running"] == false && state["generation"] == json!(2)
        },
    )
    .await;
    let rotation_time = started.elapsed();
    let signed = signer.finish().await;
    assert!(signed > 20, "too few signs during the rotation: {signed}");
    let state = rotation_state(&gw).await;
    assert_eq!(state["rotation"]["targetGeneration"], 2, "{state}");
    assert!(state["rotation"]["error"].is_null(), "{state}");
    let after = items_by_generation(&site).await;
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        vec![2],
        "every item ends on the new generation"
    );
    assert_eq!(after[&2], before[&1]);
    let rows = seal_rows(&site).await;
    assert_eq!(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2],
        "generation 1 destroyed"
    );
    let (_, metrics) = gw.text(None, "/metrics").await;
    assert!(
        metrics.contains("kmsgw_seal_generation{seal=\"file\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kmsgw_seal_operations_total{operation=\"seal-rotate\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    let (_, audit) = gw.get("/audit?action=seal-rotate").await;
    assert_eq!(audit["records"][0]["outcome"], "ok", "{audit}");
    eprintln!(
        "rotation of {} items under sign load: {rotation_time:?}, {signed} signs meanwhile",
        after[&2]
    );

    // A second rotation, slowed down, killed -9 half-way.
    let (status, answer) = gw
        .post("/admin/seal/rotate", json!({"batch": 50, "pauseMs": 100}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    wait_until(
        Duration::from_secs(30),
        "the second rotation to be under way",
        || async {
            rotation_state(&gw).await["rotation"]["done"]
                .as_u64()
                .unwrap_or(0)
                >= 300
        },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-9", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(Arc::try_unwrap(gw).ok());
    let half = items_by_generation(&site).await;
    assert_eq!(
        half.keys().copied().collect::<Vec<_>>(),
        vec![2, 3],
        "half-way: {half:?}"
    );
    assert_eq!(
        half.values().sum::<i64>(),
        before[&1],
        "nothing lost: {half:?}"
    );

    // Restarted: the rotation resumes by itself, and every key signs.
    let gw = site.start_configured(&config);
    wait_until(
        Duration::from_secs(60),
        "the resumed rotation to finish",
        || async {
            items_by_generation(&site)
                .await
                .keys()
                .copied()
                .collect::<Vec<_>>()
                == vec![3]
                && seal_rows(&site).await.len() == 1
        },
    )
    .await;
    assert_eq!(items_by_generation(&site).await[&3], before[&1]);
    assert!(gw.log_text().contains("resuming"), "{}", gw.log_text());
    sign_every(&gw, &kids).await;
    let (_, verdict) = gw.get("/audit/verify").await;
    assert_eq!(verdict["ok"], true, "{verdict}");

    // With the gateway stopped, the CLI rotates the SQLite database itself.
    drop(gw);
    let path = site.write_config(&config);
    let output = cli(
        &site,
        &[
            "seal",
            "rotate",
            "--config",
            path.to_str().unwrap(),
            "--batch",
            "300",
        ],
    );
    assert!(output.status.success(), "{}", said(&output));
    assert!(
        said(&output).contains("rotated to generation 4"),
        "{}",
        said(&output)
    );
    assert_eq!(
        items_by_generation(&site)
            .await
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![4]
    );
    let gw = site.start_configured(&config);
    sign_every(&gw, &kids[..50]).await;
    sign_every(&gw, &kids[1000..]).await;
    let (_, audit) = gw.get("/audit?action=seal-rotate").await;
    let by: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["apiKey"].as_str().unwrap_or(""))
        .collect();
    assert!(by.contains(&"cli"), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_into_postgresql_and_sqlite() {
    let site = Site::new(Db::Sqlite).await;
    let config = json!({"providers": [{"id": "db", "type": "db"}, wasm_entry("soft", "soft_signer", json!({}))]});
    let gw = Arc::new(site.start_configured(&config));
    let mut kids = some_keys(&gw, "b", "db").await;
    kids.extend(some_keys(&gw, "b-guest", "soft").await);
    // A root CA and a leaf under it; a rotation policy; a rotated key.
    gw.create(json!({"kid": "b-root", "alg": "ES384"})).await;
    let (status, _) = gw
        .post(
            "/keys/b-root/certificate/issue",
            json!({"subject": "CN=backup root", "validityDays": 30, "ca": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, leaf) = gw
        .post(
            "/keys/b-es256/certificate/issue",
            json!({"subject": "CN=b-es256", "validityDays": 10, "issuerKid": "b-root"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{leaf}");
    let (status, policy) = gw
        .call(
            None,
            reqwest::Method::PUT,
            "/keys/b-eddsa/rotation",
            Some(json!({"every": "30d", "grace": "2d"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    crate::rotation::rotate(&gw, "b-es384").await;
    kids.push("b-root".into());

    // The backup, from the live gateway while a client signs.
    let (_, key) = gw.get("/keys/b-ps256").await;
    let signer = Signer::start(
        gw.clone(),
        vec![("b-ps256".into(), key["publicJwk"].clone())],
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let file = site.dir.path().join("catalog.kmsgw-backup");
    let output = cli(
        &site,
        &[
            "backup",
            "--config",
            site.write_config(&config).to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", said(&output));
    assert!(said(&output).contains("keys 9"), "{}", said(&output));
    assert!(signer.finish().await > 0);
    let text = std::fs::read_to_string(&file).unwrap();
    // Nothing of the catalog is readable in the file: not a kid, not a public key.
    assert!(
        !text.contains("b-es256") && !text.contains("backup root"),
        "the backup is not encrypted"
    );
    let (_, jwks) = gw.get("/.well-known/jwks.json").await;
    let (_, policy_before) = gw.get("/keys/b-eddsa").await;
    let (_, chain_before) = gw.text(None, "/keys/b-es256/certificate").await;
    assert!(chain_before.contains("BEGIN CERTIFICATE"), "{chain_before}");
    let (_, audit) = gw.get("/audit?action=backup").await;
    assert_eq!(audit["records"][0]["outcome"], "ok", "{audit}");
    drop(Arc::try_unwrap(gw).ok());

    let master = site.data_dir().join("master.key");
    let restored_into = |target: Site, from: std::path::PathBuf| {
        let config = config.clone();
        let master = master.clone();
        async move {
            std::fs::create_dir_all(target.data_dir()).unwrap();
            std::fs::copy(&master, target.data_dir().join("master.key")).unwrap();
            let output = restore(&target, &config, &from);
            assert!(output.status.success(), "{}", said(&output));
            target
        }
    };
    let expected = Expected {
        config: config.clone(),
        kids: kids.clone(),
        jwks,
        rotation: policy_before["rotation"].clone(),
        chain: chain_before,
    };
    // SQLite → PostgreSQL, and SQLite → SQLite.
    let on_postgres = restored_into(Site::new(Db::Postgres).await, file.clone()).await;
    let gw = expected.check(&on_postgres).await;
    let on_sqlite = restored_into(Site::new(Db::Sqlite).await, file.clone()).await;
    drop(expected.check(&on_sqlite).await);
    // PostgreSQL → SQLite: a backup of the restored PostgreSQL catalog, taken live.
    let again = on_postgres.dir.path().join("from-postgres.kmsgw-backup");
    let path = on_postgres.write_config(&config);
    let output = cli(
        &on_postgres,
        &[
            "backup",
            "--config",
            path.to_str().unwrap(),
            "--out",
            again.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", said(&output));
    drop(gw);
    let from_postgres = restored_into(Site::new(Db::Sqlite).await, again).await;
    drop(expected.check(&from_postgres).await);

    // A chunk changed, two swapped, the end cut off: each refused, nothing written.
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        lines.len() >= 4,
        "a header, rows and an end: {}",
        lines.len()
    );
    let mut changed = lines.clone();
    let middle = changed[2].len() / 2;
    let flipped = if &changed[2][middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    changed[2].replace_range(middle..=middle, flipped);
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let cut = lines[..lines.len() - 1].to_vec();
    for (what, tampered) in [("changed", changed), ("swapped", swapped), ("cut off", cut)] {
        let target = Site::new(Db::Sqlite).await;
        std::fs::create_dir_all(target.data_dir()).unwrap();
        std::fs::copy(&master, target.data_dir().join("master.key")).unwrap();
        let bad = target.dir.path().join("tampered.kmsgw-backup");
        std::fs::write(&bad, tampered.join("\n") + "\n").unwrap();
        let output = restore(&target, &config, &bad);
        assert!(!output.status.success(), "a {what} backup was restored");
        let message = said(&output);
        assert!(
            message.contains("not a kmsgw backup") && message.contains("nothing was written"),
            "{what}: {message}"
        );
        assert_eq!(
            count_rows(&target, "SELECT COUNT(*) FROM keys").await,
            0,
            "{what}"
        );
        assert_eq!(
            count_rows(&target, "SELECT COUNT(*) FROM audit_log").await,
            0,
            "{what}"
        );
    }

    // With another master key: refused, saying why, and nothing written.
    let wrong = Site::new(Db::Sqlite).await;
    std::fs::create_dir_all(wrong.data_dir()).unwrap();
    std::fs::write(
        wrong.data_dir().join("master.key"),
        format!("{}\n", random_master_key()),
    )
    .unwrap();
    let output = restore(&wrong, &config, &file);
    assert!(!output.status.success());
    let message = said(&output);
    assert!(
        message.contains("does not open the backup's master key")
            && message.contains("nothing was written"),
        "{message}"
    );
    assert_eq!(count_rows(&wrong, "SELECT COUNT(*) FROM keys").await, 0);
    assert_eq!(
        count_rows(&wrong, "SELECT COUNT(*) FROM audit_log").await,
        0
    );
    assert_eq!(
        count_rows(&wrong, "SELECT COUNT(*) FROM seal_keys").await,
        0
    );
    // And into a database that is not empty: refused too.
    let output = restore(&on_sqlite, &config, &file);
    assert!(!output.status.success());
    assert!(said(&output).contains("not empty"), "{}", said(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgresql_follow_a_rotation_by_either_replica_or_the_cli() {
    let mut site_a = Site::new(Db::Postgres).await;
    site_a.master_key = Some(random_master_key());
    let site_b = site_a.replica();
    let a = site_a.start();
    let b = site_b.start();
    let mut kids = some_keys(&a, "pg", "db").await;
    // B holds every key decrypted and its keyring at generation 1.
    sign_every(&b, &kids).await;
    let generation_of = |gw: &Gateway| {
        let gw = gw.base.clone();
        async move {
            let text = reqwest::get(format!("{gw}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .find(|l| l.starts_with("kmsgw_seal_generation{"))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
                .unwrap_or_default()
        }
    };

    // A rotates: B learns the new generation and seals under it.
    let (status, body) = a.post("/admin/seal/rotate", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_until(
        Duration::from_secs(30),
        "both replicas at generation 2",
        || async { generation_of(&a).await == "2" && generation_of(&b).await == "2" },
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "A's rotation to finish",
        || async { a.get("/admin/seal/rotate").await.1["rotation"]["running"] == false },
    )
    .await;
    kids.push(
        b.create(json!({"kid": "made-on-b"})).await["kid"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let on_b = count_rows(
        &site_a,
        "SELECT generation FROM db_key_material WHERE kid = 'made-on-b'",
    )
    .await;
    assert_eq!(on_b, 2, "B sealed its new key under generation 2");
    sign_every(&a, &kids).await;
    sign_every(&b, &kids).await;

    // The CLI rotates beside both running replicas (PostgreSQL needs no stop).
    let output = cli(&site_a, &["seal", "rotate"]);
    assert!(output.status.success(), "{}", said(&output));
    assert!(said(&output).contains("generation 3"), "{}", said(&output));
    wait_until(
        Duration::from_secs(10),
        "both replicas at generation 3",
        || async { generation_of(&a).await == "3" && generation_of(&b).await == "3" },
    )
    .await;
    assert_eq!(
        items_by_generation(&site_a)
            .await
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        vec![3]
    );
    // Both sign every key, those they held decrypted and those they read anew.
    kids.push(
        a.create(json!({"kid": "made-on-a"})).await["kid"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    drop(b);
    let b = site_b.start();
    sign_every(&a, &kids).await;
    sign_every(&b, &kids).await;
    let (_, verdict) = a.get("/audit/verify").await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}
