//! Guest projects outside this repository: `kmsgw adapter new` writes one,
//! `kmsgw adapter wit` writes the WIT package it builds against, and
//! `kmsgw adapter build` builds it as its manifest (`kmsgw-adapter.toml`) says.
//! Everything a Rust project needs is written into it (the WIT package, the guest
//! SDK's source), so it builds with nothing but crates.io.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

/// The WIT package version new projects are built against.
pub const WIT_VERSION: &str = "0.4.0";

/// The manifest's file name.
pub const MANIFEST: &str = "kmsgw-adapter.toml";

/// The current WIT package: path under `wit/`, text.
const WIT: &[(&str, &str)] = &[
    ("adapter.wit", include_str!("../../wit/adapter.wit")),
    (
        "deps/cli/cli.wit",
        include_str!("../../wit/deps/cli/cli.wit"),
    ),
    (
        "deps/clocks/clocks.wit",
        include_str!("../../wit/deps/clocks/clocks.wit"),
    ),
    (
        "deps/filesystem/filesystem.wit",
        include_str!("../../wit/deps/filesystem/filesystem.wit"),
    ),
    (
        "deps/http/http.wit",
        include_str!("../../wit/deps/http/http.wit"),
    ),
    ("deps/io/io.wit", include_str!("../../wit/deps/io/io.wit")),
    (
        "deps/random/random.wit",
        include_str!("../../wit/deps/random/random.wit"),
    ),
    (
        "deps/sockets/sockets.wit",
        include_str!("../../wit/deps/sockets/sockets.wit"),
    ),
];

/// The guest SDK's source: path under `sdk/src/`, text.
const SDK: &[(&str, &str)] = &[
    (
        "lib.rs",
        include_str!("../../guest-adapters/sdk/src/lib.rs"),
    ),
    (
        "config.rs",
        include_str!("../../guest-adapters/sdk/src/config.rs"),
    ),
    (
        "crypto.rs",
        include_str!("../../guest-adapters/sdk/src/crypto.rs"),
    ),
    (
        "http.rs",
        include_str!("../../guest-adapters/sdk/src/http.rs"),
    ),
    (
        "jwk.rs",
        include_str!("../../guest-adapters/sdk/src/jwk.rs"),
    ),
    (
        "log.rs",
        include_str!("../../guest-adapters/sdk/src/log.rs"),
    ),
    (
        "storage.rs",
        include_str!("../../guest-adapters/sdk/src/storage.rs"),
    ),
];

const JS_APP: &str = include_str!("../../guest-adapters/js/soft-signer/app.js");
const JS_SDK: &str = include_str!("../../guest-adapters/js/sdk/kmsgw.js");
const JS_BUILD: &str = include_str!("../../guest-adapters/js/build.mjs");
const JS_PACKAGE: &str = include_str!("../../guest-adapters/js/package.json");
const JS_README: &str = include_str!("../templates/js/README.md");
const RUST_LIB: &str = include_str!("../templates/rust/lib.rs");
/// The HTTP-backend skeleton: the remote-KMS contract spoken over `wasi:http`.
const RUST_HTTP_LIB: &str = include_str!("../../guest-adapters/remote-http/src/lib.rs");
const RUST_CARGO: &str = include_str!("../templates/rust/Cargo.toml");
const SDK_CARGO: &str = include_str!("../templates/rust/sdk.Cargo.toml");
const README: &str = include_str!("../templates/rust/README.md");

/// `kmsgw-adapter.toml`: what the project is and how it builds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The adapter's name.
    pub name: String,
    /// The `kmsgw:adapter` version it is built against.
    pub wit: String,
    /// The build command, run by `sh -c` in the project directory.
    pub build: String,
    /// Where the component lands, relative to the project directory.
    pub output: String,
    /// What the guest asks the operator for; written into the component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<crate::distribution::capabilities::Requested>,
}

