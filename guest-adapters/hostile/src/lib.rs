//! `hostile`: a guest built only for tests. It signs properly, except that some
//! messages make it misbehave, so one component exercises every defence of the host:
//!
//! | message | behaviour |
//! | --- | --- |
//! | `loop` | spins forever (the host's deadline must stop it) |
//! | `oom` | allocates until memory runs out (the host's memory cap must hold) |
//! | `trap` | panics, which traps (the host must replace the instance) |
//! | `egress:URL` | fetches URL (the host must deny hosts outside `allowedHosts`) |
//! | `snoop:KEY` | looks for storage KEY (exactly and as a prefix), lists every stored key, and reports what it saw |
//! | `store:N` | writes N values of 64 KiB into its storage (the host's quota must stop it) |
//! | `log:N:SIZE` | logs N lines of SIZE bytes that start with a forged gateway line |
//! | `error:N` | fails with an N-byte error message |
//! | `bigsig:N` | returns an N-byte "signature" |
//! | `upload:MIB:URL` | POSTs a MIB MiB body to URL |
//! | `download:URL` | GETs URL and reads the whole body |
//! | `hoard:N` | keeps N header sets of 100 KiB alive across calls |
//! | `fanout:N:URL` | starts N requests to URL and never waits for them |
//! | `readfile:PATH` | reads the file PATH (the host links `wasi:filesystem` with no directory) |
//! | `dump:URL` | GETs URL with its own `Authorization`, then POSTs to URL all it can see: its config, its storage, the headers it sent and the answer it got |
//!
//! Keys whose kid starts with `bigid` get a 4 MiB external id, `bigjwk` a 4 MiB public
//! JWK, and `sticky` cannot be deleted (the backend refuses).
//!
//! Config `{"signature": "der"}` returns DER instead of raw `r‖s`, and
//! `{"signature": "wrong-key"}` signs with another key: both must fail
//! `kmsgw adapter check`.

mod hoard;

use kmsgw_guest_sdk::http::Request;
use kmsgw_guest_sdk::{Adapter, Alg, Error, KeyMaterial, KeySpec, export_adapter, jwk, storage};
use p256::ecdsa::{Signature, SigningKey, signature::Signer};

#[derive(PartialEq)]
enum Mode {
    Honest,
    Der,
    WrongKey,
}

struct Hostile {
    mode: Mode,
}

fn key_for(kid: &str) -> Result<SigningKey, Error> {
    let bytes = storage::get(&format!("key/{kid}"))?
        .ok_or_else(|| Error::NotFound(format!("no key `{kid}`")))?;
    SigningKey::from_slice(&bytes).map_err(|_| Error::Internal("damaged key".into()))
}

/// The config `init` received, for `dump:`.
static CONFIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl Adapter for Hostile {
    fn init(config: serde_json::Value) -> Result<Self, Error> {
        let _ = CONFIG.set(config.to_string());
        let mode = match config.get("signature").and_then(|v| v.as_str()) {
            None => Mode::Honest,
            Some("der") => Mode::Der,
            Some("wrong-key") => Mode::WrongKey,
            Some(other) => {
                return Err(Error::InvalidInput(format!(
                    "unknown signature mode `{other}`"
                )));
            }
        };
        Ok(Hostile { mode })
    }

    fn generate_key(&self, kid: &str, _spec: KeySpec) -> Result<KeyMaterial, Error> {
        let bytes = kmsgw_guest_sdk::bindings::wasi::random::random::get_random_bytes(32);
        let key = SigningKey::from_slice(&bytes)
            .map_err(|_| Error::Internal("bad random scalar".into()))?;
        storage::set(&format!("key/{kid}"), &key.to_bytes())?;
        let mut public_jwk = jwk::p256_public_jwk(&key.verifying_key().to_sec1_bytes())?;
        let mut external_id = kid.to_owned();
        let huge = 4 << 20;
        if kid.starts_with("bigid") {
            external_id.push_str(&"i".repeat(huge));
        }
        if kid.starts_with("bigjwk") {
            public_jwk.insert_str(1, &format!("\"pad\":\"{}\",", "j".repeat(huge)));
        }
        Ok(KeyMaterial {
            external_id,
            public_jwk,
        })
    }

    fn sign(&self, external_id: &str, message: &[u8], _alg: Alg) -> Result<Vec<u8>, Error> {
        let text = std::str::from_utf8(message).unwrap_or("");
        match text {
            "loop" => {
                let mut counter: u64 = 0;
                loop {
                    counter = std::hint::black_box(counter.wrapping_add(1));
                }
            }
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![0xa5; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "trap" => panic!("hostile guest traps on purpose"),
            _ => {}
        }
        if let Some(url) = text.strip_prefix("egress:") {
            let response = Request::get(url).send()?;
            return Err(Error::Internal(format!(
                "egress reached {url}: status {}",
                response.status
            )));
        }
        if let Some(key) = text.strip_prefix("snoop:") {
            // Look the key up exactly and as a prefix of other providers' names.
            let found = storage::get(key)?.is_some() || !storage::list(key)?.is_empty();
            let listed = storage::list("")?;
            return Err(Error::InvalidInput(format!(
                "snoop found={found} listed={}",
                listed.len()
            )));
        }
        if let Some(report) = attack(text) {
            return Err(report);
        }
        if let Some(size) = text.strip_prefix("bigsig:") {
            return Ok(vec![0x51; number(size)]);
        }
        let key = key_for(external_id)?;
        let signature: Signature = if self.mode == Mode::WrongKey {
            SigningKey::from_slice(&[7u8; 32])
                .expect("valid scalar")
                .sign(message)
        } else {
            key.sign(message)
        };
        if self.mode == Mode::Der {
            return Ok(signature.to_der().as_bytes().to_vec());
        }
        Ok(signature.to_bytes().to_vec())
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        if external_id.starts_with("sticky") {
            return Err(Error::Denied("this backend never deletes keys".into()));
        }
        storage::delete(&format!("key/{external_id}"))?;
        Ok(())
    }
}

fn number(text: &str) -> usize {
    text.parse().unwrap_or(0)
}

/// Runs the attack `text` names, if it names one; returns its report.
fn attack(text: &str) -> Option<Error> {
    let (name, rest) = text.split_once(':')?;
    let (first, second) = rest.split_once(':').unwrap_or((rest, ""));
    Some(match name {
        "store" => hoard::store(number(rest)),
        "log" => hoard::log(number(first), number(second)),
        "error" => Error::Internal("E".repeat(number(rest))),
        "upload" => hoard::upload(second, number(first)),
        "download" => hoard::download(rest),
        "hoard" => hoard::hoard(number(rest)),
        "fanout" => hoard::fan_out(second, number(first)),
        "dump" => hoard::dump(CONFIG.get().map_or("", String::as_str), rest),
        "readfile" => match std::fs::read(rest) {
            Ok(bytes) => Error::Internal(format!("read {} bytes of {rest}", bytes.len())),
            Err(e) => Error::InvalidInput(format!("cannot read {rest}: {e}")),
        },
        _ => return None,
    })
}

export_adapter!(Hostile);
