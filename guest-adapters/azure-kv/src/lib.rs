//! `azure-kv`: Azure Key Vault keys as a kmsgw provider, over the Key Vault REST
//! API (`{vaultUrl}/keys/…?api-version=…`). The gateway holds the Azure AD client
//! secret (`egressAuth` of type `oauth2-client-credentials` for the vault's host)
//! and adds the token to every request; this guest never sees it.
//!
//! Keys are EC (P-256, P-384, P-521) or RSA, signed over a digest computed here.
//! A key's external id is `name/version`, so a sign always uses the version the
//! gateway recorded.

use kmsgw_guest_sdk::http::{Request, Response, status_error};
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, base64url, config, crypto,
    export_adapter, serde_json, unique_key_name,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The Key Vault REST API version this guest speaks unless the config says otherwise.
const DEFAULT_API_VERSION: &str = "7.5";
/// Key Vault key names: letters, digits and `-`, at most 127 characters.
const MAX_NAME: usize = 127;

/// The provider entry's fields (EUDIPLO's `azure-kv` entry, plus `apiVersion`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    vault_url: String,
    /// The directory and application the gateway's `egressAuth` signs in as; kept
    /// for messages (the token request itself is the host's).
    tenant_id: String,
    client_id: String,
    #[serde(default = "default_api_version")]
    api_version: String,
}

fn default_api_version() -> String {
    DEFAULT_API_VERSION.into()
}

struct AzureKeyVault {
    vault: String,
    api_version: String,
    identity: String,
}

/// Key type and size or curve of a new key for `alg`.
fn key_request(alg: Alg, rsa_bits: u32) -> Result<Value, Error> {
    Ok(match alg {
        Alg::Es256 => json!({"kty": "EC", "crv": "P-256"}),
        Alg::Es384 => json!({"kty": "EC", "crv": "P-384"}),
        Alg::Es512 => json!({"kty": "EC", "crv": "P-521"}),
        Alg::Rs256 | Alg::Ps256 => json!({"kty": "RSA", "key_size": rsa_bits.max(2048)}),
        Alg::Eddsa | Alg::MlDsa44 | Alg::MlDsa65 | Alg::MlDsa87 => {
            return Err(Error::Unsupported(format!(
                "Azure Key Vault has no {} keys",
                alg.name()
            )));
        }
    })
}

impl AzureKeyVault {
    fn url(&self, path: &str) -> String {
        format!("{}{path}?api-version={}", self.vault, self.api_version)
    }

    fn send(&self, request: Request) -> Result<Response, Error> {
        let response = request.send()?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        let detail = response.error_text("code", "message");
        let error = status_error(response.status, &format!("Key Vault: {detail}"));
        Err(match error {
            Error::Denied(m) => Error::Denied(format!("{m} (signed in as {})", self.identity)),
            other => other,
        })
    }

    /// The external id and public JWK of a key bundle (`{"key": {kid, kty, …}}`).
    fn material(response: &Response) -> Result<KeyMaterial, Error> {
        let bundle: Value = response.json()?;
        let key = &bundle["key"];
        let kid = key["kid"]
            .as_str()
            .ok_or_else(|| Error::Internal("Key Vault returned a key without kid".into()))?;
        // kid: https://{vault}/keys/{name}/{version}
        let mut parts = kid.rsplit('/');
        let (Some(version), Some(name)) = (parts.next(), parts.next()) else {
            return Err(Error::Internal(format!("unexpected key id `{kid}`")));
        };
        let public = match key["kty"].as_str() {
            Some("EC" | "EC-HSM") => {
                json!({"kty": "EC", "crv": key["crv"], "x": key["x"], "y": key["y"]})
            }
            Some("RSA" | "RSA-HSM") => json!({"kty": "RSA", "n": key["n"], "e": key["e"]}),
            other => {
                return Err(Error::Internal(format!(
                    "Key Vault returned a key of type {other:?}"
                )));
            }
        };
        Ok(KeyMaterial {
            external_id: format!("{name}/{version}"),
            public_jwk: public.to_string(),
        })
    }
}

impl Adapter for AzureKeyVault {
    fn init(value: Value) -> Result<Self, Error> {
        let config: Config = config::parse(value)?;
        let vault = config::base_url("vaultUrl", &config.vault_url)?;
        Ok(AzureKeyVault {
            vault,
            api_version: config.api_version,
            identity: format!("client {} of tenant {}", config.client_id, config.tenant_id),
        })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: true,
            can_delete: true,
            algs: vec![Alg::Es256, Alg::Es384, Alg::Es512, Alg::Rs256, Alg::Ps256],
            default_alg: Alg::Es256,
            // Key Vault's sign operation takes the digest.
            signs_digests: true,
        }
    }

    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        let mut body = key_request(spec.alg, spec.rsa_bits)?;
        body["key_ops"] = json!(["sign", "verify"]);
        let name = unique_key_name(kid, MAX_NAME);
        let request = Request::post(self.url(&format!("/keys/{name}/create"))).json(&body);
        Self::material(&self.send(request)?)
    }

    fn import_key(&self, kid: &str, private_jwk: &Value, alg: Alg) -> Result<KeyMaterial, Error> {
        key_request(alg, 0)?;
        let mut key = json!({"key_ops": ["sign", "verify"]});
        let members: &[&str] = match private_jwk["kty"].as_str() {
            Some("EC") => &["kty", "crv", "x", "y", "d"],
            Some("RSA") => &["kty", "n", "e", "d", "p", "q", "dp", "dq", "qi"],
            _ => {
                return Err(Error::InvalidInput(
                    "Key Vault imports EC and RSA keys only".into(),
                ));
            }
        };
        for member in members {
            key[*member] = private_jwk[*member].clone();
        }
        let name = unique_key_name(kid, MAX_NAME);
        let request = Request::put(self.url(&format!("/keys/{name}"))).json(&json!({"key": key}));
        Self::material(&self.send(request)?)
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let digest = crypto::digest(alg, message).ok_or_else(|| {
            Error::Unsupported(format!("{} is not signed over a digest", alg.name()))
        })?;
        self.sign_digest(external_id, &digest, alg)
    }

    fn sign_digest(&self, external_id: &str, digest: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        let body = json!({"alg": alg.name(), "value": base64url::encode(digest)});
        let request = Request::post(self.url(&format!("/keys/{external_id}/sign"))).json(&body);
        let answer: Value = self.send(request)?.json()?;
        let value = answer["value"]
            .as_str()
            .ok_or_else(|| Error::Internal("Key Vault returned no signature value".into()))?;
        // Key Vault's ECDSA signatures are already r‖s.
        base64url::decode(value)
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        let name = external_id.split('/').next().unwrap_or(external_id);
        match self.send(Request::delete(self.url(&format!("/keys/{name}")))) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn health(&self) -> Result<(), Error> {
        let url = format!("{}&maxresults=1", self.url("/keys"));
        self.send(Request::get(url)).map(|_| ())
    }
}

export_adapter!(AzureKeyVault);
