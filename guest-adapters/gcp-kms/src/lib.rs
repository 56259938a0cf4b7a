//! `gcp-kms`: Google Cloud KMS asymmetric signing keys as a kmsgw provider, over
//! the Cloud KMS REST API (v1). The gateway holds the service account
//! (`egressAuth` of type `google-service-account` for the API's host) and adds
//! its access token to every request; this guest never sees the key or the token.
//!
//! A kmsgw key is a CryptoKey of purpose `ASYMMETRIC_SIGN` in the configured key
//! ring; its external id is the full name of its first CryptoKeyVersion, which
//! is what signs. Deleting a key schedules that version for destruction.

use kmsgw_guest_sdk::http::{Request, Response, status_error};
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, base64std, config, crypto,
    export_adapter, jwk, serde_json, sleep, unique_key_name,
};
use serde::Deserialize;
use serde_json::{Value, json};

const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";
/// CryptoKey ids: letters, digits, `_` and `-`, at most 63 characters.
const MAX_NAME: usize = 63;
/// How often, and how many times, a new version's public key is asked for while
/// Cloud KMS is still generating it.
const PENDING_POLL_MS: u64 = 100;
const PENDING_POLLS: u32 = 50;

/// The provider entry's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    project_id: String,
    location: String,
    key_ring: String,
    endpoint: Option<String>,
    /// `SOFTWARE` (default) or `HSM`.
    #[serde(default = "default_protection")]
    protection_level: String,
}

fn default_protection() -> String {
    "SOFTWARE".into()
}

struct CloudKms {
    endpoint: String,
    key_ring: String,
    protection_level: String,
}

/// The Cloud KMS algorithm of a new key for `alg`.
fn algorithm(alg: Alg, rsa_bits: u32) -> Result<String, Error> {
    let bits = || match rsa_bits {
        0 | 2048 => Ok(2048),
        3072 | 4096 => Ok(rsa_bits),
        other => Err(Error::InvalidInput(format!(
            "Cloud KMS has RSA keys of 2048, 3072 or 4096 bits, not {other}"
        ))),
    };
    Ok(match alg {
        Alg::Es256 => "EC_SIGN_P256_SHA256".into(),
        Alg::Es384 => "EC_SIGN_P384_SHA384".into(),
        Alg::Eddsa => "EC_SIGN_ED25519".into(),
        Alg::Rs256 => format!("RSA_SIGN_PKCS1_{}_SHA256", bits()?),
        Alg::Ps256 => format!("RSA_SIGN_PSS_{}_SHA256", bits()?),
        Alg::MlDsa44 => "PQ_SIGN_ML_DSA_44".into(),
        Alg::MlDsa65 => "PQ_SIGN_ML_DSA_65".into(),
        Alg::MlDsa87 => "PQ_SIGN_ML_DSA_87".into(),
        Alg::Es512 => {
            return Err(Error::Unsupported(
                "Cloud KMS has no P-521 signing keys".into(),
            ));
        }
    })
}

impl CloudKms {
    /// `asymmetricSign` with `body` (the data or its digest); the JOSE signature.
    fn asymmetric_sign(&self, external_id: &str, body: Value, alg: Alg) -> Result<Vec<u8>, Error> {
        let url = self.url(&format!("{external_id}:asymmetricSign"));
        let answer: Value = self.send(Request::post(url).json(&body))?.json()?;
        let signature = answer["signature"]
            .as_str()
            .ok_or_else(|| Error::Internal("Cloud KMS returned no signature".into()))?;
        crypto::signature_to_jose(alg, &base64std::decode(signature)?)
    }

    fn url(&self, name: &str) -> String {
        format!("{}/v1/{name}", self.endpoint)
    }

    fn send(&self, request: Request) -> Result<Response, Error> {
        let response = request.send()?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        Err(Self::error(&response))
    }

    /// Google API errors: {"error": {"code", "message", "status"}}.
    fn error(response: &Response) -> Error {
        let detail = response.error_text("status", "message");
        let message = format!("Cloud KMS: {detail}");
        // A version scheduled for destruction (or destroyed) is a deleted key to the gateway.
        if detail.starts_with("FAILED_PRECONDITION") && detail.contains("DESTROY") {
            return Error::NotFound(message);
        }
        status_error(response.status, &message)
    }

