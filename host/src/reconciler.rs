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

    /// Applies one event from dr-provision's bus.
    pub fn on_event(self: &Arc<Self>, event: &Event) -> Result<(), String> {
        match (event.kind.as_str(), event.action.as_str()) {
            ("machines", "delete") => {
                self.state().machines.remove(&event.key);
                self.mark(event.key.clone());
            }
            ("machines", _) => {
                let machine: Machine = event.object()?;
                let uuid = if machine.uuid.is_empty() { event.key.clone() } else { machine.uuid.clone() };
                self.state().machines.insert(uuid.clone(), Machine { uuid: uuid.clone(), ..machine });
                self.mark(uuid);
            }
            ("contexts", action) => {
                let name = event.key.clone();
                if action == "delete" {
                    self.state().contexts.remove(&name);
                } else {
                    let context: Context = event.object()?;
                    self.state().contexts.insert(name.clone(), Context { name: name.clone(), ..context });
                }
                for uuid in self.machines_touching(&name) {
                    self.mark(uuid);
                }
            }
            _ => {}
        }
        Ok(())
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

    /// Makes the actual state of one machine match its desired state.
    async fn settle(&self, uuid: &str) -> Result<(), String> {
        let _machine = self.lock_machine(uuid).await;
        let desired = self.desired(uuid).map_err(|e| e.to_string())?;
        let actual = self.state().actual.get(uuid).cloned().unwrap_or_default();
        let mut keep = false;
        for agent in actual {
            if desired.as_ref().is_some_and(|(want, _)| *want == agent) && !keep {
                keep = true;
                continue;
            }
            self.stop(&agent).await?;
        }
        match desired {
            Some((want, context)) if !keep => self.start(&want, &context).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Starts `agent` and records it. Caller holds the machine lock.
    pub async fn start(&self, agent: &Agent, context: &Context) -> Result<AgentInfo, String> {
        let engine = self.plugin.registry.get(&agent.engine).map_err(|e| e.to_string())?;
        let first_of_context = !self
            .state()
            .actual
            .values()
            .flatten()
            .any(|a| a.context == agent.context && a.machine != agent.machine);
        match agents::start(&self.plugin, engine, agent, context, first_of_context).await {
            Ok(info) => {
                self.record(agent, true);
                tracing::info!(agent = %agent.name, engine = %agent.engine, image = %agent.image, "agent running");
                self.plugin.publish("agent-started", &agent.name, agent_event(agent, None)).await;
                Ok(info)
            }
            Err(e) => {
                let error = format!("starting agent {} on engine '{}': {e}", agent.name, agent.engine);
                self.plugin.publish("agent-failed", &agent.name, agent_event(agent, Some(&error))).await;
                Err(error)
            }
        }
    }

    /// Stops `agent` and forgets it. Caller holds the machine lock.
    pub async fn stop(&self, agent: &Agent) -> Result<bool, String> {
        let engine = self.plugin.registry.get(&agent.engine).map_err(|e| e.to_string())?;
        let existed = engine
            .agent_stop(&agent.name)
            .await
            .map_err(|e| format!("stopping agent {} on engine '{}': {e}", agent.name, agent.engine))?;
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
