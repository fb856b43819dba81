//! What the plugin counts, for Prometheus: one process-wide set of counters and
//! histograms that the code paths bump as they go (a few atomic adds each), plus what
//! is read off live state only when scraped (agents wanted and running, queue depth,
//! health). Nothing here does I/O or takes a lock the reconciler holds while working.
//!
//! Served by [`listener`] on `context-engines/metrics-address`; the engine decorator in
//! [`observed`] records what every engine call answered, which `/healthz` reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::engine::EngineError;

pub mod listener;
pub mod observed;

/// Seconds: from a tenth of a second (an agent of a cached image on a local runtime) to
/// several minutes (a large archive downloaded and loaded first).
const SECONDS_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabel {
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub engine: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContextLabels {
    pub context: String,
    pub engine: String,
}

type SecondsFamily = Family<EngineLabel, Histogram, fn() -> Histogram>;

/// Every counter and histogram of the process. Clones of a metric share its value, so a
/// listener's registry (see [`Metrics::register`]) reads these very ones.
pub struct Metrics {
    agent_starts: Family<EngineLabel, Counter>,
    agent_stops: Family<EngineLabel, Counter>,
    agent_failures: Family<FailureLabels, Counter>,
    agent_start_seconds: SecondsFamily,
    queue_retries: Counter,
    full_reconcile_seconds: Histogram,
    engine_list_seconds: SecondsFamily,
    stream_connects: Counter,
    stream_drops: Counter,
    stream_connected: AtomicBool,
    image_loads: Family<EngineLabel, Counter>,
    image_load_bytes: Family<EngineLabel, Counter>,
    wasm_calls: Family<EngineLabel, Counter>,
    wasm_traps: Family<EngineLabel, Counter>,
    wasm_deadlines: Family<EngineLabel, Counter>,
    /// Per engine name: `None` when its last call was answered, else why not.
    engine_answers: Mutex<HashMap<String, Option<String>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

fn engine(name: &str) -> EngineLabel {
    EngineLabel { engine: name.to_string() }
}

/// How a WASM call ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmEnd {
    Returned,
    Trapped,
    DeadlineHit,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            agent_starts: Family::default(),
            agent_stops: Family::default(),
            agent_failures: Family::default(),
            agent_start_seconds: Family::new_with_constructor(seconds_histogram),
            queue_retries: Counter::default(),
            full_reconcile_seconds: seconds_histogram(),
            engine_list_seconds: Family::new_with_constructor(seconds_histogram),
            stream_connects: Counter::default(),
            stream_drops: Counter::default(),
            stream_connected: AtomicBool::new(false),
            image_loads: Family::default(),
            image_load_bytes: Family::default(),
            wasm_calls: Family::default(),
            wasm_traps: Family::default(),
            wasm_deadlines: Family::default(),
            engine_answers: Mutex::new(HashMap::new()),
        }
    }

    /// An agent was started (by a settle or `agentStart`) after `took`.
    pub fn agent_started(&self, engine_name: &str, took: Duration) {
        self.agent_starts.get_or_create(&engine(engine_name)).inc();
        self.agent_start_seconds.get_or_create(&engine(engine_name)).observe(took.as_secs_f64());
    }

    pub fn agent_stopped(&self, engine_name: &str) {
        self.agent_stops.get_or_create(&engine(engine_name)).inc();
    }

    /// A step of an agent's life failed; `reason` is the step (`start`, `stop`, …).
    pub fn agent_failed(&self, engine_name: &str, reason: &str) {
        self.agent_failures.get_or_create(&FailureLabels { engine: engine_name.to_string(), reason: reason.to_string() }).inc();
    }

    /// A settle failed and its machine will be tried again.
    pub fn retry_scheduled(&self) {
        self.queue_retries.inc();
    }

    pub fn full_reconcile(&self, took: Duration) {
        self.full_reconcile_seconds.observe(took.as_secs_f64());
    }

    pub fn engine_listed(&self, engine_name: &str, took: Duration) {
        self.engine_list_seconds.get_or_create(&engine(engine_name)).observe(took.as_secs_f64());
    }

    /// The event stream connected (true) or dropped (false).
    pub fn event_stream(&self, connected: bool) {
        if connected {
            self.stream_connects.inc();
        } else {
            self.stream_drops.inc();
        }
        self.stream_connected.store(connected, Ordering::Relaxed);
    }

    pub fn event_stream_connected(&self) -> bool {
        self.stream_connected.load(Ordering::Relaxed)
    }

    pub fn image_loaded(&self, engine_name: &str) {
        self.image_loads.get_or_create(&engine(engine_name)).inc();
    }

    /// Archive bytes handed to an engine, counted as they stream (a load that fails
    /// half-way counts what went).
    pub fn image_bytes(&self, engine_name: &str, bytes: u64) {
        self.image_load_bytes.get_or_create(&engine(engine_name)).inc_by(bytes);
    }

    pub fn wasm_call(&self, engine_name: &str, end: WasmEnd) {
        self.wasm_calls.get_or_create(&engine(engine_name)).inc();
        match end {
            WasmEnd::Returned => {}
            WasmEnd::Trapped => {
                self.wasm_traps.get_or_create(&engine(engine_name)).inc();
            }
            WasmEnd::DeadlineHit => {
                self.wasm_deadlines.get_or_create(&engine(engine_name)).inc();
            }
        }
    }

    /// What an engine's call came back with. A runtime that could not be reached, a
    /// failure or a misconfiguration means the engine did not answer; a refusal or a
    /// missing image is an answer.
    pub fn engine_answered<T>(&self, engine_name: &str, result: &Result<T, EngineError>) {
        let problem = match result {
            Err(e @ (EngineError::Unreachable { .. } | EngineError::Failed { .. } | EngineError::Misconfigured { .. })) => {
                Some(e.to_string())
            }
            _ => None,
        };
        let mut answers = self.engine_answers.lock().unwrap_or_else(|p| p.into_inner());
        match answers.get_mut(engine_name) {
            Some(last) => *last = problem,
            None => {
                answers.insert(engine_name.to_string(), problem);
            }
        }
    }

    /// Why `engine_name`'s last call was not answered; `None` when it was, or when it
    /// was never called.
    pub fn engine_problem(&self, engine_name: &str) -> Option<String> {
        self.engine_answers.lock().unwrap_or_else(|p| p.into_inner()).get(engine_name).cloned().flatten()
    }

    /// Puts every counter and histogram into `registry` (which prefixes the names).
    pub fn register(&self, registry: &mut Registry) {
        registry.register("agent_starts", "Agents started, by engine", self.agent_starts.clone());
        registry.register("agent_stops", "Agents stopped, by engine", self.agent_stops.clone());
        registry.register(
            "agent_failures",
            "Failed agent steps, by engine and step (prepare, image-load, options, start, stop)",
            self.agent_failures.clone(),
        );
        registry.register_with_unit(
            "agent_start",
            "Time from a settle deciding to start an agent to the agent running, by engine",
            Unit::Seconds,
            self.agent_start_seconds.clone(),
        );
        registry.register("work_queue_retries", "Machine settles that failed and were scheduled again", self.queue_retries.clone());
        registry.register_with_unit(
            "full_reconcile",
            "Time to list dr-provision's machines and Contexts and apply them (engine listings follow, see engine_list)",
            Unit::Seconds,
            self.full_reconcile_seconds.clone(),
        );
        registry.register_with_unit(
            "engine_list",
            "Time to list one engine's agents and merge them, by engine",
            Unit::Seconds,
            self.engine_list_seconds.clone(),
        );
        registry.register("event_stream_connects", "Event stream connections made to dr-provision", self.stream_connects.clone());
        registry.register("event_stream_drops", "Event stream connections lost", self.stream_drops.clone());
        registry.register("image_loads", "Image archives loaded, by engine", self.image_loads.clone());
        registry.register_with_unit(
            "image_load",
            "Archive bytes streamed into engines, by engine",
            Unit::Bytes,
            self.image_load_bytes.clone(),
        );
        registry.register("wasm_calls", "Calls into WASM engines, by engine", self.wasm_calls.clone());
        registry.register("wasm_traps", "WASM engine calls that trapped (panic, memory cap), by engine", self.wasm_traps.clone());
        registry.register("wasm_deadline_exceeded", "WASM engine calls stopped at their deadline, by engine", self.wasm_deadlines.clone());
    }
}
