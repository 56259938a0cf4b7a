//! `kmsgw adapter check`: a conformance run for a guest adapter. It loads the
//! component exactly as the gateway does and exercises every operation the guest
//! advertises, printing one line per check.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::audit::Actor;
use crate::catalog::{Catalog, KeyRecord};
use crate::config::ComponentSource;
use crate::crypto::master::MasterKey;
use crate::crypto::{PrivateKey, PublicJwk};
use crate::gateway::{Gateway, GatewayError, NewKey, Registered};
use crate::providers::wasm::host::AllowedHost;
use crate::providers::wasm::limits::GuestLimits;
use crate::providers::wasm::runtime::{PoolSizing, WasmRuntime};
use crate::providers::wasm::{WasmOptions, WasmProvider};
use crate::providers::{Alg, KeyRef, KeySpec, Provider, ProviderError, ToSign};

/// What to check and how to run it.
pub struct CheckOptions {
    pub component: PathBuf,
    pub config: serde_json::Value,
    pub allowed_hosts: Vec<String>,
    pub timeout: Duration,
    pub memory_bytes: usize,
}

impl CheckOptions {
    /// The guest options of this check: one instance under the given deadline and cap.
    ///
    /// # Errors
    /// When an allowed host is malformed.
    pub fn wasm_options(&self) -> anyhow::Result<WasmOptions> {
        let mut allowed = Vec::new();
        for host in &self.allowed_hosts {
            allowed.push(
                AllowedHost::parse(host)
                    .map_err(|e| anyhow::anyhow!("--allow-host {host}: {e}"))?,
            );
        }
        Ok(WasmOptions {
            id: "adapter-check".into(),
            component: ComponentSource::File(self.component.clone()),
            sha256: None,
            config: self.config.clone(),
            allowed_hosts: allowed,
            egress_auth: Vec::new(),
            limits: GuestLimits {
                memory_mb: self.memory_bytes as u64 >> 20,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
                instances: 1,
                ..GuestLimits::default()
            },
            adapter: None,
            publisher: None,
        })
    }
}

/// The guest options of provider `id` in the kms.json at `path`, as the gateway
/// would run it (its component, fields, `allowedHosts`, `egressAuth` and limits),
/// with one instance. An `oci://` component is pulled into the cache under
/// `data_dir` (or found there) and vetted as at start.
///
/// # Errors
/// When the file does not load, `id` names no guest provider in it, or its
/// component cannot be had or is refused.
pub async fn options_from_config(
    path: &std::path::Path,
    id: &str,
    data_dir: &std::path::Path,
) -> anyhow::Result<WasmOptions> {
    let config = crate::config::Config::load(path, &crate::config::process_env)?;
    let base_dir = path.parent().unwrap_or(std::path::Path::new(""));
    let (i, entry) = config
        .providers
        .into_iter()
        .enumerate()
        .find(|(_, p)| p.id == id)
        .ok_or_else(|| anyhow::anyhow!("{} has no provider `{id}`", path.display()))?;
    let crate::config::ProviderConfig::Wasm(mut wasm) = entry.config else {
        anyhow::bail!("provider `{id}` is not a guest (wasm or named guest type)");
    };
    let cache = crate::distribution::cache::Cache::new(data_dir);
    crate::distribution::prepare(&mut wasm, i, &entry.id, base_dir, &cache)
        .await
        .map_err(|problems| crate::config::ConfigError::Invalid {
            source_name: path.display().to_string(),
            problems,
        })?;
    let mut options = crate::assembly::wasm_options(
        entry.id,
        wasm,
        base_dir,
        &format!("providers[{i}]"),
        &path.display().to_string(),
    )?;
    options.limits.instances = 1;
    Ok(options)
}

/// The outcome of one check.
enum Outcome {
    Pass(String),
    Fail(String),
    Skip(String),
}

/// The lines printed so far and the tally.
#[derive(Default)]
pub struct Report {
    pub text: String,
    pub passed: usize,
    pub failed: usize,
}

impl Report {
    fn line(&mut self, name: &str, elapsed: Option<Duration>, outcome: Outcome) {
        let time = elapsed
            .map(|d| format!(" ({:.1} ms)", d.as_secs_f64() * 1000.0))
            .unwrap_or_default();
        let _ = match outcome {
            Outcome::Pass(detail) => {
                self.passed += 1;
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                writeln!(self.text, "PASS  {name}{time}{detail}")
            }
            Outcome::Fail(why) => {
                self.failed += 1;
                writeln!(self.text, "FAIL  {name}{time}: {why}")
            }
            Outcome::Skip(why) => writeln!(self.text, "SKIP  {name}: {why}"),
        };
    }

