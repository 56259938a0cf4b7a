//! Start-up glue: turns flags, environment and kms.json into a running gateway,
//! and keeps replicas on PostgreSQL consistent by following deletions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{AppState, DEFAULT_MAX_BODY_BYTES, Shared, app};
use crate::assembly::{Assembler, Built};
use crate::audit::Audit;
use crate::auth::ApiKeys;
use crate::catalog::{Backend, Catalog, DELETE_CHANNEL, SEAL_CHANGED};
use crate::config::{Config, ConfigError, Problem};
use crate::custody::backend::KEY_FILE;
use crate::custody::{Custody, KeySource, MASTER_KEY_CHECK, Seal};
use crate::gateway::Gateway;
use crate::reload::{Reloader, ReloaderParts};
use crate::usage::Usage;

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    /// The background tasks and the signal that stops them.
    background: Background,
    /// Held while the gateway runs: seal commands refuse to work beside it.
    _database_lock: Option<std::fs::File>,
}

/// The gateway's background tasks (usage flusher, scheduler, PostgreSQL
/// deletion follower) and the signal that stops them: at a graceful stop each
/// finishes what it is doing (the flusher writes what it counted) before the
/// process ends.
struct Background {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    fn new() -> Self {
        Background {
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Stops every task and waits for them, at most `limit` in all.
    async fn stop(self, limit: Duration) {
        let _ = self.stop.send(true);
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("background tasks did not finish within {limit:?} of the stop");
        }
    }
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
    let database_url = database_url(options, &config);
    let catalog = Catalog::connect(&database_url)
        .await
        .map_err(|e| StartError::setup("cannot open the database", e))?;
    let database_lock = hold_database(&database_url, Hold::Shared).map_err(StartError::Refused)?;
    let custody = open_custody(&config.seal, options, &catalog).await?;
    let master = Arc::clone(&custody.master);
    let mut background = Background::new();
    match (&custody.seal, custody.unseal().await) {
        (_, Ok(generations)) => {
            tracing::info!(seal = %custody.seal.name(), ?generations, "unsealed");
            background.tasks.push(tokio::spawn({
                let custody = Arc::clone(&custody);
                async move { custody.resume_rotation().await }
            }));
        }
        // The file seal is on this machine: nothing to wait for.
        (Seal::File(_), Err(e)) => return Err(StartError::Refused(e.to_string())),
        (_, Err(e)) => {
            tracing::warn!(seal = %custody.seal.name(), error = %e, "cannot unseal the master key yet; retrying, key operations answer 503 `sealed` until then");
            background
                .tasks
                .push(custody.spawn_unsealer(background.stopping()));
        }
    }

    let base_dir = options
        .config
        .as_ref()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let assembler = Assembler {
        catalog: catalog.clone(),
        master: master.clone(),
        data_dir: options.data_dir.clone(),
        base_dir,
        source_name: source_name.clone(),
        cache_keys: config.cache.keys,
    };
    let built = assembler
        .build(config.providers, &[])
        .await
        .map_err(|problems| {
            StartError::Config(ConfigError::Invalid {
                source_name: source_name.clone(),
                problems,
            })
        })?;
    let providers = built.iter().map(Built::registered).collect();
    let usage = Arc::new(Usage::new(catalog.clone(), config.usage.enabled));
    background.tasks.extend(usage.spawn_flusher(
        Duration::from_millis(config.usage.flush_ms),
        background.stopping(),
    ));
    let audit = Audit::start(&config.audit, catalog.clone());
    let gateway = Arc::new(
        Gateway::new(providers, config.default_provider, catalog.clone())
            .with_cache(config.cache.keys)
            .with_usage(usage)
            .with_audit(audit.clone()),
    );
    if catalog.backend() == Backend::Postgres {
        let follower = follow_deletions(
            &database_url,
            Arc::clone(&gateway),
            Arc::clone(&custody),
            background.stopping(),
        )
        .await?;
        background.tasks.push(follower);
    }
    // The first readiness probe, so `/ready` turns 200 without waiting for a caller.
    tokio::spawn({
        let gateway = Arc::clone(&gateway);
        async move { gateway.not_ready().await }
    });
    // The keys that signed last, loaded beside the first requests.
    tokio::spawn({
        let gateway = Arc::clone(&gateway);
        let limit = config.cache.keys;
        async move {
            let began = Instant::now();
            match gateway.warm_up(limit).await {
                Ok(keys) => tracing::info!(
                    keys,
                    elapsed_ms = began.elapsed().as_millis() as u64,
                    "warmed up the keys that signed last"
                ),
                Err(e) => tracing::warn!(error = %e, "could not warm up the keys that signed last"),
            }
        }
    });
    let interval = config.scheduler.interval().map_err(|message| {
        StartError::Config(ConfigError::Invalid {
            source_name: source_name.clone(),
            problems: vec![Problem {
                path: "scheduler.interval".into(),
                message,
            }],
        })
    })?;
    background.tasks.push(crate::scheduler::spawn(
        Arc::clone(&gateway),
        audit.clone(),
        interval,
        background.stopping(),
    ));
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        database = ?catalog.backend(),
        "gateway ready"
    );
    let mut state = Shared::new(
        Arc::clone(&gateway),
        config
            .server
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES),
        api_keys,
        audit.clone(),
    );
    state.ui = config.server.ui;
    state.sad_lifetime = config
        .csc
        .sad_lifetime()
        .expect("validated with the configuration");
    state.reloader = Some(Arc::new(Reloader::new(ReloaderParts {
        config_path: options.config.clone(),
        assembler,
        gateway,
        api_keys: Arc::clone(&state.api_keys),
        listen,
        insecure_no_auth: options.insecure_no_auth,
        audit,
        running: built,
    })));
    state.custody = Some(custody);
    Ok(Prepared {
        state: state.into(),
        listen,
        background,
        _database_lock: database_lock,
    })
}

