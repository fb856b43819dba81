//! `context-engines engines test`: the conformance kit. It runs, against one engine (a
//! WASM file with its `engine-config` entry, or a native engine) and that engine's real
//! runtime, every engine-level behaviour the contract asks for, and reports one line
//! per check. The test suite runs it on every engine we ship; an engine author runs it
//! on theirs and needs nothing else: the kit makes its own images (see [`archive`]).
//!
//! Everything it creates is named after the run (`conformance/…:<run>`,
//! `drp-conformance-<run>-…`) and removed at the end, passed or failed.

pub mod archive;
mod checks;

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::Engine;
use crate::engines::runtime_api::{Flavor, RuntimeApiEngine};
use crate::options::feature;
use crate::wasm::{Limits, WasmEngine, WasmRuntime};

pub use checks::Kit;

/// Checks come in groups, so an engine without a runtime (`null`) can be held to the
/// ones that apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `describe` and `configure`: the engine loads, names itself, accepts its settings.
    Describe,
    /// Image load (small, gzip, corrupt, large), tag, id, remove.
    Images,
    /// Agent start/keep/replace/list/logs/stop and their errors.
    Agents,
    /// WASM only: what an instance needs of the memory cap, and recovery after a call
    /// over it. (Deadlines are the host's to enforce; an engine meets them by answering.)
    Limits,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Describe, Group::Images, Group::Agents, Group::Limits];

    pub fn parse(word: &str) -> Result<Group, String> {
        Group::ALL.into_iter().find(|g| g.to_string() == word).ok_or_else(|| {
            let known: Vec<String> = Group::ALL.iter().map(Group::to_string).collect();
            format!("no check group '{word}' (known: {})", known.join(", "))
        })
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Group::Describe => "describe",
            Group::Images => "images",
            Group::Agents => "agents",
            Group::Limits => "limits",
        })
    }
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub groups: Vec<Group>,
    /// Size of the large archive in MiB; 0 leaves that check out (said so in the report).
    pub large_mb: u64,
    /// Network mode of the kit's agents.
    pub network: String,
}

impl Default for Options {
    fn default() -> Options {
        Options { groups: Group::ALL.to_vec(), large_mb: 1024, network: "host".to_string() }
    }
}

/// The engine under test: any engine, and the WASM engine itself when it is one (the
/// limits checks need its knobs).
pub struct Subject {
    pub engine: Arc<dyn Engine>,
    pub wasm: Option<Arc<WasmEngine>>,
    /// The features the engine declares (all, for a native engine).
    pub features: Vec<String>,
}

impl Subject {
    /// A native engine (`docker` or `podman`) with `config`, its `engine-config` entry.
    pub fn native(name: &str, config: &str) -> Result<Subject, String> {
        if name == "swarm" {
            // All of each family but what a swarm service has no setting for (memory-swap,
            // shm-size, devices, privileged, security-opt: refused by name).
            let engine = crate::engines::swarm::SwarmEngine::new(name, &settings(config)?)?;
            let features = [feature::MOUNTS, feature::RESOURCES, feature::SECURITY, feature::PROCESS, feature::LOGS];
            return Ok(Subject { engine: Arc::new(engine), wasm: None, features: features.map(str::to_string).to_vec() });
        }
        let flavor = match name {
            "docker" => Flavor::Docker,
            "podman" => Flavor::Podman,
            other => return Err(format!("no native engine '{other}' (native engines: docker, podman, swarm)")),
        };
        let settings = settings(config)?;
        let timeout = crate::params::request_timeout(name, &settings).map_err(|e| e.to_string())?;
        let host = settings.get("host").map(|h| h.as_str().ok_or_else(|| format!("`host` must be a string, not {h}"))).transpose()?;
        let engine: Arc<dyn Engine> = Arc::new(RuntimeApiEngine::new(name, flavor, host, timeout));
        let features =
            [feature::MOUNTS, feature::RESOURCES, feature::SECURITY, feature::PROCESS, feature::LOGS].map(str::to_string).to_vec();
        Ok(Subject { engine, wasm: None, features })
    }

    /// The WASM engine in `path` (named after the file, as the plugin names it) with
    /// `config`, loaded and limited as the plugin would.
    pub async fn wasm(path: &Path, config: &str, limits: Limits) -> Result<Subject, String> {
        let settings = settings(config)?;
        let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "engine".to_string());
        let runtime = WasmRuntime::new(None).map_err(|e| format!("starting the WebAssembly runtime: {e:#}"))?;
        let loaded = runtime.load(path).map_err(|e| e.to_string())?;
        let engine = Arc::new(WasmEngine::new(&name, runtime, loaded, &settings, limits));
        // An engine that cannot describe itself (its `configure` fails, say) is still
        // tested: the first check reports why, and the rest what follows from it.
        let features = engine.described().await.map(|d| d.features).unwrap_or_default();
        Ok(Subject { engine: Arc::clone(&engine) as Arc<dyn Engine>, wasm: Some(engine), features })
    }
}

fn settings(config: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str::<Value>(config) {
        Ok(Value::Object(settings)) => Ok(settings),
        Ok(other) => Err(format!("--config must be a JSON object (the engine's entry of context-engines/engine-config), not {other}")),
        Err(e) => Err(format!("--config is not JSON: {e}")),
    }
}

/// How one check ended.
#[derive(Debug, Clone)]
pub enum Verdict {
    Pass(String),
    Fail(String),
    /// Not run, and why (a feature the engine does not declare, a check left out).
    Skip(String),
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub check: String,
    pub verdict: Verdict,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (word, detail) = match &self.verdict {
            Verdict::Pass(d) => ("PASS", d),
            Verdict::Fail(d) => ("FAIL", d),
            Verdict::Skip(d) => ("SKIP", d),
        };
        if detail.is_empty() { write!(f, "{word} {}", self.check) } else { write!(f, "{word} {}: {detail}", self.check) }
    }
}

/// Every outcome, in the order run.
#[derive(Debug, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Fail(_))).count()
    }

    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| matches!(o.verdict, Verdict::Pass(_))).count()
    }

    /// `N passed, M failed` (and skipped, when any were).
    pub fn summary(&self) -> String {
        let skipped = self.outcomes.len() - self.passed() - self.failed();
        let skipped = if skipped > 0 { format!(", {skipped} skipped") } else { String::new() };
        format!("{} passed, {} failed{skipped}", self.passed(), self.failed())
    }
}

/// Runs the kit, printing each outcome to `out` as it comes. When `interrupted`
/// resolves first (Ctrl-C), the checks stop where they are; what they made is removed
/// either way.
pub async fn run(subject: Subject, options: Options, out: &mut (dyn Write + Send), interrupted: impl Future<Output = ()>) -> Report {
    let mut kit = Kit::new(subject, options);
    let finished = {
        let mut emit = |outcome: &Outcome| {
            // A report line that cannot be written is no reason to stop testing.
            let _ = writeln!(out, "{outcome}");
            let _ = out.flush();
        };
        tokio::select! {
            _ = kit.run(&mut emit) => true,
            _ = interrupted => false,
        }
    };
    if !finished {
        let outcome =
            Outcome { check: "the run".to_string(), verdict: Verdict::Fail("interrupted; removing what the kit made".to_string()) };
        let _ = writeln!(out, "{outcome}");
        kit.push(outcome);
    }
    let cleanup = kit.clean_up().await;
    for problem in cleanup {
        let _ = writeln!(out, "cleanup: {problem}");
    }
    kit.into_report()
}