    /// Whether every check that ran passed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

fn verify(jwk: &PublicJwk, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), String> {
    if jwk.verify(alg, message, signature) {
        Ok(())
    } else {
        Err("signature does not verify".to_owned())
    }
}

const MESSAGES: [&[u8]; 3] = [b"", b"kmsgw adapter check", &[0xa5; 10_000]];

/// Runs every check and returns the report.
///
/// # Errors
/// Only when the check itself cannot run (no temporary directory, no engine).
pub async fn run(wasm_options: WasmOptions) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let dir = tempfile::tempdir()?;
    let catalog = Catalog::connect(&format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("check.db").display()
    ))
    .await?;
    let mut key_bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key_bytes).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let master = Arc::new(MasterKey::from_bytes(&key_bytes));
    let runtime = WasmRuntime::new(
        PoolSizing {
            instances: 4,
            max_memory_bytes: wasm_options.limits.memory_bytes(),
        },
        None,
    )
    .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let started = Instant::now();
    let provider = match WasmProvider::start(&runtime, wasm_options, catalog.clone(), master).await
    {
        Ok(provider) => Arc::new(provider),
        Err(e) => {
            report.line(
                "load and init",
                Some(started.elapsed()),
                Outcome::Fail(e.to_string()),
            );
            return Ok(report);
        }
    };
    report.line(
        "load and init",
        Some(started.elapsed()),
        Outcome::Pass(String::new()),
    );
    let caps = provider.capabilities().clone();
    let algs: Vec<_> = caps.supported_algs.iter().map(|a| a.as_str()).collect();
    report.line(
        "capabilities",
        None,
        Outcome::Pass(format!(
            "create={} import={} delete={} algs={} default={}",
            caps.can_create,
            caps.can_import,
            caps.can_delete,
            algs.join(","),
            caps.default_alg
        )),
    );
    let gateway = Gateway::new(
        vec![Registered {
            provider: provider.clone(),
            description: None,
        }],
        provider.id().to_owned(),
        catalog,
    );

    let mut generated = None;
    for &alg in Alg::ALL {
        if !caps.supports(alg) {
            // The gateway never asks for it; a guest asked anyway must refuse.
            let started = Instant::now();
            let outcome = match provider
                .generate_key("adapter-check-unadvertised", KeySpec::of(alg))
                .await
            {
                Err(ProviderError::Unsupported(_) | ProviderError::InvalidInput(_)) => {
                    Outcome::Pass("not advertised, and refused".into())
                }
                Err(e) => Outcome::Fail(format!(
                    "not advertised, so it must answer unsupported; got: {e}"
                )),
                Ok(_) => Outcome::Fail("not advertised, yet it created a key".into()),
            };
            report.line(
                &format!("{alg}: unadvertised → refused"),
                Some(started.elapsed()),
                outcome,
            );
            continue;
        }
        if caps.can_create {
            let started = Instant::now();
            let kid = format!("adapter-check-{}", alg.as_str().to_ascii_lowercase());
            let request = NewKey {
                kid: Some(kid),
                alg: Some(alg),
                ..NewKey::default()
            };
            match gateway.create_key(Actor::default(), request).await {
                Ok(record) => {
                    report.line(
                        &format!("generate-key ({alg})"),
                        Some(started.elapsed()),
                        Outcome::Pass(String::new()),
                    );
                    let name = format!("generate → sign → verify ({alg})");
                    sign_and_verify(&mut report, &gateway, &record, &name).await;
                    generated.get_or_insert(record);
                }
                Err(e) => report.line(
                    &format!("generate-key ({alg})"),
                    Some(started.elapsed()),
                    Outcome::Fail(e.to_string()),
                ),
            }
        }
        if caps.can_import {
            let started = Instant::now();
            let kid = format!(
                "adapter-check-{}-imported",
                alg.as_str().to_ascii_lowercase()
            );
            let known = PrivateKey::generate(alg, None)?;
            match gateway
                .import_key(Actor::default(), kid, &known, Some(alg), None)
                .await
            {
                Ok(record) => {
                    let name = format!("import → sign → verify ({alg})");
                    sign_and_verify(&mut report, &gateway, &record, &name).await;
                }
                Err(e) => report.line(
                    &format!("import-key ({alg})"),
                    Some(started.elapsed()),
                    Outcome::Fail(e.to_string()),
                ),
            }
        }
    }
    if !caps.can_create {
        report.line("generate-key", None, Outcome::Skip("not advertised".into()));
    }

    let missing = KeyRecord {
        id: "adapter-check-missing".into(),
        kid: "adapter-check-missing".into(),
        tenant: None,
        provider: "adapter-check".into(),
        external_id: "adapter-check-missing".into(),
        alg: caps.default_alg,
        public_jwk: PrivateKey::generate(caps.default_alg, None)?
            .public_jwk()
            .clone(),
        created_at: SystemTime::now(),
        version: 1,
        sealed: None,
        certified: false,
    };
    let started = Instant::now();
    let outcome = match provider
        .sign(&KeyRef::from(&missing), ToSign::Message(b"x"))
        .await
    {
        Err(ProviderError::KeyNotFound(_)) => Outcome::Pass(String::new()),
        Err(e) => Outcome::Fail(format!("expected not-found, got: {e}")),
        Ok(_) => Outcome::Fail("signed with a key that does not exist".into()),
    };
    report.line(
        "sign with unknown key → not-found",
        Some(started.elapsed()),
        outcome,
    );

    if !caps.can_import {
        let started = Instant::now();
        let known = PrivateKey::generate(caps.default_alg, None)?;
        let outcome = match provider
            .import_key("adapter-check-imported", &known, caps.default_alg)
            .await
        {
            Err(ProviderError::Unsupported(_)) => {
                Outcome::Pass("not advertised, and refused as unsupported".into())
            }
            Err(e) => Outcome::Fail(format!(
                "not advertised, so it must answer unsupported; got: {e}"
            )),
            Ok(_) => Outcome::Fail("not advertised, yet it imported a key".into()),
        };
        report.line("import-key", Some(started.elapsed()), outcome);
    }

    match (caps.can_delete, generated) {
        (true, Some(record)) => {
            let started = Instant::now();
            let outcome = match gateway.delete_key(Actor::default(), &record.kid).await {
                Err(e) => Outcome::Fail(e.to_string()),
                Ok(_) => match provider
                    .sign(&KeyRef::from(&*record), ToSign::Message(b"x"))
                    .await
                {
                    Err(ProviderError::KeyNotFound(_)) => Outcome::Pass(String::new()),
                    Err(e) => {
                        Outcome::Fail(format!("after delete, sign must be not-found; got: {e}"))
                    }
                    Ok(_) => Outcome::Fail("the key still signs after delete".into()),
                },
            };
            report.line(
                "delete-key → sign → not-found",
                Some(started.elapsed()),
                outcome,
            );
        }
        (true, None) => report.line(
            "delete-key",
            None,
            Outcome::Skip("no generated key to delete".into()),
        ),
        (false, _) => report.line("delete-key", None, Outcome::Skip("not advertised".into())),
    }

    let health = provider.health().await;
    let outcome = match health.error {
        None if health.ok => Outcome::Pass(String::new()),
        error => Outcome::Fail(error.unwrap_or_else(|| "not ok".into())),
    };
    report.line("health", Some(health.latency), outcome);
    Ok(report)
}

