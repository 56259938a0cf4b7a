//! Post-quantum keys (ML-DSA, FIPS 204 and RFC 9964) beyond the per-provider
//! algorithm matrices of the other modules: a NIST known answer imported on every
//! provider that imports, the JWKS's AKP keys and rotated versions checked with
//! Python `cryptography`, and X.509 with ML-DSA subjects and issuers (mixed
//! chains too), parsed and verified outside kmsgw.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kmsgw_tests::*;
use serde_json::{Value, json};

use crate::guests::wasm_entry;
use crate::vault::beside_openbao;

const ML_DSA: [&str; 3] = ["ML-DSA-44", "ML-DSA-65", "ML-DSA-87"];

/// The ACVP ML-DSA-44 keyGen case in `tests/fixtures/vectors`: the private JWK
/// of its seed with the published public key, and that public key (base64url).
fn nist_vector() -> (Value, String) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/vectors/ml-dsa-44-keygen.json"
    );
    let vector: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let hex = |name: &str| -> Vec<u8> {
        let text = vector[name].as_str().unwrap();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    };
    let public = URL_SAFE_NO_PAD.encode(hex("pk"));
    let private = json!({"kty": "AKP", "alg": "ML-DSA-44", "pub": public,
                         "priv": URL_SAFE_NO_PAD.encode(hex("seed"))});
    (private, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nist_seed_imports_to_the_published_public_key_on_every_provider_that_imports() {
    let site = Site::new(Db::Sqlite).await;
    let (_bao, gw) = beside_openbao(&site, false);
    // soft-signer, on a gateway of its own.
    let guest_site = Site::new(Db::Sqlite).await;
    let guest_gw = guest_site.start_configured(&json!({
        "defaultProvider": "soft",
        "providers": [wasm_entry("soft", "soft_signer", json!({}))],
    }));
    let (private, public) = nist_vector();
    for (gw, provider) in [(&gw, "db"), (&gw, "vault"), (&guest_gw, "soft")] {
        let kid = format!("nist-{provider}");
        let (status, key) = gw
            .post(
                &format!("/keys/{kid}/import"),
                json!({"privateJwk": private, "provider": provider}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{provider}: {key}");
        assert_eq!(key["alg"], "ML-DSA-44", "{key}");
        assert_eq!(key["publicJwk"]["kty"], "AKP");
        assert_eq!(
            key["publicJwk"]["pub"], public,
            "{provider}: not the vector's pk"
        );
        let signature = gw.sign(&kid, b"known answer").await;
        assert_verifies(&key["publicJwk"], b"known answer", &signature);
    }

    // A private JWK whose parts disagree, or lack one, is refused and stores nothing.
    let mut wrong_pub = private.clone();
    let mut bytes = URL_SAFE_NO_PAD.decode(&public).unwrap();
    bytes[0] ^= 1;
    wrong_pub["pub"] = URL_SAFE_NO_PAD.encode(bytes).into();
    let mut short_seed = private.clone();
    short_seed["priv"] = URL_SAFE_NO_PAD.encode([7u8; 31]).into();
    let mut no_priv = private.clone();
    no_priv.as_object_mut().unwrap().remove("priv");
    let mut unknown = private.clone();
    unknown["alg"] = "ML-DSA-99".into();
    for (bad, code, says) in [
        (wrong_pub, "invalid_jwk", "`pub`"),
        (short_seed, "invalid_jwk", "32-byte"),
        (no_priv, "invalid_jwk", "`priv`"),
        (unknown, "unsupported_alg", "ML-DSA-99"),
    ] {
        let (status, answer) = gw
            .post("/keys/bad/import", json!({"privateJwk": bad}))
            .await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{answer}"
        );
        assert!(answer["error"].as_str().unwrap().contains(says), "{answer}");
    }
    assert_eq!(gw.get("/keys/bad").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_keys_rotate_on_db_and_vault_and_the_jwks_publishes_both_versions() {
    let site = Site::new(Db::Sqlite).await;
    let (_bao, gw) = beside_openbao(&site, false);
    for (provider, alg) in [
        ("db", "ML-DSA-65"),
        ("vault", "ML-DSA-87"),
        ("vault", "ML-DSA-44"),
    ] {
        let kid = format!("pq-{provider}-{}", alg.to_lowercase());
        gw.create(json!({"kid": kid, "alg": alg, "provider": provider,
                         "rotation": {"grace": "1h"}}))
            .await;
        let old = sign_answer(&gw, &kid, b"before").await;
        let rotated = crate::rotation::rotate(&gw, &kid).await;
        let new = sign_answer(&gw, &kid, b"after").await;
        assert_eq!(
            (old["version"].as_u64(), new["version"].as_u64()),
            (Some(1), Some(2))
        );
        assert_eq!(new["alg"], alg, "{new}");
        // The old version still verifies at the gateway during its grace.
        assert!(
            verifies_at_gateway(&gw, &kid, b"before", old["signature"].as_str().unwrap()).await,
            "{kid}: the old version no longer verifies"
        );
        // Both versions are in the JWKS as AKP keys, and each verifies its own
        // signature outside kmsgw.
        let v1 = jwks_entry(&gw, &kid).await.expect("version 1 published");
        let v2 = jwks_entry(&gw, rotated["jwkKid"].as_str().unwrap())
            .await
            .expect("version 2 published");
        for entry in [&v1, &v2] {
            assert_eq!(
                (entry["kty"].as_str(), entry["alg"].as_str()),
                (Some("AKP"), Some(alg))
            );
        }
        assert_ne!(v1["pub"], v2["pub"], "{kid}: rotation kept the key");
        let results = verify_ml_dsa(&[
            (&v1, b"before", old["signature"].as_str().unwrap()),
            (&v2, b"after", new["signature"].as_str().unwrap()),
        ]);
        assert!(results.iter().all(Result::is_ok), "{kid}: {results:?}");
        // And neither verifies the other's signature.
        let crossed = verify_ml_dsa(&[(&v2, b"before", old["signature"].as_str().unwrap())]);
        assert!(
            crossed[0].is_err(),
            "{kid}: version 2 verified version 1's signature"
        );
    }
}

/// Checks X.509 objects with Python `cryptography`: each item names a PEM
/// certificate or request, the JWK of the key that must have signed it, the
/// JWK it must certify, and the signature algorithm OID. Checks that the
/// signature algorithm and (for ML-DSA) the subject key algorithm carry no
/// parameters (RFC 9881), that the subject key is the JWK's, and that the
/// signature verifies over the to-be-signed bytes with the signer's key.
fn check_x509_outside(items: &[Value]) {
    const SCRIPT: &str = r#"
import base64, json, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
ML_DSA = {"ML-DSA-44": (mldsa.MLDSA44PublicKey, "2.16.840.1.101.3.4.3.17"),
          "ML-DSA-65": (mldsa.MLDSA65PublicKey, "2.16.840.1.101.3.4.3.18"),
          "ML-DSA-87": (mldsa.MLDSA87PublicKey, "2.16.840.1.101.3.4.3.19")}
EC = {"P-256": (ec.SECP256R1(), hashes.SHA256()), "P-384": (ec.SECP384R1(), hashes.SHA384())}
def unb64u(t):
    return base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))
def element(der):
    """(tag, contents, everything after) of the first DER element."""
    tag, length = der[0], der[1]
    start = 2
    if length & 0x80:
        count = length & 0x7f
        length = int.from_bytes(der[2:2 + count], "big")
        start = 2 + count
    return tag, der[start:start + length], der[start + length:]
def algorithm_parts(algorithm_der):
    """(OID text, whether parameters follow) of an AlgorithmIdentifier's contents."""
    _, oid, rest = element(algorithm_der)
    values, first = [], oid[0]
    values += [first // 40, first % 40]
    n = 0
    for b in oid[1:]:
        n = (n << 7) | (b & 0x7f)
        if not b & 0x80:
            values.append(n); n = 0
    return ".".join(map(str, values)), len(rest) > 0
def public_key(jwk):
    if jwk["kty"] == "AKP":
        return ML_DSA[jwk["alg"]][0].from_public_bytes(unb64u(jwk["pub"]))
    curve, _ = EC[jwk["crv"]]
    x, y = (int.from_bytes(unb64u(jwk[c]), "big") for c in ("x", "y"))
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
def raw(key):
    if hasattr(key, "public_bytes_raw"):
        return key.public_bytes_raw()
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
out = []
for item in json.load(sys.stdin):
    try:
        pem = item["pem"].encode()
        obj = x509.load_pem_x509_csr(pem) if item["kind"] == "csr" else x509.load_pem_x509_certificate(pem)
        tbs = obj.tbs_certrequest_bytes if item["kind"] == "csr" else obj.tbs_certificate_bytes
        _, outer, _ = element(obj.public_bytes(serialization.Encoding.DER))
        _, _, after_tbs = element(outer)
        _, sig_alg, _ = element(after_tbs)
        oid, has_params = algorithm_parts(sig_alg)
        assert oid == item["sigOid"], f"signature algorithm {oid}, expected {item['sigOid']}"
        assert obj.signature_algorithm_oid.dotted_string == oid
        if oid.startswith("2.16.840.1.101.3.4.3."):
            assert not has_params, "ML-DSA signature algorithm with parameters"
        subject = item["subjectJwk"]
        if subject["kty"] == "AKP":
            _, spki, _ = element(obj.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
            _, key_alg, _ = element(spki)
            key_oid, key_params = algorithm_parts(key_alg)
            assert key_oid == ML_DSA[subject["alg"]][1] and not key_params, f"subject key algorithm {key_oid} params={key_params}"
        assert raw(obj.public_key()) == raw(public_key(subject)), "the subject key is not the kmsgw key"
        signer = public_key(item["signerJwk"])
        if isinstance(signer, ec.EllipticCurvePublicKey):
            signer.verify(obj.signature, tbs, ec.ECDSA(EC[item["signerJwk"]["crv"]][1]))
        else:
            signer.verify(obj.signature, tbs)
        out.append("ok")
    except Exception as e:
        out.append(f"{item['what']}: {type(e).__name__}: {e}")
print(json.dumps(out))
"#;
    let results: Vec<String> =
        serde_json::from_value(python_json(SCRIPT, &Value::from(items.to_vec()))).unwrap();
    assert_eq!(results.len(), items.len());
    let failed: Vec<_> = results.iter().filter(|r| *r != "ok").collect();
    assert!(failed.is_empty(), "{failed:#?}");
}

fn ml_dsa_oid(alg: &str) -> String {
    format!(
        "2.16.840.1.101.3.4.3.{}",
        17 + ML_DSA.iter().position(|a| *a == alg).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_requests_certificates_and_mixed_chains_check_outside_kmsgw() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let mut items = Vec::new();
    let mut key_of = std::collections::HashMap::new();
    for alg in ML_DSA {
        let kid = format!("x509-{}", alg.to_lowercase());
        let key = gw.create(json!({"kid": kid, "alg": alg})).await;
        let jwk = key["publicJwk"].clone();
        let (status, answer) = gw
            .post(
                &format!("/keys/{kid}/csr"),
                json!({"subject": format!("CN={kid}, O=kmsgw tests"), "dnsNames": ["pq.example.org"]}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        items.push(
            json!({"what": format!("{alg} CSR"), "kind": "csr", "pem": answer["csr"],
                          "sigOid": ml_dsa_oid(alg), "signerJwk": jwk, "subjectJwk": jwk}),
        );
        let chain = crate::certificates::make_root(&gw, &kid).await;
        items.push(json!({"what": format!("{alg} self-signed"), "kind": "cert",
                          "pem": pem_blocks(&chain)[0], "sigOid": ml_dsa_oid(alg),
                          "signerJwk": jwk, "subjectJwk": jwk}));
        key_of.insert(alg, (kid, jwk));
    }

    // An ML-DSA-87 root issues an ES256 leaf.
    let (root87, root87_jwk) = &key_of["ML-DSA-87"];
    let leaf = gw
        .create(json!({"kid": "es256-leaf", "alg": "ES256"}))
        .await;
    issue(&gw, "es256-leaf", root87).await;
    let chain = crate::certificates::certificate(&gw, "es256-leaf").await;
    items.push(
        json!({"what": "ES256 leaf of an ML-DSA-87 root", "kind": "cert",
                      "pem": pem_blocks(&chain)[0], "sigOid": ml_dsa_oid("ML-DSA-87"),
                      "signerJwk": root87_jwk, "subjectJwk": leaf["publicJwk"]}),
    );

    // An ES384 root issues an ML-DSA-65 leaf.
    let root384 = gw
        .create(json!({"kid": "es384-root", "alg": "ES384"}))
        .await;
    crate::certificates::make_root(&gw, "es384-root").await;
    let pq_leaf = gw
        .create(json!({"kid": "pq-leaf", "alg": "ML-DSA-65"}))
        .await;
    issue(&gw, "pq-leaf", "es384-root").await;
    let chain = crate::certificates::certificate(&gw, "pq-leaf").await;
    assert_eq!(pem_blocks(&chain).len(), 2, "leaf and its root:\n{chain}");
    items.push(
        json!({"what": "ML-DSA-65 leaf of an ES384 root", "kind": "cert",
                      "pem": pem_blocks(&chain)[0], "sigOid": "1.2.840.10045.4.3.3",
                      "signerJwk": root384["publicJwk"], "subjectJwk": pq_leaf["publicJwk"]}),
    );
    check_x509_outside(&items);

    // The gateway's own chain check accepts the ML-DSA issuer on import.
    let (status, answer) = gw
        .post(
            "/keys/es256-leaf/certificate",
            json!({"certificate": crate::certificates::certificate(&gw, "es256-leaf").await}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

/// Issues `kid` a 30-day leaf from `issuer`.
async fn issue(gw: &Gateway, kid: &str, issuer: &str) {
    let (status, record) = gw
        .post(
            &format!("/keys/{kid}/certificate/issue"),
            json!({"subject": format!("CN={kid}, O=kmsgw tests"), "validityDays": 30,
                   "issuerKid": issuer}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{record}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ed25519_is_the_fully_specified_name_of_an_eddsa_signature() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start();
    let named = gw.create(json!({"kid": "named", "alg": "Ed25519"})).await;
    let classic = gw.create(json!({"kid": "classic", "alg": "EdDSA"})).await;
    assert_eq!(named["publicJwk"]["alg"], "Ed25519");
    assert_eq!(classic["publicJwk"]["alg"], "EdDSA");
    // Either name may be asked of either key; the answer says the key's own.
    for (kid, jwk, own) in [
        ("named", &named["publicJwk"], "Ed25519"),
        ("classic", &classic["publicJwk"], "EdDSA"),
    ] {
        for asked in ["Ed25519", "EdDSA"] {
            let (status, answer) = gw
                .post(
                    &format!("/keys/{kid}/sign"),
                    json!({"data": "aGk=", "alg": asked}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            assert_eq!(answer["alg"], own, "{answer}");
            assert_verifies(jwk, b"hi", answer["signature"].as_str().unwrap());
        }
    }
    let (_, providers) = gw.get("/providers").await;
    assert!(
        providers[0]["capabilities"]["supportedAlgs"]
            .as_array()
            .unwrap()
            .contains(&json!("Ed25519"))
    );
    // Asking an ML-DSA key for another algorithm is refused.
    gw.create(json!({"kid": "pq", "alg": "ML-DSA-44"})).await;
    let (status, answer) = gw
        .post("/keys/pq/sign", json!({"data": "aGk=", "alg": "ML-DSA-65"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}