/// Why a project could not be made or built.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a usable adapter name: use 1 to 64 lower-case letters, digits, `-` or `_`, starting with a letter"
    )]
    Name(String),
    #[error("{0} exists and is not empty; choose another --dir")]
    NotEmpty(PathBuf),
    #[error("language `{0}` is not available; use --lang rust or --lang js")]
    Language(String),
    #[error("template `{template}` is not available for {lang}; use {available}")]
    Template {
        template: String,
        lang: String,
        available: &'static str,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error("`{command}` failed ({status}) in {dir}")]
    Build {
        command: String,
        status: String,
        dir: PathBuf,
    },
    #[error("the build did not produce {0}")]
    NoOutput(PathBuf),
}

fn write(path: &Path, text: &str) -> Result<(), ScaffoldError> {
    let failed = |source| ScaffoldError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(path, text).map_err(failed)
}

/// Writes the current WIT package (`adapter.wit` and its `deps/`) into `dir`.
///
/// # Errors
/// [`ScaffoldError::Write`].
pub fn write_wit(dir: &Path) -> Result<(), ScaffoldError> {
    for (path, text) in WIT {
        write(&dir.join(path), text)?;
    }
    Ok(())
}

/// The current WIT package's main file.
pub fn wit_text() -> &'static str {
    WIT[0].1
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'))
}

/// What a new project starts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Template {
    /// Keys of its own, in the guest (passes the check as generated).
    Soft,
    /// A client of a remote KMS over HTTP (the remote-KMS contract; passes the
    /// check against such a service, e.g. `examples/remote-kms`).
    Http,
}

/// Writes a new adapter project `name` in `lang` from `template` into `dir`
/// (which must be absent or empty) and returns its directory.
///
/// # Errors
/// [`ScaffoldError`] for a bad name, language or template, a non-empty directory, or I/O.
pub fn new_project(
    name: &str,
    lang: &str,
    template: Template,
    dir: &Path,
) -> Result<PathBuf, ScaffoldError> {
    if !valid_name(name) {
        return Err(ScaffoldError::Name(name.to_owned()));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(ScaffoldError::NotEmpty(dir.to_owned()));
    }
    match (lang, template) {
        ("rust", _) => rust_project(name, template, dir)?,
        ("js", Template::Soft) => js_project(name, dir)?,
        ("js", Template::Http) => {
            return Err(ScaffoldError::Template {
                template: "http".into(),
                lang: "js".into(),
                available: "--template soft",
            });
        }
        (other, _) => return Err(ScaffoldError::Language(other.to_owned())),
    }
    write_wit(&dir.join("wit"))?;
    Ok(dir.to_owned())
}

/// Replaces the template's placeholders.
fn fill(text: &str, name: &str, output: &str) -> String {
    text.replace("{{name}}", name)
        .replace("{{crate}}", name)
        .replace("{{wit}}", WIT_VERSION)
        .replace("{{output}}", output)
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), ScaffoldError> {
    let text = toml::to_string(manifest).expect("a manifest serialises");
    write(&dir.join(MANIFEST), &text)
}

