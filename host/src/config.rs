//! `kms.json`: the typed configuration and its loader.
//!
//! EUDIPLO's files load unchanged (`defaultProvider`, `providers[]`); kmsgw adds the
//! optional `server` and `database` sections and the `wasm` provider type. Loading
//! parses JSON, expands `${VAR}` placeholders inside string values, then decodes each
//! section strictly, collecting every problem with its JSON path before failing.

mod component;
pub mod env;
mod reference;

pub use component::{ComponentSource, SHIPPED_ADAPTERS, Shipped};
pub use reference::{OciReference, is_loopback, valid_digest};

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use url::Url;

pub use crate::crypto::publisher::PublisherKey;

/// The whole configuration.
#[derive(Debug)]
pub struct Config {
    /// The provider used when a create or import names none.
    pub default_provider: String,
    /// The providers, in file order.
    pub providers: Vec<ProviderEntry>,
    /// The `server` section.
    pub server: ServerConfig,
    /// The `database` section.
    pub database: DatabaseConfig,
    /// The `auth` section: API keys; none means loopback-only, unauthenticated.
    pub auth: AuthConfig,
    /// The `audit` section.
    pub audit: AuditConfig,
    /// The `usage` section: key usage tracking.
    pub usage: UsageConfig,
    /// The `scheduler` section: rotations and grace periods.
    pub scheduler: SchedulerConfig,
    /// The `adapters` section: guest components given a type name.
    pub adapters: std::collections::BTreeMap<String, AdapterDef>,
    /// The `cache` section: how many keys are held in memory.
    pub cache: CacheConfig,
    /// The `csc` section: the Cloud Signature Consortium API.
    pub csc: CscConfig,
    /// The `seal` section: where the master key lives.
    pub seal: SealConfig,
}

/// The `seal` section: what wraps the master key (see README, "Master key custody").
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum SealConfig {
    /// The master key in the data directory's `master.key` (or `KMSGW_MASTER_KEY`).
    #[default]
    File,
    /// An `aes256-gcm96` key of Vault (or OpenBao) Transit.
    VaultTransit(VaultTransitSeal),
    /// A symmetric (`SYMMETRIC_DEFAULT`) AWS KMS key.
    AwsKms(AwsKmsSeal),
    /// An AES key on a PKCS#11 token.
    Pkcs11(Pkcs11Seal),
}

/// `seal.type: "vault-transit"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultTransitSeal {
    pub address: Url,
    #[serde(default = "default_transit_mount")]
    pub mount: String,
    pub key: String,
    pub token: SecretString,
}

/// `seal.type: "aws-kms"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsKmsSeal {
    pub key_id: String,
    pub region: String,
    pub endpoint: Option<Url>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
}

impl AwsKmsSeal {
    /// The client settings, as an `aws-kms` provider entry would give them.
    pub fn client_config(&self) -> AwsKmsConfig {
        AwsKmsConfig {
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            endpoint: self.endpoint.clone(),
        }
    }
}

/// `seal.type: "pkcs11"`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pkcs11Seal {
    pub module: PathBuf,
    pub slot: Option<u64>,
    pub token_label: Option<String>,
    pub pin: SecretString,
    pub key_label: String,
}

impl Pkcs11Seal {
    /// The slot: by index or by its token's label.
    pub fn slot(&self) -> Option<Pkcs11Slot> {
        match (&self.slot, &self.token_label) {
            (Some(index), None) => Some(Pkcs11Slot::Index(*index)),
            (None, Some(label)) => Some(Pkcs11Slot::Label(label.clone())),
            _ => None,
        }
    }
}

/// One `adapters` entry: the component a named guest type runs, and what it
/// must prove before it runs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdapterDef {
    pub component: ComponentSource,
    pub sha256: Option<String>,
    /// Publishers whose signature the component must carry (one suffices).
    #[serde(default)]
    pub public_keys: Vec<PublisherKey>,
    /// Accept an `oci://` reference without a digest (resolved at each start).
    #[serde(default)]
    pub allow_unpinned: bool,
    /// Credentials for the registry of an `oci://` component.
    pub registry_auth: Option<RegistryAuth>,
}

impl AdapterDef {
    /// A shipped guest's definition: the component alone.
    fn shipped(component: ComponentSource) -> Self {
        AdapterDef {
            component,
            sha256: None,
            public_keys: Vec::new(),
            allow_unpinned: false,
            registry_auth: None,
        }
    }
}

