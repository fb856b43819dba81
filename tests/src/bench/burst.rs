//! (2) Burst convergence: N machines enter a Context through simulator events, and the
//! time until all N agents run; then they leave (Context cleared) until none remain.
//! Baselines, measured the same way (polling the runtime by label) in the same run:
//! (a) a bollard loop with the plugin's concurrency, (b) a `docker run -d` loop through
//! `xargs -P` with the same concurrency. Also the plugin's peak RSS during the burst and
//! its RSS with N agents managed (reported under 5. memory).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder};
use ce_tests::world::{World, list_containers, unique};
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::{AGENT_PATH, BENCH_LABEL, Config, Figure, IMAGE, RssSampler, median, steady_rss};

const SECTION: u8 = 2;
/// The plugin's (and docker's) stop grace period, so baselines stop the same way.
const STOP_GRACE_SECS: i32 = 10;
const POLL: Duration = Duration::from_millis(250);

/// Times of one phase (enter or leave) per method, in seconds.
#[derive(Default)]
struct Times {
    plugin: Vec<f64>,
    bollard: Vec<f64>,
    cli: Vec<f64>,
}

#[derive(Default)]
struct Size {
    enter: Times,
    leave: Times,
    idle_rss: Vec<f64>,
    peak_rss: Vec<f64>,
    managed_rss: Vec<f64>,
    failures: usize,
    last_failure: Option<String>,
    error: Option<String>,
    slowest_list_ms: u64,
}

pub async fn run(config: &Config) -> Vec<Figure> {
    let (sizes, repeats) = match (config.list("burst-sizes"), config.list("burst-repeats")) {
        (Ok(s), Ok(r)) => (s, r),
        (Err(e), _) | (_, Err(e)) => return vec![Figure::missing(SECTION, "burst", e)],
    };
    let engine = match config.get::<String>("burst-engine") {
        Ok(engine) => engine,
        Err(e) => return vec![Figure::missing(SECTION, "burst", e)],
    };
    let mut figures = Vec::new();
    for (i, n) in sizes.iter().copied().enumerate() {
        let wanted = repeats.get(i).or(repeats.last()).copied().unwrap_or(1).max(1);
        if i > 0 && !config.time_left() {
            figures.push(Figure::missing(SECTION, format!("burst {n}"), "skipped: time budget spent (--budget-min)"));
            continue;
        }
        let size = match super::world(&engine, config.max_parallel).await {
            Ok((mut world, _)) => {
                let size = measure(&world, &engine, n, wanted, config).await;
                super::cleanup(&mut world).await;
                let label = format!("{BENCH_LABEL}={}", world.plugin_name);
                let removing = remove_labelled(&world.runtime, super::runtime_sock(&engine), &label);
                if tokio::time::timeout(Duration::from_secs(300), removing).await.is_err() {
                    eprintln!("ce-bench: removing the burst's baseline containers timed out");
                }
                size
            }
            Err(e) => Size { error: Some(format!("{e:#}")), ..Size::default() },
        };
        figures.extend(size_figures(n, &engine, wanted, config.max_parallel, &size));
    }
    figures
}

async fn measure(world: &World, engine: &str, n: usize, wanted: usize, config: &Config) -> Size {
    let mut size = Size::default();
    let slowest = std::sync::atomic::AtomicU64::new(0);
    if let Err(e) = repeat(world, engine, n, wanted, config, &mut size, &slowest).await {
        size.error = Some(format!("{e:#}"));
    }
    size.slowest_list_ms = slowest.into_inner();
    size
}

/// Where one burst runs: the runtime's socket, its CLI, and the image as it names it.
struct Target<'a> {
    world: &'a World,
    sock: &'static str,
    cli: &'static str,
    image: String,
    /// Machines in the burst: phases and listings are bounded by it.
    size: usize,
    /// The slowest listing while polling, in ms: the resolution of the times measured.
    slowest_list: &'a std::sync::atomic::AtomicU64,
}

/// The bound of one phase of a burst of `n` (the same for every method and for
/// entering and leaving): 60 s plus 0.3 s per machine.
fn phase_limit(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(300) * n as u32
}

