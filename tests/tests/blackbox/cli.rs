//! `kmsgw keys|certs|audit|providers|health`: the command-line client against a
//! live gateway, its `--json` output parsed, its exit codes by outcome, and
//! scope and tenant refusals shown as such.

use std::process::Command;

use kmsgw_tests::audit::Tamper;
use kmsgw_tests::*;
use serde_json::{Value, json};

const ADMIN: &str = "cli-admin-token-0123456789";
const ACME: &str = "cli-acme-token-0123456789";
const READER: &str = "cli-reader-token-0123456789";

/// What one CLI run gave.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{}\n{}", self.stdout, self.stderr);
        self
    }
}

/// `kmsgw ARGS` against `gw` with `token` (through KMSGW_URL and KMSGW_TOKEN).
fn cli(gw: &Gateway, token: Option<&str>, args: &[&str]) -> Run {
    let mut command = Command::new(kmsgw_bin());
    command.args(args).env("KMSGW_URL", &gw.base);
    match token {
        Some(token) => command.env("KMSGW_TOKEN", token),
        None => command.env_remove("KMSGW_TOKEN"),
    };
    let output = command.output().expect("run kmsgw");
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn admin(gw: &Gateway, args: &[&str]) -> Run {
    cli(gw, Some(ADMIN), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_against_a_live_gateway() {
    let site = Site::new(Db::Sqlite).await;
    let gw = site.start_configured(&json!({
        "providers": [{"id": "db", "type": "db"}],
        "auth": {"apiKeys": [
            {"id": "ops", "token": ADMIN, "scopes": ["admin"]},
            {"id": "acme", "token": ACME, "scopes": ["keys:read", "keys:create", "sign"], "tenant": "acme"},
            {"id": "reader", "token": READER, "scopes": ["keys:read"]},
        ]},
    }));
    let dir = site.dir.path();

    // Probes and refusals before anything exists.
    let ready = cli(&gw, None, &["health"]).ok();
    assert_eq!(ready.stdout.trim(), "ready");
    assert_eq!(
        cli(&gw, None, &["health", "--json"]).ok().json()["ready"],
        true
    );
    let anonymous = cli(&gw, None, &["keys", "list"]);
    assert_eq!(anonymous.code, 4, "401 → 4: {}", anonymous.stderr);
    assert!(
        anonymous.stderr.contains("unauthorized"),
        "{}",
        anonymous.stderr
    );
    assert_eq!(
        cli(&gw, Some("wrong-token-0123456789"), &["keys", "list"]).code,
        4
    );
    let nowhere = Command::new(kmsgw_bin())
        .args([
            "health",
            "--url",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(nowhere.status.code(), Some(3), "unreachable → 3");

    // keys create / get / sign / verify.
    let created = admin(&gw, &["keys", "create", "--kid", "cli-1", "--json"])
        .ok()
        .json();
    assert_eq!(created["kid"], "cli-1");
    assert_eq!(created["alg"], "ES256");
    let jwk = created["publicJwk"].clone();
    let again = admin(&gw, &["keys", "create", "--kid", "cli-1"]);
    assert_eq!(again.code, 7, "409 → 7: {}", again.stderr);
    assert!(again.stderr.contains("key_exists"), "{}", again.stderr);
    let missing = admin(&gw, &["keys", "get", "no-such-key"]);
    assert_eq!(missing.code, 6, "404 → 6: {}", missing.stderr);
    let human = admin(&gw, &["keys", "get", "cli-1"]).ok().stdout;
    assert!(
        human.contains("cli-1") && human.contains("VERSION") && human.contains("active"),
        "{human}"
    );

    let signed = admin(&gw, &["keys", "sign", "cli-1", "--data", "hello", "--json"])
        .ok()
        .json();
    let signature = signed["signature"].as_str().unwrap().to_owned();
    assert_verifies(&jwk, b"hello", &signature);
    // The human form is the signature alone, for scripts that pipe it.
    let bare = admin(&gw, &["keys", "sign", "cli-1", "--data", "hello"])
        .ok()
        .stdout;
    assert_verifies(&jwk, b"hello", bare.trim());
    let message_file = dir.join("message.bin");
    std::fs::write(&message_file, b"\x00binary\xffmessage").unwrap();
    let from_file = admin(
        &gw,
        &[
            "keys",
            "sign",
            "cli-1",
            "--file",
            message_file.to_str().unwrap(),
        ],
    )
    .ok();
    assert_verifies(&jwk, b"\x00binary\xffmessage", from_file.stdout.trim());
    let digest = sha256_of(b"hello");
    let by_digest = admin(&gw, &["keys", "sign", "cli-1", "--digest", &digest]).ok();
    assert_verifies(&jwk, b"hello", by_digest.stdout.trim());
    let valid = admin(
        &gw,
        &[
            "keys",
            "verify",
            "cli-1",
            "--data",
            "hello",
            "--signature",
            &signature,
        ],
    );
    assert_eq!((valid.code, valid.stdout.trim()), (0, "valid"));
    let invalid = admin(
        &gw,
        &[
            "keys",
            "verify",
            "cli-1",
            "--data",
            "other",
            "--signature",
            &signature,
        ],
    );
    assert_eq!((invalid.code, invalid.stdout.trim()), (1, "invalid"));
    assert_eq!(
        admin(
            &gw,
            &[
                "keys",
                "verify",
                "cli-1",
                "--data",
                "other",
                "--signature",
                &signature,
                "--json"
            ]
        )
        .json()["valid"],
        false
    );
    let bad_input = admin(&gw, &["keys", "sign", "cli-1", "--digest", "not-hex"]);
    assert_eq!(bad_input.code, 2, "{}", bad_input.stderr);
    let bad_digest = admin(&gw, &["keys", "sign", "cli-1", "--digest", "abcd"]);
    assert_eq!(bad_digest.code, 8, "400 → 8: {}", bad_digest.stderr);
    assert!(
        bad_digest.stderr.contains("invalid_digest"),
        "{}",
        bad_digest.stderr
    );

    // A batch from a file: 2 500 lines in three requests, every signature verified.
    let lines: Vec<String> = (0..2500).map(|i| format!("line {i}")).collect();
    let batch_file = dir.join("lines.txt");
    std::fs::write(&batch_file, lines.join("\n") + "\n").unwrap();
    let batch = admin(
        &gw,
        &[
            "keys",
            "sign",
            "cli-1",
            "--batch",
            batch_file.to_str().unwrap(),
            "--json",
        ],
    )
    .ok()
    .json();
    let signatures = batch["signatures"].as_array().unwrap();
    assert_eq!(signatures.len(), lines.len());
    for (line, signature) in lines.iter().zip(signatures) {
        assert_verifies(&jwk, line.as_bytes(), signature.as_str().unwrap());
    }

    // rotate, then the key shows both versions.
    let rotated = admin(&gw, &["keys", "rotate", "cli-1", "--json"])
        .ok()
        .json();
    assert_eq!(rotated["version"], 2);
    let key = admin(&gw, &["keys", "get", "cli-1", "--json"]).ok().json();
    let states: Vec<&str> = key["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{key}");
    assert!(states.contains(&"active"), "{states:?}");

    // import (a file and stdin are both inputs), then sign with the imported key.
    let (private, _) = known_private_jwk();
    let jwk_file = dir.join("private.jwk");
    std::fs::write(&jwk_file, private.to_string()).unwrap();
    let imported = admin(
        &gw,
        &[
            "keys",
            "import",
            "imp-1",
            "--jwk",
            jwk_file.to_str().unwrap(),
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(imported["kid"], "imp-1");
    let imported_sig = admin(&gw, &["keys", "sign", "imp-1", "--data", "imported"])
        .ok()
        .stdout;
    assert_verifies(&imported["publicJwk"], b"imported", imported_sig.trim());

    // list: a page, then --all across pages.
    for i in 0..230 {
        let (status, _) = gw
            .call(
                Some(ADMIN),
                reqwest::Method::POST,
                "/keys",
                Some(json!({"kid": format!("bulk-{i:03}")})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let page = admin(&gw, &["keys", "list", "--limit", "100"]).ok().stdout;
    assert!(
        page.contains("KID") && page.contains("more: --cursor"),
        "{page}"
    );
    let all = admin(&gw, &["keys", "list", "--all", "--limit", "100", "--json"])
        .ok()
        .json();
    let kids: Vec<&str> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 232, "cli-1, imp-1 and 230 bulk keys");
    assert!(
        kids.windows(2).all(|w| w[0] < w[1]),
        "kid order, no repeats"
    );
    assert_eq!(all["nextCursor"], Value::Null);

    // certs: issue, get, csr, import.
    let issued = admin(
        &gw,
        &[
            "certs",
            "issue",
            "cli-1",
            "--subject",
            "CN=cli-1",
            "--days",
            "30",
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(issued["x5c"].as_array().map(Vec::len), Some(1), "{issued}");
    let pem = admin(&gw, &["certs", "get", "cli-1"]).ok().stdout;
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let human_key = admin(&gw, &["keys", "get", "cli-1"]).ok().stdout;
    assert!(human_key.contains("CN=cli-1, expires"), "{human_key}");
    let csr = admin(
        &gw,
        &[
            "certs",
            "csr",
            "cli-1",
            "--subject",
            "CN=cli-1",
            "--dns",
            "cli.example.org",
        ],
    )
    .ok()
    .stdout;
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let no_cert = admin(&gw, &["certs", "get", "imp-1"]);
    assert_eq!(no_cert.code, 6, "{}", no_cert.stderr);
    let (_, self_signed) = gw
        .call(
            Some(ADMIN),
            reqwest::Method::POST,
            "/keys/imp-1/certificate/issue",
            Some(json!({"subject": "CN=imp-1", "validityDays": 10})),
        )
        .await;
    let leaf = self_signed["x5c"][0].as_str().unwrap();
    let pem_file = dir.join("imp-1.pem");
    std::fs::write(
        &pem_file,
        admin(&gw, &["certs", "get", "imp-1"]).ok().stdout,
    )
    .unwrap();
    let attached = admin(
        &gw,
        &[
            "certs",
            "import",
            "imp-1",
            "--file",
            pem_file.to_str().unwrap(),
            "--json",
        ],
    )
    .ok()
    .json();
    assert_eq!(attached["x5c"][0], leaf);
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    assert_eq!(
        admin(
            &gw,
            &[
                "certs",
                "import",
                "imp-1",
                "--file",
                garbage.to_str().unwrap()
            ]
        )
        .code,
        8
    );

    // providers: the admin sees health; a narrower key sees the providers without it.
    let providers = admin(&gw, &["providers", "--json"]).ok().json();
    assert_eq!(providers[0]["id"], "db");
    assert_eq!(providers[0]["health"]["ok"], true, "{providers}");
    let narrow = cli(&gw, Some(READER), &["providers"]).ok().stdout;
    assert!(
        narrow.contains("db") && narrow.contains("admin scope"),
        "{narrow}"
    );

    // delete, then the key is gone.
    assert_eq!(
        admin(&gw, &["keys", "delete", "imp-1"]).ok().stdout.trim(),
        "deleted imp-1"
    );
    assert_eq!(admin(&gw, &["keys", "get", "imp-1"]).code, 6);

    // Scope and tenant refusals, shown as such.
    let no_scope = cli(&gw, Some(READER), &["keys", "rotate", "cli-1"]);
    assert_eq!(no_scope.code, 5, "403 → 5: {}", no_scope.stderr);
    assert!(
        no_scope
            .stderr
            .contains("forbidden by the API key's scopes"),
        "{}",
        no_scope.stderr
    );
    let other_tenant = cli(&gw, Some(ACME), &["keys", "sign", "cli-1", "--data", "x"]);
    assert_eq!(other_tenant.code, 6, "{}", other_tenant.stderr);
    assert!(
        other_tenant.stderr.contains("own tenant"),
        "{}",
        other_tenant.stderr
    );
    let acme_key = cli(
        &gw,
        Some(ACME),
        &["keys", "create", "--kid", "cli-1", "--json"],
    )
    .ok()
    .json();
    assert_eq!(acme_key["kid"], "cli-1", "kids are per tenant");
    let acme_list = cli(&gw, Some(ACME), &["keys", "list", "--all", "--json"])
        .ok()
        .json();
    assert_eq!(
        acme_list["keys"].as_array().unwrap().len(),
        1,
        "{acme_list}"
    );
    assert_eq!(cli(&gw, Some(ACME), &["audit", "verify"]).code, 5);

    // audit: list with filters, every page, and the chain's verdict.
    let records = admin(&gw, &["audit", "list", "--kid", "cli-1", "--all", "--json"])
        .ok()
        .json();
    let actions: Vec<&str> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    for action in [
        "create",
        "sign",
        "sign-digest",
        "rotate",
        "csr",
        "certificate-issue",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let everything = admin(&gw, &["audit", "list", "--all", "--limit", "50", "--json"])
        .ok()
        .json();
    let verdict = admin(&gw, &["audit", "verify", "--json"]).ok().json();
    assert_eq!(verdict["ok"], true);
    assert_eq!(
        verdict["checked"],
        everything["records"].as_array().unwrap().len()
    );
    let table = admin(&gw, &["audit", "list", "--action", "rotate"])
        .ok()
        .stdout;
    assert!(table.contains("SEQ") && table.contains("rotate"), "{table}");
    assert!(
        admin(&gw, &["audit", "verify"])
            .ok()
            .stdout
            .starts_with("audit chain intact")
    );
    // A record changed behind the gateway's back: the verdict says so, exit code 1.
    let bad = site
        .tamper_audit(2, Tamper::Set("outcome", json!("forged")))
        .await;
    let broken = admin(&gw, &["audit", "verify"]);
    assert_eq!(broken.code, 1, "{}", broken.stdout);
    assert!(
        broken.stdout.contains(&format!("BROKEN at seq {bad}")),
        "{}",
        broken.stdout
    );
}
