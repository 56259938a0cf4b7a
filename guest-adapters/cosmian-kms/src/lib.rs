//! `cosmian-kms`: a Cosmian KMS server as a kmsgw provider, over KMIP 2.1 in its
//! JSON TTLV form (`POST {serverUrl}/kmip/2_1`). The server's API token is held
//! by the gateway (`egressAuth` of type `bearer` for the server's host); this
//! guest never sees it.
//!
//! A key is a KMIP key pair made by `CreateKeyPair` (private key sensitive, so
//! the server never exports it) and activated; its external id is
//! `{private id},{public id}`. Signs use KMIP `Sign` on the whole message (the
//! server hashes); delete revokes and destroys both halves.

use kmsgw_guest_sdk::http::{Request, Response, status_error};
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, config, crypto, export_adapter,
    serde_json,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// KMIP usage mask bits: Sign | Verify.
const SIGN_VERIFY: u32 = 0x1 | 0x2;

/// The provider entry's fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    server_url: String,
}

struct CosmianKms {
    endpoint: String,
}

/// JSON TTLV items.
mod ttlv {
    use super::{Value, json};

    pub fn structure(tag: &str, items: Vec<Value>) -> Value {
        json!({"tag": tag, "type": "Structure", "value": items})
    }

    pub fn enumeration(tag: &str, value: &str) -> Value {
        json!({"tag": tag, "type": "Enumeration", "value": value})
    }

    pub fn integer(tag: &str, value: u32) -> Value {
        json!({"tag": tag, "type": "Integer", "value": value})
    }

    pub fn text(tag: &str, value: &str) -> Value {
        json!({"tag": tag, "type": "TextString", "value": value})
    }

    pub fn boolean(tag: &str, value: bool) -> Value {
        json!({"tag": tag, "type": "Boolean", "value": value})
    }

    /// Byte strings are upper-case hex.
    pub fn bytes(tag: &str, value: &[u8]) -> Value {
        let hex: String = value.iter().map(|b| format!("{b:02X}")).collect();
        json!({"tag": tag, "type": "ByteString", "value": hex})
    }

    /// The first item tagged `tag` inside a structure.
    pub fn find<'a>(structure: &'a Value, tag: &str) -> Option<&'a Value> {
        structure["value"]
            .as_array()?
            .iter()
            .find(|item| item["tag"] == tag)
    }

    /// The first item tagged `tag` anywhere below `structure`.
    pub fn find_deep<'a>(structure: &'a Value, tag: &str) -> Option<&'a Value> {
        let items = structure["value"].as_array()?;
        items
            .iter()
            .find(|item| item["tag"] == tag)
            .or_else(|| items.iter().find_map(|item| find_deep(item, tag)))
    }

    /// A byte string's bytes.
    pub fn hex(item: &Value) -> Option<Vec<u8>> {
        let text = item["value"].as_str()?;
        if text.len() % 2 != 0 {
            return None;
        }
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
            .collect()
    }
}

/// The KMIP algorithm, curve or length of a new key pair for `alg`.
fn key_pair_attributes(alg: Alg, rsa_bits: u32) -> Result<Vec<Value>, Error> {
    let curve = |algorithm: &str, curve: &str| {
        vec![
            ttlv::enumeration("CryptographicAlgorithm", algorithm),
            ttlv::structure(
                "CryptographicDomainParameters",
                vec![ttlv::enumeration("RecommendedCurve", curve)],
            ),
        ]
    };
    Ok(match alg {
        Alg::Es256 => curve("ECDH", "P256"),
        Alg::Es384 => curve("ECDH", "P384"),
        Alg::Es512 => curve("ECDH", "P521"),
        Alg::Eddsa => curve("Ed25519", "CURVEED25519"),
        Alg::Rs256 | Alg::Ps256 => {
            let bits = match rsa_bits {
                0 => 2048,
                2048 | 3072 | 4096 => rsa_bits,
                other => {
                    return Err(Error::InvalidInput(format!(
                        "RSA keys are 2048, 3072 or 4096 bits, not {other}"
                    )));
                }
            };
            vec![
                ttlv::enumeration("CryptographicAlgorithm", "RSA"),
                ttlv::integer("CryptographicLength", bits),
            ]
        }
        Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => {
            return Err(Error::Unsupported(format!(
                "cosmian-kms does not offer {}",
                alg.name()
            )));
        }
    })
}

/// The KMIP signature parameters of `alg`; EdDSA needs none.
fn signature_parameters(alg: Alg) -> Vec<Value> {
    let algorithm = |name: &str| ttlv::enumeration("DigitalSignatureAlgorithm", name);
    match alg {
        Alg::Es256 => vec![algorithm("ECDSAWithSHA256")],
        Alg::Es384 => vec![algorithm("ECDSAWithSHA384")],
        Alg::Es512 => vec![algorithm("ECDSAWithSHA512")],
        Alg::Rs256 => vec![algorithm("SHA256WithRSAEncryption")],
        Alg::Ps256 => vec![
            algorithm("RSASSAPSS"),
            ttlv::enumeration("HashingAlgorithm", "SHA256"),
        ],
        Alg::Eddsa | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => Vec::new(),
    }
}

impl CosmianKms {
    /// Sends one KMIP operation and returns its response structure.
    fn call(&self, operation: Value) -> Result<Value, Error> {
        let response = Request::post(format!("{}/kmip/2_1", self.endpoint))
            .json(&operation)
            .send()?;
        if (200..300).contains(&response.status) {
            return response.json();
        }
        Err(Self::error(&response))
    }

