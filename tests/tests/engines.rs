//! The behaviour suite: every scenario of SPEC §4, run against every engine from this
//! one definition, through the real plugin binary, the simulator and the real runtime.
//! A new engine is tested by adding its name to `behaviour_suite!` below.

use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use ce_tests::world::{World, unique};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "engines/options.rs"]
mod options;
use options::*;

const SETTLE: Duration = Duration::from_secs(60);

macro_rules! behaviour_suite {
    (engines: [$($engine:ident),*], scenarios: $scenarios:tt) => {
        $( behaviour_suite!(@engine $engine $scenarios); )*
    };
    (@engine $engine:ident [$($scenario:ident),* $(,)?]) => {
        mod $engine {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    ce_tests::world::run_scenario(stringify!($engine), stringify!($scenario), super::$scenario)
                    .await
                }
            )*
        }
    };
}

// `swarm` is services over the two-node swarm of scripts/swarm.sh (agents on either node,
// reporting to the simulator over the link to the worker); scripts/test.sh runs it in
// its own phase, once the swarm is up.
behaviour_suite! {
    engines: [docker, podman, docker_api, docker_api_on_podman, swarm],
    scenarios: [
        agent_follows_the_machine_context,
        image_actions_load_check_and_remove,
        bad_image_input_is_refused_and_plugin_keeps_serving,
        missing_image_is_loaded_from_the_file_server,
        own_entrypoint_runs_without_drpcli,
        checksum_accepts_matching_and_rejects_other_archives,
        restart_adopts_agents_and_removes_orphans,
        missed_events_are_recovered_after_reconnect,
        image_change_replaces_agents,
        start_from_a_missing_image_keeps_the_running_agent,
        agent_actions_are_idempotent,
        burst_of_machines_converges,
        manual_agent_survives_its_machines_events,
        a_name_held_by_another_plugin_is_left_alone,
        agent_removed_by_hand_is_replaced,
        same_image_with_different_checksums_is_loaded_and_checked_apart,
        agent_options_reach_the_agent,
        options_layers_merge_and_the_enforced_layer_wins,
        options_that_give_the_host_are_gated,
        changed_options_replace_agents_and_bad_ones_are_refused,
        agent_logs_show_the_agents_output_with_tokens_masked,
        agents_start_where_dr_provision_serves_no_params,
    ]
}

// The Python engine end to end, in a plugin, on scenarios that cover its whole
// lifecycle; tests/tests/conformance.rs holds it to every engine-level check.
behaviour_suite! {
    engines: [python_docker],
    scenarios: [
        agent_follows_the_machine_context,
        agent_options_reach_the_agent,
        agent_logs_show_the_agents_output_with_tokens_masked,
    ]
}

