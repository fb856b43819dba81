//! Where agents are reconciled: the desired state (machines in our Contexts) against the
//! actual state (agents the engines run, found by label), one machine at a time.
//!
//! Work is per machine and goes through one [`Queue`]: an event marks its machine; a
//! machine already being settled is settled once more afterwards with the newest state,
//! so ten quick updates cost at most two decisions. Different machines proceed in
//! parallel up to `max-parallel`. A failed settle is retried with backoff by the queue's
//! one timer; one that cannot succeed as things stand is parked until the machine's next
//! event or resync. Actions on a machine take the same per-machine lock, so an action and
//! the reconciler never race on one machine.
//!
//! What runs is relearned by listing each engine (at connect, on resync, on request).
//! Listings run beside the event stream, one task per engine under a time bound, so an
//! engine that hangs delays only its own machines. A listing is merged, never pasted: a
//! machine whose agents were recorded after the listing began keeps what was recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::queue::{Outcome, Queue};
use crate::agents::{self, Agent, AgentError};
use crate::drp::{Context, Machine};
use crate::engine::{AgentGone, AgentInfo, Engine, EngineError, labels};
use crate::events::Event;
use crate::plugin::Plugin;
use crate::registry::{self, Rekey};

/// Longest wait for one engine's listing. Native engines bound each request by their own
/// `request-timeout-secs` and WASM engines by their call deadline; this is the bound for
/// an engine that does neither.
const LIST_BOUND: Duration = Duration::from_secs(150);
/// Longest wait for removing what a cancelled start created.
const UNDO_BOUND: Duration = Duration::from_secs(5);

/// The step of an agent's life that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Prepare,
    ImageLoad,
    Options,
    Start,
    Stop,
}

impl Step {
    fn phrase(self) -> &'static str {
        match self {
            Step::Prepare => "preparing",
            Step::ImageLoad => "loading the image of",
            Step::Options => "checking the options of",
            Step::Start => "starting",
            Step::Stop => "stopping",
        }
    }

    /// The `reason` label of `context_engines_agent_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::ImageLoad => "image-load",
            Step::Options => "options",
            Step::Start => "start",
            Step::Stop => "stop",
        }
    }
}

/// A start or stop that failed, saying which agent on which engine.
#[derive(Debug, thiserror::Error)]
#[error("{} agent {agent} on engine '{engine}': {source}", step.phrase())]
pub struct AgentFailure {
    step: Step,
    agent: String,
    engine: String,
    #[source]
    pub source: AgentError,
}

impl AgentFailure {
    fn new(step: Step, agent: &Agent, source: AgentError) -> AgentFailure {
        crate::metrics::global().agent_failed(registry::engine_name(&agent.engine), step.label());
        AgentFailure { step, agent: agent.name.clone(), engine: agent.engine.clone(), source }
    }
}

/// The outcome of comparing one machine's desired and actual agents.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub stop: Vec<Agent>,
    pub start: Option<(Agent, Context)>,
    /// A manual agent that is now the one its machine's Context wants.
    pub adopt: Option<Agent>,
    /// The running agent kept as the wanted one, with the wanted agent and its Context:
    /// a settle checks its spec digest against the wanted options (which need I/O).
    pub keep: Option<(Agent, Agent, Context)>,
}

struct State {
    machines: HashMap<String, Machine>,
    contexts: HashMap<String, Context>,
    /// Agents believed to exist, by machine: merged from listings, kept current by our
    /// own starts and stops in between.
    actual: HashMap<String, Vec<Agent>>,
    /// When each machine's agents on each engine were last recorded, on `clock`; a
    /// listing of that engine that began before says nothing new about them.
    recorded: HashMap<(String, String), u64>,
    clock: u64,
    queue: Queue,
    /// Engines being listed now; true asks for one more listing when it ends.
    listing: HashMap<String, bool>,
}

impl State {
    /// Notes that `machine`'s agents on `engine` were just recorded (see `recorded`).
    fn stamp(&mut self, machine: &str, engine: &str) {
        self.clock += 1;
        self.recorded.insert((machine.to_string(), engine.to_string()), self.clock);
    }
}

/// What the metrics listener reads off the reconciler per scrape.
#[derive(Debug, Default)]
pub struct Census {
    /// Machines whose Context (of this plugin) wants an agent, by (Context, engine).
    pub wanted: BTreeMap<(String, String), u64>,
    /// Agents believed running, by (Context, engine name).
    pub running: BTreeMap<(String, String), u64>,
    /// Engines in use: named by a Context of ours, or running an agent of ours.
    pub engines: BTreeSet<String>,
    /// Machines with a settle queued or under way.
    pub queued: usize,
    /// Machines waiting for a retry after a failure.
    pub retrying: usize,
    /// Machines whose last settle failed for good until they change.
    pub parked: usize,
}

pub struct Reconciler {
    plugin: Arc<Plugin>,
    state: Mutex<State>,
    machine_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    permits: Mutex<Arc<Semaphore>>,
    /// Number of machines with work queued or under way; 0 means converged.
    busy: watch::Sender<usize>,
    /// Full reconciles asked for outside the event stream. The stream runs them between
    /// two frames, so a listing of dr-provision never overwrites an event applied after
    /// it was taken.
    resync: Notify,
    /// Wakes the retry timer when the queue's next due time may have moved earlier.
    retry_changed: Notify,
    retry_timer: AtomicBool,
    /// Set when the plugin stops: nothing new is queued, work under way finishes.
    closed: AtomicBool,
    /// Fired when work under way outlasts the stop's drain: starts are undone, loads and
    /// downloads abandoned.
    cancel: CancellationToken,
    /// True once dr-provision's machines and contexts were learned. No machine is
    /// settled before: with nothing known yet, every agent would look unwanted.
    learned: watch::Sender<bool>,
}

