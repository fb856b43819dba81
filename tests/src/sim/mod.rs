//! An in-process dr-provision simulator for end-to-end tests.
//!
//! It serves the three surfaces a plugin provider touches: the HTTPS API with its
//! websocket event stream (`RS_ENDPOINT`), the plain-HTTP static file server
//! (`RS_FILESERVER`), and the unix-socket "plugin → dr-provision" API
//! (`FROM_PLUGIN_SOCK`). Tests drive state through `put_*`/`delete_*`, inject
//! faults, and inspect what the plugin sent.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _, TryStreamExt as _};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::io::ReaderStream;
use tokio_util::sync::CancellationToken;

mod tls;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Request bodies larger than this are refused; nothing legitimate a plugin
/// sends to dr-provision comes close.
const MAX_BODY: usize = 16 << 20;

/// Fault injected into every `/api/v3` request except the websocket upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFault {
    None,
    /// Answer 500 with an Error JSON.
    Status500,
    /// Hold the request until the fault is changed, so client timeouts must fire.
    Hang,
}

/// One call of `GET /agent-report`, made by a test agent to prove the
/// environment it was started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentReport {
    pub uuid: String,
    pub context: String,
    pub token: String,
    pub endpoints: String,
    pub args: String,
    pub path: String,
    /// `CE_PROBE` and the first line of the file `CE_PROBE_FILE` names, as the agent
    /// saw them (agent options tests).
    pub probe: String,
    pub file: String,
    pub raw_query: String,
}

/// The simulator. Cheap to clone; everything stops and its temp dir is removed
/// when the last clone is dropped.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Inner>,
    guard: Arc<Guard>,
}

struct Inner {
    state: Mutex<State>,
    fault: watch::Sender<ApiFault>,
    /// Bumped by `drop_websockets`; every open ws session watches it.
    ws_generation: watch::Sender<u64>,
    /// Bumped by `freeze_websockets`: open sessions go silent without closing.
    ws_freezes: watch::Sender<u64>,
    refuse_ws: AtomicBool,
    /// Off: `GET /machines/{uuid}/params` is not served (404), as by a stand-in for
    /// dr-provision that knows only the token endpoint.
    serve_params: AtomicBool,
    token: String,
    api_addr: SocketAddr,
    file_addr: SocketAddr,
    /// Canonical, so containment checks on canonical file paths are meaningful.
    webroot: PathBuf,
    scratch: PathBuf,
    plugin_sock: PathBuf,
    tls: tls::ApiTls,
    https_file_addr: SocketAddr,
    /// Every open API connection (websockets included) ends when this is cancelled;
    /// `rotate_cert` does, as a restarted dr-provision would.
    api_connections: Mutex<CancellationToken>,
}

#[derive(Default)]
struct State {
    machines: BTreeMap<String, Value>,
    contexts: BTreeMap<String, Value>,
    /// Profiles by name, each its `Params` object; "global" is dr-provision's global
    /// profile, under every machine's own.
    profiles: BTreeMap<String, Value>,
    subscribers: Vec<mpsc::UnboundedSender<Outgoing>>,
    logs: Vec<Value>,
    published: Vec<Value>,
    leaving: usize,
    agent_reports: Vec<AgentReport>,
    issued_tokens: Vec<(String, String)>,
    captured: String,
    ws_connects: usize,
    registrations: Vec<String>,
}

/// Owned only by `Sim` handles (never by server tasks), so dropping the last
/// `Sim` really tears everything down instead of being kept alive by a cycle.
struct Guard {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    root: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.cancel.cancel();
        for task in &self.tasks {
            task.abort();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

struct Event {
    kind: String,
    action: String,
    key: String,
    json: String,
}

/// What a websocket session is asked to send: an event, to the sessions whose topics
/// match it, or a raw frame (a fault test's), to every session as it is.
#[derive(Clone)]
enum Outgoing {
    Event(Arc<Event>),
    Raw(Message),
}

impl Sim {
    /// Binds every server on 127.0.0.1 ephemeral ports and under a fresh temp dir.
    pub async fn start() -> anyhow::Result<Sim> {
        let root = make_temp_root()?;
        match Self::start_in(&root).await {
            Ok(sim) => Ok(sim),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&root);
                Err(e)
            }
        }
    }

