//! The floor `scripts/bench` measures kmsgw's single-sign rate against: what any
//! Rust HTTP signer can do on this machine. hyper (HTTP/1.1, keep-alive), JSON in
//! (`{"data": base64}`) and out (`{"signature", "kid", "alg"}`), aws-lc-rs ES256
//! with one key; no routing, auth, audit, metrics, usage counting or logging.
//!
//! ```text
//! floor-signer [127.0.0.1:0]    # prints `listening on http://ADDR`
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a valid response")
}

async fn sign(
    key: Arc<EcdsaKeyPair>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let Ok(body) = request.into_body().collect().await else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "unreadable body"}),
        ));
    };
    let message = serde_json::from_slice::<serde_json::Value>(&body.to_bytes())
        .ok()
        .and_then(|v| v["data"].as_str().and_then(|d| STANDARD.decode(d).ok()));
    let Some(message) = message else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "data is not base64"}),
        ));
    };
    let signature = key
        .sign(&SystemRandom::new(), &message)
        .expect("signing with a loaded key");
    Ok(answer(
        StatusCode::OK,
        serde_json::json!({"signature": URL_SAFE_NO_PAD.encode(signature.as_ref()), "kid": "floor", "alg": "ES256"}),
    ))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let key =
        Arc::new(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("a P-256 key"));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let key = Arc::clone(&key);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request| sign(Arc::clone(&key), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
