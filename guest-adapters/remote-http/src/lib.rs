//! `remote-http`: the remote-KMS HTTP contract (`POST {keysPath}`,
//! `POST {keysPath}/{kid}/sign`, `DELETE {keysPath}/{kid}`, `GET {healthPath}`,
//! optional `POST {keysPath}/{kid}/import`) spoken from inside a guest over
//! `wasi:http`. Config: `{baseUrl, apiKey?, keysPath?, healthPath?, canImport?,
//! algs?}`; `algs` lists the JOSE algorithms the remote service signs (default
//! `["ES256"]`, the first being the default).

use kmsgw_guest_sdk::http::{Request, Response};
use kmsgw_guest_sdk::{
    Adapter, Alg, Capabilities, Error, KeyMaterial, KeySpec, base64std, base64url, export_adapter,
    serde_json,
};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    base_url: String,
    api_key: Option<String>,
    #[serde(default = "default_keys_path")]
    keys_path: String,
    #[serde(default = "default_health_path")]
    health_path: String,
    #[serde(default)]
    can_import: bool,
    #[serde(default = "default_algs")]
    algs: Vec<String>,
}

fn default_algs() -> Vec<String> {
    vec!["ES256".into()]
}

fn default_keys_path() -> String {
    "/keys".into()
}

fn default_health_path() -> String {
    "/health".into()
}

struct RemoteHttp {
    config: Config,
    algs: Vec<Alg>,
}

impl RemoteHttp {
    /// Refuses an algorithm the config does not list.
    fn check_alg(&self, alg: Alg) -> Result<(), Error> {
        if self.algs.contains(&alg) {
            Ok(())
        } else {
            Err(Error::Unsupported(format!(
                "{} is not in this guest's configured algs",
                alg.name()
            )))
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn send(&self, request: Request) -> Result<Response, Error> {
        let request = match &self.config.api_key {
            Some(key) => request.header("authorization", &format!("Bearer {key}")),
            None => request,
        };
        let response = request.send()?;
        match response.status {
            200..=299 => Ok(response),
            404 => Err(Error::NotFound(response.text())),
            401 | 403 => Err(Error::Denied(format!(
                "remote service refused: {} {}",
                response.status,
                response.text()
            ))),
            405 | 501 => Err(Error::Unsupported(response.text())),
            status => Err(Error::Internal(format!(
                "remote service answered {status}: {}",
                response.text()
            ))),
        }
    }

    fn key_material(kid: &str, response: &Response) -> Result<KeyMaterial, Error> {
        let body: Value = response.json()?;
        let jwk = body
            .get("publicJwk")
            .ok_or_else(|| Error::Internal("remote service returned no publicJwk".into()))?;
        Ok(KeyMaterial {
            external_id: kid.to_owned(),
            public_jwk: jwk.to_string(),
        })
    }
}

impl Adapter for RemoteHttp {
    fn init(config: Value) -> Result<Self, Error> {
        let config: Config = serde_json::from_value(config)
            .map_err(|e| Error::InvalidInput(format!("config: {e}")))?;
        let mut algs = Vec::new();
        for name in &config.algs {
            let alg = Alg::from_name(name)
                .ok_or_else(|| Error::InvalidInput(format!("config: unknown alg `{name}`")))?;
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
        if algs.is_empty() {
            return Err(Error::InvalidInput("config: algs is empty".into()));
        }
        Ok(RemoteHttp { config, algs })
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            can_create: true,
            can_import: self.config.can_import,
            can_delete: true,
            default_alg: self.algs[0],
            // The remote-KMS contract signs messages only.
            signs_digests: false,
            algs: self.algs.clone(),
        }
    }

    fn generate_key(&self, kid: &str, spec: KeySpec) -> Result<KeyMaterial, Error> {
        self.check_alg(spec.alg)?;
        let mut body = json!({"kid": kid, "alg": spec.alg.name()});
        if spec.rsa_bits > 0 {
            body["keySize"] = spec.rsa_bits.into();
        }
        let request = Request::post(self.url(&self.config.keys_path)).json(&body);
        Self::key_material(kid, &self.send(request)?)
    }

    fn import_key(&self, kid: &str, private_jwk: &Value, alg: Alg) -> Result<KeyMaterial, Error> {
        self.check_alg(alg)?;
        if !self.config.can_import {
            return Err(Error::Unsupported(
                "import is disabled; set canImport: true in the guest config".into(),
            ));
        }
        let path = format!("{}/{kid}/import", self.config.keys_path);
        let request = Request::post(self.url(&path))
            .json(&json!({"privateJwk": private_jwk, "alg": alg.name()}));
        Self::key_material(kid, &self.send(request)?)
    }

    fn sign(&self, external_id: &str, message: &[u8], alg: Alg) -> Result<Vec<u8>, Error> {
        self.check_alg(alg)?;
        let path = format!("{}/{external_id}/sign", self.config.keys_path);
        let data = base64std::encode(message);
        let request =
            Request::post(self.url(&path)).json(&json!({"data": data, "alg": alg.name()}));
        let body: Value = self.send(request)?.json()?;
        let signature = body["signature"]
            .as_str()
            .ok_or_else(|| Error::Internal("remote service returned no signature".into()))?;
        base64url::decode(signature)
    }

    fn delete_key(&self, external_id: &str) -> Result<(), Error> {
        let path = format!("{}/{external_id}", self.config.keys_path);
        match self.send(Request::delete(self.url(&path))) {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn health(&self) -> Result<(), Error> {
        self.send(Request::get(self.url(&self.config.health_path)))
            .map(|_| ())
    }
}

export_adapter!(RemoteHttp);