    async fn start_in(root: &Path) -> anyhow::Result<Sim> {
        let webroot = root.join("webroot");
        let scratch = root.join("scratch");
        std::fs::create_dir_all(webroot.join("files")).context("creating sim webroot")?;
        std::fs::create_dir_all(&scratch).context("creating sim scratch dir")?;
        let webroot = webroot.canonicalize().context("canonicalizing sim webroot")?;
        let plugin_sock = root.join("plugin.sock");

        let api_tls = tls::ApiTls::new()?;
        let acceptor = api_tls.acceptor.clone();
        let api = TcpListener::bind("127.0.0.1:0").await.context("binding sim API port")?;
        let files = TcpListener::bind("127.0.0.1:0").await.context("binding sim file port")?;
        let https_files = TcpListener::bind("127.0.0.1:0").await.context("binding sim https file port")?;
        let cancel = CancellationToken::new();
        let unix = UnixListener::bind(&plugin_sock).with_context(|| format!("binding {}", plugin_sock.display()))?;

        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            fault: watch::Sender::new(ApiFault::None),
            ws_generation: watch::Sender::new(0),
            ws_freezes: watch::Sender::new(0),
            refuse_ws: AtomicBool::new(false),
            serve_params: AtomicBool::new(true),
            token: random_hex(32),
            api_addr: api.local_addr()?,
            file_addr: files.local_addr()?,
            webroot,
            scratch,
            plugin_sock,
            tls: api_tls,
            https_file_addr: https_files.local_addr()?,
            api_connections: Mutex::new(cancel.child_token()),
        });
        let tasks = vec![
            tokio::spawn(accept_api(api, acceptor, inner.clone())),
            tokio::spawn(accept_files(files, None, inner.clone(), cancel.clone())),
            tokio::spawn(accept_files(https_files, Some(tls::self_signed_acceptor()?), inner.clone(), cancel.clone())),
            tokio::spawn(accept_plugin(unix, inner.clone(), cancel.clone())),
        ];
        let guard = Guard { cancel, tasks, root: root.to_path_buf() };
        Ok(Sim { inner, guard: Arc::new(guard) })
    }

    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.inner.api_addr.port())
    }

    pub fn file_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.file_addr.port())
    }

    pub fn webroot(&self) -> PathBuf {
        self.inner.webroot.clone()
    }

    /// The file server (agent reports included) on `ip` too, on an ephemeral port; its
    /// URL. For agents that cannot reach this host's 127.0.0.1: those on another swarm
    /// node (scripts/swarm.sh gives the host 169.254.231.1 on the link to it).
    pub async fn serve_files_on(&self, ip: &str) -> anyhow::Result<String> {
        let listener = TcpListener::bind((ip, 0)).await.with_context(|| format!("binding the sim file server on {ip}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(accept_files(listener, None, self.inner.clone(), self.guard.cancel.clone()));
        Ok(url)
    }

    pub fn token(&self) -> String {
        self.inner.token.clone()
    }

    pub fn plugin_sock(&self) -> PathBuf {
        self.inner.plugin_sock.clone()
    }

    pub fn scratch(&self) -> PathBuf {
        self.inner.scratch.clone()
    }

    /// The same files as `file_url`, over https with a self-signed certificate that
    /// no CA vouches for.
    pub fn https_file_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.inner.https_file_addr.port())
    }

    /// DER of the API's current certificate (SANs 127.0.0.1 and localhost).
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.inner.tls.leaf.current_der()
    }

    /// The CA that signed the API's certificate, in PEM.
    pub fn ca_pem(&self) -> String {
        self.inner.tls.ca.pem()
    }

    /// The API presents a new certificate from the same CA, and every open API
    /// connection (websockets included) is closed: a dr-provision restarted with a new
    /// certificate, or someone else answering in its place.
    pub fn rotate_cert(&self) -> anyhow::Result<()> {
        self.inner.tls.rotate()?;
        self.drop_websockets();
        let mut connections = self.inner.api_connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.cancel();
        *connections = self.guard.cancel.child_token();
        Ok(())
    }

    /// A CA in PEM that vouches for nothing the sim serves.
    pub fn unrelated_ca_pem() -> anyhow::Result<String> {
        Ok(tls::SimCa::new()?.pem())
    }

    /// A client config (ring provider) that trusts the sim's CA.
    pub fn tls_client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls::pki_types::pem::PemObject::from_pem_slice(self.ca_pem().as_bytes()).context("CA PEM")?;
        roots.add(ca).context("adding sim CA to root store")?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("client TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    pub fn put_machine(&self, machine: Value) {
        let uuid = required_key(&machine, "Uuid");
        self.inner.put("machines", uuid, machine, |s| &mut s.machines);
    }

    pub fn delete_machine(&self, uuid: &str) {
        self.inner.delete("machines", uuid, |s| &mut s.machines);
    }

    pub fn put_context(&self, ctx: Value) {
        let name = required_key(&ctx, "Name");
        self.inner.put("contexts", name, ctx, |s| &mut s.contexts);
    }

    pub fn delete_context(&self, name: &str) {
        self.inner.delete("contexts", name, |s| &mut s.contexts);
    }

    /// Sets a profile's params (`global` is the global profile), as aggregated into
    /// `GET /machines/{uuid}/params?aggregate=true`. No event: profile edits do not
    /// change machines, which is why the plugin reads them at each settle.
    pub fn put_profile(&self, name: &str, params: Value) {
        self.inner.state().profiles.insert(name.to_string(), params);
    }

    pub fn machine(&self, uuid: &str) -> Option<Value> {
        self.inner.state().machines.get(uuid).cloned()
    }

    pub fn context(&self, name: &str) -> Option<Value> {
        self.inner.state().contexts.get(name).cloned()
    }

    pub fn logs(&self) -> Vec<Value> {
        self.inner.state().logs.clone()
    }

    pub fn published(&self) -> Vec<Value> {
        self.inner.state().published.clone()
    }

    pub fn leaving(&self) -> usize {
        self.inner.state().leaving
    }

    pub fn agent_reports(&self) -> Vec<AgentReport> {
        self.inner.state().agent_reports.clone()
    }

    pub fn issued_tokens(&self) -> Vec<(String, String)> {
        self.inner.state().issued_tokens.clone()
    }

    /// Everything the plugin side sent: request lines and bodies on the API and
    /// the plugin socket, and websocket frames received. Frames the sim sends
    /// are excluded on purpose: they echo test-supplied objects, which would
    /// make "secret never leaks" assertions meaningless.
    pub fn all_captured_text(&self) -> String {
        self.inner.state().captured.clone()
    }

    /// Sends `frame` as it is to every open websocket session, whatever it subscribed
    /// to: how tests feed the plugin frames dr-provision would never send.
    pub fn send_raw_frame(&self, frame: Message) {
        self.inner.state().subscribers.retain(|s| s.send(Outgoing::Raw(frame.clone())).is_ok());
    }

    pub fn drop_websockets(&self) {
        // Unsubscribe the sessions at once, under the state lock: an event emitted after
        // this call must never reach a session that has not yet noticed the drop.
        self.inner.state().subscribers.clear();
        self.inner.ws_generation.send_modify(|g| *g += 1);
    }

    /// Every open websocket session stops reading and sending, pongs included, and
    /// keeps its TCP connection open: a dr-provision that vanished without a FIN (a
    /// paused VM, a dropped NAT entry). Later connections are served as usual.
    pub fn freeze_websockets(&self) {
        // The freeze first: a session that saw its event channel close before the freeze
        // would end its connection, which is a drop, not a freeze.
        self.inner.ws_freezes.send_modify(|g| *g += 1);
        self.inner.state().subscribers.clear();
    }

    pub fn serve_machine_params(&self, serve: bool) {
        self.inner.serve_params.store(serve, Ordering::SeqCst);
    }

    pub fn refuse_websockets(&self, refuse: bool) {
        self.inner.refuse_ws.store(refuse, Ordering::SeqCst);
    }

    pub fn set_api_fault(&self, fault: ApiFault) {
        // send_replace stores the value even when no request is waiting on it.
        self.inner.fault.send_replace(fault);
    }

    pub fn ws_connects(&self) -> usize {
        self.inner.state().ws_connects
    }

    /// Topics of the `register` frames received, in order, without the
    /// `register ` prefix (e.g. `machines.*.*`).
    pub fn registrations(&self) -> Vec<String> {
        self.inner.state().registrations.clone()
    }

    /// Polls `f` every 50ms until it yields a value or `timeout` passes.
    pub async fn wait_for<T>(&self, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> anyhow::Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn required_key(obj: &Value, field: &str) -> String {
    match obj.get(field).and_then(Value::as_str) {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => panic!("sim: object has no string {field:?}: {obj}"),
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge every later assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn put(&self, kind: &str, key: String, obj: Value, table: impl FnOnce(&mut State) -> &mut BTreeMap<String, Value>) {
        let mut st = self.state();
        let previous = table(&mut st).insert(key.clone(), obj.clone());
        let action = if previous.is_some() { "update" } else { "create" };
        emit(&mut st, kind, action, &key, obj, previous.unwrap_or(Value::Null));
    }

    fn delete(&self, kind: &str, key: &str, table: impl FnOnce(&mut State) -> &mut BTreeMap<String, Value>) {
        let mut st = self.state();
        if let Some(last) = table(&mut st).remove(key) {
            emit(&mut st, kind, "delete", key, last, Value::Null);
        }
    }

    fn capture(&self, what: &str, body: &[u8]) {
        let mut st = self.state();
        st.captured.push_str(what);
        st.captured.push('\n');
        st.captured.push_str(&String::from_utf8_lossy(body));
        st.captured.push('\n');
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let expected = format!("Bearer {}", self.token);
        req.headers().get(header::AUTHORIZATION).is_some_and(|v| v.as_bytes() == expected.as_bytes())
    }
}

/// Emitting under the state lock keeps event order identical to mutation order.
fn emit(st: &mut State, kind: &str, action: &str, key: &str, object: Value, original: Value) {
    let json = json!({
        "Time": rfc3339_now(),
        "Type": kind,
        "Action": action,
        "Key": key,
        "Principal": "sim",
        "Object": object,
        "Original": original,
    })
    .to_string();
    let event = Arc::new(Event { kind: kind.to_owned(), action: action.to_owned(), key: key.to_owned(), json });
    st.subscribers.retain(|s| s.send(Outgoing::Event(event.clone())).is_ok());
}

// ---------------------------------------------------------------- setup helpers

fn make_temp_root() -> anyhow::Result<PathBuf> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let name = format!("ce-sim-{}-{}-{nanos:x}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
    let root = std::env::temp_dir().join(name);
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    Ok(root)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rustls::crypto::ring::default_provider().secure_random.fill(&mut buf).expect("sim: system RNG failed");
    hex::encode(buf)
}

/// RFC 3339 UTC timestamp, without pulling in a date crate.
fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z", rem / 3600, rem % 3600 / 60, rem % 60, now.subsec_nanos())
}

/// Howard Hinnant's days-since-epoch → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------- servers

async fn serve_http<I, F, Fut>(io: I, cancel: CancellationToken, handler: F)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let svc = service_fn(move |req| {
        let fut = handler(req);
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), svc).with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = cancel.cancelled() => {}
    }
}