async fn agent_follows_the_machine_context(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar.gz", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    let agents = w.wait_agents(1, SETTLE).await?;
    let name = agents[0].names.clone().unwrap_or_default().join(",");
    ensure!(name.contains(&format!("drp-ctx-{uuid}")), "agent name {name}");
    let labels = agents[0].labels.clone().unwrap_or_default();
    for (key, want) in
        [("drp.machine", uuid.as_str()), ("drp.context", "ctx"), ("drp.plugin", w.plugin_name.as_str()), ("drp.engine", w.engine.as_str())]
    {
        ensure!(labels.get(key).map(String::as_str) == Some(want), "label {key} = {:?}", labels.get(key));
    }

    // The agent itself reports the environment it was given.
    let report = w.sim.wait_for("agent report", SETTLE, || w.sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
    let issued: Vec<String> = w.sim.issued_tokens().into_iter().filter(|(m, _)| *m == uuid).map(|(_, t)| t).collect();
    ensure!(issued.contains(&report.token), "agent token {} was not issued for {uuid}", report.token);
    ensure!(report.context == "ctx", "RS_CONTEXT {}", report.context);
    ensure!(report.endpoints == w.agent_endpoint, "RS_ENDPOINTS {}", report.endpoints);
    ensure!(report.args == "machines processjobs", "drpcli args {:?}", report.args);
    ensure!(report.path == "/bin:/usr/bin:/usr/local/bin:/sbin:/usr/sbin:/usr/local/sbin", "PATH {}", report.path);

    // Clearing the Context stops the agent; setting it again starts one; deleting the
    // machine stops it.
    w.sim.put_machine(World::machine(&uuid, ""));
    w.wait_agents(0, SETTLE).await?;
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    w.wait_agents(1, SETTLE).await?;
    w.sim.delete_machine(&uuid);
    w.wait_agents(0, SETTLE).await?;

    // A context that is not ours gets no agent; deleting our context stops its agents.
    let mut foreign = w.context("foreign", &image);
    foreign["Engine"] = json!("some-other-plugin");
    w.sim.put_context(foreign);
    w.sim.put_machine(World::machine(&uuid, "foreign"));
    let other = unique("m");
    w.sim.put_machine(World::machine(&other, "ctx"));
    w.wait_agents(1, SETTLE).await?;
    w.sim.delete_context("ctx");
    w.wait_agents(0, SETTLE).await?;

    let published = w.sim.published();
    for action in ["agent-started", "agent-stopped"] {
        ensure!(
            published.iter().any(|e| e["Action"] == action && e["Object"]["Machine"] == uuid.as_str()),
            "no {action} event published for {uuid}: {published:?}"
        );
    }
    Ok(())
}

async fn image_actions_load_check_and_remove(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    let params = json!({"context/image-name": image});
    expect(w.action("imageExists", params.clone()).await?, 200, json!(false))?;
    w.upload("plain.tar", &image).await?;
    expect(w.action("imageExists", params.clone()).await?, 200, json!(true))?;
    // Through the file server URL rather than the webroot, gzipped.
    let second = format!("{image}-url");
    let (code, body) = w
        .action(
            "imageUpload",
            json!({"context/image-name": second, "context/image-path": format!("{}/files/fixtures/baked.tar.gz", w.sim.file_url())}),
        )
        .await?;
    ensure!(code == 200 && body == json!(true), "upload by URL: {code} {body}");
    expect(w.action("imageExists", json!({"context/image-name": second})).await?, 200, json!(true))?;
    for name in [&image, &second] {
        let params = json!({"context/image-name": name});
        expect(w.action("imageRemove", params.clone()).await?, 200, json!(true))?;
        expect(w.action("imageExists", params.clone()).await?, 200, json!(false))?;
        // Removing what is absent succeeds too.
        expect(w.action("imageRemove", params).await?, 200, json!(true))?;
    }
    Ok(())
}

async fn bad_image_input_is_refused_and_plugin_keeps_serving(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    let cases = [("files/../../etc/passwd", 400, "'..'"), ("files/fixtures/does-not-exist.tar", 502, "HTTP 404")];
    for (path, code, says) in cases {
        let (got, body) = w.action("imageUpload", json!({"context/image-name": image, "context/image-path": path})).await?;
        ensure!(got == code, "imageUpload {path}: expected {code}, got {got}: {body}");
        ensure_error_says(&body, says)?;
    }
    // A corrupt archive: the runtime's refusal comes back named.
    std::fs::write(w.sim.webroot().join("files/fixtures/corrupt.tar"), b"this is not a tar archive at all")?;
    let (got, body) =
        w.action("imageUpload", json!({"context/image-name": image, "context/image-path": "files/fixtures/corrupt.tar"})).await?;
    ensure!(got >= 400, "corrupt archive accepted: {got} {body}");
    ensure_error_says(&body, &format!("engine '{}'", w.engine))?;
    // Missing params and unknown engines are named.
    let (got, body) = w.action("imageUpload", json!({"context/image-name": image})).await?;
    ensure!(got == 400, "missing path: {got}");
    ensure_error_says(&body, "context/image-path")?;
    let (got, body) = w.action("imageExists", json!({"context/image-name": image, "context/engine": "no-such-engine"})).await?;
    ensure!(got == 400, "unknown engine: {got}");
    ensure_error_says(&body, "no-such-engine")?;
    // Still serving.
    let (got, engines) = w.action("enginesList", json!({})).await?;
    ensure!(got == 200, "enginesList after bad input: {got} {engines}");
    let row = engines
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == w.engine.as_str()))
        .context("engine under test missing from enginesList")?;
    ensure!(row["state"] == "ready", "engine row {row}");
    Ok(())
}

