//! (4) WASM engines, in process with the plugin's own `WasmRuntime`: compiling a
//! component cold and from the on-disk cache, instantiating it (first call of a fresh
//! `WasmEngine`, which instantiates and configures) against a warm call, and the cost of
//! a trivial call (`image_id` on the `null` engine, which does no I/O) against the same
//! call on a native in-memory engine behind the same `Engine` trait.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use async_trait::async_trait;
use context_engines::engine::{AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo};
use context_engines::wasm::runtime::Loaded;
use context_engines::wasm::{Limits, WasmEngine, WasmRuntime};
use serde_json::{Map, Value, json};

use super::{Config, Figure, median, ms};

const SECTION: u8 = 4;

pub async fn run(config: &Config) -> Vec<Figure> {
    let dir = engines_dir();
    if !dir.join("null.wasm").is_file() {
        return vec![Figure::missing(SECTION, "WASM engines", "skipped: engines-wasm/build.sh not run")];
    }
    match measure(config, &dir).await {
        Ok(figures) => figures,
        Err(e) => vec![Figure::missing(SECTION, "WASM engines", format!("failed: {e:#}"))],
    }
}

fn engines_dir() -> PathBuf {
    std::env::var_os("CE_WASM_ENGINES").map(PathBuf::from).unwrap_or_else(|| super::repo_root().join("engines-wasm/target/engines"))
}

async fn measure(config: &Config, dir: &Path) -> anyhow::Result<Vec<Figure>> {
    let runs: usize = config.get::<usize>("wasm-runs")?.max(1);
    let calls: usize = config.get::<usize>("wasm-calls")?.max(1);
    let mut figures = Vec::new();
    let mut modules = vec![("null", json!({}))];
    let tcp = ce_tests::world::DOCKER_TCP;
    let docker = json!({"base-url": format!("http://{tcp}"), "allowed-hosts": [tcp]});
    for engine in ["docker-api", "python-docker"] {
        if dir.join(format!("{engine}.wasm")).is_file() {
            modules.push((engine, docker.clone()));
        } else {
            figures.push(Figure::missing(SECTION, format!("{engine}.wasm"), "not built (engines-wasm/build.sh)"));
        }
    }
    for (name, settings) in &modules {
        let path = dir.join(format!("{name}.wasm"));
        let kib = std::fs::metadata(&path)?.len() / 1024;
        let (cold, cached) = compile(&path, runs)?;
        figures.push(
            Figure::new(SECTION, format!("{name}.wasm ({kib} KiB): compile cold"), "ms")
                .value(median(&cold), runs)
                .note("WasmRuntime::load without a cache dir: read, hash, compile (cranelift, parallel), link"),
        );
        figures.push(
            Figure::new(SECTION, format!("{name}.wasm: load from the compile cache"), "ms")
                .value(median(&cached), runs)
                .baseline("compile cold", median(&cold))
                .note("a second WasmRuntime on the same cache dir: read, hash, deserialize, link"),
        );
        let settings = settings.as_object().cloned().unwrap_or_default();
        let (first, warm) = instantiate(&path, &settings, runs).await?;
        figures.push(
            Figure::new(SECTION, format!("{name}.wasm: instantiate + configure + describe"), "ms")
                .value(median(&first), runs)
                .baseline("describe on a warm (pooled) instance", median(&warm))
                .note("first call on a fresh WasmEngine, compiled component already in memory"),
        );
    }
    let python = dir.join("python-docker.wasm");
    if python.is_file() {
        let settings = docker.as_object().cloned().unwrap_or_default();
        figures.extend(memory(&python, &settings).await.with_context(|| format!("{}: memory", python.display()))?);
    }
    let (wasm, native) = per_call(&dir.join("null.wasm"), runs, calls).await?;
    figures.push(
        Figure::new(SECTION, "per-call: image_id on the null WASM engine", "µs")
            .value(median(&wasm), runs)
            .baseline("same call on a native in-memory engine (dyn Engine)", median(&native))
            .note(format!("{calls} sequential calls per run on a warm instance; includes the deadline and pool handling")),
    );
    Ok(figures)
}