/// Each connection ends with `api_connections` (a child of the sim's own cancel).
async fn accept_api(listener: TcpListener, tls: TlsAcceptor, inner: Arc<Inner>) {
    loop {
        let Some(tcp) = accept_tcp(&listener).await else {
            continue;
        };
        let connection = inner.api_connections.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (tls, inner, cancel) = (tls.clone(), inner.clone(), connection);
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(Duration::from_secs(10), tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return eprintln!("[sim] API TLS handshake failed: {e}"),
                Err(_) => return eprintln!("[sim] API TLS handshake timed out"),
            };
            let c = cancel.clone();
            serve_http(stream, c, move |req| api_service(inner.clone(), cancel.clone(), req)).await;
        });
    }
}

/// The file server, plain or (with `tls`) https.
async fn accept_files(listener: TcpListener, tls: Option<TlsAcceptor>, inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let Some(tcp) = accept_tcp(&listener).await else {
            continue;
        };
        let (inner, cancel) = (inner.clone(), cancel.clone());
        let serve = move |req| file_service(inner.clone(), req);
        match &tls {
            None => drop(tokio::spawn(serve_http(tcp, cancel, serve))),
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls.accept(tcp).await {
                        Ok(stream) => serve_http(stream, cancel, serve).await,
                        // A client refusing the certificate ends here: expected.
                        Err(e) => eprintln!("[sim] https file server handshake failed: {e}"),
                    }
                });
            }
        }
    }
}

