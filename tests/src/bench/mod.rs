//! What every ce-bench section shares: the [`Figure`] a measurement becomes, statistics,
//! the command-line/environment configuration, process memory readings, and the bench
//! world (the simulator and the real plugin, configured the way dr-provision runs it).

pub mod burst;
pub mod decisions;
pub mod memory;
pub mod report;
pub mod start;
pub mod swarm;
pub mod wasm;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use ce_tests::Plugin;
use ce_tests::world::{World, list_containers, unique};
use serde::Serialize;
use serde_json::{Value, json};

/// The image every agent in the bench runs: the busybox fixture, loaded through the plugin.
pub const IMAGE: &str = "ce-bench/plain:1";
/// Plugin names of bench worlds start with this, so leftovers of an interrupted run are
/// recognisable (test worlds use `cet-`).
pub const PLUGIN_PREFIX: &str = "ceb-";
/// Containers the bench creates itself (the baselines) carry this label.
pub const BENCH_LABEL: &str = "drp.bench";
pub const AGENT_PATH: &str = "PATH=/bin:/usr/bin:/usr/local/bin:/sbin:/usr/sbin:/usr/local/sbin";

// ---------------------------------------------------------------------------------------
// Figures

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "limit", rename_all = "kebab-case")]
pub enum Goal {
    /// value / baseline ≤ limit
    RatioAtMost(f64),
    /// value ≥ limit
    AtLeast(f64),
    /// value < limit
    Below(f64),
    /// value − baseline < limit
    GrowthBelow(f64),
}

impl Goal {
    fn met(self, value: f64, baseline: Option<f64>) -> Option<bool> {
        Some(match self {
            Goal::RatioAtMost(limit) => value / baseline? <= limit,
            Goal::AtLeast(limit) => value >= limit,
            Goal::Below(limit) => value < limit,
            Goal::GrowthBelow(limit) => value - baseline? < limit,
        })
    }

    pub fn describe(self, unit: &str) -> String {
        match self {
            Goal::RatioAtMost(limit) => format!("ratio ≤ {limit}"),
            Goal::AtLeast(limit) => format!("≥ {limit} {unit}"),
            Goal::Below(limit) => format!("< {limit} {unit}"),
            Goal::GrowthBelow(limit) => format!("growth < {limit} {unit}"),
        }
    }
}

/// One row of the table: a median over `runs`, its baseline measured in the same run,
/// and what was included. `value: None` means skipped or failed (the note says which).
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub section: u8,
    pub name: String,
    pub unit: &'static str,
    pub value: Option<f64>,
    pub baseline: Option<f64>,
    pub baseline_name: String,
    pub ratio: Option<f64>,
    pub goal: Option<Goal>,
    pub goal_text: Option<String>,
    pub met: Option<bool>,
    pub runs: usize,
    pub note: String,
}

impl Figure {
    pub fn new(section: u8, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            section,
            name: name.into(),
            unit,
            value: None,
            baseline: None,
            baseline_name: String::new(),
            ratio: None,
            goal: None,
            goal_text: None,
            met: None,
            runs: 0,
            note: String::new(),
        }
    }

    /// A figure that could not be measured, saying why.
    pub fn missing(section: u8, name: impl Into<String>, why: impl std::fmt::Display) -> Figure {
        Figure::new(section, name, "").note(why.to_string())
    }

    pub fn value(mut self, value: f64, runs: usize) -> Figure {
        self.value = Some(value);
        self.runs = runs;
        self.finish()
    }

    pub fn baseline(mut self, name: impl Into<String>, value: f64) -> Figure {
        self.baseline_name = name.into();
        self.baseline = Some(value);
        self.finish()
    }

    pub fn goal(mut self, goal: Goal) -> Figure {
        self.goal = Some(goal);
        self.goal_text = Some(goal.describe(self.unit));
        self.finish()
    }

    pub fn note(mut self, note: impl Into<String>) -> Figure {
        let note = note.into();
        if !note.is_empty() {
            if !self.note.is_empty() {
                self.note.push_str("; ");
            }
            self.note.push_str(&note);
        }
        self
    }

    fn finish(mut self) -> Figure {
        self.ratio = match (self.value, self.baseline) {
            (Some(v), Some(b)) if b != 0.0 => Some(v / b),
            _ => None,
        };
        self.met = match (self.goal, self.value) {
            (Some(goal), Some(value)) => goal.met(value, self.baseline),
            _ => None,
        };
        self
    }
}

pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 1_000.0 {
        format!("{x:.0}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

// ---------------------------------------------------------------------------------------
// Statistics

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

/// Nearest-rank percentile; 0 for an empty slice.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// Configuration: `--name value` (or `--name=value`), else `CE_BENCH_NAME`, else default.

pub struct Config {
    args: Vec<String>,
    pub started: Instant,
    pub budget: Duration,
    pub sections: Vec<u8>,
    pub max_parallel: usize,
}

pub const OPTIONS: &[(&str, &str, &str)] = &[
    ("only", "1,2,3,4,5,6", "sections to run (1 agent start, 2 burst, 3 decisions, 4 wasm, 5 memory, 6 swarm burst)"),
    ("budget-min", "25", "soft time budget: optional repeats are skipped once it is spent"),
    ("section-max-min", "20", "hard limit per section; a section past it is abandoned and reported"),
    ("burst-engine", "docker", "engine of the burst: docker (baseline CLI: docker) or podman (CLI: podman)"),
    ("memory-engine", "docker", "engine the 1 GiB imageUpload goes to: docker or podman"),
    ("max-parallel", "16", "the plugin's context-engines/max-parallel, and the baselines' concurrency"),
    ("start-runs", "15", "agentStart runs per engine (after one warm-up run)"),
    ("burst-sizes", "200,1000", "burst sizes"),
    ("burst-repeats", "3,1", "repeats per burst size"),
    ("swarm-burst", "200", "machines in the swarm burst (section 6; needs scripts/swarm.sh up)"),
    ("swarm-repeats", "1", "repeats of the swarm burst"),
    ("decision-events", "50000", "events per decision run"),
    ("decision-runs", "5", "decision runs"),
    ("wasm-runs", "5", "runs of each WASM figure"),
    ("wasm-calls", "20000", "calls per per-call-overhead run"),
    ("upload-runs", "2", "1 GiB imageUpload runs"),
    ("big-archive", "target/bench/big-1g.tar", "the 1 GiB docker-save archive (scripts/bench.sh makes it)"),
    ("out", "bench-results/latest.json", "where the JSON goes (a copy named by time goes next to it)"),
];

impl Config {
    pub fn from_env() -> anyhow::Result<Config> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.iter().any(|a| a == "--help" || a == "-h") {
            println!("ce-bench: benchmarks of context-engines against the runtime's own floor\n");
            for (name, default, what) in OPTIONS {
                let env = format!("CE_BENCH_{}", name.to_uppercase().replace('-', "_"));
                println!("  --{name:<16} {what} (default {default}; env {env})");
            }
            std::process::exit(0);
        }
        let mut config = Config { args, started: Instant::now(), budget: Duration::ZERO, sections: Vec::new(), max_parallel: 0 };
        config.budget = Duration::from_secs_f64(config.get::<f64>("budget-min")? * 60.0);
        config.sections = config.list("only")?.into_iter().map(|s| s as u8).collect();
        config.max_parallel = config.get("max-parallel")?;
        Ok(config)
    }

    fn raw(&self, name: &str) -> String {
        let flag = format!("--{name}");
        let mut args = self.args.iter();
        while let Some(arg) = args.next() {
            if *arg == flag {
                if let Some(value) = args.next() {
                    return value.clone();
                }
            } else if let Some(value) = arg.strip_prefix(&format!("{flag}=")) {
                return value.to_string();
            }
        }
        let env = format!("CE_BENCH_{}", name.to_uppercase().replace('-', "_"));
        if let Ok(value) = std::env::var(env) {
            return value;
        }
        OPTIONS.iter().find(|(n, _, _)| *n == name).map(|(_, d, _)| d.to_string()).unwrap_or_default()
    }

    pub fn get<T: FromStr>(&self, name: &str) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.raw(name);
        raw.parse().map_err(|e| anyhow::anyhow!("--{name} {raw:?}: {e}"))
    }

    pub fn list(&self, name: &str) -> anyhow::Result<Vec<usize>> {
        let raw = self.raw(name);
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().map_err(|e| anyhow::anyhow!("--{name} {raw:?}: {e}")))
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        let raw = PathBuf::from(self.raw(name));
        if raw.is_absolute() { raw } else { repo_root().join(raw) }
    }

    /// Whether there is time left for an optional repeat.
    pub fn time_left(&self) -> bool {
        self.started.elapsed() < self.budget
    }

    pub fn wants(&self, section: u8) -> bool {
        self.sections.contains(&section)
    }

    /// The effective settings, for the JSON.
    pub fn as_json(&self) -> Value {
        OPTIONS.iter().map(|(name, _, _)| (name.to_string(), Value::String(self.raw(name)))).collect()
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------------------------------------------------------------------------------------
// Process memory, from /proc.

/// The pid of a plugin process, found by its server socket on its command line
/// (ce_tests::Plugin does not expose the child's pid).
pub fn pid_of(plugin: &Plugin) -> anyhow::Result<u32> {
    let sock = plugin.to_sock().as_os_str().as_encoded_bytes().to_vec();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let mut args = cmdline.split(|b| *b == 0);
        if args.nth(1) == Some(b"listen".as_slice()) && args.next() == Some(sock.as_slice()) {
            return Ok(pid);
        }
    }
    bail!("no process listens on {}", plugin.to_sock().display())
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`), as MiB.
pub fn status_mib(pid: u32, field: &str) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    let kib: f64 = line.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("{field}: {line:?}"))?;
    Ok(kib / 1024.0)
}

pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    status_mib(pid, "VmRSS")
}

/// Resets the process's peak RSS (VmHWM) to its current RSS; false when the kernel
/// refuses (then only sampling tells the peak).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Samples VmRSS every 20 ms in the background; [`RssSampler::stop`] gives the peak,
/// also taking VmHWM into account when it could be reset at the start.
pub struct RssSampler {
    pid: u32,
    hwm_valid: bool,
    peak_kib: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let hwm_valid = reset_peak(pid);
        let peak_kib = Arc::new(AtomicU64::new(0));
        let peak = Arc::clone(&peak_kib);
        let task = tokio::spawn(async move {
            loop {
                if let Ok(mib) = rss_mib(pid) {
                    peak.fetch_max((mib * 1024.0) as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        RssSampler { pid, hwm_valid, peak_kib, task }
    }

    pub fn stop(self) -> f64 {
        self.task.abort();
        let sampled = self.peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;
        let hwm = if self.hwm_valid { status_mib(self.pid, "VmHWM").unwrap_or(0.0) } else { 0.0 };
        sampled.max(hwm)
    }
}

/// Median of a few RSS samples taken 200 ms apart.
pub async fn steady_rss(pid: u32) -> anyhow::Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(rss_mib(pid)?);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(median(&samples))
}

// ---------------------------------------------------------------------------------------
// The bench world

/// A [`World`] for engine `id` whose plugin runs like production: info-level logs (the
/// test worlds log at debug), the bundled WASM engines unpacked into the default engines
/// directory as dr-provision does with `unpack`, `max-parallel` as given, and its own
/// `ceb-` plugin name. Returns the world and the names of the bundled engines loaded.
pub async fn world(id: &str, max_parallel: usize) -> anyhow::Result<(World, Vec<String>)> {
    let mut world = World::new(id).await?;
    world.stop_plugin().await?;
    world.plugin_name = unique(PLUGIN_PREFIX);
    let bundled = unpack_bundled(&world.sim.webroot().join("files/plugin_providers/context-engines"))?;
    let plugin = Plugin::spawn(&world.sim, &[("RUST_LOG", "info")]).await?;
    let mut params = world.params();
    params["context-engines/max-parallel"] = json!(max_parallel);
    let (code, body) = plugin.config(params).await?;
    if code != 200 {
        bail!("config answered {code}: {body}");
    }
    world.plugin = Some(plugin);
    wait_engines_loaded(&world, &bundled).await?;
    Ok((world, bundled))
}

/// `context-engines unpack DIR`; returns the engine names it wrote.
fn unpack_bundled(dir: &Path) -> anyhow::Result<Vec<String>> {
    let status = Command::new(ce_tests::plugin_bin()).arg("unpack").arg(dir).status()?;
    if !status.success() {
        bail!("context-engines unpack {} exited with {status}", dir.display());
    }
    let mut names: Vec<String> = std::fs::read_dir(dir.join("engines"))
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".wasm").map(str::to_string)).collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Waits for the plugin's log line saying each engine loaded (or failed to).
async fn wait_engines_loaded(world: &World, names: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let log = world.plugin().stderr_text();
        let pending: Vec<&String> = names
            .iter()
            .filter(|n| !log.contains(&format!("engine '{n}' loaded")) && !log.contains(&format!("engine '{n}' not loaded")))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("bundled engines {pending:?} did not load within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `fut`, or an error naming `what` once `limit` passes.
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow::anyhow!("{what}: no answer within {limit:?}"))?
}

/// The runtime socket of an engine under test id (`docker`, `podman`).
pub fn runtime_sock(id: &str) -> &'static str {
    if id == "podman" { ce_tests::world::PODMAN_SOCK } else { ce_tests::world::DOCKER_SOCK }
}

/// Fails unless the runtime creates, starts and removes a container within 60 s: a
/// runtime that hangs (dockerd 20.10.24 can deadlock in libnetwork under container
/// churn, moby/moby#46661) must make the bench report it, not hang with it.
pub async fn runtime_healthy(runtime: &bollard::Docker, image: &str) -> anyhow::Result<()> {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::CreateContainerOptionsBuilder;
    let name = unique("ceb-probe-");
    let probe = async {
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            // Still running when removed: Podman refuses to force-remove a container
            // that is just exiting ("container state improper").
            cmd: Some(vec!["sleep".to_string(), "30".to_string()]),
            labels: Some([(BENCH_LABEL.to_string(), "probe".to_string())].into()),
            host_config: Some(HostConfig { network_mode: Some("none".to_string()), ..Default::default() }),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        runtime.create_container(Some(options), body).await?;
        runtime.start_container(&name, None).await?;
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        runtime.remove_container(&name, Some(options)).await?;
        anyhow::Ok(())
    };
    bounded("the runtime's health probe (create, start, remove a container)", Duration::from_secs(60), probe)
        .await
        .context("the container runtime is not healthy (see its log; a wedged dockerd needs a restart)")
}

/// Removes what an interrupted bench run left: containers of `ceb-` plugins and
/// containers labelled `drp.bench`, on both runtimes. Bounded: a wedged runtime keeps
/// its leftovers, and the bench goes on.
pub async fn remove_leftovers() {
    for host in [ce_tests::world::DOCKER_SOCK, ce_tests::world::PODMAN_SOCK] {
        if tokio::time::timeout(Duration::from_secs(60), remove_leftovers_on(host)).await.is_err() {
            eprintln!("ce-bench: removing leftovers on {host} timed out; the runtime may be wedged");
        }
    }
}

async fn remove_leftovers_on(host: &str) {
    if host == ce_tests::world::DOCKER_SOCK {
        remove_leftover_services().await;
    }
    {
        let Ok(runtime) = ce_tests::world::connect_runtime(host).await else { return };
        let mut found = list_containers(host, BENCH_LABEL).await.unwrap_or_default();
        found.extend(
            list_containers(host, "drp.plugin")
                .await
                .unwrap_or_default()
                .into_iter()
                .filter(|c| c.labels.as_ref().and_then(|l| l.get("drp.plugin")).is_some_and(|p| p.starts_with(PLUGIN_PREFIX))),
        );
        for c in found {
            if let Some(id) = c.id {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                if tokio::time::timeout(Duration::from_secs(10), runtime.remove_container(&id, Some(options))).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Swarm services of `ceb-` plugins and of the swarm floor, when the manager is in
/// swarm mode (section 6); swarm would otherwise start their containers again.
async fn remove_leftover_services() {
    let Ok(runtime) = ce_tests::world::connect_runtime(ce_tests::world::DOCKER_SOCK).await else { return };
    let Ok(services) = runtime.list_services(None::<bollard::query_parameters::ListServicesOptions>).await else { return };
    for service in services {
        let labels = service.spec.as_ref().and_then(|s| s.labels.clone()).unwrap_or_default();
        let ours = labels.contains_key(BENCH_LABEL) || labels.get("drp.plugin").is_some_and(|p| p.starts_with(PLUGIN_PREFIX));
        if let Some(id) = service.id.filter(|_| ours) {
            let _ = runtime.delete_service(&id).await;
        }
    }
}

/// [`World::cleanup`], bounded.
pub async fn cleanup(world: &mut World) {
    if tokio::time::timeout(Duration::from_secs(120), world.cleanup()).await.is_err() {
        eprintln!("ce-bench: cleaning up {} timed out; the runtime may be wedged", world.plugin_name);
    }
}

/// Count of `agent-failed` events the plugin published so far, and the last message.
pub fn agent_failures(world: &World) -> (usize, Option<String>) {
    let failed: Vec<Value> = world.sim.published().into_iter().filter(|e| e["Action"] == "agent-failed").collect();
    let last = failed.last().and_then(|e| e["Object"]["Error"].as_str().map(str::to_string));
    (failed.len(), last)
}
