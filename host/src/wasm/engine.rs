//! How a WASM engine is called: an [`Engine`] over a pre-instantiated component. Each
//! call takes an idle instance (or instantiates and `configure`s a fresh one), runs under
//! the deadline and memory cap, and returns the instance to the pool only if the call
//! ended normally: a trap, a deadline or the memory cap discards it.

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
use wasmtime::{Store, Trap};
use wasmtime_wasi::p2::pipe::AsyncReadStream;
use wasmtime_wasi::p2::{DynInputStream, InputStream};

use super::bindings::{self, Bindings, Contract, Described, EnginePre, v01, v02, wasm_call};
use super::pool::Pool;
use super::runtime::{Limits, Loaded, WasmRuntime};
use super::state::{Budget, GuestState, MemoryCap, OverMemoryCap, Progress};
use crate::engine::{AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo};
use crate::metrics::WasmEnd;
use crate::options::{AgentOptions, MountType, feature};

/// Added to the deadline for the host-side timeout, which catches calls blocked in host
/// I/O (where epoch interruption cannot fire).
const HOST_GRACE: Duration = Duration::from_millis(500);
/// How often the host looks at a streaming call's progress.
const WATCH_EVERY: Duration = Duration::from_millis(100);

struct Settings {
    json: String,
    /// The `host:port` pairs the engine may reach, or why its `allowed-hosts` is wrong.
    allowed_hosts: Result<Vec<String>, String>,
    limits: Limits,
    /// The engine's `request-timeout-secs`: how long its runtime may take to answer an
    /// image load after the archive's last byte.
    request_timeout: Duration,
    generation: u64,
}

struct Instance {
    store: Store<GuestState>,
    bindings: Bindings,
}