async fn accept_plugin(listener: UnixListener, inner: Arc<Inner>, cancel: CancellationToken) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                eprintln!("[sim] plugin socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let inner = inner.clone();
        tokio::spawn(serve_http(stream, cancel.clone(), move |req| plugin_service(inner.clone(), req)));
    }
}

async fn accept_tcp(listener: &TcpListener) -> Option<tokio::net::TcpStream> {
    match listener.accept().await {
        Ok((s, _)) => Some(s),
        Err(e) => {
            // e.g. EMFILE: back off instead of spinning.
            eprintln!("[sim] accept failed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

// ---------------------------------------------------------------- responses

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).map_err(|never| match never {}).boxed_unsync());
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    full(status, "application/json", body.to_string())
}

/// dr-provision's `models.Error` shape.
fn error(status: StatusCode, model: &str, key: &str, message: &str) -> Response<Body> {
    let body = json!({
        "Model": model,
        "Key": key,
        "Type": "API_ERROR",
        "Messages": [message],
        "Code": status.as_u16(),
    });
    json_response(status, &body)
}

async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(error(StatusCode::BAD_REQUEST, "", "", &format!("reading body: {e}"))),
    }
}

// ---------------------------------------------------------------- HTTPS API

async fn api_service(inner: Arc<Inner>, cancel: CancellationToken, req: Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/api/v3/ws" {
        return ws_upgrade(inner, cancel, req);
    }
    if let Some(resp) = api_fault(&inner).await {
        return resp;
    }
    if !inner.authorized(&req) {
        return error(StatusCode::UNAUTHORIZED, "", "", "Unauthorized: missing or bad bearer token");
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    inner.capture(&format!("API {} {}", parts.method, parts.uri), &body);
    if parts.method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "", "", "the sim only implements GET");
    }
    route_api(&inner, parts.uri.path())
}

/// `None` means proceed normally.
async fn api_fault(inner: &Inner) -> Option<Response<Body>> {
    let mut rx = inner.fault.subscribe();
    let fault = match rx.wait_for(|f| *f != ApiFault::Hang).await {
        Ok(f) => *f,
        Err(_) => ApiFault::None,
    };
    (fault == ApiFault::Status500).then(|| error(StatusCode::INTERNAL_SERVER_ERROR, "", "", "sim: injected fault"))
}

