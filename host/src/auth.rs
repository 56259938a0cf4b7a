//! API keys: who is calling, what they may do, and which tenant's keys they see.
//!
//! Tokens are kept only as SHA-256 digests; a presented token is hashed and
//! compared with every configured digest in constant time, so neither the match
//! nor its position leaks through timing.

use aws_lc_rs::digest::{SHA256, digest};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::config::{AuthConfig, Scope};

/// The caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    /// The API key's id; `None` when the gateway has no API keys.
    pub key_id: Option<String>,
    /// The tenant whose keys this caller works on; `None` for the keys outside tenants.
    pub tenant: Option<String>,
    scopes: Vec<Scope>,
}

impl Principal {
    /// The caller of a gateway without API keys (loopback only): may do everything.
    pub fn anonymous() -> Self {
        Principal {
            key_id: None,
            tenant: None,
            scopes: vec![Scope::Admin],
        }
    }

    /// This caller as the audit log names it.
    pub fn actor(&self) -> crate::audit::Actor<'_> {
        crate::audit::Actor {
            api_key: self.key_id.as_deref(),
            tenant: self.tenant.as_deref(),
        }
    }

    /// The scopes this caller was given.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether this caller holds `scope` (`admin` holds every scope).
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.iter().any(|&s| s == scope || s == Scope::Admin)
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("this route needs an API key: send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the API key is not valid")]
    Invalid,
}

struct ApiKey {
    digest: [u8; 32],
    principal: Principal,
}

/// The configured API keys.
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

impl ApiKeys {
    /// The keys of `config` (already validated by the config loader).
    pub fn new(config: &AuthConfig) -> Self {
        let keys = config
            .api_keys
            .iter()
            .map(|k| {
                let digest = match (&k.token, &k.token_sha256) {
                    (Some(token), _) => sha256(token.expose_secret().as_bytes()),
                    (None, Some(hex_digest)) => {
                        let mut out = [0u8; 32];
                        hex::decode_to_slice(hex_digest, &mut out)
                            .expect("the config loader checked the digest");
                        out
                    }
                    (None, None) => unreachable!("the config loader requires a token"),
                };
                ApiKey {
                    digest,
                    principal: Principal {
                        key_id: Some(k.id.clone()),
                        tenant: k.tenant.clone(),
                        scopes: k.scopes.clone(),
                    },
                }
            })
            .collect();
        ApiKeys { keys }
    }

    /// Whether any key is configured (otherwise every caller is [`Principal::anonymous`]).
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller presenting `authorization` (the header's value, if any).
    ///
    /// # Errors
    /// [`AuthError`] for a missing, malformed or unknown token.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, AuthError> {
        if !self.enabled() {
            return Ok(Principal::anonymous());
        }
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(AuthError::Invalid)?;
        let presented = sha256(token);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(&key.principal);
            }
        }
        found.cloned().ok_or(AuthError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ApiKeyConfig;
    use secrecy::SecretString;

    fn keys() -> ApiKeys {
        ApiKeys::new(&AuthConfig {
            api_keys: vec![
                ApiKeyConfig {
                    id: "signer".into(),
                    token: Some(SecretString::from("s3cret-token")),
                    token_sha256: None,
                    scopes: vec![Scope::Sign],
                    tenant: Some("acme".into()),
                },
                ApiKeyConfig {
                    id: "ops".into(),
                    token: None,
                    token_sha256: Some(hex::encode(sha256(b"ops-token"))),
                    scopes: vec![Scope::Admin],
                    tenant: None,
                },
            ],
        })
    }

    #[test]
    fn tokens_and_digests_identify_their_keys() {
        let keys = keys();
        let signer = keys.authenticate(Some(b"Bearer s3cret-token")).unwrap();
        assert_eq!(signer.key_id.as_deref(), Some("signer"));
        assert_eq!(signer.tenant.as_deref(), Some("acme"));
        assert!(signer.may(Scope::Sign) && !signer.may(Scope::KeysRead));
        let ops = keys.authenticate(Some(b"Bearer ops-token")).unwrap();
        assert!(ops.may(Scope::KeysDelete), "admin holds every scope");
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_refused() {
        let keys = keys();
        assert_eq!(keys.authenticate(None).unwrap_err(), AuthError::Missing);
        for bad in [
            &b"s3cret-token"[..],
            b"Basic s3cret-token",
            b"Bearer nope",
            b"Bearer ",
        ] {
            assert_eq!(
                keys.authenticate(Some(bad)).unwrap_err(),
                AuthError::Invalid
            );
        }
    }
}
