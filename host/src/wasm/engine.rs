//! How a WASM engine is called: an [`Engine`] over a pre-instantiated component. Each
//! call takes an idle instance (or instantiates and `configure`s a fresh one), runs under
//! the deadline and memory cap, and returns the instance to the pool only if the call
//! ended normally: a trap, a deadline or the memory cap discards it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio_util::io::StreamReader;
use wasmtime::component::Resource;
use wasmtime::{Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::AsyncReadStream;
use wasmtime_wasi::p2::{DynInputStream, InputStream};

use super::bindings::{self, EnginePre};
use super::runtime::{Limits, Loaded, WasmRuntime};
use super::state::{Budget, GuestState, Progress};
use crate::engine::{AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo};

/// Idle instances kept per engine; more are created under load and dropped after.
const POOL_SIZE: usize = 8;
/// Added to the deadline for the host-side timeout, which catches calls blocked in host
/// I/O (where epoch interruption cannot fire).
const HOST_GRACE: Duration = Duration::from_millis(500);
/// How often the host looks at a streaming call's progress.
const WATCH_EVERY: Duration = Duration::from_millis(100);

struct Settings {
    json: String,
    allowed_hosts: Vec<String>,
    limits: Limits,
    /// The engine's `request-timeout-secs`: how long its runtime may take to answer an
    /// image load after the archive's last byte.
    request_timeout: Duration,
    generation: u64,
}

struct Instance {
    store: Store<GuestState>,
    bindings: bindings::Engine,
    generation: u64,
}

pub struct WasmEngine {
    name: String,
    runtime: Arc<WasmRuntime>,
    pre: EnginePre<GuestState>,
    pub sha256: String,
    settings: Mutex<Settings>,
    pool: Mutex<Vec<Instance>>,
}

type CallFuture<'a, R> = Pin<Box<dyn Future<Output = wasmtime::Result<Result<R, bindings::EngineError>>> + Send + 'a>>;

impl WasmEngine {
    pub fn new(name: &str, runtime: Arc<WasmRuntime>, loaded: Loaded, settings: &Map<String, Value>, limits: Limits) -> WasmEngine {
        WasmEngine {
            name: name.to_string(),
            runtime,
            pre: loaded.pre,
            sha256: loaded.sha256,
            settings: Mutex::new(Settings {
                json: Value::Object(settings.clone()).to_string(),
                allowed_hosts: allowed_hosts(settings),
                limits,
                request_timeout: request_timeout(name, settings),
                generation: 0,
            }),
            pool: Mutex::new(Vec::new()),
        }
    }

    /// New settings or limits: idle instances configured with the old ones are dropped.
    pub fn reconfigure(&self, settings: &Map<String, Value>, limits: Limits) {
        let json = Value::Object(settings.clone()).to_string();
        let mut current = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if current.json == json && current.limits == limits {
            return;
        }
        *current = Settings {
            json,
            allowed_hosts: allowed_hosts(settings),
            limits,
            request_timeout: request_timeout(&self.name, settings),
            generation: current.generation + 1,
        };
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn limits(&self) -> Limits {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).limits
    }

    fn request_timeout(&self) -> Duration {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).request_timeout
    }

    async fn instance(&self) -> Result<Instance, EngineError> {
        let generation = self.settings.lock().unwrap_or_else(|p| p.into_inner()).generation;
        loop {
            let idle = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match idle {
                Some(instance) if instance.generation == generation => return Ok(instance),
                Some(_) => continue,
                None => return self.fresh_instance().await,
            }
        }
    }

    /// Instantiates and configures a new instance. Also timed: `configure` is guest code.
    async fn fresh_instance(&self) -> Result<Instance, EngineError> {
        let (json, allowed, limits, generation) = {
            let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            (s.json.clone(), s.allowed_hosts.clone(), s.limits, s.generation)
        };
        let store_limits = StoreLimitsBuilder::new().memory_size(limits.memory_bytes).trap_on_grow_failure(true).build();
        let mut store = Store::new(&self.runtime.engine, GuestState::new(&self.name, allowed, store_limits));
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().budget.check()));
        store.data_mut().budget = Budget::new(limits.deadline);
        store.set_epoch_deadline(1);
        let instantiate = async {
            let bindings = self.pre.instantiate_async(&mut store).await?;
            let configured = bindings.context_engines_engine_lifecycle().call_configure(&mut store, &json).await?;
            Ok::<_, wasmtime::Error>((bindings, configured))
        };
        let (bindings, configured) = tokio::time::timeout(limits.deadline + HOST_GRACE, instantiate)
            .await
            .map_err(|_| self.deadline_error("configure", &Budget::new(limits.deadline)))?
            .map_err(|e| self.trap_error("configure", &e, &Budget::new(limits.deadline), limits))?;
        configured.map_err(|e| self.guest_error(e))?;
        Ok(Instance { store, bindings, generation })
    }

    /// Runs one export on an instance under the limits: the call deadline, or for a
    /// streaming call the `streaming` budget, which counts from its last progress. The
    /// epoch check stops guest code that overruns; the host stops a call blocked in host
    /// I/O (a runtime that neither reads nor answers), where the epoch cannot.
    async fn call<R: Send>(
        &self,
        what: &str,
        streaming: Option<Budget>,
        f: impl for<'a> FnOnce(&'a bindings::Engine, &'a mut Store<GuestState>) -> CallFuture<'a, R>,
    ) -> Result<R, EngineError> {
        let limits = self.limits();
        let mut instance = self.instance().await?;
        let budget = streaming.clone().unwrap_or_else(|| Budget::new(limits.deadline));
        instance.store.data_mut().budget = budget.clone();
        instance.store.set_epoch_deadline(1);
        let mut watch = budget.clone();
        let outcome = {
            let Instance { store, bindings, .. } = &mut instance;
            let call = f(bindings, store);
            if streaming.is_some() {
                tokio::select! {
                    result = call => Ok(result),
                    _ = watchdog(&mut watch) => Err(()),
                }
            } else {
                tokio::time::timeout(limits.deadline + HOST_GRACE, call).await.map_err(|_| ())
            }
        };
        let result = match outcome {
            Err(()) => return Err(self.deadline_error(what, &watch)),
            Ok(Err(trap)) => return Err(self.trap_error(what, &trap, &instance.store.data().budget, limits)),
            Ok(Ok(result)) => result,
        };
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_SIZE {
            pool.push(instance);
        }
        drop(pool);
        result.map_err(|e| self.guest_error(e))
    }

    fn deadline_error(&self, what: &str, budget: &Budget) -> EngineError {
        EngineError::Failed { engine: self.name.clone(), cause: format!("{what} {}; the instance was discarded", budget.overrun()) }
    }

    fn trap_error(&self, what: &str, error: &wasmtime::Error, budget: &Budget, limits: Limits) -> EngineError {
        let detail = format!("{error:#}");
        let cause = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => budget.overrun(),
            _ if detail.contains("forcing trap when growing memory") => {
                format!("exceeded its memory cap of {} MiB", limits.memory_bytes / (1024 * 1024))
            }
            Some(Trap::UnreachableCodeReached) => "trapped: the engine panicked or aborted (unreachable)".to_string(),
            Some(trap) => format!("trapped: {trap}"),
            None => format!("failed in the runtime: {detail}"),
        };
        EngineError::Failed { engine: self.name.clone(), cause: format!("{what} {cause}; the instance was discarded") }
    }

    fn guest_error(&self, error: bindings::EngineError) -> EngineError {
        let engine = self.name.clone();
        match error {
            bindings::EngineError::Unreachable(cause) => {
                EngineError::Unreachable { engine, address: "its configured runtime".to_string(), cause }
            }
            bindings::EngineError::ImageMissing(image) => EngineError::ImageMissing { engine, image },
            bindings::EngineError::BadArchive(cause) => EngineError::BadArchive { engine, cause },
            bindings::EngineError::Rejected(cause) => EngineError::Rejected { engine, cause },
            bindings::EngineError::BadConfig(cause) => EngineError::Misconfigured { engine, cause },
            bindings::EngineError::Failed(cause) => EngineError::Failed { engine, cause },
        }
    }

    /// `spec` in the contract's terms. engine@0.1.0 knows env, labels, network and the
    /// drpcli injection only: a spec with any other option is refused, naming them,
    /// rather than run without them.
    fn contract_spec(&self, spec: &AgentSpec) -> Result<bindings::AgentSpec, EngineError> {
        let mut rest = spec.options.clone();
        let env = std::mem::take(&mut rest.env);
        let labels = std::mem::take(&mut rest.labels);
        let drpcli = rest
            .mounts
            .iter()
            .position(|m| m.target == crate::agents::DRPCLI_IN_AGENT && m.read_only)
            .filter(|_| spec.entrypoint.is_some())
            .map(|at| rest.mounts.remove(at))
            .and_then(|m| m.source);
        if !rest.is_empty() || (spec.entrypoint.is_some() && drpcli.is_none()) {
            return Err(EngineError::Rejected {
                engine: self.name.clone(),
                cause: format!(
                    "this engine implements context-engines:engine@0.1.0, which cannot express the agent options {}; \
                     use an engine built against engine@0.2.0, or drop those options",
                    rest.keys().join(", ")
                ),
            });
        }
        Ok(bindings::AgentSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            env: key_values(&env),
            labels: key_values(&labels),
            network: spec.network.clone(),
            drpcli,
        })
    }

    /// `describe`, run like any other call.
    pub async fn describe(&self) -> Result<bindings::EngineInfo, EngineError> {
        self.call("describe", None, |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_describe(store).await.map(Ok) })
        })
        .await
    }
}

