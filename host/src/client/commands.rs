//! The client commands: their arguments, the API calls they make and what they print.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use super::output::{fields, millis, progress, table, text};
use super::{Client, ClientError, exit, segment};

/// Where the gateway is and how to talk to it.
#[derive(Args)]
pub struct Connection {
    /// The gateway's base URL.
    #[arg(
        long,
        env = "KMSGW_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key's token (sent as `Authorization: Bearer`).
    #[arg(long, env = "KMSGW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the gateway's JSON answers instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

/// `kmsgw keys …`.
#[derive(Subcommand)]
pub enum KeysCommand {
    /// List keys: one page, or every key with --all.
    List {
        /// Follow every page.
        #[arg(long)]
        all: bool,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this kid (the `nextCursor` of a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Only keys that have not signed for this long (`30d`).
        #[arg(long)]
        unused_for: Option<String>,
    },
    /// Show one key: versions, rotation policy, certificate.
    Get { kid: String },
    /// Create a key.
    Create {
        /// The kid [default: a generated UUID].
        #[arg(long)]
        kid: Option<String>,
        /// ES256, ES384, ES512, EdDSA, Ed25519, RS256, PS256, ML-DSA-44/65/87.
        #[arg(long)]
        alg: Option<String>,
        /// The provider [default: the gateway's defaultProvider].
        #[arg(long)]
        provider: Option<String>,
        /// RSA modulus bits.
        #[arg(long)]
        key_size: Option<u32>,
        /// Rotate this long after each version became current (`90d`).
        #[arg(long)]
        rotate_every: Option<String>,
        /// Keep a replaced version published this long (`24h`).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Import a private JWK (from a file, or `-` for stdin) under KID.
    Import {
        kid: String,
        /// The private JWK's file.
        #[arg(long)]
        jwk: PathBuf,
        #[arg(long)]
        alg: Option<String>,
        #[arg(long)]
        provider: Option<String>,
    },
    /// Delete a key (with --force: retract it whatever its backend says).
    Delete {
        kid: String,
        #[arg(long)]
        force: bool,
    },
    /// Make a new current version of a key.
    Rotate { kid: String },
    /// Sign a message (or a digest, or every line of a file with --batch); prints
    /// the base64url signature(s).
    Sign {
        kid: String,
        #[command(flatten)]
        input: SignInput,
        /// Sign each line of this file (`-`: stdin), 1000 per request; one
        /// signature per line, in order.
        #[arg(long, conflicts_with_all = ["data", "file", "digest"])]
        batch: Option<PathBuf>,
    },
    /// Check a signature against a key's published versions; exit code 1 when invalid.
    Verify {
        kid: String,
        #[command(flatten)]
        input: SignInput,
        /// The signature, base64url.
        #[arg(long)]
        signature: String,
    },
}

/// The message a sign or verify is about.
#[derive(Args)]
pub struct SignInput {
    /// The message as text.
    #[arg(long, conflicts_with = "file")]
    data: Option<String>,
    /// The message's file (`-`: stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Instead of a message: its hash, hex.
    #[arg(long, conflicts_with_all = ["data", "file"])]
    digest: Option<String>,
}

/// `kmsgw certs …`.
#[derive(Subcommand)]
pub enum CertsCommand {
    /// A PKCS#10 request for the key's current version (PEM on stdout).
    Csr {
        kid: String,
        #[command(flatten)]
        names: Names,
    },
    /// Issue a certificate for the key: self-signed, or by --issuer's CA key.
    Issue {
        kid: String,
        #[command(flatten)]
        names: Names,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// The CA key.
        #[arg(long)]
        issuer: Option<String>,
        /// Make a CA certificate.
        #[arg(long)]
        ca: bool,
        /// RFC 5280 key usage (repeatable), e.g. `nonRepudiation`.
        #[arg(long = "key-usage")]
        key_usage: Vec<String>,
    },
    /// Attach a PEM chain (leaf first) to the key's current version.
    Import {
        kid: String,
        /// The PEM file (`-`: stdin).
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the current version's chain (PEM).
    Get { kid: String },
}

/// A certificate's names.
#[derive(Args)]
pub struct Names {
    /// RFC 4514 subject, e.g. `CN=issuer.example.org,O=Example`.
    #[arg(long)]
    subject: String,
    /// A DNS subject alternative name (repeatable).
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// A URI subject alternative name (repeatable).
    #[arg(long = "uri")]
    uris: Vec<String>,
}

/// `kmsgw audit …`.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// List audit records (admin scope).
    List {
        #[arg(long)]
        kid: Option<String>,
        /// create, import, delete, force-delete, sign, sign-digest, rotate, csr, …
        #[arg(long)]
        action: Option<String>,
        /// Records after this seq.
        #[arg(long)]
        after: Option<i64>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Follow every page.
        #[arg(long)]
        all: bool,
    },
    /// Verify the hash chain; exit code 1 when it is broken.
    Verify,
}

/// What a command prints, and its exit code.
pub struct Outcome {
    json: Value,
    human: String,
    code: u8,
}

impl Outcome {
    fn ok(json: Value, human: impl Into<String>) -> Outcome {
        Outcome {
            json,
            human: human.into(),
            code: exit::OK,
        }
    }
}

/// Runs a client command against the gateway `connection` names, printing the
/// answer and returning the exit code.
pub async fn run<F, Fut>(connection: Connection, command: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome, ClientError>>,
{
    let json = connection.json;
    let client = match Client::new(&connection.url, connection.token.map(SecretString::from)) {
        Ok(client) => client,
        Err(e) => return e.report(),
    };
    match command(client).await {
        Ok(outcome) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&outcome.json).unwrap_or_default()
                );
            } else if !outcome.human.is_empty() {
                print!("{}", outcome.human);
                if !outcome.human.ends_with('\n') {
                    println!();
                }
            }
            ExitCode::from(outcome.code)
        }
        Err(e) => e.report(),
    }
}