impl Reconciler {
    pub fn new(plugin: Arc<Plugin>) -> Arc<Reconciler> {
        let permits = Arc::new(Semaphore::new(plugin.settings().max_parallel));
        Arc::new(Reconciler {
            plugin,
            state: Mutex::new(State {
                machines: HashMap::new(),
                contexts: HashMap::new(),
                actual: HashMap::new(),
                recorded: HashMap::new(),
                clock: 0,
                queue: Queue::new(Instant::now()),
                listing: HashMap::new(),
            }),
            machine_locks: Mutex::new(HashMap::new()),
            permits: Mutex::new(permits),
            busy: watch::channel(0).0,
            resync: Notify::new(),
            retry_changed: Notify::new(),
            retry_timer: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            learned: watch::channel(false).0,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_max_parallel(&self, n: usize) {
        *self.permits.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Semaphore::new(n));
    }

    /// Asks the event stream for a full reconcile (after a reconfigure, or an event it
    /// could not read).
    pub fn request_resync(&self) {
        self.resync.notify_one();
    }

    pub async fn resync_requested(&self) {
        self.resync.notified().await;
    }

    /// Relearns everything: dr-provision's machines and contexts now, then every
    /// engine's agents in the background. Run at start, after every reconnect (events
    /// may have been missed) and on resync. Only the event stream calls this, so
    /// dr-provision's listing and its events are applied in the order they happened.
    pub async fn full(self: &Arc<Self>) -> Result<(), String> {
        let began = Instant::now();
        let machines = self.plugin.drp.machines().await.map_err(|e| e.to_string())?;
        let contexts = self.plugin.drp.contexts().await.map_err(|e| e.to_string())?;
        let engines = self.plugin.registry.listed();
        let unlisted: Vec<String> = {
            let mut state = self.state();
            state.machines = machines.into_iter().map(|m| (m.uuid.clone(), m)).collect();
            state.contexts = contexts.into_iter().map(|c| (c.name.clone(), c)).collect();
            self.learned.send_replace(true);
            let listed: BTreeSet<&str> = engines.iter().map(|(key, _)| key.as_str()).collect();
            // Machines no engine listing will settle: none wanted, or an unknown engine
            // (which settling reports).
            let uuids: Vec<String> = state.machines.keys().cloned().collect();
            uuids.into_iter().filter(|uuid| !self.wanted_engine(&state, uuid).is_some_and(|e| listed.contains(e.as_str()))).collect()
        };
        crate::metrics::global().full_reconcile(began.elapsed());
        tracing::info!(machines = self.state().machines.len(), engines = engines.len(), "full reconcile");
        for uuid in unlisted {
            self.mark(uuid);
        }
        for (key, engine) in engines {
            self.relist(key, engine);
        }
        Ok(())
    }

    /// Lists the agents of `engine` (known by `key`, see [`crate::registry`]) in a task
    /// of its own and merges what it finds; a listing already under way for it is
    /// followed by one more.
    fn relist(self: &Arc<Self>, key: String, engine: Arc<dyn Engine>) {
        {
            let mut state = self.state();
            if let Some(again) = state.listing.get_mut(&key) {
                *again = true;
                return;
            }
            state.listing.insert(key.clone(), false);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.list_and_merge(&key, &engine).await;
                let mut state = this.state();
                match state.listing.get_mut(&key) {
                    Some(again) if *again => *again = false,
                    _ => {
                        state.listing.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    async fn list_and_merge(self: &Arc<Self>, key: &str, engine: &Arc<dyn Engine>) {
        let plugin_name = self.plugin.settings().plugin_name.clone();
        let since = self.state().clock;
        let filter = [(labels::PLUGIN, plugin_name.as_str()), (labels::ENGINE, engine.name())];
        let began = Instant::now();
        let listed = match tokio::time::timeout(LIST_BOUND, engine.agent_list(&filter)).await {
            Ok(Ok(found)) => {
                crate::metrics::global().engine_listed(engine.name(), began.elapsed());
                Ok(found)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                let cause = format!("listing did not finish within {}s", LIST_BOUND.as_secs());
                let hung = EngineError::Failed { engine: engine.name().to_string(), cause: cause.clone() };
                crate::metrics::global().engine_answered::<()>(engine.name(), &Err(hung));
                Err(cause)
            }
        };
        // Engines changed while it ran: the key now names another engine (or none), whose
        // own listing is the one to believe.
        if !self.plugin.registry.resolve(key).is_ok_and(|now| Arc::ptr_eq(&now, engine)) {
            tracing::debug!("a listing of engine '{key}' outlived its engine; ignored");
            return;
        }
        let touched = match listed {
            Ok(found) => {
                let touched = self.merge(key, since, &found);
                if self.plugin.registry.is_draining(key) && !self.state().actual.values().flatten().any(|a| a.engine == key) {
                    self.plugin.registry.retire(key, engine);
                }
                touched
            }
            Err(error) => {
                // Keep what we believed about an engine we could not ask, and settle its
                // machines anyway: each reports the runtime's own error.
                // Machines already backing off keep their own schedule: a runtime that is
                // down must not have every machine retried in step at each relist.
                let state = self.state();
                if self.engines_in_use(&state).contains(key) || registry::is_drain_key(key) {
                    tracing::warn!("cannot list agents of engine '{key}', which a context uses or which drains: {error}");
                } else {
                    tracing::debug!("engine '{key}' not listed (no context uses it): {error}");
                }
                let mut touched = self.machines_of_engine(&state, key);
                touched.retain(|uuid| !state.queue.failures().contains_key(uuid));
                touched
            }
        };
        for uuid in touched {
            self.mark(uuid);
        }
    }

    /// Folds the listing of the engine known by `key`, begun at `since`, into the actual
    /// state; returns the machines to settle: those that have or want an agent on it.
    ///
    /// An engine and a draining one may see the same container (a WASM engine shadowing
    /// the native engine of the same runtime): the container is the answering engine's,
    /// whichever listing comes first.
    fn merge(&self, key: &str, since: u64, found: &[AgentInfo]) -> BTreeSet<String> {
        let draining = registry::is_drain_key(key);
        let mut listed: HashMap<String, Vec<Agent>> = HashMap::new();
        for agent in found.iter().filter_map(Agent::from_labels).filter(|a| a.engine == registry::engine_name(key)) {
            listed.entry(agent.machine.clone()).or_default().push(Agent { engine: key.to_string(), ..agent });
        }
        let mut state = self.state();
        let mut touched = self.machines_of_engine(&state, key);
        touched.extend(listed.keys().cloned());
        for uuid in &touched {
            if state.recorded.get(&(uuid.clone(), key.to_string())).is_some_and(|at| *at > since) {
                continue;
            }
            let mut agents: Vec<Agent> = state.actual.remove(uuid).unwrap_or_default();
            agents.retain(|a| a.engine != key);
            let mut mine = listed.remove(uuid).unwrap_or_default();
            let same = |a: &Agent, b: &Agent| !a.id.is_empty() && a.id == b.id;
            if draining {
                mine.retain(|m| !agents.iter().any(|a| !registry::is_drain_key(&a.engine) && same(a, m)));
            } else {
                agents.retain(|a| !(registry::is_drain_key(&a.engine) && mine.iter().any(|m| same(a, m))));
            }
            agents.extend(mine);
            if !agents.is_empty() {
                state.actual.insert(uuid.clone(), agents);
            }
        }
        touched
    }

    /// Follows every engine's own event feed (native runtimes have one), so an agent
    /// removed behind the plugin's back is replaced within moments. Each feed reconnects
    /// with backoff and relists its engine whenever it (re)opens, since removals while it
    /// was closed are only in a listing.
    pub fn watch_runtimes(self: &Arc<Self>, shutdown: watch::Receiver<bool>) {
        for name in self.plugin.registry.names() {
            let this = Arc::clone(self);
            tokio::spawn(this.watch_runtime(name, shutdown.clone()));
        }
    }

    async fn watch_runtime(self: Arc<Self>, name: String, mut shutdown: watch::Receiver<bool>) {
        const FIRST: Duration = Duration::from_secs(1);
        const MAX: Duration = Duration::from_secs(30);
        let mut backoff = FIRST;
        loop {
            let Ok(engine) = self.plugin.registry.get(&name) else { return };
            let plugin_name = self.plugin.settings().plugin_name.clone();
            let filter = [(labels::PLUGIN, plugin_name.as_str()), (labels::ENGINE, name.as_str())];
            match engine.agent_events(&filter).await {
                // No feed (a WASM engine); the name may be a native engine's again later.
                Ok(None) => {}
                Ok(Some(mut feed)) => {
                    self.relist(name.clone(), Arc::clone(&engine));
                    // A reconfigure may put a new engine (another host) under this name.
                    let mut still_current = tokio::time::interval(Duration::from_secs(10));
                    loop {
                        tokio::select! {
                            item = feed.next() => match item {
                                Some(Ok(gone)) => {
                                    backoff = FIRST;
                                    self.on_agent_gone(&name, &gone);
                                }
                                Some(Err(e)) => {
                                    tracing::debug!("engine '{name}': {e}; reopening its event feed");
                                    break;
                                }
                                None => break,
                            },
                            _ = still_current.tick() => {
                                if self.plugin.registry.get(&name).map_or(true, |now| !Arc::ptr_eq(&now, &engine)) {
                                    break;
                                }
                            }
                            _ = shutdown.wait_for(|stop| *stop) => return,
                        }
                    }
                }
                Err(e) => tracing::debug!("engine '{name}': no event feed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            backoff = (backoff * 2).min(MAX);
        }
    }

    /// An agent was removed in the runtime. Whether or not we believed in it (our own
    /// stop may already have forgotten it; a listing under way may be about to add it),
    /// it is forgotten (unless it is a later container of the same name), no listing
    /// begun before now may bring it back, and its machine is settled, which starts a new
    /// agent if one is still wanted.
    fn on_agent_gone(self: &Arc<Self>, engine: &str, gone: &AgentGone) {
        let forgot = {
            let mut state = self.state();
            state.stamp(&gone.machine, engine);
            let agents = state.actual.entry(gone.machine.clone()).or_default();
            let before = agents.len();
            agents.retain(|a| !(a.engine == engine && a.name == gone.name && (a.id.is_empty() || a.id == gone.id)));
            let forgot = agents.len() != before;
            if agents.is_empty() {
                state.actual.remove(&gone.machine);
            }
            forgot
        };
        if forgot {
            tracing::info!(agent = %gone.name, engine, "agent removed in the runtime; settling its machine");
        }
        self.mark(gone.machine.clone());
    }

    /// Engines changed (see [`crate::registry::Registry::set_wasm`]): agents recorded
    /// under one engine key are now known by another, so they are stopped by the engine
    /// that started them.
    pub fn rekey(&self, rekeys: &[Rekey]) {
        let mut state = self.state();
        for Rekey { from, to } in rekeys {
            let mut moved = Vec::new();
            for agent in state.actual.values_mut().flatten().filter(|a| a.engine == *from) {
                agent.engine = to.clone();
                moved.push(agent.machine.clone());
            }
            for machine in moved {
                state.stamp(&machine, to);
            }
        }
    }

    /// Machines that want an agent on `engine` or are believed to have one there.
    fn machines_of_engine(&self, state: &State, engine: &str) -> BTreeSet<String> {
        let wanting = state.machines.keys().filter(|uuid| self.wanted_engine(state, uuid).as_deref() == Some(engine));
        let having = state.actual.iter().filter(|(_, agents)| agents.iter().any(|a| a.engine == engine)).map(|(uuid, _)| uuid);
        wanting.chain(having).cloned().collect()
    }

    /// The engine `uuid`'s Context asks for, if that Context is ours.
    fn wanted_engine(&self, state: &State, uuid: &str) -> Option<String> {
        let settings = self.plugin.settings();
        let context = state.contexts.get(&state.machines.get(uuid)?.context)?;
        (context.engine == settings.plugin_name).then(|| agents::engine_for(context, &settings.default_engine))
    }

    fn engines_in_use(&self, state: &State) -> BTreeSet<String> {
        let settings = self.plugin.settings();
        state
            .contexts
            .values()
            .filter(|c| c.engine == settings.plugin_name)
            .map(|c| agents::engine_for(c, &settings.default_engine))
            .collect()
    }

    /// Applies one event from dr-provision's bus and queues the machines it touches.
    pub fn on_event(self: &Arc<Self>, event: &Event) -> Result<(), String> {
        for uuid in self.apply(event)? {
            self.mark(uuid);
        }
        Ok(())
    }

    /// Updates the cached machines/contexts from one event; returns the machines whose
    /// desired state may have changed. No I/O.
    pub fn apply(&self, event: &Event) -> Result<BTreeSet<String>, String> {
        match (event.kind.as_str(), event.action.as_str()) {
            ("machines", "delete") => {
                self.state().machines.remove(&event.key);
                Ok(BTreeSet::from([event.key.clone()]))
            }
            ("machines", _) => {
                let machine: Machine = event.object()?;
                let uuid = if machine.uuid.is_empty() { event.key.clone() } else { machine.uuid.clone() };
                self.state().machines.insert(uuid.clone(), Machine { uuid: uuid.clone(), ..machine });
                Ok(BTreeSet::from([uuid]))
            }
            ("contexts", action) => {
                let name = event.key.clone();
                if action == "delete" {
                    self.state().contexts.remove(&name);
                } else {
                    let context: Context = event.object()?;
                    self.state().contexts.insert(name.clone(), Context { name: name.clone(), ..context });
                }
                Ok(self.machines_touching(&name))
            }
            _ => Ok(BTreeSet::new()),
        }
    }

    fn machines_touching(&self, context: &str) -> BTreeSet<String> {
        let state = self.state();
        let in_context = state.machines.values().filter(|m| m.context == context).map(|m| m.uuid.clone());
        let with_agents =
            state.actual.iter().filter(|(_, agents)| agents.iter().any(|a| a.context == context)).map(|(uuid, _)| uuid.clone());
        in_context.chain(with_agents).collect()
    }

    /// Queues `uuid` for settling; coalesces with work already queued or under way.
    pub fn mark(self: &Arc<Self>, uuid: String) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        if !self.state().queue.add(&uuid) {
            return;
        }
        self.busy.send_modify(|n| *n += 1);
        self.start_retry_timer();
        let this = Arc::clone(self);
        tokio::spawn(async move { this.work_on(uuid).await });
    }

    async fn work_on(self: Arc<Self>, uuid: String) {
        // An engine's listing (or its event feed) may come before dr-provision's.
        let _ = self.learned.subscribe().wait_for(|learned| *learned).await;
        loop {
            let permits = Arc::clone(&self.permits.lock().unwrap_or_else(|p| p.into_inner()));
            let permit = permits.acquire_owned().await;
            // Stopping: what has not begun is left for the next run's reconcile.
            if self.closed.load(Ordering::SeqCst) {
                break;
            }
            let outcome = match self.settle(&uuid).await {
                Ok(()) => Outcome::Done,
                Err((failure, permanent)) => {
                    if !permanent {
                        crate::metrics::global().retry_scheduled();
                    }
                    let attempts = self.state().queue.failures().get(&uuid).map_or(0, |f| f.attempts) + 1;
                    let next = if permanent { "parked until the machine changes" } else { "retrying with backoff" };
                    tracing::warn!("machine {uuid}: {failure} (attempt {attempts}; {next})");
                    Outcome::Failed { error: failure, permanent }
                }
            };
            drop(permit);
            let again = self.state().queue.done(&uuid, outcome, Instant::now());
            self.retry_changed.notify_one();
            if !again || self.closed.load(Ordering::SeqCst) {
                break;
            }
        }
        self.busy.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// The one timer behind every retry: sleeps until the queue's next due time and
    /// marks what is due. Holds the reconciler weakly, so it ends with it.
    fn start_retry_timer(self: &Arc<Self>) {
        if self.retry_timer.swap(true, Ordering::SeqCst) {
            return;
        }
        let this: Weak<Reconciler> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(r) = this.upgrade() else { return };
                let next = r.state().queue.next_due();
                let changed = r.retry_changed.notified();
                let wake = async {
                    match next {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                // Not holding `r` while asleep would be tidier, but the Notify lives in it.
                tokio::select! {
                    _ = wake => {}
                    _ = changed => continue,
                }
                let due = r.state().queue.due(Instant::now());
                for uuid in due {
                    r.mark(uuid);
                }
            }
        });
    }

    /// For a clean stop: begins nothing more (queued machines are left to the next
    /// run's reconcile) and waits up to `limit` for the settles under way (a start
    /// between its create and its start above all) to finish. What is still under way
    /// then is cancelled: a start removes what it created, a load or download is
    /// abandoned. Returns whether everything finished within `limit`.
    pub async fn drain(&self, limit: Duration) -> bool {
        self.closed.store(true, Ordering::SeqCst);
        // Workers still waiting to learn dr-provision's state go on to see `closed`.
        self.learned.send_replace(true);
        if tokio::time::timeout(limit, self.idle()).await.is_ok() {
            return true;
        }
        tracing::warn!("agent operations still under way after {} s; cancelling them", limit.as_secs());
        self.cancel.cancel();
        // Stops under way are let finish (each is bounded by its runtime's timeout);
        // undoing a start is bounded by UNDO_BOUND.
        if tokio::time::timeout(UNDO_BOUND + Duration::from_secs(1), self.idle()).await.is_err() {
            tracing::warn!("stopping with agent operations still under way; the next start settles them");
        }
        false
    }

    /// Resolves when no machine has work queued or under way.
    pub async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
    }

    pub async fn lock_machine(&self, uuid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.machine_locks.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(uuid.to_string()).or_default())
        };
        lock.lock_owned().await
    }

    /// What should run for `uuid`: `None`, or one agent in its Context.
    fn desired(&self, uuid: &str) -> Result<Option<(Agent, Context)>, AgentError> {
        let settings = self.plugin.settings();
        let state = self.state();
        let Some(machine) = state.machines.get(uuid) else { return Ok(None) };
        let Some(context) = state.contexts.get(&machine.context) else { return Ok(None) };
        if context.engine != settings.plugin_name {
            return Ok(None);
        }
        let engine = agents::engine_for(context, &settings.default_engine);
        Ok(Some((Agent::new(uuid, context, &engine)?, context.clone())))
    }

    /// What to do for one machine, from the cached desired and actual state. No I/O.
    ///
    /// A running agent that is the wanted one is kept (a manual one is adopted as it).
    /// A manual agent is kept while its machine exists, unless the machine's Context is
    /// now the agent's own Context, whose wanted agent replaces it. Everything else,
    /// dead containers included, is stopped.
    pub fn decide(&self, uuid: &str) -> Result<Decision, AgentError> {
        let desired = self.desired(uuid)?;
        let (actual, machine_exists) = {
            let state = self.state();
            (state.actual.get(uuid).cloned().unwrap_or_default(), state.machines.contains_key(uuid))
        };
        let mut decision = Decision::default();
        let mut keep = false;
        for agent in actual {
            let wanted = desired.as_ref().map(|(want, _)| want);
            if !keep && agent.running && wanted.is_some_and(|want| self.serves(want, &agent)) {
                keep = true;
                if let Some((want, context)) = &desired {
                    decision.keep = Some((agent.clone(), want.clone(), context.clone()));
                }
                if agent.manual {
                    decision.adopt = Some(agent);
                }
            } else if agent.manual && agent.running && machine_exists && wanted.is_none_or(|want| want.context != agent.context) {
                // Kept: an operator started it by hand.
            } else {
                decision.stop.push(agent);
            }
        }
        decision.start = desired.filter(|_| !keep);
        Ok(decision)
    }

    /// Whether `agent` is the wanted agent `want`. An agent of a draining engine is, if
    /// nothing answers to its engine's name now: an engine file removed (or being
    /// replaced) does not take running agents down with it; only a successor does.
    fn serves(&self, want: &Agent, agent: &Agent) -> bool {
        if want.same_as(agent) {
            return true;
        }
        let orphan = registry::is_drain_key(&agent.engine)
            && registry::engine_name(&agent.engine) == want.engine
            && self.plugin.registry.get(&want.engine).is_err();
        orphan && want.same_as(&Agent { engine: want.engine.clone(), ..agent.clone() })
    }

    /// Makes the actual state of one machine match its desired state. An error says
    /// what failed and whether it is permanent (see [`AgentError::is_permanent`]).
    ///
    /// What a start needs that may be slow (the machine's token, an `Imagepull`
    /// download) is got first, without the machine's lock, so an `agentStop` meanwhile
    /// is not kept waiting; the decision is then taken afresh under the lock, and what
    /// was got counts only if the start is still the same. An image found missing is
    /// loaded between two turns of the lock, likewise.
    async fn settle(&self, uuid: &str) -> Result<(), (String, bool)> {
        let began = Instant::now();
        let failed = |f: AgentFailure| (f.to_string(), f.source.is_permanent());
        let decided = self.decide(uuid).map_err(|e| (e.to_string(), e.is_permanent()))?;
        // Dry run: the plan is what `agentStatus` shows and the event says; no runtime
        // is touched. Turning it off reconciles everything, which carries the plan out.
        if self.plugin.settings().dry_run {
            let (next, reason) = next_step(&decided);
            if next != "nothing" {
                tracing::info!(machine = uuid, next, "dry run: {reason}");
                self.plugin.publish("agent-planned", uuid, json!({"Machine": uuid, "Next": next, "Reason": reason})).await;
            }
            return Ok(());
        }
        // A kept agent whose options changed is replaced: the id says which container
        // the replacement was decided for, should the machine change meanwhile.
        // Options that cannot be read fail the settle at its end: the stops still happen.
        let (outdated, unchecked) = match &decided.keep {
            Some((running, want, context)) => match self.outdated(running, want, context).await {
                Ok(outdated) => (outdated, None),
                Err(failure) => (None, Some(failed(failure))),
            },
            None => (None, None),
        };
        let planned = decided.start.or_else(|| outdated.as_ref().and_then(|_| decided.keep.map(|(_, want, context)| (want, context))));
        // A failed preparation fails the start only: the stops below still happen.
        let mut prepared = match &planned {
            Some((agent, context)) => Some(self.prepare(agent, context).await.map_err(failed)),
            None => None,
        };
        let mut loaded = false;
        loop {
            let machine = self.lock_machine(uuid).await;
            let mut decision = self.decide(uuid).map_err(|e| (e.to_string(), e.is_permanent()))?;
            if let Some(agent) = &decision.adopt {
                self.record(&Agent { manual: false, ..agent.clone() }, true);
            }
            if let Some((running, want, context)) = decision.keep.take()
                && outdated.as_deref() == Some(running.id.as_str())
            {
                decision.stop.push(running);
                decision.start = Some((want, context));
            }
            for agent in &decision.stop {
                self.stop(agent).await.map_err(failed)?;
            }
            let Some((agent, context)) = &decision.start else { return unchecked.map_or(Ok(()), Err) };
            let still = planned.as_ref().is_some_and(|(a, c)| a.same_as(agent) && c == context);
            let ready = match prepared.take().filter(|_| still) {
                Some(ready) => ready?,
                // The plan changed while it was prepared (rare): prepared again, here.
                None => self.prepare(agent, context).await.map_err(failed)?,
            };
            match self.launch(agent, &ready, began).await {
                Ok(_) => return Ok(()),
                Err(source) if !loaded && agents::needs_image(&source) => {
                    drop(machine);
                    self.load_image(agent, context).await.map_err(failed)?;
                    loaded = true;
                    prepared = Some(Ok(ready));
                }
                Err(source) => return Err(failed(self.failure(Step::Start, agent, source).await)),
            }
        }
    }

    /// The id of `running` when its spec is no longer the wanted one (its options
    /// changed in some layer): it is then replaced. A manual agent is the operator's and
    /// kept as it is; one started before specs were digested carries none and is kept,
    /// so upgrading the plugin restarts nothing. Options that became unusable fail the
    /// settle and leave the running agent alone.
    async fn outdated(&self, running: &Agent, want: &Agent, context: &Context) -> Result<Option<String>, AgentFailure> {
        if running.manual || running.spec.is_empty() {
            return Ok(None);
        }
        let options = match agents::options_for(&self.plugin, want, context).await {
            Ok(options) => options,
            Err(source) => return Err(self.failure(Step::Options, want, source).await),
        };
        let wanted = agents::wanted_digest(&self.plugin, want, &options);
        if wanted == running.spec {
            return Ok(None);
        }
        tracing::info!(agent = %running.name, from = %running.spec, to = %wanted, "agent options changed; replacing the agent");
        Ok(Some(running.id.clone()))
    }

    /// Starts `agent` now, for the `agentStart` action: as a settle does, holding the
    /// machine's lock only for the runtime's own create and start.
    pub async fn start_now(&self, agent: &Agent, context: &Context) -> Result<AgentInfo, AgentFailure> {
        let began = Instant::now();
        let ready = self.prepare(agent, context).await?;
        let mut loaded = false;
        loop {
            let machine = self.lock_machine(&agent.machine).await;
            match self.launch(agent, &ready, began).await {
                Ok(info) => return Ok(info),
                Err(source) if !loaded && agents::needs_image(&source) => {
                    drop(machine);
                    self.load_image(agent, context).await?;
                    loaded = true;
                }
                Err(source) => return Err(self.failure(Step::Start, agent, source).await),
            }
        }
    }

    fn first_of_context(&self, agent: &Agent) -> bool {
        !self.state().actual.values().flatten().any(|a| a.context == agent.context && a.machine != agent.machine)
    }

    /// Gets what a start of `agent` needs (see [`agents::prepare`]), without any lock.
    async fn prepare(&self, agent: &Agent, context: &Context) -> Result<agents::Prepared, AgentFailure> {
        let prepared = async {
            let engine = self.plugin.registry.get(&agent.engine)?;
            self.unless_cancelled(agents::prepare(&self.plugin, &engine, agent, context, self.first_of_context(agent))).await
        };
        match prepared.await {
            Ok(prepared) => Ok(prepared),
            Err(source) => Err(self.failure(Step::Prepare, agent, source).await),
        }
    }

    /// Loads the image a start found missing, without any lock.
    async fn load_image(&self, agent: &Agent, context: &Context) -> Result<(), AgentFailure> {
        let loaded = async {
            let engine = self.plugin.registry.get(&agent.engine)?;
            self.unless_cancelled(agents::load_image(&self.plugin, &engine, agent, context, self.first_of_context(agent))).await
        };
        match loaded.await {
            Ok(()) => Ok(()),
            Err(source) => Err(self.failure(Step::ImageLoad, agent, source).await),
        }
    }

    /// The runtime's create and start of `agent`, recorded and published. Caller holds
    /// the machine lock. Cancelled by a stop that outlasted its drain, it removes what
    /// it may have created, so no created-but-never-started container is left.
    async fn launch(&self, agent: &Agent, ready: &agents::Prepared, began: Instant) -> Result<AgentInfo, AgentError> {
        let engine = self.plugin.registry.get(&agent.engine)?;
        let info = tokio::select! {
            started = agents::start(&self.plugin, &engine, agent, ready) => started?,
            _ = self.cancel.cancelled() => {
                self.undo_start(&engine, agent).await;
                return Err(AgentError::Cancelled);
            }
        };
        let spec = info.label(labels::SPEC).unwrap_or_default().to_string();
        self.record(&Agent { id: info.id.clone(), spec, ..agent.clone() }, true);
        crate::metrics::global().agent_started(registry::engine_name(&agent.engine), began.elapsed());
        tracing::info!(agent = %agent.name, engine = %agent.engine, image = %agent.image, manual = agent.manual, "agent running");
        self.plugin.publish("agent-started", &agent.name, agent_event(agent, None)).await;
        Ok(info)
    }

    /// Removes `agent` if a container of ours holds its name and does not run: created
    /// by the cut start. A running one is a whole agent (adopted, or started just
    /// before the cut) and is left for the next run to adopt; another plugin's is not
    /// ours to remove.
    async fn undo_start(&self, engine: &Arc<dyn Engine>, agent: &Agent) {
        let plugin_name = self.plugin.settings().plugin_name.clone();
        let undo = async {
            let ours = engine.agent_list(&[(labels::PLUGIN, plugin_name.as_str()), (labels::MACHINE, agent.machine.as_str())]).await?;
            if ours.iter().any(|a| a.name == agent.name && !a.running) {
                engine.agent_stop(&agent.name).await?;
                tracing::info!(agent = %agent.name, "a start cut short by the plugin's stop was undone");
            }
            Ok::<_, crate::engine::EngineError>(())
        };
        match tokio::time::timeout(UNDO_BOUND, undo).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(agent = %agent.name, "undoing a cancelled start: {e}; the next run's listing removes it"),
            Err(_) => tracing::warn!(agent = %agent.name, "undoing a cancelled start took too long; the next run's listing removes it"),
        }
    }

    async fn unless_cancelled<T>(&self, work: impl Future<Output = Result<T, AgentError>>) -> Result<T, AgentError> {
        tokio::select! {
            done = work => done,
            _ = self.cancel.cancelled() => Err(AgentError::Cancelled),
        }
    }

    /// A failed step of `agent`, published as `agent-failed`.
    async fn failure(&self, step: Step, agent: &Agent, source: AgentError) -> AgentFailure {
        let failure = AgentFailure::new(step, agent, source);
        self.plugin.publish("agent-failed", &agent.name, agent_event(agent, Some(&failure.to_string()))).await;
        failure
    }

    /// Stops `agent` and forgets it. Caller holds the machine lock.
    pub async fn stop(&self, agent: &Agent) -> Result<bool, AgentFailure> {
        let stopped = async { Ok::<_, AgentError>(self.plugin.registry.resolve(&agent.engine)?.agent_stop(&agent.name).await?) };
        let existed = stopped.await.map_err(|source| AgentFailure::new(Step::Stop, agent, source))?;
        self.record(agent, false);
        if existed {
            crate::metrics::global().agent_stopped(registry::engine_name(&agent.engine));
        }
        if existed && agent.running {
            tracing::info!(agent = %agent.name, engine = %agent.engine, "agent stopped");
            self.plugin.publish("agent-stopped", &agent.name, agent_event(agent, None)).await;
        } else if existed {
            tracing::info!(agent = %agent.name, engine = %agent.engine, "removed an agent that had exited");
        }
        Ok(existed)
    }

    /// Records what our own start or stop did to the agent (found by name and engine).
    fn record(&self, agent: &Agent, running: bool) {
        let mut state = self.state();
        state.stamp(&agent.machine, &agent.engine);
        let agents = state.actual.entry(agent.machine.clone()).or_default();
        agents.retain(|a| a.name != agent.name || a.engine != agent.engine);
        if running {
            agents.push(Agent { running: true, ..agent.clone() });
        }
        if agents.is_empty() {
            state.actual.remove(&agent.machine);
        }
    }

    /// Agents of a machine the reconciler knows of, for actions.
    pub fn agents_of(&self, uuid: &str) -> Vec<Agent> {
        self.state().actual.get(uuid).cloned().unwrap_or_default()
    }

    pub fn context(&self, name: &str) -> Option<Context> {
        self.state().contexts.get(name).cloned()
    }

    /// Counts for the metrics listener, read off the cached state. No I/O.
    pub fn census(&self) -> Census {
        let state = self.state();
        let mut census = Census { queued: state.queue.pending(), ..Census::default() };
        for uuid in state.machines.keys() {
            if let Some(engine) = self.wanted_engine(&state, uuid) {
                let context = state.machines[uuid].context.clone();
                *census.wanted.entry((context, engine)).or_default() += 1;
            }
        }
        for agent in state.actual.values().flatten() {
            let engine = registry::engine_name(&agent.engine).to_string();
            if agent.running {
                *census.running.entry((agent.context.clone(), engine.clone())).or_default() += 1;
            }
            census.engines.insert(engine);
        }
        census.engines.extend(self.engines_in_use(&state));
        for failure in state.queue.failures().values() {
            if failure.parked {
                census.parked += 1;
            } else if failure.next_try.is_some() {
                census.retrying += 1;
            }
        }
        census
    }

    /// A summary for the `agentStatus` action.
    pub fn summary(&self) -> Value {
        let state = self.state();
        let agents: Vec<&Agent> = state.actual.values().flatten().collect();
        let now = Instant::now();
        let mut failing: Vec<Value> = state
            .queue
            .failures()
            .iter()
            .map(|(machine, f)| {
                let next = f.next_try.map(|t| t.saturating_duration_since(now).as_secs_f64());
                json!({
                    "machine": machine,
                    "error": f.error,
                    "attempts": f.attempts,
                    "parked": f.parked,
                    "next_try_in_secs": next,
                })
            })
            .collect();
        failing.sort_by(|a, b| a["machine"].as_str().cmp(&b["machine"].as_str()));
        let mut summary = json!({
            "machines": state.machines.len(),
            "contexts": state.contexts.len(),
            "agents": agents,
            "pending": state.queue.pending(),
            "failing": failing,
            "dry_run": self.plugin.settings().dry_run,
        });
        drop(state);
        summary["plan"] = json!(self.plan());
        summary
    }

    /// Per machine with a wanted or an actual agent: the wanted agent, the agents
    /// believed to exist, and what its next settle does, with why. No I/O: a
    /// replacement for changed options is found by the settle itself (it reads the
    /// machine's params), so a kept agent reads "nothing" here until then.
    pub fn plan(&self) -> Vec<Value> {
        let (uuids, failures) = {
            let state = self.state();
            let mut uuids: BTreeSet<String> = state.machines.keys().cloned().collect();
            uuids.extend(state.actual.iter().filter(|(_, agents)| !agents.is_empty()).map(|(uuid, _)| uuid.clone()));
            let failures: HashMap<String, (String, bool)> =
                state.queue.failures().iter().map(|(uuid, f)| (uuid.clone(), (f.error.clone(), f.parked))).collect();
            (uuids, failures)
        };
        uuids
            .into_iter()
            .filter_map(|uuid| {
                let decision = self.decide(&uuid);
                // The wanted agent is the one to start, or the one kept running.
                let wanted = decision.as_ref().ok().and_then(|d| d.start.as_ref().map(|(a, _)| a).or(d.keep.as_ref().map(|(_, a, _)| a)));
                let actual = self.agents_of(&uuid);
                if wanted.is_none() && actual.is_empty() {
                    return None;
                }
                let (mut next, mut reason) = match &decision {
                    Ok(decision) => next_step(decision),
                    Err(e) => ("nothing", format!("no agent can be wanted: {e}")),
                };
                if let Some((error, parked)) = failures.get(&uuid) {
                    let then = format!("then: {next} ({reason})");
                    (next, reason) = if *parked {
                        ("wait for a change", format!("the last attempt failed for good: {error}; {then}"))
                    } else {
                        ("wait for retry", format!("the last attempt failed: {error}; {then}"))
                    };
                }
                Some(json!({
                    "machine": uuid,
                    "wanted": wanted.map(|a| json!({"name": a.name, "context": a.context, "engine": a.engine, "image": a.image})),
                    "actual": actual.iter().map(|a| json!({"name": a.name, "engine": a.engine, "running": a.running, "manual": a.manual})).collect::<Vec<_>>(),
                    "next": next,
                    "reason": reason,
                }))
            })
            .collect()
    }
}

/// What a settle does with `decision`, and why, in an operator's words.
fn next_step(decision: &Decision) -> (&'static str, String) {
    let names = |agents: &[Agent]| agents.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().join(", ");
    match (&decision.start, decision.stop.as_slice(), &decision.adopt) {
        (Some((want, context)), [], _) => {
            ("start", format!("Context '{}' wants agent {} on engine '{}' and none runs", context.name, want.name, want.engine))
        }
        (Some((want, _)), stop, _) => ("replace", format!("stop {} (not the wanted agent) and start {}", names(stop), want.name)),
        (None, [], Some(agent)) => ("adopt", format!("the manual agent {} is the one its Context now wants", agent.name)),
        (None, [], None) if decision.keep.is_some() => ("nothing", "the wanted agent runs".to_string()),
        (None, [], None) => ("nothing", "no agent is wanted and none of ours runs but manual ones".to_string()),
        (None, stop, _) => ("stop", format!("{} not wanted (machine gone, Context changed, or container dead)", names(stop))),
    }
}

fn agent_event(agent: &Agent, error: Option<&str>) -> Value {
    let mut object = json!({
        "Machine": agent.machine,
        "Context": agent.context,
        "Engine": agent.engine,
        "Name": agent.name,
        "Image": agent.image,
    });
    if let Some(error) = error {
        object["Error"] = Value::String(error.to_string());
    }
    object
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::drp::socket::DrpSocket;
    use crate::engine::{AgentSpec, EngineError, EngineInfo};
    use crate::environment::Environment;
    use crate::params::Settings;

    fn reconciler() -> Arc<Reconciler> {
        reconciler_with(None)
    }

    /// A reconciler whose `docker` engine is `engine` and whose dr-provision hands out
    /// fixed tokens.
    fn reconciler_with(engine: Option<Arc<MemEngine>>) -> Arc<Reconciler> {
        let env = Environment::default();
        let settings = Settings::from_params(&json!({}), &env).expect("defaults");
        let socket = DrpSocket::new(std::path::Path::new("/nonexistent.sock"));
        let mut plugin = Plugin::new(env, socket, settings, std::env::temp_dir()).expect("plugin");
        plugin.drp.fixed_token = Some("token".to_string());
        if let Some(engine) = engine {
            plugin.registry.insert_native(engine);
        }
        let r = Reconciler::new(Arc::new(plugin));
        // As if dr-provision had been listed (and found empty): events fill it in.
        r.learned.send_replace(true);
        r
    }

    /// An engine that keeps its agents in memory and can be made to fail or to hold a
    /// listing until released.
    #[derive(Default)]
    struct MemEngine {
        agents: Mutex<BTreeMap<String, AgentInfo>>,
        starts: std::sync::atomic::AtomicUsize,
        fail_starts: AtomicBool,
        /// Starts create their container and then never return, as a runtime that
        /// hangs between create and start.
        hang_after_create: AtomicBool,
        hold_listing: AtomicBool,
        listing_released: Notify,
        listing_started: Notify,
    }

    impl MemEngine {
        fn starts(&self) -> usize {
            self.starts.load(Ordering::SeqCst)
        }
        fn names(&self) -> Vec<String> {
            self.agents.lock().expect("agents").keys().cloned().collect()
        }
    }

    #[async_trait::async_trait]
    impl Engine for MemEngine {
        fn name(&self) -> &str {
            "docker"
        }
        fn kind(&self) -> &'static str {
            "test/memory"
        }
        async fn info(&self) -> Result<EngineInfo, EngineError> {
            Ok(EngineInfo { name: "docker".into(), kind: "test/memory", version: "0".into() })
        }
        async fn image_id(&self, _: &str) -> Result<Option<String>, EngineError> {
            Ok(Some("sha256:0".into()))
        }
        async fn image_load(&self, _: &str, _: crate::engine::ArchiveStream) -> Result<(), EngineError> {
            Ok(())
        }
        async fn image_tag(&self, _: &str, _: &str) -> Result<(), EngineError> {
            Ok(())
        }
        async fn image_remove(&self, _: &str) -> Result<bool, EngineError> {
            Ok(false)
        }
        async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            if self.fail_starts.load(Ordering::SeqCst) {
                return Err(EngineError::Failed { engine: "docker".into(), cause: "runtime says no".into() });
            }
            let hang = self.hang_after_create.load(Ordering::SeqCst);
            let info = AgentInfo { name: spec.name.clone(), id: spec.name.clone(), running: !hang, labels: spec.labels().clone() };
            self.agents.lock().expect("agents").insert(spec.name.clone(), info.clone());
            if hang {
                std::future::pending::<()>().await;
            }
            Ok(info)
        }
        async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
            Ok(self.agents.lock().expect("agents").remove(name).is_some())
        }
        async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
            let found: Vec<AgentInfo> = self
                .agents
                .lock()
                .expect("agents")
                .values()
                .filter(|a| labels.iter().all(|(k, v)| a.label(k) == Some(*v)))
                .cloned()
                .collect();
            // The listing is taken now and answered later, as a slow runtime does.
            if self.hold_listing.load(Ordering::SeqCst) {
                self.listing_started.notify_one();
                self.listing_released.notified().await;
            }
            Ok(found)
        }
    }

    fn running(r: &Reconciler) -> Vec<String> {
        let mut names: Vec<String> = r.state().actual.values().flatten().map(|a| a.name.clone()).collect();
        names.sort();
        names
    }

    fn event(kind: &str, action: &str, key: &str, object: Value) -> Event {
        serde_json::from_value(json!({"Type": kind, "Action": action, "Key": key, "Object": object})).expect("event")
    }

    fn context(name: &str, engine: &str, image: &str) -> Value {
        json!({"Name": name, "Engine": engine, "Image": image, "Meta": {}})
    }

    #[test]
    fn a_machine_in_our_context_gets_one_agent_and_others_none() {
        let r = reconciler();
        r.apply(&event("contexts", "create", "ours", context("ours", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("contexts", "create", "theirs", context("theirs", "other-plugin", "img:1"))).expect("ctx");
        let touched = r.apply(&event("machines", "update", "m1", json!({"Uuid": "m1", "Context": "ours"}))).expect("m1");
        assert_eq!(touched, BTreeSet::from(["m1".to_string()]));
        let decision = r.decide("m1").expect("decide");
        let (agent, _) = decision.start.expect("an agent to start");
        assert_eq!((agent.name.as_str(), agent.engine.as_str(), agent.image.as_str()), ("drp-ours-m1", "docker", "img:1"));
        r.apply(&event("machines", "update", "m2", json!({"Uuid": "m2", "Context": "theirs"}))).expect("m2");
        assert_eq!(r.decide("m2").expect("decide"), Decision::default());
    }

    #[test]
    fn a_running_agent_is_kept_replaced_on_image_change_and_stopped_when_the_machine_goes() {
        let r = reconciler();
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        let (agent, _) = r.decide("m").expect("decide").start.expect("start");
        r.record(&agent, true);
        let kept = r.decide("m").expect("decide");
        assert!(kept.stop.is_empty() && kept.start.is_none(), "a matching agent is kept: {kept:?}");
        assert_eq!(kept.keep.map(|(running, _, _)| running), Some(agent.clone()));
        let touched = r.apply(&event("contexts", "update", "c", context("c", "context-engines", "img:2"))).expect("ctx");
        assert!(touched.contains("m"));
        let decision = r.decide("m").expect("decide");
        assert_eq!(decision.stop, vec![agent.clone()]);
        assert_eq!(decision.start.map(|(a, _)| a.image), Some("img:2".to_string()));
        r.apply(&event("machines", "delete", "m", Value::Null)).expect("delete");
        assert_eq!(r.decide("m").expect("decide").stop, vec![agent]);
    }

    #[test]
    fn the_plan_says_what_each_machine_gets_next_and_why() {
        let r = reconciler();
        let next = |r: &Reconciler, uuid: &str| {
            r.plan().into_iter().find(|p| p["machine"] == uuid).map(|p| p["next"].as_str().unwrap_or_default().to_string())
        };
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.apply(&event("machines", "create", "other", json!({"Uuid": "other", "Context": ""}))).expect("other");
        assert_eq!(next(&r, "m").as_deref(), Some("start"));
        assert_eq!(next(&r, "other"), None, "a machine with nothing wanted and nothing running is not in the plan");
        let (agent, _) = r.decide("m").expect("decide").start.expect("start");
        r.record(&agent, true);
        assert_eq!(next(&r, "m").as_deref(), Some("nothing"));
        r.apply(&event("contexts", "update", "c", context("c", "context-engines", "img:2"))).expect("ctx");
        assert_eq!(next(&r, "m").as_deref(), Some("replace"));
        r.apply(&event("machines", "delete", "m", Value::Null)).expect("delete");
        let plan = r.plan();
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!((plan[0]["next"].as_str(), plan[0]["wanted"].is_null()), (Some("stop"), true), "{plan:?}");
    }

    #[test]
    fn unreadable_objects_are_errors_not_guesses() {
        let r = reconciler();
        let err = r.apply(&event("machines", "update", "m", json!("not a machine"))).unwrap_err();
        assert!(err.contains("machines.update") && err.contains("'m'"), "{err}");
    }

    #[test]
    fn a_manual_agent_stays_while_its_machine_exists_and_is_adopted_by_its_context() {
        let r = reconciler();
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": ""}))).expect("m");
        let manual = Agent { manual: true, ..Agent::new("m", &r.context("c").expect("c"), "docker").expect("agent") };
        r.record(&manual, true);
        assert_eq!(r.decide("m").expect("decide"), Decision::default(), "kept outside its Context");
        r.apply(&event("machines", "update", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        let decision = r.decide("m").expect("decide");
        assert_eq!((decision.adopt, decision.start, decision.stop), (Some(manual.clone()), None, vec![]), "now the wanted one");
        r.apply(&event("contexts", "update", "c", context("c", "context-engines", "img:2"))).expect("ctx");
        let decision = r.decide("m").expect("decide");
        assert_eq!(decision.stop, vec![manual.clone()], "its Context wants another image: replaced");
        r.apply(&event("machines", "delete", "m", Value::Null)).expect("delete");
        assert_eq!(r.decide("m").expect("decide").stop, vec![manual], "gone with its machine");
    }

    #[test]
    fn a_listing_never_forgets_what_was_recorded_after_it_began_and_dead_agents_are_stopped() {
        let r = reconciler();
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        let (agent, _) = r.decide("m").expect("decide").start.expect("start");
        let since = r.state().clock;
        r.record(&agent, true);
        r.merge("docker", since, &[]);
        assert_eq!(running(&r), vec![agent.name.clone()], "recorded after the listing began: kept");
        let since = r.state().clock;
        r.merge("docker", since, &[]);
        assert!(running(&r).is_empty(), "a listing begun after the record is the truth");
        let dead = AgentInfo {
            name: agent.name.clone(),
            id: "x".into(),
            running: false,
            labels: BTreeMap::from([
                (labels::MACHINE.into(), "m".into()),
                (labels::CONTEXT.into(), "c".into()),
                (labels::ENGINE.into(), "docker".into()),
                (labels::IMAGE.into(), "img:1".into()),
            ]),
        };
        let touched = r.merge("docker", since, &[dead]);
        assert!(touched.contains("m"));
        let decision = r.decide("m").expect("decide");
        assert_eq!(decision.stop.iter().map(|a| a.running).collect::<Vec<_>>(), vec![false], "the dead one is removed");
        assert!(decision.start.is_some(), "and a live one started");
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_during_a_start_and_an_event_storm_never_duplicates_or_loses_the_agent() {
        let engine = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&engine)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        engine.hold_listing.store(true, Ordering::SeqCst);
        let listing_started = engine.listing_started.notified();
        r.relist("docker".to_string(), Arc::clone(&engine) as Arc<dyn Engine>);
        listing_started.await;
        // The listing saw no agent. Now the machine arrives, many times over.
        for _ in 0..50 {
            r.on_event(&event("machines", "update", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        }
        r.idle().await;
        assert_eq!(engine.starts(), 1, "an event storm starts one agent");
        engine.listing_released.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        r.idle().await;
        assert_eq!(running(&r), vec!["drp-c-m".to_string()], "the stale listing did not erase it");
        assert_eq!(engine.starts(), 1, "and nothing was started twice");
        assert_eq!(engine.names(), vec!["drp-c-m".to_string()]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_and_success_forgets_them() {
        let engine = Arc::new(MemEngine::default());
        engine.fail_starts.store(true, Ordering::SeqCst);
        let r = reconciler_with(Some(Arc::clone(&engine)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.on_event(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        assert_eq!(engine.starts(), 1);
        // Retries after ≤1 s, ≤2 s, ≤4 s, ≤8 s (each at least 80 % of that).
        let mut at = Vec::new();
        let begun = Instant::now();
        while engine.starts() < 5 {
            let before = engine.starts();
            tokio::time::sleep(Duration::from_millis(50)).await;
            if engine.starts() > before {
                at.push(begun.elapsed().as_secs_f64());
            }
        }
        let gaps: Vec<f64> = std::iter::once(at[0]).chain(at.windows(2).map(|w| w[1] - w[0])).collect();
        for (gap, want) in gaps.iter().zip([1.0, 2.0, 4.0, 8.0]) {
            assert!(*gap <= want + 0.1 && *gap >= want * 0.8 - 0.1, "gaps {gaps:?}");
        }
        let status = r.summary();
        assert_eq!(status["failing"][0]["attempts"], 5, "{status}");
        assert_eq!(status["failing"][0]["parked"], false);
        assert!(status["failing"][0]["error"].as_str().is_some_and(|e| e.contains("runtime says no")), "{status}");
        // The backoff tops out at a minute, and one success forgets the failures.
        engine.fail_starts.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(61)).await;
        r.idle().await;
        assert_eq!(running(&r), vec!["drp-c-m".to_string()]);
        assert_eq!(r.summary()["failing"], json!([]));
        let starts = engine.starts();
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(engine.starts(), starts, "no timer left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn changed_options_replace_the_agent_and_unusable_ones_leave_it_running() {
        let engine = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&engine)));
        let with_options = |options: &str| {
            let mut ctx = context("c", "context-engines", "img:1");
            ctx["Meta"] = json!({"agent-options": options});
            ctx
        };
        let spec_label = || engine.agents.lock().expect("agents").values().next().and_then(|a| a.label(labels::SPEC).map(str::to_string));
        r.on_event(&event("contexts", "create", "c", with_options(r#"{"memory": "64m"}"#))).expect("ctx");
        r.on_event(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        let first = spec_label();
        assert_eq!((engine.starts(), first.is_some()), (1, true));
        // The same options spelled otherwise, and a machine update: nothing to do.
        r.on_event(&event("contexts", "update", "c", with_options(r#"{"memory": 67108864}"#))).expect("same");
        r.on_event(&event("machines", "update", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        assert_eq!(engine.starts(), 1, "an unchanged spec was replaced");
        r.on_event(&event("contexts", "update", "c", with_options(r#"{"memory": "128m"}"#))).expect("changed");
        r.idle().await;
        assert_eq!(engine.starts(), 2, "changed options did not replace the agent");
        assert_ne!(spec_label(), first);
        assert_eq!(running(&r), vec!["drp-c-m".to_string()]);
        r.on_event(&event("contexts", "update", "c", with_options("{not json"))).expect("bad");
        r.idle().await;
        assert_eq!((engine.starts(), engine.names()), (2, vec!["drp-c-m".to_string()]), "unusable options took the agent down");
        let status = r.summary();
        assert!(
            status["failing"][0]["error"].as_str().is_some_and(|e| e.contains("the Context 'c'") && e.contains("not valid JSON")),
            "{status}"
        );
        assert_eq!(status["failing"][0]["parked"], true);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_parked_until_the_next_event() {
        let engine = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&engine)));
        let mut ctx = context("c", "context-engines", "img:1");
        ctx["Meta"] = json!({"context-engine": "nonesuch"});
        r.apply(&event("contexts", "create", "c", ctx)).expect("ctx");
        r.on_event(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        tokio::time::sleep(Duration::from_secs(3600)).await;
        r.idle().await;
        let status = r.summary();
        assert_eq!((status["failing"][0]["attempts"].clone(), status["failing"][0]["parked"].clone()), (json!(1), json!(true)), "{status}");
        assert!(status["failing"][0]["error"].as_str().is_some_and(|e| e.contains("nonesuch")), "{status}");
        r.apply(&event("contexts", "update", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.on_event(&event("machines", "update", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        assert_eq!(engine.starts(), 1);
        assert_eq!(r.summary()["failing"], json!([]));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_settled_before_dr_provision_was_listed() {
        let engine = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&engine)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.mark("m".to_string());
        r.idle().await;
        assert_eq!(engine.names(), vec!["drp-c-m".to_string()]);
        // A restarted plugin: the engine's listing (its event feed opening) comes first.
        let r = reconciler_with(Some(Arc::clone(&engine)));
        r.learned.send_replace(false);
        r.relist("docker".to_string(), Arc::clone(&engine) as Arc<dyn Engine>);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(running(&r), vec!["drp-c-m".to_string()], "listed");
        assert_eq!(engine.names(), vec!["drp-c-m".to_string()], "not stopped as unwanted while nothing is known");
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.apply(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.learned.send_replace(true);
        r.idle().await;
        assert_eq!((engine.names(), engine.starts()), (vec!["drp-c-m".to_string()], 1), "kept, not restarted");
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_engine_stops_its_agents_and_new_starts_go_to_its_successor() {
        let old = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&old)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        for m in ["m1", "m2", "m3"] {
            r.on_event(&event("machines", "create", m, json!({"Uuid": m, "Context": "c"}))).expect(m);
        }
        r.idle().await;
        assert_eq!(old.names(), vec!["drp-c-m1", "drp-c-m2", "drp-c-m3"]);
        // Another engine now answers to "docker": the old one drains.
        let new = Arc::new(MemEngine::default());
        r.rekey(&r.plugin.registry.replace_native("docker", Some(Arc::clone(&new) as Arc<dyn Engine>)));
        let key = "docker@test/memory";
        assert!(r.plugin.registry.is_draining(key));
        let rows = r.plugin.registry.status().await;
        assert!(rows.iter().any(|row| row.name == key && row.state == "draining"), "{rows:?}");
        r.on_event(&event("machines", "update", "m1", json!({"Uuid": "m1", "Context": "c"}))).expect("m1");
        r.on_event(&event("machines", "update", "m2", json!({"Uuid": "m2", "Context": ""}))).expect("m2");
        r.idle().await;
        assert_eq!(new.names(), vec!["drp-c-m1"], "the wanted agent moved to the successor");
        assert_eq!(old.names(), vec!["drp-c-m3"], "the old engine stopped m1's and m2's; m3 was not touched yet");
        // A listing of the draining engine that still finds an agent keeps it draining.
        r.relist(key.to_string(), Arc::clone(&old) as Arc<dyn Engine>);
        tokio::time::sleep(Duration::from_millis(10)).await;
        r.idle().await;
        assert!(old.names().is_empty() && r.plugin.registry.is_draining(key), "m3 settled by its listing, engine still draining");
        assert_eq!(new.names(), vec!["drp-c-m1", "drp-c-m3"]);
        r.relist(key.to_string(), Arc::clone(&old) as Arc<dyn Engine>);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!r.plugin.registry.is_draining(key), "retired once a listing found none of its agents");
    }

    #[tokio::test(start_paused = true)]
    async fn an_engine_gone_without_successor_keeps_its_agents_until_their_machines_move() {
        let old = Arc::new(MemEngine::default());
        let r = reconciler_with(Some(Arc::clone(&old)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.on_event(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        r.rekey(&r.plugin.registry.replace_native("docker", None));
        r.on_event(&event("machines", "update", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        r.idle().await;
        assert_eq!((old.names(), r.summary()["failing"].clone()), (vec!["drp-c-m".to_string()], json!([])), "kept, no error");
        r.on_event(&event("machines", "update", "m", json!({"Uuid": "m", "Context": ""}))).expect("m");
        r.idle().await;
        assert!(old.names().is_empty(), "stopped by the engine that started it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_that_outlasts_its_drain_undoes_the_start_under_way() {
        let engine = Arc::new(MemEngine::default());
        engine.hang_after_create.store(true, Ordering::SeqCst);
        let r = reconciler_with(Some(Arc::clone(&engine)));
        r.apply(&event("contexts", "create", "c", context("c", "context-engines", "img:1"))).expect("ctx");
        r.on_event(&event("machines", "create", "m", json!({"Uuid": "m", "Context": "c"}))).expect("m");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(engine.names(), vec!["drp-c-m"], "created, never started");
        let begun = Instant::now();
        assert!(!r.drain(Duration::from_secs(10)).await, "the hung start did not finish");
        assert!(begun.elapsed() < Duration::from_secs(17), "drain took {:?}", begun.elapsed());
        assert!(engine.names().is_empty(), "the cancelled start removed what it created");
        r.idle().await;
        assert!(running(&r).is_empty());
    }
}