/// Load times cold (a fresh runtime without cache each run) and from the cache (a
/// fresh runtime on a cache dir a first runtime filled).
fn compile(path: &Path, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut cold = Vec::new();
    for _ in 0..runs {
        let runtime = WasmRuntime::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let started = Instant::now();
        black_box(runtime.load(path)?);
        cold.push(ms(started.elapsed()));
    }
    let cache = super::repo_root().join(format!("target/bench/wasm-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let filler = WasmRuntime::new(Some(cache.clone())).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    filler.load(path)?;
    let mut cached = Vec::new();
    for _ in 0..runs {
        let runtime = WasmRuntime::new(Some(cache.clone())).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let started = Instant::now();
        let loaded = runtime.load(path)?;
        cached.push(ms(started.elapsed()));
        if !loaded.from_cache {
            bail!("{} was compiled again instead of coming from the cache", path.display());
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok((cold, cached))
}

fn fresh_engine(name: &str, runtime: &Arc<WasmRuntime>, loaded: &Loaded, settings: &Map<String, Value>, limits: Limits) -> WasmEngine {
    let copy = Loaded {
        pre: loaded.pre.clone(),
        component: loaded.component.clone(),
        sha256: loaded.sha256.clone(),
        from_cache: loaded.from_cache,
        compile_time: loaded.compile_time,
    };
    WasmEngine::new(name, Arc::clone(runtime), copy, settings, limits)
}

async fn instantiate(path: &Path, settings: &Map<String, Value>, runs: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let runtime = WasmRuntime::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let loaded = runtime.load(path)?;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("engine");
    let (mut first, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let engine = fresh_engine(name, &runtime, &loaded, settings, Limits::default());
        let started = Instant::now();
        engine.describe().await.with_context(|| format!("{name}: first describe"))?;
        first.push(ms(started.elapsed()));
        let started = Instant::now();
        engine.describe().await.with_context(|| format!("{name}: warm describe"))?;
        warm.push(ms(started.elapsed()));
    }
    Ok((first, warm))
}

/// The process's memory around a large (Python) component: the peak while compiling
/// against what the compile leaves behind, and the peak while 16 calls run at once with
/// `wasm-max-instances` at its default of 4 against 16 (each call its own instance).
async fn memory(path: &Path, settings: &Map<String, Value>) -> anyhow::Result<Vec<Figure>> {
    let pid = std::process::id();
    let before = super::rss_mib(pid)?;
    let sampler = super::RssSampler::start(pid);
    let runtime = WasmRuntime::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let loaded = runtime.load(path)?;
    let compile_peak = sampler.stop() - before;
    let kept = super::rss_mib(pid)? - before;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("engine");
    let mut figures = vec![
        Figure::new(SECTION, format!("{name}.wasm: RSS kept after compiling"), "MiB")
            .value(kept, 1)
            .baseline("peak RSS growth while compiling", compile_peak)
            .note("VmRSS growth of this process; the compiler's freed memory is handed back (malloc_trim)"),
    ];
    let mut peaks = Vec::new();
    for max_instances in [4, 16] {
        let limits = Limits { max_instances, ..Limits::default() };
        let engine = Arc::new(fresh_engine(name, &runtime, &loaded, settings, limits));
        let idle = super::rss_mib(pid)?;
        let sampler = super::RssSampler::start(pid);
        let calls = (0..16).map(|_| {
            let engine = Arc::clone(&engine);
            tokio::spawn(async move { engine.agent_list(&[("drp.plugin", "ce-bench-none")]).await })
        });
        for call in futures_util::future::join_all(calls).await {
            call.context("a call panicked")?.with_context(|| format!("{name}: agent_list"))?;
        }
        peaks.push(sampler.stop() - idle);
    }
    figures.push(
        Figure::new(SECTION, format!("{name}.wasm: peak RSS growth, 16 calls at once, wasm-max-instances 4"), "MiB")
            .value(peaks[0], 1)
            .baseline("same with wasm-max-instances 16", peaks[1])
            .note("each instance holds its own linear memory; calls beyond the bound wait for one"),
    );
    Ok(figures)
}

/// µs per `image_id` call: WASM `null` engine, then the native in-memory one.
async fn per_call(path: &Path, runs: usize, calls: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let runtime = WasmRuntime::new(None).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let loaded = runtime.load(path)?;
    let wasm: Arc<dyn Engine> = Arc::new(fresh_engine("null", &runtime, &loaded, &Map::new(), Limits::default()));
    let native: Arc<dyn Engine> = Arc::new(InMemory);
    wasm.image_id("warm-up").await?;
    let (mut wasm_us, mut native_us) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        wasm_us.push(time_calls(&wasm, calls).await?);
        native_us.push(time_calls(&native, calls).await?);
    }
    Ok((wasm_us, native_us))
}

async fn time_calls(engine: &Arc<dyn Engine>, calls: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    for _ in 0..calls {
        black_box(engine.image_id(black_box("ce-bench/none:1")).await?);
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / calls as f64)
}

/// The native counterpart of the `null` engine: answers at once, holds nothing.
struct InMemory;

#[async_trait]
impl Engine for InMemory {
    fn name(&self) -> &str {
        "in-memory"
    }
    fn kind(&self) -> &'static str {
        "native/in-memory"
    }
    async fn info(&self) -> Result<EngineInfo, EngineError> {
        Ok(EngineInfo { name: "in-memory".to_string(), kind: "native/in-memory", version: "0".to_string() })
    }
    async fn image_id(&self, _image: &str) -> Result<Option<String>, EngineError> {
        Ok(None)
    }
    async fn image_load(&self, _image: &str, _archive: ArchiveStream) -> Result<(), EngineError> {
        Ok(())
    }
    async fn image_tag(&self, _source: &str, _target: &str) -> Result<(), EngineError> {
        Ok(())
    }
    async fn image_remove(&self, _image: &str) -> Result<bool, EngineError> {
        Ok(false)
    }
    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        Ok(AgentInfo { name: spec.name.clone(), id: String::new(), running: true, labels: spec.labels().clone() })
    }
    async fn agent_stop(&self, _name: &str) -> Result<bool, EngineError> {
        Ok(false)
    }
    async fn agent_list(&self, _labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        Ok(Vec::new())
    }
}