/// `registryAuth`: how the gateway authenticates to a guest's registry. The
/// guest never sees it, and the registry's host is not thereby allowed to it.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RegistryAuth {
    Basic(BasicAuth),
    Bearer(BearerAuth),
}

/// `{type: "basic", username, password}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password: SecretString,
}

/// Checks what a guest's source allows: a pinned reference unless
/// `allowUnpinned`, and registry fields only for `oci://` components.
fn check_source(
    component: &ComponentSource,
    allow_unpinned: bool,
    registry_auth: bool,
    path: &str,
    problems: &mut Vec<Problem>,
) {
    match component {
        ComponentSource::Oci(reference) if reference.digest.is_none() && !allow_unpinned => {
            problem(
                problems,
                format!("{path}.component"),
                format!(
                    "`{reference}` is not pinned: add @sha256:… (`kmsgw adapter push` prints it), or set allowUnpinned: true"
                ),
            )
        }
        ComponentSource::Oci(_) => {}
        _ => {
            for (given, name) in [
                (allow_unpinned, "allowUnpinned"),
                (registry_auth, "registryAuth"),
            ] {
                if given {
                    problem(
                        problems,
                        format!("{path}.{name}"),
                        "only for an oci:// component",
                    );
                }
            }
        }
    }
}

/// A duration as kms.json and the API write them: `30s`, `12h`, `7d`, `1h 30m`.
pub fn span(text: &str) -> Option<std::time::Duration> {
    humantime::parse_duration(text).ok()
}

// Their kms.json names, the decoder of provider entries and the lists that
// errors show all come from this one enum, so a new type fails to compile until
// each is given. (The doc line below is also the OpenAPI schema's description.)
/// The closed set of provider types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Db,
    Vault,
    AwsKms,
    Pkcs11,
    Http,
    Wasm,
}

impl ProviderKind {
    /// Every built-in type, in the order errors list them.
    pub const ALL: [ProviderKind; 6] = [
        ProviderKind::Db,
        ProviderKind::Vault,
        ProviderKind::AwsKms,
        ProviderKind::Pkcs11,
        ProviderKind::Http,
        ProviderKind::Wasm,
    ];

    /// The `type` value of this kind in kms.json.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Db => "db",
            ProviderKind::Vault => "vault",
            ProviderKind::AwsKms => "aws-kms",
            ProviderKind::Pkcs11 => "pkcs11",
            ProviderKind::Http => "http",
            ProviderKind::Wasm => "wasm",
        }
    }

    /// The built-in type named `name` in kms.json, if any.
    pub fn parse(name: &str) -> Option<ProviderKind> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// Where shipped adapters are read from instead of the binary: `$KMSGW_ADAPTER_DIR`
/// when set (relative to the working directory).
pub fn shipped_adapter_dir(lookup: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    lookup("KMSGW_ADAPTER_DIR").map(|dir| {
        let dir = PathBuf::from(dir);
        match std::env::current_dir() {
            Ok(cwd) if dir.is_relative() => cwd.join(dir),
            _ => dir,
        }
    })
}

/// One entry of `providers`.
#[derive(Debug)]
pub struct ProviderEntry {
    pub id: String,
    pub description: Option<String>,
    pub config: ProviderConfig,
    /// The SHA-256 (hex) of the entry as written, placeholders expanded: tells a
    /// reload whether it changed, without keeping its secrets in plain text.
    pub fingerprint: String,
}

/// The type-specific part of a provider entry; closed: third parties extend through `wasm`.
#[derive(Debug)]
pub enum ProviderConfig {
    Db(DbConfig),
    Vault(VaultConfig),
    AwsKms(AwsKmsConfig),
    Pkcs11(Pkcs11Config),
    Http(HttpConfig),
    Wasm(WasmConfig),
}

impl ProviderConfig {
    /// The provider type this entry configures.
    pub fn kind(&self) -> ProviderKind {
        match self {
            ProviderConfig::Db(_) => ProviderKind::Db,
            ProviderConfig::Vault(_) => ProviderKind::Vault,
            ProviderConfig::AwsKms(_) => ProviderKind::AwsKms,
            ProviderConfig::Pkcs11(_) => ProviderKind::Pkcs11,
            ProviderConfig::Http(_) => ProviderKind::Http,
            ProviderConfig::Wasm(_) => ProviderKind::Wasm,
        }
    }
}

