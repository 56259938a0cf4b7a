//! The one wasmtime engine every guest runs in: pooling allocator, an epoch ticker
//! for deadlines, the linker of what guests may import, and a disk cache of
//! compiled components keyed by the file's SHA-256 and the wasmtime version.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, Linker};

use crate::config::ComponentSource;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use wasmtime_wasi::WasiView;
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::{cli, filesystem, random};
use wasmtime_wasi::random::WasiRandom;

use super::host::HostState;
use super::versions::{GuestPre, WitVersion, add_host_imports};

/// How often the epoch advances; a guest deadline is checked this often.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read component {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("component {path} has SHA-256 {actual}, but kms.json pins {expected}")]
    Digest {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("component {path} is not a valid WebAssembly component: {reason}")]
    Compile { path: String, reason: String },
    #[error(
        "component {path} imports what kmsgw does not grant: {imports} (granted: kmsgw:adapter, wasi:io, wasi:clocks, wasi:random, wasi:cli (empty environment, no stdin), wasi:http, wasi:filesystem (no directories))"
    )]
    Refused { path: String, imports: String },
    #[error("component {path} cannot be linked: {reason}")]
    Link { path: String, reason: String },
    #[error(
        "component {path} does not export kmsgw:adapter/adapter at a version this gateway runs (0.1.0, 0.2.0, 0.3.0 or 0.4.0); it exports: {exports}"
    )]
    Version { path: String, exports: String },
}

/// Interfaces a guest may import (by prefix; any version the linker satisfies).
const GRANTED: &[&str] = &[
    "kmsgw:adapter/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:cli/",
    "wasi:http/",
    "wasi:filesystem/",
];

/// Sizing of the engine's instance pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolSizing {
    /// Instances that may exist at once, over all guest providers.
    pub instances: u32,
    /// The largest linear memory any guest may have.
    pub max_memory_bytes: usize,
}

/// The shared guest engine.
#[derive(Clone)]
pub struct WasmRuntime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache_dir: Option<PathBuf>,
}