async fn repeat(
    world: &World,
    engine: &str,
    n: usize,
    wanted: usize,
    config: &Config,
    size: &mut Size,
    slowest: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    world.upload("plain.tar", IMAGE).await?;
    let target = Target {
        world,
        sock: super::runtime_sock(engine),
        cli: if engine == "podman" { "podman" } else { "docker" },
        image: super::start::resolve_image(&world.runtime, IMAGE).await?,
        size: n,
        slowest_list: slowest,
    };
    let t = &target;
    let pid = super::pid_of(world.plugin())?;
    let p = config.max_parallel;
    let limit = phase_limit(n) + Duration::from_secs(30);
    for rep in 0..wanted {
        if rep > 0 && !config.time_left() {
            break;
        }
        let context = unique("bb");
        world.sim.put_context(world.context(&context, IMAGE));
        let seed = rep_seed();
        let uuids: Vec<String> = (0..n).map(|i| format!("{seed:08x}-0000-4000-8000-{i:012x}")).collect();

        // The plugin: machines enter through events; the reconciler does the rest.
        super::runtime_healthy(&world.runtime, &t.image).await?;
        size.idle_rss.push(steady_rss(pid).await?);
        let (failed_before, _) = super::agent_failures(world);
        let label = format!("drp.plugin={}", world.plugin_name);
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        for uuid in &uuids {
            world.sim.put_machine(World::machine(uuid, &context));
        }
        size.enter.plugin.push(converge(t, &label, n, started).await?);
        size.peak_rss.push(sampler.stop());
        size.managed_rss.push(steady_rss(pid).await?);
        let started = Instant::now();
        for uuid in &uuids {
            world.sim.put_machine(World::machine(uuid, ""));
        }
        size.leave.plugin.push(converge(t, &label, 0, started).await?);
        let (failed_after, last) = super::agent_failures(world);
        size.failures += failed_after - failed_before;
        size.last_failure = last.or(size.last_failure.take());

        // (a) bollard, same concurrency, same container config.
        super::runtime_healthy(&world.runtime, &t.image).await?;
        let label = format!("{BENCH_LABEL}={}", world.plugin_name);
        let started = Instant::now();
        let creating = futures_util::stream::iter(uuids.iter())
            .map(|uuid| create_start(&world.runtime, uuid, &context, floor_body(t, uuid, &context)))
            .buffer_unordered(p)
            .collect::<Vec<_>>();
        let both = async { Ok(tokio::join!(creating, converge(t, &label, n, started))) };
        let (results, converged) = super::bounded("the bollard loop", limit, both).await?;
        first_error(results)?;
        size.enter.bollard.push(converged?);
        let started = Instant::now();
        let stopping = futures_util::stream::iter(uuids.iter())
            .map(|uuid| stop_remove(&world.runtime, format!("drp-{context}-{uuid}")))
            .buffer_unordered(p)
            .collect::<Vec<_>>();
        let both = async { Ok(tokio::join!(stopping, converge(t, &label, 0, started))) };
        let (results, converged) = super::bounded("the bollard loop", limit, both).await?;
        first_error(results)?;
        size.leave.bollard.push(converged?);

        // (b) the runtime's CLI, as an operator would script it.
        super::runtime_healthy(&world.runtime, &t.image).await?;
        let started = Instant::now();
        let docker_run = docker_run_args(t, &context);
        let run = xargs(&uuids, p, &docker_run, limit);
        let (ran, converged) = tokio::join!(run, converge(t, &label, n, started));
        ran?;
        size.enter.cli.push(converged?);
        let cli = t.cli;
        let stop = format!("{cli} stop -t {STOP_GRACE_SECS} drp-{context}-$0 >/dev/null && {cli} rm drp-{context}-$0 >/dev/null");
        let started = Instant::now();
        let script = ["sh".to_string(), "-c".to_string(), stop];
        let run = xargs(&uuids, p, &script, limit);
        let (ran, converged) = tokio::join!(run, converge(t, &label, 0, started));
        ran?;
        size.leave.cli.push(converged?);
    }
    Ok(())
}

fn rep_seed() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or_default()
}

