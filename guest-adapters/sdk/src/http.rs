//! A small blocking HTTP client over `wasi:http`. The host lets a request through
//! only when its scheme, host and port are in the provider's `allowedHosts`; any
//! other request fails with [`Error::Denied`].

use crate::Error;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use crate::bindings::wasi::io::streams::StreamError;

/// Largest chunk `wasi:io` output streams accept in one blocking write.
const WRITE_CHUNK: usize = 4096;

/// A response: status, headers and the whole body.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body decoded as JSON.
    ///
    /// # Errors
    /// [`Error::Internal`] when the body is not JSON of the expected shape.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Internal(format!("response body is not the expected JSON: {e}")))
    }

    /// The message of a JSON error body `{"error": {<first>: …, <second>: …}}`
    /// (the shape of Azure's and Google's APIs) as `first second`, else the body
    /// as text.
    pub fn error_text(&self, first: &str, second: &str) -> String {
        self.json::<serde_json::Value>()
            .ok()
            .and_then(|body| {
                let error = body.get("error")?;
                Some(format!(
                    "{} {}",
                    error[first].as_str().unwrap_or("error"),
                    error[second].as_str().unwrap_or_default()
                ))
            })
            .unwrap_or_else(|| self.text())
    }

    /// The body as text, for error messages (cut to 200 characters).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect()
    }
}

/// A request being built.
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
}

impl Request {
    /// A GET of `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    /// A POST to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::Post, url)
    }

    /// A PUT to `url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new(Method::Put, url)
    }

    /// A DELETE of `url`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new(Method::Delete, url)
    }

    fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    /// Sets a JSON body (and its content type).
    pub fn json(mut self, value: &serde_json::Value) -> Self {
        self.body = Some(value.to_string().into_bytes());
        self.header("content-type", "application/json")
    }

    /// Sets a raw body with its content type.
    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self.header("content-type", content_type)
    }

    /// Sends the request and reads the whole response.
    ///
    /// # Errors
    /// [`Error::Denied`] when the host does not allow the destination,
    /// [`Error::Unavailable`] when it cannot be reached, [`Error::InvalidInput`] for a bad URL.
    pub fn send(self) -> Result<Response, Error> {
        let (scheme, authority, path) = split_url(&self.url)?;
        let headers = Fields::from_list(&self.headers)
            .map_err(|e| Error::InvalidInput(format!("bad header: {e:?}")))?;
        let request = OutgoingRequest::new(headers);
        let bad = |what: &str| Error::InvalidInput(format!("bad {what} in {}", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| bad("method"))?;
        request
            .set_scheme(Some(&scheme))
            .map_err(|()| bad("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| bad("authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| bad("path"))?;
        let outgoing = request
            .body()
            .map_err(|()| Error::Internal("request body taken twice".into()))?;
        let pending = outgoing_handler::handle(request, None).map_err(http_error)?;
        if let Some(body) = &self.body {
            let stream = outgoing
                .write()
                .map_err(|()| Error::Internal("body stream taken twice".into()))?;
            for chunk in body.chunks(WRITE_CHUNK) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| Error::Unavailable(format!("sending the body failed: {e:?}")))?;
            }
            drop(stream);
        }
        OutgoingBody::finish(outgoing, None).map_err(http_error)?;
        pending.subscribe().block();
        let response = match pending.get() {
            Some(Ok(Ok(response))) => response,
            Some(Ok(Err(code))) => return Err(http_error(code)),
            Some(Err(())) | None => return Err(Error::Internal("response was not ready".into())),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| Error::Internal("response body taken twice".into()))?;
        let body = read_all(&incoming)?;
        drop(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn read_all(incoming: &IncomingBody) -> Result<Vec<u8>, Error> {
    let stream = incoming
        .stream()
        .map_err(|()| Error::Internal("body stream taken twice".into()))?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(Error::Unavailable(format!(
                    "reading the response failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    Ok(body)
}

fn http_error(code: ErrorCode) -> Error {
    match code {
        ErrorCode::HttpRequestDenied => {
            Error::Denied("HttpRequestDenied: the gateway does not allow this destination".into())
        }
        ErrorCode::DnsTimeout | ErrorCode::ConnectionTimeout | ErrorCode::ConnectionReadTimeout => {
            Error::Unavailable(format!("timed out: {code:?}"))
        }
        other => Error::Unavailable(format!("{other:?}")),
    }
}

fn split_url(url: &str) -> Result<(Scheme, &str, &str), Error> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| Error::InvalidInput(format!("`{url}` is not an absolute URL")))?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(Error::InvalidInput(format!("unsupported scheme `{other}`"))),
    };
    let split = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// The [`Error`] for a backend's non-2xx answer with its own message `detail`:
/// 404 not found, 401/403 denied, 400/409/422 invalid input, 408/429/5xx
/// unavailable, anything else internal.
pub fn status_error(status: u16, detail: &str) -> Error {
    let text = format!("{status}: {detail}");
    match status {
        404 => Error::NotFound(text),
        401 | 403 => Error::Denied(text),
        400 | 409 | 422 => Error::InvalidInput(text),
        408 | 429 | 500..=599 => Error::Unavailable(text),
        _ => Error::Internal(text),
    }
}
