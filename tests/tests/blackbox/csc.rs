//! The Cloud Signature Consortium API v2: pyHanko (PyPI), a CSC client not
//! written here, signs PDFs through kmsgw keys on `db`, `vault` and a guest with
//! CA-issued certificates and validates them with its own validator; and the
//! protocol's refusals (tokens, tenants, SADs, hashes) in CSC's error shape.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kmsgw_tests::*;
use serde_json::{Value, json};

use crate::guests::wasm_entry;

const ACME: &str = "csc-acme-token-0123456789abcdef";
const OTHER: &str = "csc-other-token-0123456789abcdef";
const READER: &str = "csc-reader-token-0123456789abcdef";

/// A gateway with `db`, `vault` (OpenBao), the soft-signer guest and its build
/// against WIT 0.3.0 (which signs messages only), whose API keys sign for tenants
/// `acme` and `other`, plus a read-only key of `acme`; SADs live `sad_lifetime`.
fn gateway(site: &Site, vault_port: u16, sad_lifetime: &str) -> Gateway {
    site.start_configured(&json!({
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "vault", "type": "vault", "vaultUrl": format!("http://127.0.0.1:{vault_port}"),
             "vaultToken": "kmsgw-test-root"},
            wasm_entry("soft", "soft_signer", json!({})),
            {"id": "soft-0.3", "type": "wasm", "component": std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/guests/soft_signer-0.3.0.wasm")},
        ],
        "auth": {"apiKeys": [
            {"id": "acme-signer", "token": ACME, "scopes": ["admin"], "tenant": "acme"},
            {"id": "acme-reader", "token": READER, "scopes": ["keys:read"], "tenant": "acme"},
            {"id": "other-signer", "token": OTHER, "scopes": ["admin"], "tenant": "other"},
        ]},
        "csc": {"sadLifetime": sad_lifetime},
    }))
}

/// `POST path` with `token`.
async fn post(gw: &Gateway, token: Option<&str>, path: &str, body: Value) -> (StatusCode, Value) {
    gw.call(token, reqwest::Method::POST, path, Some(body))
        .await
}

/// A CA key (`ca-<alg>` on db, self-signed) and returns its certificate, base64 DER.
async fn root(gw: &Gateway, token: &str, alg: &str) -> String {
    let kid = format!("ca-{}", alg.to_ascii_lowercase());
    let (status, key) = post(gw, Some(token), "/keys", json!({"kid": kid, "alg": alg})).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let issue = json!({"subject": format!("CN=kmsgw test root {alg}, O=kmsgw tests"),
                       "validityDays": 30, "ca": true});
    let key = issue_certificate(gw, token, &kid, issue).await;
    key["x5c"][0].as_str().unwrap().to_owned()
}

/// `POST /keys/{kid}/certificate/issue` with `body`, which must succeed.
async fn issue_certificate(gw: &Gateway, token: &str, kid: &str, body: Value) -> Value {
    let path = format!("/keys/{kid}/certificate/issue");
    let (status, key) = post(gw, Some(token), &path, body).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    key
}

