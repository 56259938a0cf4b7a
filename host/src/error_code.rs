//! The stable error codes of the API, each with its one HTTP status: the
//! `code` of every error body and the `outcome` of every refused operation in
//! the audit log. A new code fails to compile until its name and status are
//! given here.

use http::StatusCode;

/// A stable, snake_case error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    // 400: the request is unusable.
    MalformedJson,
    InvalidField,
    UnreadableBody,
    InvalidBase64,
    InvalidQuery,
    InvalidRequest,
    InvalidJwk,
    /// An algorithm kmsgw does not know (400; one a provider cannot do is
    /// [`ErrorCode::UnsupportedAlgByProvider`], 405, by the API contract).
    UnknownAlg,
    InvalidConfig,
    NoConfigFile,
    ReloadRefused,
    InvalidSubject,
    InvalidDnsName,
    InvalidUri,
    CertificateInputTooLarge,
    CertificateNotPem,
    CertificateKeyMismatch,
    CertificateNotValidNow,
    CertificateChainBroken,
    IssuerCertificateNotCa,
    IssuerNotCa,
    InvalidCertificateRequest,
    /// A digest whose length is not that of the key algorithm's hash.
    InvalidDigest,
    /// A digest for a key whose algorithm signs the message itself (EdDSA, ML-DSA).
    DigestNotSupported,
    // 401, 403.
    Unauthorized,
    Forbidden,
    // 404.
    KeyNotFound,
    ProviderNotFound,
    RouteNotFound,
    CertificateNotFound,
    // 405.
    MethodNotAllowed,
    UnsupportedOperation,
    UnsupportedAlgByProvider,
    // 409.
    KeyExists,
    KeyChanged,
    /// A master key rotation is running already.
    RotationRunning,
    // 413.
    PayloadTooLarge,
    // 500.
    InternalError,
    // 502, 503, 504, 507.
    BackendError,
    BackendUnavailable,
    ProviderNotConfigured,
    AuditUnavailable,
    StorageUnavailable,
    /// The master key is not unsealed (its seal cannot be reached yet).
    Sealed,
    BackendTimeout,
    StorageFull,
}

impl ErrorCode {
    /// The code as clients and the audit log see it.
    pub fn as_str(self) -> &'static str {
        use ErrorCode as E;
        match self {
            E::MalformedJson => "malformed_json",
            E::InvalidField => "invalid_field",
            E::UnreadableBody => "unreadable_body",
            E::InvalidBase64 => "invalid_base64",
            E::InvalidQuery => "invalid_query",
            E::InvalidRequest => "invalid_request",
            E::InvalidJwk => "invalid_jwk",
            E::UnknownAlg | E::UnsupportedAlgByProvider => "unsupported_alg",
            E::InvalidConfig => "invalid_config",
            E::NoConfigFile => "no_config_file",
            E::ReloadRefused => "reload_refused",
            E::InvalidSubject => "invalid_subject",
            E::InvalidDnsName => "invalid_dns_name",
            E::InvalidUri => "invalid_uri",
            E::CertificateInputTooLarge => "certificate_input_too_large",
            E::CertificateNotPem => "certificate_not_pem",
            E::CertificateKeyMismatch => "certificate_key_mismatch",
            E::CertificateNotValidNow => "certificate_not_valid_now",
            E::CertificateChainBroken => "certificate_chain_broken",
            E::IssuerCertificateNotCa => "issuer_certificate_not_ca",
            E::IssuerNotCa => "issuer_not_ca",
            E::InvalidCertificateRequest => "invalid_certificate_request",
            E::InvalidDigest => "invalid_digest",
            E::DigestNotSupported => "digest_not_supported",
            E::Unauthorized => "unauthorized",
            E::Forbidden => "forbidden",
            E::KeyNotFound => "key_not_found",
            E::ProviderNotFound => "provider_not_found",
            E::RouteNotFound => "route_not_found",
            E::CertificateNotFound => "certificate_not_found",
            E::MethodNotAllowed => "method_not_allowed",
            E::UnsupportedOperation => "unsupported_operation",
            E::KeyExists => "key_exists",
            E::KeyChanged => "key_changed",
            E::RotationRunning => "rotation_running",
            E::PayloadTooLarge => "payload_too_large",
            E::InternalError => "internal_error",
            E::BackendError => "backend_error",
            E::BackendUnavailable => "backend_unavailable",
            E::ProviderNotConfigured => "provider_not_configured",
            E::AuditUnavailable => "audit_unavailable",
            E::StorageUnavailable => "storage_unavailable",
            E::Sealed => "sealed",
            E::BackendTimeout => "backend_timeout",
            E::StorageFull => "storage_full",
        }
    }

    /// The HTTP status of an answer with this code.
    pub fn status(self) -> StatusCode {
        use ErrorCode as E;
        match self {
            E::MalformedJson
            | E::InvalidField
            | E::UnreadableBody
            | E::InvalidBase64
            | E::InvalidQuery
            | E::InvalidRequest
            | E::InvalidJwk
            | E::UnknownAlg
            | E::InvalidConfig
            | E::NoConfigFile
            | E::ReloadRefused
            | E::InvalidSubject
            | E::InvalidDnsName
            | E::InvalidUri
            | E::CertificateInputTooLarge
            | E::CertificateNotPem
            | E::CertificateKeyMismatch
            | E::CertificateNotValidNow
            | E::CertificateChainBroken
            | E::IssuerCertificateNotCa
            | E::IssuerNotCa
            | E::InvalidCertificateRequest
            | E::InvalidDigest
            | E::DigestNotSupported => StatusCode::BAD_REQUEST,
            E::Unauthorized => StatusCode::UNAUTHORIZED,
            E::Forbidden => StatusCode::FORBIDDEN,
            E::KeyNotFound | E::ProviderNotFound | E::RouteNotFound | E::CertificateNotFound => {
                StatusCode::NOT_FOUND
            }
            E::MethodNotAllowed | E::UnsupportedOperation | E::UnsupportedAlgByProvider => {
                StatusCode::METHOD_NOT_ALLOWED
            }
            E::KeyExists | E::KeyChanged | E::RotationRunning => StatusCode::CONFLICT,
            E::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            E::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            E::BackendError => StatusCode::BAD_GATEWAY,
            E::BackendUnavailable
            | E::ProviderNotConfigured
            | E::AuditUnavailable
            | E::StorageUnavailable
            | E::Sealed => StatusCode::SERVICE_UNAVAILABLE,
            E::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            E::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }
}
