//! The Cloud Signature Consortium API v2 (v2.0.0.2) under `/csc/v2`, for remote
//! document-signing clients: a credential is a key whose current version has a
//! certificate, its `credentialID` the kid; the service is authorised with a
//! kmsgw API key as bearer token, and tenants and scopes apply as on the REST
//! API. Credentials are in `implicit` mode: `credentials/authorize` hands out a
//! short-lived, single-use SAD bound to the hashes it was given (kept in the
//! catalog, so any replica redeems it once), and `signatures/signHash` signs
//! digests through the key's provider like `POST /keys/{kid}/sign` with
//! `digest`. Errors are CSC's `{error, error_description}`.
//!
//! Here: the routes, the error shape and the algorithm identifiers;
//! [`credentials`] lists and describes credentials, [`signing`] authorises and
//! signs.

pub mod credentials;
pub mod signing;

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::{IntoResponses, ToSchema};

use super::error::JsonBody;
use super::{ApiError, AppState};
use crate::crypto::{Alg, KeyKind};
use crate::error_code::ErrorCode;
use crate::gateway::GatewayError;
use crate::providers::ProviderError;

/// The CSC specification version served.
const SPEC: &str = "2.0.0.2";
/// Most hashes in one `signHash` (and one SAD): the credential's `multisign`.
const MULTISIGN: usize = 1000;
/// Most unexpired SADs one API key may hold.
const MAX_OUTSTANDING_SADS: i64 = 1000;
/// Page size of `credentials/list` when `maxResults` is absent, and its largest.
const LIST_PAGE: u32 = 100;

/// The methods served, as `info` lists them.
const METHODS: [&str; 5] = [
    "info",
    "credentials/list",
    "credentials/info",
    "credentials/authorize",
    "signatures/signHash",
];

/// OIDs: hash algorithms, signature algorithms, key algorithms, curves.
mod oid {
    pub const SHA256: &str = "2.16.840.1.101.3.4.2.1";
    pub const SHA384: &str = "2.16.840.1.101.3.4.2.2";
    pub const SHA512: &str = "2.16.840.1.101.3.4.2.3";
    pub const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
    pub const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
    pub const ECDSA_SHA512: &str = "1.2.840.10045.4.3.4";
    pub const SHA256_WITH_RSA: &str = "1.2.840.113549.1.1.11";
    pub const RSASSA_PSS: &str = "1.2.840.113549.1.1.10";
    pub const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    pub const RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
    pub const P256: &str = "1.2.840.10045.3.1.7";
    pub const P384: &str = "1.3.132.0.34";
    pub const P521: &str = "1.3.132.0.35";
}

/// The hash OID whose digests a key of `alg` signs; `None` for algorithms
/// without a pre-hashed form (which are no CSC credentials).
fn hash_oid(alg: Alg) -> Option<&'static str> {
    Some(match alg {
        Alg::ES256 | Alg::RS256 | Alg::PS256 => oid::SHA256,
        Alg::ES384 => oid::SHA384,
        Alg::ES512 => oid::SHA512,
        _ => return None,
    })
}

/// The signature algorithm OID of a key of `alg` (`key.algo`).
fn sign_algo(alg: Alg) -> Option<&'static str> {
    Some(match alg {
        Alg::ES256 => oid::ECDSA_SHA256,
        Alg::ES384 => oid::ECDSA_SHA384,
        Alg::ES512 => oid::ECDSA_SHA512,
        Alg::RS256 => oid::SHA256_WITH_RSA,
        Alg::PS256 => oid::RSASSA_PSS,
        _ => return None,
    })
}

/// Whether a `signAlgo` names what a key of `alg` signs: its signature
/// algorithm, or its key algorithm (ecPublicKey, rsaEncryption for PKCS#1
/// v1.5) with the hash given apart.
fn accepts_sign_algo(alg: Alg, asked: &str) -> bool {
    sign_algo(alg) == Some(asked)
        || match alg.key_kind() {
            KeyKind::Ec(_) => asked == oid::EC_PUBLIC_KEY,
            KeyKind::Rsa => alg == Alg::RS256 && asked == oid::RSA_ENCRYPTION,
            _ => false,
        }
}

/// The routes under `/csc/v2`: `info` open, the others behind an API key.
pub fn routes(state: AppState) -> Router<AppState> {
    let protected = Router::new()
        .route("/csc/v2/credentials/list", post(credentials::list))
        .route("/csc/v2/credentials/info", post(credentials::info))
        .route("/csc/v2/credentials/authorize", post(signing::authorize))
        .route("/csc/v2/signatures/signHash", post(signing::sign_hash))
        .route("/csc/v2/signatures/timestamp", post(timestamp))
        .route("/csc/v2/signatures/signDoc", post(sign_doc))
        .route_layer(middleware::from_fn_with_state(
            state,
            super::authenticate::<CscError>,
        ));
    Router::new()
        .route("/csc/v2/info", post(info).get(info))
        .merge(protected)
}

/// A CSC error answer: status and `{error, error_description}`.
#[derive(Debug)]
pub struct CscError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

/// The body of every CSC error.
#[derive(Serialize, ToSchema)]
pub struct CscErrorBody {
    /// `invalid_request`, `invalid_token`, `access_denied`, `not_implemented`,
    /// `server_error` or `temporarily_unavailable`.
    error: String,
    /// What went wrong, for a person.
    error_description: String,
}

