//! Builds the guest adapters in `guest-adapters/` for wasm32-wasip2, so every test
//! run exercises components made from the current source, and tells the tests
//! where they are (`KMSGW_GUESTS_DIR`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap();
    let guests = root.join("guest-adapters");
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out; the guests get their
    // own target directory beside the profiles, so the nested cargo never waits on
    // the lock the outer one holds.
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
    let built = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=KMSGW_GUESTS_DIR={}", built.display());
    watch(&guests);
    println!("cargo:rerun-if-changed={}", root.join("wit").display());
}

fn watch(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
