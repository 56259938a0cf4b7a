//! In-process sign throughput: the bare signer of every algorithm, the check the
//! gateway makes of every non-`db` signature (verification against the public
//! JWK), and a warm `db` key signed through the gateway (record and decrypted key
//! cached; no database round trip).
//!
//! `cargo bench -p kmsgw --bench sign`

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsgw::catalog::Catalog;
use kmsgw::crypto::seal::MasterKey;
use kmsgw::crypto::{Alg, PrivateKey};
use kmsgw::gateway::{Gateway, NewKey, Registered};
use kmsgw::providers::db::DbProvider;

fn sign(c: &mut Criterion) {
    let message = [0x5au8; 100];
    let mut group = c.benchmark_group("alg");
    group.throughput(Throughput::Elements(1));
    for &alg in Alg::ALL {
        let key = PrivateKey::generate(alg, None).unwrap();
        let signer = key.signer(alg).unwrap();
        group.bench_function(format!("{alg}/sign"), |b| b.iter(|| signer.sign(&message)));
        let signature = signer.sign(&message);
        let public = key.public_jwk().clone();
        group.bench_function(format!("{alg}/verify"), |b| {
            b.iter(|| assert!(public.verify(alg, &message, &signature)))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("es256");
    group.throughput(Throughput::Elements(1));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gateway = runtime.block_on(async {
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        );
        let catalog = Catalog::connect(&url).await.unwrap();
        let master = Arc::new(MasterKey::from_bytes(&[9; 32]));
        let db = DbProvider::new("db".into(), catalog.clone(), master);
        let registered = vec![Registered {
            provider: Arc::new(db),
            description: None,
        }];
        let gateway = Gateway::new(registered, "db".into(), catalog);
        gateway
            .create_key(
                None,
                NewKey {
                    kid: Some("bench".into()),
                    ..NewKey::default()
                },
            )
            .await
            .unwrap();
        gateway.sign(None, "bench", &message, None).await.unwrap();
        gateway
    });
    group.bench_function("gateway_db_warm", |b| {
        b.iter(|| {
            runtime
                .block_on(gateway.sign(None, "bench", &message, None))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
