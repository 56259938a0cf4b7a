//! Algorithms: every JOSE algorithm on the `db` provider, RSA sizes, `/verify`, the
//! errors of an unknown, unsupported or mismatched algorithm, and a backend that
//! returns a signature that does not verify.

use kmsgw_tests::*;
use serde_json::json;

on_both_databases!(db_generates_imports_signs_and_verifies_every_alg);

async fn db_generates_imports_signs_and_verifies_every_alg(db: Db) {
    let site = Site::new(db).await;
    let gw = site.start();
    alg_matrix(&gw, "db", true).await;

    // The JWKS publishes every key with its alg.
    let (_, jwks) = gw.get("/.well-known/jwks.json").await;
    for alg in ALGS {
        let kid = format!("db-{}", alg.to_ascii_lowercase());
        let entry = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap_or_else(|| panic!("{kid} not in {jwks}"));
        assert_eq!(entry["alg"], alg, "{entry}");
    }

    // Keys survive a restart with their algorithm.
    assert!(gw.stop().success());
    let gw = site.start();
    for alg in ALGS {
        let kid = format!("db-{}-imported", alg.to_ascii_lowercase());
        let (_, key) = gw.get(&format!("/keys/{kid}")).await;
        sign_all_and_verify(&gw, &kid, &key["publicJwk"], alg).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_keys_have_the_requested_size() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    for (alg, bits) in [("RS256", 3072), ("PS256", 4096), ("RS256", 2048)] {
        let kid = format!("rsa-{bits}");
        let key = gw
            .create(json!({"kid": kid, "alg": alg, "keySize": bits}))
            .await;
        let n = key["publicJwk"]["n"].as_str().unwrap();
        let n =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, n).unwrap();
        assert_eq!(n.len() * 8, bits, "{kid}");
        let signature = gw.sign(&kid, b"sized").await;
        assert_eq!(
            base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                &signature
            )
            .unwrap()
            .len(),
            bits / 8
        );
        assert_verifies(&key["publicJwk"], b"sized", &signature);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_unsupported_or_mismatched_alg_gets_its_own_error() {
    let site = Site::new(Db::Sqlite).await;
    // A second gateway is the `http` provider's backend; it signs ES256 only here.
    let remote_site = Site::new(Db::Sqlite).await;
    let remote = remote_site.start();
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "edge", "type": "http", "baseUrl": remote.base},
        ]
    }));
    gw.create(json!({"kid": "p384", "alg": "ES384"})).await;
    let mut rsa_without_qi = external_private_jwk("RS256");
    rsa_without_qi.as_object_mut().unwrap().remove("qi");
    let cases = [
        (
            "/keys",
            json!({"kid": "a", "alg": "HS256"}),
            400,
            "unsupported_alg",
            "HS256",
        ),
        (
            "/keys",
            json!({"kid": "b", "alg": "ES384", "provider": "edge"}),
            405,
            "unsupported_alg",
            "`edge` does not support ES384",
        ),
        (
            "/keys",
            json!({"kid": "c", "alg": "ES256", "keySize": 2048}),
            400,
            "invalid_request",
            "RSA keys only",
        ),
        (
            "/keys",
            json!({"kid": "d", "alg": "RS256", "keySize": 1024}),
            400,
            "invalid_request",
            "keySize 1024",
        ),
        (
            "/keys/p384/sign",
            json!({"data": "aGk=", "alg": "ES256"}),
            400,
            "invalid_request",
            "ES384 key",
        ),
        (
            "/keys/p384/sign",
            json!({"data": "aGk=", "alg": "XX1"}),
            400,
            "unsupported_alg",
            "XX1",
        ),
        (
            "/keys/e/import",
            json!({"privateJwk": external_private_jwk("EdDSA"), "alg": "ES256"}),
            400,
            "invalid_jwk",
            "OKP Ed25519",
        ),
        (
            "/keys/r/import",
            json!({"privateJwk": rsa_without_qi}),
            400,
            "invalid_jwk",
            "qi",
        ),
        (
            "/keys/p384/verify",
            json!({"data": "aGk=", "signature": "not base64!"}),
            400,
            "invalid_base64",
            "signature",
        ),
        (
            "/keys/nope/verify",
            json!({"data": "aGk=", "signature": "AAAA"}),
            404,
            "key_not_found",
            "nope",
        ),
    ];
    for (path, body, status, code, says) in cases {
        let (got, answer) = gw.post(path, body.clone()).await;
        assert_eq!(
            (got.as_u16(), answer["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {answer}"
        );
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{path}: {answer}"
        );
    }
    // EUDIPLO's client names no alg: ES256.
    assert_eq!(gw.create(json!({"kid": "plain"})).await["alg"], "ES256");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_signature_that_does_not_verify_is_a_502_never_a_signature() {
    let dir = tempfile::tempdir().unwrap();
    let remote = start_remote_kms(dir.path(), &["--corrupt-signatures"]);
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "defaultProvider": "db",
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "liar", "type": "http", "baseUrl": remote.base, "algs": ALGS},
        ]
    }));
    for alg in ["ES256", "EdDSA", "RS256"] {
        let kid = format!("liar-{}", alg.to_ascii_lowercase());
        gw.create(json!({"kid": kid, "alg": alg, "provider": "liar"}))
            .await;
        let (status, body) = gw
            .post(&format!("/keys/{kid}/sign"), json!({"data": "aGk="}))
            .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(body["code"], "backend_error");
        assert!(body.get("signature").is_none());
        assert!(
            body["error"].as_str().unwrap().contains("`liar`")
                && body["error"].as_str().unwrap().contains("does not verify"),
            "{body}"
        );
    }
}
