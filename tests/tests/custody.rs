//! Master key custody on a PKCS#11 token (SoftHSM2), and migrations between
//! every kind of seal: file → vault-transit (OpenBao) → pkcs11 → file. One
//! test in its own binary: SoftHSM2 is configured through `SOFTHSM2_CONF`,
//! which this process sets before anything else runs.

use std::collections::BTreeSet;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::UserType;
use kmsgw_tests::custody::*;
use kmsgw_tests::*;
use serde_json::{Value, json};
use sqlx::Connection;

const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";
const TOKEN: &str = "kmsgw-seal-token";
/// Long and odd enough that no timestamp or port in a log contains it by chance.
const PIN: &str = "88412-kmsgw-seal-pin";
const KEY_LABEL: &str = "kmsgw-master-wrap";

/// An AES-256 key on the token that never leaves it: the seal's key.
fn make_wrapping_key() {
    let pkcs11 = Pkcs11::new(LIBRARY).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&PIN.to_owned().into()))
        .unwrap();
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(KEY_LABEL.as_bytes().to_vec()),
            ],
        )
        .unwrap();
    pkcs11.finalize().unwrap();
}

/// The sealed key material and guest values as stored, to show a migration
/// rewrites none of them.
async fn sealed_items(site: &Site) -> BTreeSet<String> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&site.database())
        .await
        .unwrap();
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT sealed FROM db_key_material UNION ALL SELECT sealed FROM db_version_material \
         UNION ALL SELECT value FROM guest_kv",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|(s,)| s).collect()
}

fn config(seal: Value) -> Value {
    json!({"providers": [
        {"id": "db", "type": "db"},
        {"id": "soft", "type": "wasm", "component": guest("soft_signer")},
    ], "seal": seal})
}