async fn missing_image_is_loaded_from_the_file_server(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    let dir = w.sim.webroot().join(format!("files/contexts/{}", w.plugin_name));
    let target = dir.join(&image);
    std::fs::create_dir_all(target.parent().context("image path has a parent")?)?;
    std::fs::copy(w.fixture("plain.tar"), &target)?;
    expect(w.action("imageExists", json!({"context/image-name": image})).await?, 200, json!(false))?;
    w.sim.put_context(w.context("auto", &image));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "auto"));
    w.wait_agents(1, SETTLE).await?;
    expect(w.action("imageExists", json!({"context/image-name": image})).await?, 200, json!(true))?;
    Ok(())
}

async fn own_entrypoint_runs_without_drpcli(w: &mut World) -> anyhow::Result<()> {
    let mut params = w.params();
    params.as_object_mut().context("params object")?.remove("context-engines/drpcli");
    let (code, body) = w.plugin().config(params).await?;
    ensure!(code == 200, "reconfigure: {code} {body}");
    let image = w.image();
    w.upload("baked.tar", &image).await?;
    w.sim.put_context(w.context("baked", &image));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "baked"));
    w.wait_agents(1, SETTLE).await?;
    let report = w.sim.wait_for("agent report", SETTLE, || w.sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
    ensure!(report.args == "machines processjobs", "image entrypoint args {:?}", report.args);
    let agents = w.agents().await?;
    let id = agents[0].id.clone().context("container id")?;
    let inspected = w.inspect_agent(&id).await?;
    let mounts = inspected.mounts.unwrap_or_default();
    ensure!(
        !mounts.iter().any(|m| m.destination.as_deref() == Some("/usr/bin/drpcli")),
        "drpcli was injected although none is configured: {mounts:?}"
    );
    Ok(())
}

async fn checksum_accepts_matching_and_rejects_other_archives(w: &mut World) -> anyhow::Result<()> {
    let archive = std::fs::read(w.fixture("plain.tar"))?;
    let good = hex::encode(Sha256::digest(&archive));
    let url = format!("{}/files/fixtures/plain.tar", w.sim.file_url());
    let image = w.image();
    let mut ctx = w.context("summed", &image);
    ctx["Meta"]["Imagepull"] = json!(url);
    ctx["Meta"]["Checksum"] = json!(format!("sha256:{good}"));
    w.sim.put_context(ctx);
    let first = unique("m");
    w.sim.put_machine(World::machine(&first, "summed"));
    w.wait_agents(1, SETTLE).await?;

    let bad_image = format!("{image}-bad");
    let mut bad = w.context("badsum", &bad_image);
    bad["Meta"]["Imagepull"] = json!(url);
    bad["Meta"]["Checksum"] = json!("0".repeat(64));
    w.sim.put_context(bad);
    let second = unique("m");
    w.sim.put_machine(World::machine(&second, "badsum"));
    let failure = w
        .sim
        .wait_for("agent-failed event", SETTLE, || {
            w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == second.as_str())
        })
        .await?;
    let error = failure["Object"]["Error"].as_str().unwrap_or_default().to_string();
    ensure!(error.contains(&good) && error.contains("rejected"), "failure says: {error}");
    // Only the first machine has an agent, and the rejected image never reached the engine.
    w.wait_agents(1, Duration::from_secs(5)).await?;
    expect(w.action("imageExists", json!({"context/image-name": bad_image})).await?, 200, json!(false))?;
    Ok(())
}

async fn restart_adopts_agents_and_removes_orphans(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    let (kept, orphaned) = (unique("m"), unique("m"));
    w.sim.put_machine(World::machine(&kept, "ctx"));
    w.sim.put_machine(World::machine(&orphaned, "ctx"));
    let before = w.wait_agents(2, SETTLE).await?;
    w.stop_plugin().await?;
    ensure!(w.sim.leaving() >= 1, "the plugin did not post /leaving on stop");
    // While the plugin is away, a machine leaves; its event is lost.
    w.sim.delete_machine(&orphaned);
    ensure!(w.running_agents().await?.len() == 2, "agents must survive the plugin stopping");
    let connects = w.sim.ws_connects();
    w.start_plugin().await?;
    w.sim.wait_for("plugin reconnect", SETTLE, || (w.sim.ws_connects() > connects).then_some(())).await?;
    let after = w.wait_agents(1, SETTLE).await?;
    let kept_before = before
        .iter()
        .find(|c| c.labels.as_ref().and_then(|l| l.get("drp.machine")) == Some(&kept))
        .and_then(|c| c.id.clone())
        .context("kept agent before restart")?;
    ensure!(after[0].id.as_deref() == Some(kept_before.as_str()), "the healthy agent was restarted: {:?} != {kept_before}", after[0].id);
    Ok(())
}