/// Signs every one of [`MESSAGES`] with `record`'s key and verifies each
/// signature; then, when the guest signs digests, their digests too.
async fn sign_and_verify(report: &mut Report, gateway: &Gateway, record: &KeyRecord, name: &str) {
    sign_each(report, gateway, record, name, None).await;
    if let (true, Some(hash)) = (gateway.signs_digests(record), record.alg.prehash()) {
        let name = format!("{name}, digests");
        sign_each(report, gateway, record, &name, Some(hash)).await;
    }
}

/// One report line: every message signed, or its `hash` digest when given,
/// each signature verified over the message.
async fn sign_each(
    report: &mut Report,
    gateway: &Gateway,
    record: &KeyRecord,
    name: &str,
    hash: Option<&'static aws_lc_rs::digest::Algorithm>,
) {
    let mut total = Duration::ZERO;
    for message in MESSAGES {
        let digest = hash.map(|hash| aws_lc_rs::digest::digest(hash, message));
        let input = match &digest {
            Some(digest) => ToSign::Digest(digest.as_ref()),
            None => ToSign::Message(message),
        };
        let started = Instant::now();
        let result = gateway.sign(None, &record.kid, input, None).await;
        total += started.elapsed();
        let failure = match result {
            Ok((signature, _)) => verify(&record.public_jwk, record.alg, message, &signature).err(),
            Err(GatewayError::Provider(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(why) = failure {
            report.line(
                name,
                Some(started.elapsed()),
                Outcome::Fail(format!("{}-byte message: {why}", message.len())),
            );
            return;
        }
    }
    let per_call = total / MESSAGES.len() as u32;
    report.line(
        name,
        Some(per_call),
        Outcome::Pass(format!("{} messages, 0 to 10000 bytes", MESSAGES.len())),
    );
}
