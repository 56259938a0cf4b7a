//! Builds the guest adapters so the shipped ones (`cosmian-kms`, `azure-kv`,
//! `gcp-kms`) are embedded in the binary: a named guest entry in kms.json works
//! after a plain `cargo build`.

#[path = "build/guests.rs"]
mod guests;

fn main() {
    let manifest_dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let built = guests::build(manifest_dir.parent().unwrap());
    println!("cargo:rustc-env=KMSGW_SHIPPED_DIR={}", built.display());
}