fn rust_project(name: &str, template: Template, dir: &Path) -> Result<(), ScaffoldError> {
    let output = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        name.replace('-', "_")
    );
    write_manifest(
        dir,
        &Manifest {
            name: name.to_owned(),
            wit: WIT_VERSION.to_owned(),
            // An explicit target directory: the component lands where `output`
            // says whatever CARGO_TARGET_DIR the environment sets.
            build: "cargo build --release --target wasm32-wasip2 --target-dir target".to_owned(),
            output: output.clone(),
            capabilities: None,
        },
    )?;
    let (lib, dependencies) = match template {
        Template::Soft => (
            fill(RUST_LIB, name, &output),
            r#"p256 = { version = "0.14", default-features = false, features = ["arithmetic", "ecdsa", "std"] }"#,
        ),
        Template::Http => (
            RUST_HTTP_LIB.to_owned(),
            r#"serde = { version = "1", features = ["derive"] }"#,
        ),
    };
    let cargo = fill(RUST_CARGO, name, &output).replace("{{dependencies}}", dependencies);
    write(&dir.join("Cargo.toml"), &cargo)?;
    write(&dir.join("src/lib.rs"), &lib)?;
    write(&dir.join("README.md"), &fill(README, name, &output))?;
    write(&dir.join(".gitignore"), "/target\n")?;
    write(&dir.join("sdk/Cargo.toml"), &fill(SDK_CARGO, name, &output))?;
    for (path, text) in SDK {
        // The SDK reads the WIT package from the project's `wit/`.
        let text = text.replace("path: \"../../wit\"", "path: \"../wit\"");
        write(&dir.join("sdk/src").join(path), &text)?;
    }
    Ok(())
}

fn js_project(name: &str, dir: &Path) -> Result<(), ScaffoldError> {
    let output = format!("dist/{name}.wasm");
    write_manifest(
        dir,
        &Manifest {
            name: name.to_owned(),
            wit: WIT_VERSION.to_owned(),
            build: format!(
                "npm install --no-audit --no-fund --loglevel=error && mkdir -p dist && node build.mjs src/app.js {output} wit"
            ),
            output: output.clone(),
            capabilities: None,
        },
    )?;
    let package = JS_PACKAGE.replacen("\"kmsgw-js-guests\"", &format!("\"{name}\""), 1);
    write(&dir.join("package.json"), &package)?;
    write(&dir.join("build.mjs"), JS_BUILD)?;
    write(&dir.join("sdk/kmsgw.js"), JS_SDK)?;
    write(&dir.join("src/app.js"), JS_APP)?;
    write(&dir.join("README.md"), &fill(JS_README, name, &output))?;
    write(&dir.join(".gitignore"), "/node_modules\n/dist\n")
}

/// The manifest of the project in `dir`.
///
/// # Errors
/// [`ScaffoldError::Manifest`] when it is missing or malformed.
pub fn manifest(dir: &Path) -> Result<Manifest, ScaffoldError> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| ScaffoldError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ScaffoldError::Manifest {
        path,
        reason: e.to_string(),
    })
}

/// Builds the project in `dir` with its manifest's command; returns the component.
///
/// # Errors
/// [`ScaffoldError`] when the manifest is unusable, the build fails or produces nothing.
pub fn build(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    let manifest = manifest(dir)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(&manifest.build)
        .current_dir(dir)
        .status()
        .map_err(|e| ScaffoldError::Build {
            command: manifest.build.clone(),
            status: e.to_string(),
            dir: dir.to_owned(),
        })?;
    if !status.success() {
        return Err(ScaffoldError::Build {
            command: manifest.build,
            status: status.to_string(),
            dir: dir.to_owned(),
        });
    }
    let output = dir.join(&manifest.output);
    if !output.is_file() {
        return Err(ScaffoldError::NoOutput(output));
    }
    if let Some(requested) = &manifest.capabilities {
        let invalid = |reason: String| ScaffoldError::Manifest {
            path: dir.join(MANIFEST),
            reason,
        };
        requested
            .check()
            .map_err(|e| invalid(format!("capabilities: {e}")))?;
        let bytes = std::fs::read(&output).map_err(|e| invalid(e.to_string()))?;
        let declared = requested
            .embed(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", output.display())))?;
        std::fs::write(&output, declared).map_err(|source| ScaffoldError::Write {
            path: output.clone(),
            source,
        })?;
    }
    Ok(output)
}

/// The component of the project in `dir`, as its manifest names it.
///
/// # Errors
/// [`ScaffoldError::Manifest`].
pub fn component_of(dir: &Path) -> Result<PathBuf, ScaffoldError> {
    Ok(dir.join(manifest(dir)?.output))
}
