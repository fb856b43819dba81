//! The provider protocol server: dr-provision → plugin over the TO_PLUGIN_SOCK unix
//! socket (`/api-plugin/v4/{config,action,stop,publish}`). Every request gets an answer;
//! a bad one gets a 4xx Error JSON and the plugin keeps serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::actions::{self, Action};
use crate::api_error::ApiError;
use crate::controller::reconciler::Reconciler;
use crate::events;
use crate::metrics;
use crate::params::{self, Settings};
use crate::plugin::Plugin;
use crate::wasm::WasmRuntime;
use crate::wasm::directory::EngineDirectory;

/// Bodies are params and machine objects; anything near this size is not one.
const MAX_BODY: usize = 8 * 1024 * 1024;

pub struct Service {
    pub plugin: Arc<Plugin>,
    pub reconciler: Arc<Reconciler>,
    /// WASM engines; `None` when the WebAssembly runtime could not start here.
    engines: Option<Arc<EngineDirectory>>,
    configured: AtomicBool,
    shutdown: watch::Sender<bool>,
    /// The metrics listener: where it listens, and its task.
    metrics: Mutex<Option<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl Service {
    pub fn new(plugin: Arc<Plugin>, wasm_cache: Option<std::path::PathBuf>) -> Arc<Service> {
        let engines = match WasmRuntime::new(wasm_cache) {
            Ok(runtime) => Some(Arc::new(EngineDirectory::new(runtime))),
            Err(e) => {
                tracing::error!("the WebAssembly runtime did not start, WASM engines are unavailable: {e:#}");
                None
            }
        };
        Arc::new(Service {
            reconciler: Reconciler::new(Arc::clone(&plugin)),
            engines,
            plugin,
            configured: AtomicBool::new(false),
            shutdown: watch::channel(false).0,
            metrics: Mutex::new(None),
        })
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn request_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        match self.route(request).await {
            Ok(value) => reply(StatusCode::OK, &value),
            Err(error) => {
                tracing::warn!("{path}: {}", error.messages.join("; "));
                let status = StatusCode::from_u16(error.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                reply(status, &error)
            }
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Result<Value, ApiError> {
        let path = request.uri().path().to_string();
        let verb = path.strip_prefix("/api-plugin/v4/").unwrap_or("");
        if !matches!(verb, "config" | "action" | "stop" | "publish") {
            return Err(ApiError::new(
                404,
                format!("no such endpoint {path}; this plugin serves /api-plugin/v4/{{config,action,stop,publish}}"),
            ));
        }
        if request.method() != Method::POST {
            return Err(ApiError::new(405, format!("{path} takes POST, not {}", request.method())));
        }
        let body = json_body(request).await?;
        match verb {
            "config" => self.config(&body).await.map(|()| json!({"Code": 200})),
            "action" => {
                let action: Action =
                    serde_json::from_value(body).map_err(|e| ApiError::bad_request(format!("the body is not an Action: {e}")))?;
                actions::run(&self.plugin, &self.reconciler, action).await
            }
            "stop" => {
                tracing::info!("dr-provision asked the plugin to stop");
                self.request_shutdown();
                Ok(json!({"Code": 200}))
            }
            // HasPublish is false, so dr-provision should not send these; accept quietly.
            _ => Ok(json!({"Code": 200})),
        }
    }

    /// Applies params in place. The first config starts the event stream (which runs
    /// the first full reconcile); later ones re-reconcile when they change what is ours.
    async fn config(&self, params: &Value) -> Result<(), ApiError> {
        let settings = Settings::from_params(params, &self.plugin.env).map_err(|e| ApiError::bad_request(e.to_string()))?;
        // Before anything is applied: an address that cannot be bound fails the config.
        self.move_metrics_listener(settings.metrics_address).await?;
        let max_parallel = settings.max_parallel;
        let previous = self.plugin.reconfigure(settings);
        if previous.max_parallel != max_parallel {
            self.reconciler.set_max_parallel(max_parallel);
        }
        if !self.configured.swap(true, Ordering::SeqCst) {
            tracing::info!("configured; loading WASM engines and starting the event stream");
            let (plugin, reconciler, shutdown) = (Arc::clone(&self.plugin), Arc::clone(&self.reconciler), self.shutdown_signal());
            // Engines are loaded before config answers, so every engine in the directory
            // is usable by the first action and the first reconcile.
            if let Some(engines) = self.engines.clone() {
                engines.scan(&plugin).await;
                tokio::spawn(engines.watch(Arc::clone(&plugin), Arc::clone(&reconciler), shutdown.clone()));
            }
            reconciler.watch_runtimes(shutdown.clone());
            tokio::spawn(crate::images::gc::periodically(Arc::clone(&plugin), shutdown.clone()));
            tokio::spawn(events::run(plugin, reconciler, shutdown));
        } else if *previous != *self.plugin.settings() {
            tracing::info!("reconfigured; reconciling everything");
            self.reconciler.request_resync();
        }
        Ok(())
    }
}

impl Service {
    /// Opens, moves or closes the metrics listener to match `wanted`.
    async fn move_metrics_listener(&self, wanted: Option<SocketAddr>) -> Result<(), ApiError> {
        if self.metrics.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(at, _)| *at) == wanted {
            return Ok(());
        }
        let listener = match wanted {
            Some(address) => Some((
                address,
                metrics::listener::bind(address)
                    .await
                    .map_err(|e| ApiError::bad_request(format!("param '{}': cannot listen on {address}: {e}", params::METRICS_ADDRESS)))?,
            )),
            None => None,
        };
        let serving = listener.map(|(address, listener)| {
            tracing::info!("serving /metrics and /healthz on http://{address}");
            let task = metrics::listener::serve(listener, Arc::clone(&self.plugin), Arc::clone(&self.reconciler), self.shutdown_signal());
            (address, tokio::spawn(task))
        });
        let previous = std::mem::replace(&mut *self.metrics.lock().unwrap_or_else(|p| p.into_inner()), serving);
        if let Some((address, task)) = previous {
            tracing::info!("metrics listener on {address} closed");
            task.abort();
        }
        Ok(())
    }
}

async fn json_body(request: Request<Incoming>) -> Result<Value, ApiError> {
    let content_type = request.headers().get(hyper::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::bad_request(format!("Content-Type must be application/json, got '{content_type}'")));
    }
    let body = read_capped(request.into_body()).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

/// Reads at most MAX_BODY bytes. A larger body is still drained (up to DRAIN_LIMIT) so the
/// client reads a clean 413 instead of a reset connection.
async fn read_capped(mut body: Incoming) -> Result<Vec<u8>, ApiError> {
    const DRAIN_LIMIT: usize = 16 * MAX_BODY;
    let mut kept = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= MAX_BODY {
                kept.extend_from_slice(&data);
            } else if seen > DRAIN_LIMIT {
                break;
            }
        }
    }
    if seen > MAX_BODY {
        return Err(ApiError::new(413, format!("the body has more than the limit of {MAX_BODY} bytes")));
    }
    Ok(kept)
}

/// Every reply, masked: an action result or Error may quote what an agent or engine
/// said, and that may hold a token.
fn reply(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_string());
    let bytes = crate::redact::secrets().redact(&text).into_bytes();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// Binds the socket, replacing a stale file a crashed predecessor left.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

/// Serves connections until shutdown is requested.
pub async fn serve(listener: UnixListener, service: Arc<Service>) {
    let mut shutdown = service.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accepting a connection on the plugin socket: {e}");
                continue;
            }
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            let handler = service_fn(move |request| {
                let service = Arc::clone(&service);
                async move { Ok::<_, Infallible>(service.handle(request).await) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), handler).await {
                tracing::debug!("plugin socket connection ended: {e}");
            }
        });
    }
}