pub struct WasmEngine {
    name: String,
    runtime: Arc<WasmRuntime>,
    pre: EnginePre<GuestState>,
    pub sha256: String,
    settings: Mutex<Settings>,
    pool: Pool<Instance>,
    /// `describe`'s answer, asked once per settings generation: the features never
    /// change, but whether `configure` succeeds does, and that is what shows an engine
    /// as unavailable.
    described: Mutex<Option<(u64, Described)>>,
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
            pool: Pool::new(limits.max_instances),
            described: Mutex::new(None),
        }
    }

    /// The contract version the component implements.
    pub fn contract(&self) -> Contract {
        self.pre.contract()
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
        drop(current);
        self.pool.resize(limits.max_instances);
        self.pool.clear();
    }

    fn limits(&self) -> Limits {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).limits
    }

    pub fn current_limits(&self) -> Limits {
        self.limits()
    }

    /// Runs `work` with the engine under `limits`, then puts its own back: the
    /// conformance kit's way of showing what a limit does to this engine. Only for an
    /// engine nothing else calls meanwhile (the kit runs alone in its process): other
    /// calls would run under `limits` too, and a reconfigure meanwhile would be undone.
    pub async fn with_limits<R>(&self, limits: Limits, work: impl Future<Output = R>) -> R {
        let (json, own) = {
            let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            (s.json.clone(), s.limits)
        };
        let settings = match serde_json::from_str::<Value>(&json) {
            Ok(Value::Object(settings)) => settings,
            _ => Map::new(),
        };
        self.reconfigure(&settings, limits);
        let result = work.await;
        self.reconfigure(&settings, own);
        result
    }

    /// The linear memory a fresh instance holds once instantiated and configured, which
    /// is what every instance costs before its first call.
    pub async fn memory_needed(&self) -> Result<usize, EngineError> {
        let _slot = self.pool.slot().await;
        let generation = self.generation();
        let instance = self.fresh_instance().await?;
        let used = instance.store.data().limits.used();
        self.pool.give_back(generation, instance);
        Ok(used)
    }

    fn request_timeout(&self) -> Duration {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).request_timeout
    }

    fn generation(&self) -> u64 {
        self.settings.lock().unwrap_or_else(|p| p.into_inner()).generation
    }

    /// An idle instance configured with the current settings, or a fresh one.
    async fn instance(&self, generation: u64) -> Result<Instance, EngineError> {
        match self.pool.take(generation) {
            Some(instance) => Ok(instance),
            None => self.fresh_instance().await,
        }
    }

    /// Instantiates and configures a new instance, both timed and under the memory cap:
    /// instantiation runs the component's initialisers, and `configure` is guest code.
    async fn fresh_instance(&self) -> Result<Instance, EngineError> {
        let (json, allowed, limits) = {
            let s = self.settings.lock().unwrap_or_else(|p| p.into_inner());
            (s.json.clone(), s.allowed_hosts.clone(), s.limits)
        };
        let allowed = allowed.map_err(|cause| EngineError::Misconfigured { engine: self.name.clone(), cause })?;
        let mut store = Store::new(&self.runtime.engine, GuestState::new(&self.name, allowed, MemoryCap::new(limits.memory_bytes)));
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().budget.check()));
        store.data_mut().budget = Budget::new(limits.deadline);
        store.set_epoch_deadline(1);
        let budget = Budget::new(limits.deadline);
        let within_deadline = |what: &'static str| {
            let budget = budget.clone();
            move |_| self.deadline_error(what, &budget)
        };
        let bindings = tokio::time::timeout(limits.deadline + HOST_GRACE, self.pre.instantiate_async(&mut store))
            .await
            .map_err(within_deadline("instantiation"))?
            .map_err(|e| self.trap_error("instantiation", &e, &budget))?;
        let configured = tokio::time::timeout(limits.deadline + HOST_GRACE, bindings.configure(&mut store, &json))
            .await
            .map_err(within_deadline("configure"))?
            .map_err(|e| self.trap_error("configure", &e, &budget))?;
        crate::metrics::global().wasm_call(&self.name, WasmEnd::Returned);
        configured.map_err(|e| self.guest_error(e))?;
        Ok(Instance { store, bindings })
    }

    /// Runs one export on an instance under the limits: the call deadline, or for a
    /// streaming call the `streaming` budget, which counts from its last progress. The
    /// epoch check stops guest code that overruns; the host stops a call blocked in host
    /// I/O (a runtime that neither reads nor answers), where the epoch cannot.
    async fn call<R: Send>(
        &self,
        what: &str,
        streaming: Option<Budget>,
        f: impl for<'a> FnOnce(&'a Bindings, &'a mut Store<GuestState>) -> CallFuture<'a, R>,
    ) -> Result<R, EngineError> {
        let limits = self.limits();
        let _slot = self.pool.slot().await;
        let generation = self.generation();
        let mut instance = self.instance(generation).await?;
        let is_streaming = streaming.is_some();
        let mut budget = streaming.unwrap_or_else(|| Budget::new(limits.deadline));
        // The wait for a slot and a fresh instance's set-up are not the call's time.
        budget.restart();
        instance.store.data_mut().budget = budget.clone();
        instance.store.set_epoch_deadline(1);
        let mut watch = budget.clone();
        let outcome = {
            let Instance { store, bindings, .. } = &mut instance;
            let call = f(bindings, store);
            if is_streaming {
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
            Ok(Err(trap)) => return Err(self.trap_error(what, &trap, &instance.store.data().budget)),
            Ok(Ok(result)) => result,
        };
        crate::metrics::global().wasm_call(&self.name, WasmEnd::Returned);
        // An instance configured with settings that changed during the call is dropped.
        if generation == self.generation() {
            self.pool.give_back(generation, instance);
        }
        result.map_err(|e| self.guest_error(e))
    }

    fn deadline_error(&self, what: &str, budget: &Budget) -> EngineError {
        crate::metrics::global().wasm_call(&self.name, WasmEnd::DeadlineHit);
        EngineError::Failed { engine: self.name.clone(), cause: format!("{what} {}; the instance was discarded", budget.overrun()) }
    }

    fn trap_error(&self, what: &str, error: &wasmtime::Error, budget: &Budget) -> EngineError {
        let detail = format!("{error:#}");
        let end = if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) { WasmEnd::DeadlineHit } else { WasmEnd::Trapped };
        crate::metrics::global().wasm_call(&self.name, end);
        let cause = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => budget.overrun(),
            _ if let Some(over) = error.downcast_ref::<OverMemoryCap>() => {
                let mib = |bytes: usize| {
                    let mib = bytes as f64 / (1024.0 * 1024.0);
                    if mib.fract() == 0.0 { format!("{mib} MiB") } else { format!("{mib:.1} MiB") }
                };
                let needs = if what == "instantiation" { "needs" } else { "grew to need" };
                format!(
                    "{needs} {} of linear memory, over its memory cap of {} (all its memories counted; raise context-engines/wasm-memory-mb)",
                    mib(over.wanted),
                    mib(over.cap)
                )
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
            bindings::EngineError::Unreachable(cause) => EngineError::Unreachable { engine, address: String::new(), cause },
            bindings::EngineError::ImageMissing(image) => EngineError::ImageMissing { engine, image },
            bindings::EngineError::BadArchive(cause) => EngineError::BadArchive { engine, cause },
            bindings::EngineError::Rejected(cause) => EngineError::Rejected { engine, cause },
            bindings::EngineError::BadConfig(cause) => EngineError::Misconfigured { engine, cause },
            bindings::EngineError::Failed(cause) => EngineError::Failed { engine, cause },
        }
    }

    /// `spec` in engine@0.1.0's terms, which know env, labels, network and the drpcli
    /// injection only: a spec with any other option is refused, naming them, rather than
    /// run without them.
    fn spec_v01(&self, spec: &AgentSpec) -> Result<v01::AgentSpec, EngineError> {
        let mut rest = spec.options.clone();
        // Where among nodes: nothing for an engine that runs agents where it runs them.
        rest.placement = Default::default();
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
            let mut options = rest.keys();
            if spec.entrypoint.is_some() && drpcli.is_none() {
                options.push("entrypoint".to_string());
            }
            return Err(self.refusal(&format!("cannot express the agent options {}", options.join(", "))));
        }
        Ok(v01::AgentSpec {
            name: spec.name.clone(),
            image: spec.image.clone(),
            env: v01::KeyValue::map(&env),
            labels: v01::KeyValue::map(&labels),
            network: spec.network.clone(),
            drpcli,
        })
    }

    /// A start (or call) the engine's contract or declared features cannot serve.
    fn refusal(&self, what: &str) -> EngineError {
        EngineError::Rejected {
            engine: self.name.clone(),
            cause: format!("it implements {} and {what}; use an engine that can, or drop those options", self.contract().package()),
        }
    }

    /// Refuses a spec needing features the engine does not declare, naming them and the
    /// options that need them.
    async fn check_features(&self, options: &AgentOptions) -> Result<(), EngineError> {
        let declared = self.described().await?.features;
        let missing: Vec<&str> = options.features_needed().into_iter().filter(|f| !declared.iter().any(|d| d == f)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let needs: Vec<String> = missing.iter().map(|f| format!("{f} (for {})", options_needing(options, f).join(", "))).collect();
        let declares = if declared.is_empty() { "none".to_string() } else { declared.join(", ") };
        Err(self
            .refusal(&format!("does not declare the features {} that the agent options need (it declares: {declares})", needs.join("; "))))
    }

    /// `describe`, asked once and remembered.
    pub async fn described(&self) -> Result<Described, EngineError> {
        let generation = self.generation();
        if let Some((asked, known)) = self.described.lock().unwrap_or_else(|p| p.into_inner()).clone()
            && asked == generation
        {
            return Ok(known);
        }
        let described = self.describe().await?;
        *self.described.lock().unwrap_or_else(|p| p.into_inner()) = Some((generation, described.clone()));
        Ok(described)
    }

    /// `describe`, run like any other call.
    pub async fn describe(&self) -> Result<Described, EngineError> {
        self.call("describe", None, |e, store| Box::pin(async move { e.describe(store).await.map(Ok) })).await
    }
}

