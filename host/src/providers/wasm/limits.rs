//! What one guest provider may make the host hold: one [`GuestLimits`] per provider
//! entry, filled from kms.json `limits` with safe defaults, handed to every place
//! that enforces a bound, and shown by `GET /providers`. Bounds that an operator
//! has no reason to change are constants here.

use serde::Serialize;

use crate::config::WasmLimits;
use crate::crypto::{Alg, KeyKind};

/// Largest external id a guest may return for a key, in bytes (it is stored and
/// sent back on every sign).
pub const MAX_EXTERNAL_ID_BYTES: usize = 1024;
/// Largest public JWK a guest may return, in bytes of JSON (an RSA-4096 JWK is ~750).
pub const MAX_PUBLIC_JWK_BYTES: usize = 16 * 1024;
/// Largest signature a guest may return for `alg`, in bytes: an ML-DSA
/// signature's fixed length, else 1024 (RSA-8192's).
pub fn max_signature_bytes(alg: Alg) -> usize {
    match alg.key_kind() {
        KeyKind::MlDsa(level) => level.signature_len(),
        _ => 1024,
    }
}
/// How much of a guest's own text (an error message, stderr) reaches a client or
/// the log, in bytes; the rest is cut.
pub const MAX_GUEST_TEXT_BYTES: usize = 512;
/// Largest header set (`wasi:http` fields) a guest may build, in bytes of the
/// host's representation.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Largest single write into an outgoing request body; one such chunk is buffered.
pub const BODY_CHUNK_BYTES: usize = 16 * 1024;

/// The bounds of one guest provider. See guest-adapters/README.md for each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestLimits {
    /// Linear memory per instance, MiB.
    pub memory_mb: u64,
    /// Deadline of every call but key generation, ms.
    pub timeout_ms: u64,
    /// Deadline of key generation (create, rotate), ms.
    pub generate_timeout_ms: u64,
    /// Instances kept warm (concurrent calls).
    pub instances: usize,
    /// Storage: key + sealed value bytes over all entries.
    pub storage_bytes: u64,
    /// Storage: number of entries.
    pub storage_entries: u64,
    /// Longest log line kept, bytes (after escaping); the rest is cut.
    pub log_line_bytes: usize,
    /// Log lines per second (the provider's instances together); the excess is dropped and counted.
    pub log_lines_per_second: u32,
    /// Largest outgoing request body, bytes.
    pub http_request_bytes: u64,
    /// Largest incoming response body, bytes.
    pub http_response_bytes: u64,
    /// Outgoing requests in flight per instance.
    pub http_concurrent: usize,
    /// wasi resources (streams, requests, header sets, …) an instance may hold at once.
    pub resources: usize,
}

impl Default for GuestLimits {
    fn default() -> Self {
        GuestLimits {
            memory_mb: 64,
            timeout_ms: 2000,
            generate_timeout_ms: 60_000,
            instances: std::thread::available_parallelism().map_or(2, |n| n.get()),
            storage_bytes: 16 << 20,
            storage_entries: 10_000,
            log_line_bytes: 1024,
            log_lines_per_second: 100,
            http_request_bytes: 1 << 20,
            http_response_bytes: 4 << 20,
            http_concurrent: 4,
            resources: 128,
        }
    }
}

