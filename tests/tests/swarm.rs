//! The `swarm` engine on a real two-node swarm (scripts/swarm.sh: the test dockerd as
//! manager, a second dockerd in its own network namespace as worker): the conformance
//! kit; 40 agents spread over both nodes, each calling back; a plugin SIGKILLed and a
//! new one adopting every service with the same tasks; images on every node and agents
//! only where their image is; a node dying with agents on it; bad input. (The
//! behaviour suite's `swarm` module in tests/tests/engines.rs runs on the same swarm.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bollard::Docker;
use bollard::models::TaskState;
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use ce_tests::plugin::plugin_bin;
use ce_tests::world::{DOCKER_SOCK, SWARM_WORKER, World, run_scenario, unique};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(180);

/// The swarm must be up: a missing cluster fails the test, loudly.
async fn manager() -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_unix(DOCKER_SOCK, 120, bollard::API_DEFAULT_VERSION)?.negotiate_version().await?;
    let nodes = docker
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .context("the test dockerd is not a swarm manager: run scripts/swarm.sh up (scripts/test.sh does)")?;
    ensure!(nodes.len() >= 2, "the swarm has {} node(s), not 2: run scripts/swarm.sh up", nodes.len());
    Ok(docker)
}

/// One running task of a service: its id and its node's.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    task: String,
    node: String,
}

/// Service id → its running tasks (desired and actual state running), for every
/// service of `plugin`, running or not.
async fn service_tasks(docker: &Docker, plugin: &str) -> anyhow::Result<BTreeMap<String, Vec<Running>>> {
    let filters = HashMap::from([("label", vec![format!("drp.plugin={plugin}")])]);
    let services = docker.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await?;
    let mut by_service: BTreeMap<String, Vec<Running>> = services.into_iter().filter_map(|s| s.id).map(|id| (id, Vec::new())).collect();
    let filters = HashMap::from([("desired-state", vec!["running".to_string()])]);
    let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await?;
    for task in tasks.into_iter().filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING)) {
        if let (Some(service), Some(task), Some(node)) = (task.service_id, task.id, task.node_id)
            && let Some(running) = by_service.get_mut(&service)
        {
            running.push(Running { task, node });
        }
    }
    Ok(by_service)
}

