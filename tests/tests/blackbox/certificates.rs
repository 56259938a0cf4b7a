//! Certificates of key versions, checked with OpenSSL (an X.509 implementation
//! independent of the gateway's): self-signed and CA-issued certificates made
//! through any provider and algorithm, imported chains and the four ways they
//! are refused, `x5c` in records and the JWKS, and leaves issued on rotation and
//! renewed by the scheduler.

use kmsgw_tests::*;
use serde_json::{Value, json};

/// Makes `kid` a CA: a self-signed CA certificate for its current version.
pub(crate) async fn make_root(gw: &Gateway, kid: &str) -> String {
    let (status, body) = gw
        .post(
            &format!("/keys/{kid}/certificate/issue"),
            json!({"subject": format!("CN={kid} root, O=kmsgw tests"), "validityDays": 365, "ca": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    certificate(gw, kid).await
}

/// The PEM chain of `kid`'s current version.
pub(crate) async fn certificate(gw: &Gateway, kid: &str) -> String {
    let (status, pem) = gw.text(None, &format!("/keys/{kid}/certificate")).await;
    assert_eq!(status, StatusCode::OK, "{pem}");
    pem
}

/// Issues `kid` a leaf from `issuer` and checks it with OpenSSL: the chain
/// verifies to `root`, the leaf certifies `kid`'s public key, and `x5c` in the
/// record and the JWKS is the chain.
pub(crate) async fn issue_and_verify(gw: &Gateway, kid: &str, issuer: &str, root: &str) {
    let (status, record) = gw
        .post(
            &format!("/keys/{kid}/certificate/issue"),
            json!({"subject": "CN=issuer.example.org, O=Example", "validityDays": 30,
                   "issuerKid": issuer, "dnsNames": ["issuer.example.org"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    check_chain(gw, &record, root).await;
}

/// Checks `record`'s current certificate as [`issue_and_verify`] says.
pub(crate) async fn check_chain(gw: &Gateway, record: &Value, root: &str) {
    let kid = record["kid"].as_str().unwrap();
    let chain = certificate(gw, kid).await;
    openssl_verify(root, &chain).unwrap_or_else(|e| panic!("{kid}: openssl verify: {e}"));
    let leaf = &pem_blocks(&chain)[0];
    let public = openssl_public_key(leaf, "x509");
    assert!(
        spki_holds(&public, &record["publicJwk"]),
        "{kid}: the leaf certifies another key:\n{public}\n{}",
        record["publicJwk"]
    );
    let x5c = x5c_of_pem(&chain);
    assert_eq!(record["x5c"], json!(x5c), "{kid}: record x5c");
    let published = jwks_entry(gw, record["jwkKid"].as_str().unwrap())
        .await
        .expect("published");
    assert_eq!(published["x5c"], json!(x5c), "{kid}: JWKS x5c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuers_of_every_algorithm_sign_certificates_openssl_accepts() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    for alg in ["ES384", "ES512", "EdDSA", "RS256", "PS256"] {
        let root = format!("root-{}", alg.to_lowercase());
        gw.create(json!({"kid": root, "alg": alg})).await;
        let root_pem = make_root(&gw, &root).await;
        let (ok, text) = openssl(
            &["x509", "-in", "{root.pem}", "-noout", "-text"],
            &[("root.pem", &root_pem)],
        );
        assert!(ok && text.contains("CA:TRUE"), "{alg} root:\n{text}");
        let leaf = format!("leaf-of-{}", alg.to_lowercase());
        gw.create(json!({"kid": leaf})).await;
        issue_and_verify(&gw, &leaf, &root, &root_pem).await;
        let chain = certificate(&gw, &leaf).await;
        let (_, text) = openssl(
            &["x509", "-in", "{leaf.pem}", "-noout", "-text"],
            &[("leaf.pem", &pem_blocks(&chain)[0])],
        );
        for expected in [
            "CA:FALSE",
            "Digital Signature",
            "DNS:issuer.example.org",
            "Authority Key Identifier",
            "Subject Key Identifier",
        ] {
            assert!(
                text.contains(expected),
                "{alg} leaf lacks {expected}:\n{text}"
            );
        }
    }
    // A key without a CA certificate cannot issue; a subject that is no name is refused.
    gw.create(json!({"kid": "plain"})).await;
    let (status, body) = gw
        .post(
            "/keys/leaf-of-es384/certificate/issue",
            json!({"subject": "CN=x", "validityDays": 1, "issuerKid": "plain"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("issuer_not_ca")),
        "{body}"
    );
    let (status, body) = gw
        .post(
            "/keys/plain/certificate/issue",
            json!({"subject": "no equals sign", "validityDays": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // validityDays is 1 to 36500 (about a century); past either end, a 400 that says so.
    for days in [0, 36_501] {
        let (status, body) = gw
            .post(
                "/keys/plain/certificate/issue",
                json!({"subject": "CN=plain", "validityDays": days}),
            )
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_certificate_request")),
            "{body}"
        );
        assert!(
            body["error"].as_str().unwrap().contains("1 to 36500"),
            "{body}"
        );
    }
    let (status, body) = gw
        .post(
            "/keys/plain/certificate/issue",
            json!({"subject": "CN=plain", "validityDays": 36_500}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    gw.create(json!({"kid": "uncertified"})).await;
    let (status, body) = gw.text(None, "/keys/uncertified/certificate").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("certificate_not_found"));
}

/// A public key as rcgen takes it: the SubjectPublicKeyInfo's key bytes.
struct PublicKey(Vec<u8>);

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

fn point_of(jwk: &Value) -> PublicKey {
    use base64::Engine;
    let part = |name: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap())
            .unwrap()
    };
    let mut point = vec![4u8];
    point.extend(part("x"));
    point.extend(part("y"));
    PublicKey(point)
}

/// A CA outside kmsgw (rcgen), for chains made elsewhere.
struct OutsideCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn outside_ca(name: &str) -> OutsideCa {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    OutsideCa {
        pem,
        issuer: Issuer::new(params, key),
    }
}

/// A leaf for `key` from `ca`, valid from `not_before` to `not_after`.
fn outside_leaf(
    ca: &OutsideCa,
    key: &PublicKey,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
) -> String {
    let mut params = rcgen::CertificateParams::new(vec!["issuer.example.org".to_owned()]).unwrap();
    params.not_before = not_before;
    params.not_after = not_after;
    params.signed_by(key, &ca.issuer).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_chain_is_checked_and_a_refused_one_leaves_nothing() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let key = gw.create(json!({"kid": "imported"})).await;
    let ca = outside_ca("outside CA");
    let other_ca = outside_ca("another CA");
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let good = outside_leaf(&ca, &point_of(&key["publicJwk"]), now - day, now + 30 * day);
    let stranger = gw.create(json!({"kid": "stranger"})).await;
    let refused = [
        ("hello, not PEM".to_owned(), "certificate_not_pem"),
        (
            format!(
                "{}{}",
                outside_leaf(&ca, &point_of(&stranger["publicJwk"]), now - day, now + day),
                ca.pem
            ),
            "certificate_key_mismatch",
        ),
        (
            format!(
                "{}{}",
                outside_leaf(
                    &ca,
                    &point_of(&key["publicJwk"]),
                    now - 60 * day,
                    now - 30 * day
                ),
                ca.pem
            ),
            "certificate_not_valid_now",
        ),
        (
            // Not valid for five more minutes: beyond the minute of clock-skew leeway.
            format!(
                "{}{}",
                outside_leaf(
                    &ca,
                    &point_of(&key["publicJwk"]),
                    now + time::Duration::minutes(5),
                    now + 30 * day
                ),
                ca.pem
            ),
            "certificate_not_valid_now",
        ),
        (
            format!("{good}{}", other_ca.pem),
            "certificate_chain_broken",
        ),
    ];
    for (pem, code) in refused {
        let (status, body) = gw
            .post("/keys/imported/certificate", json!({"certificate": pem}))
            .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{body}"
        );
        let (status, _) = gw.text(None, "/keys/imported/certificate").await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{code}: something was stored"
        );
        let (_, record) = gw.get("/keys/imported").await;
        assert!(record.get("x5c").is_none(), "{code}: {record}");
    }
    let (status, record) = gw
        .post(
            "/keys/imported/certificate",
            json!({"certificate": format!("{good}{}", ca.pem)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
    check_chain(&gw, &record, &ca.pem).await;
    let (_, audit) = gw.get("/audit?action=certificate-import").await;
    let outcomes: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "certificate_not_pem",
            "certificate_key_mismatch",
            "certificate_not_valid_now",
            "certificate_not_valid_now",
            "certificate_chain_broken",
            "ok"
        ]
    );

    // A CA clock a few seconds ahead is tolerated (up to a minute).
    let ahead = gw.create(json!({"kid": "ahead"})).await;
    let leaf = outside_leaf(
        &ca,
        &point_of(&ahead["publicJwk"]),
        now + time::Duration::seconds(30),
        now + 30 * day,
    );
    let (status, body) = gw
        .post(
            "/keys/ahead/certificate",
            json!({"certificate": format!("{leaf}{}", ca.pem)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_policy_certifies_new_versions_and_renews_near_expiry() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&crate::rotation::with_scheduler(
        json!([{"id": "db", "type": "db"}]),
    ));
    gw.create(json!({"kid": "ca", "alg": "ES384"})).await;
    let root = make_root(&gw, "ca").await;
    let policy = json!({"issuerKid": "ca", "validityDays": 30, "subject": "CN=wallet issuer"});
    let created = gw
        .create(json!({"kid": "issuing", "rotation": {"certificate": policy}}))
        .await;
    assert_eq!(created["rotation"]["certificate"], policy);
    check_chain(&gw, &created, &root).await;

    // Each new version gets a leaf for its own key, issued by the CA.
    let rotated = crate::rotation::rotate(&gw, "issuing").await;
    assert_eq!(rotated["version"], 2);
    check_chain(&gw, &rotated, &root).await;
    assert_ne!(rotated["x5c"], created["x5c"]);
    // The previous version keeps its certificate while in grace.
    let (_, record) = gw.get("/keys/issuing").await;
    assert_eq!(record["versions"][0]["x5c"], created["x5c"]);

    // A certificate close to its end (here: an imported one with a second left)
    // is replaced by the scheduler with a fresh leaf from the policy's CA.
    let outside = outside_ca("short-lived CA");
    let now = time::OffsetDateTime::now_utc();
    let short = outside_leaf(
        &outside,
        &point_of(&rotated["publicJwk"]),
        now - time::Duration::seconds(9),
        now + time::Duration::seconds(2),
    );
    let (status, body) = gw
        .post(
            "/keys/issuing/certificate",
            json!({"certificate": format!("{short}{}", outside.pem)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let root_der = x5c_of_pem(&root).remove(0);
    wait_until(
        std::time::Duration::from_secs(10),
        "the scheduler to renew the certificate",
        || async {
            let (_, record) = gw.get("/keys/issuing").await;
            record["x5c"][1] == root_der
        },
    )
    .await;
    let (_, renewed) = gw.get("/keys/issuing").await;
    check_chain(&gw, &renewed, &root).await;

    // An issue that fails (the CA is gone) leaves the rotation done, and is
    // audited and counted.
    assert_eq!(gw.delete("/keys/ca").await.0, StatusCode::NO_CONTENT);
    let third = crate::rotation::rotate(&gw, "issuing").await;
    assert!(third.get("x5c").is_none(), "{third}");
    let (_, audit) = gw.get("/audit?action=certificate-issue").await;
    let last = audit["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["outcome"], "key_not_found", "{last}");
    let (_, metrics) = gw.text(None, "/metrics").await;
    assert!(
        metrics.contains("kmsgw_certificates_issued_total{outcome=\"failed\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("kmsgw_certificates_issued_total{outcome=\"failed\"} 0"),
        "{metrics}"
    );

    // A policy naming a key without a CA certificate is refused up front.
    gw.create(json!({"kid": "not-a-ca"})).await;
    let (status, body) = gw
        .call(None, reqwest::Method::PUT, "/keys/issuing/rotation",
            Some(json!({"certificate": {"issuerKid": "not-a-ca", "validityDays": 30, "subject": "CN=x"}})))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("issuer_not_ca")),
        "{body}"
    );
}

/// A CA outside kmsgw with the given basic constraints and key usages.
fn outside_ca_with(
    name: &str,
    is_ca: rcgen::IsCa,
    usages: Vec<rcgen::KeyUsagePurpose>,
    signer: Option<&OutsideCa>,
) -> OutsideCa {
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = is_ca;
    params.key_usages = usages;
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = match signer {
        None => params.self_signed(&key).unwrap().pem(),
        Some(ca) => params.signed_by(&key, &ca.issuer).unwrap().pem(),
    };
    OutsideCa {
        pem,
        issuer: Issuer::new(params, key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_inputs_are_checked_and_a_refused_one_stores_nothing() {
    use rcgen::{BasicConstraints, IsCa, KeyUsagePurpose};
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let key = gw.create(json!({"kid": "k"})).await;
    let names = |dns: Value, uris: Value| json!({"subject": "CN=k", "dnsNames": dns, "uris": uris, "validityDays": 5});
    let subject = |text: &str| json!({"subject": text, "validityDays": 5});
    let many: Vec<String> = (0..10_000).map(|i| format!("h{i}.example.org")).collect();
    let refusals = [
        (subject("CN=\"a,O=evil\""), "invalid_subject"),
        (subject("CN=a\u{0}b"), "invalid_subject"),
        (subject("CN=dangling\\"), "invalid_subject"),
        (subject("CN=a;O=b"), "invalid_subject"),
        (subject("XX=unknown"), "invalid_subject"),
        (subject(""), "invalid_subject"),
        (
            subject(&format!("CN={}", "a".repeat(100_000))),
            "invalid_subject",
        ),
        (names(json!([""]), json!([])), "invalid_dns_name"),
        (names(json!(["a b.example"]), json!([])), "invalid_dns_name"),
        (
            names(json!(["a\u{0}.example"]), json!([])),
            "invalid_dns_name",
        ),
        (
            names(json!([format!("{}.example", "a".repeat(300))]), json!([])),
            "invalid_dns_name",
        ),
        (
            names(json!(["evil.example, DNS:bank.example"]), json!([])),
            "invalid_dns_name",
        ),
        (names(json!(["a.*.example"]), json!([])), "invalid_dns_name"),
        (names(json!([]), json!(["not a uri"])), "invalid_uri"),
        (names(json!([]), json!(["http://[::1"])), "invalid_uri"),
        (names(json!([]), json!(["://nohost"])), "invalid_uri"),
        (names(json!(many), json!([])), "certificate_input_too_large"),
    ];
    for (body, code) in &refusals {
        for route in ["csr", "certificate/issue"] {
            let mut body = body.clone();
            if route == "csr" {
                body.as_object_mut().unwrap().remove("validityDays");
            }
            let (status, answer) = gw.post(&format!("/keys/k/{route}"), body.clone()).await;
            assert_eq!(
                (status, answer["code"].as_str().unwrap_or_default()),
                (StatusCode::BAD_REQUEST, *code),
                "{route} {}: {answer}",
                &body.to_string()[..body.to_string().len().min(120)]
            );
        }
    }
    let (_, record) = gw.get("/keys/k").await;
    assert!(record.get("x5c").is_none(), "{record}");

    // Chains whose issuers may not issue, and one past the length bound.
    let now = time::OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let point = point_of(&key["publicJwk"]);
    let not_ca = outside_ca_with("not a CA", IsCa::ExplicitNoCa, vec![], None);
    let no_cert_sign = outside_ca_with(
        "CA without keyCertSign",
        IsCa::Ca(BasicConstraints::Unconstrained),
        vec![KeyUsagePurpose::DigitalSignature],
        None,
    );
    let root0 = outside_ca_with(
        "root with path length 0",
        IsCa::Ca(BasicConstraints::Constrained(0)),
        vec![],
        None,
    );
    let intermediate = outside_ca_with(
        "intermediate",
        IsCa::Ca(BasicConstraints::Unconstrained),
        vec![],
        Some(&root0),
    );
    let root = outside_ca("good root");
    let chains = [
        (
            format!(
                "{}{}",
                outside_leaf(&not_ca, &point, now - day, now + day),
                not_ca.pem
            ),
            "issuer_certificate_not_ca",
        ),
        (
            format!(
                "{}{}",
                outside_leaf(&no_cert_sign, &point, now - day, now + day),
                no_cert_sign.pem
            ),
            "issuer_certificate_not_ca",
        ),
        (
            format!(
                "{}{}{}",
                outside_leaf(&intermediate, &point, now - day, now + day),
                intermediate.pem,
                root0.pem
            ),
            "issuer_certificate_not_ca",
        ),
        (
            format!(
                "{}{}",
                outside_leaf(&root, &point, now - day, now + day),
                root.pem.repeat(10)
            ),
            "certificate_input_too_large",
        ),
    ];
    for (pem, code) in &chains {
        let (status, answer) = gw
            .post("/keys/k/certificate", json!({"certificate": pem}))
            .await;
        assert_eq!(
            (status, answer["code"].as_str().unwrap_or_default()),
            (StatusCode::BAD_REQUEST, *code),
            "{answer}"
        );
    }
    let (_, record) = gw.get("/keys/k").await;
    assert!(record.get("x5c").is_none(), "{record}");
    // The same leaf under the root that may issue is taken.
    let good = format!(
        "{}{}",
        outside_leaf(&root, &point, now - day, now + day),
        root.pem
    );
    let (status, answer) = gw
        .post("/keys/k/certificate", json!({"certificate": good}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    // Well-formed names, escapes and a wildcard still make certificates OpenSSL takes.
    gw.create(json!({"kid": "odd", "alg": "ES384"})).await;
    let (status, answer) = gw
        .post(
            "/keys/odd/certificate/issue",
            json!({"subject": "CN=Doe\\, Jane+UID=jd, O=A\\+B, C=DE", "validityDays": 5, "ca": true,
                   "dnsNames": ["*.example.org", "xn--bcher-kva.example"], "uris": ["https://example.org/a?b=c#d"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let chain = certificate(&gw, "odd").await;
    openssl_verify(&chain, &chain).unwrap();
    let (ok, text) = openssl(
        &[
            "x509",
            "-in",
            "{c.pem}",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-nameopt",
            "RFC2253",
        ],
        &[("c.pem", &chain)],
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("CN=Doe\\, Jane+UID=jd") || text.contains("UID=jd+CN=Doe\\, Jane"),
        "{text}"
    );
    assert!(
        text.contains("O=A\\+B") && text.contains("DNS:*.example.org"),
        "{text}"
    );
}
