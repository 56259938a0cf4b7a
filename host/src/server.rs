//! Start-up glue: turns flags, environment and kms.json into a running gateway,
//! and keeps replicas on PostgreSQL consistent by following deletions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgListener;

use crate::api::{AppState, DEFAULT_MAX_BODY_BYTES, app};
use crate::audit::Audit;
use crate::auth::ApiKeys;
use crate::catalog::{Backend, Catalog, DELETE_CHANNEL};
use crate::config::{Config, ConfigError, EgressAuthKind, Problem, ProviderConfig, WasmConfig};
use crate::credentials::Credentials;
use crate::crypto::seal::MasterKey;
use crate::gateway::{Gateway, Registered};
use crate::providers::Provider;
use crate::providers::aws_kms::AwsKmsProvider;
use crate::providers::db::DbProvider;
use crate::providers::http::HttpProvider;
use crate::providers::pkcs11::Pkcs11Provider;
use crate::providers::vault::VaultProvider;
use crate::providers::wasm::host::AllowedHost;
use crate::providers::wasm::limits::GuestLimits;
use crate::providers::wasm::runtime::{PoolSizing, WasmRuntime};
use crate::providers::wasm::{WasmOptions, WasmProvider, WasmStartError};
use crate::usage::Usage;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const MASTER_KEY_CHECK: &str = "master-key-check";

/// How to start: the flags of `kmsgw serve` (each also settable by environment).
#[derive(Debug)]
pub struct ServeOptions {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: PathBuf,
    pub database_url: Option<SecretString>,
    pub master_key: Option<SecretString>,
    pub insecure_no_auth: bool,
}

/// Why the gateway did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

impl StartError {
    fn setup(context: &str, e: impl std::fmt::Display) -> Self {
        StartError::Setup(format!("{context}: {e}"))
    }
}

/// Loads the configuration named by `options` (one `db` provider when none is given).
///
/// # Errors
/// [`ConfigError`] listing every problem.
pub fn load_config(options: &ServeOptions) -> Result<Config, ConfigError> {
    match &options.config {
        Some(path) => Config::load(path, &crate::config::process_env),
        None => Ok(Config::single_db()),
    }
}

/// Everything built and ready to serve.
pub struct Prepared {
    pub state: AppState,
    pub listen: SocketAddr,
}

