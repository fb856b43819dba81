//! Where agents are reconciled: the desired state (machines in our Contexts) against the
//! actual state (agents the engines run, found by label), one machine at a time.
//!
//! Work is per machine and coalesced: an event marks its machine dirty; a machine already
//! being settled is settled once more afterwards with the newest state, so ten quick
//! updates cost at most two decisions. Different machines proceed in parallel up to
//! `max-parallel`. Actions on a machine take the same per-machine lock, so an action and
//! the reconciler never race on one machine.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use crate::agents::{self, Agent, AgentError};
use crate::drp::{Context, Machine};
use crate::engine::{AgentInfo, labels};
use crate::events::Event;
use crate::plugin::Plugin;

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// A start or stop that failed, saying which agent on which engine.
#[derive(Debug, thiserror::Error)]
#[error("{doing} agent {agent} on engine '{engine}': {source}")]
pub struct AgentFailure {
    doing: &'static str,
    agent: String,
    engine: String,
    #[source]
    pub source: AgentError,
}

impl AgentFailure {
    fn new(doing: &'static str, agent: &Agent, source: AgentError) -> AgentFailure {
        AgentFailure {
            doing,
            agent: agent.name.clone(),
            engine: agent.engine.clone(),
            source,
        }
    }
}

/// The outcome of comparing one machine's desired and actual agents.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    pub stop: Vec<Agent>,
    pub start: Option<(Agent, Context)>,
}

#[derive(Default)]
struct Work {
    running: bool,
    dirty: bool,
}

#[derive(Default)]
struct State {
    machines: HashMap<String, Machine>,
    contexts: HashMap<String, Context>,
    /// Agents believed to run, by machine. Rebuilt from the engines at every full
    /// reconcile; between those, kept current by our own starts and stops.
    actual: HashMap<String, Vec<Agent>>,
    work: HashMap<String, Work>,
    failures: HashMap<String, u32>,
}

pub struct Reconciler {
    plugin: Arc<Plugin>,
    state: Mutex<State>,
    machine_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    permits: Mutex<Arc<Semaphore>>,
    /// Number of machines with work queued or under way; 0 means converged.
    busy: watch::Sender<usize>,
    /// Full reconciles asked for outside the event stream. The stream runs them between
    /// two frames, so a listing never overwrites an event applied after it was taken.
    resync: tokio::sync::Notify,
}

