//! (3) Event decisions, in process: pre-serialized machine event frames, as dr-provision
//! sends them on the websocket, decoded, applied to the plugin's own `Reconciler`, and
//! decided for every machine they touch. No engine is involved: deciding does no I/O
//! (what the decisions start and stop is the burst's business). Baseline: decoding the
//! same frames only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use context_engines::controller::reconciler::Reconciler;
use context_engines::drp::socket::DrpSocket;
use context_engines::environment::Environment;
use context_engines::events::Event;
use context_engines::params::Settings;
use context_engines::plugin::Plugin;
use serde_json::{Value, json};

use super::{Config, Figure, Goal, median, percentile};

const SECTION: u8 = 3;
/// Distinct machines the events are about.
const MACHINES: usize = 2000;
const OURS: &str = "bench-runner";
const THEIRS: &str = "other-runner";

/// Per-run figures: events per second, p50 and p99 latency in µs.
struct RunStats {
    rate: f64,
    p50: f64,
    p99: f64,
}

pub async fn run(config: &Config) -> Vec<Figure> {
    match measure(config) {
        Ok(figures) => figures,
        Err(e) => vec![Figure::missing(SECTION, "event decisions", format!("failed: {e:#}"))],
    }
}

fn measure(config: &Config) -> anyhow::Result<Vec<Figure>> {
    let events: usize = config.get("decision-events")?;
    let runs: usize = config.get::<usize>("decision-runs")?.max(1);
    let frames = frames(events.max(1));
    let mean_len = frames.iter().map(String::len).sum::<usize>() / frames.len();
    let (mut decided, mut decoded) = (Vec::new(), Vec::new());
    // Alternating, each run on a fresh reconciler that has seen the contexts.
    for _ in 0..runs {
        decided.push(decide_run(&frames)?);
        decoded.push(decode_run(&frames)?);
    }
    let pick = |stats: &[RunStats], f: fn(&RunStats) -> f64| median(&stats.iter().map(f).collect::<Vec<_>>());
    let baseline = "decoding the same frames only";
    let note = format!(
        "{events} machine events per run over {MACHINES} machines (enter ours / other context / leave / delete), \
         {mean_len} bytes per frame; serde decode + Reconciler::apply + decide per touched machine"
    );
    Ok(vec![
        Figure::new(SECTION, "event decisions: throughput", "events/s")
            .value(pick(&decided, |s| s.rate), runs)
            .baseline(baseline, pick(&decoded, |s| s.rate))
            .goal(Goal::AtLeast(20_000.0))
            .note(note),
        Figure::new(SECTION, "event decisions: p50 latency per event", "µs")
            .value(pick(&decided, |s| s.p50), runs)
            .baseline(baseline, pick(&decoded, |s| s.p50)),
        Figure::new(SECTION, "event decisions: p99 latency per event", "µs")
            .value(pick(&decided, |s| s.p99), runs)
            .baseline(baseline, pick(&decoded, |s| s.p99))
            .goal(Goal::Below(1000.0)),
    ])
}

fn reconciler() -> anyhow::Result<Arc<Reconciler>> {
    let env = Environment::default();
    let settings = Settings::from_params(&json!({}), &env)?;
    let scratch = super::repo_root().join("target/bench/decisions");
    std::fs::create_dir_all(&scratch)?;
    let plugin = Plugin::new(env, DrpSocket::new(&scratch.join("nonexistent.sock")), settings, scratch)?;
    let reconciler = Reconciler::new(Arc::new(plugin));
    for (name, engine) in [(OURS, "context-engines"), (THEIRS, "another-plugin")] {
        let frame = event_frame("contexts", "create", name, json!({"Name": name, "Engine": engine, "Image": "runner:1", "Meta": {}}), None);
        let event: Event = serde_json::from_str(&frame)?;
        reconciler.apply(&event).map_err(anyhow::Error::msg)?;
    }
    Ok(reconciler)
}

