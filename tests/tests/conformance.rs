//! The conformance kit (`context-engines engines test`), run as an engine author runs
//! it: the real binary, on every engine we ship, against the real dockerd and Podman.
//! Each run must pass every check it makes, and make as many as the engine warrants,
//! so a kit that quietly checks less fails here.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, ensure};
use ce_tests::plugin::plugin_bin;
use ce_tests::world::{DOCKER_SOCK, DOCKER_TCP, PODMAN_SOCK, PODMAN_TCP, docker_api_at, wasm_engines};
use serde_json::json;

/// What one run printed, and whether it exited 0.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn lines(&self, verdict: &str) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with(verdict)).collect()
    }
}

fn kit(args: &[&str]) -> anyhow::Result<Run> {
    let output =
        Command::new(plugin_bin()).args(["engines", "test"]).args(args).output().context("running context-engines engines test")?;
    Ok(Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Every check passed, at least `checks` of them, and the summary says so.
fn passes(run: &Run, checks: usize) -> anyhow::Result<()> {
    let failed = run.lines("FAIL");
    ensure!(run.ok && failed.is_empty(), "the kit failed:\n{}\n{}", run.stdout, run.stderr);
    let passed = run.lines("PASS").len();
    ensure!(passed >= checks, "only {passed} checks passed, expected at least {checks}:\n{}", run.stdout);
    let summary = format!("{passed} passed, 0 failed");
    ensure!(run.stdout.contains(&summary), "no summary '{summary}':\n{}", run.stdout);
    Ok(())
}

fn wasm(file: &str) -> String {
    let path = wasm_engines().join(file);
    assert!(Path::new(&path).exists(), "{} is missing: run engines-wasm/build.sh", path.display());
    path.display().to_string()
}

// describe 2, images 8, agents 14 (with logs), limits 2 on WASM.
const NATIVE_CHECKS: usize = 23;
const WASM_CHECKS: usize = 25;

#[test]
fn native_docker_passes_the_kit() -> anyhow::Result<()> {
    passes(&kit(&["--native", "docker", "--config", &json!({"host": DOCKER_SOCK}).to_string()])?, NATIVE_CHECKS)
}

#[test]
fn native_podman_passes_the_kit() -> anyhow::Result<()> {
    passes(&kit(&["--native", "podman", "--config", &json!({"host": PODMAN_SOCK}).to_string()])?, NATIVE_CHECKS)
}

#[test]
fn docker_api_wasm_passes_the_kit_on_dockerd() -> anyhow::Result<()> {
    passes(&kit(&[&wasm("docker-api.wasm"), "--config", &docker_api_at(DOCKER_TCP).to_string()])?, WASM_CHECKS)
}

#[test]
fn docker_api_wasm_passes_the_kit_on_podman() -> anyhow::Result<()> {
    passes(&kit(&[&wasm("docker-api.wasm"), "--config", &docker_api_at(PODMAN_TCP).to_string(), "--large-mb", "256"])?, WASM_CHECKS)
}

#[test]
fn python_engine_passes_the_kit_on_dockerd() -> anyhow::Result<()> {
    passes(&kit(&[&wasm("python-docker.wasm"), "--config", &docker_api_at(DOCKER_TCP).to_string()])?, WASM_CHECKS)
}

/// `null` has no runtime: what applies to it is loading, describing, configuring and
/// the limits.
#[test]
fn null_passes_the_checks_that_apply_to_it() -> anyhow::Result<()> {
    passes(&kit(&[&wasm("null.wasm"), "--only", "describe,limits"])?, 4)
}

/// A bad `allowed-hosts` entry (a bare host) makes the engine unavailable: the kit
/// fails, exits non-zero and names the entry.
#[test]
fn a_misconfigured_engine_fails_the_kit_naming_why() -> anyhow::Result<()> {
    let config = json!({"base-url": format!("http://{DOCKER_TCP}"), "allowed-hosts": ["127.0.0.1"]});
    let run = kit(&[&wasm("docker-api.wasm"), "--config", &config.to_string(), "--only", "describe"])?;
    ensure!(!run.ok, "the kit passed a misconfigured engine:\n{}", run.stdout);
    let failed = run.lines("FAIL").join("\n");
    ensure!(failed.contains("allowed-hosts entry '127.0.0.1' has no port"), "no FAIL names the entry:\n{}\n{}", run.stdout, run.stderr);
    ensure!(run.stderr.contains("checks failed"), "stderr: {}", run.stderr);
    Ok(())
}

/// Input the kit cannot use is refused before anything runs, by name.
#[test]
fn bad_kit_input_is_refused_by_name() -> anyhow::Result<()> {
    for (args, says) in [
        (vec!["--native", "containerd"], "no native engine 'containerd'"),
        (vec!["--native", "docker", "--config", "[1]"], "--config must be a JSON object"),
        (vec!["--native", "docker", "--only", "everything"], "no check group 'everything'"),
    ] {
        let run = kit(&args)?;
        ensure!(!run.ok && run.stderr.contains(says), "{args:?}: expected an error saying {says:?}, got:\n{}\n{}", run.stdout, run.stderr);
    }
    let not_wasm = std::env::temp_dir().join(format!("not-an-engine-{}.wasm", std::process::id()));
    std::fs::write(&not_wasm, b"hello, world")?;
    let run = kit(&[&not_wasm.display().to_string()])?;
    std::fs::remove_file(&not_wasm)?;
    ensure!(!run.ok && run.stderr.contains("not WebAssembly at all"), "a text file: {}", run.stderr);
    Ok(())
}