/// `type: "db"`: keys sealed in the gateway database. No fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbConfig {}

/// `type: "vault"`: HashiCorp Vault (or OpenBao) Transit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultConfig {
    pub vault_url: Url,
    pub vault_token: SecretString,
    #[serde(default = "default_transit_mount")]
    pub mount: String,
}

fn default_transit_mount() -> String {
    "transit".into()
}

/// `type: "aws-kms"`: AWS KMS or a stand-in at `endpoint`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsKmsConfig {
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<SecretString>,
    pub endpoint: Option<Url>,
}

/// `type: "pkcs11"`: an HSM through its PKCS#11 library.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Pkcs11Config {
    pub library: PathBuf,
    pub slot: Pkcs11Slot,
    pub pin: SecretString,
    #[serde(default)]
    pub read_only: bool,
    /// Sessions kept open, and PKCS#11 calls in flight at once (default 4).
    pub sessions: Option<u32>,
}

/// A PKCS#11 slot: by index among the slots holding an initialised token, or by
/// the label of the token in it.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Pkcs11Slot {
    Index(u64),
    Label(String),
}

/// `type: "http"`: a remote KMS speaking the seed's HTTP contract.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpConfig {
    pub base_url: Url,
    /// Shorthand for `auth: {type: "bearer", token}`.
    pub api_key: Option<SecretString>,
    pub auth: Option<HttpAuth>,
    pub keys_path: Option<String>,
    pub health_path: Option<String>,
    #[serde(default)]
    pub can_import: bool,
    /// The algorithms the remote service signs with (default: ES256 only, the
    /// seed contract's); the first is the default for new keys.
    pub algs: Option<Vec<crate::crypto::Alg>>,
    /// Connect timeout in milliseconds (default 2000).
    pub connect_timeout_ms: Option<u64>,
    /// Whole-request timeout in milliseconds (default 10000).
    pub timeout_ms: Option<u64>,
}

/// How the `http` provider authenticates to the remote service.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HttpAuth {
    None(NoAuth),
    Bearer(BearerAuth),
    Oauth2ClientCredentials(OAuth2Auth),
    Mtls(MtlsAuth),
}

/// `auth: {type: "none"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoAuth {}

/// `auth: {type: "bearer", token}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerAuth {
    pub token: SecretString,
}

/// `auth: {type: "oauth2-client-credentials", tokenUrl, clientId, clientSecret, scope?}`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuth2Auth {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scope: Option<String>,
}

/// `{type: "google-service-account", credentialsFile, scope?}`: a service-account
/// key JSON whose key signs the token request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GoogleServiceAccountAuth {
    pub credentials_file: PathBuf,
    pub scope: Option<String>,
}

/// `auth: {type: "mtls", certFile, keyFile, caFile?}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsAuth {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: Option<PathBuf>,
}

/// `type: "wasm"`: a guest adapter component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WasmConfig {
    pub component: ComponentSource,
    pub sha256: Option<String>,
    /// Publishers whose signature the component must carry (one suffices).
    #[serde(default)]
    pub public_keys: Vec<PublisherKey>,
    /// Accept an `oci://` reference without a digest.
    #[serde(default)]
    pub allow_unpinned: bool,
    /// Credentials for the registry of an `oci://` component.
    pub registry_auth: Option<RegistryAuth>,
    pub config: Option<Value>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    pub limits: Option<WasmLimits>,
    /// Credentials the host adds to the guest's requests, per destination.
    #[serde(default)]
    pub egress_auth: Vec<EgressAuth>,
    /// The named guest type the entry was written as (`azure-kv`, …); `None` for `wasm`.
    #[serde(skip)]
    pub adapter: Option<String>,
    /// The key id of the publisher whose signature was verified (set when vetted).
    #[serde(skip)]
    pub publisher: Option<String>,
}

/// One `egressAuth` item: the host sets `Authorization` on the guest's requests
/// to `host` (which is thereby allowed) with a token it holds.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressAuth {
    pub host: String,
    #[serde(flatten)]
    pub kind: EgressAuthKind,
}

