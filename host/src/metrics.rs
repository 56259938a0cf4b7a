//! `/metrics`: requests by route and status, sign latency per provider, provider
//! health, and each guest's traps, timeouts, denied egress, dropped log lines,
//! recycled and busy instances and storage in use, in the Prometheus text format.

use axum::http::StatusCode;
use prometheus::core::Collector;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::gateway::Gateway;

/// The gateway's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
}

impl Metrics {
    /// A registry holding the request counter and `gateway`'s sign histograms.
    pub fn new(gateway: &Gateway) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "kmsgw_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(gateway.sign_seconds().clone()))
            .expect("registered once");
        for collector in gateway.audit().chain_use().collectors() {
            registry.register(collector).expect("registered once");
        }
        Metrics { registry, requests }
    }

    /// Counts one answered request; `route` is the matched route pattern.
    pub fn count_request(&self, method: &str, route: &str, status: StatusCode) {
        self.requests
            .with_label_values(&[method, route, status.as_str()])
            .inc();
    }

    /// The text exposition: the registry, then provider health (probed now) and
    /// guest counters.
    pub async fn render(
        &self,
        gateway: &Gateway,
        reloads: Option<(u64, u64)>,
        custody: Option<&crate::custody::Custody>,
    ) -> String {
        let health = IntGaugeVec::new(
            Opts::new(
                "kmsgw_provider_up",
                "1 when the provider's health probe succeeds",
            ),
            &["provider", "type"],
        )
        .expect("valid metric");
        for line in gateway.health().await {
            health
                .with_label_values(&[line.provider_id.as_str(), line.kind.as_str()])
                .set(i64::from(line.health.ok));
        }
        let counter = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["provider"]).expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["provider"]).expect("valid metric")
        };
        let traps = counter("kmsgw_guest_traps_total", "Guest calls that trapped");
        let timeouts = counter(
            "kmsgw_guest_timeouts_total",
            "Guest calls that missed their deadline",
        );
        let denied = counter(
            "kmsgw_guest_denied_egress_total",
            "Outgoing requests refused to guests",
        );
        let in_use = gauge(
            "kmsgw_guest_instances_in_use",
            "Guest instances lent out now",
        );
        let size = gauge("kmsgw_guest_instances", "Guest instances in the pool");
        let dropped = counter(
            "kmsgw_guest_log_lines_dropped_total",
            "Guest log lines dropped over limits.logLinesPerSecond",
        );
        let recycled = counter(
            "kmsgw_guest_instances_recycled_total",
            "Guest instances replaced because a call left resources behind",
        );
        let storage_bytes = gauge(
            "kmsgw_guest_storage_bytes",
            "Bytes a guest holds in its storage (key + sealed value)",
        );
        let storage_entries = gauge(
            "kmsgw_guest_storage_entries",
            "Entries a guest holds in its storage",
        );
        let usage = match gateway.catalog().guest_usage().await {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "guest storage usage could not be read for /metrics");
                Vec::new()
            }
        };
        let registry = gateway.registry();
        for registered in registry.providers() {
            if let Some(stats) = registered.provider.describe().map(|g| g.stats) {
                let id = [registered.provider.id()];
                let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
                traps.with_label_values(&id).inc_by(stats.traps);
                timeouts.with_label_values(&id).inc_by(stats.timeouts);
                denied.with_label_values(&id).inc_by(stats.denied_egress);
                dropped
                    .with_label_values(&id)
                    .inc_by(stats.log_lines_dropped);
                recycled.with_label_values(&id).inc_by(stats.recycled);
                let (entries, bytes) = usage
                    .iter()
                    .find(|(provider, _, _)| provider == id[0])
                    .map_or((0, 0), |(_, entries, bytes)| (*entries, *bytes));
                storage_entries.with_label_values(&id).set(entries);
                storage_bytes.with_label_values(&id).set(bytes);
                in_use
                    .with_label_values(&id)
                    .set(gauge(stats.instances_in_use));
                size.with_label_values(&id).set(gauge(stats.instances));
            }
        }
        let never_used = IntGaugeVec::new(
            Opts::new(
                "kmsgw_keys_never_used",
                "Keys that have not signed once since they were created",
            ),
            &[],
        )
        .expect("valid metric");
        let counted = match gateway.usage().flush().await {
            Ok(()) => gateway.catalog().never_used().await,
            Err(e) => Err(e),
        };
        match counted {
            Ok(n) => never_used.with_label_values::<&str>(&[]).set(n),
            Err(e) => {
                tracing::warn!(error = %e, "keys never used could not be counted for /metrics")
            }
        }
        let versions = IntGaugeVec::new(
            Opts::new(
                "kmsgw_key_versions",
                "Key versions per state (active, grace, retired)",
            ),
            &["state"],
        )
        .expect("valid metric");
        let oldest = prometheus::Gauge::new(
            "kmsgw_oldest_active_version_age_seconds",
            "Age of the oldest current key version",
        )
        .expect("valid metric");
        match gateway.catalog().version_stats().await {
            Ok((counts, oldest_since)) => {
                for (state, n) in counts {
                    versions.with_label_values(&[state.as_str()]).set(n);
                }
                if let Some(since) = oldest_since {
                    oldest.set(since.elapsed().map_or(0.0, |d| d.as_secs_f64()));
                }
            }
            Err(e) => tracing::warn!(error = %e, "key versions could not be counted for /metrics"),
        }
        let outcomes = |name: &str, help: &str, (done, failed): (u64, u64)| {
            let counter =
                IntCounterVec::new(Opts::new(name, help), &["outcome"]).expect("valid metric");
            counter.with_label_values(&["ok"]).inc_by(done);
            counter.with_label_values(&["failed"]).inc_by(failed);
            counter
        };
        let rotations = outcomes(
            "kmsgw_rotations_total",
            "Key rotations by this replica, by outcome",
            gateway.rotation_counts(),
        );
        let reloads = outcomes(
            "kmsgw_config_reloads_total",
            "kms.json reloads (SIGHUP or POST /admin/reload), by outcome",
            reloads.unwrap_or_default(),
        );
        let certificates = outcomes(
            "kmsgw_certificates_issued_total",
            "Certificates issued by this replica (on request, on rotation, renewals), by outcome",
            gateway.certificate_counts(),
        );
        let mut families = self.registry.gather();
        if let Some(custody) = custody {
            let counted = match custody.catalog.seal_operation_counts().await {
                Ok(counted) => counted,
                Err(e) => {
                    tracing::warn!(error = %e, "seal operations could not be counted for /metrics");
                    Vec::new()
                }
            };
            families.extend(seal_families(custody, &counted));
        }
        families.extend(health.collect());
        families.extend(never_used.collect());
        families.extend(versions.collect());
        families.extend(oldest.collect());
        families.extend(rotations.collect());
        families.extend(certificates.collect());
        families.extend(reloads.collect());
        for collector in [&traps, &timeouts, &denied, &dropped, &recycled] {
            families.extend(collector.collect());
        }
        for collector in [&in_use, &size, &storage_bytes, &storage_entries] {
            families.extend(collector.collect());
        }
        // Families with no samples (no guests configured) are left out of the text.
        families.retain(|family| !family.get_metric().is_empty());
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The master key's gauges and the seal operations' counters.
fn seal_families(
    custody: &crate::custody::Custody,
    counted: &[(String, String, i64)],
) -> Vec<prometheus::proto::MetricFamily> {
    use std::sync::atomic::Ordering;
    let generation = IntGaugeVec::new(
        Opts::new(
            "kmsgw_seal_generation",
            "The master key generation new items are sealed under (0 while sealed)",
        ),
        &["seal"],
    )
    .expect("valid metric");
    let name = custody.seal.name();
    generation
        .with_label_values(&[name.as_str()])
        .set(i64::from(custody.master.generation().unwrap_or(0)));
    let sealed = IntGaugeVec::new(
        Opts::new("kmsgw_sealed", "1 while the master key is not unsealed"),
        &[],
    )
    .expect("valid metric");
    sealed
        .with_label_values::<&str>(&[])
        .set(i64::from(custody.master.sealed_because().is_some()));
    let status = custody.rotation.status();
    let rotation = IntGaugeVec::new(
        Opts::new(
            "kmsgw_seal_rotation_items",
            "The master key rotation of this process: sealed items to rewrap (total) and rewrapped (done)",
        ),
        &["state"],
    )
    .expect("valid metric");
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    rotation
        .with_label_values(&["total"])
        .set(count(status.total));
    rotation
        .with_label_values(&["done"])
        .set(count(status.done));
    let running = IntGaugeVec::new(
        Opts::new(
            "kmsgw_seal_rotation_running",
            "1 while this process rotates the master key",
        ),
        &[],
    )
    .expect("valid metric");
    running
        .with_label_values::<&str>(&[])
        .set(i64::from(status.running));
    let operations = IntCounterVec::new(
        Opts::new(
            "kmsgw_seal_operations_total",
            "Seal operations by outcome: unseal attempts by this process; seal-rotate, \
             seal-migrate, backup and restore by any process on this database",
        ),
        &["operation", "outcome"],
    )
    .expect("valid metric");
    for (outcome, counter) in ["ok", "failed"].iter().zip(&custody.unseals.0) {
        operations
            .with_label_values(&["unseal", outcome])
            .inc_by(counter.load(Ordering::Relaxed));
    }
    for (operation, outcome, n) in counted {
        operations
            .with_label_values(&[operation.as_str(), outcome.as_str()])
            .inc_by(u64::try_from(*n).unwrap_or(0));
    }
    let mut families = Vec::new();
    families.extend(generation.collect());
    families.extend(sealed.collect());
    families.extend(rotation.collect());
    families.extend(running.collect());
    families.extend(operations.collect());
    families
}