/// `kmsgw keys …`.
///
/// # Errors
/// [`ClientError`].
pub async fn keys(client: Client, command: KeysCommand) -> Result<Outcome, ClientError> {
    Ok(match command {
        KeysCommand::List {
            all,
            limit,
            cursor,
            unused_for,
        } => list_keys(&client, all, limit, cursor, unused_for).await?,
        KeysCommand::Get { kid } => {
            let key = client.get(&format!("/keys/{}", segment(&kid))).await?;
            let human = key_view(&key);
            Outcome::ok(key, human)
        }
        KeysCommand::Create {
            kid,
            alg,
            provider,
            key_size,
            rotate_every,
            grace,
        } => {
            let mut body = Map::new();
            put(&mut body, "kid", kid);
            put(&mut body, "alg", alg);
            put(&mut body, "provider", provider);
            if let Some(bits) = key_size {
                body.insert("keySize".into(), json!(bits));
            }
            if rotate_every.is_some() || grace.is_some() {
                let mut rotation = Map::new();
                put(&mut rotation, "every", rotate_every);
                put(&mut rotation, "grace", grace);
                body.insert("rotation".into(), Value::Object(rotation));
            }
            let key = client.post("/keys", &Value::Object(body)).await?;
            let human = format!("created {}\n{}", text(&key["kid"]), key_view(&key));
            Outcome::ok(key, human)
        }
        KeysCommand::Import {
            kid,
            jwk,
            alg,
            provider,
        } => {
            let jwk: Value = serde_json::from_slice(&read_input(&jwk)?).map_err(|e| {
                ClientError::Usage(format!("{}: not a JSON JWK: {e}", jwk.display()))
            })?;
            let mut body = Map::new();
            body.insert("privateJwk".into(), jwk);
            put(&mut body, "alg", alg);
            put(&mut body, "provider", provider);
            let key = client
                .post(
                    &format!("/keys/{}/import", segment(&kid)),
                    &Value::Object(body),
                )
                .await?;
            let human = format!("imported {}\n{}", text(&key["kid"]), key_view(&key));
            Outcome::ok(key, human)
        }
        KeysCommand::Delete { kid, force } => {
            let path = format!(
                "/keys/{}{}",
                segment(&kid),
                if force { "?force=true" } else { "" }
            );
            let answer = client.delete(&path).await?;
            let json = if answer.is_null() {
                json!({"deleted": kid})
            } else {
                answer
            };
            Outcome::ok(json, format!("deleted {kid}"))
        }
        KeysCommand::Rotate { kid } => {
            let key = client
                .post(&format!("/keys/{}/rotate", segment(&kid)), &json!({}))
                .await?;
            let human = format!(
                "{} is now at version {} ({})\n",
                text(&key["kid"]),
                text(&key["version"]),
                text(&key["jwkKid"])
            );
            Outcome::ok(key, human)
        }
        KeysCommand::Sign {
            kid,
            batch: Some(file),
            ..
        } => sign_lines(&client, &kid, &file).await?,
        KeysCommand::Sign {
            kid,
            input,
            batch: None,
        } => {
            let answer = client
                .post(&format!("/keys/{}/sign", segment(&kid)), &input.body()?)
                .await?;
            let human = text(&answer["signature"]);
            Outcome::ok(answer, human)
        }
        KeysCommand::Verify {
            kid,
            input,
            signature,
        } => {
            if input.digest.is_some() {
                return Err(ClientError::Usage(
                    "verify checks a message: give --data or --file".into(),
                ));
            }
            let mut body = input.body()?;
            body["signature"] = json!(signature);
            let answer = client
                .post(&format!("/keys/{}/verify", segment(&kid)), &body)
                .await?;
            let valid = answer["valid"] == true;
            Outcome {
                json: answer,
                human: if valid { "valid" } else { "invalid" }.into(),
                code: if valid { exit::OK } else { exit::NEGATIVE },
            }
        }
    })
}