impl WasmRuntime {
    /// An engine sized for `sizing`, caching compiled components in `cache_dir`.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration.
    pub fn new(sizing: PoolSizing, cache_dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        // A Rust guest is a few core instances (the WASI adapter and the module).
        let per_component_cores = 8;
        pool.total_component_instances(sizing.instances)
            .total_core_instances(sizing.instances * per_component_cores)
            .total_memories(sizing.instances * 2)
            .total_tables(sizing.instances * per_component_cores)
            .total_stacks(sizing.instances)
            .max_core_instances_per_component(per_component_cores)
            .max_memories_per_component(2)
            .max_tables_per_component(per_component_cores)
            .max_memory_size(sizing.max_memory_bytes);
        let mut config = Config::new();
        config
            // Instances copy their initial memory instead of mapping a sealed
            // memfd image: a JavaScript engine's image is megabytes, and sealing
            // such memfds failed intermittently here ("cannot add seals to the
            // memfd"); instances are pooled, so the copy is paid rarely.
            .memory_init_cow(false)
            .epoch_interruption(true)
            .wasm_component_model(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::<HostState>::new(&engine);
        // WASI: io, clocks, random and the standard streams (stdin empty, stderr
        // captured for the log). Rust's std also imports `environment`, `exit` and
        // the terminal queries: the environment is always empty, exit ends only the
        // call, and no stream is a terminal. JavaScript engines (componentize-js)
        // import `wasi:filesystem`: it is linked with no preopened directory, so no
        // file can be named, let alone read. No sockets are linked.
        wasmtime_wasi::p2::add_to_linker_proxy_interfaces_async(&mut linker)?;
        filesystem::types::add_to_linker::<_, WasiFilesystem>(&mut linker, |s| s.filesystem())?;
        filesystem::preopens::add_to_linker::<_, WasiFilesystem>(&mut linker, |s| s.filesystem())?;
        cli::environment::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::exit::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::terminal_input::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::terminal_output::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::terminal_stdin::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::terminal_stdout::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        cli::terminal_stderr::add_to_linker::<_, WasiCli>(&mut linker, |s| s.cli())?;
        // std's HashMap seeds itself from `insecure-seed`.
        random::insecure::add_to_linker::<_, WasiRandom>(&mut linker, |s| s.ctx().ctx.random())?;
        random::insecure_seed::add_to_linker::<_, WasiRandom>(&mut linker, |s| {
            s.ctx().ctx.random()
        })?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        add_host_imports(&mut linker)?;
        Ok(WasmRuntime {
            engine,
            linker: Arc::new(linker),
            cache_dir,
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Loads `path` (checking `sha256` when given), compiling it or reusing the
    /// cached compiled form, and links it against what guests may import.
    ///
    /// # Errors
    /// [`LoadError`] naming the file and the reason.
    pub fn load(
        &self,
        source: &ComponentSource,
        sha256: Option<&str>,
    ) -> Result<GuestPre, LoadError> {
        let shown = source.to_string();
        let started = Instant::now();
        let bytes = source.bytes().map_err(|source| LoadError::Read {
            path: shown.clone(),
            source,
        })?;
        let digest =
            hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
        if let Some(expected) = sha256
            && !expected.eq_ignore_ascii_case(&digest)
        {
            return Err(LoadError::Digest {
                path: shown,
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let (component, cache) = self
            .compile(&bytes, &digest)
            .map_err(|e| LoadError::Compile {
                path: shown.clone(),
                reason: format!("{e:#}"),
            })?;
        let refused: Vec<String> = component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .filter(|name| !GRANTED.iter().any(|granted| name.starts_with(granted)))
            .collect();
        if !refused.is_empty() {
            return Err(LoadError::Refused {
                path: shown,
                imports: refused.join(", "),
            });
        }
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let version = exports
            .iter()
            .find_map(|name| WitVersion::of_export(name))
            .ok_or_else(|| LoadError::Version {
                path: shown.clone(),
                exports: exports.join(", "),
            })?;
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(|pre| GuestPre::new(version, pre))
            .map_err(|e| LoadError::Link {
                path: shown.clone(),
                reason: format!("{e:#}"),
            })?;
        tracing::info!(component = %shown, sha256 = %digest, wit = version.as_str(), cache, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "guest component loaded");
        Ok(pre)
    }

    fn compile(&self, bytes: &[u8], digest: &str) -> wasmtime::Result<(Component, &'static str)> {
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(&self.engine, bytes)?, "off"));
        };
        let cached = dir.join(format!("{digest}-wasmtime-{}.cwasm", wasmtime_version()));
        if cached.exists() {
            // SAFETY: the file is one this gateway wrote into its own data directory
            // from the component with this digest; wasmtime checks that it was made
            // by a compatible engine and refuses it otherwise.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => return Ok((component, "hit")),
                Err(e) => {
                    tracing::warn!(file = %cached.display(), error = %e, "compiled cache entry unusable; recompiling")
                }
            }
        }
        let compiled = self.engine.precompile_component(bytes)?;
        // The cache saves the next start a compile; a full disk must not stop this one.
        let partial = cached.with_extension("partial");
        let stored = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&partial, &compiled))
            .and_then(|()| std::fs::rename(&partial, &cached));
        let outcome = match stored {
            Ok(()) => "miss",
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                tracing::warn!(file = %cached.display(), error = %e, "the compiled component could not be cached; it runs from memory");
                "miss, not stored"
            }
        };
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(&self.engine, &compiled)? };
        Ok((component, outcome))
    }
}

fn wasmtime_version() -> &'static str {
    // Pinned in Cargo.toml; the compiled form is only valid for this version.
    "48.0.8"
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("kmsgw-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawn the epoch thread");
}
