//! What a WASM engine's store holds: an empty WASI context (no files, no environment,
//! no arguments), the HTTP context with the engine's allow-list, the memory limiter,
//! and the host side of the `log` import.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::{v01, v02};

pub struct GuestState {
    pub engine: String,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: AllowList,
    table: ResourceTable,
    pub limits: MemoryCap,
    pub budget: Budget,
}

/// The memory cap of one instance: the sum of all its linear memories, from the first
/// allocation of instantiation on. wasmtime's own `StoreLimits` bounds each memory
/// alone, and a component has several (its adapters', an interpreter's), so an engine
/// could use many times the cap an operator set.
#[derive(Debug)]
pub struct MemoryCap {
    cap: usize,
    used: usize,
    /// The last grow allowed, undone if it fails after all.
    pending: Option<(usize, usize)>,
}

/// The trap a refused grow raises: the caller reports it as the memory cap, with the
/// size the instance asked for.
#[derive(Debug, thiserror::Error)]
#[error("needs {wanted} bytes of linear memory in all, over its cap of {cap} bytes")]
pub struct OverMemoryCap {
    pub wanted: usize,
    pub cap: usize,
}

impl MemoryCap {
    pub fn new(cap: usize) -> MemoryCap {
        MemoryCap { cap, used: 0, pending: None }
    }

    /// Bytes of linear memory the instance holds now, all memories together.
    pub fn used(&self) -> usize {
        self.used
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let wanted = self.used.saturating_sub(current).saturating_add(desired);
        if wanted > self.cap {
            // An error rather than `Ok(false)`: guests (Rust's allocator above all)
            // turn a refused grow into an abort whose trap says nothing of memory.
            return Err(OverMemoryCap { wanted, cap: self.cap }.into());
        }
        self.used = wanted;
        self.pending = Some((current, desired));
        Ok(true)
    }

    /// A grow the cap allowed can still fail (the memory's own maximum, the system):
    /// it must not stay counted.
    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        if let Some((current, desired)) = self.pending.take() {
            self.used = self.used.saturating_sub(desired).saturating_add(current);
        }
        Ok(())
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

/// How far a call that streams an archive has got: bytes handed to the engine, and
/// whether the archive has ended. Shared by the call's epoch check and the host's
/// watchdog.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    ended: AtomicBool,
}

impl Progress {
    pub fn read(&self, bytes: usize) {
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    fn now(&self) -> (u64, bool) {
        (self.bytes.load(Ordering::Relaxed), self.ended.load(Ordering::Relaxed))
    }
}

/// The time a call may take, checked at every epoch tick while guest code runs (which
/// also makes a busy guest yield to the async executor each tick).
#[derive(Debug, Clone)]
pub struct Budget {
    deadline: Duration,
    /// For a streaming call, once the archive has ended: the runtime may still be
    /// importing it, which the engine's request timeout bounds, not the call deadline.
    after_end: Duration,
    since: Instant,
    /// For calls that stream an archive: the deadline counts from the last progress, so
    /// a long upload lives and a stall (the engine not reading, or its runtime not
    /// accepting what it writes) does not.
    progress: Option<(Arc<Progress>, (u64, bool))>,
}

impl Budget {
    /// Counts from now: a call's budget starts when it has its instance, not while it
    /// waited for one (see `wasm-max-instances`).
    pub fn restart(&mut self) {
        self.since = Instant::now();
    }

    pub fn new(deadline: Duration) -> Budget {
        Budget { deadline, after_end: deadline, since: Instant::now(), progress: None }
    }

    pub fn streaming(deadline: Duration, after_end: Duration, progress: Arc<Progress>) -> Budget {
        Budget { deadline, after_end, since: Instant::now(), progress: Some((progress, (0, false))) }
    }

    /// The bound in force now, counted from `since`.
    fn limit(&self) -> Duration {
        match &self.progress {
            Some((_, (_, true))) => self.after_end,
            _ => self.deadline,
        }
    }

    /// Whether the call has run out of time; progress since the last look resets it.
    pub fn expired(&mut self) -> bool {
        if let Some((progress, seen)) = &mut self.progress {
            let now = progress.now();
            if now != *seen {
                *seen = now;
                self.since = Instant::now();
            }
        }
        self.since.elapsed() > self.limit()
    }

    /// Why an expired call was stopped, for its error.
    pub fn overrun(&self) -> String {
        match &self.progress {
            None => format!("ran past its deadline of {} ms", self.deadline.as_millis()),
            Some((_, (bytes, false))) => format!(
                "made no progress for {} ms after {bytes} bytes of the archive (the engine stopped reading it, or its runtime stopped accepting it)",
                self.deadline.as_millis()
            ),
            Some((_, (bytes, true))) => {
                format!(
                    "got no answer from its runtime within {} s after the archive's last byte ({bytes} bytes)",
                    self.after_end.as_secs()
                )
            }
        }
    }

