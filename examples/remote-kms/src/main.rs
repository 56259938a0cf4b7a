//! A reference remote-KMS service: the server side of the HTTP contract that the
//! `http` provider (and the `remote-http` guest) consume. ES256 keys with
//! RustCrypto's p256, persisted in a JSON file (mode 0600) in the data directory;
//! optional bearer-token auth; optional TLS with required client certificates (mTLS).
//!
//! ```text
//! remote-kms --listen 127.0.0.1:3001 --data-dir ./remote-kms-data [--token T]
//!            [--tls-cert server.pem --tls-key server.key [--client-ca ca.pem]]
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use clap::Parser;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Reference remote-KMS service for kmsgw's http provider")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3001")]
    listen: SocketAddr,
    /// Where keys are kept (keys.json).
    #[arg(long, default_value = "./remote-kms-data")]
    data_dir: PathBuf,
    /// Require `Authorization: Bearer TOKEN` on every request.
    #[arg(long, env = "REMOTE_KMS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Serve TLS with this certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM): mutual TLS.
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

struct Store {
    path: PathBuf,
    keys: Mutex<BTreeMap<String, SigningKey>>,
}

impl Store {
    fn open(dir: &std::path::Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("keys.json");
        let mut keys = BTreeMap::new();
        if path.exists() {
            let saved: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(&path)?)?;
            for (kid, d) in saved {
                keys.insert(kid, SigningKey::from_slice(&URL_SAFE_NO_PAD.decode(d)?)?);
            }
        }
        Ok(Store {
            path,
            keys: Mutex::new(keys),
        })
    }

    fn save(&self, keys: &BTreeMap<String, SigningKey>) -> std::io::Result<()> {
        let saved: BTreeMap<&String, String> = keys
            .iter()
            .map(|(kid, key)| (kid, URL_SAFE_NO_PAD.encode(key.to_bytes())))
            .collect();
        let partial = self.path.with_extension("partial");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)?;
        file.write_all(&serde_json::to_vec(&saved).expect("a map serialises"))?;
        file.sync_all()?;
        std::fs::rename(partial, &self.path)
    }
}

struct App {
    store: Store,
    token: Option<String>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

fn public_jwk(key: &SigningKey) -> Value {
    let point = key.verifying_key().to_sec1_bytes();
    json!({"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])})
}

fn random_key() -> std::io::Result<SigningKey> {
    use std::io::Read;
    let mut urandom = std::fs::File::open("/dev/urandom")?;
    loop {
        let mut bytes = [0u8; 32];
        urandom.read_exact(&mut bytes)?;
        if let Ok(key) = SigningKey::from_slice(&bytes) {
            return Ok(key);
        }
    }
}

/// The error answer for an algorithm other than ES256, if it is one.
fn alg_error(alg: Option<&str>) -> Option<Response> {
    match alg {
        None | Some("ES256") => None,
        Some(other) => Some(error(
            StatusCode::BAD_REQUEST,
            format!("unsupported alg {other}"),
        )),
    }
}

fn insert(app: &App, kid: String, key: SigningKey) -> Response {
    let mut keys = app.store.keys.lock().expect("store lock");
    if keys.contains_key(&kid) {
        return error(StatusCode::CONFLICT, format!("key {kid} exists"));
    }
    let jwk = public_jwk(&key);
    keys.insert(kid, key);
    if let Err(e) = app.store.save(&keys) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot persist keys: {e}"),
        );
    }
    Json(json!({"publicJwk": jwk})).into_response()
}

#[derive(Deserialize)]
struct GenerateBody {
    kid: String,
    alg: Option<String>,
}

async fn generate(State(app): State<Arc<App>>, Json(body): Json<GenerateBody>) -> Response {
    if let Some(response) = alg_error(body.alg.as_deref()) {
        return response;
    }
    match random_key() {
        Ok(key) => insert(&app, body.kid, key),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("no randomness: {e}"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody {
    private_jwk: Value,
    alg: Option<String>,
}

async fn import(
    State(app): State<Arc<App>>,
    Path(kid): Path<String>,
    Json(body): Json<ImportBody>,
) -> Response {
    if let Some(response) = alg_error(body.alg.as_deref()) {
        return response;
    }
    let key = body.private_jwk["d"]
        .as_str()
        .and_then(|d| URL_SAFE_NO_PAD.decode(d).ok())
        .and_then(|d| SigningKey::from_slice(&d).ok());
    match key {
        Some(key) if public_jwk(&key)["x"] == body.private_jwk["x"] => insert(&app, kid, key),
        _ => error(
            StatusCode::BAD_REQUEST,
            "privateJwk is not a P-256 private key",
        ),
    }
}

#[derive(Deserialize)]
struct SignBody {
    data: String,
    alg: Option<String>,
}

async fn sign(
    State(app): State<Arc<App>>,
    Path(kid): Path<String>,
    Json(body): Json<SignBody>,
) -> Response {
    if let Some(response) = alg_error(body.alg.as_deref()) {
        return response;
    }
    let Ok(data) = STANDARD
        .decode(&body.data)
        .or_else(|_| URL_SAFE_NO_PAD.decode(&body.data))
    else {
        return error(StatusCode::BAD_REQUEST, "data is not base64");
    };
    let keys = app.store.keys.lock().expect("store lock");
    let Some(key) = keys.get(&kid) else {
        return error(StatusCode::NOT_FOUND, format!("no key {kid}"));
    };
    let signature: Signature = key.sign(&data);
    Json(json!({"signature": URL_SAFE_NO_PAD.encode(signature.to_bytes())})).into_response()
}

async fn remove(State(app): State<Arc<App>>, Path(kid): Path<String>) -> Response {
    let mut keys = app.store.keys.lock().expect("store lock");
    if keys.remove(&kid).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no key {kid}"));
    }
    match app.store.save(&keys) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot persist keys: {e}"),
        ),
    }
}

async fn bearer(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &app.token {
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token.as_str()) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(request).await
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/keys", post(generate))
        .route("/keys/{kid}/sign", post(sign))
        .route("/keys/{kid}/import", post(import))
        .route("/keys/{kid}", delete(remove))
        .route("/health", get(|| async { Json(json!({"ok": true})) }))
        .layer(middleware::from_fn_with_state(app.clone(), bearer))
        .with_state(app)
}

fn tls_config(args: &Args) -> anyhow::Result<Option<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match &args.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)? {
                roots.add(cert?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?
        }
        None => builder.with_no_client_auth().with_single_cert(chain, key)?,
    };
    Ok(Some(config))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Arc::new(App {
        store: Store::open(&args.data_dir)?,
        token: args.token.clone(),
    });
    let tls = tls_config(&args)?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let router = router(app);
    match tls {
        None => {
            eprintln!("listening on http://{local}");
            axum::serve(listener, router).await?;
        }
        Some(config) => {
            eprintln!("listening on https://{local}");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let (stream, _) = listener.accept().await?;
                let (acceptor, router) = (acceptor.clone(), router.clone());
                tokio::spawn(async move {
                    // A client without an acceptable certificate fails here.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        }
    }
    Ok(())
}
