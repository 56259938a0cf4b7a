//! Builds the guest workspace (`guest-adapters/`) for wasm32-wasip2. Shared by the
//! host's build script (which embeds the shipped guests) and the tests' (which
//! run every guest), so both use one set of components from the current source.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every guest in release and returns the folder holding the `.wasm` files.
///
/// The guests get their own target directory beside the outer build's profiles
/// (`<target>/guest-adapters`), so the nested cargo never waits on a lock the
/// outer one holds, and the host and the tests share one build.
pub fn build(root: &Path) -> PathBuf {
    let guests = root.join("guest-adapters");
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = out_dir.ancestors().nth(4).unwrap().join("guest-adapters");

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // Flags meant for the host build must not leak into the wasm build.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo for the guest adapters");
    assert!(
        status.success(),
        "building the guest adapters failed; is the wasm32-wasip2 target installed (`rustup target add wasm32-wasip2`)?"
    );
    watch(&guests);
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    target_dir.join("wasm32-wasip2").join("release")
}

fn watch(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name == "node_modules" {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