async fn missed_events_are_recovered_after_reconnect(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    w.sim.wait_for("first connection", SETTLE, || (w.sim.ws_connects() >= 1).then_some(())).await?;
    let connects = w.sim.ws_connects();
    w.sim.refuse_websockets(true);
    w.sim.drop_websockets();
    // Events while disconnected are lost to the plugin.
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(w.agents().await?.is_empty(), "an agent started without the event reaching the plugin");
    w.sim.refuse_websockets(false);
    w.sim.wait_for("reconnect", SETTLE, || (w.sim.ws_connects() > connects).then_some(())).await?;
    w.wait_agents(1, SETTLE).await?;
    Ok(())
}

async fn image_change_replaces_agents(w: &mut World) -> anyhow::Result<()> {
    let (first, second) = (w.image(), format!("{}-2", w.image()));
    w.upload("plain.tar", &first).await?;
    w.upload("baked.tar", &second).await?;
    w.sim.put_context(w.context("ctx", &first));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    let before = w.wait_agents(1, SETTLE).await?;
    w.sim.put_context(w.context("ctx", &second));
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let now = w.running_agents().await?;
        let replaced =
            now.len() == 1 && now[0].id != before[0].id && now[0].labels.as_ref().and_then(|l| l.get("drp.image")) == Some(&second);
        if replaced && w.agents().await?.len() == 1 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("agent not replaced after the image change: {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn start_from_a_missing_image_keeps_the_running_agent(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    let uuid = unique("m");
    let machine = World::machine(&uuid, "ctx");
    w.sim.put_machine(machine.clone());
    let before = w.wait_agents(1, SETTLE).await?;
    // An image nobody loaded and the file server does not have: the start fails by
    // name, and the agent that runs is not touched on the way.
    let missing = format!("{}-missing", w.image());
    let (code, body) = w.machine_action(&machine, "agentStart", json!({"context/name": "ctx", "context/image-name": missing})).await?;
    ensure!(code >= 400, "agentStart from a missing image answered {code}: {body}");
    ensure_error_says(&body, &missing)?;
    let after = w.running_agents().await?;
    ensure!(
        after.len() == 1 && after[0].id == before[0].id,
        "the running agent did not survive a failed start: before {before:?}, after {after:?}"
    );
    Ok(())
}

async fn agent_actions_are_idempotent(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("manual", &image));
    // The machine is in the context, as dr-provision has it when it calls agentStart.
    let uuid = unique("m");
    let machine = World::machine(&uuid, "manual");
    w.sim.put_machine(machine.clone());
    let params = json!({"context/name": "manual", "context/image-name": image});
    let (code, first) = w.machine_action(&machine, "agentStart", params.clone()).await?;
    ensure!(code == 200, "agentStart: {code} {first}");
    let (code, second) = w.machine_action(&machine, "agentStart", params).await?;
    ensure!(code == 200 && first["Id"] == second["Id"], "second agentStart changed the agent: {first} vs {second}");
    w.wait_agents(1, SETTLE).await?;
    let stop = json!({"context/name": "manual"});
    expect(w.machine_action(&machine, "agentStop", stop.clone()).await?, 200, json!(true))?;
    w.wait_agents(0, Duration::from_secs(5)).await?;
    expect(w.machine_action(&machine, "agentStop", stop).await?, 200, json!(true))?;
    // A Model that is no machine is named as such.
    let (code, body) =
        w.plugin().action(json!({"Name": "x"}), "agentStart", json!({"context/name": "manual", "context/image-name": image})).await?;
    ensure!(code == 400, "agentStart without a machine: {code}");
    ensure_error_says(&body, "Uuid")?;
    Ok(())
}

async fn burst_of_machines_converges(w: &mut World) -> anyhow::Result<()> {
    const N: usize = 24;
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("burst", &image));
    let machines: Vec<String> = (0..N).map(|_| unique("m")).collect();
    for uuid in &machines {
        w.sim.put_machine(World::machine(uuid, "burst"));
        // Several quick updates per machine must still end in one agent.
        w.sim.put_machine(World::machine(uuid, "burst"));
    }
    w.wait_agents(N, Duration::from_secs(180)).await?;
    for uuid in &machines {
        w.sim.put_machine(World::machine(uuid, ""));
    }
    w.wait_agents(0, Duration::from_secs(180)).await?;
    let failures: Vec<Value> = w.sim.published().into_iter().filter(|e| e["Action"] == "agent-failed").collect();
    ensure!(failures.is_empty(), "failures during the burst: {failures:?}");
    Ok(())
}