fn route_api(inner: &Inner, path: &str) -> Response<Body> {
    let parts: Vec<&str> = path.trim_start_matches("/api/v3/").split('/').collect();
    let st = || inner.state();
    match parts.as_slice() {
        ["machines"] => json_response(StatusCode::OK, &Value::Array(st().machines.values().cloned().collect())),
        ["contexts"] => json_response(StatusCode::OK, &Value::Array(st().contexts.values().cloned().collect())),
        ["machines", uuid] => get_one(st().machines.get(*uuid).cloned(), "machines", uuid),
        ["contexts", name] => get_one(st().contexts.get(*name).cloned(), "contexts", name),
        ["machines", uuid, "token"] => machine_token(inner, uuid),
        ["machines", uuid, "params"] if inner.serve_params.load(Ordering::SeqCst) => aggregated_params(inner, uuid),
        _ => error(StatusCode::NOT_FOUND, "", "", &format!("sim: no route for {path}")),
    }
}

fn get_one(obj: Option<Value>, model: &str, key: &str) -> Response<Body> {
    match obj {
        Some(v) => json_response(StatusCode::OK, &v),
        None => error(StatusCode::NOT_FOUND, model, key, &format!("Not Found: {model} {key}")),
    }
}

/// dr-provision's aggregation: the machine's own params win, then its profiles in
/// order, then the global profile.
fn aggregated_params(inner: &Inner, uuid: &str) -> Response<Body> {
    let st = inner.state();
    let Some(machine) = st.machines.get(uuid) else {
        return error(StatusCode::NOT_FOUND, "machines", uuid, &format!("Not Found: machines {uuid}"));
    };
    let profiles = machine.get("Profiles").and_then(Value::as_array).cloned().unwrap_or_default();
    let layers = std::iter::once(machine.get("Params").cloned())
        .chain(profiles.iter().filter_map(Value::as_str).map(|p| st.profiles.get(p).cloned()))
        .chain(std::iter::once(st.profiles.get("global").cloned()));
    let mut params = serde_json::Map::new();
    for layer in layers.flatten() {
        for (key, value) in layer.as_object().cloned().unwrap_or_default() {
            params.entry(key).or_insert(value);
        }
    }
    json_response(StatusCode::OK, &Value::Object(params))
}

fn machine_token(inner: &Inner, uuid: &str) -> Response<Body> {
    let mut st = inner.state();
    if !st.machines.contains_key(uuid) {
        return error(StatusCode::NOT_FOUND, "machines", uuid, &format!("Not Found: machines {uuid}"));
    }
    let token = random_hex(24);
    st.issued_tokens.push((uuid.to_owned(), token.clone()));
    json_response(StatusCode::OK, &json!({"Token": token, "Info": {}}))
}

// ---------------------------------------------------------------- websocket

