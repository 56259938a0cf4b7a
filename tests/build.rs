//! Builds the guest adapters in `guest-adapters/` for wasm32-wasip2 (the same
//! build the host's script makes), so every test run exercises components made
//! from the current source, and tells the tests where they are (`KMSGW_GUESTS_DIR`).

#[path = "../host/build/guests.rs"]
mod guests;

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let built = guests::build(manifest_dir.parent().unwrap());
    println!("cargo:rustc-env=KMSGW_GUESTS_DIR={}", built.display());
}
