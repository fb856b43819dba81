//! Several engines under one plugin: contexts on Docker and on Podman side by side, and a
//! runtime that is down failing precisely while the others keep working.

use std::time::Duration;

use anyhow::ensure;
use ce_tests::world::{DOCKER_SOCK, PODMAN_SOCK, World, list_containers, run_scenario, unique};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(60);

async fn wait_count(host: &str, label: &str, n: usize) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let found = list_containers(host, label).await?;
        if found.len() == n && found.iter().all(|c| c.state.as_deref() == Some("running")) {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "{host}: wanted {n} running agents with {label}, have {found:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_and_podman_contexts_run_side_by_side() {
    run_scenario("docker", "docker_and_podman_contexts_run_side_by_side", side_by_side).await
}

async fn side_by_side(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    let (code, body) = w
        .action(
            "imageUpload",
            json!({"context/image-name": image, "context/image-path": "files/fixtures/plain.tar.gz", "context/engine": "podman"}),
        )
        .await?;
    ensure!(code == 200, "upload to podman: {code} {body}");
    // One context names podman; the other relies on the default engine (docker).
    let mut on_podman = w.context("on-podman", &image);
    on_podman["Meta"] = json!({"context-engine": "podman"});
    let mut on_default = w.context("on-default", &image);
    on_default["Meta"] = json!({});
    w.sim.put_context(on_podman);
    w.sim.put_context(on_default);
    let (a, b) = (unique("m"), unique("m"));
    w.sim.put_machine(World::machine(&a, "on-podman"));
    w.sim.put_machine(World::machine(&b, "on-default"));
    let label = format!("drp.plugin={}", w.plugin_name);
    wait_count(PODMAN_SOCK, &label, 1).await?;
    wait_count(DOCKER_SOCK, &label, 1).await?;
    let on_podman = list_containers(PODMAN_SOCK, &label).await?;
    ensure!(on_podman[0].labels.as_ref().and_then(|l| l.get("drp.machine")) == Some(&a), "the podman agent is not machine {a}'s");
    // Moving a machine between contexts moves its agent between runtimes.
    w.sim.put_machine(World::machine(&a, "on-default"));
    wait_count(PODMAN_SOCK, &label, 0).await?;
    wait_count(DOCKER_SOCK, &label, 2).await?;
    for m in [&a, &b] {
        w.sim.delete_machine(m);
    }
    wait_count(DOCKER_SOCK, &label, 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_that_is_down_fails_precisely_and_others_keep_working() {
    run_scenario("docker", "a_runtime_that_is_down_fails_precisely_and_others_keep_working", one_runtime_down).await
}

async fn one_runtime_down(w: &mut World) -> anyhow::Result<()> {
    let mut params = w.params();
    params["context-engines/engine-config"]["podman"] = json!({"host": "unix:///run/podman/not-here.sock"});
    let (code, body) = w.plugin().config(params).await?;
    ensure!(code == 200, "config: {code} {body}");
    let (code, body) = w.action("imageExists", json!({"context/image-name": "x:1", "context/engine": "podman"})).await?;
    ensure!(code == 503, "podman down: expected 503, got {code} {body}");
    let message = body["Messages"].to_string();
    ensure!(message.contains("'podman'") && message.contains("not-here.sock"), "message should name engine and address: {message}");
    let (code, engines) = w.action("enginesList", json!({})).await?;
    ensure!(code == 200, "enginesList: {code}");
    let row = |name: &str| engines.as_array().and_then(|r| r.iter().find(|e| e["name"] == name).cloned());
    ensure!(row("podman").is_some_and(|r| r["state"] == "unavailable"), "podman row: {engines}");
    ensure!(row("docker").is_some_and(|r| r["state"] == "ready"), "docker row: {engines}");
    // A context on the dead runtime reports failures; one on docker still works.
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    let mut dead = w.context("dead", &image);
    dead["Meta"] = json!({"context-engine": "podman"});
    w.sim.put_context(dead);
    w.sim.put_context(w.context("alive", &image));
    let (a, b) = (unique("m"), unique("m"));
    w.sim.put_machine(World::machine(&a, "dead"));
    w.sim.put_machine(World::machine(&b, "alive"));
    w.wait_agents(1, SETTLE).await?;
    let failure = w
        .sim
        .wait_for("agent-failed for the dead runtime", SETTLE, || {
            w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == a.as_str())
        })
        .await?;
    ensure!(failure["Object"]["Error"].to_string().contains("not-here.sock"), "failure: {failure}");
    Ok(())
}