/// Every error status a CSC route may answer, each with [`CscErrorBody`].
#[derive(IntoResponses)]
#[allow(dead_code)] // only read by the OpenAPI generator
pub enum CscErrors {
    /// A bad or unknown parameter: credentialID, SAD, hashes, signAlgo, …
    #[response(status = 400)]
    BadRequest(CscErrorBody),
    /// No API key, or one that is not valid.
    #[response(status = 401)]
    Unauthorized(CscErrorBody),
    /// The API key lacks the scope.
    #[response(status = 403)]
    Forbidden(CscErrorBody),
    /// The body exceeds the limit.
    #[response(status = 413)]
    TooLarge(CscErrorBody),
    /// The gateway failed; details are in its log.
    #[response(status = 500)]
    Internal(CscErrorBody),
    /// The backend refused or answered nonsense.
    #[response(status = 502)]
    BadGateway(CscErrorBody),
    /// The backend, the database or the audit log is unavailable.
    #[response(status = 503)]
    Unavailable(CscErrorBody),
    /// The backend did not answer in time.
    #[response(status = 504)]
    Timeout(CscErrorBody),
}

/// A 400 that CSC calls `invalid_request`.
fn invalid(description: impl Into<String>) -> ApiError {
    ApiError::bad_request(ErrorCode::InvalidRequest, description)
}

/// A failure inside the gateway (500; the detail goes to the log only).
fn internal(detail: String) -> ApiError {
    ApiError::Gateway(GatewayError::Provider(ProviderError::Internal(detail)))
}

impl From<ApiError> for CscError {
    fn from(e: ApiError) -> Self {
        let status = e.code().status();
        let description = e.public_message();
        let (status, error) = match status.as_u16() {
            401 => (status, "invalid_token"),
            403 => (status, "access_denied"),
            // An unknown key (credentialID) or an operation the provider cannot
            // do is an invalid request in CSC's terms.
            404 | 405 => (StatusCode::BAD_REQUEST, "invalid_request"),
            503 => (status, "temporarily_unavailable"),
            500..=599 => (status, "server_error"),
            _ => (status, "invalid_request"),
        };
        CscError {
            status,
            error,
            description,
        }
    }
}

impl From<GatewayError> for CscError {
    fn from(e: GatewayError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for CscError {
    fn into_response(self) -> Response {
        let body = CscErrorBody {
            error: self.error.to_owned(),
            error_description: self.description,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON request body whose failures are CSC errors.
pub struct CscBody<T>(T);

impl<T: DeserializeOwned> FromRequest<AppState> for CscBody<T> {
    type Rejection = CscError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, CscError> {
        let JsonBody(body) = JsonBody::from_request(req, state).await?;
        Ok(CscBody(body))
    }
}

/// `info`: what this service is and serves.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InfoResponse {
    specs: &'static str,
    name: &'static str,
    description: &'static str,
    lang: &'static str,
    /// `external`: kmsgw API keys, given as bearer tokens.
    auth_type: Vec<&'static str>,
    methods: Vec<&'static str>,
}

/// CSC `info`: the service, its authorisation type and methods (no token needed).
#[utoipa::path(post, path = "/csc/v2/info", tag = "csc",
    responses((status = 200, description = "The service", body = InfoResponse)))]
pub async fn info() -> Json<InfoResponse> {
    Json(InfoResponse {
        specs: SPEC,
        name: "kmsgw",
        description: "Remote signing over kmsgw keys: a credential is a key with a certificate",
        lang: "en",
        auth_type: vec!["external"],
        methods: METHODS.to_vec(),
    })
}

/// CSC `signatures/timestamp`: not served (501).
#[utoipa::path(post, path = "/csc/v2/signatures/timestamp", tag = "csc",
    responses((status = 501, description = "Not served", body = CscErrorBody),
        (status = 401, description = "No API key, or one that is not valid", body = CscErrorBody)),
    security(("bearer" = [])))]
pub async fn timestamp() -> CscError {
    not_served(
        "signatures/timestamp",
        "use a time-stamping authority of your choice",
    )
}

/// CSC `signatures/signDoc`: not served (501).
#[utoipa::path(post, path = "/csc/v2/signatures/signDoc", tag = "csc",
    responses((status = 501, description = "Not served", body = CscErrorBody),
        (status = 401, description = "No API key, or one that is not valid", body = CscErrorBody)),
    security(("bearer" = [])))]
pub async fn sign_doc() -> CscError {
    not_served(
        "signatures/signDoc",
        "compute the document's hash and call signatures/signHash",
    )
}

fn not_served(method: &str, instead: &str) -> CscError {
    CscError {
        status: StatusCode::NOT_IMPLEMENTED,
        error: "not_implemented",
        description: format!("{method} is not served by kmsgw: {instead}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_name_the_signature_algorithms_their_certificates_use() {
        for &alg in Alg::ALL {
            match sign_algo(alg) {
                Some(algo) => {
                    let certificate_oid = crate::x509::signature_algorithm(alg).oid;
                    assert_eq!(certificate_oid.to_string(), algo);
                    assert!(accepts_sign_algo(alg, algo), "{alg}");
                    assert!(hash_oid(alg).is_some(), "{alg}");
                }
                None => assert!(alg.prehash().is_none() && hash_oid(alg).is_none(), "{alg}"),
            }
        }
        assert!(accepts_sign_algo(Alg::ES384, oid::EC_PUBLIC_KEY));
        assert!(accepts_sign_algo(Alg::RS256, oid::RSA_ENCRYPTION));
        assert!(!accepts_sign_algo(Alg::PS256, oid::RSA_ENCRYPTION));
        assert!(!accepts_sign_algo(Alg::ES256, oid::ECDSA_SHA384));
        assert!(!accepts_sign_algo(Alg::EdDSA, "1.3.101.112"));
    }
}
