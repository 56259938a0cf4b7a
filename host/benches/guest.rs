//! Guest call overhead, in process: `health` through the instance pool, and a warm
//! sign through the soft-signer guest beside the same sign on the `db` provider.
//!
//! Needs the guests built: `(cd guest-adapters && cargo build --release)`, then
//! `cargo bench -p kmsgw --bench guest` (or set `KMSGW_GUESTS_DIR`).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kmsgw::audit::Actor;
use kmsgw::catalog::Catalog;
use kmsgw::crypto::master::MasterKey;
use kmsgw::gateway::{Gateway, NewKey, Registered};
use kmsgw::providers::db::DbProvider;
use kmsgw::providers::wasm::limits::GuestLimits;
use kmsgw::providers::wasm::runtime::{PoolSizing, WasmRuntime};
use kmsgw::providers::wasm::{WasmOptions, WasmProvider};
use kmsgw::providers::{Provider, ToSign};

fn guests_dir() -> PathBuf {
    std::env::var_os("KMSGW_GUESTS_DIR").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../guest-adapters/target/wasm32-wasip2/release")
        },
        PathBuf::from,
    )
}

fn guest(c: &mut Criterion) {
    let component = guests_dir().join("soft_signer.wasm");
    assert!(
        component.exists(),
        "{} is missing: build the guests first ((cd guest-adapters && cargo build --release))",
        component.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (gateway, soft) = runtime.block_on(async {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        let catalog = Catalog::connect(&url).await.unwrap();
        let master = Arc::new(MasterKey::from_bytes(&[9; 32]));
        let engine = WasmRuntime::new(
            PoolSizing {
                instances: 4,
                max_memory_bytes: 64 << 20,
            },
            None,
        )
        .unwrap();
        let options = WasmOptions {
            id: "soft".into(),
            component: kmsgw::config::ComponentSource::File(component),
            sha256: None,
            config: serde_json::Value::Null,
            allowed_hosts: Vec::new(),
            egress_auth: Vec::new(),
            limits: GuestLimits {
                instances: 1,
                ..GuestLimits::default()
            },
            adapter: None,
            publisher: None,
        };
        let soft = Arc::new(
            WasmProvider::start(&engine, options, catalog.clone(), master.clone())
                .await
                .unwrap(),
        );
        let db = Arc::new(DbProvider::new("db".into(), catalog.clone(), master));
        let registered = vec![
            Registered {
                provider: db,
                description: None,
            },
            Registered {
                provider: soft.clone(),
                description: None,
            },
        ];
        let gateway = Gateway::new(registered, "db".into(), catalog);
        gateway
            .create_key(
                Actor::default(),
                NewKey {
                    kid: Some("on-db".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        gateway
            .create_key(
                Actor::default(),
                NewKey {
                    kid: Some("on-guest".into()),
                    provider: Some("soft".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        gateway
            .sign(None, "on-db", ToSign::Message(b"warm"), None)
            .await
            .unwrap();
        gateway
            .sign(None, "on-guest", ToSign::Message(b"warm"), None)
            .await
            .unwrap();
        (gateway, soft)
    });
    let message = [0x5au8; 100];
    let mut group = c.benchmark_group("guest");
    group.bench_function("health_through_pool", |b| {
        b.iter(|| runtime.block_on(soft.health()))
    });
    group.bench_function("sign_soft_signer_warm", |b| {
        b.iter(|| {
            runtime
                .block_on(gateway.sign(None, "on-guest", ToSign::Message(&message), None))
                .unwrap()
        })
    });
    group.bench_function("sign_db_warm", |b| {
        b.iter(|| {
            runtime
                .block_on(gateway.sign(None, "on-db", ToSign::Message(&message), None))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, guest);
criterion_main!(benches);
