//! The providers a gateway routes to, and their health: the registry a reload
//! replaces whole, and the probes of `GET /health/kms` and `/ready`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus::{Histogram, HistogramVec};

use super::{Gateway, GatewayError};
use crate::catalog::KeyRecord;
use crate::providers::{Health, Provider, ProviderKind};

/// How long a health probe may take before it is reported as failed.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// A configured provider and what `GET /providers` says about it.
pub struct Registered {
    pub provider: Arc<dyn Provider>,
    pub description: Option<String>,
}

/// One line of `GET /health/kms`.
#[derive(Debug)]
pub struct ProviderHealth {
    pub provider_id: String,
    pub kind: ProviderKind,
    pub health: Health,
}

/// The providers a gateway routes to. A reload replaces it whole; a request
/// keeps the registry it started with until it ends.
pub struct Registry {
    pub(super) providers: Vec<Registered>,
    pub(super) by_id: HashMap<String, usize>,
    pub(super) default_provider: String,
    /// Sign latency per provider; `sign_timers[i]` belongs to `providers[i]`.
    pub(super) sign_timers: Vec<Histogram>,
    /// Whether `providers[i]` has passed a health probe (shared with the registry
    /// a reload makes, for the providers it keeps).
    pub(super) initialised: Vec<Arc<AtomicBool>>,
}

impl Registry {
    /// The providers, in configuration order.
    pub fn providers(&self) -> &[Registered] {
        &self.providers
    }

    pub(super) fn index_of(&self, id: Option<&str>) -> Result<usize, GatewayError> {
        let id = id.unwrap_or(&self.default_provider);
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| GatewayError::ProviderNotFound(id.to_owned()))
    }

    pub(super) fn index_of_record(&self, record: &KeyRecord) -> Result<usize, GatewayError> {
        self.index_of(Some(&record.provider))
            .map_err(|_| GatewayError::ProviderGone {
                kid: record.kid.clone(),
                provider: record.provider.clone(),
            })
    }
}

impl Gateway {
    /// A registry of `providers`; a provider also in `previous` keeps its
    /// initialised state.
    ///
    /// # Panics
    /// When `default_provider` is not among `providers` (config validation prevents it).
    pub(super) fn registry_of(
        sign_seconds: &HistogramVec,
        providers: Vec<Registered>,
        default_provider: String,
        previous: Option<&Registry>,
    ) -> Registry {
        let by_id: HashMap<_, _> = providers
            .iter()
            .enumerate()
            .map(|(i, r)| (r.provider.id().to_owned(), i))
            .collect();
        assert!(
            by_id.contains_key(&default_provider),
            "default provider must be registered"
        );
        let sign_timers = providers
            .iter()
            .map(|r| sign_seconds.with_label_values(&[r.provider.id()]))
            .collect();
        let initialised = providers
            .iter()
            .map(|r| {
                previous
                    .and_then(|old| {
                        old.providers
                            .iter()
                            .position(|o| Arc::ptr_eq(&o.provider, &r.provider))
                            .map(|i| Arc::clone(&old.initialised[i]))
                    })
                    .unwrap_or_default()
            })
            .collect();
        Registry {
            providers,
            by_id,
            default_provider,
            sign_timers,
            initialised,
        }
    }

    /// Routes to `providers` from now on; requests already running finish with
    /// the providers they started with.
    ///
    /// # Panics
    /// When `default_provider` is not among `providers` (config validation prevents it).
    pub fn replace_providers(&self, providers: Vec<Registered>, default_provider: String) {
        let previous = self.registry.load_full();
        let next = Self::registry_of(
            &self.sign_seconds,
            providers,
            default_provider,
            Some(&previous),
        );
        self.registry.store(Arc::new(next));
    }

    /// The providers now configured.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    /// Probes every provider in parallel, each bounded by a timeout.
    pub async fn health(&self) -> Vec<ProviderHealth> {
        let registry = self.registry.load_full();
        futures::future::join_all((0..registry.providers.len()).map(|i| Self::probe(&registry, i)))
            .await
    }

    pub(super) async fn probe(registry: &Registry, index: usize) -> ProviderHealth {
        let provider = &registry.providers[index].provider;
        let health = match tokio::time::timeout(HEALTH_TIMEOUT, provider.health()).await {
            Ok(health) => health,
            Err(_) => Health {
                ok: false,
                latency: HEALTH_TIMEOUT,
                error: Some(format!("no answer within {} s", HEALTH_TIMEOUT.as_secs())),
            },
        };
        if health.ok {
            registry.initialised[index].store(true, Ordering::Release);
        }
        ProviderHealth {
            provider_id: provider.id().to_owned(),
            kind: provider.kind(),
            health,
        }
    }

    /// The providers not yet initialised, with why: each provider counts as
    /// initialised from its first successful health probe on (later outages show in
    /// [`Gateway::health`], not here). Probes the others now.
    pub async fn not_ready(&self) -> Vec<ProviderHealth> {
        let registry = self.registry.load_full();
        let waiting = (0..registry.providers.len())
            .filter(|&i| !registry.initialised[i].load(Ordering::Acquire))
            .map(|i| Self::probe(&registry, i));
        futures::future::join_all(waiting)
            .await
            .into_iter()
            .filter(|h| !h.health.ok)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::gateway::test_gateway;

    #[tokio::test]
    async fn the_registry_routes_by_id_and_health_reports_every_provider() {
        let dir = tempfile::tempdir().unwrap();
        let (gateway, _) = test_gateway(&dir, Vec::new()).await;
        let registry = gateway.registry();
        assert_eq!(registry.index_of(None).unwrap(), 0);
        assert_eq!(registry.index_of(Some("db")).unwrap(), 0);
        assert!(registry.index_of(Some("nope")).is_err());
        let health = gateway.health().await;
        assert_eq!(health.len(), 1);
        assert!(health[0].health.ok, "{:?}", health[0].health.error);
        assert!(gateway.not_ready().await.is_empty());
        // A reload that keeps the provider keeps its state.
        let same = registry.providers()[0].provider.clone();
        gateway.replace_providers(
            vec![super::Registered {
                provider: same,
                description: Some("kept".into()),
            }],
            "db".into(),
        );
        assert_eq!(
            gateway.registry().providers()[0].description.as_deref(),
            Some("kept")
        );
    }
}