    /// KMIP failures come back as `422` with `Result_Reason: message`.
    fn error(response: &Response) -> Error {
        let text = response.text();
        let reason = text.split(':').next().unwrap_or_default();
        let message = format!("Cosmian KMS: {text}");
        match (response.status, reason) {
            (_, "Item_Not_Found") => Error::NotFound(message),
            (_, "Permission_Denied" | "Authentication_Not_Successful") => Error::Denied(message),
            (_, "Feature_Not_Supported" | "Operation_Not_Supported") => Error::Unsupported(message),
            (422, _) => Error::InvalidInput(message),
            (status, _) => status_error(status, &message),
        }
    }

    fn id(response: &Value, tag: &str) -> Result<String, Error> {
        ttlv::find(response, tag)
            .and_then(|item| item["value"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| Error::Internal(format!("Cosmian KMS answered without {tag}")))
    }

    /// The public key `id` as a JWK (fetched as SubjectPublicKeyInfo).
    fn public_jwk(&self, id: &str) -> Result<String, Error> {
        let response = self.call(ttlv::structure(
            "Get",
            vec![
                ttlv::text("UniqueIdentifier", id),
                ttlv::enumeration("KeyFormatType", "PKCS8"),
            ],
        ))?;
        let der = ttlv::find_deep(&response, "KeyMaterial")
            .and_then(ttlv::hex)
            .ok_or_else(|| Error::Internal("Cosmian KMS returned no public key bytes".into()))?;
        crypto::spki_to_jwk(&der)
    }

    /// Revokes (when `revoke`) and destroys object `id`; an object already gone is fine.
    fn retire(&self, id: &str, revoke: bool) -> Result<(), Error> {
        let uid = ttlv::text("UniqueIdentifier", id);
        if revoke {
            let reason = ttlv::structure(
                "RevocationReason",
                vec![ttlv::enumeration(
                    "RevocationReasonCode",
                    "CessationOfOperation",
                )],
            );
            match self.call(ttlv::structure("Revoke", vec![uid.clone(), reason])) {
                Ok(_) | Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        match self.call(ttlv::structure("Destroy", vec![uid])) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Adapter for CosmianKms {
    fn init(value: Value) -> Result<Self, Error> {
        let config: Config = config::parse(value)?;
        let endpoint = config::base_url("serverUrl", &config.server_url)?;
        Ok(CosmianKms { endpoint })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: false,
            can_delete: true,
            // Cosmian's ML-DSA needs OpenSSL 3.4+ on the server; not offered here.
            algs: Alg::CLASSIC.to_vec(),
            default_alg: Alg::Es256,
            // Signs messages only here.
            signs_digests: false,
        }
    }

    /// KMIP assigns the ids; the gateway keeps the kid.
    fn generate_key(&self, _kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        let mut common = key_pair_attributes(spec.alg, spec.rsa_bits)?;
        common.push(ttlv::integer("CryptographicUsageMask", SIGN_VERIFY));
        common.push(ttlv::enumeration("ObjectType", "PrivateKey"));
        let created = self.call(ttlv::structure(
            "CreateKeyPair",
            vec![
                ttlv::structure("CommonAttributes", common),
                // Sensitive: the server never exports the private key.
                ttlv::structure(
                    "PrivateKeyAttributes",
                    vec![ttlv::boolean("Sensitive", true)],
                ),
            ],
        ))?;
        let private = Self::id(&created, "PrivateKeyUniqueIdentifier")?;
        let public = Self::id(&created, "PublicKeyUniqueIdentifier")?;
        let made = self
            .call(ttlv::structure(
                "Activate",
                vec![ttlv::text("UniqueIdentifier", &private)],
            ))
            .and_then(|_| self.public_jwk(&public));
        match made {
            Ok(public_jwk) => Ok(KeyMaterial {
                external_id: format!("{private},{public}"),
                public_jwk,
            }),
            Err(e) => {
                // Leave nothing half-made behind.
                let _ = self.retire(&private, false);
                let _ = self.retire(&public, false);
                Err(e)
            }
        }
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let private = external_id.split(',').next().unwrap_or(external_id);
        let mut request = vec![ttlv::text("UniqueIdentifier", private)];
        let parameters = signature_parameters(alg);
        if !parameters.is_empty() {
            request.push(ttlv::structure("CryptographicParameters", parameters));
        }
        request.push(ttlv::bytes("Data", message));
        let response = self.call(ttlv::structure("Sign", request))?;
        let signature = ttlv::find(&response, "SignatureData")
            .and_then(ttlv::hex)
            .ok_or_else(|| Error::Internal("Cosmian KMS returned no SignatureData".into()))?;
        crypto::signature_to_jose(alg, &signature)
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        let mut ids = external_id.split(',');
        let private = ids.next().unwrap_or(external_id);
        self.retire(private, true)?;
        match ids.next() {
            Some(public) => self.retire(public, true),
            None => Ok(()),
        }
    }

    fn health(&self) -> Result<(), Error> {
        self.call(ttlv::structure(
            "Query",
            vec![ttlv::enumeration("QueryFunction", "QueryServerInformation")],
        ))
        .map(|_| ())
    }
}

export_adapter!(CosmianKms);