async fn list_keys(
    client: &Client,
    all: bool,
    limit: u32,
    cursor: Option<String>,
    unused_for: Option<String>,
) -> Result<Outcome, ClientError> {
    let mut query = format!("/keys?limit={limit}");
    if let Some(unused) = &unused_for {
        query.push_str(&format!("&unusedFor={}", segment(unused)));
    }
    let (keys, next) = collect(
        client,
        &query,
        ("keys", "nextCursor", "cursor"),
        cursor,
        all,
    )
    .await?;
    let mut human = table(
        &[
            "KID",
            "ALG",
            "PROVIDER",
            "VERSION",
            "SIGNS",
            "LAST USED",
            "CREATED",
        ],
        &keys,
        |k| {
            vec![
                text(&k["kid"]),
                text(&k["alg"]),
                text(&k["provider"]),
                text(&k["version"]),
                text(&k["signCount"]),
                text(&k["lastUsedAt"]),
                text(&k["createdAt"]),
            ]
        },
    );
    human.push('\n');
    if let Some(next) = next.as_str() {
        human.push_str(&format!("more: --cursor {next} (or --all)\n"));
    }
    Ok(Outcome::ok(
        json!({"keys": keys, "nextCursor": next}),
        human,
    ))
}

/// The items of one page of `query`, or of every page from there with `all`
/// (with a progress counter). `fields` names the page's items, the field that
/// names the next page and the query parameter that asks for it; `start` is
/// that parameter's first value. Returns the items and the next page's name
/// (null after the last).
async fn collect(
    client: &Client,
    query: &str,
    (items_field, next_field, next_param): (&str, &str, &str),
    mut start: Option<String>,
    all: bool,
) -> Result<(Vec<Value>, Value), ClientError> {
    let bar = progress(None, items_field);
    let mut items = Vec::new();
    let next = loop {
        let url = match &start {
            Some(next) => format!("{query}&{next_param}={}", segment(next)),
            None => query.to_owned(),
        };
        let mut page = client.get(&url).await?;
        let Some(Value::Array(got)) = page.get_mut(items_field).map(Value::take) else {
            return Err(ClientError::Protocol {
                url,
                reason: format!("no `{items_field}` in the page"),
            });
        };
        bar.inc(got.len() as u64);
        items.extend(got);
        let next = page[next_field].take();
        start = match &next {
            Value::String(text) => Some(text.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        if !all || start.is_none() {
            break next;
        }
    };
    bar.finish_and_clear();
    Ok((items, next))
}

/// A key's record for a person: its fields, versions and certificate.
fn key_view(key: &Value) -> String {
    let mut pairs = vec![
        ("kid", text(&key["kid"])),
        ("provider", text(&key["provider"])),
        ("alg", text(&key["alg"])),
        ("version", text(&key["version"])),
        ("jwk kid", text(&key["jwkKid"])),
        ("created", text(&key["createdAt"])),
        ("signs", text(&key["signCount"])),
        ("last used", text(&key["lastUsedAt"])),
    ];
    if let Some(rotation) = key.get("rotation") {
        pairs.push(("rotates every", text(&rotation["every"])));
        pairs.push(("grace", text(&rotation["grace"])));
    }
    // The gateway describes the current version's leaf; nothing is parsed here.
    if let Some(certificate) = key.get("certificate") {
        pairs.push((
            "certificate",
            format!(
                "{}, expires {}",
                text(&certificate["subject"]),
                text(&certificate["notAfter"])
            ),
        ));
    }
    let mut out = fields(&pairs);
    if let Some(Value::Array(versions)) = key.get("versions") {
        out.push('\n');
        out.push_str(&table(
            &[
                "VERSION",
                "STATE",
                "JWK KID",
                "CREATED",
                "GRACE UNTIL",
                "CERTIFICATE",
            ],
            versions,
            |v| {
                vec![
                    text(&v["version"]),
                    text(&v["state"]),
                    text(&v["jwkKid"]),
                    text(&v["createdAt"]),
                    text(&v["graceUntil"]),
                    v["x5c"]
                        .as_array()
                        .map_or_else(|| "-".into(), |chain| format!("chain of {}", chain.len())),
                ]
            },
        ));
        out.push('\n');
    }
    out
}

fn put(map: &mut Map<String, Value>, name: &str, value: Option<String>) {
    if let Some(value) = value {
        map.insert(name.into(), Value::String(value));
    }
}

/// A file's bytes, or stdin's for `-`.
fn read_input(path: &Path) -> Result<Vec<u8>, ClientError> {
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .map_err(|e| ClientError::Usage(format!("cannot read stdin: {e}")))?;
        Ok(bytes)
    } else {
        std::fs::read(path)
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))
    }
}