impl GuestLimits {
    /// The limits of a provider entry: its `limits` over the defaults.
    ///
    /// # Errors
    /// The names of fields that are zero (every limit must allow something).
    pub fn resolve(given: Option<&WasmLimits>) -> Result<GuestLimits, String> {
        let mut limits = GuestLimits::default();
        let Some(given) = given else {
            return Ok(limits);
        };
        let mut zero = Vec::new();
        let mut set = |name: &'static str, value: Option<u64>, slot: &mut u64| {
            if let Some(value) = value {
                if value == 0 {
                    zero.push(name);
                }
                *slot = value;
            }
        };
        let mut instances = limits.instances as u64;
        let mut log_line = limits.log_line_bytes as u64;
        let mut log_rate = u64::from(limits.log_lines_per_second);
        let mut concurrent = limits.http_concurrent as u64;
        let mut resources = limits.resources as u64;
        set("memoryMb", given.memory_mb, &mut limits.memory_mb);
        set("timeoutMs", given.timeout_ms, &mut limits.timeout_ms);
        set(
            "generateTimeoutMs",
            given.generate_timeout_ms,
            &mut limits.generate_timeout_ms,
        );
        set("instances", given.instances.map(u64::from), &mut instances);
        set(
            "storageBytes",
            given.storage_bytes,
            &mut limits.storage_bytes,
        );
        set(
            "storageEntries",
            given.storage_entries,
            &mut limits.storage_entries,
        );
        set("logLineBytes", given.log_line_bytes, &mut log_line);
        set(
            "logLinesPerSecond",
            given.log_lines_per_second.map(u64::from),
            &mut log_rate,
        );
        set(
            "httpRequestBytes",
            given.http_request_bytes,
            &mut limits.http_request_bytes,
        );
        set(
            "httpResponseBytes",
            given.http_response_bytes,
            &mut limits.http_response_bytes,
        );
        set(
            "httpConcurrent",
            given.http_concurrent.map(u64::from),
            &mut concurrent,
        );
        set("resources", given.resources.map(u64::from), &mut resources);
        if !zero.is_empty() {
            return Err(format!("{} must be greater than zero", zero.join(", ")));
        }
        if log_line < 64 {
            return Err("logLineBytes must be at least 64".into());
        }
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        limits.instances = size(instances);
        limits.log_line_bytes = size(log_line);
        limits.log_lines_per_second = u32::try_from(log_rate).unwrap_or(u32::MAX);
        limits.http_concurrent = size(concurrent);
        limits.resources = size(resources);
        Ok(limits)
    }

    /// Linear memory per instance, bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mb)
            .unwrap_or(usize::MAX / 2)
            .saturating_mul(1 << 20)
    }

    /// The deadline of every call but key generation.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }

    /// The deadline of key generation.
    pub fn generate_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.generate_timeout_ms)
    }
}

/// `text` from a guest, made safe for one log line or an error message: control
/// characters (newlines among them) and Unicode line separators escaped, cut to
/// `max` bytes with a note of how much was cut.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut taken = 0;
    for c in text.chars() {
        let start = out.len();
        if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(start);
            break;
        }
        taken += c.len_utf8();
    }
    if taken < text.len() {
        out.push_str(&format!(" …[cut {} bytes]", text.len() - taken));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_signature_may_be_as_long_as_its_algorithm_needs_and_no_longer() {
        assert_eq!(max_signature_bytes(Alg::MlDsa44), 2420);
        assert_eq!(max_signature_bytes(Alg::MlDsa87), 4627);
        // RSA-8192's length bounds every classic algorithm.
        for alg in [Alg::ES256, Alg::EdDSA, Alg::PS256] {
            assert_eq!(max_signature_bytes(alg), 1024, "{alg}");
        }
    }

    #[test]
    fn sanitize_escapes_line_breaks_and_cuts_long_text() {
        assert_eq!(sanitize("a\nb\r\u{1b}[31m", 100), r"a\nb\r\u{1b}[31m");
        assert_eq!(sanitize("x\u{2028}y", 100), r"x\u{2028}y");
        let cut = sanitize(&"é".repeat(100), 11);
        assert_eq!(cut, "ééééé …[cut 190 bytes]");
        assert_eq!(sanitize("short", 5), "short");
    }

    #[test]
    fn zero_limits_are_refused_by_name() {
        let limits = WasmLimits {
            storage_bytes: Some(0),
            resources: Some(0),
            ..WasmLimits::default()
        };
        let error = GuestLimits::resolve(Some(&limits)).unwrap_err();
        assert_eq!(error, "storageBytes, resources must be greater than zero");
        let limits = WasmLimits {
            http_concurrent: Some(2),
            ..WasmLimits::default()
        };
        assert_eq!(
            GuestLimits::resolve(Some(&limits)).unwrap().http_concurrent,
            2
        );
    }
}
