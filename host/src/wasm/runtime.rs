//! The wasmtime side: one `wasmtime::Engine` for the process (with epoch interruption,
//! ticked by a background thread, for per-call deadlines), one linker holding WASI, WASI
//! HTTP and the `log` import, and components compiled once per content hash and cached
//! on disk so a restart does not recompile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};

use super::bindings::{Contract, EnginePre, v01, v02};
use super::state::GuestState;

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// What one call of a WASM engine may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub deadline: Duration,
    /// All linear memories of one instance together.
    pub memory_bytes: usize,
    /// Instances of one engine alive at once (in calls and idle).
    pub max_instances: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { deadline: Duration::from_secs(30), memory_bytes: 64 * 1024 * 1024, max_instances: 4 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {cause}")]
    Read { path: String, cause: String },
    #[error("{path} is not a WebAssembly component: {cause}")]
    NotAComponent { path: String, cause: String },
    #[error(
        "{path} implements no engine contract this host supports (context-engines:engine@0.1.0 or @0.2.0): the component exports {exports}"
    )]
    Unsupported { path: String, exports: String },
    #[error("{path} does not fit the world context-engines:engine/engine@{version}: {cause}; the component exports {exports}")]
    WrongWorld { path: String, version: &'static str, cause: String, exports: String },
}

/// A compiled, linked, pre-instantiated engine component.
pub struct Loaded {
    pub pre: EnginePre<GuestState>,
    pub component: Component,
    pub sha256: String,
    pub from_cache: bool,
    pub compile_time: Duration,
}

pub struct WasmRuntime {
    pub engine: wasmtime::Engine,
    linker: Linker<GuestState>,
    cache_dir: Option<PathBuf>,
}

impl WasmRuntime {
    /// `cache_dir`: where compiled code is kept (None: never cached).
    pub fn new(cache_dir: Option<PathBuf>) -> wasmtime::Result<Arc<WasmRuntime>> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let engine = wasmtime::Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        // Both contracts' `log`: an engine imports the one of its version.
        v01::context_engines::engine::log::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
        v02::context_engines::engine::log::add_to_linker::<_, HasSelf<GuestState>>(&mut linker, |state| state)?;
        let ticker = engine.weak();
        // A plain thread: it must tick even while every tokio worker runs guest code.
        std::thread::Builder::new().name("wasm-epoch".to_string()).spawn(move || {
            while let Some(engine) = ticker.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })?;
        Ok(Arc::new(WasmRuntime { engine, linker, cache_dir }))
    }

    /// Compiles (or loads from the cache) and links the component in `path`.
    pub fn load(&self, path: &Path) -> Result<Loaded, LoadError> {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| LoadError::Read { path: display.clone(), cause: e.to_string() })?;
        self.load_bytes(&display, &bytes)
    }

    pub fn load_bytes(&self, display: &str, bytes: &[u8]) -> Result<Loaded, LoadError> {
        self.load_hashed(display, bytes, hex::encode(Sha256::digest(bytes)))
    }

    /// `load_bytes` for bytes whose SHA-256 the caller already has (and checked).
    pub fn load_hashed(&self, display: &str, bytes: &[u8], sha256: String) -> Result<Loaded, LoadError> {
        let started = Instant::now();
        let (component, from_cache) = match self.cached(&sha256) {
            Some(component) => (component, true),
            None => {
                let component = Component::new(&self.engine, bytes)
                    .map_err(|e| LoadError::NotAComponent { path: display.to_string(), cause: not_a_component(bytes, &e) })?;
                self.store_in_cache(&sha256, &component);
                release_compiler_memory();
                (component, false)
            }
        };
        let compile_time = started.elapsed();
        let pre = self.link(display, &component)?;
        Ok(Loaded { pre, component, sha256, from_cache, compile_time })
    }

    /// Pre-instantiates `component` with the bindings of the contract it exports.
    fn link(&self, display: &str, component: &Component) -> Result<EnginePre<GuestState>, LoadError> {
        let exports = self.export_names(component);
        let contract =
            self.contract_of(component).ok_or_else(|| LoadError::Unsupported { path: display.to_string(), exports: exports.clone() })?;
        let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
            path: display.to_string(),
            version: contract.version(),
            cause: format!("{e:#}"),
            exports: exports.clone(),
        };
        let pre = self.linker.instantiate_pre(component).map_err(wrong)?;
        match contract {
            Contract::V0_1 => v01::EnginePre::new(pre).map(EnginePre::V0_1),
            Contract::V0_2 => v02::EnginePre::new(pre).map(EnginePre::V0_2),
        }
        .map_err(wrong)
    }

    /// The contract whose `lifecycle` the component exports, newest first.
    fn contract_of(&self, component: &Component) -> Option<Contract> {
        let ty = component.component_type();
        let exported: Vec<String> = ty.exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        Contract::ALL.into_iter().find(|c| exported.contains(&c.lifecycle()))
    }

    /// What a component offers instead, which is what an engine author needs to see
    /// when it does not fit (often the package version it was built against).
    fn export_names(&self, component: &Component) -> String {
        let names: Vec<String> = component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        if names.is_empty() { "nothing".to_string() } else { names.join(", ") }
    }

    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.cache_dir.as_ref().map(|dir| dir.join(format!("{sha256}.cwasm")))
    }

    fn cached(&self, sha256: &str) -> Option<Component> {
        let path = self.cache_path(sha256)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file is one this process wrote with `Component::serialize` into its
        // private cache directory, named by the hash of the source; wasmtime itself
        // rejects artifacts of another wasmtime version or configuration, which we then
        // recompile.
        match unsafe { Component::deserialize_file(&self.engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::debug!("cached {} unusable ({e}); recompiling", path.display());
                None
            }
        }
    }

    fn store_in_cache(&self, sha256: &str, component: &Component) {
        let Some(path) = self.cache_path(sha256) else { return };
        let written = component.serialize().map_err(|e| e.to_string()).and_then(|bytes| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            }
            // Write then rename, so a concurrent reader never sees half a file.
            let partial = path.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, bytes).map_err(|e| e.to_string())?;
            std::fs::rename(&partial, &path).map_err(|e| e.to_string())
        });
        if let Err(e) = written {
            tracing::warn!("could not cache compiled engine in {}: {e}", path.display());
        }
    }
}

/// Why `bytes` did not compile as a component, in an author's terms: wasmtime's own
/// message for a file that is no WebAssembly at all quotes byte arrays.
fn not_a_component(bytes: &[u8], error: &wasmtime::Error) -> String {
    const MAGIC: &[u8] = b"\0asm";
    if !bytes.starts_with(MAGIC) {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return format!("it is not WebAssembly at all (it begins with bytes {}, not 00 61 73 6d, \"\\0asm\")", head.join(" "));
    }
    // A core module (version 1) rather than a component (layer 1).
    if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
        return "it is a core WebAssembly module, not a component: build for wasm32-wasip2 (or run `wasm-tools component new`)".to_string();
    }
    format!("{error:#}")
}

/// Compiling a large component (a Python interpreter is tens of MiB of WebAssembly)
/// takes hundreds of MiB of compiler memory across the compile threads. Once it is
/// freed, glibc keeps it in its per-thread arenas, where the process's RSS still counts
/// it; hand it back to the system.
fn release_compiler_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only returns glibc's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
