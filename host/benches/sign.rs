//! In-process sign throughput per algorithm: aws-lc-rs called directly (the
//! floor), a warm `db` key signed through the gateway (record and decrypted key
//! cached; no database round trip), and the check the gateway makes of every
//! non-`db` signature (verification against the public JWK).
//!
//! `cargo bench -p kmsgw --bench sign`

use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    ECDSA_P521_SHA512_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, ML_DSA_44,
    ML_DSA_44_SIGNING, ML_DSA_65, ML_DSA_65_SIGNING, ML_DSA_87, ML_DSA_87_SIGNING, PqdsaKeyPair,
    PqdsaSigningAlgorithm, PqdsaVerificationAlgorithm, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    RsaKeyPair, UnparsedPublicKey,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kmsgw::audit::Actor;
use kmsgw::catalog::Catalog;
use kmsgw::crypto::master::MasterKey;
use kmsgw::crypto::{Alg, PrivateKey, ToSign};
use kmsgw::gateway::{Gateway, Registered};
use kmsgw::providers::db::DbProvider;

/// Signs a message; returns the signature's length.
type RawSigner = Box<dyn Fn(&[u8]) -> usize>;

/// aws-lc-rs's signing and verification algorithms of an ML-DSA `alg`.
fn ml_dsa(
    alg: Alg,
) -> Option<(
    &'static PqdsaSigningAlgorithm,
    &'static PqdsaVerificationAlgorithm,
)> {
    match alg {
        Alg::MlDsa44 => Some((&ML_DSA_44_SIGNING, &ML_DSA_44)),
        Alg::MlDsa65 => Some((&ML_DSA_65_SIGNING, &ML_DSA_65)),
        Alg::MlDsa87 => Some((&ML_DSA_87_SIGNING, &ML_DSA_87)),
        _ => None,
    }
}

/// aws-lc-rs's own sign call for `key`, with nothing of kmsgw around it.
fn raw_signer(alg: Alg, key: &PrivateKey) -> RawSigner {
    let ecdsa = |curve| {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(curve, key.pkcs8()).unwrap();
        Box::new(move |m: &[u8]| pair.sign(&rng, m).unwrap().as_ref().len()) as RawSigner
    };
    match alg {
        Alg::ES256 => ecdsa(&ECDSA_P256_SHA256_FIXED_SIGNING),
        Alg::ES384 => ecdsa(&ECDSA_P384_SHA384_FIXED_SIGNING),
        Alg::ES512 => ecdsa(&ECDSA_P521_SHA512_FIXED_SIGNING),
        Alg::EdDSA | Alg::Ed25519 => {
            let pair = Ed25519KeyPair::from_pkcs8(key.pkcs8()).unwrap();
            Box::new(move |m| pair.sign(m).as_ref().len())
        }
        Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => {
            let (signing, _) = ml_dsa(alg).unwrap();
            let pair = PqdsaKeyPair::from_pkcs8(signing, key.pkcs8()).unwrap();
            Box::new(move |m| {
                let mut signature = vec![0; signing.signature_len()];
                pair.sign(m, &mut signature).unwrap()
            })
        }
        Alg::RS256 | Alg::PS256 => {
            let rng = SystemRandom::new();
            let pair = RsaKeyPair::from_pkcs8(key.pkcs8()).unwrap();
            let padding = if alg == Alg::PS256 {
                &RSA_PSS_SHA256
            } else {
                &RSA_PKCS1_SHA256
            };
            Box::new(move |m| {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, m, &mut signature).unwrap();
                signature.len()
            })
        }
    }
}

fn sign(c: &mut Criterion) {
    let message = [0x5au8; 100];
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
        Gateway::new(registered, "db".into(), catalog)
    });

    let mut group = c.benchmark_group("alg");
    group.throughput(Throughput::Elements(1));
    for &alg in Alg::ALL {
        let key = PrivateKey::generate(alg, None).unwrap();
        let raw = raw_signer(alg, &key);
        group.bench_function(format!("{alg}/aws-lc"), |b| b.iter(|| raw(&message)));

        let kid = alg.as_str();
        runtime.block_on(async {
            gateway
                .import_key(Actor::default(), kid.into(), &key, Some(alg), None)
                .await
                .unwrap();
            // The first sign loads the key; the measured ones find it in memory.
            gateway
                .sign(None, kid, ToSign::Message(&message), None)
                .await
                .unwrap();
        });
        group.bench_function(format!("{alg}/db"), |b| {
            b.iter(|| {
                runtime
                    .block_on(gateway.sign(None, kid, ToSign::Message(&message), None))
                    .unwrap()
            })
        });

        let signature = key.signer(alg).unwrap().sign(&message);
        let public = key.public_jwk().clone();
        group.bench_function(format!("{alg}/verify"), |b| {
            b.iter(|| assert!(public.verify(alg, &message, &signature)))
        });
        // ML-DSA verification straight from aws-lc-rs, beside kmsgw's (JWK) one.
        if let Some((signing, verification)) = ml_dsa(alg) {
            let pair = PqdsaKeyPair::from_pkcs8(signing, key.pkcs8()).unwrap();
            let raw_public = pair.public_key().as_ref().to_vec();
            group.bench_function(format!("{alg}/verify-aws-lc"), |b| {
                b.iter(|| {
                    UnparsedPublicKey::new(verification, &raw_public)
                        .verify(&message, &signature)
                        .unwrap()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
