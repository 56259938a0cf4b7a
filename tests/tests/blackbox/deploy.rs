//! The deployment recipes: the systemd unit (checked by `systemd-analyze`), and
//! the container image's final stage run as its Containerfile says (its user,
//! environment, bundled kms.json, volume and health check), since no container
//! engine runs here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use kmsgw_tests::*;
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(repo().join("deploy/kmsgw.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/kmsgw serve"),
        "{unit}"
    );
    // `verify` checks that ExecStart's program exists: point it at the built one.
    let path = dir.path().join("kmsgw.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kmsgw", kmsgw_bin().to_str().unwrap()),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test installs it)");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    // Exposure on systemd's 0–10 scale (shown ×10 to --threshold): at most 2.0, "OK".
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    assert!(security.status.success(), "{report}");
    assert!(report.contains("Overall exposure level"), "{report}");
}

/// The final stage of the Containerfile: its instructions, continuation lines joined.
fn final_stage() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("Containerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let instructions: Vec<(String, String)> = joined
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (op, rest) = line.split_once(' ').unwrap_or((line, ""));
            (op.to_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .unwrap();
    instructions[last_from..].to_vec()
}

fn instruction<'a>(stage: &'a [(String, String)], op: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(o, _)| o == op)
        .map(|(_, rest)| rest.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_stage_runs_as_its_containerfile_says() {
    let stage = final_stage();
    // A non-root user with a fixed uid, the data in a volume, the binary copied
    // from the build stage, the health check on /ready through `kmsgw health`.
    assert_eq!(instruction(&stage, "USER"), ["kmsgw"]);
    let run = instruction(&stage, "RUN").join(" ");
    assert!(run.contains("useradd --system --uid 10001"), "{run}");
    assert_eq!(instruction(&stage, "VOLUME"), [r#"["/var/lib/kmsgw"]"#]);
    let copies = instruction(&stage, "COPY");
    assert!(
        copies.contains(&"--from=build /out/kmsgw /usr/local/bin/kmsgw"),
        "{copies:?}"
    );
    assert!(
        copies.contains(&"deploy/kms.container.json /etc/kmsgw/kms.json"),
        "{copies:?}"
    );
    let env: Vec<(String, String)> = instruction(&stage, "ENV")
        .join(" ")
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let var = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("ENV {name}"))
    };
    assert_eq!(var("KMSGW_CONFIG"), "/etc/kmsgw/kms.json");
    assert_eq!(var("KMSGW_DATA_DIR"), "/var/lib/kmsgw");
    assert_eq!(var("KMSGW_LISTEN"), "0.0.0.0:8080");
    let entrypoint: Vec<String> =
        serde_json::from_str(instruction(&stage, "ENTRYPOINT")[0]).unwrap();
    let cmd: Vec<String> = serde_json::from_str(instruction(&stage, "CMD")[0]).unwrap();
    assert_eq!(
        (entrypoint.as_slice(), cmd.as_slice()),
        (&["kmsgw".to_owned()][..], &["serve".to_owned()][..])
    );
    let healthcheck = instruction(&stage, "HEALTHCHECK")[0];
    let probe: Vec<String> =
        serde_json::from_str(healthcheck.split_once("CMD ").unwrap().1.trim()).unwrap();
    assert_eq!(probe[..2], ["kmsgw", "health"]);

    // Its paths, mapped into a folder: the volume owned by uid 10001, the bundled
    // kms.json; the port made free.
    let root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let volume = root.path().join("var-lib-kmsgw");
    std::fs::create_dir(&volume).unwrap();
    std::fs::set_permissions(&volume, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The image's uid needs root to take; otherwise the test's own user stands in.
    let root_here = std::fs::metadata(root.path()).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid() == 0
    });
    let uid = if root_here {
        std::os::unix::fs::chown(&volume, Some(10001), Some(10001)).unwrap();
        10001
    } else {
        eprintln!("not root: the container stage runs as this test's user, not uid 10001");
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&volume).unwrap().uid()
    };
    let port = free_port();
    let as_container = |extra: &[(&str, &str)]| {
        let mut command = if root_here {
            let mut setpriv = Command::new("setpriv");
            setpriv.args(["--reuid=10001", "--regid=10001", "--clear-groups", "--"]);
            setpriv.arg(kmsgw_bin());
            setpriv
        } else {
            Command::new(kmsgw_bin())
        };
        command
            .args(&cmd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KMSGW_CONFIG", repo().join("deploy/kms.container.json"))
            .env("KMSGW_DATA_DIR", &volume)
            .env("KMSGW_LISTEN", format!("0.0.0.0:{port}"));
        for (k, v) in extra {
            command.env(k, v);
        }
        command
    };

    // Without the token its kms.json asks for, it refuses to start and says why.
    let refused = as_container(&[]).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(said.contains("KMSGW_ADMIN_TOKEN"), "{said}");

    let token = "container-admin-token-0123456789";
    let gw = Gateway::spawn(
        &mut as_container(&[("KMSGW_ADMIN_TOKEN", token), ("RUST_LOG", "info")]),
        root.path().join("container.log"),
    );
    // Beyond loopback, so API keys are required.
    let (status, _) = gw.get("/keys").await;
    assert_eq!(status, 401);
    let (status, key) = gw
        .call(
            Some(token),
            reqwest::Method::POST,
            "/keys",
            Some(json!({"kid": "in-container"})),
        )
        .await;
    assert_eq!(status, 200, "{key}");
    let (status, signed) = gw
        .call(
            Some(token),
            reqwest::Method::POST,
            "/keys/in-container/sign",
            Some(json!({"data": "aGVsbG8="})),
        )
        .await;
    assert_eq!(status, 200, "{signed}");
    assert_verifies(
        &key["publicJwk"],
        b"hello",
        signed["signature"].as_str().unwrap(),
    );
    // Everything it wrote is in the volume, owned by its user.
    for entry in std::fs::read_dir(&volume).unwrap().flatten() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(entry.metadata().unwrap().uid(), uid, "{:?}", entry.path());
    }
    // The health check, as the Containerfile writes it (the port mapped).
    let check = |probe: &[String]| {
        Command::new(kmsgw_bin())
            .args(
                probe[1..]
                    .iter()
                    .map(|a| a.replace(":8080", &format!(":{port}"))),
            )
            .env_remove("KMSGW_URL")
            .env_remove("KMSGW_TOKEN")
            .output()
            .unwrap()
    };
    let healthy = check(&probe);
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stdout)
    );
    drop(gw);
    assert_eq!(
        check(&probe).status.code(),
        Some(3),
        "a stopped gateway fails the check"
    );
}