/// The database `options` and `config` name: the flag, then kms.json, then
/// SQLite in the data directory.
pub fn database_url(options: &ServeOptions, config: &Config) -> String {
    match (&options.database_url, &config.database.url) {
        (Some(url), _) | (None, Some(url)) => url.expose_secret().to_owned(),
        (None, None) => format!(
            "sqlite://{}?mode=rwc",
            options.data_dir.join("kmsgw.db").display()
        ),
    }
}

/// The configured seal over `catalog`. A file seal makes its key file only
/// for a database that has no master key yet, so a data directory whose key
/// moved to another seal does not grow a stray one.
pub async fn open_custody(
    config: &crate::config::SealConfig,
    options: &ServeOptions,
    catalog: &Catalog,
) -> Result<Arc<Custody>, StartError> {
    let path = options.data_dir.join(KEY_FILE);
    let source = match &options.master_key {
        Some(text) => KeySource::Env(text),
        None => {
            let fresh = catalog
                .seal_keys()
                .await
                .map_err(|e| StartError::setup("cannot read the database", e))?
                .is_empty()
                && catalog
                    .meta(MASTER_KEY_CHECK)
                    .await
                    .map_err(|e| StartError::setup("cannot read the database", e))?
                    .is_none();
            if fresh {
                KeySource::FileOrNew(&path)
            } else {
                KeySource::File(&path)
            }
        }
    };
    let seal = Seal::open(config, source)
        .await
        .map_err(|e| StartError::setup("master key", e))?;
    Ok(Custody::new(seal, catalog.clone()))
}

/// How a process holds a SQLite database against seal commands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A gateway: several may not, but the seal commands must wait for none.
    Shared,
    /// A command that rewrites sealed items or wrapped keys offline.
    Exclusive,
}

/// On SQLite, locks `<database>.lock` beside the database file so that a seal
/// command never runs beside a live gateway (PostgreSQL needs no lock: the
/// commands work online there). The lock lasts as long as the returned file.
///
/// # Errors
/// A message saying who holds the database.
pub fn hold_database(url: &str, hold: Hold) -> Result<Option<std::fs::File>, String> {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return Ok(None);
    };
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(None);
    }
    let lock_path = format!("{path}.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| format!("cannot open {lock_path}: {e}"))?;
    let taken = match hold {
        Hold::Shared => file.try_lock_shared(),
        Hold::Exclusive => file.try_lock(),
    };
    match taken {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(match hold {
            Hold::Shared => format!(
                "a kmsgw seal, backup or restore command is working on {path}; start the gateway when it is done"
            ),
            Hold::Exclusive => format!(
                "a gateway is running on {path}: stop it first, or rotate online with `POST /admin/seal/rotate`"
            ),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {lock_path}: {e}")),
    }
}

/// Subscribes to deletions announced by other replicas and drops the deleted keys
/// from this replica's caches; reads the master key's generations again when a
/// rotation announces a change. After a lost connection everything cached is dropped,
/// since announcements may have been missed.
async fn follow_deletions(
    url: &str,
    gateway: Arc<Gateway>,
    custody: Arc<Custody>,
    mut stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, StartError> {
    let mut listener = PgListener::connect(url)
        .await
        .map_err(|e| StartError::setup("cannot listen for deletions on PostgreSQL", e))?;
    listener
        .listen(DELETE_CHANNEL)
        .await
        .map_err(|e| StartError::setup("cannot listen for deletions on PostgreSQL", e))?;
    Ok(tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                received = listener.try_recv() => received,
                _ = stop.wait_for(|stop| *stop) => return,
            };
            match received {
                Ok(Some(notification)) if notification.payload() == SEAL_CHANGED => {
                    read_generations(&custody).await;
                }
                Ok(Some(notification)) => gateway.invalidate(notification.payload()),
                Ok(None) => {
                    tracing::warn!("lost the PostgreSQL deletion feed; dropping all cached keys");
                    gateway.invalidate_all();
                    read_generations(&custody).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL deletion feed failed; retrying");
                    gateway.invalidate_all();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    read_generations(&custody).await;
                }
            }
        }
    }))
}

/// Reads the master key's generations again (a rotation announced a change, or
/// announcements may have been missed); a failure keeps the keyring held.
async fn read_generations(custody: &Custody) {
    if custody.master.sealed_because().is_none()
        && let Err(e) = custody.unseal().await
    {
        tracing::warn!(error = %e, "the master key's generations could not be read again");
    }
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
    if let Some(reloader) = &prepared.state.reloader {
        crate::reload::on_sighup(Arc::clone(reloader));
    }
    axum::serve(listener, app(prepared.state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| StartError::setup("server", e))?;
    // In-flight requests are done: the background tasks finish their last
    // work (a scheduled rotation under way, the usage flush), then the audit
    // queue is written.
    prepared.background.stop(Duration::from_secs(10)).await;
    if !audit.flush(Duration::from_secs(10)).await {
        tracing::error!("audit records still queued at shutdown could not be written");
    }

    tracing::info!("stopped");
    Ok(())
}