fn decide_run(frames: &[String]) -> anyhow::Result<RunStats> {
    let reconciler = reconciler()?;
    let mut latencies = Vec::with_capacity(frames.len());
    let started = Instant::now();
    for frame in frames {
        let t = Instant::now();
        let event: Event = serde_json::from_str(frame).context("decoding a frame")?;
        for uuid in reconciler.apply(&event).map_err(anyhow::Error::msg)? {
            black_box(reconciler.decide(&uuid)?);
        }
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(stats(frames.len(), started, &latencies))
}

fn decode_run(frames: &[String]) -> anyhow::Result<RunStats> {
    let mut latencies = Vec::with_capacity(frames.len());
    let started = Instant::now();
    for frame in frames {
        let t = Instant::now();
        black_box(serde_json::from_str::<Event>(frame).context("decoding a frame")?);
        latencies.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(stats(frames.len(), started, &latencies))
}

fn stats(n: usize, started: Instant, latencies: &[f64]) -> RunStats {
    RunStats { rate: n as f64 / started.elapsed().as_secs_f64(), p50: percentile(latencies, 50.0), p99: percentile(latencies, 99.0) }
}

/// Machine events cycling over [`MACHINES`] machines: each machine in turn enters our
/// context, moves to another plugin's, leaves, comes back, and one in 20 is deleted.
fn frames(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let m = i % MACHINES;
            let uuid = format!("4c4c4544-0042-{:04x}-8000-{m:012x}", i / MACHINES % 0xffff);
            let round = i / MACHINES;
            if (m + round) % 20 == 19 {
                return event_frame("machines", "delete", &uuid, machine(&uuid, m, OURS), None);
            }
            let context = match round % 4 {
                0 | 3 => OURS,
                1 => THEIRS,
                _ => "",
            };
            let previous = machine(&uuid, m, if round % 4 == 1 { OURS } else { THEIRS });
            event_frame("machines", "update", &uuid, machine(&uuid, m, context), Some(previous))
        })
        .collect()
}

fn event_frame(kind: &str, action: &str, key: &str, object: Value, original: Option<Value>) -> String {
    let mut event = json!({
        "Time": "2026-11-23T13:42:17.123456789Z",
        "Type": kind,
        "Action": action,
        "Key": key,
        "Principal": "user:rocketskates",
        "Object": object,
    });
    if let Some(original) = original {
        event["Original"] = original;
    }
    event.to_string()
}

/// A machine object shaped like dr-provision's (the usual fields, a few params), not
/// just the four the plugin reads: decoding cost depends on the whole frame.
fn machine(uuid: &str, n: usize, context: &str) -> Value {
    json!({
        "Validated": true, "Available": true, "Errors": [], "ReadOnly": false, "Meta": {
            "BaseContext": "", "color": "black", "icon": "server", "feature-flags": "change-stage-v2"},
        "Endpoint": "", "Bundle": "", "Partial": false, "Uuid": uuid, "Name": format!("node-{n:05}.rack1.example.com"),
        "Description": "", "HardwareAddrs": [format!("52:54:00:{:02x}:{:02x}:{:02x}", n >> 16 & 0xff, n >> 8 & 0xff, n & 0xff)],
        "Workflow": "universal-runbook", "Stage": "universal-runbook", "BootEnv": "local",
        "Profiles": ["global-overrides", "site-rack1"], "Params": {"kernel-console": "console=ttyS0,115200",
            "ntp-servers": ["10.0.0.1", "10.0.0.2"], "universal/application": "compute"},
        "Tasks": ["stage:universal-runbook", "bootenv:local", "universal-runbook-pre", "universal-runbook",
            "universal-runbook-post", "callback-task"],
        "CurrentTask": 3, "RetryTaskAttempt": 0, "TaskErrorStacks": [], "CurrentJob": format!("7d1e{n:028x}"),
        "Address": format!("10.0.{}.{}", n / 250, n % 250 + 2), "Secret": "s8BfTqbLX1m4ZV0w", "OS": "centos-8",
        "Arch": "amd64", "Locked": false, "Context": context, "Runnable": true, "Pool": "default",
        "PoolAllocated": false, "PoolStatus": "Free", "WorkflowComplete": false, "JobState": "running",
        "JobExitState": "", "JobResultErrors": [], "Fingerprint": {"SSNHash": "", "CSNHash": "",
            "SystemUUID": uuid, "MemoryIds": []}, "WorkOrderMode": false, "PendingWorkOrders": 0, "RunningWorkOrders": 0
    })
}
