//! Fault tests: what production throws at the plugin, and proof that nothing is lost.
//!
//! * the Docker daemon stopped and restarted under running agents and arriving events;
//! * the plugin SIGKILLed in the middle of a 200-machine burst and restarted;
//! * dr-provision's API answering 500s or hanging;
//! * malformed and hostile input on every entry point (the plugin socket, websocket
//!   frames, event objects, image paths, names a runtime rejects);
//! * and, over everything each of these tests captured, no `RS_TOKEN` and no machine
//!   token anywhere, and never `RS_TOKEN` in an agent's environment.
//!
//! RUN ALONE, one test at a time: `docker_daemon_restart_*` stops dockerd, which kills
//! every other test's containers, and the burst test loads the runtime heavily.
//! `cargo test --release -p ce-tests --test faults -- --test-threads=1`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use ce_tests::ApiFault;
use ce_tests::prometheus::{free_loopback, get};
use ce_tests::world::{ContainerSummary, DOCKER_SOCK, World, connect_runtime, list_containers, unique};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const SETTLE: Duration = Duration::from_secs(90);
const SCENARIO_LIMIT: Duration = Duration::from_secs(12 * 60);

// ------------------------------------------------------------------ harness

/// A world plus everything earlier plugin processes of the same test printed, so the
/// secrets check covers processes that were killed or restarted on the way.
struct Fault {
    w: World,
    retired: String,
}

impl Fault {
    fn retire_output(&mut self) {
        if let Some(plugin) = self.w.plugin.as_ref() {
            self.retired.push_str(&plugin.stdout_text());
            self.retired.push_str(&plugin.stderr_text());
        }
    }

    /// SIGKILL, as the OOM killer or a crash would.
    fn kill_plugin(&mut self) {
        self.retire_output();
        if let Some(mut plugin) = self.w.plugin.take() {
            plugin.kill();
        }
    }

    async fn stop_plugin(&mut self) -> anyhow::Result<()> {
        self.retire_output();
        self.w.stop_plugin().await
    }

    /// stderr of every plugin process this test ran, the current one last.
    fn stderr_all(&self) -> String {
        let current = self.w.plugin.as_ref().map(|p| p.stderr_text()).unwrap_or_default();
        format!("{}{current}", self.retired)
    }
}

/// Runs one fault scenario in a fresh Docker world, then checks secrets over everything
/// captured, then removes whatever the world left in the runtime. A failure names the
/// scenario and shows the plugin's last lines.
async fn run_fault<F>(scenario: &str, body: F)
where
    F: for<'f> FnOnce(&'f mut Fault) -> BoxFuture<'f, anyhow::Result<()>>,
{
    let w = match World::new("docker").await {
        Ok(w) => w,
        Err(e) => panic!("fault scenario '{scenario}': setting up: {e:#}"),
    };
    let mut f = Fault { w, retired: String::new() };
    // Every wait inside is bounded; this bounds the whole in case one is not.
    let outcome = match tokio::time::timeout(SCENARIO_LIMIT, body(&mut f)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(anyhow::anyhow!("did not finish within {SCENARIO_LIMIT:?}")),
    };
    let secrets = check_secrets(&f).await;
    let tail = tail(&f.stderr_all(), 60);
    remove_agents(&f.w).await;
    f.w.cleanup().await;
    let mut failures = Vec::new();
    if let Err(e) = outcome {
        failures.push(format!("{e:#}"));
    }
    if let Err(e) = secrets {
        failures.push(format!("secrets: {e:#}"));
    }
    if !failures.is_empty() {
        panic!("fault scenario '{scenario}' failed:\n{}\n--- plugin stderr (tail) ---\n{tail}", failures.join("\n"));
    }
}

/// The last `n` lines, each cut at 400 characters (some tests log huge strings).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<String> = text.lines().map(|l| l.chars().take(400).collect()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// No `RS_TOKEN` and no issued machine token in anything the plugin logged, published or
/// sent (the simulator's capture of the API, the websocket and the plugin socket, and the
/// stdout/stderr of every plugin process of the test), and `RS_TOKEN` in no agent's
/// environment (agents get their machine token, never the superuser's).
async fn check_secrets(f: &Fault) -> anyhow::Result<()> {
    let sim = &f.w.sim;
    let mut secrets = vec![("RS_TOKEN".to_string(), sim.token())];
    for (machine, token) in sim.issued_tokens() {
        secrets.push((format!("the machine token of {machine}"), token));
    }
    let mut captured = sim.all_captured_text();
    ensure!(!captured.is_empty(), "the simulator captured nothing: the check would prove nothing");
    captured.push_str(&f.stderr_all());
    if let Some(plugin) = f.w.plugin.as_ref() {
        captured.push_str(&plugin.stdout_text());
    }
    for (what, secret) in &secrets {
        ensure!(secret.len() >= 16, "{what} is too short to search for");
        ensure!(!captured.contains(secret.as_str()), "{what} leaked into what the plugin logged or sent");
    }
    // The runtime may have been restarted under the world's client: connect afresh.
    let runtime = connect_runtime(DOCKER_SOCK).await?;
    for agent in agents(&f.w).await? {
        let Some(id) = agent.id else { continue };
        let Ok(inspected) = runtime.inspect_container(&id, None).await else { continue };
        let env = inspected.config.and_then(|c| c.env).unwrap_or_default();
        ensure!(!env.iter().any(|e| e.contains(&sim.token())), "agent {:?} was given RS_TOKEN in its environment", agent.names);
    }
    Ok(())
}

/// Force-removes the world's agents, 8 at a time, through a fresh connection (the
/// world's own client may predate a dockerd restart).
async fn remove_agents(w: &World) {
    let Ok(runtime) = connect_runtime(DOCKER_SOCK).await else { return };
    let Ok(agents) = agents(w).await else { return };
    let runtime = &runtime;
    futures_util::stream::iter(agents.into_iter().filter_map(|a| a.id))
        .for_each_concurrent(8, |id| async move {
            let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = runtime.remove_container(&id, Some(options)).await;
        })
        .await;
}

/// The world's agents, bounded in time: a runtime that stops answering fails the test
/// instead of hanging it (the harness's listing has no timeout of its own).
async fn agents(w: &World) -> anyhow::Result<Vec<ContainerSummary>> {
    tokio::time::timeout(Duration::from_secs(60), w.agents()).await.context("listing the agents: the runtime did not answer within 60 s")?
}

fn machine_of(c: &ContainerSummary) -> String {
    c.labels.as_ref().and_then(|l| l.get("drp.machine")).cloned().unwrap_or_default()
}

fn id_by_machine(agents: &[ContainerSummary]) -> BTreeMap<String, String> {
    agents.iter().map(|c| (machine_of(c), c.id.clone().unwrap_or_default())).collect()
}