    /// The public key of `version` (an `alg` key) as a JWK, waiting while it is
    /// being generated. Post-quantum keys have no PEM form: Cloud KMS gives them
    /// only as `publicKeyFormat=NIST_PQC`, the raw FIPS 204 encoding.
    fn public_jwk(&self, version: &str, alg: Alg) -> Result<String, Error> {
        let post_quantum = matches!(alg, Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87);
        let mut url = self.url(&format!("{version}/publicKey"));
        if post_quantum {
            url.push_str("?publicKeyFormat=NIST_PQC");
        }
        for _ in 0..PENDING_POLLS {
            let response = Request::get(url.as_str()).send()?;
            if (200..300).contains(&response.status) {
                let key: Value = response.json()?;
                if post_quantum {
                    let data = key["publicKey"]["data"].as_str().ok_or_else(|| {
                        Error::Internal("Cloud KMS returned no publicKey.data".into())
                    })?;
                    return Ok(jwk::akp_public_jwk(alg, &base64std::decode(data)?));
                }
                let pem = key["pem"]
                    .as_str()
                    .ok_or_else(|| Error::Internal("Cloud KMS returned no pem".into()))?;
                return crypto::spki_pem_to_jwk(pem);
            }
            let pending = response.status == 400
                && response
                    .json::<Value>()
                    .is_ok_and(|b| b["error"]["status"] == "FAILED_PRECONDITION");
            if !pending {
                return Err(Self::error(&response));
            }
            sleep(PENDING_POLL_MS);
        }
        Err(Error::Unavailable(format!(
            "Cloud KMS is still generating {version}"
        )))
    }
}

impl Adapter for CloudKms {
    fn init(value: Value) -> Result<Self, Error> {
        let config: Config = config::parse(value)?;
        let endpoint = config::base_url(
            "endpoint",
            config.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT),
        )?;
        if !matches!(config.protection_level.as_str(), "SOFTWARE" | "HSM") {
            return Err(config::invalid(
                "protectionLevel",
                "must be SOFTWARE or HSM",
            ));
        }
        Ok(CloudKms {
            endpoint,
            key_ring: format!(
                "projects/{}/locations/{}/keyRings/{}",
                config.project_id, config.location, config.key_ring
            ),
            protection_level: config.protection_level,
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: false,
            can_delete: true,
            algs: vec![
                Alg::Es256,
                Alg::Es384,
                Alg::Eddsa,
                Alg::Rs256,
                Alg::Ps256,
                Alg::MlDsa44,
                Alg::MlDsa65,
                Alg::MlDsa87,
            ],
            default_alg: Alg::Es256,
            // asymmetricSign takes the digest of ECDSA and RSA keys.
            signs_digests: true,
        }
    }

    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        let body = json!({
            "purpose": "ASYMMETRIC_SIGN",
            "versionTemplate": {
                "algorithm": algorithm(spec.alg, spec.rsa_bits)?,
                "protectionLevel": self.protection_level,
            },
        });
        let id = unique_key_name(kid, MAX_NAME);
        let url = format!(
            "{}?cryptoKeyId={id}",
            self.url(&format!("{}/cryptoKeys", self.key_ring))
        );
        let key: Value = self.send(Request::post(url).json(&body))?.json()?;
        let name = key["name"]
            .as_str()
            .ok_or_else(|| Error::Internal("Cloud KMS returned a key without name".into()))?;
        let version = format!("{name}/cryptoKeyVersions/1");
        let public_jwk = self.public_jwk(&version, spec.alg)?;
        Ok(KeyMaterial {
            external_id: version,
            public_jwk,
        })
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        match crypto::digest(alg, message) {
            Some(digest) => self.sign_digest(external_id, &digest, alg),
            None => self.asymmetric_sign(
                external_id,
                json!({"data": base64std::encode(message)}),
                alg,
            ),
        }
    }

    fn sign_digest(&self, external_id: &str, digest: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let hash = if alg == Alg::Es384 {
            "sha384"
        } else {
            "sha256"
        };
        let body = json!({"digest": {hash: base64std::encode(digest)}});
        self.asymmetric_sign(external_id, body, alg)
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        let url = self.url(&format!("{external_id}:destroy"));
        match self.send(Request::post(url).json(&json!({}))) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn health(&self) -> Result<(), Error> {
        self.send(Request::get(self.url(&self.key_ring)))
            .map(|_| ())
    }
}

export_adapter!(CloudKms);
