//! (1) Agent start overhead: an `agentStart` action on the real plugin, until the agent's
//! container runs, against the runtime's own floor — the same image created and started
//! directly through bollard with the config the engine would send. The machine token
//! fetch, included in the plugin's time, is also shown on its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use ce_tests::world::{World, unique};
use context_engines::drp::DrpClient;
use context_engines::environment::Environment;
use serde_json::json;

use super::{AGENT_PATH, BENCH_LABEL, Config, Figure, Goal, IMAGE, median, ms};

const SECTION: u8 = 1;

pub async fn run(config: &Config) -> Vec<Figure> {
    let runs = match config.get::<usize>("start-runs") {
        Ok(runs) => runs.max(1),
        Err(e) => return vec![Figure::missing(SECTION, "agent start", e)],
    };
    let mut figures = Vec::new();
    for id in ["docker", "podman"] {
        match engine(id, runs, config.max_parallel).await {
            Ok(found) => figures.extend(found),
            Err(e) => figures.push(Figure::missing(SECTION, format!("agentStart → running ({id})"), format!("failed: {e:#}"))),
        }
    }
    figures
}

async fn engine(id: &str, runs: usize, max_parallel: usize) -> anyhow::Result<Vec<Figure>> {
    let (mut world, _) = super::world(id, max_parallel).await?;
    let limit = Duration::from_secs(120 + 60 * runs as u64);
    let outcome = super::bounded(&format!("agent start on {id}"), limit, measure(&world, id, runs)).await;
    super::cleanup(&mut world).await;
    outcome
}

