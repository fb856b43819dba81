//! A small blocking HTTP client over `wasi:http/outgoing-handler@0.2.12`.
//!
//! The host sends the request for the engine, and only to the `host:port`s listed in the
//! engine's `allowed-hosts` setting; any other destination fails with
//! [`HttpError::Denied`]. TLS (an `https://` URL) is done by the host.
//!
//! ```ignore
//! use context_engines_sdk::http::Request;
//!
//! let response = Request::get("http://127.0.0.1:2375/v1.41/version").send()?;
//! if response.is_success() {
//!     let version: serde_json::Value = response.json()?;
//! }
//! ```

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Archive;
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types as wit;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// Largest write `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;
/// Largest splice asked for at once (the host may move less).
const SPLICE_CHUNK: u64 = 1 << 20;
/// Size of one read of a response body.
const READ_CHUNK: u64 = 64 * 1024;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `PATCH`
    Patch,
    /// `OPTIONS`
    Options,
    /// Any other method, by name.
    Other(String),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other(m) => m,
        })
    }
}

impl Method {
    fn to_wit(&self) -> wit::Method {
        match self {
            Method::Get => wit::Method::Get,
            Method::Head => wit::Method::Head,
            Method::Post => wit::Method::Post,
            Method::Put => wit::Method::Put,
            Method::Delete => wit::Method::Delete,
            Method::Patch => wit::Method::Patch,
            Method::Options => wit::Method::Options,
            Method::Other(m) => wit::Method::Other(m.clone()),
        }
    }
}

/// A request body.
pub enum Body {
    /// No body (`content-length: 0` is sent for `POST`, `PUT` and `PATCH`).
    Empty,
    /// Bytes held in memory, sent with a `content-length`.
    Bytes(Vec<u8>),
    /// A stream copied into the request as it is read (chunked transfer encoding): the
    /// host splices it, so it never has to fit in the engine's memory.
    Stream(InputStream),
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Stream"),
        }
    }
}

/// Why a request got no response.
///
/// A response with an error status (4xx, 5xx) is *not* an `HttpError`: it is a
/// [`Response`] whose [`status`](Response::status) says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The request could not be built: bad URL, method, header name or value.
    Invalid(String),
    /// The host refused to send it: its destination is not in the engine's
    /// `allowed-hosts`.
    Denied(String),
    /// The destination could not be reached, or the exchange broke off: DNS, connection
    /// refused, timeout, TLS, protocol error.
    Transport(String),
    /// The request body could not be sent (its source stream failed, or the connection
    /// closed while sending it), or the response body could not be read.
    Body(String),
    /// The response body is not the JSON expected ([`Response::json`]).
    Decode(String),
}

