//! A reference remote-KMS service: the server side of the HTTP contract that the
//! `http` provider (and the `remote-http` guest) consume. Keys of every JOSE
//! algorithm kmsgw knows (ES256/384/512, EdDSA, RS256, PS256; `alg` and, for RSA,
//! `keySize` on create), made with kmsgw's crypto module, persisted as PKCS#8 in a
//! JSON file (mode 0600) in the data directory; optional bearer-token auth;
//! optional TLS with required client certificates (mTLS). `--corrupt-signatures`
//! flips a bit in every signature: a lying backend, for tests.
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
use kmsgw::crypto::{Alg, PrivateKey};
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
    /// Return signatures with one bit flipped (a lying backend, for tests).
    #[arg(long)]
    corrupt_signatures: bool,
}

/// A key and the algorithm it signs with.
struct Key {
    alg: Alg,
    private: PrivateKey,
}

struct Store {
    path: PathBuf,
    keys: Mutex<BTreeMap<String, Key>>,
}

/// A stored key: its algorithm and PKCS#8 (base64url); a bare string is a P-256
/// scalar from the ES256-only version of this service.
#[derive(Deserialize, serde::Serialize)]
#[serde(untagged)]
enum Saved {
    Key { alg: Alg, pkcs8: String },
    LegacyP256(String),
}

impl Store {
    fn open(dir: &std::path::Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("keys.json");
        let mut keys = BTreeMap::new();
        if path.exists() {
            let saved: BTreeMap<String, Saved> = serde_json::from_slice(&std::fs::read(&path)?)?;
            for (kid, entry) in saved {
                let (alg, der) = match entry {
                    Saved::Key { alg, pkcs8 } => (alg, URL_SAFE_NO_PAD.decode(pkcs8)?),
                    Saved::LegacyP256(d) => (Alg::ES256, URL_SAFE_NO_PAD.decode(d)?),
                };
                let private = PrivateKey::from_pkcs8(alg.key_kind(), &der)?;
                keys.insert(kid, Key { alg, private });
            }
        }
        Ok(Store {
            path,
            keys: Mutex::new(keys),
        })
    }

    fn save(&self, keys: &BTreeMap<String, Key>) -> std::io::Result<()> {
        let saved: BTreeMap<&String, Saved> = keys
            .iter()
            .map(|(kid, key)| {
                let pkcs8 = URL_SAFE_NO_PAD.encode(key.private.pkcs8());
                (
                    kid,
                    Saved::Key {
                        alg: key.alg,
                        pkcs8,
                    },
                )
            })
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
    corrupt: bool,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The algorithm a request names (ES256 when it names none); the error names it.
fn requested_alg(alg: Option<&str>) -> Result<Alg, String> {
    match alg {
        None => Ok(Alg::ES256),
        Some(name) => Alg::parse(name).ok_or_else(|| format!("unsupported alg {name}")),
    }
}

fn insert(app: &App, kid: String, key: Key) -> Response {
    let mut keys = app.store.keys.lock().expect("store lock");
    if keys.contains_key(&kid) {
        return error(StatusCode::CONFLICT, format!("key {kid} exists"));
    }
    let jwk = key.private.public_jwk().clone();
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
#[serde(rename_all = "camelCase")]
struct GenerateBody {
    kid: String,
    alg: Option<String>,
    key_size: Option<usize>,
}

async fn generate(State(app): State<Arc<App>>, Json(body): Json<GenerateBody>) -> Response {
    let alg = match requested_alg(body.alg.as_deref()) {
        Ok(alg) => alg,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match PrivateKey::generate(alg, body.key_size) {
        Ok(private) => insert(&app, body.kid, Key { alg, private }),
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
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
    let private = match PrivateKey::from_jwk(&body.private_jwk) {
        Ok(private) => private,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("privateJwk: {e}")),
    };
    let alg = match body.alg.as_deref() {
        Some(_) => match requested_alg(body.alg.as_deref()) {
            Ok(alg) => alg,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        None => private.kind().default_alg(),
    };
    if alg.key_kind() != private.kind() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("privateJwk is not a {alg} key"),
        );
    }
    insert(&app, kid, Key { alg, private })
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
    if let Some(alg) = body.alg.as_deref()
        && alg != key.alg.as_str()
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("key {kid} signs {}, not {alg}", key.alg),
        );
    }
    let mut signature = match key.private.signer(key.alg) {
        Ok(signer) => signer.sign(&data),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    if app.corrupt {
        signature[0] ^= 1;
    }
    Json(json!({"signature": URL_SAFE_NO_PAD.encode(signature)})).into_response()
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
        corrupt: args.corrupt_signatures,
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