/// Builds the gateway: config, data directory, master key, catalog, providers.
///
/// # Errors
/// [`StartError`] saying what is wrong.
pub async fn prepare(options: &ServeOptions) -> Result<Prepared, StartError> {
    let started = Instant::now();
    let config = load_config(options)?;
    let listen_text = options
        .listen
        .clone()
        .or_else(|| config.server.listen.clone())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        StartError::Refused(format!(
            "listen address `{listen_text}` is not IP:PORT (e.g. 127.0.0.1:8080)"
        ))
    })?;
    let api_keys = ApiKeys::new(&config.auth);
    if !listen.ip().is_loopback() && !api_keys.enabled() {
        if options.insecure_no_auth {
            tracing::warn!(%listen, "INSECURE: serving beyond loopback with no authentication (--insecure-no-auth); anyone who can reach this address can sign with every key");
        } else {
            return Err(StartError::Refused(format!(
                "refusing to listen on {listen}: this gateway has no API keys, so it serves on loopback only; \
                 add `auth.apiKeys` to kms.json, listen on 127.0.0.1, or pass --insecure-no-auth to accept the risk"
            )));
        }
    }
    let source_name = options
        .config
        .as_ref()
        .map_or_else(|| "kms.json".to_owned(), |p| p.display().to_string());

    std::fs::create_dir_all(&options.data_dir).map_err(|e| {
        StartError::setup(
            &format!(
                "cannot create data directory {}",
                options.data_dir.display()
            ),
            e,
        )
    })?;
    let master = Arc::new(match &options.master_key {
        Some(text) => MasterKey::from_base64(text.expose_secret())
            .map_err(|e| StartError::setup("master key", e))?,
        None => MasterKey::load_or_create(&options.data_dir.join("master.key"))
            .map_err(|e| StartError::setup("master key", e))?,
    });
    let database_url = match (&options.database_url, &config.database.url) {
        (Some(url), _) | (None, Some(url)) => url.expose_secret().to_owned(),
        (None, None) => format!(
            "sqlite://{}?mode=rwc",
            options.data_dir.join("kmsgw.db").display()
        ),
    };
    let catalog = Catalog::connect(&database_url)
        .await
        .map_err(|e| StartError::setup("cannot open the database", e))?;
    check_master_key(&catalog, &master).await?;

    let base_dir = options
        .config
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let runtime = wasm_runtime(&config, &options.data_dir)?;
    let mut providers = Vec::with_capacity(config.providers.len());
    let mut failures = Vec::new();
    for (i, entry) in config.providers.into_iter().enumerate() {
        fn shared(provider: impl Provider + 'static) -> Arc<dyn Provider> {
            Arc::new(provider)
        }
        let path = format!("providers[{i}]");
        let built: Result<Arc<dyn Provider>, String> = match entry.config {
            ProviderConfig::Db(_) => Ok(shared(DbProvider::new(
                entry.id,
                catalog.clone(),
                master.clone(),
            ))),
            ProviderConfig::Wasm(wasm) => {
                let runtime = runtime
                    .as_ref()
                    .expect("a runtime exists when a wasm provider does");
                let named = wasm.adapter.is_some();
                let options = match wasm_options(entry.id, wasm, &base_dir, &path, &source_name) {
                    Ok(options) => options,
                    Err(ConfigError::Invalid { problems, .. }) => {
                        failures.extend(problems);
                        continue;
                    }
                    Err(other) => return Err(other.into()),
                };
                match WasmProvider::start(runtime, options, catalog.clone(), master.clone()).await {
                    Ok(provider) => Ok(shared(provider)),
                    // A named type's fields are the entry's own; a `wasm` entry's are under `config`.
                    Err(WasmStartError::Config { field, message }) => {
                        let inside = if named { "" } else { ".config" };
                        failures.push(Problem {
                            path: match field {
                                Some(field) => format!("{path}{inside}.{field}"),
                                None => format!("{path}{inside}"),
                            },
                            message,
                        });
                        continue;
                    }
                    Err(e @ WasmStartError::Load(_)) if named => Err(format!(
                        "{e} (shipped adapters are looked for in $KMSGW_ADAPTER_DIR, else in adapters/ beside the kmsgw binary)"
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
            ProviderConfig::Http(http) => HttpProvider::new(entry.id, http)
                .map(shared)
                .map_err(|e| e.to_string()),
            ProviderConfig::Vault(vault) => VaultProvider::new(entry.id, vault)
                .map(shared)
                .map_err(|e| e.to_string()),
            // Connects on first use: a wrong PIN or a missing token shows in health.
            ProviderConfig::Pkcs11(pkcs11) => Ok(shared(Pkcs11Provider::new(entry.id, pkcs11))),
            ProviderConfig::AwsKms(aws) => Ok(shared(AwsKmsProvider::new(entry.id, aws).await)),
        };
        match built {
            Ok(provider) => providers.push(Registered {
                provider,
                description: entry.description,
            }),
            Err(message) => failures.push(Problem { path, message }),
        }
    }
    if !failures.is_empty() {
        return Err(StartError::Config(ConfigError::Invalid {
            source_name: source_name.clone(),
            problems: failures,
        }));
    }
    let usage = Arc::new(Usage::new(catalog.clone(), config.usage.enabled));
    usage.spawn_flusher(Duration::from_millis(config.usage.flush_ms));
    let gateway = Arc::new(
        Gateway::new(providers, config.default_provider, catalog.clone()).with_usage(usage),
    );
    if catalog.backend() == Backend::Postgres {
        follow_deletions(&database_url, Arc::clone(&gateway)).await?;
    }
    // The first readiness probe, so `/ready` turns 200 without waiting for a caller.
    tokio::spawn({
        let gateway = Arc::clone(&gateway);
        async move { gateway.not_ready().await }
    });
    let audit = Audit::start(&config.audit, catalog.clone());
    let interval = config.scheduler.interval().map_err(|message| {
        StartError::Config(ConfigError::Invalid {
            source_name: source_name.clone(),
            problems: vec![Problem {
                path: "scheduler.interval".into(),
                message,
            }],
        })
    })?;
    crate::scheduler::spawn(Arc::clone(&gateway), audit.clone(), interval);
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        database = ?catalog.backend(),
        "gateway ready"
    );
    Ok(Prepared {
        state: AppState::new(
            gateway,
            config
                .server
                .max_body_bytes
                .unwrap_or(DEFAULT_MAX_BODY_BYTES),
            api_keys,
            audit,
        ),
        listen,
    })
}

/// The guest engine, sized for every `wasm` entry; `None` when there are none.
fn wasm_runtime(config: &Config, data_dir: &Path) -> Result<Option<WasmRuntime>, StartError> {
    // Invalid limits are reported with their entry by `wasm_options`; defaults size the engine meanwhile.
    let limits: Vec<GuestLimits> = config
        .providers
        .iter()
        .filter_map(|p| match &p.config {
            ProviderConfig::Wasm(w) => {
                Some(GuestLimits::resolve(w.limits.as_ref()).unwrap_or_default())
            }
            _ => None,
        })
        .collect();
    if limits.is_empty() {
        return Ok(None);
    }
    let sizing = PoolSizing {
        // A failed instance's slot is freed before its replacement is made; the
        // spare slots cover warm-up overlapping a replacement.
        instances: limits
            .iter()
            .map(|l| u32::try_from(l.instances).unwrap_or(u32::MAX))
            .fold(4u32, u32::saturating_add),
        max_memory_bytes: limits
            .iter()
            .map(GuestLimits::memory_bytes)
            .max()
            .unwrap_or(0),
    };
    WasmRuntime::new(sizing, Some(data_dir.join("wasm-cache")))
        .map(Some)
        .map_err(|e| StartError::setup("cannot start the WebAssembly engine", format!("{e:#}")))
}

/// Turns a `wasm` entry into run options; a relative component path is taken
/// from the directory of kms.json.
pub(crate) fn wasm_options(
    id: String,
    config: WasmConfig,
    base_dir: &Path,
    path: &str,
    source_name: &str,
) -> Result<WasmOptions, ConfigError> {
    let mut problems = Vec::new();
    let allowed_hosts: Vec<AllowedHost> = config
        .allowed_hosts
        .iter()
        .enumerate()
        .filter_map(|(j, entry)| {
            AllowedHost::parse(entry)
                .map_err(|message| {
                    problems.push(Problem {
                        path: format!("{path}.allowedHosts[{j}]"),
                        message,
                    })
                })
                .ok()
        })
        .collect();
    let mut allowed_hosts: Vec<AllowedHost> = allowed_hosts;
    let mut egress_auth = Vec::new();
    for (j, item) in config.egress_auth.iter().enumerate() {
        let at = format!("{path}.egressAuth[{j}]");
        let host = match AllowedHost::parse(&item.host) {
            Ok(host) => host,
            Err(message) => {
                problems.push(Problem {
                    path: format!("{at}.host"),
                    message,
                });
                continue;
            }
        };
        let credentials = match &item.kind {
            EgressAuthKind::Bearer(bearer) => Ok(Credentials::bearer(bearer.clone())),
            EgressAuthKind::Oauth2ClientCredentials(oauth)
                if oauth.token_url.scheme() != "https"
                    && !AllowedHost::is_loopback(oauth.token_url.host_str().unwrap_or_default()) =>
            {
                Err(crate::credentials::CredentialError::Setup(
                    "tokenUrl must be https:// (http:// only on loopback): the client secret travels in it".into(),
                ))
            }
            EgressAuthKind::Oauth2ClientCredentials(oauth) => {
                Ok(Credentials::client_credentials(oauth.clone()))
            }
            EgressAuthKind::GoogleServiceAccount(account) => {
                Credentials::google_service_account(account, base_dir)
            }
        };
        match credentials {
            Ok(credentials) => {
                if !allowed_hosts.contains(&host) {
                    allowed_hosts.push(host.clone());
                }
                egress_auth.push((host, Arc::new(credentials)));
            }
            Err(e) => problems.push(Problem {
                path: at,
                message: e.to_string(),
            }),
        }
    }
    let limits = GuestLimits::resolve(config.limits.as_ref())
        .map_err(|message| {
            problems.push(Problem {
                path: format!("{path}.limits"),
                message,
            })
        })
        .unwrap_or_default();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        });
    }
    Ok(WasmOptions {
        id,
        component: base_dir.join(&config.component),
        sha256: config.sha256,
        config: config.config.unwrap_or(serde_json::Value::Null),
        allowed_hosts,
        egress_auth,
        limits,
        adapter: config.adapter,
    })
}