impl HttpError {
    /// The message, without the case.
    pub fn message(&self) -> &str {
        match self {
            HttpError::Invalid(m) | HttpError::Denied(m) | HttpError::Transport(m) | HttpError::Body(m) | HttpError::Decode(m) => m,
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HttpError {}

/// An HTTP request under construction; [`send`](Request::send) sends it and blocks until
/// the whole response has arrived.
#[derive(Debug)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
    connect_timeout: Option<Duration>,
    first_byte_timeout: Option<Duration>,
    between_bytes_timeout: Option<Duration>,
    /// An error found while building, reported by `send`.
    invalid: Option<String>,
}

impl Request {
    /// A request of `method` to `url`: `scheme://authority/path?query` (`http` or
    /// `https`; the authority is `host:port` or `host`).
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Body::Empty,
            connect_timeout: None,
            first_byte_timeout: None,
            between_bytes_timeout: None,
            invalid: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::Get, url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Request {
        Request::new(Method::Post, url)
    }

    /// A `PUT` request.
    pub fn put(url: impl Into<String>) -> Request {
        Request::new(Method::Put, url)
    }

    /// A `DELETE` request.
    pub fn delete(url: impl Into<String>) -> Request {
        Request::new(Method::Delete, url)
    }

    /// Adds a header (several of one name are all sent). The host forbids a few
    /// (`host`, `connection`, `transfer-encoding`, …): it sets them itself.
    pub fn header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Request {
        self.headers.push((name.into().to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body to `bytes`.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Request {
        self.body = Body::Bytes(bytes.into());
        self
    }

    /// Sets the body to `value` as JSON, with `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Request {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.body = Body::Bytes(bytes),
            Err(e) => self.invalid = Some(format!("the JSON body cannot be serialized: {e}")),
        }
        self.header("content-type", "application/json")
    }

    /// Streams the body from `stream` (an [`Archive`], or any `wasi:io` input stream)
    /// until it ends, through `output-stream.blocking-splice`: the bytes go from the
    /// source to the connection without being collected.
    pub fn stream_body(mut self, stream: impl Into<InputStream>) -> Request {
        self.body = Body::Stream(stream.into());
        self
    }

    /// Time allowed to establish the connection (the host's default otherwise).
    pub fn connect_timeout(mut self, timeout: Duration) -> Request {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Time allowed between the end of the request and the first byte of the response.
    pub fn first_byte_timeout(mut self, timeout: Duration) -> Request {
        self.first_byte_timeout = Some(timeout);
        self
    }

    /// Time allowed between two bytes of the response.
    pub fn between_bytes_timeout(mut self, timeout: Duration) -> Request {
        self.between_bytes_timeout = Some(timeout);
        self
    }

    /// Sends the request, then reads the whole response.
    pub fn send(self) -> Result<Response, HttpError> {
        if let Some(problem) = self.invalid {
            return Err(HttpError::Invalid(format!("{} {}: {problem}", self.method, self.url)));
        }
        let what = format!("{} {}", self.method, self.url);
        let url = Url::parse(&self.url).map_err(|e| HttpError::Invalid(format!("{what}: {e}")))?;

        let mut headers = self.headers;
        let length = match &self.body {
            Body::Empty if matches!(self.method, Method::Post | Method::Put | Method::Patch) => Some(0),
            Body::Bytes(bytes) => Some(bytes.len()),
            Body::Empty | Body::Stream(_) => None,
        };
        if let Some(length) = length
            && !headers.iter().any(|(n, _)| n == "content-length")
        {
            headers.push(("content-length".to_string(), length.to_string().into_bytes()));
        }
        let fields = wit::Fields::from_list(&headers).map_err(|e| HttpError::Invalid(format!("{what}: bad header: {e:?}")))?;

        let request = wit::OutgoingRequest::new(fields);
        request.set_method(&self.method.to_wit()).map_err(|()| HttpError::Invalid(format!("{what}: bad method")))?;
        request.set_scheme(Some(&url.scheme)).map_err(|()| HttpError::Invalid(format!("{what}: bad scheme")))?;
        request.set_authority(Some(&url.authority)).map_err(|()| HttpError::Invalid(format!("{what}: bad authority")))?;
        request.set_path_with_query(Some(&url.path_with_query)).map_err(|()| HttpError::Invalid(format!("{what}: bad path")))?;
        let outgoing_body = request.body().map_err(|()| HttpError::Invalid(format!("{what}: request body unavailable")))?;

        let options = timeouts(self.connect_timeout, self.first_byte_timeout, self.between_bytes_timeout);
        let future = outgoing_handler::handle(request, options).map_err(|code| from_code(&what, &code))?;

        let sent = write_body(&outgoing_body, self.body);
        let sent = match sent {
            Ok(()) => wit::OutgoingBody::finish(outgoing_body, None)
                .map_err(|code| format!("finishing the request body: {}", describe_code(&code))),
            Err(e) => {
                // Unfinished: the host aborts the request instead of sending a short body.
                drop(outgoing_body);
                Err(e)
            }
        };

        let response = wait(&future).map_err(|code| from_code(&what, &code));
        drop(future);
        match (sent, response) {
            (Ok(()), response) => read_response(&what, response?),
            // The server answered with an error before taking the whole body: its answer
            // says more than the broken pipe does.
            (Err(_), Ok(response)) if !(200..300).contains(&response.status()) => read_response(&what, response),
            (Err(e), _) => Err(HttpError::Body(format!("{what}: sending the request body: {e}"))),
        }
    }
}

fn timeouts(connect: Option<Duration>, first_byte: Option<Duration>, between_bytes: Option<Duration>) -> Option<wit::RequestOptions> {
    if connect.is_none() && first_byte.is_none() && between_bytes.is_none() {
        return None;
    }
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let options = wit::RequestOptions::new();
    // A host that does not support a timeout refuses it; its default then applies.
    if let Some(d) = connect {
        let _ = options.set_connect_timeout(Some(nanos(d)));
    }
    if let Some(d) = first_byte {
        let _ = options.set_first_byte_timeout(Some(nanos(d)));
    }
    if let Some(d) = between_bytes {
        let _ = options.set_between_bytes_timeout(Some(nanos(d)));
    }
    Some(options)
}

/// Writes the body into the request; the output stream is dropped before returning, as
/// `outgoing-body.finish` requires.
fn write_body(body: &wit::OutgoingBody, content: Body) -> Result<(), String> {
    if matches!(content, Body::Empty) {
        return Ok(());
    }
    let out = body.write().map_err(|()| "the request body stream is unavailable".to_string())?;
    match content {
        Body::Empty => Ok(()),
        Body::Bytes(bytes) => {
            for chunk in bytes.chunks(WRITE_CHUNK) {
                out.blocking_write_and_flush(chunk).map_err(|e| stream_error(e, "writing"))?;
            }
            Ok(())
        }
        Body::Stream(input) => splice_all(&out, &input),
    }
}

fn splice_all(out: &OutputStream, input: &InputStream) -> Result<(), String> {
    let mut sent: u64 = 0;
    loop {
        match out.blocking_splice(input, SPLICE_CHUNK) {
            Ok(n) => sent += n,
            // Either the source ended (the normal way out) or the connection closed: the
            // output stream tells which.
            Err(StreamError::Closed) => {
                return match out.check_write() {
                    Ok(_) => out.blocking_flush().map_err(|e| stream_error(e, "flushing")),
                    Err(_) => Err(format!("the connection closed after {sent} bytes of the body")),
                };
            }
            Err(StreamError::LastOperationFailed(e)) => {
                let cause = wit::http_error_code(&e).map(|code| describe_code(&code)).unwrap_or_else(|| e.to_debug_string());
                return Err(format!("failed after {sent} bytes: {cause}"));
            }
        }
    }
}

fn stream_error(e: StreamError, doing: &str) -> String {
    match e {
        StreamError::Closed => format!("{doing}: the connection closed"),
        StreamError::LastOperationFailed(e) => {
            let cause = wit::http_error_code(&e).map(|code| describe_code(&code)).unwrap_or_else(|| e.to_debug_string());
            format!("{doing}: {cause}")
        }
    }
}

/// Blocks until the response head arrives.
fn wait(future: &wit::FutureIncomingResponse) -> Result<wit::IncomingResponse, wit::ErrorCode> {
    loop {
        if let Some(outcome) = future.get() {
            return match outcome {
                Ok(result) => result,
                Err(()) => Err(wit::ErrorCode::InternalError(Some("response already taken".into()))),
            };
        }
        let pollable = future.subscribe();
        pollable.block();
        // `pollable` is a child of `future`: dropped here, before it.
    }
}

fn read_response(what: &str, response: wit::IncomingResponse) -> Result<Response, HttpError> {
    let status = response.status();
    let headers = {
        let fields = response.headers();
        fields.entries().into_iter().collect::<Vec<(String, Vec<u8>)>>()
    };
    let incoming = response.consume().map_err(|()| HttpError::Body(format!("{what}: the response body is unavailable")))?;
    let stream = incoming.stream().map_err(|()| HttpError::Body(format!("{what}: the response body is unavailable")))?;
    let mut body = Vec::new();
    let outcome = loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break Ok(()),
            Err(e) => {
                break Err(HttpError::Body(format!(
                    "{what}: reading the response body after {} bytes: {}",
                    body.len(),
                    stream_error(e, "reading")
                )));
            }
        }
    };
    // Children before parents: stream, body, response.
    drop(stream);
    drop(wit::IncomingBody::finish(incoming));
    drop(response);
    outcome.map(|()| Response { status, headers, body })
}

fn from_code(what: &str, code: &wit::ErrorCode) -> HttpError {
    let message = format!("{what}: {}", describe_code(code));
    match code {
        wit::ErrorCode::HttpRequestDenied | wit::ErrorCode::DestinationIpProhibited => HttpError::Denied(message),
        wit::ErrorCode::HttpRequestMethodInvalid
        | wit::ErrorCode::HttpRequestUriInvalid
        | wit::ErrorCode::HttpRequestUriTooLong
        | wit::ErrorCode::HttpRequestHeaderSectionSize(_)
        | wit::ErrorCode::HttpRequestHeaderSize(_) => HttpError::Invalid(message),
        _ => HttpError::Transport(message),
    }
}

/// `error-code` in words.
fn describe_code(code: &wit::ErrorCode) -> String {
    use wit::ErrorCode as E;
    match code {
        E::DnsTimeout => "DNS lookup timed out".into(),
        E::DnsError(p) => match (&p.rcode, p.info_code) {
            (Some(rcode), _) => format!("DNS error ({rcode})"),
            (None, Some(info)) => format!("DNS error (info code {info})"),
            (None, None) => "DNS error".into(),
        },
        E::DestinationNotFound => "destination not found".into(),
        E::DestinationUnavailable => "destination unavailable".into(),
        E::DestinationIpProhibited => "destination IP address prohibited".into(),
        E::DestinationIpUnroutable => "destination IP address unroutable".into(),
        E::ConnectionRefused => "connection refused".into(),
        E::ConnectionTerminated => "connection terminated".into(),
        E::ConnectionTimeout => "connection timed out".into(),
        E::ConnectionReadTimeout => "timed out reading from the connection".into(),
        E::ConnectionWriteTimeout => "timed out writing to the connection".into(),
        E::ConnectionLimitReached => "connection limit reached".into(),
        E::TlsProtocolError => "TLS protocol error".into(),
        E::TlsCertificateError => "TLS certificate error".into(),
        E::TlsAlertReceived(p) => format!("TLS alert received{}", p.alert_message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()),
        E::HttpRequestDenied => "request denied by the host (destination not in the engine's allowed-hosts)".into(),
        E::HttpResponseIncomplete => "incomplete response".into(),
        E::HttpResponseTimeout => "timed out waiting for the response".into(),
        E::HttpProtocolError => "HTTP protocol error".into(),
        E::InternalError(Some(m)) => format!("internal error: {m}"),
        E::InternalError(None) => "internal error".into(),
        other => format!("{other:?}").trim_start_matches("ErrorCode::").to_string(),
    }
}

/// A response, with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The status code with its reason phrase, e.g. `409 Conflict`.
    pub fn status_line(&self) -> String {
        match reason_phrase(self.status) {
            "" => self.status.to_string(),
            reason => format!("{} {reason}", self.status),
        }
    }

    /// All headers, names in lower case, in the order received.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| HttpError::Decode(format!("status {}: the body is not the JSON expected: {e}", self.status)))
    }
}

