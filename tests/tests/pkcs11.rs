//! The `pkcs11` provider against SoftHSM2 through cryptoki. One test in its own
//! binary: SoftHSM2 is configured through `SOFTHSM2_CONF`, which this process
//! sets before anything else runs.

use std::path::Path;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use kmsgw_tests::*;
use serde_json::json;

const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";
const LABEL: &str = "kmsgw-test";
/// The user PIN of the test tokens: long and odd enough that no timestamp or port
/// in the log contains it by chance.
const PIN: &str = "73519-kmsgw-pin";
const OTHER_LABEL: &str = "kmsgw-other";

/// The library in this process, and the index of the test token among the slots
/// holding an initialised token (what `slot: N` in kms.json means).
fn library() -> (Pkcs11, usize) {
    let pkcs11 = Pkcs11::new(LIBRARY).unwrap();
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(
            cryptoki::error::RvError::CryptokiAlreadyInitialized,
            _,
        )) => {}
        Err(e) => panic!("{e}"),
    }
    let slots = pkcs11.get_slots_with_initialized_token().unwrap();
    let index = slots
        .iter()
        .position(|s| pkcs11.get_token_info(*s).unwrap().label().trim_end() == LABEL)
        .unwrap();
    (pkcs11, index)
}

/// Objects on the test token labelled `label`, counted in this process.
fn objects_labelled(label: &str) -> usize {
    let (pkcs11, index) = library();
    let slot = pkcs11.get_slots_with_initialized_token().unwrap()[index];
    let session = pkcs11.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&PIN.to_owned().into()))
        .unwrap();
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
        .len()
}

fn init_token(dir: &Path) {
    let conf = softhsm_tokens(dir, &[LABEL, OTHER_LABEL], PIN);
    // SAFETY: set before any other thread of this test binary exists.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
}