/// What is wrong with `agents` if they are not exactly one running agent, named
/// `drp-<context>-<uuid>`, for each machine of `want`.
fn mismatch(agents: &[ContainerSummary], want: &BTreeMap<String, String>) -> Option<String> {
    let mut per_machine: BTreeMap<String, usize> = BTreeMap::new();
    let mut problems = Vec::new();
    for c in agents {
        let machine = machine_of(c);
        *per_machine.entry(machine.clone()).or_default() += 1;
        if c.state.as_deref() != Some("running") {
            problems.push(format!("{:?} is {:?}", c.names, c.state));
        }
        if let Some(context) = want.get(&machine) {
            let name = format!("/drp-{context}-{machine}");
            if !c.names.as_ref().is_some_and(|n| n.contains(&name)) {
                problems.push(format!("agent of {machine} is named {:?}, not {name}", c.names));
            }
        }
    }
    let duplicated: Vec<_> = per_machine.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = want.keys().filter(|m| !per_machine.contains_key(*m)).collect();
    let orphans: Vec<_> = per_machine.keys().filter(|m| !want.contains_key(*m)).collect();
    if !duplicated.is_empty() {
        problems.push(format!("duplicated: {duplicated:?}"));
    }
    if !missing.is_empty() {
        problems.push(format!("{} missing: {missing:?}", missing.len()));
    }
    if !orphans.is_empty() {
        problems.push(format!("{} orphaned: {orphans:?}", orphans.len()));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// Waits until the world's agents are exactly `want` (machine → context): one running
/// agent per machine, none for any other machine.
async fn wait_exact(f: &Fault, want: &BTreeMap<String, String>, timeout: Duration) -> anyhow::Result<Vec<ContainerSummary>> {
    let deadline = Instant::now() + timeout;
    loop {
        let agents = agents(&f.w).await?;
        let Some(problem) = mismatch(&agents, want) else { return Ok(agents) };
        if Instant::now() > deadline {
            bail!(
                "after {timeout:?}, the agents are not one per wanted machine ({} wanted, {} found): {problem}",
                want.len(),
                agents.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Converged, and still so a little later: no late duplicate, no flapping.
async fn wait_exact_and_stable(f: &Fault, want: &BTreeMap<String, String>, timeout: Duration) -> anyhow::Result<Vec<ContainerSummary>> {
    let first = wait_exact(f, want, timeout).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = agents(&f.w).await?;
    if let Some(problem) = mismatch(&later, want) {
        bail!("converged, then 3 s later: {problem}");
    }
    ensure!(id_by_machine(&first) == id_by_machine(&later), "agents were replaced after convergence");
    Ok(later)
}

/// How most scenarios begin: the world's image uploaded, Context `ctx` serving it, and
/// one machine in it whose agent runs. Returns the image, the machine, and its agent's id.
async fn one_agent_in_ctx(f: &Fault) -> anyhow::Result<(String, String, BTreeMap<String, String>)> {
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.w.sim.put_context(f.w.context("ctx", &image));
    let first = unique("m");
    f.w.sim.put_machine(World::machine(&first, "ctx"));
    let before = id_by_machine(&wait_exact(f, &in_context(std::slice::from_ref(&first), "ctx"), SETTLE).await?);
    Ok((image, first, before))
}

fn in_context(machines: &[String], context: &str) -> BTreeMap<String, String> {
    machines.iter().map(|m| (m.clone(), context.to_string())).collect()
}

fn published(f: &Fault, action: &str, machine: &str) -> Vec<Value> {
    f.w.sim.published().into_iter().filter(|e| e["Action"] == action && e["Object"]["Machine"] == machine).collect()
}

async fn wait_published(f: &Fault, action: &str, machine: &str, timeout: Duration) -> anyhow::Result<Value> {
    f.w.sim.wait_for(&format!("a published {action} for {machine}"), timeout, || published(f, action, machine).into_iter().next()).await
}

/// A log line forwarded to dr-provision containing all of `needles`.
async fn wait_log(f: &Fault, needles: &[&str], timeout: Duration) -> anyhow::Result<String> {
    f.w.sim
        .wait_for(&format!("a log line with {needles:?}"), timeout, || {
            f.w.sim
                .logs()
                .into_iter()
                .filter_map(|l| l["Message"].as_str().map(str::to_string))
                .find(|m| needles.iter().all(|n| m.contains(n)))
        })
        .await
}

/// Still serving: enginesList answers 200 with the native engines.
async fn still_serving(f: &Fault) -> anyhow::Result<()> {
    let plugin = f.w.plugin.as_ref().context("no plugin process")?;
    let (code, engines) = tokio::time::timeout(Duration::from_secs(10), plugin.action(json!({}), "enginesList", json!({})))
        .await
        .context("enginesList took more than 10 s")??;
    ensure!(code == 200, "enginesList: {code} {engines}");
    let names: Vec<&str> = engines.as_array().map(|r| r.iter().filter_map(|e| e["name"].as_str()).collect()).unwrap_or_default();
    ensure!(names.contains(&"docker"), "enginesList without docker: {engines}");
    Ok(())
}

/// Waits until the metrics listener's `/healthz` answers `code` with a body holding
/// `needle`; returns the body.
async fn wait_health(at: std::net::SocketAddr, code: u16, needle: &str, timeout: Duration) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let (got, body) = get(at, "/healthz").await?;
        if got == code && body.contains(needle) {
            return Ok(body);
        }
        ensure!(Instant::now() < deadline, "/healthz answered {got} {body:?} after {timeout:?}; wanted {code} with '{needle}'");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_error_json(v: &Value) -> bool {
    v["Code"].is_number() && v["Messages"].is_array() && ["Model", "Key", "Type"].iter().all(|k| v[*k].is_string())
}

// ------------------------------------------------------------------ dockerd control

fn docker_sock_path() -> &'static Path {
    Path::new(DOCKER_SOCK.trim_start_matches("unix://"))
}

/// `GET /_ping` on the socket, blocking, 3 s at most.
fn dockerd_answers() -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(docker_sock_path()) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
        return false;
    }
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200")
}

fn dockerd_pids() -> Vec<String> {
    std::process::Command::new("pidof")
        .arg("dockerd")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Stops dockerd with SIGTERM, as its service manager would, and waits until it is gone.
fn stop_dockerd() -> anyhow::Result<()> {
    let pids = dockerd_pids();
    ensure!(!pids.is_empty(), "dockerd is not running (scripts/runtimes.sh starts it)");
    let status = std::process::Command::new("kill").arg("-TERM").args(&pids).status()?;
    ensure!(status.success(), "kill -TERM {pids:?} failed");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while dockerd_answers() || !dockerd_pids().is_empty() {
        ensure!(std::time::Instant::now() < deadline, "dockerd did not stop within 90 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Starts dockerd the way scripts/runtimes.sh does and waits for `/_ping`.
fn start_dockerd() -> anyhow::Result<()> {
    if dockerd_answers() {
        return Ok(());
    }
    let status = std::process::Command::new("sh").arg("-c").arg("nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &").status()?;
    ensure!(status.success(), "could not launch dockerd");
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !dockerd_answers() {
        ensure!(std::time::Instant::now() < deadline, "dockerd did not answer within 90 s of its restart (see /var/log/dockerd.log)");
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// Brings dockerd back however the test ends, so one failure never takes the runtime
/// down for everything after it.
struct DockerdBack;

impl Drop for DockerdBack {
    fn drop(&mut self) {
        if let Err(e) = start_dockerd() {
            eprintln!("faults: FATAL: could not restart dockerd: {e:#}");
        }
    }
}

/// Agents of other test plugins (`cet-…`) that run right now: stopping dockerd under
/// them would break those tests, so this test refuses to, loudly.
async fn foreign_test_agents(own_label: &str) -> anyhow::Result<Vec<String>> {
    let all = list_containers(DOCKER_SOCK, "drp.plugin").await?;
    Ok(all
        .into_iter()
        .filter(|c| c.state.as_deref() == Some("running"))
        .filter_map(|c| {
            let plugin = c.labels.as_ref()?.get("drp.plugin")?.clone();
            (plugin.starts_with("cet-") && plugin != own_label).then_some(plugin)
        })
        .collect())
}

// ------------------------------------------------------------------ 1. dockerd restart

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_daemon_restart_is_reported_then_converges_without_duplicates() {
    run_fault("docker daemon stopped and restarted", |f| Box::pin(docker_daemon_restart(f))).await
}

async fn docker_daemon_restart(f: &mut Fault) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let foreign = foreign_test_agents(&f.w.plugin_name).await?;
        if foreign.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "agents of other tests run on dockerd ({foreign:?}); this test stops dockerd and must run alone: \
             cargo test --release -p ce-tests --test faults -- --test-threads=1"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.w.sim.put_context(f.w.context("ctx", &image));
    let kept: Vec<String> = (0..3).map(|_| unique("k")).collect();
    let leaving: Vec<String> = (0..2).map(|_| unique("l")).collect();
    for m in kept.iter().chain(&leaving) {
        f.w.sim.put_machine(World::machine(m, "ctx"));
    }
    let all: Vec<String> = kept.iter().chain(&leaving).cloned().collect();
    let before = id_by_machine(&wait_exact(f, &in_context(&all, "ctx"), SETTLE).await?);
    let metrics = free_loopback()?;
    f.w.extra_params.insert("context-engines/metrics-address".into(), json!(metrics.to_string()));
    let (code, body) = f.w.plugin().config(f.w.params()).await?;
    ensure!(code == 200, "config with a metrics address: {code} {body}");
    wait_health(metrics, 200, "ok", SETTLE).await?;

    let _restart_on_any_exit = DockerdBack;
    let stopping = Instant::now();
    tokio::task::spawn_blocking(stop_dockerd).await??;
    eprintln!("faults: dockerd stopped in {:?}", stopping.elapsed());

    // Events keep arriving during the outage: machines join, machines leave.
    let joining: Vec<String> = (0..2).map(|_| unique("j")).collect();
    for m in &joining {
        f.w.sim.put_machine(World::machine(m, "ctx"));
    }
    for m in &leaving {
        f.w.sim.delete_machine(m);
    }
    // The outage is reported: an agent-failed event and a log line, each naming the
    // engine and its socket, and an action answered 503 with both.
    let failed = wait_published(f, "agent-failed", &joining[0], SETTLE).await?;
    let error = failed["Object"]["Error"].as_str().unwrap_or_default().to_string();
    ensure!(error.contains("'docker'") && error.contains("docker.sock"), "agent-failed should name engine and socket: {error}");
    let line = wait_log(f, &[&leaving[0], "'docker'", "docker.sock"], SETTLE).await?;
    eprintln!("faults: the plugin logged: {line}");
    let (code, body) = f.w.action("imageExists", json!({"context/image-name": image})).await?;
    ensure!(code == 503 && is_error_json(&body), "imageExists while dockerd is down: expected a 503 Error, got {code} {body}");
    ensure!(body["Messages"].to_string().contains("docker.sock"), "the 503 should name the socket: {body}");
    let (code, engines) = f.w.action("enginesList", json!({})).await?;
    let docker_row = engines.as_array().and_then(|r| r.iter().find(|e| e["name"] == "docker").cloned());
    ensure!(
        code == 200 && docker_row.as_ref().is_some_and(|r| r["state"] != "ready"),
        "enginesList while dockerd is down: {code} {engines}"
    );
    // Removing an image from a runtime that cannot be asked is not "removed or absent".
    let mut problems = Vec::new();
    let (code, body) = f.w.action("imageRemove", json!({"context/image-name": image})).await?;
    if code != 503 || !body["Messages"].to_string().contains("docker.sock") {
        problems.push(format!("imageRemove while dockerd is down: expected a 503 naming the socket, got {code} {body}"));
    }
    // Health says why: the engine in use does not answer.
    let unhealthy = wait_health(metrics, 503, "engine 'docker'", SETTLE).await?;
    eprintln!("faults: /healthz while dockerd is down: {unhealthy}");
    // Retries are spaced out (1 s doubling), not a hot loop.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let failures = published(f, "agent-failed", &joining[0]).len();
    ensure!(
        (2..=6).contains(&failures),
        "{failures} agent-failed events for one machine in the first ~5 s of the outage: want retries with backoff"
    );

    let restarting = Instant::now();
    tokio::task::spawn_blocking(start_dockerd).await??;
    eprintln!("faults: dockerd answers again after {:?}", restarting.elapsed());

    // Converges: the kept agents are back (the restart policy revives the same
    // containers), the departed machines' agents (revived too) are removed, the joined
    // machines get theirs, and every machine has exactly one.
    let want: BTreeMap<String, String> = in_context(&kept, "ctx").into_iter().chain(in_context(&joining, "ctx")).collect();
    let after = id_by_machine(&wait_exact_and_stable(f, &want, Duration::from_secs(150)).await?);
    wait_health(metrics, 200, "ok", SETTLE).await?;
    for m in &kept {
        ensure!(after.get(m) == before.get(m), "the agent of {m} was replaced across the restart, not revived");
    }
    for m in &joining {
        wait_published(f, "agent-started", m, Duration::from_secs(5)).await?;
    }
    // And events are acted on as before.
    let late = unique("n");
    f.w.sim.put_machine(World::machine(&late, "ctx"));
    let mut want = want;
    want.insert(late, "ctx".to_string());
    wait_exact(f, &want, SETTLE).await?;
    still_serving(f).await?;
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

// ------------------------------------------------------------------ 2. SIGKILL mid-burst

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_killed_mid_burst_restarts_to_one_agent_per_machine() {
    run_fault("plugin SIGKILLed in a 200-machine burst", |f| Box::pin(killed_mid_burst(f))).await
}

async fn killed_mid_burst(f: &mut Fault) -> anyhow::Result<()> {
    const N: usize = 200;
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.w.sim.put_context(f.w.context("burst", &image));
    let machines: Vec<String> = (0..N).map(|_| unique("b")).collect();
    let burst = Instant::now();
    for m in &machines {
        f.w.sim.put_machine(World::machine(m, "burst"));
    }
    // Kill it once a fifth of the agents exist: well inside the burst.
    let deadline = Instant::now() + Duration::from_secs(180);
    let at_kill = loop {
        let agents = agents(&f.w).await?;
        if agents.len() >= N / 5 {
            break agents;
        }
        ensure!(Instant::now() < deadline, "only {} agents after 180 s of the burst", agents.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    f.kill_plugin();
    eprintln!("faults: SIGKILL after {:?} with {} agents", burst.elapsed(), at_kill.len());
    ensure!(at_kill.len() < N, "the burst was over before the kill; nothing was interrupted");
    let running_at_kill: BTreeMap<String, String> =
        id_by_machine(&at_kill.iter().filter(|c| c.state.as_deref() == Some("running")).cloned().collect::<Vec<_>>());

    // While it is dead: machines with and without agents are deleted or leave the
    // context, and new ones join. None of these events reaches the plugin.
    let with_agent: Vec<String> = machines.iter().filter(|m| running_at_kill.contains_key(*m)).cloned().collect();
    let without_agent: Vec<String> = machines.iter().filter(|m| !running_at_kill.contains_key(*m)).cloned().collect();
    ensure!(with_agent.len() >= 15 && without_agent.len() >= 15, "{} with, {} without agent", with_agent.len(), without_agent.len());
    let deleted: BTreeSet<String> = with_agent[..10].iter().chain(&without_agent[..10]).cloned().collect();
    let cleared: BTreeSet<String> = with_agent[10..15].iter().chain(&without_agent[10..15]).cloned().collect();
    for m in &deleted {
        f.w.sim.delete_machine(m);
    }
    for m in &cleared {
        f.w.sim.put_machine(World::machine(m, ""));
    }
    let joined: Vec<String> = (0..10).map(|_| unique("n")).collect();
    for m in &joined {
        f.w.sim.put_machine(World::machine(m, "burst"));
    }

    f.w.start_plugin().await?;
    let restarted = Instant::now();
    let want: BTreeMap<String, String> = machines
        .iter()
        .filter(|m| !deleted.contains(*m) && !cleared.contains(*m))
        .chain(&joined)
        .map(|m| (m.clone(), "burst".to_string()))
        .collect();
    let after = id_by_machine(&wait_exact_and_stable(f, &want, Duration::from_secs(300)).await?);
    eprintln!("faults: {} agents converged {:?} after the restart", want.len(), restarted.elapsed());
    // Agents that ran before the kill and are still wanted were adopted, not restarted.
    let replaced: Vec<&String> =
        running_at_kill.iter().filter(|(m, id)| want.contains_key(*m) && after.get(*m) != Some(*id)).map(|(m, _)| m).collect();
    ensure!(replaced.is_empty(), "healthy agents were replaced by the restart: {replaced:?}");
    still_serving(f).await
}

// ------------------------------------------------------------------ 3. API faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_500s_at_start_are_retried_with_backoff_until_it_recovers() {
    run_fault("API answers 500 while the plugin starts", |f| Box::pin(api_500_at_start(f))).await
}

async fn api_500_at_start(f: &mut Fault) -> anyhow::Result<()> {
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.stop_plugin().await?;
    f.w.sim.put_context(f.w.context("ctx", &image));
    let machines: Vec<String> = (0..3).map(|_| unique("m")).collect();
    for m in &machines {
        f.w.sim.put_machine(World::machine(m, "ctx"));
    }
    f.w.sim.set_api_fault(ApiFault::Status500);
    f.w.start_plugin().await?;
    let faulted = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let plugin = f.w.plugin.as_mut().context("plugin")?;
    ensure!(plugin.is_running(), "the plugin died while the API answered 500");
    let attempts = plugin.stderr_text().matches("full reconcile failed").count();
    ensure!(
        (2..=12).contains(&attempts),
        "{attempts} failed full reconciles in {:?}: want retries (≥ 2), spaced by backoff (≤ 12)",
        faulted.elapsed()
    );
    wait_log(f, &["full reconcile failed", "HTTP 500"], Duration::from_secs(5)).await?;
    ensure!(agents(&f.w).await?.is_empty(), "agents started without a machine listing");
    still_serving(f).await?;
    f.w.sim.set_api_fault(ApiFault::None);
    let recovered = Instant::now();
    wait_exact_and_stable(f, &in_context(&machines, "ctx"), SETTLE).await?;
    eprintln!("faults: converged {:?} after the API recovered", recovered.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_500s_fail_agents_visibly_and_they_start_once_it_recovers() {
    run_fault("machine token fetch answers 500", |f| Box::pin(token_500(f))).await
}

async fn token_500(f: &mut Fault) -> anyhow::Result<()> {
    let (_, first, before) = one_agent_in_ctx(f).await?;
    f.w.sim.set_api_fault(ApiFault::Status500);
    let late: Vec<String> = (0..2).map(|_| unique("m")).collect();
    for m in &late {
        f.w.sim.put_machine(World::machine(m, "ctx"));
    }
    let failed = wait_published(f, "agent-failed", &late[0], SETTLE).await?;
    let error = failed["Object"]["Error"].as_str().unwrap_or_default();
    // The whole API answers 500: the token fetch, or the machine params read beside it,
    // is the one named, whichever failed first.
    let named = error.contains("machine token") || error.contains("machine's params");
    ensure!(named && error.contains("HTTP 500"), "agent-failed should say which dr-provision read got HTTP 500: {error}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failures = published(f, "agent-failed", &late[0]).len();
    ensure!((2..=6).contains(&failures), "{failures} agent-failed events in ~5 s: want retries with backoff");
    ensure!(f.w.plugin.as_mut().context("plugin")?.is_running(), "the plugin died");
    still_serving(f).await?;
    f.w.sim.set_api_fault(ApiFault::None);
    let mut want = in_context(&late, "ctx");
    want.insert(first.clone(), "ctx".to_string());
    let after = id_by_machine(&wait_exact_and_stable(f, &want, SETTLE).await?);
    ensure!(after.get(&first) == before.get(&first), "the agent that ran before the fault was replaced");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_api_after_a_websocket_drop_times_out_and_recovers() {
    run_fault("API hangs after the event stream drops", |f| Box::pin(api_hang(f))).await
}

async fn api_hang(f: &mut Fault) -> anyhow::Result<()> {
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.w.sim.put_context(f.w.context("ctx", &image));
    let (stays, goes) = (unique("s"), unique("g"));
    f.w.sim.put_machine(World::machine(&stays, "ctx"));
    f.w.sim.put_machine(World::machine(&goes, "ctx"));
    let before = id_by_machine(&wait_exact(f, &in_context(&[stays.clone(), goes.clone()], "ctx"), SETTLE).await?);
    let connects = f.w.sim.ws_connects();
    f.w.sim.set_api_fault(ApiFault::Hang);
    f.w.sim.drop_websockets();
    f.w.sim.wait_for("the event stream to reconnect", SETTLE, || (f.w.sim.ws_connects() > connects).then_some(())).await?;
    // The re-list after the reconnect hangs; meanwhile one machine leaves, one joins.
    let joins = unique("j");
    f.w.sim.delete_machine(&goes);
    f.w.sim.put_machine(World::machine(&joins, "ctx"));
    // The plugin keeps answering actions while its API calls hang.
    still_serving(f).await?;
    let (code, status) = tokio::time::timeout(Duration::from_secs(10), f.w.action("agentStatus", json!({})))
        .await
        .context("agentStatus hung with the API")??;
    ensure!(code == 200, "agentStatus: {code} {status}");
    // A hung request must time out and be retried, not wait forever.
    let hung = Instant::now();
    f.w.sim
        .wait_for("a full reconcile to fail on the hung API", Duration::from_secs(75), || {
            f.w.plugin.as_ref().and_then(|p| p.stderr_text().contains("full reconcile failed").then_some(()))
        })
        .await?;
    eprintln!("faults: the hung listing was given up after {:?}", hung.elapsed());
    ensure!(f.w.plugin.as_mut().context("plugin")?.is_running(), "the plugin died on the hung API");
    f.w.sim.set_api_fault(ApiFault::None);
    let want: BTreeMap<String, String> = in_context(&[stays.clone(), joins.clone()], "ctx");
    let after = id_by_machine(&wait_exact_and_stable(f, &want, SETTLE).await?);
    ensure!(after.get(&stays) == before.get(&stays), "the agent of the machine that stayed was replaced");
    Ok(())
}

// ------------------------------------------------------------------ 4. hostile input

/// One raw HTTP/1.1 exchange on the plugin socket: any method, any bytes.
async fn raw_exchange(sock: &Path, request: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(sock).await?;
        stream.write_all(&request).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(30), exchange).await.context("no answer within 30 s")??;
    let text = String::from_utf8_lossy(&reply);
    let status =
        text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("not an HTTP response: {text:.200}"))?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.as_bytes().to_vec()).unwrap_or_default();
    Ok((status, body))
}

fn http_request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_socket_requests_get_clear_errors_and_lose_nothing() {
    run_fault("hostile requests on the plugin socket", |f| Box::pin(hostile_socket_requests(f))).await
}

async fn hostile_socket_requests(f: &mut Fault) -> anyhow::Result<()> {
    let image = f.w.image();
    f.w.upload("plain.tar", &image).await?;
    f.w.sim.put_context(f.w.context("ctx", &image));
    let good = unique("m");
    let good_machine = World::machine(&good, "ctx");
    f.w.sim.put_machine(good_machine.clone());
    let before = id_by_machine(&wait_exact(f, &in_context(std::slice::from_ref(&good), "ctx"), SETTLE).await?);
    let sock = f.w.plugin().to_sock().to_path_buf();
    let mut problems: Vec<String> = Vec::new();

    // (path, method, content type, body, expected code, the message must say)
    let deep_list = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let deep_params = format!(r#"{{"Command":"imageExists","Params":{}1{}}}"#, r#"{"a":"#.repeat(5_000), "}".repeat(5_000)).into_bytes();
    let huge_string = "a".repeat(256 << 10);
    let action = "/api-plugin/v4/action";
    let config = "/api-plugin/v4/config";
    let json = Some("application/json");
    // (path, method, content type, body, status wanted, message wanted)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (action, "POST", json, deep_list.clone(), 400, "recursion limit"),
        (config, "POST", json, deep_list, 400, "recursion limit"),
        (action, "POST", json, deep_params, 400, "recursion limit"),
        (action, "POST", json, b"{\"Command\":\"enginesList\xff\xfe\"}".to_vec(), 400, "not valid JSON"),
        (action, "POST", json, b"\xef\xbb\xbf{\"Command\":\"enginesList\"}".to_vec(), 400, "not valid JSON"),
        (action, "POST", json, Vec::new(), 400, "not valid JSON"),
        (action, "POST", json, b"null".to_vec(), 400, "not an Action"),
        (action, "POST", json, br#"{"Command":null}"#.to_vec(), 400, "not an Action"),
        (action, "POST", json, br#"{"Params":{}}"#.to_vec(), 400, "Command"),
        // Duplicate keys: the last one wins, as in most JSON readers.
        (action, "POST", json, br#"{"Command":"enginesList","Command":"explode"}"#.to_vec(), 404, "unknown action 'explode'"),
        (action, "POST", json, br#"{"Command":"imageExists","Params":"context/image-name=x"}"#.to_vec(), 400, "params must be"),
        (action, "POST", Some("application/jsonx"), br#"{"Command":"enginesList"}"#.to_vec(), 400, "Content-Type"),
        (action, "GET", json, Vec::new(), 405, "takes POST"),
        (action, "PUT", json, br#"{"Command":"enginesList"}"#.to_vec(), 405, "takes POST"),
        (action, "DELETE", None, Vec::new(), 405, "takes POST"),
        (config, "GET", None, Vec::new(), 405, "takes POST"),
        // Near-misses of /stop must not stop the plugin.
        ("/api-plugin/v4/stop/", "POST", json, b"{}".to_vec(), 404, "no such endpoint"),
        ("/api-plugin/v4//stop", "POST", json, b"{}".to_vec(), 404, "no such endpoint"),
        ("/api-plugin/v4/../v4/stop", "POST", json, b"{}".to_vec(), 404, "no such endpoint"),
        ("/API-PLUGIN/v4/stop", "POST", json, b"{}".to_vec(), 404, "no such endpoint"),
        // Config values out of range are refused by name; the running config stays.
        (config, "POST", json, br#"{"context-engines/max-parallel":1e400}"#.to_vec(), 400, "not valid JSON"),
        (config, "POST", json, br#"{"context-engines/max-parallel":0}"#.to_vec(), 400, "context-engines/max-parallel"),
        (config, "POST", json, br#"{"context-engines/max-parallel":-3}"#.to_vec(), 400, "context-engines/max-parallel"),
        (config, "POST", json, br#"{"context-engines/max-parallel":2.5}"#.to_vec(), 400, "context-engines/max-parallel"),
        (config, "POST", json, br#"{"context-engines/endpoints":[5]}"#.to_vec(), 400, "context-engines/endpoints"),
        (config, "POST", json, br#"{"context-engines/plugin-name":{"x":1}}"#.to_vec(), 400, "context-engines/plugin-name"),
        (config, "POST", json, br#"{"context-engines/engine-config":[1]}"#.to_vec(), 400, "context-engines/engine-config"),
    ];
    for (path, method, content_type, body, code, says) in cases {
        let shown = format!("{method} {path} {:.60}", String::from_utf8_lossy(&body));
        match raw_exchange(&sock, http_request(method, path, content_type, &body)).await {
            Ok((got, reply)) => {
                let reply: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
                if got != code || !is_error_json(&reply) || reply["Code"] != code || !reply["Messages"].to_string().contains(says) {
                    problems.push(format!("{shown}: expected {code} saying {says:?}, got {got} {:.300}", reply.to_string()));
                }
            }
            Err(e) => problems.push(format!("{shown}: {e:#}")),
        }
    }
    // A max-parallel too large for a worker pool: refused by name, or accepted and
    // clamped; either way answered, and the plugin still serves.
    let too_many = br#"{"context-engines/max-parallel":18446744073709551615}"#.to_vec();
    match raw_exchange(&sock, http_request("POST", config, json, &too_many)).await {
        Ok((200, _)) => {}
        Ok((got, reply)) => {
            let reply: Value = serde_json::from_slice(&reply).unwrap_or(Value::Null);
            if got != 400 || !reply["Messages"].to_string().contains("context-engines/max-parallel") {
                problems.push(format!("max-parallel 2^64-1: expected 400 naming the param (or 200), got {got} {reply}"));
            }
        }
        Err(e) => problems.push(format!("max-parallel 2^64-1 got no answer (the request handler died): {e:#}")),
    }
    // A JSON content type with parameters is still JSON.
    match raw_exchange(&sock, http_request("POST", action, Some("application/json; charset=utf-8"), br#"{"Command":"enginesList"}"#)).await
    {
        Ok((200, _)) => {}
        other => problems.push(format!("Content-Type with charset: {other:?}")),
    }
    // The good config is restored in full (the refused ones changed nothing, but the
    // too-large max-parallel may have been accepted).
    let (code, body) = f.w.plugin().config(f.w.params()).await?;
    ensure!(code == 200, "restoring the config: {code} {body}");

    // Machine actions with a Model of the wrong type, or hostile params.
    let start_params = json!({"context/name": "ctx", "context/image-name": image});
    let model_cases: Vec<(&str, Value, Value, &str)> = vec![
        ("agentStart", json!([1, 2]), start_params.clone(), "not a machine"),
        ("agentStart", json!({"Uuid": 5}), start_params.clone(), "not a machine"),
        ("agentStart", json!(true), start_params.clone(), "not a machine"),
        ("agentStart", json!({"Uuid": ""}), start_params.clone(), "Uuid"),
        ("agentStop", json!("machine"), json!({"context/name": "ctx"}), "not a machine"),
        // A context object where a machine belongs.
        ("agentStart", f.w.context("ctx", &image), start_params.clone(), "Uuid"),
        // A Uuid a runtime cannot carry in a container name: the error names it.
        ("agentStart", World::machine("bad uuid/1", "ctx"), start_params.clone(), "bad uuid/1"),
        ("agentStop", World::machine("bad uuid/1", "ctx"), json!({"context/name": "ctx"}), "bad uuid/1"),
        // Context names a runtime rejects: the error names them.
        ("agentStart", good_machine.clone(), json!({"context/name": "bad ctx", "context/image-name": image}), "bad ctx"),
        ("agentStart", good_machine.clone(), json!({"context/name": "ctx/../x", "context/image-name": image}), "ctx/../x"),
        ("agentStart", good_machine.clone(), json!({"context/name": "ctx-é", "context/image-name": image}), "ctx-é"),
        ("agentStop", good_machine.clone(), json!({"context/name": "bad ctx"}), "bad ctx"),
        ("agentStart", good_machine.clone(), json!({"context/name": ["ctx"], "context/image-name": image}), "context/name"),
        (
            "agentStart",
            good_machine.clone(),
            json!({"context/name": "ctx", "context/image-name": image, "context/engine": 7}),
            "context/engine",
        ),
    ];
    for (command, model, params, says) in model_cases {
        let shown = format!("{command} Model={:.80} Params={:.80}", model.to_string(), params.to_string());
        match f.w.plugin().action(model, command, params).await {
            Ok((code, body)) => {
                if code != 400 || !is_error_json(&body) || !body["Messages"].to_string().contains(says) {
                    problems.push(format!("{shown}: expected 400 naming {says:?}, got {code} {body}"));
                }
            }
            Err(e) => problems.push(format!("{shown}: {e:#}")),
        }
    }
    // Huge strings in params: an Error, never a crash, never a hang.
    let huge_cases = [
        ("imageExists", json!({}), json!({"context/image-name": huge_string})),
        ("imageRemove", json!({}), json!({"context/image-name": huge_string})),
        ("imageUpload", json!({}), json!({"context/image-name": image, "context/image-path": format!("files/{huge_string}")})),
        ("agentStop", good_machine.clone(), json!({"context/name": "x".repeat(300_000)})),
    ];
    for (command, model, params) in huge_cases {
        match f.w.plugin().action(model, command, params).await {
            Ok((code, body)) if (400..600).contains(&code) && is_error_json(&body) => {}
            // Nothing by that name can exist, so "removed or absent" is a fair answer.
            Ok((200, body)) if matches!(command, "agentStop" | "imageRemove") && body == json!(true) => {}
            Ok((code, body)) => problems.push(format!("{command} with a huge param: {code} {:.300}", body.to_string())),
            Err(e) => problems.push(format!("{command} with a huge param: {e:#}")),
        }
    }

    // A client that sends half a request and stalls does not hold up anyone else.
    let mut stalled = tokio::net::UnixStream::connect(&sock).await?;
    stalled
        .write_all(
            b"POST /api-plugin/v4/action HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"Comm",
        )
        .await?;
    // Many at once, good and bad mixed: every one answered, correctly.
    let plugin = f.w.plugin();
    let answers = futures_util::future::join_all((0..64).map(|i| async move {
        if i % 2 == 0 {
            plugin.post_raw(action, Some("application/json"), b"{\"Command\":".to_vec()).await.map(|(c, _)| (i, c))
        } else {
            plugin.action(json!({}), "agentStatus", json!({})).await.map(|(c, _)| (i, c))
        }
    }))
    .await;
    for answer in answers {
        match answer {
            Ok((i, code)) if code == if i % 2 == 0 { 400 } else { 200 } => {}
            other => problems.push(format!("concurrent request: {other:?}")),
        }
    }
    drop(stalled);

    // Nothing was lost: the plugin runs, the good agent is the same container, and a
    // machine joining now still gets its agent.
    ensure!(f.w.plugin.as_mut().context("plugin")?.is_running(), "the plugin died; problems so far: {problems:#?}");
    still_serving(f).await?;
    let late = unique("m");
    f.w.sim.put_machine(World::machine(&late, "ctx"));
    let after = id_by_machine(&wait_exact_and_stable(f, &in_context(&[good.clone(), late], "ctx"), SETTLE).await?);
    ensure!(after.get(&good) == before.get(&good), "the good machine's agent was replaced");
    ensure!(problems.is_empty(), "{} hostile requests were not answered as they should be:\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_image_paths_and_names_are_refused() {
    run_fault("hostile image paths and names", |f| Box::pin(hostile_image_paths(f))).await
}

async fn hostile_image_paths(f: &mut Fault) -> anyhow::Result<()> {
    let image = f.w.image();
    let webroot = f.w.sim.webroot();
    // Ways out of the webroot that exist on disk and lead to a real archive outside, so
    // following them would load an image.
    let outside: PathBuf = f.w.sim.scratch().join("outside");
    std::fs::create_dir_all(&outside)?;
    std::fs::copy(f.w.fixture("plain.tar"), outside.join("plain.tar"))?;
    std::os::unix::fs::symlink(outside.join("plain.tar"), webroot.join("files/fixtures/link.tar"))?;
    std::os::unix::fs::symlink(&outside, webroot.join("files/linkdir"))?;
    let mut problems = Vec::new();
    // (path, the message must say; None: any Error)
    let cases: Vec<(String, Option<&str>)> = vec![
        ("files/../../etc/passwd".into(), Some("'..'")),
        ("files/fixtures/../fixtures/plain.tar".into(), Some("'..'")),
        ("../".repeat(20) + "etc/passwd", Some("'..'")),
        ("files/fixtures/link.tar".into(), Some("outside RS_WEBROOT")),
        ("files/linkdir/plain.tar".into(), Some("outside RS_WEBROOT")),
        ("/etc/passwd".into(), None),
        ("//etc/passwd".into(), None),
        ("files/%2e%2e/%2e%2e/etc/passwd".into(), None),
        ("files/..%2f..%2fetc%2fpasswd".into(), None),
        ("files/%2E%2E%5C%2E%2E%5Cetc%5Cpasswd".into(), None),
        ("files\\..\\..\\etc\\passwd".into(), None),
        ("file:///etc/passwd".into(), None),
        ("ftp://127.0.0.1/x.tar".into(), None),
        ("files/fixtures/plain.tar\u{0}.png".into(), None),
        ("http://127.0.0.1:1/plain.tar".into(), Some("127.0.0.1:1")),
        (format!("{}/files/../../etc/passwd", f.w.sim.file_url()), None),
        ("/".into(), None),
        (" ".into(), None),
    ];
    for (path, says) in cases {
        match f.w.action("imageUpload", json!({"context/image-name": image, "context/image-path": path})).await {
            Ok((code, body)) => {
                let ok =
                    (400..600).contains(&code) && is_error_json(&body) && says.is_none_or(|s| body["Messages"].to_string().contains(s));
                if !ok {
                    problems.push(format!(
                        "imageUpload {path:?}: expected an Error{}, got {code} {body}",
                        says.map(|s| format!(" saying {s:?}")).unwrap_or_default()
                    ));
                }
            }
            Err(e) => problems.push(format!("imageUpload {path:?}: {e:#}")),
        }
    }
    let (code, body) = f.w.action("imageExists", json!({"context/image-name": image})).await?;
    ensure!(code == 200 && body == json!(false), "an escaping path loaded the image: imageExists {code} {body}");
    // Image names a runtime rejects: an Error naming the engine, from a good archive.
    for bad in ["UPPER/Case:1", "with space:1", "x:tag:extra", "-leading:1", "a@sha256:zz", "../../x:1", ""] {
        let (code, body) =
            f.w.action("imageUpload", json!({"context/image-name": bad, "context/image-path": "files/fixtures/plain.tar"})).await?;
        // Refused by the plugin's own reference check (naming the param) or by the
        // runtime (naming the engine); either way, named.
        let says = "context/image-name' or 'docker'";
        let messages = body["Messages"].to_string();
        let named = messages.contains("context/image-name") || (!bad.is_empty() && messages.contains("'docker'"));
        if !((400..600).contains(&code) && is_error_json(&body) && named) {
            problems.push(format!("imageUpload as {bad:?}: expected an Error naming {says}, got {code} {body}"));
        }
    }
    // Where a malformed name was accepted anyway, docker tagged something: remove it.
    let _ = f.w.runtime.remove_image("x:extra", None::<bollard::query_parameters::RemoveImageOptions>, None).await;
    // Still serving, and the good path still works.
    still_serving(f).await?;
    f.w.upload("plain.tar", &image).await?;
    ensure!(problems.is_empty(), "{} hostile image inputs were not refused as they should be:\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_machines_and_contexts_fail_by_name_beside_good_ones() {
    run_fault("odd machine and context objects", |f| Box::pin(odd_objects(f))).await
}

async fn odd_objects(f: &mut Fault) -> anyhow::Result<()> {
    let (image, first, before) = one_agent_in_ctx(f).await?;

    // Meta with values of every JSON type: read leniently, the machine gets its agent.
    let odd_meta = unique("meta");
    let mut machine = World::machine(&odd_meta, "ctx");
    machine["Meta"] = json!({"n": 1, "z": null, "o": {"x": [1, 2]}, "b": true, "BaseContext": 7});
    f.w.sim.put_machine(machine);
    // Fields missing, extra or unknown: no agent, nothing else disturbed.
    let bare = unique("bare");
    f.w.sim.put_machine(json!({"Uuid": bare}));
    let ghost = unique("ghost");
    f.w.sim.put_machine(World::machine(&ghost, "no-such-context"));
    let extra = unique("extra");
    let mut machine = World::machine(&extra, "ctx");
    machine["Unexpected"] = json!({"deep": [[[[1]]]]});
    machine["Name"] = json!("x".repeat(100_000));
    f.w.sim.put_machine(machine);
    // Names a runtime rejects: each fails by name, the rest is unaffected.
    let mut named_failures = Vec::new();
    for context in ["bad ctx", "bad/ctx", "ctx-é", "ctx\u{0}"] {
        f.w.sim.put_context(f.w.context(context, &image));
        let m = unique("n");
        f.w.sim.put_machine(World::machine(&m, context));
        named_failures.push((m, context.to_string()));
    }
    let bad_uuid = format!("bad uuid/{}", unique(""));
    f.w.sim.put_machine(World::machine(&bad_uuid, "ctx"));
    // Contexts whose Image escapes the file server, or whose engine does not exist.
    let escape = unique("esc");
    f.w.sim.put_context(f.w.context("escape", "../../../../etc/passwd"));
    f.w.sim.put_machine(World::machine(&escape, "escape"));
    let no_engine = unique("noeng");
    let mut context = f.w.context("noengine", &image);
    context["Meta"]["context-engine"] = json!("no-such-engine");
    f.w.sim.put_context(context);
    f.w.sim.put_machine(World::machine(&no_engine, "noengine"));
    let no_image = unique("noimg");
    f.w.sim.put_context(f.w.context("noimage", ""));
    f.w.sim.put_machine(World::machine(&no_image, "noimage"));
    // And a good machine after all of them.
    let last = unique("m");
    f.w.sim.put_machine(World::machine(&last, "ctx"));

    let want = in_context(&[first.clone(), odd_meta.clone(), extra.clone(), last.clone()], "ctx");
    let after = id_by_machine(&wait_exact_and_stable(f, &want, SETTLE).await?);
    ensure!(after.get(&first) == before.get(&first), "the first machine's agent was replaced");
    // Each failure is reported, naming what is wrong.
    let mut problems = Vec::new();
    for (machine, context) in &named_failures {
        let shown = context.replace('\u{0}', "\\u0000");
        if let Err(e) = wait_log(f, &[machine.as_str(), "container name"], Duration::from_secs(20)).await {
            problems.push(format!("machine {machine} in context {shown:?}: {e:#}"));
        }
    }
    if let Err(e) = wait_log(f, &[bad_uuid.as_str(), "container name"], Duration::from_secs(20)).await {
        problems.push(format!("machine {bad_uuid:?}: {e:#}"));
    }
    let escaping = "'../../../../etc/passwd' is not a valid reference";
    for (machine, says) in [(&escape, escaping), (&no_engine, "no-such-engine"), (&no_image, "has no Image")] {
        match wait_published(f, "agent-failed", machine, Duration::from_secs(20)).await {
            Ok(event) if event["Object"]["Error"].to_string().contains(says) => {}
            Ok(event) => problems.push(format!("agent-failed for {machine} should say {says:?}: {event}")),
            Err(e) => {
                // A failure that never reaches start() is at least logged by name.
                if wait_log(f, &[machine.as_str(), says], Duration::from_secs(1)).await.is_err() {
                    problems.push(format!("no agent-failed event nor log line for {machine} saying {says:?}: {e:#}"));
                }
            }
        }
    }
    still_serving(f).await?;
    ensure!(problems.is_empty(), "{} failures were not reported by name:\n{}", problems.len(), problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_objects_do_not_block_other_machines() {
    run_fault("wrongly typed machine and context objects", |f| Box::pin(wrongly_typed_objects(f))).await
}

async fn wrongly_typed_objects(f: &mut Fault) -> anyhow::Result<()> {
    let (_, first, before) = one_agent_in_ctx(f).await?;

    // Objects whose fields have the wrong JSON type: events whose Object the plugin
    // cannot read, and which then sit in every machine/context listing too.
    let poisoned = [
        json!({"Uuid": unique("p"), "Context": 5}),
        json!({"Uuid": unique("p"), "Context": null}),
        json!({"Uuid": unique("p"), "Context": ["ctx"]}),
        json!({"Uuid": unique("p"), "Context": "ctx", "Meta": "not a map"}),
    ];
    for machine in &poisoned {
        f.w.sim.put_machine(machine.clone());
    }
    f.w.sim.put_context(json!({"Name": "typo", "Engine": 7, "Image": {"x": 1}}));
    let last = unique("m");
    f.w.sim.put_machine(World::machine(&last, "ctx"));

    // The good machines are served regardless: the one that ran keeps its agent, the
    // one that came after the bad objects gets one.
    let want = in_context(&[first.clone(), last.clone()], "ctx");
    let outcome = wait_exact(f, &want, Duration::from_secs(45)).await;
    let mut problems = Vec::new();
    match outcome {
        Ok(agents) => {
            if id_by_machine(&agents).get(&first) != before.get(&first) {
                problems.push("the first machine's agent was replaced".to_string());
            }
        }
        Err(e) => problems.push(format!(
            "a good machine that came after the badly typed objects got no agent: {e:#}\n\
             (stderr says: {})",
            f.stderr_all()
                .lines()
                .filter(|l| l.contains("full reconcile failed") || l.contains("unreadable"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        )),
    }
    // Each bad object is reported by its key.
    for machine in &poisoned {
        let uuid = machine["Uuid"].as_str().unwrap_or_default();
        if wait_log(f, &[uuid], Duration::from_secs(5)).await.is_err() {
            problems.push(format!("nothing logged names the unreadable machine {uuid} ({machine})"));
        }
    }
    if wait_log(f, &["typo"], Duration::from_secs(5)).await.is_err() {
        problems.push("nothing logged names the unreadable context 'typo'".to_string());
    }
    still_serving(f).await?;
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_frames_are_ignored_and_lose_nothing() {
    run_fault("hostile websocket frames", |f| Box::pin(hostile_frames(f))).await
}

/// Frames dr-provision would never send, on the live event stream: each is ignored, or,
/// for an event whose Object cannot be read, answered with a full reconcile (an unknown
/// Action with a readable machine is taken as that machine's state, like an update). The stream
/// stays up through all of them, events after them are still served, and a frame over
/// the websocket size limit costs one reconnect, nothing more.
async fn hostile_frames(f: &mut Fault) -> anyhow::Result<()> {
    let (_, first, before) = one_agent_in_ctx(f).await?;
    f.w.sim.wait_for("both subscriptions", SETTLE, || (f.w.sim.registrations().len() >= 2).then_some(())).await?;
    let connects = f.w.sim.ws_connects();

    let frames: Vec<(&str, Message)> = vec![
        ("not JSON", Message::text("this is not json {")),
        ("an empty object", Message::text("{}")),
        ("an array", Message::text("[1,2,3]")),
        ("null", Message::text("null")),
        ("a string", Message::text("\"machines.update\"")),
        ("no Action or Key", Message::text(r#"{"Type":"machines"}"#)),
        ("no Type", Message::text(json!({"Action": "update", "Key": first, "Object": {"Uuid": first}}).to_string())),
        ("no Key", Message::text(json!({"Type": "machines", "Action": "update", "Object": {"Uuid": first}}).to_string())),
        ("Type of the wrong JSON type", Message::text(json!({"Type": 7, "Action": "update", "Key": first}).to_string())),
        ("an unknown Type", Message::text(json!({"Type": "widgets", "Action": "create", "Key": "w", "Object": {}}).to_string())),
        (
            "an unknown Action",
            Message::text(
                json!({"Type": "machines", "Action": "explode", "Key": first, "Object": {"Uuid": first, "Context": "ctx"}}).to_string(),
            ),
        ),
        (
            "an unreadable Object",
            Message::text(json!({"Type": "machines", "Action": "update", "Key": first, "Object": "garbage"}).to_string()),
        ),
        ("JSON nested 100,000 deep", Message::text(format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)))),
        ("4 MiB of text", Message::text(format!("{{\"Type\":\"machines\",\"junk\":\"{}\"}}", "x".repeat(4 << 20)))),
        ("a binary frame", Message::binary((0..=255u8).cycle().take(70_000).collect::<Vec<u8>>())),
        ("a ping", Message::Ping(b"hello".to_vec().into())),
    ];
    for (_, frame) in &frames {
        f.w.sim.send_raw_frame(frame.clone());
    }
    // A real event after the garbage on the same connection: still served.
    let second = unique("m");
    f.w.sim.put_machine(World::machine(&second, "ctx"));
    let want = in_context(&[first.clone(), second.clone()], "ctx");
    let after = id_by_machine(&wait_exact_and_stable(f, &want, SETTLE).await?);
    ensure!(after.get(&first) == before.get(&first), "the first machine's agent was replaced by garbage frames");
    ensure!(
        f.w.sim.ws_connects() == connects,
        "the event stream reconnected {} times over frames it should have ignored",
        f.w.sim.ws_connects() - connects
    );
    let ignored = f.stderr_all().matches("ignoring a websocket frame that is not an Event").count();
    ensure!(ignored >= 11, "only {ignored} of the malformed frames were reported as ignored");
    wait_log(f, &[first.as_str(), "unreadable Object"], Duration::from_secs(10)).await?;

    // Over tungstenite's limits (16 MiB a frame, 64 MiB a message): the plugin drops the
    // connection rather than buffer it, reconnects, re-lists, and serves the next event.
    f.w.sim.send_raw_frame(Message::text("y".repeat(65 << 20)));
    f.w.sim.wait_for("the event stream to reconnect", SETTLE, || (f.w.sim.ws_connects() > connects).then_some(())).await?;
    let third = unique("m");
    f.w.sim.put_machine(World::machine(&third, "ctx"));
    let want = in_context(&[first.clone(), second.clone(), third.clone()], "ctx");
    let last = id_by_machine(&wait_exact_and_stable(f, &want, SETTLE).await?);
    ensure!(last.get(&first) == before.get(&first) && last.get(&second) == after.get(&second), "a reconnect replaced running agents");
    still_serving(f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_runtime_fails_calls_within_its_timeout() {
    run_fault("a runtime that hangs", |f| Box::pin(hanging_runtime(f))).await
}

/// A runtime that accepts connections and never answers, behind the `podman` engine
/// (`request-timeout-secs: 2`): each call on it fails within its timeout, naming the
/// engine, instead of holding the machine's lock for the default 120 s; a second call
/// fails just as soon (the lock was freed); docker beside it is unaffected. A timeout the
/// plugin cannot use is refused by name and the previous config stays.
async fn hanging_runtime(f: &mut Fault) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(15);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut params = f.w.params();
    params["context-engines/engine-config"] = json!({"podman": {"host": format!("tcp://127.0.0.1:{port}"), "request-timeout-secs": 2}});
    let plugin = f.w.plugin.as_ref().context("no plugin process")?;
    let (code, body) = plugin.config(params.clone()).await?;
    ensure!(code == 200, "config with a 2 s timeout: {code} {body}");

    let (image, first, _) = one_agent_in_ctx(f).await?;
    let machine = World::machine(&unique("h"), "");
    f.w.sim.put_machine(machine.clone());
    let mut problems = Vec::new();
    for attempt in 1..=2 {
        let started = Instant::now();
        let start = json!({"context/name": "hung", "context/image-name": image, "context/engine": "podman"});
        let outcome = tokio::time::timeout(LIMIT, f.w.machine_action(&machine, "agentStart", start)).await;
        match outcome {
            Err(_) => problems.push(format!("agentStart #{attempt} on the hanging runtime took more than {LIMIT:?}")),
            Ok(Err(e)) => problems.push(format!("agentStart #{attempt}: {e:#}")),
            Ok(Ok((code, body))) => {
                let says = body["Messages"].to_string();
                if code < 500 || !says.contains("'podman'") || !is_error_json(&body) {
                    problems.push(format!(
                        "agentStart #{attempt} ({:?}): expected a 5xx Error naming 'podman', got {code} {body}",
                        started.elapsed()
                    ));
                }
            }
        }
    }
    // docker beside it: the running agent stays, a new one starts.
    let second = unique("m");
    f.w.sim.put_machine(World::machine(&second, "ctx"));
    wait_exact(f, &in_context(&[first.clone(), second.clone()], "ctx"), SETTLE).await?;

    params["context-engines/engine-config"]["podman"]["request-timeout-secs"] = json!("soon");
    let (code, body) = plugin.config(params).await?;
    if !(code >= 400 && is_error_json(&body) && body["Messages"].to_string().contains("request-timeout-secs")) {
        problems.push(format!("a timeout of \"soon\" should be refused naming request-timeout-secs: {code} {body}"));
    }
    still_serving(f).await?;
    holder.abort();
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_replaced_within_the_silence_limit() {
    run_fault("a websocket whose peer stops answering", |f| Box::pin(silent_websocket(f))).await
}

/// dr-provision vanishes without a FIN: its websocket stops sending and answering pings
/// but stays open. The plugin notices within its 65 s silence limit (pings it sends do
/// not count as hearing anything), reconnects, relists, and serves events again.
async fn silent_websocket(f: &mut Fault) -> anyhow::Result<()> {
    const LIMIT: Duration = Duration::from_secs(65 + 15);
    let (_, first, mut want) = one_agent_in_ctx(f).await?;
    let connects = f.w.sim.ws_connects();
    let registered = f.w.sim.registrations().len();
    let frozen = Instant::now();
    f.w.sim.freeze_websockets();
    f.w.sim.wait_for("a new websocket connection", LIMIT, || (f.w.sim.ws_connects() > connects).then_some(())).await?;
    let took = frozen.elapsed();
    // An event is heard once the new connection has registered for it (as with
    // dr-provision, which drops events for topics not yet registered).
    f.w.sim
        .wait_for("the new connection's register frames", SETTLE, || (f.w.sim.registrations().len() >= registered + 2).then_some(()))
        .await?;
    ensure!(took >= Duration::from_secs(40), "reconnected after {took:?}: sooner than any silence limit, so for another reason");
    println!("silent websocket replaced after {took:?}");
    let second = unique("m");
    f.w.sim.put_machine(World::machine(&second, "ctx"));
    want.insert(second, "ctx".to_string());
    ensure!(want.contains_key(&first));
    wait_exact_and_stable(f, &want.keys().map(|m| (m.clone(), "ctx".to_string())).collect(), SETTLE).await?;
    wait_log(f, &["no frame from dr-provision for 65s"], Duration::from_secs(5)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_whose_listing_hangs_delays_only_its_own_machines() {
    run_fault("a runtime whose container listing hangs", |f| Box::pin(hanging_listing(f))).await
}

/// Behind the `podman` engine, a proxy to dockerd that answers everything but, from some
/// point on, never answers `GET /containers/json` ("docker ps hangs"). After a
/// reconnect, whose relist asks every engine, the other engine's machines and every
/// event keep flowing; the hung listing ends at the engine's request timeout, reported
/// by name; machines of the hung engine still settle.
async fn hanging_listing(f: &mut Fault) -> anyhow::Result<()> {
    const TIMEOUT_SECS: u64 = 20;
    let proxy = ce_tests::stall_proxy::StallProxy::start(&f.w.sim.scratch().join("stall.sock"), docker_sock_path())?;
    let mut params = f.w.params();
    params["context-engines/engine-config"]["podman"] = json!({"host": proxy.host(), "request-timeout-secs": TIMEOUT_SECS});
    let (code, body) = f.w.plugin().config(params).await?;
    ensure!(code == 200, "config: {code} {body}");
    let (image, first, _) = one_agent_in_ctx(f).await?;
    let mut slow = f.w.context("slow", &image);
    slow["Meta"]["context-engine"] = json!("podman");
    f.w.sim.put_context(slow);
    let behind = unique("p");
    f.w.sim.put_machine(World::machine(&behind, "slow"));
    let mut want = in_context(std::slice::from_ref(&first), "ctx");
    want.insert(behind.clone(), "slow".to_string());
    wait_exact(f, &want, SETTLE).await?;

    proxy.set_stall(true);
    f.w.sim.drop_websockets();
    f.w.sim.wait_for("a stalled listing", SETTLE, || (proxy.stalled() > 0).then_some(())).await?;
    let stalled_at = Instant::now();
    // Events flow while the listing hangs: a new docker machine gets its agent, and the
    // podman machine leaving its Context loses its agent.
    let second = unique("m");
    f.w.sim.put_machine(World::machine(&second, "ctx"));
    f.w.sim.put_machine(World::machine(&behind, ""));
    want.insert(second.clone(), "ctx".to_string());
    want.remove(&behind);
    wait_exact(f, &want, Duration::from_secs(TIMEOUT_SECS / 2)).await.context("while the podman listing hangs")?;
    ensure!(stalled_at.elapsed() < Duration::from_secs(TIMEOUT_SECS), "converged only after the listing timed out");
    wait_log(f, &["cannot list agents of engine 'podman'"], Duration::from_secs(TIMEOUT_SECS + 20)).await?;
    proxy.set_stall(false);
    let third = unique("p");
    f.w.sim.put_machine(World::machine(&third, "slow"));
    want.insert(third, "slow".to_string());
    wait_exact_and_stable(f, &want, SETTLE).await?;
    still_serving(f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_during_a_burst_leaves_no_half_started_agent() {
    run_fault("/stop during a 100-machine burst", |f| Box::pin(stop_mid_burst(f))).await
}

/// `/stop` while 100 machines are being started: the plugin lets the starts under way
/// finish (up to 10 s), exits 0, and leaves no container created but never started;
/// the next run starts exactly the rest.
async fn stop_mid_burst(f: &mut Fault) -> anyhow::Result<()> {
    const N: usize = 100;
    let (_, first, _) = one_agent_in_ctx(f).await?;
    let mut machines = vec![first];
    for _ in 0..N {
        let uuid = unique("b");
        f.w.sim.put_machine(World::machine(&uuid, "ctx"));
        machines.push(uuid);
    }
    f.w.sim
        .wait_for("a few agents of the burst", SETTLE, || {
            let published = f.w.sim.published().into_iter().filter(|e| e["Action"] == "agent-started").count();
            (published >= 5).then_some(())
        })
        .await?;
    f.retire_output();
    let plugin = f.w.plugin.take().context("no plugin process")?;
    let exit = plugin.stop().await?;
    ensure!(exit.success(), "the plugin exited with {exit}");
    let half_started: Vec<String> = agents(&f.w)
        .await?
        .into_iter()
        .filter(|c| c.state.as_ref().is_some_and(|s| *s == "created"))
        .flat_map(|c| c.names.unwrap_or_default())
        .collect();
    ensure!(half_started.is_empty(), "containers created but never started after /stop: {half_started:?}");
    f.w.start_plugin().await?;
    wait_exact_and_stable(f, &in_context(&machines, "ctx"), Duration::from_secs(300)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_stop_is_not_kept_waiting_by_a_slow_image_download() {
    run_fault("agentStop during a slow-drip Imagepull", |f| Box::pin(stop_during_slow_pull(f))).await
}

/// A Context whose `Imagepull` server sends 64 KiB of the archive and then nothing: the
/// start's download runs without the machine's lock, so `agentStop` for that machine
/// answers at once instead of after the download's 120 s idle timeout; the machine
/// leaving the Context meanwhile leaves nothing behind.
async fn stop_during_slow_pull(f: &mut Fault) -> anyhow::Result<()> {
    let archive = std::fs::read(f.w.fixture("plain.tar"))?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&served);
    let drip = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = vec![0u8; 4096];
            let _ = socket.read(&mut head).await;
            let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", archive.len());
            let _ = socket.write_all(header.as_bytes()).await;
            let _ = socket.write_all(&archive[..archive.len().min(64 * 1024)]).await;
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
    let image = format!("{}-drip", f.w.image());
    let mut ctx = f.w.context("drip", &image);
    ctx["Meta"]["Imagepull"] = json!(format!("http://127.0.0.1:{port}/plain.tar"));
    f.w.sim.put_context(ctx);
    let uuid = unique("d");
    let machine = World::machine(&uuid, "drip");
    f.w.sim.put_machine(machine.clone());
    f.w.sim.wait_for("the download to start", SETTLE, || (served.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())).await?;
    let asked = Instant::now();
    let outcome =
        tokio::time::timeout(Duration::from_secs(10), f.w.machine_action(&machine, "agentStop", json!({"context/name": "drip"}))).await;
    let took = asked.elapsed();
    let (code, body) = outcome.map_err(|_| anyhow::anyhow!("agentStop waited more than 10 s behind the download"))??;
    ensure!(code == 200, "agentStop: {code} {body}");
    println!("agentStop answered in {took:?} while the download stalled");
    f.w.sim.put_machine(World::machine(&uuid, ""));
    ensure!(agents(&f.w).await?.is_empty(), "an agent exists although its image never arrived");
    still_serving(f).await?;
    drip.abort();
    Ok(())
}
