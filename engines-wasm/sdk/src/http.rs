//! A small blocking HTTP client over `wasi:http/outgoing-handler@0.2.12`, speaking the
//! types of the [`http`] crate ([`Method`], [`StatusCode`], [`HeaderMap`], …).
//!
//! The host sends the request for the engine, and only to the `host:port`s listed in the
//! engine's `allowed-hosts` setting; any other destination fails with
//! [`HttpError::Denied`]. TLS (an `https://` URL) is done by the host.
//!
//! ```no_run
//! use context_engines_sdk::http::{Request, encode};
//!
//! # fn main() -> Result<(), context_engines_sdk::http::HttpError> {
//! let url = format!("http://127.0.0.1:2375/v1.41/containers/{}/json", encode("my agent"));
//! let response = Request::get(url).send()?;
//! if response.is_success() {
//!     let inspect: serde_json::Value = response.json()?;
//! } else {
//!     eprintln!("{}", response.status_line()); // e.g. "404 Not Found"
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use ::http::uri::Scheme;
pub use ::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
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

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`).
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
/// [`COMPONENT`] keeping the `/` between segments, and `:` and `@` of image references.
const PATH: &AsciiSet = &COMPONENT.remove(b'/').remove(b':').remove(b'@');

/// Percent-encodes `text` for a query value or a path segment: everything but
/// `A-Z a-z 0-9 - _ . ~` is escaped.
pub fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// Percent-encodes `text` for a path whose `/` separate segments (`:` and `@` kept too, as
/// in image references like `reg:5000/foo/bar:1` or `foo@sha256:…`).
pub fn encode_path(text: &str) -> String {
    utf8_percent_encode(text, PATH).to_string()
}

/// A request body.
pub enum Body {
    /// No body: `content-length: 0` is sent, except for `GET` and `HEAD`, which send no
    /// framing at all (a body of unknown length would go chunked, which some servers
    /// refuse, e.g. dockerd on `POST …/start`).
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

impl From<Archive> for Body {
    fn from(archive: Archive) -> Body {
        Body::Stream(archive.into_stream())
    }
}

/// Why a request got no response. Every message starts with the method and URL.
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
    headers: HeaderMap,
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
            headers: HeaderMap::new(),
            body: Body::Empty,
            connect_timeout: None,
            first_byte_timeout: None,
            between_bytes_timeout: None,
            invalid: None,
        }
    }

    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::GET, url)
    }

    /// A `POST` request.
    pub fn post(url: impl Into<String>) -> Request {
        Request::new(Method::POST, url)
    }

    /// A `PUT` request.
    pub fn put(url: impl Into<String>) -> Request {
        Request::new(Method::PUT, url)
    }

    /// A `DELETE` request.
    pub fn delete(url: impl Into<String>) -> Request {
        Request::new(Method::DELETE, url)
    }

    /// Adds a header (several of one name are all sent); `name` and `value` are anything
    /// [`HeaderName`] and [`HeaderValue`] convert from (`&str`, `String`, bytes,
    /// constants of [`header`]). An invalid one fails [`send`](Request::send) with
    /// [`HttpError::Invalid`]. The host forbids a few (`host`, `connection`,
    /// `transfer-encoding`, …): it sets them itself.
    pub fn header<K, V>(mut self, name: K, value: V) -> Request
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<::http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<::http::Error>,
    {
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                self.headers.append(name, value);
            }
            (Err(e), _) => self.invalid = Some(e.into().to_string()),
            (_, Err(e)) => self.invalid = Some(e.into().to_string()),
        }
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
        self.header(header::CONTENT_TYPE, "application/json")
    }

    /// Streams the body from `stream` (an [`Archive`], or any `wasi:io` input stream)
    /// until it ends, through `output-stream.blocking-splice`: the bytes go from the
    /// source to the connection without being collected in the engine's memory.
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
        let what = format!("{} {}", self.method, self.url);
        let invalid = |problem: &str| HttpError::Invalid(format!("{what}: {problem}"));
        if let Some(problem) = &self.invalid {
            return Err(invalid(problem));
        }
        let (scheme, authority, path_with_query) = split_url(&self.url).map_err(|e| invalid(&e))?;

        let mut headers = self.headers;
        let length = match &self.body {
            Body::Bytes(bytes) => Some(bytes.len()),
            Body::Empty if !matches!(self.method, Method::GET | Method::HEAD) => Some(0),
            Body::Empty | Body::Stream(_) => None,
        };
        if let Some(length) = length {
            headers.entry(header::CONTENT_LENGTH).or_insert_with(|| HeaderValue::from(length));
        }
        let entries: Vec<(String, Vec<u8>)> = headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect();
        let fields = wit::Fields::from_list(&entries).map_err(|e| invalid(&format!("header refused by the host: {e:?}")))?;

        let request = wit::OutgoingRequest::new(fields);
        request.set_method(&wit_method(&self.method)).map_err(|()| invalid("method refused by the host"))?;
        let scheme = match scheme {
            s if s == Scheme::HTTP => wit::Scheme::Http,
            s if s == Scheme::HTTPS => wit::Scheme::Https,
            s => wit::Scheme::Other(s.to_string()),
        };
        request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme refused by the host"))?;
        request.set_authority(Some(&authority)).map_err(|()| invalid("authority refused by the host"))?;
        request.set_path_with_query(Some(&path_with_query)).map_err(|()| invalid("path refused by the host"))?;
        let outgoing_body = request.body().map_err(|()| invalid("request body unavailable"))?;

        let options = timeouts(self.connect_timeout, self.first_byte_timeout, self.between_bytes_timeout);
        let future = outgoing_handler::handle(request, options).map_err(|code| from_code(&what, &code))?;

        let sent = match write_body(&outgoing_body, self.body) {
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

/// `scheme://authority/path?query#fragment` → (scheme, authority, `/path?query`).
fn split_url(url: &str) -> Result<(Scheme, String, String), String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err("the URL is not absolute (expected e.g. http://host:port/path)".to_string());
    };
    if authority.as_str().contains('@') {
        return Err("credentials in the URL are not supported".to_string());
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok((scheme.clone(), authority.to_string(), format!("{}{query}", uri.path())))
}