/// The kinds of credentials `egressAuth` holds.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum EgressAuthKind {
    Bearer(BearerAuth),
    Oauth2ClientCredentials(OAuth2Auth),
    GoogleServiceAccount(GoogleServiceAccountAuth),
}

/// Per-guest resource limits; each absent field keeps its default
/// (`providers::wasm::limits::GuestLimits`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WasmLimits {
    pub memory_mb: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub generate_timeout_ms: Option<u64>,
    pub instances: Option<u32>,
    pub storage_bytes: Option<u64>,
    pub storage_entries: Option<u64>,
    pub log_line_bytes: Option<u64>,
    pub log_lines_per_second: Option<u32>,
    pub http_request_bytes: Option<u64>,
    pub http_response_bytes: Option<u64>,
    pub http_concurrent: Option<u32>,
    pub resources: Option<u32>,
}

/// The optional `server` section; command-line flags and environment win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
    /// Largest accepted request body in bytes (default 1 MiB).
    pub max_body_bytes: Option<usize>,
    /// Serve the web console at `/ui` (default false).
    #[serde(default)]
    pub ui: bool,
}

/// The optional `database` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`; default: SQLite in the data directory.
    pub url: Option<SecretString>,
}

/// The optional `auth` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthConfig {
    /// The API keys clients present as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
}

/// One API key: an id for the audit log, the token (or its SHA-256), what it may
/// do, and the tenant whose keys it works on (none: the keys outside every tenant).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeyConfig {
    pub id: String,
    pub token: Option<SecretString>,
    /// Hex SHA-256 of the token, so kms.json need not hold the token itself.
    pub token_sha256: Option<String>,
    pub scopes: Vec<Scope>,
    pub tenant: Option<String>,
}

/// What an API key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
pub enum Scope {
    /// `GET /keys`, `GET /keys/{kid}`, the JWKS, `GET /providers`.
    #[serde(rename = "keys:read")]
    KeysRead,
    /// Making keys and what belongs to them: `POST /keys`, rotation (`POST
    /// /keys/{kid}/rotate`, `PUT /keys/{kid}/rotation`), CSRs and certificates.
    #[serde(rename = "keys:create")]
    KeysCreate,
    /// `POST /keys/{kid}/import`.
    #[serde(rename = "keys:import")]
    KeysImport,
    /// `DELETE /keys/{kid}`.
    #[serde(rename = "keys:delete")]
    KeysDelete,
    /// `POST /keys/{kid}/sign`.
    #[serde(rename = "sign")]
    Sign,
    /// Everything, including the audit log, provider health and metrics.
    #[serde(rename = "admin")]
    Admin,
}

/// The optional `audit` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Whether operations are recorded at all (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How sign records are written (default `batched`).
    #[serde(default)]
    pub signs: SignAudit,
    /// Records that may wait for the writer in memory (default 65536); when
    /// that many wait, a sign waits for room and is then refused.
    #[serde(default = "default_audit_queue")]
    pub queue_records: usize,
}

fn default_audit_queue() -> usize {
    64 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: true,
            signs: SignAudit::default(),
            queue_records: default_audit_queue(),
        }
    }
}

/// The optional `usage` section: counting signs per key (`signCount`, `lastUsedAt`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UsageConfig {
    /// Whether signs are counted (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How often counts are written to the database, in ms (default 5000); a
    /// crash loses at most this much of the count.
    #[serde(default = "default_usage_flush_ms")]
    pub flush_ms: u64,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig {
            enabled: true,
            flush_ms: default_usage_flush_ms(),
        }
    }
}

/// The optional `cache` section. Key records and decrypted `db` keys are held in
/// memory after their first use; past `keys` of each, the least recently used
/// go first and are read again from the database when next needed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheConfig {
    /// The most keys held (default 10 000; about 2 KiB each for a P-256 key,
    /// measured, more for RSA).
    #[serde(default = "default_cache_keys")]
    pub keys: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            keys: default_cache_keys(),
        }
    }
}

fn default_cache_keys() -> usize {
    10_000
}

/// The optional `csc` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CscConfig {
    /// How long a SAD from `credentials/authorize` may be used (`2m` when absent; 1 s to 1 h).
    pub sad_lifetime: Option<String>,
}

