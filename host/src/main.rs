//! The `kmsgw` command line: parses flags, then hands over to [`kmsgw::server`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kmsgw::check::CheckOptions;
use kmsgw::client::commands::{
    self as client, AuditCommand, CertsCommand, Connection, KeysCommand,
};
use kmsgw::custody::rotate::Pace;
use kmsgw::distribution::commands as distribution;
use kmsgw::maintenance;
use kmsgw::server::{self, ServeOptions, StartError};
use secrecy::SecretString;

#[derive(Parser)]
#[command(
    name = "kmsgw",
    version,
    about = "A WebAssembly-extensible signing gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the REST API.
    Serve(ServeArgs),
    /// Tools for guest adapter authors.
    #[command(subcommand)]
    Adapter(AdapterCommand),
    /// Keys of a running gateway: list, get, create, import, delete, rotate, sign, verify.
    Keys {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Certificates of a running gateway's keys: csr, issue, import, get.
    Certs {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// A running gateway's audit log: list, verify.
    Audit {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// A running gateway's providers, with their health (admin scope).
    Providers {
        #[command(flatten)]
        connection: Connection,
    },
    /// Whether a running gateway is ready; exit code 1 when it is not.
    Health {
        #[command(flatten)]
        connection: Connection,
    },
    /// The master key: rotate it, or move it under another seal.
    #[command(subcommand)]
    Seal(SealCommand),
    /// Write an encrypted snapshot of the whole catalog (beside a live gateway).
    Backup {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into an empty database, with the backup's seal.
    Restore {
        #[command(flatten)]
        store: StoreArgs,
        /// The backup file to read.
        #[arg(long)]
        from: PathBuf,
    },
}

#[derive(Subcommand)]
enum SealCommand {
    /// Make a new master key generation and rewrap every sealed item under it
    /// (or finish a rotation left unfinished). On SQLite, stop the gateway
    /// first, or use `POST /admin/seal/rotate`.
    Rotate {
        #[command(flatten)]
        store: StoreArgs,
        /// Sealed items rewrapped per transaction.
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Pause between transactions, in milliseconds.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Rewrap the master key under the seal of another kms.json.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
        /// The kms.json whose `seal` takes the master key.
        #[arg(long)]
        to: PathBuf,
    },
}

/// The database and data directory a command works on, named as `serve` names them.
#[derive(clap::Args)]
struct StoreArgs {
    /// The gateway's kms.json (its `seal` and `database`).
    #[arg(long, env = "KMSGW_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's data directory.
    #[arg(long, env = "KMSGW_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long, env = "KMSGW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl StoreArgs {
    fn options(self) -> ServeOptions {
        ServeOptions {
            config: self.config,
            listen: None,
            data_dir: self.data_dir,
            database_url: self.database_url.map(SecretString::from),
            master_key: std::env::var("KMSGW_MASTER_KEY")
                .ok()
                .map(SecretString::from),
            insecure_no_auth: false,
        }
    }
}

#[derive(Subcommand)]
enum AdapterCommand {
    /// Load a guest component as the gateway would and exercise every operation it advertises.
    Check(CheckArgs),
    /// Write a new adapter project that builds with nothing but crates.io.
    New(NewArgs),
    /// Build the adapter project in DIR as its kmsgw-adapter.toml says; prints the component.
    Build {
        /// The project directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Write a publisher key pair for signing components (PKCS#8 PEM and its public key).
    Keygen {
        /// The private key file to write (mode 0600); the public key goes beside it as *.pub.pem.
        #[arg(long)]
        out: PathBuf,
        /// `ed25519` or `p256`.
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "p256"])]
        alg: String,
    },
    /// Sign a component with a publisher key; other publishers' signatures are kept.
    Sign {
        /// The component (.wasm).
        component: PathBuf,
        /// The private key: PEM `PRIVATE KEY` (PKCS#8, Ed25519 or P-256) or `EC PRIVATE KEY` (P-256).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed component [default: in place].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Push a component to an OCI registry (oci://registry/repository:tag); prints the pinned reference.
    /// Credentials: KMSGW_REGISTRY_USERNAME and KMSGW_REGISTRY_PASSWORD, or KMSGW_REGISTRY_TOKEN.
    Push {
        /// The component (.wasm).
        component: PathBuf,
        /// oci://registry/repository:tag
        reference: String,
    },
    /// Print what a component (file or oci:// reference) asks for and who signed it, as JSON.
    Inspect {
        /// A .wasm file or an oci:// reference.
        source: String,
        /// A publisher's public key (PEM or JWK file) to verify the signature with; repeatable.
        #[arg(long = "public-key")]
        public_keys: Vec<PathBuf>,
        /// Pull into this data directory's cache [default: a temporary one].
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Pull components into a data directory's cache, for a start without the registry.
    Pull {
        /// oci:// references (credentials as for push).
        references: Vec<String>,
        /// Pull every oci:// component this kms.json's providers use, with their registryAuth.
        #[arg(long, env = "KMSGW_CONFIG")]
        config: Option<PathBuf>,
        /// The gateway's data directory.
        #[arg(long, env = "KMSGW_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Print the WIT package adapters are built against (or write it with --out).
    Wit {
        /// Write `adapter.wit` and its `deps/` into this directory.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct NewArgs {
    /// The adapter's name (lower-case letters, digits, `-`, `_`).
    name: String,
    /// The language of the project.
    #[arg(long, default_value = "rust")]
    lang: String,
    /// Where to write it [default: ./NAME].
    #[arg(long)]
    dir: Option<PathBuf>,
    /// `soft` (keys in the guest) or `http` (a remote-KMS client over HTTP; Rust).
    #[arg(long, default_value = "soft", value_parser = ["soft", "http"])]
    template: String,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The component (.wasm), or an adapter project directory, to check (or use
    /// --kms-json and --provider).
    #[arg(required_unless_present = "provider")]
    component: Option<PathBuf>,
    /// Check provider ID of this kms.json as the gateway would run it: its component
    /// (or named guest type), fields, allowedHosts, egressAuth and limits.
    #[arg(long, requires = "provider", conflicts_with_all = ["component", "config", "allow_host"])]
    kms_json: Option<PathBuf>,
    /// The provider id inside --kms-json.
    #[arg(long, requires = "kms_json")]
    provider: Option<String>,
    /// With --kms-json: the data directory whose cache an oci:// component is pulled into.
    #[arg(long, env = "KMSGW_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// JSON given to the guest's init, as `config` in kms.json would be.
    #[arg(long, default_value = "null")]
    config: String,
    /// A destination the guest may reach (host:port or scheme://host:port); repeatable.
    #[arg(long = "allow-host")]
    allow_host: Vec<String>,
    /// Deadline of each guest call, in milliseconds [default: 2000, or the entry's limits.timeoutMs].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Memory cap of the guest instance, in MiB.
    #[arg(long, default_value_t = 64)]
    memory_mb: usize,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// kms.json to load; without it, one `db` provider.
    #[arg(long, env = "KMSGW_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080, or `server.listen` in kms.json].
    #[arg(long, env = "KMSGW_LISTEN")]
    listen: Option<String>,
    /// Directory for the SQLite database, the master key file and caches.
    #[arg(long, env = "KMSGW_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long, env = "KMSGW_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Allow listening beyond loopback without API keys. Dangerous.
    #[arg(long, env = "KMSGW_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Flushes buffered traces when main returns.
    let _telemetry = match runtime.block_on(async { kmsgw::telemetry::init() }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Keys {
            connection,
            command,
        } => runtime.block_on(client::run(connection, |c| client::keys(c, command))),
        Command::Certs {
            connection,
            command,
        } => runtime.block_on(client::run(connection, |c| client::certs(c, command))),
        Command::Audit {
            connection,
            command,
        } => runtime.block_on(client::run(connection, |c| client::audit(c, command))),
        Command::Providers { connection } => {
            runtime.block_on(client::run(connection, client::providers))
        }
        Command::Health { connection } => runtime.block_on(client::run(connection, client::health)),
        Command::Seal(SealCommand::Rotate {
            store,
            batch,
            pause_ms,
        }) => said(runtime.block_on(maintenance::rotate(
            &store.options(),
            Pace {
                batch,
                pause: Duration::from_millis(pause_ms),
            },
        ))),
        Command::Seal(SealCommand::Migrate { store, to }) => {
            said(runtime.block_on(maintenance::migrate(&store.options(), &to)))
        }
        Command::Backup { store, out } => {
            said(runtime.block_on(maintenance::backup(&store.options(), &out)))
        }
        Command::Restore { store, from } => {
            said(runtime.block_on(maintenance::restore(&store.options(), &from)))
        }
        Command::Adapter(AdapterCommand::Check(args)) => runtime.block_on(check(args)),
        Command::Adapter(AdapterCommand::New(args)) => {
            let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
            let template = if args.template == "http" {
                kmsgw::scaffold::Template::Http
            } else {
                kmsgw::scaffold::Template::Soft
            };
            report(kmsgw::scaffold::new_project(&args.name, &args.lang, template, &dir).map(|dir| {
                format!(
                    "wrote {}; build it with `kmsgw adapter build {0}`, check it with `kmsgw adapter check {0}`",
                    dir.display()
                )
            }))
        }
        Command::Adapter(AdapterCommand::Build { dir }) => {
            report(kmsgw::scaffold::build(&dir).map(|c| c.display().to_string()))
        }
        Command::Adapter(AdapterCommand::Keygen { out, alg }) => {
            said(distribution::keygen(&out, &alg))
        }
        Command::Adapter(AdapterCommand::Sign {
            component,
            key,
            out,
        }) => said(distribution::sign(&component, &key, out.as_deref())),
        Command::Adapter(AdapterCommand::Push {
            component,
            reference,
        }) => {
            let auth = distribution::registry_auth_from_env(&kmsgw::config::process_env);
            said(runtime.block_on(distribution::push(&component, &reference, auth.as_ref())))
        }
        Command::Adapter(AdapterCommand::Inspect {
            source,
            public_keys,
            data_dir,
        }) => {
            let auth = distribution::registry_auth_from_env(&kmsgw::config::process_env);
            said(runtime.block_on(distribution::inspect(
                &source,
                &public_keys,
                data_dir.as_deref(),
                auth.as_ref(),
            )))
        }
        Command::Adapter(AdapterCommand::Pull {
            references,
            config,
            data_dir,
        }) => said(
            distribution::to_pull(&references, config.as_deref(), &kmsgw::config::process_env)
                .and_then(|wanted| runtime.block_on(distribution::pull(&wanted, &data_dir))),
        ),
        Command::Adapter(AdapterCommand::Wit { out: Some(dir) }) => {
            report(kmsgw::scaffold::write_wit(&dir).map(|()| format!("wrote {}", dir.display())))
        }
        Command::Adapter(AdapterCommand::Wit { out: None }) => {
            print!("{}", kmsgw::scaffold::wit_text());
            ExitCode::SUCCESS
        }
    }
}

/// Prints `result`'s message; an error goes to stderr with exit code 2.
fn report(result: Result<String, kmsgw::scaffold::ScaffoldError>) -> ExitCode {
    told(result, ExitCode::from(2))
}

/// Prints a seal command's message; an error goes to stderr with exit code 1.
fn said(result: Result<String, String>) -> ExitCode {
    told(result, ExitCode::FAILURE)
}

/// Prints `result`'s message, or its error on stderr and exits with `failure`.
fn told(result: Result<String, impl std::fmt::Display>, failure: ExitCode) -> ExitCode {
    match result {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            failure
        }
    }
}

async fn check(args: CheckArgs) -> ExitCode {
    let options = match (&args.kms_json, &args.provider, args.component) {
        (Some(path), Some(id), _) => kmsgw::check::options_from_config(path, id, &args.data_dir)
            .await
            .map(|mut o| {
                if let Some(timeout_ms) = args.timeout_ms {
                    o.limits.timeout_ms = timeout_ms;
                }
                o
            }),
        (_, _, Some(component)) => match serde_json::from_str(&args.config) {
            Ok(config) if component.is_dir() => kmsgw::scaffold::component_of(&component)
                .map_err(anyhow::Error::from)
                .and_then(|component| {
                    CheckOptions {
                        component,
                        config,
                        allowed_hosts: args.allow_host.clone(),
                        timeout: Duration::from_millis(args.timeout_ms.unwrap_or(2000)),
                        memory_bytes: args.memory_mb << 20,
                    }
                    .wasm_options()
                }),
            Ok(config) => CheckOptions {
                component,
                config,
                allowed_hosts: args.allow_host,
                timeout: Duration::from_millis(args.timeout_ms.unwrap_or(2000)),
                memory_bytes: args.memory_mb << 20,
            }
            .wasm_options(),
            Err(e) => Err(anyhow::anyhow!("--config is not JSON: {e}")),
        },
        _ => Err(anyhow::anyhow!(
            "give a component, or --kms-json and --provider"
        )),
    };
    let options = match options {
        Ok(options) => options,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match kmsgw::check::run(options).await {
        Ok(report) => {
            print!("{}", report.text);
            if report.ok() {
                println!("adapter check: all {} checks passed", report.passed);
                ExitCode::SUCCESS
            } else {
                println!(
                    "adapter check: {} of {} checks FAILED",
                    report.failed,
                    report.failed + report.passed
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let options = ServeOptions {
        config: args.config,
        listen: args.listen,
        data_dir: args.data_dir,
        database_url: args.database_url.map(SecretString::from),
        master_key: std::env::var("KMSGW_MASTER_KEY")
            .ok()
            .map(SecretString::from),
        insecure_no_auth: args.insecure_no_auth,
    };
    let result = match server::prepare(&options).await {
        Ok(prepared) => server::serve(prepared, shutdown_signal()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (StartError::Config(_) | StartError::Refused(_))) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the server");
                let _ = interrupt.await;
                return;
            }
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down; finishing in-flight requests");
}