/// The standard reason phrase of `status` ("" when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Percent-encodes `text` for a query value or a path segment: everything but
/// `A-Z a-z 0-9 - _ . ~` is escaped.
pub fn encode(text: &str) -> String {
    encode_keeping(text, b"")
}

/// Percent-encodes `text` for a path whose `/` separate segments (`:` and `@` kept too, as
/// in image references like `reg:5000/foo/bar:1` or `foo@sha256:…`).
pub fn encode_path(text: &str) -> String {
    encode_keeping(text, b"/:@")
}

fn encode_keeping(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL split as `outgoing-request` wants it.
struct Url {
    scheme: wit::Scheme,
    authority: String,
    path_with_query: String,
}

impl Url {
    fn parse(url: &str) -> Result<Url, String> {
        let (scheme, rest) = split_url(url)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => wit::Scheme::Http,
            "https" => wit::Scheme::Https,
            other => wit::Scheme::Other(other.to_string()),
        };
        let (authority, path_with_query) = rest;
        Ok(Url { scheme, authority: authority.to_string(), path_with_query })
    }
}

/// `scheme://authority/path?query#fragment` → (scheme, (authority, "/path?query")).
fn split_url(url: &str) -> Result<(&str, (&str, String)), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| "the URL has no scheme (expected e.g. http://host:port/path)".to_string())?;
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) {
        return Err(format!("the URL's scheme {scheme:?} is invalid"));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err("the URL has no host".to_string());
    }
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".to_string());
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok((scheme, (authority, path)))
}

