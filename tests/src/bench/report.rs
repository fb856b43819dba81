//! The machine a run came from, the printed table, and the JSON written for comparing
//! runs.

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use super::{Figure, fmt_num};

pub async fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "memory_gib": (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "docker": runtime_version(ce_tests::world::DOCKER_SOCK).await,
        "podman": runtime_version(ce_tests::world::PODMAN_SOCK).await,
        "commit": git(&["describe", "--always", "--dirty"]),
    })
}

async fn runtime_version(host: &str) -> String {
    let Ok(runtime) = ce_tests::world::connect_runtime(host).await else { return "unreachable".to_string() };
    match runtime.version().await {
        Ok(v) => format!("{} (API {})", v.version.unwrap_or_default(), v.api_version.unwrap_or_default()),
        Err(e) => format!("unknown ({e})"),
    }
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .current_dir(super::repo_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cell(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) => format!("{} {unit}", fmt_num(v)),
        None => "—".to_string(),
    }
}

/// The table: one line per figure, then its baseline and notes indented below.
pub fn table(machine: &Value, figures: &[Figure], minutes: f64) -> String {
    let mut out = String::new();
    let m = |k: &str| machine[k].as_str().map(str::to_string).unwrap_or_else(|| machine[k].to_string());
    out.push_str(&format!(
        "machine: {} cores ({}), {} GiB RAM, kernel {}, docker {}, podman {}; commit {}; bench took {minutes:.1} min\n\n",
        m("nproc"),
        m("cpu"),
        m("memory_gib"),
        m("kernel"),
        m("docker"),
        m("podman"),
        m("commit"),
    ));
    out.push_str(&format!(
        "{:<56} {:>14} {:>14} {:>8}  {:<16} {:<4} {:>4}\n",
        "figure", "value", "baseline", "ratio", "goal", "met", "runs"
    ));
    out.push_str(&format!("{}\n", "─".repeat(124)));
    let mut section = 0;
    for f in figures {
        if f.section != section {
            section = f.section;
            out.push_str(&format!("[{}]\n", section_name(section)));
        }
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        out.push_str(&format!(
            "{:<56} {:>14} {:>14} {:>8}  {:<16} {:<4} {:>4}\n",
            truncate(&f.name, 56),
            cell(f.value, f.unit),
            if f.baseline.is_some() { cell(f.baseline, f.unit) } else { String::new() },
            f.ratio.map(|r| format!("{r:.3}")).unwrap_or_default(),
            f.goal_text.clone().unwrap_or_default(),
            met,
            if f.value.is_some() { f.runs.to_string() } else { String::new() },
        ));
        if !f.baseline_name.is_empty() {
            out.push_str(&format!("    baseline: {}\n", f.baseline_name));
        }
        if !f.note.is_empty() {
            out.push_str(&format!("    {}\n", f.note));
        }
    }
    out
}

fn section_name(section: u8) -> &'static str {
    match section {
        1 => "1 agent start overhead",
        2 => "2 burst convergence",
        3 => "3 event decisions (in process)",
        4 => "4 WASM engines (in process)",
        5 => "5 memory",
        _ => "other",
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let cut: String = s.chars().take(width - 1).collect();
    format!("{cut}…")
}

/// Writes the run to `path` and a copy named by its start time next to it.
pub fn write_json(path: &Path, run: &Value, started_unix: u64) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(run)?;
    std::fs::write(path, &text)?;
    if let Some(dir) = path.parent() {
        std::fs::write(dir.join(format!("run-{started_unix}.json")), &text)?;
    }
    Ok(())
}