impl SignInput {
    /// The request body: `{data}` or `{digest}`, base64.
    fn body(&self) -> Result<Value, ClientError> {
        match (&self.data, &self.file, &self.digest) {
            (Some(data), None, None) => Ok(json!({"data": STANDARD.encode(data)})),
            (None, Some(file), None) => Ok(json!({"data": STANDARD.encode(read_input(file)?)})),
            (None, None, Some(hex_digest)) => {
                let digest = hex::decode(hex_digest.trim())
                    .map_err(|e| ClientError::Usage(format!("--digest must be hex: {e}")))?;
                Ok(json!({"digest": STANDARD.encode(digest)}))
            }
            _ => Err(ClientError::Usage(
                "give the message with --data or --file, or its hash with --digest".into(),
            )),
        }
    }
}

/// Most messages in one batch request (the API's bound).
const BATCH: usize = 1000;

/// Signs every line of `file` in batches, with a progress bar.
async fn sign_lines(client: &Client, kid: &str, file: &Path) -> Result<Outcome, ClientError> {
    let bytes = read_input(file)?;
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    // A final newline ends the last line; it does not start an empty one.
    let lines = match lines.split_last() {
        Some((&[], rest)) => rest.to_vec(),
        _ => lines,
    };
    if lines.is_empty() {
        return Err(ClientError::Usage(format!(
            "{}: no lines to sign",
            file.display()
        )));
    }
    let bar = progress(Some(lines.len() as u64), "signed");
    let mut signatures = Vec::with_capacity(lines.len());
    let mut last = Value::Null;
    for chunk in lines.chunks(BATCH) {
        let data: Vec<String> = chunk.iter().map(|line| STANDARD.encode(line)).collect();
        let answer = client
            .post(
                &format!("/keys/{}/sign/batch", segment(kid)),
                &json!({"data": data}),
            )
            .await?;
        let Some(Value::Array(batch)) = answer.get("signatures") else {
            return Err(ClientError::Protocol {
                url: format!("/keys/{kid}/sign/batch"),
                reason: "no `signatures` in the answer".into(),
            });
        };
        signatures.extend(batch.iter().map(text));
        bar.inc(chunk.len() as u64);
        last = answer;
    }
    bar.finish_and_clear();
    let human = signatures.join("\n");
    Ok(Outcome::ok(
        json!({"kid": last["kid"], "alg": last["alg"], "version": last["version"],
               "jwkKid": last["jwkKid"], "signatures": signatures}),
        human,
    ))
}