async fn measure(world: &World, id: &str, runs: usize) -> anyhow::Result<Vec<Figure>> {
    world.upload("plain.tar", IMAGE).await?;
    super::runtime_healthy(&world.runtime, &resolve_image(&world.runtime, IMAGE).await?).await?;
    let context = unique("bs");
    world.sim.put_context(world.context(&context, IMAGE));
    // The machine exists (its token can be fetched) but is in no Context of ours, so the
    // reconciler leaves its agent to the actions.
    let uuid = unique("m");
    let machine = World::machine(&uuid, "");
    world.sim.put_machine(machine.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let name = format!("drp-{context}-{uuid}");
    let image = resolve_image(&world.runtime, IMAGE).await?;
    let labels = HashMap::from([
        ("drp.machine".to_string(), uuid.clone()),
        ("drp.context".to_string(), context.clone()),
        ("drp.plugin".to_string(), world.plugin_name.clone()),
        ("drp.engine".to_string(), world.engine.clone()),
        ("drp.image".to_string(), IMAGE.to_string()),
        (BENCH_LABEL.to_string(), "floor".to_string()),
    ]);
    let body = floor_body(world, &image, &uuid, &context, labels);
    let params = json!({"context/image-name": IMAGE, "context/name": context});
    let (mut via_plugin, mut floor) = (Vec::new(), Vec::new());
    // Run 0 warms both sides up (runtime connection, API negotiation, TLS to the
    // simulator) and is not counted; then plugin and floor runs alternate.
    for run in 0..=runs {
        let started = Instant::now();
        let (code, reply) = world.machine_action(&machine, "agentStart", params.clone()).await?;
        let took = started.elapsed();
        if code != 200 {
            bail!("agentStart answered {code}: {reply}");
        }
        ensure_running(&world.runtime, &name).await?;
        remove(&world.runtime, &name).await?;

        let started = Instant::now();
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = world.runtime.create_container(Some(options), body.clone()).await?;
        world.runtime.start_container(&created.id, None).await?;
        let took_floor = started.elapsed();
        ensure_running(&world.runtime, &name).await?;
        remove(&world.runtime, &name).await?;
        if run > 0 {
            via_plugin.push(ms(took));
            floor.push(ms(took_floor));
        }
    }
    let token = token_fetch(world, &uuid, runs).await?;
    let own = own_cost(world, &machine, &context, runs).await?;
    let scraped = scraped_cost(world, &machine, &context, runs).await?;
    let engine = if id == "docker" { "dockerd" } else { "Podman (compat API)" };
    Ok(vec![
        Figure::new(SECTION, format!("agentStart → running ({id})"), "ms")
            .value(median(&via_plugin), runs)
            .baseline(format!("bollard create+start on {engine}, same config"), median(&floor))
            .goal(Goal::RatioAtMost(1.05))
            .note(
                "plugin: action over its socket, token fetch, create (also the image and name check), start, \
                 agent-started event; 1 warm-up run each side not counted; runs alternate",
            ),
        Figure::new(SECTION, format!("  the plugin's own part ({id} run)"), "ms").value(median(&own), runs).note(
            "the same agentStart on the bundled null WASM engine, which starts nothing: socket, token, engine call, bookkeeping, event",
        ),
        Figure::new(SECTION, format!("  the plugin's own part, metrics scraped ({id} run)"), "ms")
            .value(median(&scraped), runs)
            .baseline("the same without a metrics listener, this run", median(&own))
            .goal(Goal::RatioAtMost(1.05))
            .note("metrics-address set and /metrics fetched every 250 ms meanwhile (60 times Prometheus' default rate)"),
        Figure::new(SECTION, format!("  of which machine token fetch ({id} run)"), "ms")
            .value(median(&token), runs)
            .note("GET /api/v3/machines/{uuid}/token?ttl=3y against the simulator, with the plugin's own DrpClient (pooled HTTPS)"),
    ])
}

/// The container the engine would create for this agent (see the native engine's
/// `create_body`): same image, env, drpcli bind mount and entrypoint, network and
/// restart policy. `labels` are the caller's: they decide whether the plugin sees it.
pub(super) fn floor_body(world: &World, image: &str, uuid: &str, context: &str, labels: HashMap<String, String>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        env: Some(vec![
            format!("RS_UUID={uuid}"),
            "RS_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef".to_string(),
            format!("RS_CONTEXT={context}"),
            format!("RS_ENDPOINTS={}", world.sim.file_url()),
            AGENT_PATH.to_string(),
        ]),
        labels: Some(labels),
        entrypoint: Some(vec!["/usr/bin/drpcli".into(), "machines".into(), "processjobs".into()]),
        cmd: Some(Vec::new()),
        host_config: Some(HostConfig {
            network_mode: Some("host".to_string()),
            binds: Some(vec![format!("{}:/usr/bin/drpcli:ro", world.fixtures.join("drpcli").display())]),
            restart_policy: Some(RestartPolicy { name: Some(RestartPolicyNameEnum::UNLESS_STOPPED), maximum_retry_count: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The name the runtime has the image under (Podman adds `localhost/`).
pub async fn resolve_image(runtime: &Docker, image: &str) -> anyhow::Result<String> {
    for candidate in [image.to_string(), format!("localhost/{image}")] {
        if runtime.inspect_image(&candidate).await.is_ok() {
            return Ok(candidate);
        }
    }
    bail!("image {image} is not in the runtime")
}

async fn ensure_running(runtime: &Docker, name: &str) -> anyhow::Result<()> {
    let found = runtime.inspect_container(name, None).await.with_context(|| format!("inspecting {name}"))?;
    if found.state.and_then(|s| s.running) != Some(true) {
        bail!("{name} is not running after its start returned");
    }
    Ok(())
}

async fn remove(runtime: &Docker, name: &str) -> anyhow::Result<()> {
    let options = RemoveContainerOptionsBuilder::new().force(true).build();
    runtime.remove_container(name, Some(options)).await.with_context(|| format!("removing {name}"))
}

/// agentStart (then agentStop) on the null engine: everything the plugin does for a
/// start except the runtime's own work.
async fn own_cost(world: &World, machine: &serde_json::Value, context: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
    let start = json!({"context/image-name": IMAGE, "context/name": context, "context/engine": "null"});
    let stop = json!({"context/name": context, "context/engine": "null"});
    let mut times = Vec::new();
    for run in 0..=runs {
        let started = Instant::now();
        let (code, reply) = world.machine_action(machine, "agentStart", start.clone()).await?;
        let took = started.elapsed();
        if code != 200 {
            bail!("agentStart on the null engine answered {code}: {reply}");
        }
        world.machine_action(machine, "agentStop", stop.clone()).await?;
        if run > 0 {
            times.push(ms(took));
        }
    }
    Ok(times)
}

/// [`own_cost`] with the metrics listener on and scraped throughout.
async fn scraped_cost(world: &World, machine: &serde_json::Value, context: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
    let at = ce_tests::prometheus::free_loopback()?;
    let mut params = world.params();
    params["context-engines/metrics-address"] = json!(at.to_string());
    let (code, body) = world.plugin().config(params).await?;
    if code != 200 {
        bail!("config with a metrics address answered {code}: {body}");
    }
    let scraper = tokio::spawn(async move {
        loop {
            let _ = ce_tests::prometheus::get(at, "/metrics").await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let times = own_cost(world, machine, context, runs).await;
    scraper.abort();
    let (code, body) = world.plugin().config(world.params()).await?;
    if code != 200 {
        bail!("config without a metrics address answered {code}: {body}");
    }
    times
}

async fn token_fetch(world: &World, uuid: &str, runs: usize) -> anyhow::Result<Vec<f64>> {
    let env = Environment { endpoint: Some(world.sim.api_url()), token: Some(world.sim.token()), ..Environment::default() };
    let client = DrpClient::new(&env)?;
    let mut times = Vec::new();
    for run in 0..=runs {
        let started = Instant::now();
        client.machine_token(uuid).await.map_err(|e| anyhow::anyhow!("token fetch: {e}"))?;
        if run > 0 {
            times.push(ms(started.elapsed()));
        }
    }
    Ok(times)
}
