//! The metrics listener on `context-engines/metrics-address`: `GET /metrics` in the
//! OpenMetrics text format Prometheus scrapes, and `GET /healthz`. Plain HTTP on an
//! address the operator chooses (loopback, or a management network): it serves counts
//! and engine names, never a token (the health reasons pass the redactor).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ContextLabels;
use crate::controller::reconciler::Reconciler;
use crate::plugin::Plugin;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the listener reads live state from.
struct Live {
    plugin: Arc<Plugin>,
    reconciler: Arc<Reconciler>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("live agent and queue state")
    }
}

/// Agents wanted and running, and the work queue, read off the reconciler per scrape.
impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let census = self.reconciler.census();
        family(&mut encoder, "agents_wanted", "Agents the Contexts of this plugin want, by Context and engine", &census.wanted)?;
        family(
            &mut encoder,
            "agents_running",
            "Agents of this plugin running, by Context and engine (manual ones included)",
            &census.running,
        )?;
        gauge(&mut encoder, "work_queue_depth", "Machines with a settle queued or under way", census.queued)?;
        gauge(&mut encoder, "work_queue_retrying", "Machines waiting for a retry after a failed settle", census.retrying)?;
        gauge(&mut encoder, "work_queue_parked", "Machines whose settle failed for good until they change", census.parked)?;
        let connected = usize::from(super::global().event_stream_connected());
        gauge(&mut encoder, "event_stream_connected", "1 while the event stream to dr-provision is connected", connected)?;
        let healthy = usize::from(health(&self.plugin, &self.reconciler).is_ok());
        gauge(&mut encoder, "healthy", "1 when /healthz answers 200", healthy)?;
        Ok(())
    }
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: usize) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    counts: &BTreeMap<(String, String), u64>,
) -> Result<(), std::fmt::Error> {
    let family: Family<ContextLabels, Gauge> = Family::default();
    for ((context, engine), n) in counts {
        family.get_or_create(&ContextLabels { context: context.clone(), engine: engine.clone() }).set(*n as i64);
    }
    family.encode(encoder.encode_descriptor(name, help, None, family.metric_type())?)
}

/// 200 when the event stream is connected and every engine in use answered its last
/// call; otherwise every reason it is not.
pub fn health(plugin: &Plugin, reconciler: &Reconciler) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if !super::global().event_stream_connected() {
        problems.push("the event stream to dr-provision is not connected".to_string());
    }
    for name in reconciler.census().engines {
        match plugin.registry.get(&name) {
            Err(e) => problems.push(e.to_string()),
            Ok(_) => {
                if let Some(problem) = super::global().engine_problem(&name) {
                    problems.push(format!("engine '{name}' did not answer its last call: {problem}"));
                }
            }
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems) }
}

/// A registry of everything the process counts, plus the live state.
fn registry(plugin: Arc<Plugin>, reconciler: Arc<Reconciler>) -> Registry {
    let mut registry = Registry::with_prefix("context_engines");
    super::global().register(&mut registry);
    let info: Family<Vec<(String, String)>, Gauge> = Family::default();
    info.get_or_create(&vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]).set(1);
    registry.register("build_info", "The plugin's version; always 1", info);
    registry.register_collector(Box::new(Live { plugin, reconciler }));
    registry
}

/// Binds `address`; the caller reports a failure against the param.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// Serves `/metrics` and `/healthz` on `listener` until shutdown.
pub async fn serve(listener: TcpListener, plugin: Arc<Plugin>, reconciler: Arc<Reconciler>, mut shutdown: watch::Receiver<bool>) {
    let registry = Arc::new(registry(Arc::clone(&plugin), Arc::clone(&reconciler)));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("accepting a connection on the metrics listener: {e}");
                continue;
            }
        };
        let (registry, plugin, reconciler) = (Arc::clone(&registry), Arc::clone(&plugin), Arc::clone(&reconciler));
        tokio::spawn(async move {
            let handler = service_fn(move |request| {
                let answer = answer(&request, &registry, &plugin, &reconciler);
                async move { Ok::<_, Infallible>(answer) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), handler).await {
                tracing::debug!("metrics connection ended: {e}");
            }
        });
    }
}

fn answer(request: &Request<Incoming>, registry: &Registry, plugin: &Plugin, reconciler: &Reconciler) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain", format!("{} takes GET\n", request.uri().path()));
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => text(StatusCode::OK, OPENMETRICS, body),
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding the metrics failed: {e}\n")),
            }
        }
        "/healthz" => match health(plugin, reconciler) {
            Ok(()) => text(StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(problems) => {
                let body = crate::redact::secrets().redact(&(problems.join("\n") + "\n"));
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
        },
        path => text(StatusCode::NOT_FOUND, "text/plain", format!("no such path {path}; this listener serves /metrics and /healthz\n")),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