/// `kmsgw certs …`.
///
/// # Errors
/// [`ClientError`].
pub async fn certs(client: Client, command: CertsCommand) -> Result<Outcome, ClientError> {
    Ok(match command {
        CertsCommand::Csr { kid, names } => {
            let answer = client
                .post(&format!("/keys/{}/csr", segment(&kid)), &names.body())
                .await?;
            let human = text(&answer["csr"]);
            Outcome::ok(answer, human)
        }
        CertsCommand::Issue {
            kid,
            names,
            days,
            issuer,
            ca,
            key_usage,
        } => {
            let mut body = names.body();
            body["validityDays"] = json!(days);
            body["ca"] = json!(ca);
            if let Some(issuer) = issuer {
                body["issuerKid"] = json!(issuer);
            }
            if !key_usage.is_empty() {
                body["keyUsage"] = json!(key_usage);
            }
            let key = client
                .post(&format!("/keys/{}/certificate/issue", segment(&kid)), &body)
                .await?;
            let human = key_view(&key);
            Outcome::ok(key, human)
        }
        CertsCommand::Import { kid, file } => {
            let pem = String::from_utf8(read_input(&file)?)
                .map_err(|_| ClientError::Usage(format!("{}: not PEM text", file.display())))?;
            let key = client
                .post(
                    &format!("/keys/{}/certificate", segment(&kid)),
                    &json!({"certificate": pem}),
                )
                .await?;
            let human = key_view(&key);
            Outcome::ok(key, human)
        }
        CertsCommand::Get { kid } => {
            let answer = client
                .get(&format!("/keys/{}/certificate", segment(&kid)))
                .await?;
            let pem = text(&answer);
            Outcome::ok(json!({"kid": kid, "pem": pem}), pem)
        }
    })
}

impl Names {
    fn body(&self) -> Value {
        json!({"subject": self.subject, "dnsNames": self.dns_names, "uris": self.uris})
    }
}

/// `kmsgw audit …`.
///
/// # Errors
/// [`ClientError`].
pub async fn audit(client: Client, command: AuditCommand) -> Result<Outcome, ClientError> {
    Ok(match command {
        AuditCommand::List {
            kid,
            action,
            after,
            limit,
            all,
        } => {
            let mut query = format!("/audit?limit={limit}");
            if let Some(kid) = &kid {
                query.push_str(&format!("&kid={}", segment(kid)));
            }
            if let Some(action) = &action {
                query.push_str(&format!("&action={}", segment(action)));
            }
            let start = after.map(|seq| seq.to_string());
            let (records, next) = collect(
                &client,
                &query,
                ("records", "nextAfter", "after"),
                start,
                all,
            )
            .await?;
            let mut human = table(
                &[
                    "SEQ", "TIME", "API KEY", "TENANT", "ACTION", "KID", "PROVIDER", "OUTCOME",
                ],
                &records,
                |r| {
                    vec![
                        text(&r["seq"]),
                        millis(&r["time"]),
                        text(&r["apiKey"]),
                        text(&r["tenant"]),
                        text(&r["action"]),
                        text(&r["kid"]),
                        text(&r["provider"]),
                        text(&r["outcome"]),
                    ]
                },
            );
            human.push('\n');
            if let Some(next) = next.as_i64() {
                human.push_str(&format!("more: --after {next} (or --all)\n"));
            }
            Outcome::ok(json!({"records": records, "nextAfter": next}), human)
        }
        AuditCommand::Verify => {
            let verdict = client.get("/audit/verify").await?;
            let ok = verdict["ok"] == true;
            let human = if ok {
                format!(
                    "audit chain intact: {} records checked",
                    text(&verdict["checked"])
                )
            } else {
                format!(
                    "audit chain BROKEN at seq {} ({} records checked)",
                    text(&verdict["firstBadSeq"]),
                    text(&verdict["checked"])
                )
            };
            Outcome {
                json: verdict,
                human,
                code: if ok { exit::OK } else { exit::NEGATIVE },
            }
        }
    })
}

