//! The engine registry: which engine answers to which name. Native engines are always
//! there; WASM engines from the engines directory take precedence over a native engine
//! of the same name.
//!
//! An engine that stops answering to its name (its file removed, or shadowed by a WASM
//! engine of the same name) is not forgotten while agents it started may run: it
//! *drains* under the key `name@kind`, still listed and still stopping its agents, until
//! a listing finds none of them. New starts go to whatever answers to the name now.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::Engine;
use crate::engines::runtime_api::{Flavor, RuntimeApiEngine};
use crate::engines::swarm::{self, SwarmEngine};
use crate::metrics::observed::Observed;
use crate::params::Settings;
use crate::wasm::WasmEngine;

#[derive(Debug, thiserror::Error)]
#[error("unknown engine '{name}'{reason}; engines available: {known}")]
pub struct UnknownEngine {
    pub name: String,
    /// Why a file of that name did not load, when one exists.
    pub reason: String,
    pub known: String,
}

/// One row of `enginesList`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    pub name: String,
    pub kind: String,
    pub version: String,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Native {
    engine: Arc<dyn Engine>,
    settings: Map<String, Value>,
}

#[derive(Default)]
pub struct Registry {
    native: RwLock<BTreeMap<String, Native>>,
    wasm: RwLock<BTreeMap<String, Arc<Observed<WasmEngine>>>>,
    /// Engine files that failed to load, with the reason: shown, never fatal.
    broken: RwLock<BTreeMap<String, String>>,
    /// Engines that no longer answer to their name, by drain key (see the module docs).
    draining: RwLock<BTreeMap<String, Arc<dyn Engine>>>,
}

/// Agents once known by engine key `from` are now to be known by `to`: what a change of
/// engines means for the agents already recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rekey {
    pub from: String,
    pub to: String,
}

/// The key of an engine that drains: its name and where it came from.
pub fn drain_key(name: &str, kind: &str) -> String {
    format!("{name}@{kind}")
}

fn drain(draining: &mut BTreeMap<String, Arc<dyn Engine>>, name: &str, engine: Arc<dyn Engine>) -> Rekey {
    let key = drain_key(name, engine.kind());
    tracing::info!("engine '{name}' ({}) no longer answers to its name; it drains as '{key}'", engine.kind());
    draining.insert(key.clone(), engine);
    Rekey { from: name.to_string(), to: key }
}

fn revive(draining: &mut BTreeMap<String, Arc<dyn Engine>>, name: &str, kind: &str) -> Option<Rekey> {
    let key = drain_key(name, kind);
    draining.remove(&key).map(|_| Rekey { from: key, to: name.to_string() })
}

pub fn is_drain_key(key: &str) -> bool {
    key.contains('@')
}

/// The engine name in an engine key (engine names cannot hold `@`).
pub fn engine_name(key: &str) -> &str {
    key.split('@').next().unwrap_or(key)
}

const NATIVE: &[(&str, Flavor)] = &[("docker", Flavor::Docker), ("podman", Flavor::Podman)];

impl Registry {
    /// (Re)builds native engines whose `engine-config` changed; unchanged ones keep
    /// their connection.
    pub fn configure(&self, settings: &Settings) {
        let mut native = self.native.write().unwrap_or_else(|p| p.into_inner());
        for (name, flavor) in NATIVE {
            let wanted = settings.engine_settings(name);
            if native.get(*name).is_some_and(|n| n.settings == wanted) {
                continue;
            }
            let host = wanted.get("host").and_then(Value::as_str);
            // Settings were checked when the config was accepted.
            let timeout = crate::params::request_timeout(name, &wanted).ok().flatten();
            let engine: Arc<dyn Engine> = Arc::new(Observed::new(RuntimeApiEngine::new(name, *flavor, host, timeout)));
            native.insert(name.to_string(), Native { engine, settings: wanted });
        }
        // The swarm engine exists once it is configured (it has no default manager a
        // plain Docker host would answer as). Settings were checked when the config was
        // accepted; a config without it keeps the engine last configured, whose agents
        // live in the cluster either way.
        if let Some(wanted) = settings.engine_config.get(swarm::NAME)
            && native.get(swarm::NAME).is_none_or(|n| &n.settings != wanted)
            && let Ok(engine) = SwarmEngine::new(swarm::NAME, wanted)
        {
            let engine: Arc<dyn Engine> = Arc::new(Observed::new(engine));
            native.insert(swarm::NAME.to_string(), Native { engine, settings: wanted.clone() });
        }
        drop(native);
        for (name, engine) in self.wasm.read().unwrap_or_else(|p| p.into_inner()).iter() {
            engine.reconfigure(&settings.engine_settings(name), settings.wasm_limits());
        }
    }