/// Service id → its one running task, once there are `n` services each running exactly
/// one task.
async fn wait_services(docker: &Docker, plugin: &str, n: usize) -> anyhow::Result<BTreeMap<String, Running>> {
    let began = Instant::now();
    loop {
        let services = service_tasks(docker, plugin).await?;
        if services.len() == n && services.values().all(|tasks| tasks.len() == 1) {
            return Ok(services.into_iter().filter_map(|(id, mut tasks)| Some((id, tasks.pop()?))).collect());
        }
        if began.elapsed() > SETTLE {
            let running = services.values().filter(|t| !t.is_empty()).count();
            bail!("{} services of {plugin} ({running} running) after {SETTLE:?}, not {n} running once each: {services:?}", services.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The swarm node id of the manager.
async fn manager_node(docker: &Docker) -> anyhow::Result<String> {
    docker.info().await?.swarm.and_then(|s| s.node_id).context("the manager reports no swarm node id")
}

/// scripts/swarm.sh with `command` (worker-kill, worker-start), failing with its output.
fn swarm_sh(command: &str) -> anyhow::Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/swarm.sh");
    let output = Command::new("bash").arg(&script).arg(command).output()?;
    ensure!(
        output.status.success(),
        "scripts/swarm.sh {command} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A fresh image loaded through the swarm engine and the Context "swarm" running it.
async fn swarm_context(w: &World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("swarm", &image));
    Ok(())
}

/// `n` new machine uuids.
fn new_machines(n: usize) -> Vec<String> {
    (0..n).map(|_| unique("m")).collect()
}

/// `machines` enter Context `context`; their services once every one runs.
async fn enter(w: &World, docker: &Docker, context: &str, machines: &[String]) -> anyhow::Result<BTreeMap<String, Running>> {
    for uuid in machines {
        w.sim.put_machine(World::machine(uuid, context));
    }
    wait_services(docker, &w.plugin_name, machines.len()).await
}

/// Waits until no node has a container of the plugin: swarm removes a service's exited
/// container a few seconds after the service.
async fn containers_gone(w: &World) -> anyhow::Result<()> {
    let began = Instant::now();
    while !w.agents().await?.is_empty() {
        ensure!(began.elapsed() < SETTLE, "containers left on the nodes: {:?}", w.agents().await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `machines` go away, and with them every service of the plugin.
async fn leave(w: &World, docker: &Docker, machines: &[String]) -> anyhow::Result<()> {
    for uuid in machines {
        w.sim.delete_machine(uuid);
    }
    wait_services(docker, &w.plugin_name, 0).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_passes_the_kit() -> anyhow::Result<()> {
    manager().await?;
    let config = json!({"host": DOCKER_SOCK, "nodes": [DOCKER_SOCK, SWARM_WORKER]});
    let output = Command::new(plugin_bin())
        .args(["engines", "test", "--native", "swarm", "--config", &config.to_string(), "--large-mb", "256"])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && !stdout.contains("FAIL"),
        "the kit failed on swarm:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let passed = stdout.lines().filter(|l| l.starts_with("PASS")).count();
    ensure!(passed >= 21, "only {passed} checks passed:\n{stdout}");
    Ok(())
}

/// 40 machines enter a swarm Context: 40 services over both nodes, every agent calls
/// the simulator back (those on the worker over the link), and all go when they leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_agents_spread_over_both_nodes_and_call_back() {
    run_scenario("swarm", "forty_agents_spread_over_both_nodes_and_call_back", async |w| {
        const N: usize = 40;
        let docker = manager().await?;
        swarm_context(w).await?;
        let machines = new_machines(N);
        let services = enter(w, &docker, "swarm", &machines).await?;
        let nodes: BTreeSet<&String> = services.values().map(|r| &r.node).collect();
        ensure!(nodes.len() == 2, "all {N} agents run on one node: {services:?}");
        let manager = manager_node(&docker).await?;
        let on_manager = services.values().filter(|r| r.node == manager).count();
        println!("swarm: {N} agents, {on_manager} on the manager, {} on the worker", N - on_manager);
        w.sim
            .wait_for("every agent's call back", SETTLE, || {
                let called: BTreeSet<String> = w.sim.agent_reports().into_iter().map(|r| r.uuid).collect();
                machines.iter().all(|m| called.contains(m)).then_some(())
            })
            .await?;
        leave(w, &docker, &machines).await?;
        containers_gone(w).await?;
        Ok(())
    })
    .await
}

/// Plugin A starts 20 agents and is SIGKILLed; plugin B, with a fresh scratch
/// directory, adopts all 20 as they are: the same services, the same tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_plugin_adopts_every_service_after_a_crash() {
    run_scenario("swarm", "a_new_plugin_adopts_every_service_after_a_crash", async |w| {
        const N: usize = 20;
        let docker = manager().await?;
        swarm_context(w).await?;
        let machines = new_machines(N);
        let before = enter(w, &docker, "swarm", &machines).await?;
        let nodes: BTreeSet<&String> = before.values().map(|r| &r.node).collect();
        ensure!(nodes.len() == 2, "all {N} agents run on one node: {before:?}");
        if let Some(mut a) = w.plugin.take() {
            a.kill();
        }
        w.start_plugin().await?;
        // B has settled every machine once it knows all 20 agents and has nothing queued.
        let began = Instant::now();
        loop {
            let (_, status) = w.action("agentStatus", json!({})).await?;
            let known = status["agents"].as_array().map_or(0, Vec::len);
            if known == N && status["pending"] == json!(0) {
                break;
            }
            ensure!(began.elapsed() < SETTLE, "plugin B never settled: {status}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = wait_services(&docker, &w.plugin_name, N).await?;
        ensure!(after == before, "plugin B changed the agents: before {before:?}, after {after:?}");
        leave(w, &docker, &machines).await
    })
    .await
}

/// The node labels of every node of the swarm, by node id.
async fn node_labels(docker: &Docker) -> anyhow::Result<BTreeMap<String, HashMap<String, String>>> {
    let nodes = docker.list_nodes(None::<bollard::query_parameters::ListNodesOptions>).await?;
    Ok(nodes.into_iter().filter_map(|n| Some((n.id?, n.spec.and_then(|s| s.labels).unwrap_or_default()))).collect())
}

/// The placement constraints of a service's task template.
async fn constraints(docker: &Docker, service: &str) -> anyhow::Result<Vec<String>> {
    let spec = docker.inspect_service(service, None).await?.spec.context("no spec")?;
    Ok(spec.task_template.and_then(|t| t.placement).and_then(|p| p.constraints).unwrap_or_default())
}

/// An image loaded through the plugin lands on both nodes (imageDetail says so per
/// node, both nodes carry its label). An image only the manager holds (loaded through
/// the docker engine): while the plugin knows the manager alone as a node, its agents
/// run on the manager only, by a constraint in their service spec; once the plugin knows
/// both nodes, the next start copies the image to the worker, which gets its label, and
/// a `placement` constraint from the agent options pins a Context's agents there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_go_to_every_node_and_agents_only_where_their_image_is() {
    run_scenario("swarm", "images_go_to_every_node_and_agents_only_where_their_image_is", async |w| {
        let docker = manager().await?;
        let manager_id = manager_node(&docker).await?;
        let everywhere = w.image();
        w.upload("plain.tar", &everywhere).await?;
        let detail = image_detail(w, &everywhere).await?;
        ensure!(detail["exists"] == json!(true), "{detail}");
        ensure!(holders(&detail) == 2, "the image is not on both nodes: {detail}");
        let label = image_label(&detail)?;
        let labels = node_labels(&docker).await?;
        ensure!(labels.values().all(|l| l.get(&label).map(String::as_str) == Some("1")), "{label} is not on both nodes: {labels:?}");

        // The manager's dockerd alone, through the plugin's docker engine.
        let manager_only = format!("ce-test/{}-manager-only:1", w.plugin_name);
        let (code, body) = w
            .action(
                "imageUpload",
                json!({"context/image-name": manager_only, "context/image-path": "files/fixtures/baked.tar", "context/engine": "docker"}),
            )
            .await?;
        ensure!(code == 200, "imageUpload into docker: {code} {body}");
        let detail = image_detail(w, &manager_only).await?;
        ensure!(detail["exists"] == json!(true) && holders(&detail) == 1, "not on the manager alone: {detail}");
        let label = image_label(&detail)?;

        // A plugin that knows the manager alone as a node: the worker is a swarm node it
        // cannot load into, so no agent of that image may go there.
        w.stop_plugin().await?;
        let mut engines = w.params()["context-engines/engine-config"].clone();
        engines["swarm"] = json!({"host": DOCKER_SOCK, "nodes": [DOCKER_SOCK]});
        w.extra_params.insert("context-engines/engine-config".into(), engines);
        w.start_plugin().await?;
        w.sim.put_context(w.context("here", &manager_only));
        let machines = new_machines(6);
        let services = enter(w, &docker, "here", &machines).await?;
        ensure!(services.values().all(|r| r.node == manager_id), "an agent runs where its image is not: {services:?}");
        let wanted = format!("node.labels.{label}==1");
        for service in services.keys() {
            let constraints = constraints(&docker, service).await?;
            ensure!(constraints.contains(&wanted), "service {service} is not constrained to its image: {constraints:?}");
        }
        let on = labelled(&docker, &label).await?;
        ensure!(on == vec![manager_id.clone()], "the manager-only image's label is on {on:?}");
        leave(w, &docker, &machines).await?;

        // Both nodes known: the first start copies the image to the worker; pinned there
        // by the Context's options, every agent runs on the worker.
        w.stop_plugin().await?;
        w.extra_params.remove("context-engines/engine-config");
        w.start_plugin().await?;
        let mut pinned = w.context("pinned", &manager_only);
        pinned["Meta"]["agent-options"] = json!(json!({"placement": {"constraints": ["node.role==worker"]}}).to_string());
        w.sim.put_context(pinned);
        let services = enter(w, &docker, "pinned", &machines).await?;
        ensure!(services.values().all(|r| r.node != manager_id), "a pinned agent runs on the manager: {services:?}");
        let first = services.keys().next().context("no service")?;
        ensure!(constraints(&docker, first).await?.contains(&"node.role==worker".to_string()), "the constraint is not in the spec");
        let detail = image_detail(w, &manager_only).await?;
        ensure!(holders(&detail) == 2, "the image was not copied to the worker: {detail}");
        ensure!(labelled(&docker, &label).await?.len() == 2, "the copied image's label is not on both nodes");
        leave(w, &docker, &machines).await?;
        // Until swarm has removed the exited containers, the image is in use.
        containers_gone(w).await?;
        let (code, body) = w.action("imageRemove", json!({"context/image-name": manager_only, "context/engine": "swarm"})).await?;
        ensure!(code == 200, "imageRemove: {code} {body}");
        let detail = image_detail(w, &manager_only).await?;
        ensure!(detail["exists"] == json!(false) && holders(&detail) == 0, "imageRemove left the image on a node: {detail}");
        Ok(())
    })
    .await
}

/// The swarm engine's `imageDetail` of `image`.
async fn image_detail(w: &World, image: &str) -> anyhow::Result<Value> {
    let (code, detail) = w.action("imageDetail", json!({"context/image-name": image, "context/engine": "swarm"})).await?;
    ensure!(code == 200, "imageDetail of {image}: {code} {detail}");
    Ok(detail)
}

/// How many nodes hold the image, by an `imageDetail` answer.
fn holders(detail: &Value) -> usize {
    detail["nodes"].as_array().into_iter().flatten().filter(|n| n["has"] == json!(true)).count()
}

/// The node label of the image of an `imageDetail` answer.
fn image_label(detail: &Value) -> anyhow::Result<String> {
    let id = detail["id"].as_str().context("no id")?.trim_start_matches("sha256:");
    Ok(format!("drp.image.{}", id.get(..12).context("a short id")?))
}

/// The ids of the nodes carrying `label`.
async fn labelled(docker: &Docker, label: &str) -> anyhow::Result<Vec<String>> {
    Ok(node_labels(docker).await?.into_iter().filter(|(_, l)| l.contains_key(label)).map(|(n, _)| n).collect())
}

/// The worker dies (SIGKILL to its dockerd and its containers) with agents on it: swarm
/// moves them to the manager, and the plugin neither removes nor duplicates a service
/// meanwhile; the worker comes back and every service runs exactly one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_agents_move_and_nothing_is_duplicated() {
    run_scenario("swarm", "a_dead_nodes_agents_move_and_nothing_is_duplicated", async |w| {
        let outcome = node_failure(w).await;
        // The worker comes back whatever happened: the other tests need it.
        let back = swarm_sh("worker-start");
        outcome.and(back)
    })
    .await
}

async fn node_failure(w: &mut World) -> anyhow::Result<()> {
    const N: usize = 10;
    let docker = manager().await?;
    let manager_id = manager_node(&docker).await?;
    swarm_context(w).await?;
    let machines = new_machines(N);
    let before = enter(w, &docker, "swarm", &machines).await?;
    let on_worker = before.values().filter(|r| r.node != manager_id).count();
    ensure!(on_worker > 0, "no agent on the worker: {before:?}");
    let ids: BTreeSet<String> = before.keys().cloned().collect();

    swarm_sh("worker-kill")?;
    let killed = Instant::now();
    let moved = loop {
        let now = service_tasks(&docker, &w.plugin_name).await?;
        let now_ids: BTreeSet<String> = now.keys().cloned().collect();
        ensure!(now_ids == ids, "the plugin changed the services while the node was down: {ids:?} -> {now_ids:?}");
        let all_on_manager = now.values().all(|tasks| tasks.iter().any(|t| t.node == manager_id));
        if all_on_manager {
            break killed.elapsed();
        }
        ensure!(killed.elapsed() < Duration::from_secs(180), "after 180 s not every agent runs on the manager: {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    println!("swarm: the worker died with {on_worker} of {N} agents; all {N} ran on the manager {moved:.1?} later");

    swarm_sh("worker-start")?;
    let back = Instant::now();
    // Exactly one running task per service, on any node, and the same services.
    loop {
        let now = service_tasks(&docker, &w.plugin_name).await?;
        let now_ids: BTreeSet<String> = now.keys().cloned().collect();
        ensure!(now_ids == ids, "the plugin changed the services after the node came back: {ids:?} -> {now_ids:?}");
        let worker_containers =
            ce_tests::world::list_containers(ce_tests::world::SWARM_WORKER_SOCK, &format!("drp.plugin={}", w.plugin_name))
                .await?
                .into_iter()
                .filter(|c| c.state.as_deref() == Some("running"))
                .count();
        if now.values().all(|tasks| tasks.len() == 1) && worker_containers == 0 {
            break;
        }
        ensure!(
            back.elapsed() < Duration::from_secs(120),
            "two agents of one machine after the worker came back: {now:?}, {worker_containers} running on the worker"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // And it stays so through a few of the plugin's settles.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let now = service_tasks(&docker, &w.plugin_name).await?;
    ensure!(now.keys().cloned().collect::<BTreeSet<_>>() == ids && now.values().all(|t| t.len() == 1), "later: {now:?}");
    leave(w, &docker, &machines).await
}

fn kit(config: serde_json::Value, only: &str) -> anyhow::Result<(bool, String)> {
    let output = Command::new(plugin_bin())
        .args(["engines", "test", "--native", "swarm", "--config", &config.to_string(), "--only", only, "--large-mb", "0"])
        .output()?;
    Ok((output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// A manager that is no manager, a node that does not answer, settings of the wrong
/// shape: each an error naming it, and the other engines serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_swarm_input_is_refused_by_name() {
    run_scenario("docker", "bad_swarm_input_is_refused_by_name", async |w| {
        manager().await?;
        // Podman's API is no swarm manager, and neither is a swarm's worker.
        for host in [ce_tests::world::PODMAN_SOCK, SWARM_WORKER] {
            let (ok, out) = kit(json!({"host": host}), "describe")?;
            ensure!(
                !ok && out.lines().any(|l| l.starts_with("FAIL") && l.contains("is not a swarm manager") && l.contains(host)),
                "{host} as manager:\n{out}"
            );
        }
        // A node nobody answers on (a closed loopback port): the load fails naming it.
        let (ok, out) = kit(json!({"host": DOCKER_SOCK, "nodes": [DOCKER_SOCK, "tcp://127.0.0.1:9"]}), "images")?;
        let load = out.lines().find(|l| l.contains("image-load of an archive")).unwrap_or_default().to_string();
        ensure!(!ok && load.starts_with("FAIL") && load.contains("127.0.0.1:9"), "a dead node:\n{out}");
        // Settings of the wrong shape are refused with the config, by name.
        for (settings, says) in [(json!({"nodes": []}), "`nodes`"), (json!({"nodes": [7]}), "strings"), (json!({"host": 1}), "`host`")] {
            let mut params = w.params();
            params["context-engines/engine-config"]["swarm"] = settings.clone();
            let (code, body) = w.plugin().config(params).await?;
            ensure!(
                code == 400 && body.to_string().contains("engine 'swarm'") && body.to_string().contains(says),
                "{settings}: {code} {body}"
            );
        }
        // A placement constraint swarm would refuse: the machine's start fails naming it,
        // and nothing is started.
        let mut params = w.params();
        params["context-engines/engine-config"]["swarm"] = json!({"host": DOCKER_SOCK, "nodes": [DOCKER_SOCK, SWARM_WORKER]});
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config with swarm: {code} {body}");
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        let mut ctx = w.context("badplace", &image);
        ctx["Meta"]["context-engine"] = json!("swarm");
        ctx["Meta"]["agent-options"] = json!(json!({"placement": {"constraints": ["node.zone=a"]}}).to_string());
        w.sim.put_context(ctx);
        let uuid = unique("m");
        w.sim.put_machine(World::machine(&uuid, "badplace"));
        let failed = w
            .sim
            .wait_for("an agent-failed event", SETTLE, || {
                w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == uuid.as_str())
            })
            .await?;
        let error = failed["Object"]["Error"].as_str().unwrap_or_default();
        ensure!(error.contains("placement.constraints[0]") && error.contains("node.zone=a"), "bad constraint: {error}");
        let docker = manager().await?;
        ensure!(service_tasks(&docker, &w.plugin_name).await?.is_empty(), "a service was made from a bad constraint");
        // A well-formed constraint no node satisfies (an explicit start, so that no
        // retry runs meanwhile): swarm's reason, and the service that could not be
        // placed is not left behind to pass for an agent.
        let mut machine = World::machine(&unique("m"), "");
        machine["Params"] = json!({"context-engines/agent-options": {"placement": {"constraints": ["node.labels.zone==nowhere"]}}});
        w.sim.put_machine(machine.clone());
        let (code, body) = w
            .machine_action(
                &machine,
                "agentStart",
                json!({"context/image-name": image, "context/name": "nowhere", "context/engine": "swarm"}),
            )
            .await?;
        ensure!(code >= 400 && body.to_string().contains("no suitable node"), "an unsatisfiable constraint: {code} {body}");
        ensure!(service_tasks(&docker, &w.plugin_name).await?.is_empty(), "the service that could not be placed was left");
        // A single-host engine has one place: it starts the agent without applying it.
        let mut machine = World::machine(&unique("m"), "");
        machine["Params"] = json!({"context-engines/agent-options": {"placement": {"constraints": ["node.role==worker"]}}});
        w.sim.put_machine(machine.clone());
        let (code, body) = w
            .machine_action(&machine, "agentStart", json!({"context/image-name": image, "context/name": "p", "context/engine": "docker"}))
            .await?;
        ensure!(code == 200, "placement on docker: {code} {body}");
        w.wait_agents(1, SETTLE).await?;
        let (code, body) = w.machine_action(&machine, "agentStop", json!({"context/name": "p", "context/engine": "docker"})).await?;
        ensure!(code == 200, "agentStop: {code} {body}");
        // The old config stands: docker serves.
        let (code, _) = w.action("imageExists", json!({"context/image-name": "ce-none/x:1"})).await?;
        ensure!(code == 200, "docker after the refused configs: {code}");
        Ok(())
    })
    .await
}
