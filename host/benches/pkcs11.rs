//! PKCS#11 sign throughput on one SoftHSM2 token, same run: through the gateway's
//! `pkcs11` provider (spawn_blocking, session pool, cached handle) and with
//! cryptoki directly (one session, `C_Sign` with `CKM_ECDSA` on a host digest).
//!
//! Needs SoftHSM2 (`apt-get install softhsm2`): `cargo bench -p kmsgw --bench pkcs11`.

use std::process::Command;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use kmsgw::audit::Actor;
use kmsgw::catalog::Catalog;
use kmsgw::config::{Pkcs11Config, Pkcs11Slot};
use kmsgw::crypto::master::MasterKey;
use kmsgw::gateway::{Gateway, NewKey, Registered};
use kmsgw::providers::ToSign;
use kmsgw::providers::db::DbProvider;
use kmsgw::providers::pkcs11::Pkcs11Provider;

const LIBRARY: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn pkcs11(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\n",
            dir.path().join("tokens").display()
        ),
    )
    .unwrap();
    // SAFETY: set before this benchmark starts any other thread.
    unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
    let init = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util");
    assert!(init.status.success());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let gateway = runtime.block_on(async {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        let catalog = Catalog::connect(&url).await.unwrap();
        let config = Pkcs11Config {
            library: LIBRARY.into(),
            slot: Pkcs11Slot::Label("bench".into()),
            pin: "1234".to_owned().into(),
            read_only: false,
            sessions: Some(4),
        };
        let master = Arc::new(MasterKey::from_bytes(&[5; 32]));
        let registered = vec![
            Registered {
                provider: Arc::new(DbProvider::new("db".into(), catalog.clone(), master)),
                description: None,
            },
            Registered {
                provider: Arc::new(Pkcs11Provider::new("hsm".into(), config)),
                description: None,
            },
        ];
        let gateway = Gateway::new(registered, "hsm".into(), catalog);
        gateway
            .create_key(
                Actor::default(),
                NewKey {
                    kid: Some("bench-key".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        gateway
            .sign(None, "bench-key", ToSign::Message(b"warm"), None)
            .await
            .unwrap();
        gateway
    });

    let message = [0x5au8; 100];
    let mut group = c.benchmark_group("pkcs11");
    group.bench_function("gateway_sign", |b| {
        b.iter(|| {
            runtime
                .block_on(gateway.sign(None, "bench-key", ToSign::Message(&message), None))
                .unwrap()
        })
    });

    // The same token and key, straight through cryptoki in this process.
    let library = Pkcs11::new(LIBRARY).unwrap();
    let _ = library.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    let slot = library
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| library.get_token_info(*s).unwrap().label().trim_end() == "bench")
        .unwrap();
    let session = library.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&"1234".to_owned().into())) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => panic!("{e}"),
    }
    let key = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"bench-key".to_vec()),
        ])
        .unwrap()[0];
    group.bench_function("cryptoki_direct_sign", |b| {
        b.iter(|| {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &message);
            session
                .sign(&Mechanism::Ecdsa, key, digest.as_ref())
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, pkcs11);
criterion_main!(benches);