fn ws_upgrade(inner: Arc<Inner>, cancel: CancellationToken, mut req: Request<Incoming>) -> Response<Body> {
    if inner.refuse_ws.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "", "", "sim: websockets refused");
    }
    if !inner.authorized(&req) {
        return error(StatusCode::UNAUTHORIZED, "", "", "Unauthorized: missing or bad bearer token");
    }
    let is_ws = req.headers().get(header::UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws) else {
        return error(StatusCode::BAD_REQUEST, "", "", "sim: expected a websocket upgrade");
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => ws_session(inner, cancel, TokioIo::new(upgraded)).await,
            Err(e) => eprintln!("[sim] websocket upgrade failed: {e}"),
        }
    });
    let mut resp = full(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    let h = resp.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// `<type>.<action>.<key>`, each part `None` for `*`. The key may itself contain dots.
#[derive(PartialEq, Eq)]
struct Topic {
    kind: Option<String>,
    action: Option<String>,
    key: Option<String>,
}

impl Topic {
    fn parse(s: &str) -> Option<Topic> {
        let mut it = s.trim().splitn(3, '.');
        let part = |p: Option<&str>| p.filter(|p| !p.is_empty()).map(|p| (p != "*").then(|| p.to_owned()));
        Some(Topic { kind: part(it.next())?, action: part(it.next())?, key: part(it.next())? })
    }

    fn matches(&self, ev: &Event) -> bool {
        let ok = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        ok(&self.kind, &ev.kind) && ok(&self.action, &ev.action) && ok(&self.key, &ev.key)
    }
}

async fn ws_session<S>(inner: Arc<Inner>, cancel: CancellationToken, io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let mut drops = inner.ws_generation.subscribe();
    let mut freezes = inner.ws_freezes.subscribe();
    let (tx, mut events) = mpsc::unbounded_channel();
    {
        let mut st = inner.state();
        st.subscribers.push(tx);
        st.ws_connects += 1;
    }
    let mut topics: Vec<Topic> = Vec::new();
    loop {
        tokio::select! {
            // A drop wins over anything still queued: a connection that drops loses what
            // was in flight.
            biased;
            _ = cancel.cancelled() => break,
            _ = drops.changed() => break,
            _ = freezes.changed() => {
                // Hold the connection, answering nothing, until the sim ends.
                cancel.cancelled().await;
                break;
            }
            out = events.recv() => {
                let frame = match out {
                    None => break,
                    Some(Outgoing::Event(ev)) if topics.iter().any(|t| t.matches(&ev)) => Message::text(ev.json.clone()),
                    Some(Outgoing::Event(_)) => continue,
                    Some(Outgoing::Raw(frame)) => frame,
                };
                if ws.send(frame).await.is_err() {
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => handle_ws_command(&inner, &mut topics, text.as_str()),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Dropping `ws` without a close frame is deliberate: it is what a dr-provision
    // restart looks like to the client.
}

fn handle_ws_command(inner: &Inner, topics: &mut Vec<Topic>, text: &str) {
    inner.capture("WS", text.as_bytes());
    if let Some(rest) = text.strip_prefix("register ") {
        inner.state().registrations.push(rest.trim().to_owned());
        if let Some(t) = Topic::parse(rest) {
            topics.push(t);
        }
    } else if let Some(rest) = text.strip_prefix("deregister ")
        && let Some(t) = Topic::parse(rest)
    {
        topics.retain(|have| *have != t);
    }
}

// ---------------------------------------------------------------- file server

async fn file_service(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return error(StatusCode::METHOD_NOT_ALLOWED, "", "", "GET or HEAD only");
    }
    let path = req.uri().path();
    if path == "/agent-report" {
        return agent_report(&inner, req.uri().query().unwrap_or(""));
    }
    if !path.starts_with("/files/") {
        return error(StatusCode::NOT_FOUND, "", "", &format!("no such path {path}"));
    }
    match resolve_file(&inner.webroot, path).await {
        Some(file) => serve_file(&file, head).await,
        None => error(StatusCode::NOT_FOUND, "", "", &format!("no such file {path}")),
    }
}

fn agent_report(inner: &Inner, query: &str) -> Response<Body> {
    let mut report = AgentReport {
        uuid: String::new(),
        context: String::new(),
        token: String::new(),
        endpoints: String::new(),
        args: String::new(),
        path: String::new(),
        probe: String::new(),
        file: String::new(),
        raw_query: query.to_owned(),
    };
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match k.as_ref() {
            "uuid" => &mut report.uuid,
            "context" => &mut report.context,
            "token" => &mut report.token,
            "endpoints" => &mut report.endpoints,
            "args" => &mut report.args,
            "path" => &mut report.path,
            "probe" => &mut report.probe,
            "file" => &mut report.file,
            _ => continue,
        };
        *slot = v.into_owned();
    }
    inner.state().agent_reports.push(report);
    full(StatusCode::OK, "text/plain", "ok")
}

/// Maps a URL path onto a regular file inside `webroot`, refusing anything that
/// could escape it (dot segments, encoded slashes, symlinks pointing outside).
async fn resolve_file(webroot: &Path, url_path: &str) -> Option<PathBuf> {
    let mut candidate = webroot.to_path_buf();
    for raw in url_path.trim_start_matches('/').split('/') {
        let seg = percent_encoding::percent_decode_str(raw).decode_utf8().ok()?;
        let bad = seg.is_empty() || seg == "." || seg == ".." || seg.contains(['/', '\\', '\0']);
        if bad {
            return None;
        }
        candidate.push(seg.as_ref());
    }
    let real = tokio::fs::canonicalize(&candidate).await.ok()?;
    let meta = tokio::fs::metadata(&real).await.ok()?;
    (real.starts_with(webroot) && meta.is_file()).then_some(real)
}

async fn serve_file(path: &Path, head: bool) -> Response<Body> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::NOT_FOUND, "", "", &format!("open: {e}")),
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "", "", &format!("stat: {e}"));
        }
    };
    let body: Body = if head {
        Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync()
    } else {
        let stream = ReaderStream::with_capacity(file, 64 << 10).map_ok(Frame::data);
        StreamBody::new(stream).boxed_unsync()
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    resp
}

// ---------------------------------------------------------------- plugin socket

async fn plugin_service(inner: Arc<Inner>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    inner.capture(&format!("PLUGIN {} {}", parts.method, parts.uri), &body);
    let path = parts.uri.path();
    let verb = path.strip_prefix("/api-server-plugin/v4/").unwrap_or("");
    match (&parts.method, verb) {
        (&Method::POST, "log") => record_json(&inner, &body, |s| &mut s.logs),
        (&Method::POST, "publish") => record_json(&inner, &body, |s| &mut s.published),
        (&Method::POST, "leaving") => {
            inner.state().leaving += 1;
            json_response(StatusCode::OK, &json!({}))
        }
        (&Method::GET, v) if v.starts_with("objects/") => json_response(StatusCode::OK, &json!([])),
        _ => error(StatusCode::NOT_FOUND, "", "", &format!("sim: no plugin route {} {path}", parts.method)),
    }
}

fn record_json(inner: &Inner, body: &[u8], list: impl FnOnce(&mut State) -> &mut Vec<Value>) -> Response<Body> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            list(&mut inner.state()).push(v);
            json_response(StatusCode::OK, &json!({}))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, "", "", &format!("body is not JSON: {e}")),
    }
}