impl CscConfig {
    /// The SAD lifetime: 2 minutes by default.
    ///
    /// # Errors
    /// A message when `sadLifetime` is not a duration from 1 s to 1 h.
    pub fn sad_lifetime(&self) -> Result<std::time::Duration, String> {
        use std::time::Duration;
        match &self.sad_lifetime {
            None => Ok(Duration::from_secs(120)),
            Some(text) => span(text)
                .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(d))
                .ok_or_else(|| format!("`{text}` is not a duration from 1s to 1h")),
        }
    }
}

/// The optional `scheduler` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    /// How often due rotations and ended grace periods are looked for (`60s` when absent).
    pub interval: Option<String>,
}

impl SchedulerConfig {
    /// The interval: 60 s by default.
    ///
    /// # Errors
    /// A message when `interval` is not a positive duration.
    pub fn interval(&self) -> Result<std::time::Duration, String> {
        match &self.interval {
            None => Ok(std::time::Duration::from_secs(60)),
            Some(text) => span(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| format!("`{text}` is not a positive duration like 30s, 5m or 1h")),
        }
    }
}

fn default_usage_flush_ms() -> u64 {
    5000
}

fn yes() -> bool {
    true
}

/// How sign records reach the audit log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignAudit {
    /// Answer at once; the record is committed with others within a few
    /// milliseconds (a crash can lose the records of the last moments' signs).
    #[default]
    Batched,
    /// Answer only after the record is committed (group commit: one transaction
    /// for every sign waiting at that moment).
    Durable,
}

/// One thing wrong with a configuration, at a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Syntax {
        path: String,
        source: serde_json::Error,
    },
    #[error("{source_name} is invalid:\n{}", list(.problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads the process environment, for [`Config::load`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// The configuration used when there is no file: one `db` provider named `db`.
    pub fn single_db() -> Config {
        Config {
            default_provider: "db".into(),
            providers: vec![ProviderEntry {
                id: "db".into(),
                description: Some("Keys sealed in the gateway database".into()),
                config: ProviderConfig::Db(DbConfig {}),
                fingerprint: "built-in db".into(),
            }],
            server: ServerConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            usage: UsageConfig::default(),
            scheduler: SchedulerConfig::default(),
            adapters: std::collections::BTreeMap::new(),
            cache: CacheConfig::default(),
            csc: CscConfig::default(),
            seal: SealConfig::default(),
        }
    }

    /// Loads and validates the file at `path`, expanding placeholders through `lookup`.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem found.
    pub fn load(
        path: &Path,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown, lookup)
    }

    /// Parses and validates configuration text; `source_name` names it in errors.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem found.
    pub fn parse(
        text: &str,
        source_name: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut root: Value = serde_json::from_str(text).map_err(|source| ConfigError::Syntax {
            path: source_name.to_owned(),
            source,
        })?;
        let mut problems = Vec::new();
        let mut placeholder_problems = Vec::new();
        env::expand(&mut root, "", lookup, &mut placeholder_problems);
        for problem in placeholder_problems {
            problems.push(match problem {
                env::PlaceholderProblem::Unset { path, var } => Problem {
                    path,
                    message: format!("environment variable `{var}` is not set and has no default"),
                },
                env::PlaceholderProblem::Malformed { path, detail } => Problem {
                    path,
                    message: format!("bad placeholder: {detail}"),
                },
            });
        }
        let config = decode_root(root, lookup, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                source_name: source_name.to_owned(),
                problems,
            }),
        }
    }
}

fn problem(problems: &mut Vec<Problem>, path: impl Into<String>, message: impl Into<String>) {
    problems.push(Problem {
        path: path.into(),
        message: message.into(),
    });
}

/// Decodes `value` as `T`, recording a problem at the exact JSON path on failure.
fn typed<T: DeserializeOwned>(value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let inner = err.path().to_string();
            let full = match (path.is_empty(), inner.as_str()) {
                (_, ".") => path.to_owned(),
                (true, inner) => inner.to_owned(),
                (false, inner) if inner.starts_with('[') => format!("{path}{inner}"),
                (false, inner) => format!("{path}.{inner}"),
            };
            problem(problems, full, err.into_inner().to_string());
            None
        }
    }
}