/// Resolves once `budget` has run out; it is looked at every [`WATCH_EVERY`].
async fn watchdog(budget: &mut Budget) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        if budget.expired() {
            return;
        }
    }
}

/// Settings were checked when the config was accepted.
fn request_timeout(name: &str, settings: &Map<String, Value>) -> Duration {
    let secs = crate::params::request_timeout(name, settings).ok().flatten();
    Duration::from_secs(secs.unwrap_or(crate::params::DEFAULT_REQUEST_TIMEOUT_SECS))
}

fn allowed_hosts(settings: &Map<String, Value>) -> Vec<String> {
    settings
        .get("allowed-hosts")
        .and_then(Value::as_array)
        .map(|hosts| hosts.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default()
}

fn key_values(map: &BTreeMap<String, String>) -> Vec<bindings::KeyValue> {
    map.iter().map(|(key, value)| bindings::KeyValue { key: key.clone(), value: value.clone() }).collect()
}

fn agent_info(info: bindings::AgentInfo) -> AgentInfo {
    AgentInfo {
        name: info.name,
        id: info.id,
        running: info.running,
        labels: info.labels.into_iter().map(|kv| (kv.key, kv.value)).collect(),
    }
}

#[async_trait]
impl Engine for WasmEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "wasm"
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let described = self.describe().await?;
        let features = if described.features.is_empty() { String::new() } else { format!(" [{}]", described.features.join(", ")) };
        Ok(EngineInfo {
            name: self.name.clone(),
            kind: "wasm",
            version: format!("{} {}{features} (sha256 {})", described.name, described.version, &self.sha256[..12]),
        })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        let image = image.to_string();
        self.call("image-id", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_image_id(store, &image).await })
        })
        .await
    }

    async fn image_load(&self, image: &str, archive: ArchiveStream) -> Result<(), EngineError> {
        let image = image.to_string();
        let progress = Arc::new(Progress::default());
        let (reading, ending) = (Arc::clone(&progress), Arc::clone(&progress));
        let counted = archive
            .inspect(move |chunk| {
                if let Ok(chunk) = chunk {
                    reading.read(chunk.len());
                }
            })
            .chain(futures_util::stream::poll_fn(move |_| {
                ending.end();
                Poll::Ready(None)
            }));
        let budget = Budget::streaming(self.limits().deadline, self.request_timeout(), progress);
        self.call("image-load", Some(budget), move |e, store| {
            Box::pin(async move {
                // The engine reads the archive as a wasi:io input-stream the host feeds.
                let stream: DynInputStream = Box::new(AsyncReadStream::new(StreamReader::new(counted))) as Box<dyn InputStream>;
                let resource: Resource<DynInputStream> = store.data_mut().table().push(stream)?;
                e.context_engines_engine_lifecycle().call_image_load(store, &image, resource).await
            })
        })
        .await
    }

    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let (source, target) = (source.to_string(), target.to_string());
        self.call("image-tag", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_image_tag(store, &source, &target).await })
        })
        .await
    }

    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        let image = image.to_string();
        self.call("image-remove", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_image_remove(store, &image).await })
        })
        .await
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        let spec = self.contract_spec(spec)?;
        self.call("agent-start", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_agent_start(store, &spec).await })
        })
        .await
        .map(agent_info)
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        let name = name.to_string();
        self.call("agent-stop", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_agent_stop(store, &name).await })
        })
        .await
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        let labels: Vec<bindings::KeyValue> =
            labels.iter().map(|(key, value)| bindings::KeyValue { key: key.to_string(), value: value.to_string() }).collect();
        self.call("agent-list", None, move |e, store| {
            Box::pin(async move { e.context_engines_engine_lifecycle().call_agent_list(store, &labels).await })
        })
        .await
        .map(|agents| agents.into_iter().map(agent_info).collect())
    }
}
