//! The engines directory: every `<name>.wasm` in it is engine `<name>`. Scanned at the
//! first config and then every second; a file added, replaced or removed takes effect
//! without a restart. A file that fails to load is reported (log and `enginesList`) and
//! changes nothing else. A replaced engine's in-flight calls finish on the old version,
//! which lives as long as they hold it. A file `provenance` does not admit is refused
//! the same way, before it is compiled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use sha2::{Digest as _, Sha256};

use super::engine::WasmEngine;
use super::provenance;
use super::runtime::WasmRuntime;
use crate::controller::reconciler::Reconciler;
use crate::metrics::observed::Observed;
use crate::plugin::Plugin;
use crate::registry::Rekey;

const SCAN_EVERY: Duration = Duration::from_secs(1);

/// What identifies one version of a file cheaply; a change reloads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
}

enum Slot {
    Loaded(Arc<Observed<WasmEngine>>),
    Broken(String),
}

pub struct EngineDirectory {
    runtime: Arc<WasmRuntime>,
    known: Mutex<BTreeMap<String, (Fingerprint, Arc<Slot>)>>,
    /// The `engine-sha256` the known files were admitted under: another one judges
    /// every file again.
    admitted_under: Mutex<Option<BTreeMap<String, String>>>,
}

impl EngineDirectory {
    pub fn new(runtime: Arc<WasmRuntime>) -> EngineDirectory {
        EngineDirectory { runtime, known: Mutex::new(BTreeMap::new()), admitted_under: Mutex::new(None) }
    }

    /// Brings the registry in line with the directory. `None` when nothing changed;
    /// otherwise what agents already recorded are to be known by now.
    pub async fn scan(&self, plugin: &Plugin) -> Option<Vec<Rekey>> {
        let settings = plugin.settings();
        let present = match &settings.engines_dir {
            Some(dir) => list(dir),
            None => BTreeMap::new(),
        };
        let mut changed = false;
        let mut previous: BTreeMap<String, (Fingerprint, Arc<Slot>)> = self.known.lock().unwrap_or_else(|p| p.into_inner()).clone();
        {
            let mut admitted_under = self.admitted_under.lock().unwrap_or_else(|p| p.into_inner());
            if *admitted_under != settings.engine_sha256 {
                *admitted_under = settings.engine_sha256.clone();
                changed = !previous.is_empty();
                previous.clear();
            }
        }
        let mut next = BTreeMap::new();
        for (name, (path, fingerprint)) in present {
            if let Some((old, slot)) = previous.get(&name).filter(|(old, _)| *old == fingerprint) {
                next.insert(name, (old.clone(), Arc::clone(slot)));
                continue;
            }
            changed = true;
            let slot = self.load(plugin, &name, &path).await;
            next.insert(name, (fingerprint, Arc::new(slot)));
        }
        for name in previous.keys().filter(|n| !next.contains_key(*n)) {
            tracing::info!("engine '{name}' removed from the engines directory");
            changed = true;
        }
        if !changed {
            return None;
        }
        let mut engines = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for (name, (_, slot)) in &next {
            match slot.as_ref() {
                Slot::Loaded(engine) => {
                    engines.insert(name.clone(), Arc::clone(engine));
                }
                Slot::Broken(why) => {
                    broken.insert(name.clone(), why.clone());
                }
            }
        }
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = next;
        Some(plugin.registry.set_wasm(engines, broken))
    }

    async fn load(&self, plugin: &Plugin, name: &str, path: &Path) -> Slot {
        let bytes = match tokio::fs::read(path).await {
            Ok(bytes) => bytes,
            Err(e) => return Slot::Broken(format!("reading {}: {e}", path.display())),
        };
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let listed = plugin.settings().engine_sha256.clone();
        if let Err(why) = provenance::admit(name, &sha256, listed.as_ref(), plugin.registry.has_native(name)) {
            tracing::warn!("engine '{name}' not loaded: {why}");
            return Slot::Broken(why);
        }
        let runtime = Arc::clone(&self.runtime);
        let display = path.display().to_string();
        // Compiling is CPU-heavy: keep it off the async workers. The bytes compiled are
        // the bytes admitted: the file may change meanwhile.
        let loaded = tokio::task::spawn_blocking(move || runtime.load_hashed(&display, &bytes, sha256)).await;
        match loaded {
            Ok(Ok(loaded)) => {
                let settings = plugin.settings();
                tracing::info!(
                    "engine '{name}' loaded from {} (sha256 {}, {} in {} ms)",
                    path.display(),
                    &loaded.sha256[..12],
                    if loaded.from_cache { "from the compile cache" } else { "compiled" },
                    loaded.compile_time.as_millis()
                );
                let engine =
                    WasmEngine::new(name, Arc::clone(&self.runtime), loaded, &settings.engine_settings(name), settings.wasm_limits());
                Slot::Loaded(Arc::new(Observed::new(engine)))
            }
            Ok(Err(e)) => {
                tracing::warn!("engine '{name}' not loaded: {e}");
                Slot::Broken(e.to_string())
            }
            Err(e) => Slot::Broken(format!("loading panicked: {e}")),
        }
    }

    /// Rescans until shutdown; after a change, reconciles so contexts that were waiting
    /// for an engine get their agents.
    pub async fn watch(self: Arc<Self>, plugin: Arc<Plugin>, reconciler: Arc<Reconciler>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SCAN_EVERY) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Some(rekeys) = self.scan(&plugin).await {
                reconciler.rekey(&rekeys);
                reconciler.request_resync();
            }
        }
    }
}

/// `<name>.wasm` files with usable names, and their fingerprints.
pub(crate) fn list(dir: &Path) -> BTreeMap<String, (PathBuf, Fingerprint)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return BTreeMap::new() };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_stem()?.to_str()?.to_string();
            let is_wasm = path.extension().is_some_and(|x| x == "wasm");
            let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            let meta = std::fs::metadata(&path).ok().filter(|m| m.is_file())?;
            (is_wasm && valid).then(|| {
                let fingerprint = Fingerprint { len: meta.len(), modified: meta.modified().ok() };
                (name, (path, fingerprint))
            })
        })
        .collect()
}