/// agentStart outside the machine's own Context (trying an image, as the Context docs
/// suggest): the agent is manual and survives the settles its machine's own events
/// cause, is shown as manual, and goes with agentStop or the machine's deletion.
async fn manual_agent_survives_its_machines_events(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("try", &image));
    let uuid = unique("m");
    let machine = World::machine(&uuid, "");
    w.sim.put_machine(machine.clone());
    let params = json!({"context/name": "try", "context/image-name": image});
    let (code, started) = w.machine_action(&machine, "agentStart", params.clone()).await?;
    ensure!(code == 200 && started["Manual"] == json!(true), "agentStart: {code} {started}");
    // The create event, then updates dr-provision makes while a workflow runs.
    for _ in 0..3 {
        w.sim.put_machine(machine.clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let agents = w.wait_agents(1, SETTLE).await?;
    let id = World::agent_id(&agents[0]);
    ensure!(id.as_deref() == started["Id"].as_str(), "the manual agent was replaced: {started} vs {id:?}");
    let (code, again) = w.machine_action(&machine, "agentStart", params.clone()).await?;
    ensure!(code == 200 && again["Id"] == started["Id"], "a second agentStart made another agent: {started} vs {again}");
    let (code, status) = w.action("agentStatus", json!({})).await?;
    let shown = status["agents"].as_array().into_iter().flatten().find(|a| a["machine"] == uuid.as_str()).cloned();
    ensure!(code == 200 && shown.as_ref().is_some_and(|a| a["manual"] == json!(true)), "agentStatus should show it manual: {status}");
    expect(w.machine_action(&machine, "agentStop", json!({"context/name": "try"})).await?, 200, json!(true))?;
    w.wait_agents(0, SETTLE).await?;

    // Started again, it goes with its machine.
    let (code, body) = w.machine_action(&machine, "agentStart", params).await?;
    ensure!(code == 200, "agentStart: {code} {body}");
    w.wait_agents(1, SETTLE).await?;
    w.sim.delete_machine(&uuid);
    w.wait_agents(0, SETTLE).await?;
    Ok(())
}

/// A container holding an agent's name that belongs to another plugin instance is never
/// removed: the start fails with an Error naming the owner, and the container stays.
async fn a_name_held_by_another_plugin_is_left_alone(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    let uuid = unique("m");
    let name = format!("drp-ctx-{uuid}");
    let owner = format!("{}-other", w.plugin_name);
    let foreign = Foreign::plant(w, &name, &image, &owner).await?;
    let outcome = async {
        w.sim.put_context(w.context("ctx", &image));
        w.sim.put_machine(World::machine(&uuid, "ctx"));
        let failed = w
            .sim
            .wait_for("an agent-failed event", SETTLE, || {
                w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == uuid.as_str())
            })
            .await?;
        let error = failed["Object"]["Error"].as_str().unwrap_or_default().to_string();
        ensure!(error.contains(&owner) && error.contains(&name), "the error should name the owner and the name: {failed}");
        // The event goes out as the start fails; the work queue records the failure
        // when the settle returns, a moment later.
        let started = std::time::Instant::now();
        loop {
            let (_, status) = w.action("agentStatus", json!({})).await?;
            let failing = status["failing"].as_array().into_iter().flatten().find(|f| f["machine"] == uuid.as_str()).cloned();
            if failing.is_some_and(|f| f["error"].as_str().is_some_and(|e| e.contains(&owner))) {
                break;
            }
            ensure!(started.elapsed() < SETTLE, "agentStatus never showed the failure: {status}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        foreign.still_holds(w, &name).await.context("the other plugin's agent was removed or replaced")?;
        // agentStop of that name: ours is absent, theirs is not touched.
        expect(w.machine_action(&World::machine(&uuid, "ctx"), "agentStop", json!({"context/name": "ctx"})).await?, 200, json!(true))?;
        foreign.still_holds(w, &name).await.context("agentStop touched the other plugin's agent")?;
        Ok(())
    }
    .await;
    foreign.remove(w).await;
    outcome
}

/// Another plugin's agent holding a name: a container that sleeps, or on swarm a service
/// (of no replicas: holding the name is all it is for).
enum Foreign {
    Container(String),
    Service(String),
}

impl Foreign {
    async fn plant(w: &World, name: &str, image: &str, owner: &str) -> anyhow::Result<Foreign> {
        let labels = std::collections::HashMap::from([("drp.plugin".to_string(), owner.to_string())]);
        if w.engine == "swarm" {
            let image_id = w.runtime.inspect_image(image).await?.id.context("the image has no id")?;
            let spec = bollard::models::ServiceSpec {
                name: Some(name.to_string()),
                labels: Some(labels),
                mode: Some(bollard::models::ServiceSpecMode {
                    replicated: Some(bollard::models::ServiceSpecModeReplicated { replicas: Some(0) }),
                    ..Default::default()
                }),
                task_template: Some(bollard::models::TaskSpec {
                    container_spec: Some(bollard::models::TaskSpecContainerSpec { image: Some(image_id), ..Default::default() }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let created = w.runtime.create_service(spec, None).await.context("creating the other plugin's service")?;
            return Ok(Foreign::Service(created.id.context("the service has no id")?));
        }
        let mut created = Err(anyhow::anyhow!("no candidate name"));
        for candidate in [image.to_string(), format!("localhost/{image}")] {
            let body = bollard::models::ContainerCreateBody {
                image: Some(candidate),
                cmd: Some(vec!["/bin/sleep".to_string(), "3600".to_string()]),
                labels: Some(labels.clone()),
                ..Default::default()
            };
            let options = bollard::query_parameters::CreateContainerOptionsBuilder::new().name(name).build();
            created = w.runtime.create_container(Some(options), body).await.map(|c| c.id).map_err(anyhow::Error::from);
            if created.is_ok() {
                break;
            }
        }
        Ok(Foreign::Container(created.context("creating the other plugin's container")?))
    }

    /// Fails unless `name` is still held by this very container or service.
    async fn still_holds(&self, w: &World, name: &str) -> anyhow::Result<()> {
        let (id, holder) = match self {
            Foreign::Container(id) => (id, w.runtime.inspect_container(name, None).await?.id),
            Foreign::Service(id) => (id, w.runtime.inspect_service(name, None).await?.id),
        };
        ensure!(holder.as_deref() == Some(id.as_str()), "{name} is held by {holder:?}, not {id}");
        Ok(())
    }

    async fn remove(&self, w: &World) {
        let _ = match self {
            Foreign::Container(id) => {
                let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new().force(true).build();
                w.runtime.remove_container(id, Some(options)).await
            }
            Foreign::Service(id) => w.runtime.delete_service(id).await,
        };
    }
}

/// `docker rm -f` / `podman rm -f` of an agent: a native engine hears it on the
/// runtime's event feed and the agent is back within 5 s; a WASM engine has no feed, so
/// the periodic resync (set to 3 s here) finds it.
async fn agent_removed_by_hand_is_replaced(w: &mut World) -> anyhow::Result<()> {
    let native = w.under_test.wasm_file.is_none();
    if !native {
        let mut params = w.params();
        params["context-engines/resync-secs"] = json!(3);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
    }
    // Swarm restarts a service's container itself, after its restart delay (5 s).
    let limit = match (native, w.engine.as_str()) {
        (true, "swarm") => Duration::from_secs(5 + 10),
        (true, _) => Duration::from_secs(5),
        (false, _) => Duration::from_secs(3 + 10),
    };
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    let mut id = w.wait_agents(1, SETTLE).await?[0].id.clone().context("agent id")?;
    for round in 1..=2 {
        w.remove_agent_container(&id).await?;
        let removed = tokio::time::Instant::now();
        let agents = w.wait_agents(1, limit).await.with_context(|| format!("removal #{round}"))?;
        let replacement = agents[0].id.clone().context("agent id")?;
        ensure!(replacement != id, "removal #{round}: the same container is still listed");
        println!("{}: agent removed by hand, replaced after {:?}", w.engine, removed.elapsed());
        id = replacement;
    }
    Ok(())
}

/// Two Contexts name the same image from the same URL, one with the archive's checksum
/// and one with another, and their machines arrive together: the loads are not merged
/// on the image name, so the wrong checksum is rejected even while the right one loads.
async fn same_image_with_different_checksums_is_loaded_and_checked_apart(w: &mut World) -> anyhow::Result<()> {
    let archive = std::fs::read(w.fixture("plain.tar"))?;
    let good = hex::encode(Sha256::digest(&archive));
    let url = format!("{}/files/fixtures/plain.tar", w.sim.file_url());
    let image = w.image();
    let (right, wrong) = (unique("m"), unique("m"));
    for (name, sum) in [("right", good.clone()), ("wrong", "1".repeat(64))] {
        let mut ctx = w.context(name, &image);
        ctx["Meta"]["Imagepull"] = json!(url);
        ctx["Meta"]["Checksum"] = json!(sum);
        w.sim.put_context(ctx);
    }
    w.sim.put_machine(World::machine(&right, "right"));
    w.sim.put_machine(World::machine(&wrong, "wrong"));
    let failure = w
        .sim
        .wait_for("agent-failed event for the wrong checksum", SETTLE, || {
            w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == wrong.as_str())
        })
        .await?;
    let error = failure["Object"]["Error"].as_str().unwrap_or_default().to_string();
    ensure!(error.contains(&good) && error.contains("rejected"), "failure says: {error}");
    let agents = w.wait_agents(1, SETTLE).await?;
    let machine = agents[0].labels.clone().unwrap_or_default().get("drp.machine").cloned();
    ensure!(machine.as_deref() == Some(right.as_str()), "the one agent should be the right checksum's machine: {machine:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.wait_agents(1, Duration::from_secs(1)).await.context("the wrong checksum's machine got an agent later")?;
    Ok(())
}

/// `agentLogs`: the agent's own lines, in order, timestamped, its token masked; `lines`
/// bounds; a machine without that agent is a 404 naming it.
async fn agent_logs_show_the_agents_output_with_tokens_masked(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    let uuid = unique("m");
    let machine = World::machine(&uuid, "ctx");
    w.sim.put_machine(machine.clone());
    w.wait_agents(1, SETTLE).await?;
    let report = w.sim.wait_for("agent report", SETTLE, || w.sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
    let (code, body) = w.machine_action(&machine, "agentLogs", json!({"context/name": "ctx"})).await?;
    ensure!(code == 200, "agentLogs answered {code}: {body}");
    let lines: Vec<String> = body["Lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str().map(str::to_string)).collect();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let up = at(&format!("ce-agent: up for {uuid}")).with_context(|| format!("no 'up' line in {lines:?}"))?;
    let token = at("ce-agent: my token is [redacted]").with_context(|| format!("no masked token line in {lines:?}"))?;
    ensure!(at("ce-agent: on stderr").is_some(), "stderr missing from {lines:?}");
    ensure!(up < token, "lines out of order: {lines:?}");
    ensure!(lines[up].starts_with("20"), "no timestamp on {:?}", lines[up]);
    ensure!(!body.to_string().contains(&report.token), "the agent's token leaked: {body}");
    let (code, body) = w.machine_action(&machine, "agentLogs", json!({"context/name": "ctx", "context/lines": "1"})).await?;
    ensure!(code == 200 && body["Lines"].as_array().map(Vec::len) == Some(1), "lines=1: {code} {body}");
    for bad in [json!(0), json!(10_001), json!("many")] {
        let (code, body) = w.machine_action(&machine, "agentLogs", json!({"context/name": "ctx", "context/lines": bad})).await?;
        ensure!(code == 400 && body.to_string().contains("context/lines"), "lines={bad}: {code} {body}");
    }
    let (code, body) = w.machine_action(&machine, "agentLogs", json!({"context/name": "elsewhere"})).await?;
    ensure!(code == 404 && body.to_string().contains(&format!("drp-elsewhere-{uuid}")), "absent agent: {code} {body}");
    Ok(())
}

fn expect(got: (u16, Value), code: u16, body: Value) -> anyhow::Result<()> {
    ensure!(got == (code, body.clone()), "expected {code} {body}, got {} {}", got.0, got.1);
    Ok(())
}

fn ensure_error_says(body: &Value, needle: &str) -> anyhow::Result<()> {
    let messages = body["Messages"].to_string();
    ensure!(body["Code"].is_number(), "not an Error JSON: {body}");
    ensure!(messages.contains(needle), "error should mention {needle:?}: {messages}");
    Ok(())
}