impl From<Archive> for Body {
    fn from(archive: Archive) -> Body {
        Body::Stream(archive.into_stream())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:2375/v1.41/images/json?all=1").unwrap(),
            ("http", ("127.0.0.1:2375", "/v1.41/images/json?all=1".to_string()))
        );
        assert_eq!(split_url("https://h").unwrap(), ("https", ("h", "/".to_string())));
        assert_eq!(split_url("http://h?x=1#f").unwrap(), ("http", ("h", "/?x=1".to_string())));
        assert!(split_url("127.0.0.1:2375/x").is_err());
        assert!(split_url("http:///x").is_err());
        assert!(split_url("http://u:p@h/").is_err());
    }

    #[test]
    fn encoding_keeps_what_it_should() {
        assert_eq!(encode(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(encode("reg:5000/foo"), "reg%3A5000%2Ffoo");
        assert_eq!(encode_path("reg:5000/foo/bar:1"), "reg:5000/foo/bar:1");
        assert_eq!(encode_path("a b?#"), "a%20b%3F%23");
    }

    #[test]
    fn status_lines_have_reasons() {
        let r = Response {
            status: 409,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: br#"{"message":"x"}"#.to_vec(),
        };
        assert_eq!(r.status_line(), "409 Conflict");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.json::<serde_json::Value>().unwrap()["message"], "x");
    }
}
