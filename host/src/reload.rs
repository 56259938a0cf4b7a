//! Reloading kms.json without a restart (SIGHUP, or `POST /admin/reload`): the
//! file is read and validated exactly as at start; when it is valid, providers
//! that were added or changed (a guest's component file included) are built, the
//! gateway routes to the new set, and the API keys are replaced. Requests already
//! running finish on the providers they started with. An invalid file changes
//! nothing. Only `providers`, `defaultProvider`, `adapters` and `auth` take
//! effect; the other sections are read at start only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;
use utoipa::ToSchema;

use crate::assembly::{Assembler, Built};
use crate::audit::{Action, Audit, Event};
use crate::auth::ApiKeys;
use crate::config::{Config, ConfigError, process_env};
use crate::gateway::Gateway;

/// What a reload changed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadReport {
    /// Providers new in the file.
    pub added: Vec<String>,
    /// Providers whose entry or component changed, built anew.
    pub changed: Vec<String>,
    /// Providers no longer in the file.
    pub removed: Vec<String>,
    /// Providers kept running as they were.
    pub kept: Vec<String>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the gateway was started without --config; there is no file to reload")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Refused(String),
}

/// Everything a reload needs, and the providers now running.
pub struct Reloader {
    config_path: Option<PathBuf>,
    assembler: Assembler,
    gateway: Arc<Gateway>,
    api_keys: Arc<ArcSwap<ApiKeys>>,
    listen: SocketAddr,
    insecure_no_auth: bool,
    audit: Audit,
    /// The running providers; its lock also keeps reloads one at a time.
    current: tokio::sync::Mutex<Vec<Built>>,
    /// Reloads applied, and refused.
    outcomes: [AtomicU64; 2],
}

/// How a [`Reloader`] is made.
pub struct ReloaderParts {
    pub config_path: Option<PathBuf>,
    pub assembler: Assembler,
    pub gateway: Arc<Gateway>,
    pub api_keys: Arc<ArcSwap<ApiKeys>>,
    pub listen: SocketAddr,
    pub insecure_no_auth: bool,
    pub audit: Audit,
    pub running: Vec<Built>,
}

impl Reloader {
    /// A reloader of what `parts` started.
    pub fn new(parts: ReloaderParts) -> Self {
        Reloader {
            config_path: parts.config_path,
            assembler: parts.assembler,
            gateway: parts.gateway,
            api_keys: parts.api_keys,
            listen: parts.listen,
            insecure_no_auth: parts.insecure_no_auth,
            audit: parts.audit,
            current: tokio::sync::Mutex::new(parts.running),
            outcomes: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Reloads kms.json; `actor` (an API key id, or `sighup`) is audited.
    ///
    /// # Errors
    /// [`ReloadError`]: nothing changed, and the running configuration keeps serving.
    pub async fn reload(&self, actor: &str) -> Result<ReloadReport, ReloadError> {
        let result = self.apply().await;
        self.outcomes[usize::from(result.is_err())].fetch_add(1, Ordering::Relaxed);
        match &result {
            Ok(report) => {
                tracing::info!(by = actor, added = ?report.added, changed = ?report.changed,
                removed = ?report.removed, kept = report.kept.len(), "configuration reloaded")
            }
            Err(e) => tracing::warn!(by = actor, error = %e,
                "configuration reload refused; the running configuration keeps serving"),
        }
        let event = Event {
            api_key: Some(actor.to_owned()),
            tenant: None,
            action: Action::Reload,
            kid: None,
            provider: None,
            outcome: match &result {
                Ok(_) => "ok",
                Err(ReloadError::NoFile) => "no_config_file",
                Err(ReloadError::Config(_)) => "invalid_config",
                Err(ReloadError::Refused(_)) => "refused",
            },
            message_sha256s: Vec::new(),
        };
        if let Err(e) = self.audit.record_durably(event).await {
            tracing::warn!(error = %e, "the reload could not be audited");
        }
        result
    }

    async fn apply(&self) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().await;
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let config = Config::load(path, &process_env)?;
        let api_keys = ApiKeys::new(&config.auth);
        if !self.listen.ip().is_loopback() && !api_keys.enabled() && !self.insecure_no_auth {
            return Err(ReloadError::Refused(format!(
                "the new file has no API keys, and this gateway listens on {}: keep at least one key",
                self.listen
            )));
        }
        let source_name = path.display().to_string();
        let built = self
            .assembler
            .build(config.providers, &current)
            .await
            .map_err(|problems| ConfigError::Invalid {
                source_name,
                problems,
            })?;
        let mut report = ReloadReport {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            kept: Vec::new(),
        };
        for new in &built {
            let id = new.id().to_owned();
            match current.iter().find(|old| old.id() == id) {
                Some(old) if new.same_as(old) => report.kept.push(id),
                Some(_) => report.changed.push(id),
                None => report.added.push(id),
            }
        }
        report.removed = current
            .iter()
            .filter(|old| !built.iter().any(|new| new.id() == old.id()))
            .map(|old| old.id().to_owned())
            .collect();
        self.gateway.replace_providers(
            built.iter().map(Built::registered).collect(),
            config.default_provider,
        );
        self.api_keys.store(Arc::new(api_keys));
        *current = built;
        Ok(report)
    }

    /// Reloads applied and refused since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.outcomes[0].load(Ordering::Relaxed),
            self.outcomes[1].load(Ordering::Relaxed),
        )
    }
}

/// Reloads on every SIGHUP until the process ends.
pub fn on_sighup(reloader: Arc<Reloader>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reload through POST /admin/reload");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let _ = reloader.reload("sighup").await;
        }
    });
}