impl Reconciler {
    pub fn new(plugin: Arc<Plugin>) -> Arc<Reconciler> {
        let permits = Arc::new(Semaphore::new(plugin.settings().max_parallel));
        Arc::new(Reconciler {
            plugin,
            state: Mutex::new(State::default()),
            machine_locks: Mutex::new(HashMap::new()),
            permits: Mutex::new(permits),
            busy: watch::channel(0).0,
            resync: tokio::sync::Notify::new(),
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

    /// Lists everything afresh and settles every machine: at start and after every
    /// reconnect, since events may have been missed. Only the event stream calls this,
    /// so listings and events are applied in the order they happened.
    pub async fn full(self: &Arc<Self>) -> Result<(), String> {
        let machines = self.plugin.drp.machines().await.map_err(|e| e.to_string())?;
        let contexts = self.plugin.drp.contexts().await.map_err(|e| e.to_string())?;
        let plugin_name = self.plugin.settings().plugin_name.clone();
        let mut actual: HashMap<String, Vec<Agent>> = HashMap::new();
        let mut unlisted = Vec::new();
        for engine in self.plugin.registry.all() {
            let filter = [(labels::PLUGIN, plugin_name.as_str()), (labels::ENGINE, engine.name())];
            match engine.agent_list(&filter).await {
                Ok(found) => {
                    for info in found {
                        let Some(agent) = Agent::from_labels(&info) else { continue };
                        if info.running {
                            actual.entry(agent.machine.clone()).or_default().push(agent);
                        } else {
                            // An agent that exited and was not restarted by its policy is
                            // removed; settling starts a fresh one if it is still wanted.
                            if let Err(e) = engine.agent_stop(&info.name).await {
                                tracing::warn!("removing dead agent {}: {e}", info.name);
                            }
                        }
                    }
                }
                Err(e) => unlisted.push((engine.name().to_string(), e.to_string())),
            }
        }
        let mut to_settle: BTreeSet<String> = machines.iter().map(|m| m.uuid.clone()).collect();
        {
            let mut state = self.state();
            for (engine, _) in &unlisted {
                // Keep what we believed about an engine we could not ask.
                for (machine, agents) in &state.actual {
                    for agent in agents.iter().filter(|a| &a.engine == engine) {
                        actual.entry(machine.clone()).or_default().push(agent.clone());
                    }
                }
            }
            state.machines = machines.into_iter().map(|m| (m.uuid.clone(), m)).collect();
            state.contexts = contexts.into_iter().map(|c| (c.name.clone(), c)).collect();
            to_settle.extend(actual.keys().cloned());
            state.actual = actual;
        }
        for (engine, error) in unlisted {
            let in_use = self.engines_in_use().contains(&engine);
            if in_use {
                tracing::warn!("cannot list agents of engine '{engine}', which a context uses: {error}");
            } else {
                tracing::debug!("engine '{engine}' not listed (no context uses it): {error}");
            }
        }
        tracing::info!(machines = to_settle.len(), "full reconcile");
        for uuid in to_settle {
            self.mark(uuid);
        }
        Ok(())
    }

    fn engines_in_use(&self) -> BTreeSet<String> {
        let settings = self.plugin.settings();
        self.state()
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
        let with_agents = state
            .actual
            .iter()
            .filter(|(_, agents)| agents.iter().any(|a| a.context == context))
            .map(|(uuid, _)| uuid.clone());
        in_context.chain(with_agents).collect()
    }

    /// Queues `uuid` for settling; coalesces with work already queued or under way.
    pub fn mark(self: &Arc<Self>, uuid: String) {
        {
            let mut state = self.state();
            let work = state.work.entry(uuid.clone()).or_default();
            if work.running {
                work.dirty = true;
                return;
            }
            work.running = true;
            self.busy.send_modify(|n| *n += 1);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move { this.work_on(uuid).await });
    }

    async fn work_on(self: Arc<Self>, uuid: String) {
        loop {
            let permits = Arc::clone(&self.permits.lock().unwrap_or_else(|p| p.into_inner()));
            let permit = permits.acquire_owned().await;
            let result = self.settle(&uuid).await;
            drop(permit);
            self.after_settle(&uuid, result);
            let mut state = self.state();
            let Some(work) = state.work.get_mut(&uuid) else { break };
            if work.dirty {
                work.dirty = false;
                continue;
            }
            state.work.remove(&uuid);
            break;
        }
        self.busy.send_modify(|n| *n = n.saturating_sub(1));
    }

    fn after_settle(self: &Arc<Self>, uuid: &str, result: Result<(), String>) {
        let Err(error) = result else {
            self.state().failures.remove(uuid);
            return;
        };
        let attempt = {
            let mut state = self.state();
            let attempt = state.failures.entry(uuid.to_string()).or_default();
            *attempt += 1;
            *attempt
        };
        let delay = RETRY_FIRST
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)))
            .min(RETRY_MAX);
        tracing::warn!("machine {uuid}: {error} (attempt {attempt}; retrying in {}s)", delay.as_secs());
        let this = Arc::clone(self);
        let uuid = uuid.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            this.mark(uuid);
        });
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
    pub fn decide(&self, uuid: &str) -> Result<Decision, AgentError> {
        let desired = self.desired(uuid)?;
        let actual = self.state().actual.get(uuid).cloned().unwrap_or_default();
        let mut decision = Decision::default();
        let mut keep = false;
        for agent in actual {
            if !keep && desired.as_ref().is_some_and(|(want, _)| *want == agent) {
                keep = true;
            } else {
                decision.stop.push(agent);
            }
        }
        decision.start = desired.filter(|_| !keep);
        Ok(decision)
    }

    /// Makes the actual state of one machine match its desired state.
    async fn settle(&self, uuid: &str) -> Result<(), String> {
        let _machine = self.lock_machine(uuid).await;
        let decision = self.decide(uuid).map_err(|e| e.to_string())?;
        for agent in &decision.stop {
            self.stop(agent).await.map_err(|e| e.to_string())?;
        }
        if let Some((agent, context)) = &decision.start {
            self.start(agent, context).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts `agent` and records it; a failure is published as `agent-failed`. Caller
    /// holds the machine lock.
    pub async fn start(&self, agent: &Agent, context: &Context) -> Result<AgentInfo, AgentFailure> {
        let first_of_context = !self
            .state()
            .actual
            .values()
            .flatten()
            .any(|a| a.context == agent.context && a.machine != agent.machine);
        let started = async {
            let engine = self.plugin.registry.get(&agent.engine)?;
            agents::start(&self.plugin, engine, agent, context, first_of_context).await
        };
        match started.await {
            Ok(info) => {
                self.record(agent, true);
                tracing::info!(agent = %agent.name, engine = %agent.engine, image = %agent.image, "agent running");
                self.plugin.publish("agent-started", &agent.name, agent_event(agent, None)).await;
                Ok(info)
            }
            Err(source) => {
                let failure = AgentFailure::new("starting", agent, source);
                self.plugin.publish("agent-failed", &agent.name, agent_event(agent, Some(&failure.to_string()))).await;
                Err(failure)
            }
        }
    }

    /// Stops `agent` and forgets it. Caller holds the machine lock.
    pub async fn stop(&self, agent: &Agent) -> Result<bool, AgentFailure> {
        let stopped = async { Ok::<_, AgentError>(self.plugin.registry.get(&agent.engine)?.agent_stop(&agent.name).await?) };
        let existed = stopped.await.map_err(|source| AgentFailure::new("stopping", agent, source))?;
        self.record(agent, false);
        if existed {
            tracing::info!(agent = %agent.name, engine = %agent.engine, "agent stopped");
            self.plugin.publish("agent-stopped", &agent.name, agent_event(agent, None)).await;
        }
        Ok(existed)
    }

    fn record(&self, agent: &Agent, running: bool) {
        let mut state = self.state();
        let agents = state.actual.entry(agent.machine.clone()).or_default();
        agents.retain(|a| a.name != agent.name || a.engine != agent.engine);
        if running {
            agents.push(agent.clone());
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

    /// A summary for the `agentStatus` action.
    pub fn summary(&self) -> Value {
        let state = self.state();
        let agents: Vec<&Agent> = state.actual.values().flatten().collect();
        json!({
            "machines": state.machines.len(),
            "contexts": state.contexts.len(),
            "agents": agents,
            "pending": state.work.len(),
            "failing": state.failures.keys().collect::<Vec<_>>(),
        })
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
    use super::*;
    use crate::drp_socket::DrpSocket;
    use crate::environment::Environment;
    use crate::params::Settings;

    fn reconciler() -> Arc<Reconciler> {
        let env = Environment::default();
        let settings = Settings::from_params(&json!({}), &env).expect("defaults");
        let socket = DrpSocket::new(std::path::Path::new("/nonexistent.sock"));
        let plugin = Plugin::new(env, socket, settings, std::env::temp_dir()).expect("plugin");
        Reconciler::new(Arc::new(plugin))
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
        assert_eq!(r.decide("m").expect("decide"), Decision::default(), "a matching agent is kept");
        let touched = r.apply(&event("contexts", "update", "c", context("c", "context-engines", "img:2"))).expect("ctx");
        assert!(touched.contains("m"));
        let decision = r.decide("m").expect("decide");
        assert_eq!(decision.stop, vec![agent.clone()]);
        assert_eq!(decision.start.map(|(a, _)| a.image), Some("img:2".to_string()));
        r.apply(&event("machines", "delete", "m", Value::Null)).expect("delete");
        assert_eq!(r.decide("m").expect("decide").stop, vec![agent]);
    }

    #[test]
    fn unreadable_objects_are_errors_not_guesses() {
        let r = reconciler();
        let err = r.apply(&event("machines", "update", "m", json!("not a machine"))).unwrap_err();
        assert!(err.contains("machines.update") && err.contains("'m'"), "{err}");
    }
}