/// `kmsgw providers`: each provider, with its health when the API key may see it.
///
/// # Errors
/// [`ClientError`].
pub async fn providers(client: Client) -> Result<Outcome, ClientError> {
    let providers = client.get("/providers").await?;
    // Health is an admin matter; a narrower key still sees the providers.
    let health = match client.get("/health/kms").await {
        Ok(health) => Some(health),
        Err(ClientError::Api { status, .. }) if status == StatusCode::FORBIDDEN => None,
        Err(e) => return Err(e),
    };
    let health_of = |id: &Value| {
        health.as_ref().and_then(|all| {
            all.as_array()?
                .iter()
                .find(|line| line["providerId"] == *id)
                .cloned()
        })
    };
    let items: Vec<Value> = providers
        .as_array()
        .map(|all| {
            all.iter()
                .map(|p| {
                    let mut p = p.clone();
                    if let Some(line) = health_of(&p["id"]) {
                        p["health"] = line;
                    }
                    p
                })
                .collect()
        })
        .unwrap_or_default();
    let mut human = table(
        &["ID", "TYPE", "ADAPTER", "ALGORITHMS", "HEALTH", "LATENCY"],
        &items,
        |p| {
            let algs = p["capabilities"]["supportedAlgs"]
                .as_array()
                .map(|algs| algs.iter().map(text).collect::<Vec<_>>().join(" "))
                .unwrap_or_default();
            let health = match p.get("health") {
                None => "-".into(),
                Some(h) if h["ok"] == true => "ok".into(),
                Some(h) => format!("down: {}", text(&h["error"])),
            };
            vec![
                text(&p["id"]),
                text(&p["type"]),
                text(&p["adapter"]),
                algs,
                health,
                p.get("health")
                    .map_or_else(|| "-".into(), |h| format!("{} ms", text(&h["latencyMs"]))),
            ]
        },
    );
    human.push('\n');
    if health.is_none() {
        human.push_str("(health needs an API key with the admin scope)\n");
    }
    Ok(Outcome::ok(Value::Array(items), human))
}

/// `kmsgw health`: whether the gateway is ready (`GET /ready`); exit code 1 when not.
///
/// # Errors
/// [`ClientError`].
pub async fn health(client: Client) -> Result<Outcome, ClientError> {
    let answer = client
        .call_accepting(Method::GET, "/ready", None, StatusCode::SERVICE_UNAVAILABLE)
        .await?;
    let ready = answer.status == StatusCode::OK && answer.body["ready"] == true;
    let mut human = if ready { "ready\n" } else { "not ready\n" }.to_owned();
    if let Some(waiting) = answer.body["waitingFor"].as_array() {
        for line in waiting {
            human.push_str(&format!(
                "  waiting for {}: {}\n",
                text(&line["providerId"]),
                text(&line["error"])
            ));
        }
    }
    Ok(Outcome {
        json: answer.body,
        human,
        code: if ready { exit::OK } else { exit::NEGATIVE },
    })
}