/// Refuses to start with a master key other than the one the database was made with,
/// instead of failing on every key later.
async fn check_master_key(catalog: &Catalog, master: &MasterKey) -> Result<(), StartError> {
    let fresh = STANDARD.encode(master.seal(MASTER_KEY_CHECK, b"kmsgw"));
    let stored = catalog
        .meta_insert_once(MASTER_KEY_CHECK, &fresh)
        .await
        .map_err(|e| StartError::setup("cannot read the database", e))?;
    let opens = STANDARD
        .decode(stored)
        .ok()
        .is_some_and(|sealed| master.open(MASTER_KEY_CHECK, &sealed).is_ok());
    if opens {
        Ok(())
    } else {
        Err(StartError::Refused(
            "the master key is not the one this database was created with \
             (check KMSGW_MASTER_KEY or the data directory's master.key)"
                .into(),
        ))
    }
}

/// Subscribes to deletions announced by other replicas and drops the deleted keys
/// from this replica's caches. After a lost connection everything cached is dropped,
/// since announcements may have been missed.
async fn follow_deletions(url: &str, gateway: Arc<Gateway>) -> Result<(), StartError> {
    let mut listener = PgListener::connect(url)
        .await
        .map_err(|e| StartError::setup("cannot listen for deletions on PostgreSQL", e))?;
    listener
        .listen(DELETE_CHANNEL)
        .await
        .map_err(|e| StartError::setup("cannot listen for deletions on PostgreSQL", e))?;
    tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => gateway.invalidate(notification.payload()),
                Ok(None) => {
                    tracing::warn!("lost the PostgreSQL deletion feed; dropping all cached keys");
                    gateway.invalidate_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL deletion feed failed; retrying");
                    gateway.invalidate_all();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok(())
}

/// Serves until `shutdown` completes, then lets in-flight requests finish.
///
/// # Errors
/// When the address cannot be bound or the server fails.
pub async fn serve(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(prepared.listen)
        .await
        .map_err(|e| StartError::setup(&format!("cannot listen on {}", prepared.listen), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartError::setup("listener", e))?;
    tracing::info!(addr = %local, "listening on http://{local}");
    let audit = prepared.state.audit.clone();
    let usage = Arc::clone(prepared.state.gateway.usage());
    axum::serve(listener, app(prepared.state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| StartError::setup("server", e))?;
    audit.flush().await;
    if let Err(e) = usage.flush().await {
        tracing::warn!(error = %e, "key usage of the last flush interval could not be written");
    }
    tracing::info!("stopped");
    Ok(())
}