/// A document-signing key `kid` on `provider`, certified by `ca` with
/// digitalSignature and nonRepudiation.
async fn signer(
    gw: &Gateway,
    token: &str,
    kid: &str,
    provider: &str,
    alg: &str,
    ca: &str,
) -> Value {
    let (status, key) = post(
        gw,
        Some(token),
        "/keys",
        json!({"kid": kid, "alg": alg, "provider": provider}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let issue = json!({"subject": format!("CN={kid}, O=kmsgw tests"), "validityDays": 30,
                       "issuerKid": ca, "keyUsage": ["digitalSignature", "nonRepudiation"]});
    issue_certificate(gw, token, kid, issue).await
}

/// pyHanko signs a PDF with credential `kid` and validates it against `root`.
fn pyhanko(gw: &Gateway, kid: &str, root: &str, md: &str, pss: bool) -> Value {
    python_json(
        include_str!("../../fixtures/csc/pyhanko_sign.py"),
        &json!({"url": gw.base, "token": ACME, "credentialID": kid, "root": root,
                "md": md, "pss": pss}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyhanko_signs_pdfs_through_csc_with_keys_on_db_vault_and_a_guest() {
    let site = Site::new(Db::Sqlite).await;
    let port = free_port();
    let _bao = OpenBao::start(port, site.dir.path());
    let gw = gateway(&site, port, "2m");
    let ec_root = root(&gw, ACME, "ES384").await;
    let rsa_root = root(&gw, ACME, "PS256").await;
    for (kid, provider, alg, ca, root, md, pss) in [
        (
            "doc-db-es256",
            "db",
            "ES256",
            "ca-es384",
            &ec_root,
            "sha256",
            false,
        ),
        (
            "doc-db-es384",
            "db",
            "ES384",
            "ca-es384",
            &ec_root,
            "sha384",
            false,
        ),
        (
            "doc-db-ps256",
            "db",
            "PS256",
            "ca-ps256",
            &rsa_root,
            "sha256",
            true,
        ),
        (
            "doc-db-rs256",
            "db",
            "RS256",
            "ca-ps256",
            &rsa_root,
            "sha256",
            false,
        ),
        (
            "doc-vault-es256",
            "vault",
            "ES256",
            "ca-es384",
            &ec_root,
            "sha256",
            false,
        ),
        (
            "doc-vault-ps256",
            "vault",
            "PS256",
            "ca-ps256",
            &rsa_root,
            "sha256",
            true,
        ),
        (
            "doc-guest-es256",
            "soft",
            "ES256",
            "ca-es384",
            &ec_root,
            "sha256",
            false,
        ),
        (
            "doc-guest-ps256",
            "soft",
            "PS256",
            "ca-ps256",
            &rsa_root,
            "sha256",
            true,
        ),
    ] {
        signer(&gw, ACME, kid, provider, alg, ca).await;
        let verdict = pyhanko(&gw, kid, root, md, pss);
        assert_eq!(verdict["signed"], true, "{kid}: {verdict}");
        for field in ["intact", "valid", "trusted", "bottomLine"] {
            assert_eq!(verdict[field], true, "{kid} {field}: {verdict}");
        }
        assert_eq!(
            verdict["signer"],
            format!("Common Name: {kid}, Organization: kmsgw tests")
        );
        assert_eq!(verdict["md"], md, "{verdict}");
        assert_eq!(
            verdict["sads"], 1,
            "{kid}: pyHanko asked for one SAD: {verdict}"
        );
        let mechanism = verdict["mechanism"].as_str().unwrap();
        let expected = match alg {
            "PS256" => "rsassa_pss",
            "RS256" => "sha256_rsa",
            _ => &format!("{md}_ecdsa"),
        };
        assert_eq!(mechanism, expected, "{kid}: {verdict}");
        // Each signHash left one sign-digest record holding the hash it signed
        // (sign records are written in batches: wait for it).
        let path = format!("/audit?kid={kid}&action=sign-digest");
        let records = || async {
            let (_, page) = gw.call(Some(ACME), reqwest::Method::GET, &path, None).await;
            page["records"].as_array().unwrap().clone()
        };
        wait_until(Duration::from_secs(10), "the signHash record", || async {
            !records().await.is_empty()
        })
        .await;
        let records = records().await;
        assert_eq!(records.len(), 1, "{kid}: {records:?}");
        assert_eq!(records[0]["outcome"], "ok");
        let hash = records[0]["messageSha256"].as_str().unwrap();
        let bytes = match md {
            "sha384" => 48,
            _ => 32,
        };
        assert_eq!(hash.len(), 2 * bytes, "{records:?}");
    }
    // pyHanko's own PSS choice (the longest salt) is not PS256's: refused
    // clearly, and nothing signed.
    let answer = python_json(
        include_str!("../../fixtures/csc/pyhanko_sign.py"),
        &json!({"url": gw.base, "token": ACME, "credentialID": "doc-db-ps256",
                "root": rsa_root, "md": "sha256", "pyhankoPss": true}),
    );
    assert_eq!(answer["signed"], false, "{answer}");
    let outcomes = || async {
        let path = "/audit?kid=doc-db-ps256&action=sign-digest";
        let (_, page) = gw.call(Some(ACME), reqwest::Method::GET, path, None).await;
        page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["outcome"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(10), "the refusal's record", || async {
        outcomes().await.len() == 2
    })
    .await;
    assert_eq!(outcomes().await, ["ok", "invalid_request"]);
    let (_, verdict) = gw
        .call(Some(ACME), reqwest::Method::GET, "/audit/verify", None)
        .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csc_refuses_what_the_protocol_refuses_in_its_own_error_shape() {
    let site = Site::new(Db::Sqlite).await;
    let port = free_port();
    let _bao = OpenBao::start(port, site.dir.path());
    let gw = gateway(&site, port, "1s");
    let ca = root(&gw, ACME, "ES256").await;
    let key = signer(&gw, ACME, "doc", "db", "ES256", "ca-es256").await;
    // Another tenant's credential, and acme keys that are no credentials: one
    // without a certificate, one (Ed25519) that cannot sign a hash, one on a
    // guest built against WIT 0.3.0 (which signs messages only).
    root(&gw, OTHER, "ES256").await;
    signer(&gw, OTHER, "theirs", "db", "ES256", "ca-es256").await;
    post(&gw, Some(ACME), "/keys", json!({"kid": "bare"})).await;
    let (status, _) = post(
        &gw,
        Some(ACME),
        "/keys",
        json!({"kid": "ed", "alg": "Ed25519"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(
        &gw,
        Some(ACME),
        "/keys/ed/certificate/issue",
        json!({"subject": "CN=ed", "validityDays": 1, "issuerKid": "ca-es256"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    signer(&gw, ACME, "guest", "soft-0.3", "ES256", "ca-es256").await;

    // `info` needs no token; every other route answers CSC's 401 without one.
    let (status, info) = gw.get("/csc/v2/info").await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["specs"], "2.0.0.2");
    assert_eq!(info["authType"], json!(["external"]));
    let (status, _) = post(&gw, None, "/csc/v2/info", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    for route in [
        "credentials/list",
        "credentials/info",
        "credentials/authorize",
        "signatures/signHash",
        "signatures/timestamp",
        "signatures/signDoc",
    ] {
        for token in [None, Some("csc-wrong-token-0123456789abcdef")] {
            let (status, body) = post(&gw, token, &format!("/csc/v2/{route}"), json!({})).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{route}: {body}");
            assert_eq!(body["error"], "invalid_token", "{route}: {body}");
            assert!(body["error_description"].is_string(), "{body}");
        }
    }
    let (status, body) = post(&gw, Some(ACME), "/csc/v2/signatures/timestamp", json!({})).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["error"], "not_implemented");

    // The list holds the tenant's credentials only, with their chains on request.
    let (status, list) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/list",
        json!({"credentialInfo": true, "certificates": "chain", "certInfo": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["credentialIDs"], json!(["ca-es256", "doc"]), "{list}");
    let doc = &list["credentialInfos"][1];
    assert_eq!(doc["credentialID"], "doc");
    assert_eq!(doc["key"]["algo"], json!(["1.2.840.10045.4.3.2"]));
    assert_eq!(doc["key"]["curve"], "1.2.840.10045.3.1.7");
    assert_eq!(doc["key"]["len"], 256);
    assert_eq!(doc["auth"]["mode"], "implicit");
    assert_eq!(doc["SCAL"], "1");
    assert_eq!(doc["cert"]["status"], "valid");
    assert_eq!(doc["cert"]["subjectDN"], "CN=doc,O=kmsgw tests");
    assert_eq!(doc["cert"]["certificates"].as_array().unwrap().len(), 2);
    assert_eq!(doc["cert"]["certificates"][1], ca.as_str());
    // Paginated.
    let (_, first) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/list",
        json!({"maxResults": 1, "credInfo": true}),
    )
    .await;
    assert_eq!(
        first["credentialInfos"][0]["credentialID"], "ca-es256",
        "{first}"
    );
    assert_eq!(first["credentialIDs"], json!(["ca-es256"]), "{first}");
    let token = first["nextPageToken"].as_str().unwrap();
    let (_, second) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/list",
        json!({"maxResults": 1, "pageToken": token}),
    )
    .await;
    assert_eq!(second["credentialIDs"], json!(["doc"]), "{second}");
    for bad in [
        json!({"maxResults": 0}),
        json!({"maxResults": 101}),
        json!({"pageToken": "a\u{0}"}),
    ] {
        let (status, body) = post(&gw, Some(ACME), "/csc/v2/credentials/list", bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
    }

    // Another tenant's credential is unknown: CSC's invalid request, nothing audited.
    let records_before = count_rows(&site, "SELECT COUNT(*) FROM audit_log").await;
    let hash = STANDARD.encode(prehash("ES256", b"contract").unwrap());
    for (route, body) in [
        ("credentials/info", json!({"credentialID": "theirs"})),
        (
            "credentials/authorize",
            json!({"credentialID": "theirs", "numSignatures": 1, "hashes": [hash]}),
        ),
        (
            "signatures/signHash",
            json!({"credentialID": "theirs", "hashes": [hash], "signAlgo": "1.2.840.10045.4.3.2"}),
        ),
        (
            "signatures/signHash",
            json!({"credentialID": "bare", "hashes": [hash], "signAlgo": "1.2.840.10045.4.3.2"}),
        ),
        (
            "signatures/signHash",
            json!({"credentialID": "ed", "hashes": [hash], "signAlgo": "1.3.101.112"}),
        ),
        (
            "signatures/signHash",
            json!({"credentialID": "guest", "hashes": [hash], "signAlgo": "1.2.840.10045.4.3.2"}),
        ),
    ] {
        let (status, body) = post(&gw, Some(ACME), &format!("/csc/v2/{route}"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{route}: {body}");
        assert_eq!(body["error"], "invalid_request", "{body}");
        assert_eq!(body["error_description"], "Invalid parameter credentialID");
    }
    let records_after = count_rows(&site, "SELECT COUNT(*) FROM audit_log").await;
    assert_eq!(
        records_before, records_after,
        "a refusal of a foreign credential was audited"
    );

    // Scopes: a read-only key lists but cannot authorise or sign.
    let (status, _) = post(&gw, Some(READER), "/csc/v2/credentials/list", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let sign = |sad: Option<&str>, hashes: &[&str]| {
        let mut body = json!({"credentialID": "doc", "hashes": hashes,
                              "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
                              "signAlgo": "1.2.840.10045.4.3.2"});
        if let Some(sad) = sad {
            body["SAD"] = sad.into();
        }
        body
    };
    let (status, body) = post(
        &gw,
        Some(READER),
        "/csc/v2/signatures/signHash",
        sign(None, &[&hash]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "access_denied");

    // A SAD signs the hashes it was issued for, once.
    let authorize = |hashes: &[&str]| json!({"credentialID": "doc", "numSignatures": hashes.len(), "hashes": hashes});
    let (status, sad) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/authorize",
        authorize(&[&hash]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{sad}");
    assert_eq!(sad["expiresIn"], 1);
    let sad = sad["SAD"].as_str().unwrap().to_owned();
    let (status, signed) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        sign(Some(&sad), &[&hash]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    // DER ECDSA, over the message whose hash was sent.
    let der = STANDARD
        .decode(signed["signatures"][0].as_str().unwrap())
        .unwrap();
    let signature = p256::ecdsa::Signature::from_der(&der).expect("a DER ECDSA signature");
    let jose = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes());
    assert_verifies(&key["publicJwk"], b"contract", &jose);
    let (status, reused) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        sign(Some(&sad), &[&hash]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{reused}");
    assert_eq!(reused["error"], "invalid_request");
    assert!(
        reused["error_description"]
            .as_str()
            .unwrap()
            .contains("SAD"),
        "{reused}"
    );

    // A SAD does not sign other hashes, another tenant's key cannot use it, and
    // it expires.
    let other_hash = STANDARD.encode(prehash("ES256", b"other").unwrap());
    let (_, sad) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/authorize",
        authorize(&[&hash]),
    )
    .await;
    let sad = sad["SAD"].as_str().unwrap().to_owned();
    let (status, body) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        sign(Some(&sad), &[&other_hash]),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_request")),
        "{body}"
    );
    let (_, sad) = post(
        &gw,
        Some(ACME),
        "/csc/v2/credentials/authorize",
        authorize(&[&hash]),
    )
    .await;
    let sad = sad["SAD"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        sign(Some(&sad), &[&hash]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error_description"].as_str().unwrap().contains("SAD"),
        "{body}"
    );

    // Hashes of the wrong length, a wrong hash or signature algorithm, other
    // PSS parameters: CSC's invalid request.
    let short = STANDARD.encode([7u8; 31]);
    let mut wrong_hash_alg = sign(None, &[&hash]);
    wrong_hash_alg["hashAlgorithmOID"] = "2.16.840.1.101.3.4.2.3".into();
    let mut wrong_sign_alg = sign(None, &[&hash]);
    wrong_sign_alg["signAlgo"] = "1.2.840.113549.1.1.10".into();
    let mut pss_params = sign(None, &[&hash]);
    pss_params["signAlgoParams"] = "MAA=".into();
    for (what, body) in [
        ("short hash", sign(None, &[&short])),
        ("no hashes", sign(None, &[])),
        (
            "1001 hashes, one past multisign",
            sign(None, &vec![hash.as_str(); 1001]),
        ),
        ("hash algorithm", wrong_hash_alg),
        ("signature algorithm", wrong_sign_alg),
        ("PSS parameters", pss_params),
        ("short hash to authorize", authorize(&[&short])),
    ] {
        let route = if what.ends_with("authorize") {
            "credentials/authorize"
        } else {
            "signatures/signHash"
        };
        let (status, body) = post(&gw, Some(ACME), &format!("/csc/v2/{route}"), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(body["error"], "invalid_request", "{what}: {body}");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with("Invalid parameter"),
            "{what}: {body}"
        );
    }

    // Exactly multisign hashes sign.
    let (status, body) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        sign(None, &vec![hash.as_str(); 1000]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["signatures"].as_array().unwrap().len(), 1000);

    // Implicit mode: a signHash without SAD signs (v1 names too), one audit
    // record holding every hash in order.
    let hashes: Vec<String> = (0..3)
        .map(|i| STANDARD.encode(prehash("ES256", format!("page {i}").as_bytes()).unwrap()))
        .collect();
    let (status, signed) = post(
        &gw,
        Some(ACME),
        "/csc/v2/signatures/signHash",
        json!({"credentialID": "doc", "hash": hashes, "hashAlgo": "2.16.840.1.101.3.4.2.1",
               "signAlgo": "1.2.840.10045.2.1"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    for (i, signature) in signed["signatures"].as_array().unwrap().iter().enumerate() {
        let der = STANDARD.decode(signature.as_str().unwrap()).unwrap();
        let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
        let jose = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes());
        assert_verifies(&key["publicJwk"], format!("page {i}").as_bytes(), &jose);
    }
    // Sign records are written in batches: wait for this one.
    let recorded: Vec<String> = hashes
        .iter()
        .map(|h| hex_of(&STANDARD.decode(h).unwrap()))
        .collect();
    let last_record = || async {
        let (_, page) = gw
            .call(
                Some(ACME),
                reqwest::Method::GET,
                "/audit?kid=doc&action=sign-digest",
                None,
            )
            .await;
        page["records"].as_array().unwrap().last().unwrap().clone()
    };
    wait_until(Duration::from_secs(10), "the signHash record", || async {
        last_record().await["messageSha256s"] == json!(recorded)
    })
    .await;
    assert_eq!(last_record().await["outcome"], "ok");
    let (_, verdict) = gw
        .call(Some(ACME), reqwest::Method::GET, "/audit/verify", None)
        .await;
    assert_eq!(verdict["ok"], true, "{verdict}");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sad_is_redeemed_once_across_replicas() {
    let mut site = Site::new(Db::Postgres).await;
    site.master_key = Some(random_master_key());
    let config = json!({
        "providers": [{"id": "db", "type": "db"}],
        "auth": {"apiKeys": [{"id": "acme-signer", "token": ACME, "scopes": ["admin"], "tenant": "acme"}]},
    });
    let a = site.start_configured(&config);
    let b = site.replica().start_configured(&config);
    root(&a, ACME, "ES256").await;
    let key = signer(&a, ACME, "doc", "db", "ES256", "ca-es256").await;
    for round in 0..5 {
        let message = format!("round {round}");
        let hash = STANDARD.encode(prehash("ES256", message.as_bytes()).unwrap());
        let (status, sad) = post(
            &a,
            Some(ACME),
            "/csc/v2/credentials/authorize",
            json!({"credentialID": "doc", "numSignatures": 1, "hashes": [hash]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{sad}");
        let body = json!({"credentialID": "doc", "SAD": sad["SAD"], "hashes": [hash],
                          "signAlgo": "1.2.840.10045.4.3.2"});
        // Both replicas redeem it at once: exactly one signs.
        let (on_a, on_b) = tokio::join!(
            post(&a, Some(ACME), "/csc/v2/signatures/signHash", body.clone()),
            post(&b, Some(ACME), "/csc/v2/signatures/signHash", body.clone()),
        );
        let mut statuses = [on_a.0, on_b.0];
        statuses.sort();
        assert_eq!(
            statuses,
            [StatusCode::OK, StatusCode::BAD_REQUEST],
            "{on_a:?} {on_b:?}"
        );
        let signed = if on_a.0 == StatusCode::OK {
            on_a.1
        } else {
            on_b.1
        };
        let der = STANDARD
            .decode(signed["signatures"][0].as_str().unwrap())
            .unwrap();
        let signature = p256::ecdsa::Signature::from_der(&der).unwrap();
        let jose = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes());
        assert_verifies(&key["publicJwk"], message.as_bytes(), &jose);
    }
}
