//! (6) A burst on the `swarm` engine over the two-node swarm of scripts/swarm.sh: N
//! machines enter a swarm Context, and the time until N services each run their one
//! task; then they leave, until no service and no container is left on either node.
//! Baselines, measured the same way in the same run: (a) the floor, the same N `docker
//! service create` calls (the engine's service spec) made straight to the manager
//! through bollard with the plugin's concurrency, then removed the same way; (b) the
//! same burst through the plugin's single-host `docker` engine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::models::{
    Mount, MountType, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use ce_tests::world::{DOCKER_SOCK, SWARM_WORKER_SOCK, World, list_containers, unique};
use futures_util::StreamExt as _;

use super::{AGENT_PATH, BENCH_LABEL, Config, Figure, IMAGE, median};

const SECTION: u8 = 6;
const POLL: Duration = Duration::from_millis(250);

/// Seconds per phase, per method.
#[derive(Default)]
struct Times {
    swarm: Vec<f64>,
    floor: Vec<f64>,
    docker: Vec<f64>,
}

pub async fn run(config: &Config) -> Vec<Figure> {
    let (n, repeats) = match (config.get::<usize>("swarm-burst"), config.get::<usize>("swarm-repeats")) {
        (Ok(n), Ok(r)) => (n, r.max(1)),
        (Err(e), _) | (_, Err(e)) => return vec![Figure::missing(SECTION, "swarm burst", e)],
    };
    let mut enter = Times::default();
    let mut leave = Times::default();
    let mut error = None;
    for rep in 0..repeats {
        if rep > 0 && !config.time_left() {
            break;
        }
        if let Err(e) = once(n, config.max_parallel, &mut enter, &mut leave).await {
            error = Some(format!("{e:#}"));
            break;
        }
    }
    let p = config.max_parallel;
    let mut figures = Vec::new();
    for (what, times) in [("enter, all running", &enter), ("leave, none left", &leave)] {
        if times.swarm.is_empty() {
            let why = error.clone().unwrap_or_else(|| "not measured".to_string());
            figures.push(Figure::missing(SECTION, format!("swarm burst {n}: {what}"), why));
            continue;
        }
        let swarm = median(&times.swarm);
        let mut floor = Figure::new(SECTION, format!("swarm burst {n}: {what} (plugin, 2 nodes)"), "s").value(swarm, times.swarm.len());
        if !times.floor.is_empty() {
            floor = floor.baseline(format!("docker service create/rm via bollard, {p} at once"), median(&times.floor));
        }
        figures.push(floor.note(error.clone().unwrap_or_default()));
        if !times.docker.is_empty() {
            figures.push(
                Figure::new(SECTION, format!("swarm burst {n}: {what} (vs one host)"), "s")
                    .value(swarm, times.swarm.len())
                    .baseline("the plugin's docker engine on the manager alone", median(&times.docker)),
            );
        }
    }
    figures
}

/// One repeat of all three methods.
async fn once(n: usize, p: usize, enter: &mut Times, leave: &mut Times) -> anyhow::Result<()> {
    let (mut world, _) = super::world("swarm", p).await?;
    let outcome = async {
        let manager = manager(&world).await?;
        world.upload("plain.tar", IMAGE).await?;
        let label = format!("drp.plugin={}", world.plugin_name);
        let (entered, left) = burst(&world, n, || services_settled(&manager, &label, n), || all_gone(&manager, &label)).await?;
        enter.swarm.push(entered);
        leave.swarm.push(left);
        let (entered, left) = floor(&world, &manager, n, p).await?;
        enter.floor.push(entered);
        leave.floor.push(left);
        anyhow::Ok(())
    }
    .await;
    super::cleanup(&mut world).await;
    super::remove_leftovers().await;
    outcome?;

    let (mut world, _) = super::world("docker", p).await?;
    let outcome = async {
        world.upload("plain.tar", IMAGE).await?;
        let label = format!("drp.plugin={}", world.plugin_name);
        let running = || containers_running(DOCKER_SOCK, &label, n);
        burst(&world, n, running, || containers_running(DOCKER_SOCK, &label, 0)).await
    }
    .await;
    super::cleanup(&mut world).await;
    let (entered, left) = outcome?;
    enter.docker.push(entered);
    leave.docker.push(left);
    Ok(())
}

async fn manager(world: &World) -> anyhow::Result<Docker> {
    let docker = world.runtime.clone();
    let nodes = docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("the manager dockerd is not in swarm mode: scripts/bench.sh brings the swarm up (scripts/swarm.sh up)")?;
    if nodes.len() < 2 {
        bail!("the swarm has {} node(s), not 2: run scripts/swarm.sh up", nodes.len());
    }
    Ok(docker)
}

/// N machines enter a Context of the world's engine, then leave; the seconds until
/// `entered` and then `gone` say so.
async fn burst<E, G, FE, FG>(world: &World, n: usize, mut entered: E, mut gone: G) -> anyhow::Result<(f64, f64)>
where
    E: FnMut() -> FE,
    FE: Future<Output = anyhow::Result<bool>>,
    G: FnMut() -> FG,
    FG: Future<Output = anyhow::Result<bool>>,
{
    let context = unique("sb");
    world.sim.put_context(world.context(&context, IMAGE));
    let uuids: Vec<String> = (0..n).map(|_| unique("m")).collect();
    let started = Instant::now();
    for uuid in &uuids {
        world.sim.put_machine(World::machine(uuid, &context));
    }
    let entered = until("entering", n, started, &mut entered).await?;
    let started = Instant::now();
    for uuid in &uuids {
        world.sim.put_machine(World::machine(uuid, ""));
    }
    let left = until("leaving", n, started, &mut gone).await?;
    Ok((entered, left))
}

