//! The engine registry: which engine answers to which name. Native engines are always
//! there; WASM engines from the engines directory take precedence over a native engine
//! of the same name.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::Engine;
use crate::engines::runtime_api::{Flavor, RuntimeApiEngine};
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
    wasm: RwLock<BTreeMap<String, Arc<WasmEngine>>>,
    /// Engine files that failed to load, with the reason: shown, never fatal.
    broken: RwLock<BTreeMap<String, String>>,
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
            let engine: Arc<dyn Engine> = Arc::new(RuntimeApiEngine::new(name, *flavor, host, timeout));
            native.insert(name.to_string(), Native { engine, settings: wanted });
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

    pub fn set_wasm(&self, engines: BTreeMap<String, Arc<WasmEngine>>, broken: BTreeMap<String, String>) {
        *self.wasm.write().unwrap_or_else(|p| p.into_inner()) = engines;
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = broken;
    }

    /// Status of every engine, asking each for its version (so a runtime that is down
    /// shows as such) plus every engine file that failed to load.
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