    pub fn check(&mut self) -> UpdateDeadline {
        if self.expired() { UpdateDeadline::Interrupt } else { UpdateDeadline::Yield(1) }
    }
}

impl GuestState {
    pub fn new(engine: &str, allowed_hosts: Vec<String>, limits: MemoryCap) -> GuestState {
        GuestState {
            engine: engine.to_string(),
            // An engine's only way out is wasi:http through the allow-list. The linker
            // still links wasi:sockets (std imports it), so TCP, UDP, name lookup and
            // every socket address are switched off here rather than left to the
            // library's defaults, which may change. The builder preopens nothing and
            // passes no environment, arguments or stdio unless asked.
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .socket_addr_check(|_, _| Box::pin(async { false }))
                .build(),
            http: WasiHttpCtx::new(),
            hooks: AllowList { engine: engine.to_string(), allowed: allowed_hosts },
            table: ResourceTable::new(),
            limits,
            budget: Budget::new(Duration::from_secs(30)),
        }
    }

    pub fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// Outgoing HTTP only to the `host:port` pairs of the engine's `allowed-hosts`.
struct AllowList {
    engine: String,
    allowed: Vec<String>,
}

impl AllowList {
    fn permits(&self, uri: &http::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
        // Entries are all `host:port` in this same spelling (see `allowed-hosts` in
        // wasm/engine.rs): no entry stands for every port of a host.
        let authority = canonical_authority(host, port);
        self.allowed.contains(&authority)
    }
}

/// `host:port` in one spelling: the host lowercased, an IPv6 literal in its shortest
/// form within brackets, the port as a plain number. Names are not resolved, so
/// `localhost` and `127.0.0.1` stay different.
pub fn canonical_authority(host: &str, port: u16) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(ip) => format!("{ip}:{port}"),
        Err(_) => format!("{}:{port}", host.to_ascii_lowercase()),
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for AllowList {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        if !self.permits(request.uri()) {
            tracing::warn!(
                "engine '{}' tried to reach {}, which is not in its allowed-hosts ({}); denied",
                self.engine,
                request.uri().authority().map(|a| a.as_str()).unwrap_or("?"),
                self.allowed.join(", ")
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>))
        })
    }
}

impl GuestState {
    /// The host side of `log`, the same in every contract version.
    fn log_line(&self, level: v02::context_engines::engine::log::Level, message: &str) {
        use v02::context_engines::engine::log::Level;
        let engine = &self.engine;
        // Bounded so a chatty engine cannot flood dr-provision's log.
        let message: String = message.chars().take(4096).collect();
        match level {
            Level::Debug => tracing::debug!("engine '{engine}': {message}"),
            Level::Info => tracing::info!("engine '{engine}': {message}"),
            Level::Warn => tracing::warn!("engine '{engine}': {message}"),
            Level::Error => tracing::error!("engine '{engine}': {message}"),
        }
    }
}

impl v02::context_engines::engine::log::Host for GuestState {
    fn log(&mut self, level: v02::context_engines::engine::log::Level, message: String) -> wasmtime::Result<()> {
        self.log_line(level, &message);
        Ok(())
    }
}

impl v01::context_engines::engine::log::Host for GuestState {
    fn log(&mut self, level: v01::context_engines::engine::log::Level, message: String) -> wasmtime::Result<()> {
        use v01::context_engines::engine::log::Level as Old;
        use v02::context_engines::engine::log::Level;
        let level = match level {
            Old::Debug => Level::Debug,
            Old::Info => Level::Info,
            Old::Warn => Level::Warn,
            Old::Error => Level::Error,
        };
        self.log_line(level, &message);
        Ok(())
    }
}

impl v01::context_engines::engine::types::Host for GuestState {}
impl v02::context_engines::engine::types::Host for GuestState {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_host_and_port() {
        let allowed = ["127.0.0.1:2375", "docker.example:443", "[::1]:2375"].map(str::to_string).to_vec();
        let list = AllowList { engine: "e".to_string(), allowed };
        let ok = |u: &str| list.permits(&u.parse().expect("uri"));
        assert!(ok("http://127.0.0.1:2375/v1.41/_ping"));
        assert!(!ok("http://127.0.0.1:9/"));
        assert!(!ok("http://localhost:2375/"), "names are not resolved: localhost is not 127.0.0.1");
        assert!(ok("https://docker.example/x"), "https's default port is 443");
        assert!(!ok("http://docker.example/x"), "http's default port is 80");
        assert!(ok("http://[::1]:2375/_ping"));
        assert!(ok("http://[0:0::1]:2375/_ping"), "IPv6 in any spelling");
        assert!(ok("https://DOCKER.example/x"), "host names in any case");
        assert!(!ok("http://10.0.0.1:2375/"));
    }
}
