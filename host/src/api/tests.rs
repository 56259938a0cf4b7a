use std::sync::Arc;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use p256::ecdsa::signature::Verifier;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, Shared, app};
use crate::audit::Audit;
use crate::auth::ApiKeys;
use crate::catalog::Catalog;
use crate::config::{AuditConfig, AuthConfig};
use crate::crypto::master::MasterKey;
use crate::crypto::{PublicJwk, decode_base64};
use crate::gateway::{Gateway, Registered};
use crate::providers::db::DbProvider;

async fn state(dir: &tempfile::TempDir, max_body_bytes: usize) -> AppState {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("api.db").display());
    let catalog = Catalog::connect(&url).await.unwrap();
    let db = DbProvider::new(
        "db".into(),
        catalog.clone(),
        Arc::new(MasterKey::from_bytes(&[1; 32])),
    );
    let registered = vec![Registered {
        provider: Arc::new(db),
        description: None,
    }];
    let audit = Audit::start(&AuditConfig::default(), catalog.clone());
    Shared::new(
        Arc::new(Gateway::new(registered, "db".into(), catalog).with_audit(audit.clone())),
        max_body_bytes,
        ApiKeys::new(&AuthConfig::default()),
        audit,
    )
    .into()
}

async fn call(state: &AppState, method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn create_then_sign_returns_a_raw_signature_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&dir, 1 << 20).await;
    let (status, key) = call(&state, "POST", "/keys", r#"{"kid": "k"}"#).await;
    assert_eq!(status, StatusCode::OK, "{key}");
    let (status, signed) = call(&state, "POST", "/keys/k/sign", r#"{"data": "aGk="}"#).await;
    assert_eq!(status, StatusCode::OK, "{signed}");
    let jwk: PublicJwk = serde_json::from_value(key["publicJwk"].clone()).unwrap();
    let point = [
        &[4u8][..],
        &decode_base64(jwk.x.as_deref().unwrap()).unwrap(),
        &decode_base64(jwk.y.as_deref().unwrap()).unwrap(),
    ]
    .concat();
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    let raw = decode_base64(signed["signature"].as_str().unwrap()).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&raw).unwrap();
    verifying.verify(b"hi", &signature).unwrap();
}

#[tokio::test]
async fn errors_carry_a_status_and_a_stable_code() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(&dir, 64).await;
    let cases = [
        (
            "POST",
            "/keys/nope/sign",
            r#"{"data": "aGk="}"#,
            StatusCode::NOT_FOUND,
            "key_not_found",
        ),
        (
            "POST",
            "/keys",
            r#"{"provider": "x"}"#,
            StatusCode::NOT_FOUND,
            "provider_not_found",
        ),
        (
            "POST",
            "/keys",
            "{",
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "POST",
            "/keys/k/sign",
            &json!({"data": "A".repeat(100)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            "GET",
            "/nowhere",
            "",
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
    ];
    for (method, uri, body, status, code) in cases {
        let (got, json) = call(&state, method, uri, body).await;
        assert_eq!(
            (got, json["code"].as_str()),
            (status, Some(code)),
            "{method} {uri}: {json}"
        );
    }
}