/// The option keys of `options` that need `feature`: each key alone, asked what it needs.
fn options_needing(options: &AgentOptions, feature: &str) -> Vec<String> {
    let Ok(Value::Object(all)) = serde_json::to_value(options) else { return Vec::new() };
    all.into_iter()
        .filter(|(key, value)| {
            let alone = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
            AgentOptions::from_value(&alone).is_ok_and(|o| o.features_needed().contains(feature))
        })
        .map(|(key, _)| key)
        .collect()
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

/// The engine's `allowed-hosts`: each entry `host:port`, as the contract says. A bare
/// host is refused rather than read as "every port": an engine would otherwise reach
/// more than its operator wrote down.
fn allowed_hosts(settings: &Map<String, Value>) -> Result<Vec<String>, String> {
    let Some(hosts) = settings.get("allowed-hosts") else { return Ok(Vec::new()) };
    let Some(hosts) = hosts.as_array() else { return Err(format!("allowed-hosts must be a list of \"host:port\" strings, not {hosts}")) };
    hosts.iter().map(allowed_host).collect()
}

fn allowed_host(entry: &Value) -> Result<String, String> {
    let Some(text) = entry.as_str() else { return Err(format!("allowed-hosts entry {entry} is not a string")) };
    let refuse = |why: &str| Err(format!("allowed-hosts entry '{text}' {why}: write host:port, e.g. 127.0.0.1:2375 or [::1]:2375"));
    if text.contains("://") || text.contains('/') {
        return refuse("is not host:port (no scheme or path)");
    }
    // "[::1]" ends in a bracket, not in a port.
    let port_written = text.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && !port.contains(']'));
    let Ok(authority) = text.parse::<http::uri::Authority>() else {
        return refuse(if port_written { "is not a host and a port from 1 to 65535" } else { "is not a host:port" });
    };
    if authority.as_str().contains('@') {
        return refuse("carries user information");
    }
    match authority.port_u16() {
        Some(port) if port > 0 => Ok(super::state::canonical_authority(authority.host(), port)),
        _ if port_written => refuse("has a port that is not a number from 1 to 65535"),
        _ => refuse("has no port"),
    }
}