fn decode_root(
    root: Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let Value::Object(mut map) = root else {
        problem(problems, "", "the configuration must be a JSON object");
        return None;
    };
    let adapters = map
        .remove("adapters")
        .map(|value| decode_adapters(value, problems))
        .unwrap_or_default();
    let types = GuestTypes {
        adapters: &adapters,
        shipped_dir: shipped_adapter_dir(lookup),
    };
    let mut default_provider = None;
    let mut providers = None;
    let mut server = ServerConfig::default();
    let mut database = DatabaseConfig::default();
    let mut auth = AuthConfig::default();
    let mut audit = AuditConfig::default();
    let mut usage = UsageConfig::default();
    let mut scheduler = SchedulerConfig::default();
    let mut cache = CacheConfig::default();
    let mut csc = CscConfig::default();
    let mut seal = SealConfig::default();
    for (key, value) in map {
        match key.as_str() {
            "defaultProvider" => default_provider = typed::<String>(value, &key, problems),
            "providers" => providers = Some(decode_providers(value, &types, problems)),
            "server" => server = typed(value, &key, problems).unwrap_or_default(),
            "database" => database = typed(value, &key, problems).unwrap_or_default(),
            "auth" => auth = typed(value, &key, problems).unwrap_or_default(),
            "audit" => audit = typed(value, &key, problems).unwrap_or_default(),
            "usage" => usage = typed(value, &key, problems).unwrap_or_default(),
            "scheduler" => scheduler = typed(value, &key, problems).unwrap_or_default(),
            "cache" => cache = typed(value, &key, problems).unwrap_or_default(),
            "csc" => csc = typed(value, &key, problems).unwrap_or_default(),
            "seal" => seal = typed(value, &key, problems).unwrap_or_default(),
            "$schema" => {}
            other => problem(
                problems,
                other,
                "unknown field; expected one of `defaultProvider`, `providers`, `adapters`, `server`, `database`, `auth`, `audit`, `usage`, `scheduler`, `cache`, `csc`, `seal`",
            ),
        }
    }
    let providers = match providers {
        Some(list) if !list.is_empty() => list,
        Some(_) | None => Config::single_db().providers,
    };
    let mut seen = HashSet::new();
    for (i, entry) in providers.iter().enumerate() {
        if !seen.insert(entry.id.as_str()) {
            problem(
                problems,
                format!("providers[{i}].id"),
                format!("duplicate provider id `{}`", entry.id),
            );
        }
    }
    let default_provider = default_provider.unwrap_or_else(|| "db".into());
    if !providers.iter().any(|p| p.id == default_provider) {
        problem(
            problems,
            "defaultProvider",
            format!("`{default_provider}` names no provider in `providers`"),
        );
    }
    check_api_keys(&auth, problems);
    if usage.flush_ms == 0 {
        problem(problems, "usage.flushMs", "must be greater than zero");
    }
    if let Err(message) = scheduler.interval() {
        problem(problems, "scheduler.interval", message);
    }
    if cache.keys == 0 {
        problem(problems, "cache.keys", "must be greater than zero");
    }
    if let Err(message) = csc.sad_lifetime() {
        problem(problems, "csc.sadLifetime", message);
    }
    if audit.queue_records == 0 {
        problem(problems, "audit.queueRecords", "must be greater than zero");
    }
    if let SealConfig::Pkcs11(pkcs11) = &seal
        && pkcs11.slot().is_none()
    {
        problem(
            problems,
            "seal",
            "give exactly one of `slot` and `tokenLabel`",
        );
    }
    Some(Config {
        default_provider,
        providers,
        server,
        database,
        auth,
        audit,
        usage,
        scheduler,
        adapters,
        cache,
        csc,
        seal,
    })
}

/// The named guest types a configuration can use.
struct GuestTypes<'a> {
    adapters: &'a std::collections::BTreeMap<String, AdapterDef>,
    shipped_dir: Option<PathBuf>,
}