// ---------------------------------------------------------------- tests

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::client::conn::http1;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    async fn tls_stream(sim: &Sim) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(sim.inner.api_addr).await.expect("connect API");
        let connector = tokio_rustls::TlsConnector::from(sim.tls_client_config().expect("tls config"));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("server name");
        connector.connect(name, tcp).await.expect("TLS handshake with sim")
    }

    /// One request over a fresh connection, so a hanging request cannot block the next one.
    async fn api_get(sim: &Sim, path: &str, token: Option<&str>) -> (u16, Value) {
        let (mut sender, conn) = http1::handshake(TokioIo::new(tls_stream(sim).await)).await.expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::get(path).header(header::HOST, "127.0.0.1");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(http_body_util::Empty::<Bytes>::new()).expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).expect("JSON body"))
    }

    async fn http_get(url: &str) -> (u16, Vec<u8>, Option<u64>) {
        let uri: hyper::Uri = url.parse().expect("uri");
        let addr = format!("{}:{}", uri.host().expect("host"), uri.port_u16().expect("port"));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(uri.path_and_query().expect("path").as_str())
            .header(header::HOST, "127.0.0.1")
            .body(http_body_util::Empty::<Bytes>::new())
            .expect("request");
        let resp = sender.send_request(req).await.expect("send");
        let status = resp.status().as_u16();
        let len = resp.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body.to_vec(), len)
    }

    #[tokio::test]
    async fn api_requires_token_and_serves_state() {
        let sim = Sim::start().await.expect("sim");
        let (code, body) = api_get(&sim, "/api/v3/machines", None).await;
        assert_eq!(code, 401);
        assert_eq!(body["Code"], 401);

        sim.put_machine(json!({"Uuid": "m1", "Name": "one", "Context": "ctx"}));
        sim.put_context(json!({"Name": "ctx", "Engine": "context-engines", "Image": "img"}));
        let tok = sim.token();
        let (code, body) = api_get(&sim, "/api/v3/machines", Some(&tok)).await;
        assert_eq!((code, body[0]["Name"].clone()), (200, json!("one")));
        let (code, body) = api_get(&sim, "/api/v3/contexts", Some(&tok)).await;
        assert_eq!((code, body[0]["Image"].clone()), (200, json!("img")));
        let (code, body) = api_get(&sim, "/api/v3/machines/nope", Some(&tok)).await;
        assert_eq!((code, body["Code"].clone()), (404, json!(404)));

        let (_, t1) = api_get(&sim, "/api/v3/machines/m1/token?ttl=3y", Some(&tok)).await;
        let (_, t2) = api_get(&sim, "/api/v3/machines/m1/token?ttl=3y", Some(&tok)).await;
        assert_ne!(t1["Token"], t2["Token"]);
        let issued = sim.issued_tokens();
        assert_eq!(issued.len(), 2);
        assert_eq!(issued[0], ("m1".to_owned(), t1["Token"].as_str().expect("token").to_owned()));
        let (code, _) = api_get(&sim, "/api/v3/machines/nope/token?ttl=3y", Some(&tok)).await;
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn api_faults() {
        let sim = Sim::start().await.expect("sim");
        let tok = sim.token();
        sim.set_api_fault(ApiFault::Status500);
        assert_eq!(api_get(&sim, "/api/v3/machines", Some(&tok)).await.0, 500);

        sim.set_api_fault(ApiFault::Hang);
        let hung = tokio::time::timeout(Duration::from_millis(300), api_get(&sim, "/api/v3/machines", Some(&tok))).await;
        assert!(hung.is_err(), "request should hang");

        let pending = tokio::spawn({
            let sim = sim.clone();
            async move { api_get(&sim, "/api/v3/machines", Some(&sim.token())).await.0 }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        sim.set_api_fault(ApiFault::None);
        assert_eq!(pending.await.expect("join"), 200);
    }

    async fn ws_connect(sim: &Sim) -> WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut req = format!("wss://127.0.0.1:{}/api/v3/ws", sim.inner.api_addr.port()).into_client_request().expect("ws request");
        let auth = HeaderValue::from_str(&format!("Bearer {}", sim.token())).expect("header");
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let (ws, _) = tokio_tungstenite::client_async(req, tls_stream(sim).await).await.expect("ws handshake");
        ws
    }

    async fn next_event(ws: &mut WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>) -> Value {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("event in time");
        match msg {
            Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).expect("event JSON"),
            other => panic!("unexpected ws message {other:?}"),
        }
    }

    #[tokio::test]
    async fn websocket_events_and_faults() {
        let sim = Sim::start().await.expect("sim");
        let mut ws = ws_connect(&sim).await;
        ws.send(Message::text("hello there")).await.expect("send");
        ws.send(Message::text("register machines.*.*")).await.expect("send");
        sim.wait_for("registration", Duration::from_secs(5), || (!sim.registrations().is_empty()).then_some(())).await.expect("registered");
        assert_eq!(sim.registrations(), vec!["machines.*.*".to_owned()]);
        assert_eq!(sim.ws_connects(), 1);

        sim.put_context(json!({"Name": "not-subscribed"}));
        sim.put_machine(json!({"Uuid": "m1", "Context": "a"}));
        let ev = next_event(&mut ws).await;
        assert_eq!((ev["Type"].clone(), ev["Action"].clone(), ev["Key"].clone()), (json!("machines"), json!("create"), json!("m1")));
        assert!(ev["Time"].as_str().expect("time").ends_with('Z'));

        sim.put_machine(json!({"Uuid": "m1", "Context": "b"}));
        let ev = next_event(&mut ws).await;
        assert_eq!(ev["Action"], "update");
        assert_eq!(ev["Original"]["Context"], "a");
        assert_eq!(ev["Object"]["Context"], "b");

        sim.delete_machine("m1");
        let ev = next_event(&mut ws).await;
        assert_eq!((ev["Action"].clone(), ev["Object"]["Context"].clone()), (json!("delete"), json!("b")));
        assert!(sim.all_captured_text().contains("register machines.*.*"));

        sim.drop_websockets();
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("closed in time");
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "connection should end, got {end:?}");

        sim.refuse_websockets(true);
        let mut req = format!("wss://127.0.0.1:{}/api/v3/ws", sim.inner.api_addr.port()).into_client_request().expect("ws request");
        let auth = HeaderValue::from_str(&format!("Bearer {}", sim.token())).expect("header");
        req.headers_mut().insert(header::AUTHORIZATION, auth);
        let refused = tokio_tungstenite::client_async(req, tls_stream(&sim).await).await;
        assert!(refused.is_err(), "upgrade should be refused");
        sim.refuse_websockets(false);
        let _ws = ws_connect(&sim).await;
        assert_eq!(sim.ws_connects(), 2);
    }

    #[tokio::test]
    async fn file_server_and_agent_report() {
        let sim = Sim::start().await.expect("sim");
        let dir = sim.webroot().join("files/contexts");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("img.tar"), &data).expect("write");

        let (code, body, len) = http_get(&format!("{}/files/contexts/img.tar", sim.file_url())).await;
        assert_eq!((code, len), (200, Some(data.len() as u64)));
        assert!(body == data, "file content differs");
        assert_eq!(http_get(&format!("{}/files/contexts/none", sim.file_url())).await.0, 404);
        assert_eq!(http_get(&format!("{}/files/../plugin.sock", sim.file_url())).await.0, 404);
        assert_eq!(http_get(&format!("{}/files/%2e%2e/plugin.sock", sim.file_url())).await.0, 404);
        assert_eq!(http_get(&format!("{}/files/contexts", sim.file_url())).await.0, 404);

        let q = "uuid=m1&context=c&token=t%2Bx&endpoints=https%3A%2F%2Fa+https%3A%2F%2Fb&args=x&path=%2Fbin";
        let (code, body, _) = http_get(&format!("{}/agent-report?{q}", sim.file_url())).await;
        assert_eq!((code, body.as_slice()), (200, b"ok".as_slice()));
        let r = &sim.agent_reports()[0];
        assert_eq!((r.uuid.as_str(), r.token.as_str(), r.endpoints.as_str()), ("m1", "t+x", "https://a https://b"));
        assert_eq!((r.path.as_str(), r.raw_query.as_str()), ("/bin", q));
    }

    #[tokio::test]
    async fn plugin_socket_records_and_teardown_removes_dirs() {
        use hyper_util::client::legacy::Client;
        let sim = Sim::start().await.expect("sim");
        let client: Client<_, Full<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new()).build(hyperlocal::UnixConnector);
        let post = |verb: &str, body: &'static str| {
            let uri: hyper::Uri = hyperlocal::Uri::new(sim.plugin_sock(), &format!("/api-server-plugin/v4/{verb}")).into();
            let req = Request::post(uri).body(Full::new(Bytes::from(body))).expect("request");
            client.request(req)
        };
        assert_eq!(post("log", r#"{"Msg":"hi"}"#).await.expect("log").status(), 200);
        assert_eq!(post("publish", r#"{"Type":"x"}"#).await.expect("publish").status(), 200);
        assert_eq!(post("leaving", "{}").await.expect("leaving").status(), 200);
        assert_eq!(post("log", "not json").await.expect("bad log").status(), 400);
        assert_eq!(sim.logs(), vec![json!({"Msg":"hi"})]);
        assert_eq!(sim.published(), vec![json!({"Type":"x"})]);
        assert_eq!(sim.leaving(), 1);
        assert!(sim.all_captured_text().contains(r#""Msg":"hi""#));

        let root = sim.scratch().parent().expect("root").to_path_buf();
        assert!(root.exists());
        drop(sim);
        assert!(!root.exists(), "temp dir should be removed on drop");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