fn wit_method(method: &Method) -> wit::Method {
    match *method {
        Method::GET => wit::Method::Get,
        Method::HEAD => wit::Method::Head,
        Method::POST => wit::Method::Post,
        Method::PUT => wit::Method::Put,
        Method::DELETE => wit::Method::Delete,
        Method::CONNECT => wit::Method::Connect,
        Method::OPTIONS => wit::Method::Options,
        Method::TRACE => wit::Method::Trace,
        Method::PATCH => wit::Method::Patch,
        _ => wit::Method::Other(method.to_string()),
    }
}

fn timeouts(connect: Option<Duration>, first_byte: Option<Duration>, between_bytes: Option<Duration>) -> Option<wit::RequestOptions> {
    if connect.is_none() && first_byte.is_none() && between_bytes.is_none() {
        return None;
    }
    let nanos = |d: Duration| Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let options = wit::RequestOptions::new();
    // A host that does not support a timeout refuses it; its default then applies.
    if let Some(d) = connect {
        let _ = options.set_connect_timeout(nanos(d));
    }
    if let Some(d) = first_byte {
        let _ = options.set_first_byte_timeout(nanos(d));
    }
    if let Some(d) = between_bytes {
        let _ = options.set_between_bytes_timeout(nanos(d));
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
            bytes.chunks(WRITE_CHUNK).try_for_each(|chunk| out.blocking_write_and_flush(chunk).map_err(|e| stream_error(e, "writing")))
        }
        Body::Stream(input) => splice_all(&out, &input),
    }
}