impl GuestTypes<'_> {
    /// The definition of guest type `name`, if it is one.
    fn component(&self, name: &str) -> Option<AdapterDef> {
        if let Some(def) = self.adapters.get(name) {
            return Some(def.clone());
        }
        ComponentSource::shipped(name, self.shipped_dir.as_deref()).map(AdapterDef::shipped)
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = SHIPPED_ADAPTERS
            .iter()
            .map(|shipped| shipped.name.to_owned())
            .chain(self.adapters.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn decode_adapters(
    value: Value,
    problems: &mut Vec<Problem>,
) -> std::collections::BTreeMap<String, AdapterDef> {
    let Value::Object(entries) = value else {
        problem(
            problems,
            "adapters",
            "must be an object of type name → {component, sha256?}",
        );
        return std::collections::BTreeMap::new();
    };
    let mut adapters = std::collections::BTreeMap::new();
    for (name, entry) in entries {
        let path = format!("adapters.{name}");
        if ProviderKind::parse(&name).is_some() {
            problem(
                problems,
                path,
                format!("`{name}` is a built-in provider type; give the adapter another name"),
            );
        } else if !valid_provider_id(&name) {
            problem(
                problems,
                path,
                "a type name is 1 to 64 letters, digits, `.`, `_` or `-`",
            );
        } else if let Some(def) = typed::<AdapterDef>(entry, &path, problems) {
            check_source(
                &def.component,
                def.allow_unpinned,
                def.registry_auth.is_some(),
                &path,
                problems,
            );
            adapters.insert(name, def);
        }
    }
    adapters
}

/// A provider entry of a named guest type: `allowedHosts`, `limits` and
/// `egressAuth` are the host's; every other field is the guest's config.
fn decode_named(
    name: &str,
    def: AdapterDef,
    mut map: Map<String, Value>,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<WasmConfig> {
    let before = problems.len();
    let mut field = |key: &str| {
        map.remove(key)
            .map(|value| (format!("{path}.{key}"), value))
    };
    let allowed_hosts = field("allowedHosts")
        .and_then(|(at, value)| typed::<Vec<String>>(value, &at, problems))
        .unwrap_or_default();
    let limits = field("limits").and_then(|(at, value)| typed::<WasmLimits>(value, &at, problems));
    let egress_auth = field("egressAuth")
        .and_then(|(at, value)| typed::<Vec<EgressAuth>>(value, &at, problems))
        .unwrap_or_default();
    for reserved in [
        "component",
        "sha256",
        "config",
        "publicKeys",
        "allowUnpinned",
        "registryAuth",
    ] {
        if map.contains_key(reserved) {
            problem(
                problems,
                format!("{path}.{reserved}"),
                format!(
                    "a `{name}` entry takes its fields directly; `{reserved}` belongs to `wasm` entries and `adapters`"
                ),
            );
        }
    }
    (problems.len() == before).then(|| WasmConfig {
        component: def.component,
        sha256: def.sha256,
        public_keys: def.public_keys,
        allow_unpinned: def.allow_unpinned,
        registry_auth: def.registry_auth,
        config: Some(Value::Object(map)),
        allowed_hosts,
        limits,
        egress_auth,
        adapter: Some(name.to_owned()),
        publisher: None,
    })
}

/// A tenant name: 1 to 64 letters, digits, `_` or `-` (never `~`, which joins a
/// tenant to a kid inside the gateway).
pub fn valid_tenant(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

fn check_api_keys(auth: &AuthConfig, problems: &mut Vec<Problem>) {
    let mut ids = HashSet::new();
    for (i, key) in auth.api_keys.iter().enumerate() {
        let path = format!("auth.apiKeys[{i}]");
        if key.id.is_empty() || !ids.insert(key.id.as_str()) {
            problem(
                problems,
                format!("{path}.id"),
                format!("`{}` is empty or used twice", key.id),
            );
        }
        match (&key.token, &key.token_sha256) {
            (Some(token), None) if token.expose_secret().len() >= 16 => {}
            (Some(_), None) => problem(
                problems,
                format!("{path}.token"),
                "must be at least 16 characters (use a random token)",
            ),
            (None, Some(hash))
                if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {}
            (None, Some(_)) => problem(
                problems,
                format!("{path}.tokenSha256"),
                "must be 64 hex digits",
            ),
            _ => problem(
                problems,
                path.clone(),
                "give exactly one of `token` and `tokenSha256`",
            ),
        }
        if key.scopes.is_empty() {
            problem(
                problems,
                format!("{path}.scopes"),
                "give at least one scope",
            );
        }
        if let Some(tenant) = &key.tenant
            && !valid_tenant(tenant)
        {
            problem(
                problems,
                format!("{path}.tenant"),
                format!(
                    "`{tenant}` is not a valid tenant: use 1 to 64 letters, digits, `_` or `-`"
                ),
            );
        }
    }
}

fn decode_providers(
    value: Value,
    types: &GuestTypes<'_>,
    problems: &mut Vec<Problem>,
) -> Vec<ProviderEntry> {
    let Value::Array(items) = value else {
        problem(
            problems,
            "providers",
            "must be an array of provider entries",
        );
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| decode_provider(item, &format!("providers[{i}]"), types, problems))
        .collect()
}

fn take_string(
    map: &mut Map<String, Value>,
    key: &str,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        Some(other) => {
            problem(
                problems,
                format!("{path}.{key}"),
                format!("must be a string, not {other}"),
            );
            None
        }
        None => None,
    }
}

fn decode_provider(
    item: Value,
    path: &str,
    types: &GuestTypes<'_>,
    problems: &mut Vec<Problem>,
) -> Option<ProviderEntry> {
    let fingerprint = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        item.to_string().as_bytes(),
    ));
    let Value::Object(mut map) = item else {
        problem(problems, path, "a provider entry must be a JSON object");
        return None;
    };
    let before = problems.len();
    let id = take_string(&mut map, "id", path, problems);
    let kind = take_string(&mut map, "type", path, problems);
    let description = take_string(&mut map, "description", path, problems);
    let id = match id {
        Some(id) if valid_provider_id(&id) => Some(id),
        Some(id) => {
            problem(
                problems,
                format!("{path}.id"),
                format!("`{id}` is not a valid id: use 1 to 64 letters, digits, `.`, `_` or `-`"),
            );
            None
        }
        None if problems.len() == before => {
            problem(problems, format!("{path}.id"), "missing field `id`");
            None
        }
        None => None,
    };
    if let Some(name) = kind.as_deref()
        && ProviderKind::parse(name).is_none()
        && let Some(def) = types.component(name)
    {
        let config = decode_named(name, def, map, path, problems);
        return Some(ProviderEntry {
            id: id?,
            description,
            config: ProviderConfig::Wasm(config?),
            fingerprint,
        });
    }
    let rest = Value::Object(map);
    let config = match kind
        .as_deref()
        .map(|name| (name, ProviderKind::parse(name)))
    {
        Some((_, Some(kind))) => decode_built_in(kind, rest, path, problems),
        Some((other, None)) => {
            problem(
                problems,
                format!("{path}.type"),
                format!(
                    "unknown provider type `{other}`; expected one of {}, or a guest type: {} (add others under `adapters`)",
                    quoted(ProviderKind::ALL.iter().map(|k| k.as_str().to_owned())),
                    quoted(types.names().into_iter()),
                ),
            );
            None
        }
        None => {
            problem(problems, format!("{path}.type"), "missing field `type`");
            None
        }
    };
    Some(ProviderEntry {
        id: id?,
        description,
        config: config?,
        fingerprint,
    })
}

/// The type-specific fields of an entry of built-in type `kind`.
fn decode_built_in(
    kind: ProviderKind,
    rest: Value,
    path: &str,
    problems: &mut Vec<Problem>,
) -> Option<ProviderConfig> {
    match kind {
        ProviderKind::Db => typed(rest, path, problems).map(ProviderConfig::Db),
        ProviderKind::Vault => typed(rest, path, problems).map(ProviderConfig::Vault),
        ProviderKind::AwsKms => typed(rest, path, problems).map(ProviderConfig::AwsKms),
        ProviderKind::Pkcs11 => typed(rest, path, problems).map(ProviderConfig::Pkcs11),
        ProviderKind::Http => typed::<HttpConfig>(rest, path, problems).and_then(|http| {
            if http.api_key.is_some() && http.auth.is_some() {
                problem(
                    problems,
                    format!("{path}.apiKey"),
                    "give either `apiKey` or `auth`, not both",
                );
                None
            } else {
                Some(ProviderConfig::Http(http))
            }
        }),
        ProviderKind::Wasm => typed::<WasmConfig>(rest, path, problems).map(|wasm| {
            check_source(
                &wasm.component,
                wasm.allow_unpinned,
                wasm.registry_auth.is_some(),
                path,
                problems,
            );
            ProviderConfig::Wasm(wasm)
        }),
    }
}

fn quoted(names: impl Iterator<Item = String>) -> String {
    names
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_provider_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests;