/// Seconds from `started` until `done` says so, polled; bounded by 120 s + 0.5 s per machine.
async fn until<D, F>(what: &str, n: usize, started: Instant, done: &mut D) -> anyhow::Result<f64>
where
    D: FnMut() -> F,
    F: Future<Output = anyhow::Result<bool>>,
{
    let limit = Duration::from_secs(120) + Duration::from_millis(500) * n as u32;
    loop {
        if done().await? {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > limit {
            bail!("{what}: not done after {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether exactly `n` services carry `label` and each runs one task.
async fn services_settled(docker: &Docker, label: &str, n: usize) -> anyhow::Result<bool> {
    let filters = HashMap::from([("label", vec![label.to_string()])]);
    let services = docker.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await?;
    if services.len() != n {
        return Ok(false);
    }
    let ids: std::collections::HashSet<String> = services.into_iter().filter_map(|s| s.id).collect();
    let filters = HashMap::from([("desired-state", vec!["running".to_string()])]);
    let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await?;
    let mut running: HashMap<String, usize> = HashMap::new();
    for task in tasks.into_iter().filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)) {
        if let Some(service) = task.service_id.filter(|s| ids.contains(s)) {
            *running.entry(service).or_default() += 1;
        }
    }
    Ok(running.len() == n && running.values().all(|k| *k == 1))
}

/// Whether no service and no container on either node carries `label`.
async fn all_gone(docker: &Docker, label: &str) -> anyhow::Result<bool> {
    if !services_settled(docker, label, 0).await? {
        return Ok(false);
    }
    for sock in [DOCKER_SOCK, SWARM_WORKER_SOCK] {
        if !list_containers(sock, label).await?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether exactly `n` containers carry `label`, all running.
async fn containers_running(sock: &str, label: &str, n: usize) -> anyhow::Result<bool> {
    let found = list_containers(sock, label).await?;
    Ok(found.len() == n && found.iter().all(|c| c.state.as_deref() == Some("running")))
}

/// The floor: the services the engine would make, created and removed straight
/// through the manager's API, `p` at once.
async fn floor(world: &World, docker: &Docker, n: usize, p: usize) -> anyhow::Result<(f64, f64)> {
    let image = docker.inspect_image(IMAGE).await?.id.context("the image has no id")?;
    let node_label = format!("drp.image.{}", image.trim_start_matches("sha256:").chars().take(12).collect::<String>());
    let label = format!("{BENCH_LABEL}={}", world.plugin_name);
    let names: Vec<String> = (0..n).map(|_| unique("ceb-svc-")).collect();
    let started = Instant::now();
    let created: Vec<anyhow::Result<()>> = futures_util::stream::iter(names.iter())
        .map(|name| {
            let spec = floor_spec(world, name, &image, &node_label);
            async move { docker.create_service(spec, None).await.with_context(|| format!("creating service {name}")).map(|_| ()) }
        })
        .buffer_unordered(p)
        .collect()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let entered = until("the floor entering", n, started, &mut || services_settled(docker, &label, n)).await?;
    let started = Instant::now();
    let removed: Vec<anyhow::Result<()>> = futures_util::stream::iter(names.iter())
        .map(|name| async move { docker.delete_service(name).await.with_context(|| format!("removing service {name}")) })
        .buffer_unordered(p)
        .collect()
        .await;
    removed.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    let left = until("the floor leaving", n, started, &mut || all_gone(docker, &label)).await?;
    Ok((entered, left))
}

/// The engine's service spec (see host/src/engines/swarm.rs) for a stand-in agent.
fn floor_spec(world: &World, name: &str, image: &str, node_label: &str) -> ServiceSpec {
    let labels = HashMap::from([(BENCH_LABEL.to_string(), world.plugin_name.clone())]);
    let container = TaskSpecContainerSpec {
        image: Some(image.to_string()),
        labels: Some(labels.clone()),
        command: Some(vec!["/usr/bin/drpcli".into(), "machines".into(), "processjobs".into()]),
        args: Some(Vec::new()),
        env: Some(vec![
            format!("RS_UUID={name}"),
            "RS_TOKEN=0123456789abcdef0123456789abcdef0123456789abcdef".to_string(),
            format!("RS_ENDPOINTS={}", world.agent_endpoint),
            AGENT_PATH.to_string(),
        ]),
        mounts: Some(vec![Mount {
            target: Some("/usr/bin/drpcli".to_string()),
            source: Some(world.fixtures.join("drpcli").display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Default::default()
        }]),
        stop_grace_period: Some(10_000_000_000),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(name.to_string()),
        labels: Some(labels),
        task_template: Some(TaskSpec {
            container_spec: Some(container),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(5_000_000_000),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement { constraints: Some(vec![format!("node.labels.{node_label}==1")]), ..Default::default() }),
            networks: Some(vec![bollard::models::NetworkAttachmentConfig { target: Some("host".to_string()), ..Default::default() }]),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }),
        ..Default::default()
    }
}