/// Has the host move `input` into `out` until `input` ends, never through guest memory.
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
            Err(e) => return Err(stream_error(e, &format!("failed after {sent} bytes"))),
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
            return outcome.unwrap_or_else(|()| Err(wit::ErrorCode::InternalError(Some("response already taken".into()))));
        }
        // The pollable is a child of `future`: dropped at the end of this statement, before it.
        future.subscribe().block();
    }
}

fn read_response(what: &str, response: wit::IncomingResponse) -> Result<Response, HttpError> {
    let status = StatusCode::from_u16(response.status()).map_err(|e| HttpError::Transport(format!("{what}: {e}")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers().entries() {
        // The host validated them already; anything it let through that `http` refuses is dropped.
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
            headers.append(name, value);
        }
    }
    let unavailable = || HttpError::Body(format!("{what}: the response body is unavailable"));
    let incoming = response.consume().map_err(|()| unavailable())?;
    let stream = incoming.stream().map_err(|()| unavailable())?;
    let mut body = Vec::new();
    let outcome = loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(bytes) => body.extend_from_slice(&bytes),
            Err(StreamError::Closed) => break Ok(()),
            Err(e) => {
                let cause = stream_error(e, "reading");
                break Err(HttpError::Body(format!("{what}: reading the response body after {} bytes: {cause}", body.len())));
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
    use wit::ErrorCode as E;
    let message = format!("{what}: {}", describe_code(code));
    match code {
        E::HttpRequestDenied | E::DestinationIpProhibited => HttpError::Denied(message),
        E::HttpRequestMethodInvalid
        | E::HttpRequestUriInvalid
        | E::HttpRequestUriTooLong
        | E::HttpRequestHeaderSectionSize(_)
        | E::HttpRequestHeaderSize(_) => HttpError::Invalid(message),
        _ => HttpError::Transport(message),
    }
}

/// `wasi:http`'s `error-code` in words: its WIT name as words (`connection refused`,
/// `dns timeout`, …) with its payload, if any.
fn describe_code(code: &wit::ErrorCode) -> String {
    match code {
        wit::ErrorCode::HttpRequestDenied => "request denied by the host (destination not in the engine's allowed-hosts)".into(),
        wit::ErrorCode::InternalError(Some(detail)) => format!("internal error: {detail}"),
        other => {
            let debug = format!("{other:?}");
            let debug = debug.trim_start_matches("ErrorCode::");
            let (name, payload) = debug.split_at(debug.find('(').unwrap_or(debug.len()));
            let mut words = String::new();
            for c in name.chars() {
                if c.is_ascii_uppercase() && !words.is_empty() {
                    words.push(' ');
                }
                words.push(c.to_ascii_lowercase());
            }
            format!("{words}{payload}")
        }
    }
}

/// A response, with its whole body.
#[derive(Debug, Clone)]
pub struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Response {
    /// The status code as a number (`match response.status() { 200 => …, 404 => … }`).
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The status code.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The status code with its reason phrase, e.g. `409 Conflict` (only the code when it
    /// has no standard reason).
    pub fn status_line(&self) -> String {
        match self.status.canonical_reason() {
            Some(reason) => format!("{} {reason}", self.status.as_str()),
            None => self.status.as_str().to_string(),
        }
    }

    /// All headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The first value of header `name` (case-insensitive), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
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
            .map_err(|e| HttpError::Decode(format!("status {}: the body is not the JSON expected: {e}", self.status.as_str())))
    }
}

impl From<Response> for ::http::Response<Vec<u8>> {
    fn from(response: Response) -> Self {
        let mut converted = ::http::Response::new(response.body);
        *converted.status_mut() = response.status;
        *converted.headers_mut() = response.headers;
        converted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let split = |url| split_url(url).map(|(s, a, p)| (s.to_string(), a, p));
        let ok = |s: &str, a: &str, p: &str| Ok((s.to_string(), a.to_string(), p.to_string()));
        assert_eq!(split("http://127.0.0.1:2375/v1.41/images/json?all=1"), ok("http", "127.0.0.1:2375", "/v1.41/images/json?all=1"));
        assert_eq!(split("https://h"), ok("https", "h", "/"));
        assert_eq!(split("http://h?x=1#f"), ok("http", "h", "/?x=1"));
        assert_eq!(split("http://[::1]:80/x"), ok("http", "[::1]:80", "/x"));
        assert!(split("127.0.0.1:2375/x").is_err());
        assert!(split("/x").unwrap_err().contains("not absolute"));
        assert!(split("http:///x").is_err());
        assert!(split("http://h/a b").is_err());
        assert!(split("http://u:p@h/").unwrap_err().contains("credentials"));
    }

    #[test]
    fn encoding_keeps_what_it_should() {
        assert_eq!(encode(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(encode("reg:5000/foo"), "reg%3A5000%2Ffoo");
        assert_eq!(encode("a-b_c.d~é"), "a-b_c.d~%C3%A9");
        assert_eq!(encode_path("reg:5000/foo/bar:1"), "reg:5000/foo/bar:1");
        assert_eq!(encode_path("foo@sha256:ab"), "foo@sha256:ab");
        assert_eq!(encode_path("a b?#"), "a%20b%3F%23");
    }

    #[test]
    fn bad_headers_and_methods_are_reported_at_send() {
        assert!(Request::get("http://h/").header("bad name", "v").invalid.is_some());
        assert!(Request::get("http://h/").header("x-ok", "bad\nvalue").invalid.is_some());
        let fine = Request::post("http://h/").header("X-Mixed-Case", "v").header(header::ACCEPT, "a").json(&1);
        assert!(fine.invalid.is_none());
        assert_eq!(fine.headers.get("x-mixed-case").unwrap(), "v");
        assert_eq!(fine.headers[header::CONTENT_TYPE], "application/json");
        assert!(matches!(wit_method(&Method::PATCH), wit::Method::Patch));
        assert!(matches!(wit_method(&Method::from_bytes(b"PURGE").unwrap()), wit::Method::Other(m) if m == "PURGE"));
    }

    #[test]
    fn status_lines_have_reasons() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let r = Response { status: StatusCode::CONFLICT, headers, body: br#"{"message":"x"}"#.to_vec() };
        assert_eq!(r.status(), 409);
        assert_eq!(r.status_line(), "409 Conflict");
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.json::<serde_json::Value>().unwrap()["message"], "x");
        let unknown = Response { status: StatusCode::from_u16(599).unwrap(), headers: HeaderMap::new(), body: Vec::new() };
        assert_eq!(unknown.status_line(), "599");
        assert!(unknown.json::<serde_json::Value>().unwrap_err().message().starts_with("status 599: "));
        let converted: ::http::Response<Vec<u8>> = r.into();
        assert_eq!(converted.status(), StatusCode::CONFLICT);
    }

    #[test]
    fn error_codes_read_as_words() {
        use wit::ErrorCode as E;
        assert_eq!(describe_code(&E::ConnectionRefused), "connection refused");
        assert_eq!(describe_code(&E::HttpResponseTimeout), "http response timeout");
        assert!(describe_code(&E::HttpRequestDenied).contains("denied"));
        assert_eq!(describe_code(&E::InternalError(Some("boom".into()))), "internal error: boom");
        let dns = describe_code(&E::DnsError(wit::DnsErrorPayload { rcode: Some("NXDOMAIN".into()), info_code: None }));
        assert!(dns.starts_with("dns error(") && dns.contains("NXDOMAIN"), "{dns}");
        assert!(matches!(from_code("GET http://h/", &E::HttpRequestDenied), HttpError::Denied(m) if m.starts_with("GET http://h/: ")));
        assert!(matches!(from_code("GET http://h/", &E::ConnectionRefused), HttpError::Transport(_)));
    }
}
