//! The key cache bound (`cache.keys`): keys beyond it are read again from the
//! database and sign as before, and a key re-created under a deleted kid never
//! signs with the old key, cached or not.

use kmsgw_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_beyond_the_cache_bound_sign_with_their_own_key() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "cache": {"keys": 2},
    }));
    let mut jwks = Vec::new();
    for (i, alg) in ["ES256", "ES384", "EdDSA", "RS256", "ES256", "ES512"]
        .iter()
        .enumerate()
    {
        let key = gw.create(json!({"kid": format!("c{i}"), "alg": alg})).await;
        jwks.push(key["publicJwk"].clone());
    }
    // Three rounds over six keys with room for two: most signs load their key.
    for round in 0..3 {
        for (i, jwk) in jwks.iter().enumerate() {
            let message = format!("round {round} key {i}");
            let signature = gw.sign(&format!("c{i}"), message.as_bytes()).await;
            assert_verifies(jwk, message.as_bytes(), &signature);
        }
    }

    // c0 is deleted while cached (just signed) and c1 while evicted; both come back
    // as new keys under the same kids.
    gw.sign("c0", b"warm").await;
    for kid in ["c0", "c1"] {
        let (status, _) = gw.delete(&format!("/keys/{kid}")).await;
        assert!(status.is_success(), "{kid}: {status}");
        let (status, answer) = gw
            .post(&format!("/keys/{kid}/sign"), json!({"data": "AA=="}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{kid}: {answer}");
        let fresh = gw.create(json!({"kid": kid})).await;
        assert_ne!(fresh["publicJwk"], jwks[if kid == "c0" { 0 } else { 1 }]);
        let signature = gw.sign(kid, b"after re-creation").await;
        assert_verifies(&fresh["publicJwk"], b"after re-creation", &signature);
    }
}
