//! Guests from a registry: components pushed to a real OCI registry (Debian's
//! `docker-registry`, distribution 2.8, on loopback) by `kmsgw adapter push` and
//! by the `oras` client, pulled by digest, checked against their publishers'
//! keys and served; the cache carries a restart without the registry; what a
//! guest asks for is weighed against what its entry grants; registry
//! credentials stay with the host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kmsgw_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::cloud::Recorder;
use super::guests::sign_data;
use super::integrity::Tmpfs;

/// How a test registry authenticates its clients.
enum Auth<'a> {
    None,
    /// HTTP Basic, from an htpasswd file.
    Htpasswd(&'a str, &'a str),
    /// Distribution's token auth, with tokens from this issuer.
    Token(&'a TokenIssuer),
}

/// The test's token issuer (tests/standins/registry_token_issuer.py) for a
/// registry with `auth: token`.
struct TokenIssuer {
    child: Child,
    port: u16,
    cert: PathBuf,
    issued: PathBuf,
}

const TOKEN_SERVICE: &str = "kmsgw-test-registry";
const TOKEN_ISSUER: &str = "kmsgw-test-issuer";

impl TokenIssuer {
    fn start(dir: &Path, user: &str, password: &str) -> TokenIssuer {
        let port_file = dir.join("token-issuer.port");
        let cert = dir.join("token-issuer.pem");
        let issued = dir.join("token-issuer.issued");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("standins/registry_token_issuer.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--port-file", port_file.to_str().unwrap()])
            .args(["--cert-out", cert.to_str().unwrap()])
            .args(["--issued", issued.to_str().unwrap()])
            .args(["--service", TOKEN_SERVICE, "--issuer", TOKEN_ISSUER])
            .args(["--user", user, "--password", password])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                break text.trim().parse().unwrap();
            }
            assert!(Instant::now() < deadline, "the token issuer did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        TokenIssuer {
            child,
            port,
            cert,
            issued,
        }
    }

    /// Every token issued so far.
    fn issued(&self) -> Vec<String> {
        std::fs::read_to_string(&self.issued)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for TokenIssuer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `docker-registry` on a free loopback port, storing under `dir`.
struct Registry {
    child: Option<Child>,
    port: u16,
    root: PathBuf,
}

impl Registry {
    /// Starts a registry that authenticates as `auth` says.
    fn start(dir: &Path, name: &str, auth: Auth) -> Registry {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let root = home.join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            root.display()
        );
        if let Auth::Token(issuer) = auth {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                issuer.port,
                issuer.cert.display()
            ));
        }
        if let Auth::Htpasswd(user, password) = auth {
            let line = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils)");
            assert!(line.status.success());
            std::fs::write(home.join("htpasswd"), line.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kmsgw-test\n    path: {}\n",
                home.join("htpasswd").display()
            ));
        }
        std::fs::write(home.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(home.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(home.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child: Some(child),
            port,
            root,
        }
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `oci://` reference `repository:tag` in this registry.
    fn reference(&self, path: &str) -> String {
        format!("oci://{}/{path}", self.authority())
    }

    /// Where the registry keeps the blob with `digest`.
    fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err(),
            "the registry is gone"
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `kmsgw ARGS`: its stdout on success, else its stderr.
fn kmsgw(args: &[&str], env: &[(&str, &str)]) -> Result<String, String> {
    let output = Command::new(kmsgw_bin())
        .args(args)
        .env_remove("KMSGW_REGISTRY_USERNAME")
        .env_remove("KMSGW_REGISTRY_PASSWORD")
        .env_remove("KMSGW_REGISTRY_TOKEN")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// A publisher's key pair from `kmsgw adapter keygen`.
struct Publisher {
    key: PathBuf,
    public: PathBuf,
    jwk: Value,
}

impl Publisher {
    fn new(dir: &Path, name: &str) -> Publisher {
        let key = dir.join(format!("{name}.pem"));
        let said = kmsgw(&["adapter", "keygen", "--out", key.to_str().unwrap()], &[]).unwrap();
        let jwk = said
            .lines()
            .find_map(|line| line.strip_prefix("for kms.json \"publicKeys\": "))
            .map(|list| serde_json::from_str::<Value>(list).unwrap()[0].clone())
            .unwrap_or_else(|| panic!("keygen prints the JWK: {said}"));
        Publisher {
            key,
            public: dir.join(format!("{name}.pub.pem")),
            jwk,
        }
    }

    /// `component` signed by this publisher, written to `out`.
    fn sign(&self, component: &Path, out: &Path) -> PathBuf {
        kmsgw(
            &[
                "adapter",
                "sign",
                component.to_str().unwrap(),
                "--key",
                self.key.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        )
        .unwrap();
        out.to_owned()
    }
}

/// `kmsgw adapter inspect SOURCE --public-key KEY`, parsed.
fn inspect(source: &str, key: &Path) -> Value {
    let said = kmsgw(
        &[
            "adapter",
            "inspect",
            source,
            "--public-key",
            key.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    serde_json::from_str(&said).unwrap()
}

/// `kmsgw adapter push`: the pinned reference it prints.
fn push(component: &Path, reference: &str, env: &[(&str, &str)]) -> Result<String, String> {
    kmsgw(
        &["adapter", "push", component.to_str().unwrap(), reference],
        env,
    )
    .map(|out| out.trim().to_owned())
}

/// The `sha256:…` of a file.
fn digest(path: &Path) -> String {
    format!("sha256:{}", sha256_hex(path))
}

fn oras(script: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "oras: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Pushes `component` with the `oras` Python client, in the wasm artifact layout.
fn oras_push(registry: &Registry, target: &str, component: &Path, dir: &Path) -> String {
    let config = dir.join("wasm-config.json");
    std::fs::write(&config, r#"{"architecture":"wasm","os":"wasip2"}"#).unwrap();
    let digest = oras(
        "import sys, oras.client\n\
         c = oras.client.OrasClient(insecure=True)\n\
         r = c.push(target=sys.argv[1], files=[sys.argv[2] + ':application/wasm'],\n\
                    manifest_config=sys.argv[3] + ':application/vnd.wasm.config.v0+json',\n\
                    disable_path_validation=True)\n\
         print(r.headers['Docker-Content-Digest'])",
        &[
            &format!("{}/{target}", registry.authority()),
            component.to_str().unwrap(),
            config.to_str().unwrap(),
        ],
    );
    format!("{}@{digest}", registry.reference(target))
}

/// Starts a gateway with `config`, which must refuse it; returns its stderr.
fn refused_start(site: &Site, config: &Value) -> String {
    let kms_json = site.write_config(config);
    let output = site
        .command(&["--config", kms_json.to_str().unwrap()], &[])
        .output()
        .unwrap();
    assert!(!output.status.success(), "started with {config}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn sign_verified(gw: &Gateway, kid: &str, jwk: &Value, message: &[u8]) {
    let signature = gw.sign(kid, message).await;
    assert_verifies(jwk, message, &signature);
}

fn soft_signer_adapter(component: &str, publisher: &Publisher) -> Value {
    json!({"soft-signer": {"component": component, "publicKeys": [publisher.jwk]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_guest_from_a_registry_is_pulled_by_digest_served_and_cached() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let mut registry = Registry::start(dir, "registry", Auth::None);
    let publisher = Publisher::new(dir, "publisher");
    let signed = publisher.sign(&guest("soft_signer"), &dir.join("soft.wasm"));

    // kmsgw pushes; the digest it prints is the manifest the registry serves.
    let tagged = registry.reference("kmsgw/soft-signer:1.0");
    let pinned = push(&signed, &tagged, &[]).unwrap();
    let manifest = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/kmsgw/soft-signer/manifests/1.0",
            registry.authority()
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(pinned, format!("{tagged}@sha256:{}", sha256_of(&manifest)));
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(manifest["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(
        manifest["layers"][0]["digest"].as_str().unwrap(),
        digest(&signed)
    );

    // The layouts interoperate: oras pulls what kmsgw pushed, kmsgw runs what oras pushed.
    let pulled_dir = dir.join("oras-pull");
    oras(
        "import sys, oras.client\n\
         oras.client.OrasClient(insecure=True).pull(target=sys.argv[1], outdir=sys.argv[2])",
        &[
            &format!("{}/kmsgw/soft-signer:1.0", registry.authority()),
            pulled_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(pulled_dir.join("soft.wasm")).unwrap(),
        std::fs::read(&signed).unwrap()
    );
    // …signed by a key openssl made (SEC1 `EC PRIVATE KEY`), trusted by its PEM public key.
    let openssl_key = dir.join("openssl-p256.pem");
    let openssl_public = dir.join("openssl-p256.pub");
    for args in [
        vec![
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            openssl_key.to_str().unwrap(),
        ],
        vec![
            "ec",
            "-in",
            openssl_key.to_str().unwrap(),
            "-pubout",
            "-out",
            openssl_public.to_str().unwrap(),
        ],
    ] {
        assert!(
            Command::new("openssl")
                .args(&args)
                .output()
                .unwrap()
                .status
                .success()
        );
    }
    let by_openssl = dir.join("by-openssl.wasm");
    kmsgw(
        &[
            "adapter",
            "sign",
            guest("soft_signer").to_str().unwrap(),
            "--key",
            openssl_key.to_str().unwrap(),
            "--out",
            by_openssl.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    let by_oras = oras_push(&registry, "kmsgw/by-oras:1", &by_openssl, dir);
    let openssl_id =
        inspect(&by_openssl.to_string_lossy(), &openssl_public)["verified"]["keyId"].clone();
    assert!(openssl_id.is_string(), "{openssl_id}");

    // inspect: the signature, checked against the publisher's public key.
    let report = inspect(&pinned, &publisher.public);
    assert_eq!(report["component"], pinned.as_str());
    assert_eq!(report["verified"]["valid"], true, "{report}");
    assert_eq!(report["signatures"]["keyIds"].as_array().unwrap().len(), 1);
    assert_eq!(report["capabilities"], Value::Null);

    let config = json!({
        "defaultProvider": "db",
        "adapters": soft_signer_adapter(&pinned, &publisher),
        "providers": [
            {"id": "db", "type": "db"},
            {"id": "soft", "type": "soft-signer"},
            {"id": "oras", "type": "wasm", "component": by_oras,
             "publicKeys": [std::fs::read_to_string(&openssl_public).unwrap()]},
        ]
    });
    let kms_json = site.write_config(&config);
    let gw = site.start_with(&["--config", kms_json.to_str().unwrap()], &[]);
    let mut keys = Vec::new();
    for provider in ["soft", "oras"] {
        let kid = format!("{provider}-key");
        let key = gw.create(json!({"kid": kid, "provider": provider})).await;
        sign_verified(&gw, &kid, &key["publicJwk"], b"from the registry").await;
        keys.push((kid, key["publicJwk"].clone()));
    }
    let log = gw.log_text();
    assert_eq!(log.matches("pulled a guest component").count(), 2, "{log}");
    assert_eq!(log.matches("publisher signature verified").count(), 2);
    // Operators see which digest runs and whose signature it carries.
    let (_, providers) = gw.get("/providers").await;
    assert_eq!(providers[1]["component"], pinned.as_str(), "{providers}");
    assert_eq!(providers[2]["component"], by_oras.as_str());
    assert_eq!(providers[1]["publisher"], report["verified"]["keyId"]);
    assert_eq!(providers[2]["publisher"], openssl_id);
    gw.stop();

    // An air-gapped host: its data directory filled by `kmsgw adapter pull` ahead of time.
    let airgapped = Site::new(Db::Sqlite).await;
    let pulled = kmsgw(
        &[
            "adapter",
            "pull",
            "--config",
            kms_json.to_str().unwrap(),
            "--data-dir",
            airgapped.data_dir().to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(pulled.lines().count(), 2, "{pulled}");
    assert!(
        pulled.contains(&pinned) && pulled.contains(&by_oras),
        "{pulled}"
    );

    // The registry goes away; the next start runs from the cache.
    registry.stop();
    let gw = airgapped.start_with(&["--config", kms_json.to_str().unwrap()], &[]);
    let key = gw.create(json!({"kid": "air", "provider": "soft"})).await;
    sign_verified(&gw, "air", &key["publicJwk"], b"air-gapped").await;
    assert!(!gw.log_text().contains("pulled a guest component"));
    gw.stop();
    // A cached component changed on disk is not run: it would be pulled again,
    // and with the registry gone the start is refused.
    let cached = airgapped
        .data_dir()
        .join("oci/blobs/sha256")
        .join(&digest(&signed)[7..]);
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&cached, bytes).unwrap();
    let stderr = refused_start(&airgapped, &config);
    assert!(
        stderr.contains("adapters.soft-signer.component") && stderr.contains("is unreachable"),
        "{stderr}"
    );
    let gw = site.start_with(&["--config", kms_json.to_str().unwrap()], &[]);
    for (kid, jwk) in &keys {
        sign_verified(&gw, kid, jwk, b"registry gone").await;
    }
    let fresh = gw
        .create(json!({"kid": "after-restart", "provider": "soft"}))
        .await;
    sign_verified(&gw, "after-restart", &fresh["publicJwk"], b"cached").await;
    let log = gw.log_text();
    assert!(!log.contains("pulled a guest component"), "{log}");
    assert_eq!(log.matches("publisher signature verified").count(), 2);
    // `adapter check` runs an oci:// entry as the gateway would, from the same cache.
    let checked = kmsgw(
        &[
            "adapter",
            "check",
            "--kms-json",
            kms_json.to_str().unwrap(),
            "--provider",
            "soft",
            "--data-dir",
            site.data_dir().to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    assert!(checked.contains("checks passed"), "{checked}");
    // The cache is an OCI layout, by digest.
    let cached = site
        .data_dir()
        .join("oci/blobs/sha256")
        .join(&digest(&signed)[7..]);
    assert_eq!(
        std::fs::read(cached).unwrap(),
        std::fs::read(&signed).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_mispinned_unsigned_and_foreign_components_are_refused_at_start_and_on_reload() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let mut registry = Registry::start(dir, "registry", Auth::None);
    let publisher = Publisher::new(dir, "publisher");
    let stranger = Publisher::new(dir, "stranger");
    let soft = guest("soft_signer");
    let good_file = publisher.sign(&soft, &dir.join("good.wasm"));
    let good = push(&good_file, &registry.reference("kmsgw/good:1"), &[]).unwrap();
    let unsigned = push(&soft, &registry.reference("kmsgw/unsigned:1"), &[]).unwrap();
    let foreign_file = stranger.sign(&soft, &dir.join("foreign.wasm"));
    let foreign = push(&foreign_file, &registry.reference("kmsgw/foreign:1"), &[]).unwrap();
    // Signed by both (so other bytes than `good`), then one byte changed in the registry's store.
    let both = stranger.sign(&good_file, &dir.join("both.wasm"));
    let tampered = push(&both, &registry.reference("kmsgw/tampered:1"), &[]).unwrap();
    let blob = registry.blob_file(&digest(&both));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let mispinned = format!(
        "{}@sha256:{}",
        registry.reference("kmsgw/good:1"),
        "0".repeat(64)
    );
    let unpinned = registry.reference("kmsgw/good:1");

    let config_with = |component: &str, unpinned_ok: bool| {
        let mut adapters = soft_signer_adapter(component, &publisher);
        if unpinned_ok {
            adapters["soft-signer"]["allowUnpinned"] = json!(true);
        }
        json!({
            "defaultProvider": "db",
            "adapters": adapters,
            "providers": [{"id": "db", "type": "db"}, {"id": "soft", "type": "soft-signer"}]
        })
    };
    let refusals = [
        (&tampered, "the component layer of"),
        (&mispinned, "has no manifest sha256:000"),
        (&unsigned, "is not signed"),
        (&foreign, "no signature on the component is valid"),
        (&unpinned, "is not pinned"),
    ];
    for (component, says) in refusals {
        let stderr = refused_start(&site, &config_with(component, false));
        assert!(
            stderr.contains("adapters.soft-signer.component") && stderr.contains(says),
            "{component}: {stderr}"
        );
    }
    // The tampered layer's digest is named, as is what it should have been.
    assert!(
        !site
            .data_dir()
            .join("oci/blobs/sha256")
            .join(&digest(&both)[7..])
            .exists()
    );

    let kms_json = site.write_config(&config_with(&good, false));
    let gw = site.start_with(&["--config", kms_json.to_str().unwrap()], &[]);
    let key = gw.create(json!({"kid": "k", "provider": "soft"})).await;
    for (component, says) in refusals {
        site.write_config(&config_with(component, false));
        let (status, refused) = gw.post("/admin/reload", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{component}: {refused}");
        assert_eq!(refused["code"], "invalid_config");
        assert!(
            refused["error"].as_str().unwrap().contains(says),
            "{component}: {refused}"
        );
        sign_verified(&gw, "k", &key["publicJwk"], component.as_bytes()).await;
    }
    let (_, providers) = gw.get("/providers").await;
    assert_eq!(providers.as_array().unwrap().len(), 2, "{providers}");

    // An unpinned reference the entry allows: resolved, and the digest logged.
    site.write_config(&config_with(&unpinned, true));
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let digest_of_good = good.rsplit_once('@').unwrap().1;
    assert!(
        gw.log_text()
            .lines()
            .any(|l| l.contains("an unpinned guest component resolved")
                && l.contains(digest_of_good)),
        "{}",
        gw.log_text()
    );
    sign_verified(&gw, "k", &key["publicJwk"], b"unpinned").await;
    // With the registry gone, the digest it resolved to last serves (with a warning).
    registry.stop();
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(gw.log_text().contains(
        "the registry is unreachable; running the digest this reference resolved to last"
    ));
    sign_verified(&gw, "k", &key["publicJwk"], b"unpinned, registry gone").await;
}

/// A copy of the hostile guest declaring `hosts` (and no credentials or
/// storage), built by `kmsgw adapter build` from its kmsgw-adapter.toml.
fn declared_guest(dir: &Path, hosts: &[String]) -> PathBuf {
    let project = dir.join("declared");
    std::fs::create_dir_all(&project).unwrap();
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    std::fs::write(
        project.join("kmsgw-adapter.toml"),
        format!(
            "name = \"declared\"\nwit = \"0.4.0\"\nbuild = \"cp '{}' declared.wasm\"\noutput = \"declared.wasm\"\n\n[capabilities]\nhosts = [{}]\ncredentials = false\n",
            guest("hostile").display(),
            hosts.join(", ")
        ),
    )
    .unwrap();
    let built = kmsgw(&["adapter", "build", project.to_str().unwrap()], &[]).unwrap();
    PathBuf::from(built.trim())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_reaches_only_what_it_asked_for_and_was_granted() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let (granted, asked, never) = (Recorder::start(), Recorder::start(), Recorder::start());
    let host = |r: &Recorder| format!("127.0.0.1:{}", r.port);
    let component = declared_guest(dir, &[host(&granted), host(&asked)]);
    let report: Value = serde_json::from_str(
        &kmsgw(&["adapter", "inspect", component.to_str().unwrap()], &[]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        report["capabilities"],
        json!({"hosts": [host(&granted), host(&asked)], "storage": null, "credentials": false})
    );

    let entry = |extra: Value| {
        let mut entry = json!({"id": "declared", "type": "wasm", "component": component});
        entry
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"defaultProvider": "db", "providers": [{"id": "db", "type": "db"}, entry]})
    };
    let gw = site.start_configured(&entry(json!({"allowedHosts": [host(&granted)]})));
    assert!(
        gw.log_text().contains(&format!(
            "the component asks to reach {} but the entry does not grant it",
            host(&asked)
        )),
        "{}",
        gw.log_text()
    );
    gw.create(json!({"kid": "h", "provider": "declared"})).await;
    let egress = |r: &Recorder| format!("egress:http://{}/reach", host(r));
    let (_, body) = sign_data(&gw, "h", egress(&granted).as_bytes()).await;
    assert!(
        body["error"].as_str().unwrap().contains("status 200"),
        "{body}"
    );
    let (status, body) = sign_data(&gw, "h", egress(&asked).as_bytes()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("HttpRequestDenied")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(granted.seen.lock().unwrap().len(), 1);
    assert!(
        asked.seen.lock().unwrap().is_empty(),
        "an ungranted host was reached"
    );

    // Granting what the guest never asked for is refused, at start and on reload.
    let over_grants = [
        (
            json!({"allowedHosts": [host(&granted), host(&never)]}),
            "providers[1].allowedHosts[1]",
        ),
        (
            json!({"egressAuth": [{"host": host(&granted), "type": "bearer", "token": "t0ken-for-a"}]}),
            "providers[1].egressAuth[0]",
        ),
    ];
    for (extra, path) in over_grants {
        let stderr = refused_start(&site, &entry(extra));
        assert!(stderr.contains(path), "{stderr}");
        let (status, refused) = gw.post("/admin/reload", json!({})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        assert!(
            refused["error"].as_str().unwrap().contains(path),
            "{refused}"
        );
        assert!(
            refused["error"]
                .as_str()
                .unwrap()
                .contains("never asked for")
                || refused["error"]
                    .as_str()
                    .unwrap()
                    .contains("does not ask for credentials"),
            "{refused}"
        );
    }
    assert!(never.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_reach_neither_the_guest_nor_the_log() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let password = format!(
        "registry-{}",
        random_master_key().replace(['/', '+', '='], "")
    );
    let registry = Registry::start(dir, "private", Auth::Htpasswd("alice", &password));
    let basic = STANDARD.encode(format!("alice:{password}"));
    let reference = registry.reference("kmsgw/hostile:1");

    let refused = push(&guest("hostile"), &reference, &[]).unwrap_err();
    assert!(refused.contains("asks for credentials"), "{refused}");
    let creds = [
        ("KMSGW_REGISTRY_USERNAME", "alice"),
        ("KMSGW_REGISTRY_PASSWORD", password.as_str()),
    ];
    let pinned = push(&guest("hostile"), &reference, &creds).unwrap();

    let recorder = Recorder::start();
    let config = |secret: &str| {
        json!({"defaultProvider": "db", "providers": [
            {"id": "db", "type": "db"},
            {"id": "h", "type": "wasm", "component": pinned,
             "registryAuth": {"type": "basic", "username": "alice", "password": secret},
             "config": {"purpose": "dump what you see"},
             "allowedHosts": [format!("127.0.0.1:{}", recorder.port), registry.authority()]},
        ]})
    };
    // A wrong password: refused, and the error names neither password.
    let stderr = refused_start(&site, &config("not-the-password"));
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");

    let kms_json = site.write_config(&config("${REGISTRY_PASSWORD}"));
    let gw = site.start_with(
        &["--config", kms_json.to_str().unwrap()],
        &[("REGISTRY_PASSWORD", &password)],
    );
    gw.create(json!({"kid": "h1", "provider": "h"})).await;
    // The guest may reach the registry, but the host adds no credentials for it.
    let probe = format!("egress:http://{}/v2/", registry.authority());
    let (_, body) = sign_data(&gw, "h1", probe.as_bytes()).await;
    assert!(
        body["error"].as_str().unwrap().contains("status 401"),
        "{body}"
    );
    // Everything the guest can see, sent to a recorder.
    let dump = format!("dump:http://127.0.0.1:{}/probe", recorder.port);
    let (_, body) = sign_data(&gw, "h1", dump.as_bytes()).await;
    assert!(body["error"].as_str().unwrap().contains("dumped"), "{body}");
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen[1].1.contains("dump what you see"),
        "the dump holds the config"
    );
    for (head, body) in &seen {
        for secret in [password.as_str(), basic.as_str()] {
            assert!(
                !head.contains(secret) && !body.contains(secret),
                "the guest saw it"
            );
        }
    }
    let log = gw.log_text();
    assert!(log.contains("pulled a guest component"));
    assert!(!log.contains(&password) && !log.contains(&basic));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_token_auth_gets_the_credentials_at_its_token_endpoint() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let password = format!("token-{}", random_master_key().replace(['/', '+', '='], ""));
    let issuer = TokenIssuer::start(dir, "bob", &password);
    let registry = Registry::start(dir, "tokens", Auth::Token(&issuer));
    let reference = registry.reference("kmsgw/soft-signer:2");

    let refused = push(&guest("soft_signer"), &reference, &[]).unwrap_err();
    assert!(
        refused.contains("asks for credentials (Bearer)"),
        "{refused}"
    );
    let pinned = push(
        &guest("soft_signer"),
        &reference,
        &[
            ("KMSGW_REGISTRY_USERNAME", "bob"),
            ("KMSGW_REGISTRY_PASSWORD", password.as_str()),
        ],
    )
    .unwrap();
    let pushed_with = issuer.issued();
    assert!(
        !pushed_with.is_empty(),
        "the push went through the token endpoint"
    );

    let config = |secret: &str| {
        json!({"defaultProvider": "db", "providers": [
            {"id": "db", "type": "db"},
            {"id": "soft", "type": "wasm", "component": pinned,
             "registryAuth": {"type": "basic", "username": "bob", "password": secret}},
        ]})
    };
    let stderr = refused_start(&site, &config("wrong-password"));
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    let kms_json = site.write_config(&config("${REGISTRY_PASSWORD}"));
    let gw = site.start_with(
        &["--config", kms_json.to_str().unwrap()],
        &[("REGISTRY_PASSWORD", &password)],
    );
    let key = gw.create(json!({"kid": "t", "provider": "soft"})).await;
    sign_verified(&gw, "t", &key["publicJwk"], b"token auth").await;
    let tokens = issuer.issued();
    assert!(
        tokens.len() > pushed_with.len(),
        "the gateway got a token too"
    );
    let log = gw.log_text();
    assert!(log.contains("pulled a guest component"));
    assert!(!log.contains(&password));
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a registry token in the log");
    }
}

/// One answer of [`hostile_registry`].
struct Answer {
    status: &'static str,
    headers: String,
    body: Vec<u8>,
}

fn ok(body: Vec<u8>) -> Answer {
    Answer {
        status: "200 OK",
        headers: String::new(),
        body,
    }
}

/// A registry that lies: it answers each path with a fixed status line, extra
/// headers and body, whatever they are (`{port}` in the headers is its port).
fn hostile_registry(answers: Vec<(String, Answer)>) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(stream);
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let answer = answers
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map(|(_, answer)| answer);
            let stream = reader.get_mut();
            let _ = match answer {
                Some(answer) => stream
                    .write_all(
                        format!(
                            "HTTP/1.1 {}\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\n{}content-length: {}\r\nconnection: close\r\n\r\n",
                            answer.status,
                            answer.headers.replace("{port}", &port.to_string()),
                            answer.body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| stream.write_all(&answer.body)),
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                ),
            };
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_registry_cannot_make_the_gateway_hold_more_than_it_declared() {
    let dir = tempfile::tempdir().unwrap();
    let layer = |size: u64, digest: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
            "layers": [{"mediaType": "application/wasm", "digest": digest, "size": size}],
        }))
        .unwrap()
    };
    let blob_digest = format!("sha256:{}", "b".repeat(64));
    let liar = layer(10, &blob_digest);
    let huge = layer(300 << 20, &blob_digest);
    let big = vec![b' '; 2 << 20];
    // A Bearer challenge whose token endpoint answers 128 KiB.
    let challenge = Answer {
        status: "401 Unauthorized",
        headers:
            "www-authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"liar\"\r\n"
                .into(),
        body: Vec::new(),
    };
    let token = format!("{{\"token\": \"{}\"}}", "t".repeat(128 << 10));
    let port = hostile_registry(vec![
        ("/v2/liar/manifests/".into(), ok(liar.clone())),
        ("/v2/liar/blobs/".into(), ok(vec![0x61; 1 << 20])),
        ("/v2/huge/manifests/".into(), ok(huge.clone())),
        ("/v2/big/manifests/".into(), ok(big.clone())),
        ("/v2/tokens/".into(), challenge),
        ("/token".into(), ok(token.into_bytes())),
    ]);
    let pinned = |repo: &str, bytes: &[u8]| {
        format!(
            "oci://127.0.0.1:{port}/{repo}:1@sha256:{}",
            sha256_of(bytes)
        )
    };
    for (reference, says) in [
        (
            pinned("liar", &liar),
            "sent more than the 10 bytes expected",
        ),
        (pinned("huge", &huge), "the most kmsgw pulls is 268435456"),
        (
            pinned("big", &big),
            "sent more than the 1048576 bytes expected",
        ),
        (
            pinned("tokens", &liar),
            "sent more than the 65536 bytes expected",
        ),
    ] {
        let refused = kmsgw(
            &[
                "adapter",
                "pull",
                &reference,
                "--data-dir",
                dir.path().to_str().unwrap(),
            ],
            &[],
        )
        .unwrap_err();
        assert!(refused.contains(says), "{reference}: {refused}");
    }
    let blobs = dir.path().join("oci/blobs/sha256");
    assert!(!blobs.exists() || std::fs::read_dir(blobs).unwrap().next().is_none());
}

/// A pull onto a full disk: the reload is refused saying so, nothing half-written
/// stays in the cache, the running providers go on (and a guest from a file
/// still loads, uncached), and once there is room the same reload works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_onto_a_full_disk_is_refused_and_heals() {
    let site = Site::new(Db::Sqlite).await;
    let dir = site.dir.path();
    let registry = Registry::start(dir, "registry", Auth::None);
    let pinned = push(
        &guest("soft_signer"),
        &registry.reference("kmsgw/soft:1"),
        &[],
    )
    .unwrap();
    let disk = Tmpfs::mount(&site.data_dir(), "24m");
    let db_only = json!({"defaultProvider": "db", "providers": [{"id": "db", "type": "db"}]});
    let kms_json = site.write_config(&db_only);
    let gw = site.start_with(&["--config", kms_json.to_str().unwrap()], &[]);
    let key = gw.create(json!({"kid": "before"})).await;
    let filler = disk.fill();

    let with_guest = json!({"defaultProvider": "db", "providers": [
        {"id": "db", "type": "db"},
        {"id": "soft", "type": "wasm", "component": pinned},
    ]});
    site.write_config(&with_guest);
    let (status, refused) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.contains("providers[1].component")
            && error.contains("cannot write the component cache"),
        "{refused}"
    );
    let left: Vec<PathBuf> = files_under(&site.data_dir().join("oci"));
    assert!(left.is_empty(), "half-written cache entries: {left:?}");
    sign_verified(&gw, "before", &key["publicJwk"], b"full disk").await;
    // A guest from a file still loads: its compiled form runs from memory.
    site.write_config(&json!({"defaultProvider": "db", "providers": [
        {"id": "db", "type": "db"},
        {"id": "file", "type": "wasm", "component": guest("soft_signer")},
    ]}));
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        gw.log_text()
            .contains("the compiled component could not be cached")
    );
    assert!(files_under(&site.data_dir().join("wasm-cache")).is_empty());

    site.write_config(&with_guest);
    std::fs::remove_file(filler).unwrap();
    let (status, report) = gw.post("/admin/reload", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let fresh = gw
        .create(json!({"kid": "in-guest", "provider": "soft"}))
        .await;
    sign_verified(&gw, "in-guest", &fresh["publicJwk"], b"room again").await;
    gw.stop();
    drop(disk);
}