/// `kmsgw seal migrate` from the kms.json at `from` to the one at `to`.
fn migrate(site: &Site, from: &std::path::Path, to: &std::path::Path) -> String {
    let output = cli(
        site,
        &[
            "seal",
            "migrate",
            "--config",
            from.to_str().unwrap(),
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", said(&output));
    said(&output)
}

#[test]
fn the_master_key_moves_file_to_vault_transit_to_pkcs11_to_file_and_a_token_unseals() {
    let hsm_dir = tempfile::tempdir().unwrap();
    let conf = softhsm_tokens(hsm_dir.path(), &[TOKEN], PIN);
    // SAFETY: set before any other thread of this test binary exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    make_wrapping_key();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let site = Site::new(Db::Sqlite).await;
        let write = |name: &str, config: &Value| {
            let path = site.dir.path().join(name);
            std::fs::write(&path, serde_json::to_vec_pretty(config).unwrap()).unwrap();
            path
        };
        let file = write("file.json", &config(json!({"type": "file"})));
        let start = |path: &std::path::Path| site.start_with(&["--config", path.to_str().unwrap()], &[]);

        // Keys under the file seal (the default): db keys, a rotated one, guest keys.
        let gw = start(&file);
        let mut kids = some_keys(&gw, "m", "db").await;
        kids.extend(some_keys(&gw, "m-guest", "soft").await);
        let (status, body) = gw.post("/keys/m-es256/rotate", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        sign_every(&gw, &kids).await;
        let items = sealed_items(&site).await;
        assert_eq!(seal_rows(&site).await.len(), 1);

        // Never beside a running gateway on SQLite.
        let bao = openbao_with_seal_key(site.dir.path()).await;
        let vault = write("vault.json", &config(vault_seal(&bao, ROOT_TOKEN)));
        let refused = cli(&site, &["seal", "migrate", "--config", file.to_str().unwrap(), "--to", vault.to_str().unwrap()]);
        assert!(!refused.status.success());
        assert!(said(&refused).contains("a gateway is running"), "{}", said(&refused));
        drop(gw);

        // file → vault-transit: the key file is gone; the gateway unseals through OpenBao.
        let told = migrate(&site, &file, &vault);
        assert!(told.contains("removed") && told.contains("master.key"), "{told}");
        assert!(!site.data_dir().join("master.key").exists());
        let rows = seal_rows(&site).await;
        assert_eq!(rows.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), vec![(1, "vault-transit:transit/kmsgw-seal")]);
        let master = bao_unwrap(&bao, &rows[0].2).await;
        let gw = start(&vault);
        sign_every(&gw, &kids).await;
        drop(gw);

        // vault-transit → pkcs11: only the token's wrapped copy is left.
        let pkcs11_seal = json!({"type": "pkcs11", "module": LIBRARY, "tokenLabel": TOKEN, "pin": PIN, "keyLabel": KEY_LABEL});
        let token = write("pkcs11.json", &config(pkcs11_seal));
        migrate(&site, &vault, &token);
        let rows = seal_rows(&site).await;
        assert_eq!(rows.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), vec![(1, "pkcs11:kmsgw-seal-token/kmsgw-master-wrap")]);
        let gw = start(&token);
        sign_every(&gw, &kids).await;
        let (_, providers) = gw.text(None, "/providers").await;
        let (_, metrics) = gw.text(None, "/metrics").await;
        for text in [&gw.log_text(), &providers, &metrics] {
            assert!(!text.contains(PIN), "the PIN leaked: {text}");
        }
        drop(gw);
        assert!(!site.data_dir().join("master.key").exists());
        assert_scalar_absent(&files_under(site.dir.path()), &master);

        // The token gone (another token directory): sealed, saying why.
        let empty = tempfile::tempdir().unwrap();
        let empty_conf = softhsm_tokens(empty.path(), &["someone-else"], "1234");
        let gw = site.start_with(
            &["--config", token.to_str().unwrap()],
            &[("SOFTHSM2_CONF", empty_conf.to_str().unwrap()), ("RUST_LOG", "debug")],
        );
        let sealed = sealed_readiness(&gw).await;
        assert!(sealed["error"].as_str().unwrap().contains("no token labelled `kmsgw-seal-token`"), "{sealed}");
        assert_refused_sealed(&gw, "m-es384", "pkcs11:kmsgw-seal-token").await;
        assert!(!gw.log_text().contains(PIN), "the PIN leaked at debug level");
        drop(gw);

        // pkcs11 → file: a new key file wraps the same master key.
        let told = migrate(&site, &token, &file);
        assert!(told.contains("to `file`"), "{told}");
        assert!(site.data_dir().join("master.key").exists());
        let rows = seal_rows(&site).await;
        assert_eq!(rows.iter().map(|r| (r.0, r.1.as_str())).collect::<Vec<_>>(), vec![(1, "file")]);
        let gw = start(&file);
        sign_every(&gw, &kids).await;

        // No sealed item was rewritten by any of it, every step is in the log.
        assert_eq!(sealed_items(&site).await, items);
        let (_, audit) = gw.get("/audit?action=seal-migrate").await;
        let moves: Vec<&str> = audit["records"].as_array().unwrap().iter().map(|r| r["provider"].as_str().unwrap()).collect();
        assert_eq!(
            moves,
            vec![
                "file -> vault-transit:transit/kmsgw-seal",
                "vault-transit:transit/kmsgw-seal -> pkcs11:kmsgw-seal-token/kmsgw-master-wrap",
                "pkcs11:kmsgw-seal-token/kmsgw-master-wrap -> file",
            ],
            "{audit}"
        );
        let (_, verdict) = gw.get("/audit/verify").await;
        assert_eq!(verdict["ok"], true, "{verdict}");
        let (_, metrics) = gw.text(None, "/metrics").await;
        assert!(
            metrics.contains("kmsgw_seal_operations_total{operation=\"seal-migrate\",outcome=\"ok\"} 3"),
            "{metrics}"
        );
    });
}