/// `spec` in engine@0.2.0's terms: all of it.
fn spec_v02(spec: &AgentSpec) -> v02::AgentSpec {
    let o = &spec.options;
    v02::AgentSpec {
        name: spec.name.clone(),
        image: spec.image.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: v02::KeyValue::map(&o.env),
        labels: v02::KeyValue::map(&o.labels),
        network: spec.network.clone(),
        mounts: o
            .mounts
            .iter()
            .map(|m| v02::Mount {
                kind: match m.kind {
                    MountType::Bind => v02::MountKind::Bind,
                    MountType::Volume => v02::MountKind::Volume,
                    MountType::Tmpfs => v02::MountKind::Tmpfs,
                },
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
                tmpfs_size: m.tmpfs_size.map(|s| s.0),
            })
            .collect(),
        resources: v02::Resources {
            memory: o.memory.map(|m| m.0),
            memory_swap: o.memory_swap.map(|m| m.bytes()),
            cpus: o.cpus,
            pids_limit: o.pids_limit,
            shm_size: o.shm_size.map(|s| s.0),
        },
        security: v02::Security {
            user: o.user.clone(),
            cap_add: o.cap_add.clone(),
            cap_drop: o.cap_drop.clone(),
            security_opt: o.security_opt.clone(),
            devices: o.devices.clone(),
            privileged: o.privileged,
            read_only_rootfs: o.read_only_rootfs,
        },
        process: v02::Process {
            workdir: o.workdir.clone(),
            init: o.init,
            stop_timeout_secs: o.stop_timeout_secs,
            extra_hosts: o.extra_hosts.clone(),
            dns: o.dns.clone(),
        },
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
        let described = self.described().await?;
        let features = if described.features.is_empty() { String::new() } else { format!(" [{}]", described.features.join(", ")) };
        Ok(EngineInfo {
            name: self.name.clone(),
            kind: "wasm",
            version: format!("{} {}{features} ({}, sha256 {})", described.name, described.version, self.contract(), &self.sha256[..12]),
        })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        let image = image.to_string();
        self.call("image-id", None, move |e, store| Box::pin(async move { wasm_call!(e, store, |v| call_image_id(&image)) })).await
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
                wasm_call!(e, store, |v| call_image_load(&image, resource))
            })
        })
        .await
    }

    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let (source, target) = (source.to_string(), target.to_string());
        self.call("image-tag", None, move |e, store| Box::pin(async move { wasm_call!(e, store, |v| call_image_tag(&source, &target)) }))
            .await
    }

    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        let image = image.to_string();
        self.call("image-remove", None, move |e, store| Box::pin(async move { wasm_call!(e, store, |v| call_image_remove(&image)) })).await
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        // Each contract gets the spec in its own terms, or a refusal before any call.
        let (old, new) = match self.contract() {
            Contract::V0_1 => (Some(self.spec_v01(spec)?), None),
            Contract::V0_2 => {
                self.check_features(&spec.options).await?;
                (None, Some(spec_v02(spec)))
            }
        };
        self.call("agent-start", None, move |e, store| {
            Box::pin(async move {
                match (e, old, new) {
                    (Bindings::V0_1(e), Some(spec), _) => e
                        .context_engines_engine_lifecycle()
                        .call_agent_start(store, &spec)
                        .await
                        .map(|r| r.map(Into::into).map_err(Into::into)),
                    (Bindings::V0_2(e), _, Some(spec)) => {
                        e.context_engines_engine_lifecycle().call_agent_start(store, &spec).await.map(|r| r.map(Into::into))
                    }
                    _ => Ok(Err(bindings::EngineError::Failed("the instance's contract is not its engine's".to_string()))),
                }
            })
        })
        .await
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        let name = name.to_string();
        self.call("agent-stop", None, move |e, store| Box::pin(async move { wasm_call!(e, store, |v| call_agent_stop(&name)) })).await
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.call("agent-list", None, move |e, store| {
            Box::pin(async move {
                let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                wasm_call!(e, store, |v| call_agent_list(&v::KeyValue::pairs(pairs)))
            })
        })
        .await
    }

    async fn agent_logs(&self, name: &str, lines: u32) -> Result<Vec<String>, EngineError> {
        if self.contract() == Contract::V0_1 {
            return Err(self.refusal(&format!("has no agent-logs (asked for the logs of {name})")));
        }
        if !self.described().await?.features.iter().any(|f| f == feature::LOGS) {
            return Err(self.refusal(&format!("does not declare the feature logs (asked for the logs of {name})")));
        }
        let name = name.to_string();
        self.call("agent-logs", None, move |e, store| {
            Box::pin(async move {
                match e {
                    Bindings::V0_2(e) => e.context_engines_engine_lifecycle().call_agent_logs(store, &name, lines).await,
                    Bindings::V0_1(_) => Ok(Err(bindings::EngineError::Failed("engine@0.1.0 has no agent-logs".to_string()))),
                }
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(value: Value) -> Result<Vec<String>, String> {
        allowed_hosts(&Map::from_iter([("allowed-hosts".to_string(), value)]))
    }

    #[test]
    fn allowed_hosts_are_host_and_port() {
        let written = serde_json::json!(["127.0.0.1:2375", "[0:0::1]:1", "Docker.Example:443", "host:02375"]);
        let stored = ["127.0.0.1:2375", "[::1]:1", "docker.example:443", "host:2375"].map(str::to_string).to_vec();
        assert_eq!(hosts(written), Ok(stored), "entries are kept in one spelling, the one requests are compared in");
        assert_eq!(allowed_hosts(&Map::new()), Ok(Vec::new()));
        for (bad, says) in [
            ("docker.example", "has no port"),
            ("http://127.0.0.1:2375", "no scheme or path"),
            ("127.0.0.1:2375/v1.41", "no scheme or path"),
            ("user@host:1", "user information"),
            ("host:port", "not a number from 1"),
            ("host:70000", "from 1 to 65535"),
            ("127.0.0.1:0", "not a number from 1"),
        ] {
            let error = hosts(serde_json::json!([bad])).expect_err(bad);
            assert!(error.contains(&format!("'{bad}'")) && error.contains(says), "{bad}: {error}");
        }
        assert!(hosts(serde_json::json!("127.0.0.1:1")).expect_err("a string").contains("must be a list"));
    }
}
