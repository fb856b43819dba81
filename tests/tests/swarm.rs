//! The `swarm` engine on a real two-node swarm (scripts/swarm.sh: the test dockerd as
//! manager, a second dockerd in its own network namespace as worker): the conformance
//! kit, and agents of a burst spread over both nodes, kept as they are by a new plugin
//! process (the services live in the cluster, not in the plugin), gone when their
//! machines leave.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bollard::Docker;
use bollard::models::TaskState;
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder};
use ce_tests::plugin::plugin_bin;
use ce_tests::world::{DOCKER_SOCK, SWARM_WORKER, World, run_scenario, unique};
use serde_json::json;

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

/// Service id → node id of its running task, for the services of `plugin`.
async fn running_services(docker: &Docker, plugin: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let filters = HashMap::from([("label", vec![format!("drp.plugin={plugin}")])]);
    let services = docker.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await?;
    let ids: HashSet<String> = services.into_iter().filter_map(|s| s.id).collect();
    let filters = HashMap::from([("desired-state", vec!["running".to_string()])]);
    let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await?;
    Ok(tasks
        .into_iter()
        .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
        .filter_map(|t| Some((t.service_id?, t.node_id?)))
        .filter(|(service, _)| ids.contains(service))
        .collect())
}

async fn wait_services(docker: &Docker, plugin: &str, n: usize) -> anyhow::Result<BTreeMap<String, String>> {
    let began = Instant::now();
    loop {
        let running = running_services(docker, plugin).await?;
        if running.len() == n {
            return Ok(running);
        }
        if began.elapsed() > SETTLE {
            bail!("{} services of {plugin} running after {SETTLE:?}, not {n}", running.len());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_spread_over_both_nodes_and_a_new_plugin_keeps_them() {
    run_scenario("swarm", "agents_spread_over_both_nodes_and_a_new_plugin_keeps_them", async |w| {
        const N: usize = 20;
        let docker = manager().await?;
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        w.sim.put_context(w.context("swarm", &image));
        let machines: Vec<String> = (0..N).map(|_| unique("m")).collect();
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, "swarm"));
        }
        let before = wait_services(&docker, &w.plugin_name, N).await?;
        let nodes: HashSet<&String> = before.values().collect();
        ensure!(nodes.len() == 2, "all {N} agents run on one node: {before:?}");
        // A new plugin process (fresh scratch directory) finds the services as they are.
        w.stop_plugin().await?;
        w.start_plugin().await?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = running_services(&docker, &w.plugin_name).await?;
        ensure!(after == before, "the new plugin changed the agents: before {before:?}, after {after:?}");
        for uuid in &machines {
            w.sim.delete_machine(uuid);
        }
        wait_services(&docker, &w.plugin_name, 0).await?;
        let filters = HashMap::from([("label", vec![format!("drp.plugin={}", w.plugin_name)])]);
        let left = docker.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await?;
        ensure!(left.is_empty(), "{} services left after every machine left", left.len());
        Ok(())
    })
    .await
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
        // Podman's API is no swarm manager.
        let (ok, out) = kit(json!({"host": ce_tests::world::PODMAN_SOCK}), "describe")?;
        ensure!(!ok && out.lines().any(|l| l.starts_with("FAIL") && l.contains("is not a swarm manager")), "podman as manager:\n{out}");
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
        // The old config stands: docker serves.
        let (code, _) = w.action("imageExists", json!({"context/image-name": "ce-none/x:1"})).await?;
        ensure!(code == 200, "docker after the refused configs: {code}");
        Ok(())
    })
    .await
}