/// Seconds from `started` until exactly `n` containers with `label` exist and run;
/// fails on a timeout, or when more than `n` are seen while entering (duplicates).
async fn converge(t: &Target<'_>, label: &str, n: usize, started: Instant) -> anyhow::Result<f64> {
    let timeout = phase_limit(t.size);
    loop {
        let listing = list_containers(t.sock, label);
        // Podman's list slows down with every container (tens of seconds at 1000).
        let list_limit = Duration::from_secs(30) + Duration::from_millis(100) * t.size as u32;
        let asked = Instant::now();
        let found = super::bounded("listing containers", list_limit, listing).await?;
        t.slowest_list.fetch_max(asked.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
        let running = found.iter().filter(|c| c.state.as_deref() == Some("running")).count();
        if n > 0 && found.len() > n {
            bail!("{} containers with {label} where {n} were wanted (duplicates)", found.len());
        }
        if found.len() == n && running == n {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > timeout {
            let (failed, last) = super::agent_failures(t.world);
            bail!(
                "{label}: {} containers ({running} running) after {timeout:?}, wanted {n}; agent-failed events: {failed}{}",
                found.len(),
                last.map(|l| format!(" (last: {l})")).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

fn first_error(results: Vec<anyhow::Result<()>>) -> anyhow::Result<()> {
    let failed = results.iter().filter(|r| r.is_err()).count();
    match results.into_iter().find_map(Result::err) {
        Some(e) => Err(e.context(format!("{failed} of the baseline's operations failed"))),
        None => Ok(()),
    }
}

/// The floor's container: no `drp.plugin` label, so the plugin never takes it for its own.
fn floor_body(t: &Target<'_>, uuid: &str, context: &str) -> ContainerCreateBody {
    let world = t.world;
    let labels = HashMap::from([
        ("drp.machine".to_string(), uuid.to_string()),
        ("drp.context".to_string(), context.to_string()),
        ("drp.engine".to_string(), world.engine.clone()),
        ("drp.image".to_string(), IMAGE.to_string()),
        (BENCH_LABEL.to_string(), world.plugin_name.clone()),
    ]);
    super::start::floor_body(world, &t.image, uuid, context, labels)
}

async fn create_start(runtime: &Docker, uuid: &str, context: &str, body: ContainerCreateBody) -> anyhow::Result<()> {
    let name = format!("drp-{context}-{uuid}");
    let options = CreateContainerOptionsBuilder::new().name(&name).build();
    let created = runtime.create_container(Some(options), body).await.with_context(|| format!("creating {name}"))?;
    runtime.start_container(&created.id, None).await.with_context(|| format!("starting {name}"))
}

async fn stop_remove(runtime: &Docker, name: String) -> anyhow::Result<()> {
    let options = StopContainerOptionsBuilder::new().t(STOP_GRACE_SECS).build();
    runtime.stop_container(&name, Some(options)).await.with_context(|| format!("stopping {name}"))?;
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    runtime.remove_container(&name, Some(options)).await.with_context(|| format!("removing {name}"))
}

/// `docker run -d` (or `podman run -d`) with the same config as the engine's (the
/// uuid comes in as `{}`).
fn docker_run_args(t: &Target<'_>, context: &str) -> Vec<String> {
    let world = t.world;
    let mut args: Vec<String> = [t.cli, "run", "-d", "--name"].map(String::from).to_vec();
    args.push(format!("drp-{context}-{{}}"));
    for label in [
        "drp.machine={}".to_string(),
        format!("drp.context={context}"),
        format!("drp.engine={}", world.engine),
        format!("drp.image={IMAGE}"),
        format!("{BENCH_LABEL}={}", world.plugin_name),
    ] {
        args.extend(["--label".to_string(), label]);
    }
    for env in [
        "RS_UUID={}".to_string(),
        "RS_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef".to_string(),
        format!("RS_CONTEXT={context}"),
        format!("RS_ENDPOINTS={}", world.sim.file_url()),
        AGENT_PATH.to_string(),
    ] {
        args.extend(["-e".to_string(), env]);
    }
    args.extend(
        [
            "--network",
            "host",
            "--restart",
            "unless-stopped",
            "-v",
            &format!("{}:/usr/bin/drpcli:ro", world.fixtures.join("drpcli").display()),
            "--entrypoint",
            "/usr/bin/drpcli",
            &t.image,
            "machines",
            "processjobs",
        ]
        .map(String::from),
    );
    args
}

/// Runs `command` once per uuid, `p` at a time: `xargs -P p -I{} command…` for
/// `docker run` (the uuid replaces `{}`), `xargs -P p -n 1 sh -c …` for a script
/// (the uuid is `$0`). In its own process group, killed whole past `timeout` (the
/// docker CLI ignores SIGTERM while a request hangs).
async fn xargs(uuids: &[String], p: usize, command: &[String], timeout: Duration) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("xargs");
    cmd.arg("-P").arg(p.to_string());
    if command.first().map(String::as_str) == Some("sh") {
        cmd.args(["-n", "1"]);
    } else {
        cmd.args(["-I", "{}"]);
    }
    let mut child = cmd
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .context("spawning xargs")?;
    let group = child.id().context("xargs pid")?;
    let mut stdin = child.stdin.take().context("xargs stdin")?;
    stdin.write_all((uuids.join("\n") + "\n").as_bytes()).await?;
    drop(stdin);
    let Ok(output) = tokio::time::timeout(timeout, child.wait_with_output()).await else {
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
        bail!("the CLI loop did not finish within {timeout:?}");
    };
    let output = output?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        bail!("the CLI loop failed ({}): {}", output.status, stderr.lines().last().unwrap_or_default());
    }
    Ok(())
}

async fn remove_labelled(runtime: &Docker, sock: &str, label: &str) {
    for c in list_containers(sock, label).await.unwrap_or_default() {
        if let Some(id) = c.id {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = tokio::time::timeout(Duration::from_secs(30), runtime.remove_container(&id, Some(options))).await;
        }
    }
}

fn size_figures(n: usize, engine: &str, wanted: usize, p: usize, size: &Size) -> Vec<Figure> {
    let cli = if engine == "podman" { "podman" } else { "docker" };
    let done = size.enter.cli.len().min(size.leave.cli.len());
    let runs = size.enter.plugin.len();
    let mut note = if done < wanted { format!("{done} of {wanted} repeats done") } else { String::new() };
    if let Some(e) = &size.error {
        note = format!("failed: {e}");
    }
    let resolution =
        format!("polled every {} ms by label, a listing took up to {:.1} s", POLL.as_millis(), size.slowest_list_ms as f64 / 1000.0);
    let errors = match (size.failures, &size.last_failure) {
        (0, _) => "agent-failed events: 0".to_string(),
        (k, last) => format!("agent-failed events: {k} (last: {})", last.as_deref().unwrap_or("?")),
    };
    // What was measured is shown even when a later method failed (the note says so).
    let phase = |what: &str, times: &Times| -> Vec<Figure> {
        if times.plugin.is_empty() {
            let why = if note.is_empty() { "not measured" } else { note.as_str() };
            return vec![Figure::missing(SECTION, format!("burst {n} ({engine}): {what}"), why)];
        }
        let plugin = median(&times.plugin);
        let mut vs_bollard = Figure::new(SECTION, format!("burst {n} ({engine}): {what} (plugin)"), "s")
            .value(plugin, times.plugin.len().min(times.bollard.len().max(1)));
        if !times.bollard.is_empty() {
            vs_bollard = vs_bollard.baseline(format!("bollard loop, {p} at once"), median(&times.bollard));
        }
        let mut figures = vec![vs_bollard.note(&note).note(errors.clone()).note(resolution.clone())];
        if !times.cli.is_empty() {
            figures.push(
                Figure::new(SECTION, format!("burst {n} ({engine}): {what} (vs CLI)"), "s")
                    .value(plugin, times.plugin.len().min(times.cli.len()))
                    .baseline(format!("{cli} run / stop+rm via xargs -P {p}"), median(&times.cli)),
            );
        }
        figures
    };
    let mut figures = phase("enter, all running", &size.enter);
    figures.extend(phase("leave, none left", &size.leave));
    if !size.peak_rss.is_empty() && !size.idle_rss.is_empty() {
        figures.push(
            Figure::new(SECTION, format!("burst {n} ({engine}): plugin peak RSS while entering"), "MiB")
                .value(median(&size.peak_rss), runs)
                .baseline("the same plugin idle before the burst", median(&size.idle_rss))
                .note("VmRSS sampled every 20 ms, and VmHWM reset at the start"),
        );
    }
    if !size.managed_rss.is_empty() && !size.idle_rss.is_empty() {
        figures.push(
            Figure::new(super::memory::SECTION, format!("RSS with {n} agents managed"), "MiB")
                .value(median(&size.managed_rss), runs)
                .baseline("the same plugin idle before the burst", median(&size.idle_rss))
                .note("from burst 2, once all agents run"),
        );
    }
    figures
}