#[test]
fn pkcs11_generates_imports_signs_and_deletes_on_softhsm2() {
    let hsm_dir = tempfile::tempdir().unwrap();
    init_token(hsm_dir.path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_, index) = library();
    runtime.block_on(async {
        let site = Site::new(Db::Sqlite).await;
        let gw = site.start_configured(&json!({"providers": [
            {"id": "db", "type": "db"},
            {"id": "hsm", "type": "pkcs11", "library": LIBRARY, "slot": LABEL, "pin": PIN},
            {"id": "hsm-index", "type": "pkcs11", "library": LIBRARY, "slot": index, "pin": PIN, "sessions": 2},
            {"id": "wrong-pin", "type": "pkcs11", "library": LIBRARY, "slot": OTHER_LABEL, "pin": "0000"},
        ]}));

        // By label: generate, sign, and 32 signs at once.
        let key = gw.create(json!({"kid": "hsm-key", "provider": "hsm"})).await;
        let signature = gw.sign("hsm-key", b"from the HSM").await;
        assert_verifies(&key["publicJwk"], b"from the HSM", &signature);
        let signs = (0..32).map(|i| {
            let gw = &gw;
            async move {
                let message = format!("concurrent {i}");
                (message.clone(), gw.sign("hsm-key", message.as_bytes()).await)
            }
        });
        for (message, signature) in futures::future::join_all(signs).await {
            assert_verifies(&key["publicJwk"], message.as_bytes(), &signature);
        }

        // By slot index.
        let indexed = gw.create(json!({"kid": "indexed", "provider": "hsm-index"})).await;
        let signature = gw.sign("indexed", b"by index").await;
        assert_verifies(&indexed["publicJwk"], b"by index", &signature);

        // Import, then sign with the imported key.
        let (private, _) = known_private_jwk();
        let (status, body) = gw.post("/keys/hsm-imported/import", json!({"privateJwk": private, "provider": "hsm"})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let signature = gw.sign("hsm-imported", b"imported").await;
        assert_verifies(&private, b"imported", &signature);

        // Every algorithm, generated on the token and imported into it.
        alg_matrix(&gw, "hsm", true).await;
        let signature = gw.sign("hsm-es512", &[7u8; 100_000]).await;
        let (_, key) = gw.get("/keys/hsm-es512").await;
        assert_verifies(&key["publicJwk"], &[7u8; 100_000], &signature);

        // A certification request signed on the token, checked by OpenSSL.
        let (_, hsm_key) = gw.get("/keys/hsm-key").await;
        check_csr(&gw, "hsm-key", &hsm_key["publicJwk"]).await;

        // A batch over the session pool, in order.
        let (_, key) = gw.get("/keys/hsm-es256").await;
        batch_round_trip(&gw, "hsm-es256", &key["publicJwk"]).await;

        // PDFs signed through CSC by token keys with CA-issued certificates:
        // pyHanko signs and validates them against the root.
        let (status, root) = gw.post("/keys", json!({"kid": "csc-root", "alg": "ES384"})).await;
        assert_eq!(status, StatusCode::OK, "{root}");
        let (status, root) = gw
            .post("/keys/csc-root/certificate/issue", json!({"subject": "CN=csc root", "validityDays": 2, "ca": true}))
            .await;
        assert_eq!(status, StatusCode::OK, "{root}");
        for (kid, alg, pss) in [("csc-hsm-es256", "ES256", false), ("csc-hsm-ps256", "PS256", true)] {
            gw.create(json!({"kid": kid, "alg": alg, "provider": "hsm"})).await;
            let issue = json!({"subject": format!("CN={kid}"), "validityDays": 2, "issuerKid": "csc-root",
                               "keyUsage": ["digitalSignature", "nonRepudiation"]});
            let (status, body) = gw.post(&format!("/keys/{kid}/certificate/issue"), issue).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let verdict = python_json(
                include_str!("../fixtures/csc/pyhanko_sign.py"),
                &json!({"url": gw.base, "credentialID": kid, "root": root["x5c"][0], "md": "sha256", "pss": pss}),
            );
            for field in ["signed", "intact", "valid", "trusted", "bottomLine"] {
                assert_eq!(verdict[field], true, "{kid} {field}: {verdict}");
            }
        }

        // A rotation makes a new token key; the JWKS publishes both versions.
        let (status, rotated) = gw.post("/keys/hsm-rs256/rotate", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        let (_, signed) = gw.post("/keys/hsm-rs256/sign", json!({"data": "cm90YXRlZA=="})).await;
        assert_eq!(signed["jwkKid"], "hsm-rs256@v2", "{signed}");
        assert_verifies(&rotated["publicJwk"], b"rotated", signed["signature"].as_str().unwrap());
        assert_eq!(objects_labelled("hsm-rs256@v2"), 2);

        // A wrong PIN: that provider is not ok, with the reason; the rest serves.
        let (_, health) = gw.get("/health/kms").await;
        let line = |id: &str| health.as_array().unwrap().iter().find(|h| h["providerId"] == id).unwrap().clone();
        assert_eq!(line("hsm")["ok"], true, "{health}");
        assert_eq!(line("hsm-index")["ok"], true, "{health}");
        assert_eq!(line("wrong-pin")["ok"], false, "{health}");
        assert!(line("wrong-pin")["error"].as_str().unwrap().contains("PIN is incorrect"), "{health}");
        let db_key = gw.create(json!({"kid": "still-serving"})).await;
        let signature = gw.sign("still-serving", b"db").await;
        assert_verifies(&db_key["publicJwk"], b"db", &signature);
        assert!(!gw.log_text().contains(PIN), "the PIN was logged");

        // Delete: both objects leave the token.
        assert_eq!(gw.delete("/keys/hsm-key").await.0, StatusCode::NO_CONTENT);
        let (status, _) = gw.post("/keys/hsm-key/sign", json!({"data": "eA=="})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        drop(gw);
        assert_eq!(objects_labelled("hsm-key"), 0);
        assert_eq!(objects_labelled("hsm-imported"), 2);
    });
}