    pub fn get(&self, name: &str) -> Result<Arc<dyn Engine>, UnknownEngine> {
        if let Some(engine) = self.wasm.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(Arc::clone(engine) as Arc<dyn Engine>);
        }
        if let Some(native) = self.native.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(Arc::clone(&native.engine));
        }
        let mut reason = String::new();
        if let Some(why) = self.broken.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            reason = format!(" (its file failed to load: {why})");
        }
        Err(UnknownEngine { name: name.to_string(), reason, known: self.names().join(", ") })
    }

    /// Every engine that answers to a name, WASM first where both exist.
    pub fn all(&self) -> Vec<Arc<dyn Engine>> {
        self.names().iter().filter_map(|n| self.get(n).ok()).collect()
    }

    /// The engine an agent recorded under `key` belongs to: a draining engine by its
    /// drain key, any other by its name.
    pub fn resolve(&self, key: &str) -> Result<Arc<dyn Engine>, UnknownEngine> {
        // Not holding `draining` while `get` takes the other locks: `set_wasm` takes
        // them in another order.
        let draining = self.draining.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
        match draining {
            Some(engine) => Ok(engine),
            None => self.get(key),
        }
    }

    /// Every engine whose agents are to be listed, by key: those answering to a name,
    /// then those draining.
    pub fn listed(&self) -> Vec<(String, Arc<dyn Engine>)> {
        let mut listed: Vec<(String, Arc<dyn Engine>)> = self.all().into_iter().map(|e| (e.name().to_string(), e)).collect();
        let draining = self.draining.read().unwrap_or_else(|p| p.into_inner());
        listed.extend(draining.iter().map(|(key, engine)| (key.clone(), Arc::clone(engine))));
        listed
    }

    pub fn is_draining(&self, key: &str) -> bool {
        self.draining.read().unwrap_or_else(|p| p.into_inner()).contains_key(key)
    }

    /// Forgets a draining engine once a listing found none of its agents (and it is
    /// still the same engine under that key).
    pub fn retire(&self, key: &str, engine: &Arc<dyn Engine>) {
        let mut draining = self.draining.write().unwrap_or_else(|p| p.into_inner());
        if draining.get(key).is_some_and(|e| Arc::ptr_eq(e, engine)) {
            draining.remove(key);
            tracing::info!("engine '{key}' drained: none of its agents is left");
        }
    }

    pub fn has_native(&self, name: &str) -> bool {
        self.native.read().unwrap_or_else(|p| p.into_inner()).contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.native.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        names.extend(self.wasm.read().unwrap_or_else(|p| p.into_inner()).keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Puts `engine` in place of the native engine of its name: unit tests' in-memory
    /// engines.
    #[cfg(test)]
    pub fn insert_native(&self, engine: Arc<dyn Engine>) {
        let native = Native { engine: Arc::clone(&engine), settings: Map::new() };
        self.native.write().unwrap_or_else(|p| p.into_inner()).insert(engine.name().to_string(), native);
    }

    /// Puts the engines directory's engines in place. An engine whose name no longer
    /// answers with it (removed, or a WASM file now shadowing a native engine) drains;
    /// one that answers again (the file back, or the shadow gone) takes its agents back.
    /// A file replaced by a new version is the same engine. Returns what the agents
    /// already recorded are to be known by now, in order.
    /// Drains the native engine `name` and puts `successor` (if any) in its place: the
    /// unit tests' stand-in for a WASM file shadowing it or an engine going away.
    #[cfg(test)]
    pub fn replace_native(&self, name: &str, successor: Option<Arc<dyn Engine>>) -> Vec<Rekey> {
        let mut native = self.native.write().unwrap_or_else(|p| p.into_inner());
        let mut draining = self.draining.write().unwrap_or_else(|p| p.into_inner());
        let Some(old) = native.remove(name) else { return Vec::new() };
        let rekey = drain(&mut draining, name, old.engine);
        if let Some(engine) = successor {
            native.insert(name.to_string(), Native { engine, settings: Map::new() });
        }
        vec![rekey]
    }

    pub fn set_wasm(&self, engines: BTreeMap<String, Arc<Observed<WasmEngine>>>, broken: BTreeMap<String, String>) -> Vec<Rekey> {
        let native = self.native.read().unwrap_or_else(|p| p.into_inner());
        let mut wasm = self.wasm.write().unwrap_or_else(|p| p.into_inner());
        let mut draining = self.draining.write().unwrap_or_else(|p| p.into_inner());
        let mut rekeys = Vec::new();
        for (name, old) in wasm.iter().filter(|(name, _)| !engines.contains_key(*name)) {
            rekeys.push(drain(&mut draining, name, Arc::clone(old) as Arc<dyn Engine>));
            if let Some(n) = native.get(name) {
                rekeys.extend(revive(&mut draining, name, n.engine.kind()));
            }
        }
        for name in engines.keys().filter(|name| !wasm.contains_key(*name)) {
            if let Some(n) = native.get(name) {
                rekeys.push(drain(&mut draining, name, Arc::clone(&n.engine)));
            }
            rekeys.extend(revive(&mut draining, name, "wasm"));
        }
        *wasm = engines;
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = broken;
        rekeys
    }

    /// Status of every engine, asking each for its version (so a runtime that is down
    /// shows as such), then every draining engine and every engine file that failed to
    /// load.
    pub async fn status(&self) -> Vec<EngineStatus> {
        let mut rows = Vec::new();
        for engine in self.all() {
            let row = match engine.info().await {
                Ok(info) => EngineStatus {
                    name: info.name,
                    kind: info.kind.to_string(),
                    version: info.version,
                    state: "ready".to_string(),
                    error: None,
                },
                Err(e) => EngineStatus {
                    name: engine.name().to_string(),
                    kind: engine.kind().to_string(),
                    version: String::new(),
                    state: "unavailable".to_string(),
                    error: Some(e.to_string()),
                },
            };
            rows.push(row);
        }
        let draining: Vec<(String, Arc<dyn Engine>)> =
            self.draining.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, e)| (k.clone(), Arc::clone(e))).collect();
        for (key, engine) in draining {
            rows.push(EngineStatus {
                name: key,
                kind: engine.kind().to_string(),
                version: String::new(),
                state: "draining".to_string(),
                error: Some(format!("no longer answers to '{}'; kept until its agents are stopped", engine.name())),
            });
        }
        for (name, why) in self.broken.read().unwrap_or_else(|p| p.into_inner()).iter() {
            rows.push(EngineStatus {
                name: name.clone(),
                kind: "wasm".to_string(),
                version: String::new(),
                state: "failed".to_string(),
                error: Some(why.clone()),
            });
        }
        rows
    }
}
