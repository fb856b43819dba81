//! Agent options scenarios of the behaviour suite (see engines.rs): what a layer asks
//! for is what the container has (inspected) and what the agent sees (reported back).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use bollard::models::ContainerInspectResponse;
use ce_tests::world::{World, unique};
use serde_json::{Value, json};

use super::{SETTLE, expect};

/// A host directory holding one probe file, for bind mounts; removed with the world.
fn probe_dir(w: &World, content: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = w.sim.scratch().join(unique("probe"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("file"), format!("{content}\n"))?;
    Ok(dir)
}

async fn configure(w: &World, extra: Value) -> anyhow::Result<()> {
    let mut params = w.params();
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        params[key] = value;
    }
    let (code, body) = w.plugin().config(params).await?;
    ensure!(code == 200, "config answered {code}: {body}");
    Ok(())
}

fn context_with_options(w: &World, name: &str, image: &str, options: &Value) -> Value {
    let mut context = w.context(name, image);
    context["Meta"]["agent-options"] = json!(options.to_string());
    context
}

async fn inspect_agent(w: &World, uuid: &str) -> anyhow::Result<ContainerInspectResponse> {
    let agents = w.wait_agents(1, SETTLE).await?;
    let id = agents[0].id.clone().context("agent without id")?;
    let _ = uuid;
    w.inspect_agent(&id).await.context("inspecting the agent")
}

fn env_of(inspected: &ContainerInspectResponse) -> Vec<String> {
    inspected.config.as_ref().and_then(|c| c.env.clone()).unwrap_or_default()
}

async fn failure_of(w: &World, uuid: &str) -> anyhow::Result<String> {
    let failed = w
        .sim
        .wait_for("an agent-failed event", SETTLE, || {
            w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == uuid)
        })
        .await?;
    Ok(failed["Object"]["Error"].as_str().unwrap_or_default().to_string())
}

/// Every option family, from a Context: the container has it and the agent sees it.
pub async fn agent_options_reach_the_agent(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    let secret = unique("probe");
    let dir = probe_dir(w, &secret)?;
    let volume = unique("cet-vol");
    configure(w, json!({"context-engines/agent-options-allowed": [dir.display().to_string()]})).await?;
    let options = json!({
        "env": {"CE_PROBE": "from-the-context", "CE_PROBE_FILE": "/probe/file"},
        "mounts": [
            {"type": "bind", "source": dir.display().to_string(), "target": "/probe", "read-only": true},
            {"type": "volume", "source": volume, "target": "/cache"},
            {"type": "tmpfs", "target": "/scratch", "tmpfs-size": "1m"}
        ],
        "memory": "64m", "cpus": 0.5, "pids-limit": 100, "user": "0",
        "cap-drop": ["NET_RAW"], "labels": {"team": "infra"}, "workdir": "/tmp"
    });
    w.sim.put_context(context_with_options(w, "ctx", &image, &options));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    let outcome = async {
        let inspected = inspect_agent(w, &uuid).await?;
        let host = inspected.host_config.clone().unwrap_or_default();
        ensure!(host.memory == Some(64 << 20), "memory {:?}", host.memory);
        ensure!(host.nano_cpus == Some(500_000_000), "nano cpus {:?}", host.nano_cpus);
        ensure!(host.pids_limit == Some(100), "pids limit {:?}", host.pids_limit);
        let caps = host.cap_drop.clone().unwrap_or_default().join(",");
        ensure!(caps.contains("NET_RAW"), "cap drop {caps}");
        let config = inspected.config.clone().unwrap_or_default();
        ensure!(config.user.as_deref() == Some("0"), "user {:?}", config.user);
        ensure!(config.working_dir.as_deref() == Some("/tmp"), "workdir {:?}", config.working_dir);
        ensure!(config.labels.unwrap_or_default().get("team").map(String::as_str) == Some("infra"), "labels");
        let env = env_of(&inspected);
        ensure!(env.iter().any(|e| e == "CE_PROBE=from-the-context"), "env {env:?}");
        let mounts = inspected.mounts.clone().unwrap_or_default();
        let at = |target: &str| mounts.iter().find(|m| m.destination.as_deref() == Some(target)).cloned();
        ensure!(at("/probe").is_some_and(|m| m.rw == Some(false)), "bind /probe: {mounts:?}");
        ensure!(at("/cache").is_some_and(|m| m.name.as_deref() == Some(volume.as_str())), "volume /cache: {mounts:?}");
        ensure!(at("/usr/bin/drpcli").is_some(), "the drpcli bind is among the mounts: {mounts:?}");
        let tmpfs = host.tmpfs.clone().unwrap_or_default();
        let tmpfs_mount = host.mounts.clone().unwrap_or_default().into_iter().any(|m| m.target.as_deref() == Some("/scratch"));
        ensure!(tmpfs_mount || tmpfs.contains_key("/scratch") || at("/scratch").is_some(), "tmpfs /scratch: {host:?}");
        let report = w.sim.wait_for("agent report", SETTLE, || w.sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
        ensure!(report.probe == "from-the-context", "the agent saw CE_PROBE={:?}", report.probe);
        ensure!(report.file == secret, "the agent read {:?} from the bind mount, not {secret:?}", report.file);
        Ok(())
    }
    .await;
    w.sim.delete_machine(&uuid);
    let stopped = w.wait_agents(0, SETTLE).await.map(|_| ());
    let _ = w.runtime.remove_volume(&volume, None::<bollard::query_parameters::RemoveVolumeOptions>).await;
    outcome.and(stopped)
}

/// Four layers, lowest first: plugin, Context, machine (its own params over its
/// profiles over global), enforced. The enforced layer wins; RackN's `context/volumes`
/// is read as mounts.
pub async fn options_layers_merge_and_the_enforced_layer_wins(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    configure(
        w,
        json!({
            "context-engines/agent-options": {"env": {"A": "plugin", "B": "plugin", "E": "plugin"}, "memory": "32m"},
            "context-engines/agent-options-enforced": {"env": {"E": "enforced"}, "pids-limit": 64},
        }),
    )
    .await?;
    w.sim.put_context(context_with_options(w, "ctx", &image, &json!({"env": {"B": "context", "C": "context"}, "memory": "48m"})));
    // dr-provision aggregates a param by taking the first value found (the machine's,
    // then its profiles' in order, then global's), whole: the profile's shadows global's.
    w.sim.put_profile("global", json!({"context-engines/agent-options": {"env": {"D": "global", "G": "global"}}}));
    w.sim.put_profile(
        &format!("{}-profile", w.plugin_name),
        json!({"context-engines/agent-options": {"env": {"C": "profile", "D": "profile", "E": "profile"}}}),
    );
    let uuid = unique("m");
    let mut machine = World::machine(&uuid, "ctx");
    machine["Profiles"] = json!([format!("{}-profile", w.plugin_name)]);
    machine["Params"] = json!({"context/volumes": ["type=tmpfs,destination=/rackn"]});
    w.sim.put_machine(machine);
    let inspected = inspect_agent(w, &uuid).await?;
    let env = env_of(&inspected);
    ensure!(!env.iter().any(|e| e.starts_with("G=")), "global's value is shadowed by the profile's: {env:?}");
    for want in ["A=plugin", "B=context", "C=profile", "D=profile", "E=enforced"] {
        ensure!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
    }
    let host = inspected.host_config.clone().unwrap_or_default();
    ensure!(host.memory == Some(48 << 20), "the Context's memory should win over the plugin's: {:?}", host.memory);
    ensure!(host.pids_limit == Some(64), "the enforced pids-limit: {:?}", host.pids_limit);
    let tmpfs = host.mounts.unwrap_or_default().into_iter().any(|m| m.target.as_deref() == Some("/rackn"))
        || host.tmpfs.unwrap_or_default().contains_key("/rackn")
        || inspected.mounts.unwrap_or_default().iter().any(|m| m.destination.as_deref() == Some("/rackn"));
    ensure!(tmpfs, "context/volumes mount /rackn missing");
    Ok(())
}

/// What gives an agent the host is refused from a Context unless the plugin param
/// allows it; the error names the layer, the key and the param; nothing is started.
/// (`privileged` is only ever refused here: dockerd in a sandbox without the full
/// capability set cannot run a privileged container at all.)
pub async fn options_that_give_the_host_are_gated(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(context_with_options(w, "priv", &image, &json!({"privileged": true})));
    w.sim.put_context(context_with_options(w, "caps", &image, &json!({"cap-add": ["NET_ADMIN"]})));
    w.sim.put_context(context_with_options(
        w,
        "etc",
        &image,
        &json!({"mounts": [{"type": "bind", "source": "/etc", "target": "/host-etc"}]}),
    ));
    let (privileged, caps, etc) = (unique("m"), unique("m"), unique("m"));
    w.sim.put_machine(World::machine(&privileged, "priv"));
    w.sim.put_machine(World::machine(&caps, "caps"));
    w.sim.put_machine(World::machine(&etc, "etc"));
    let error = failure_of(w, &privileged).await?;
    for needle in ["the Context 'priv'", "'privileged'", "context-engines/agent-options-allowed"] {
        ensure!(error.contains(needle), "the refusal should name {needle}: {error}");
    }
    let error = failure_of(w, &caps).await?;
    ensure!(error.contains("'cap-add'") && error.contains("context-engines/agent-options-allowed"), "cap-add refusal: {error}");
    let error = failure_of(w, &etc).await?;
    ensure!(error.contains("'/etc'") && error.contains("context-engines/agent-options-allowed"), "bind refusal: {error}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(w.agents().await?.is_empty(), "a refused agent was started");
    // Allowed once the param says so (a reconfigure resyncs every machine); what it
    // does not list stays refused.
    configure(w, json!({"context-engines/agent-options-allowed": ["cap-add", "/etc"]})).await?;
    let agents = w.wait_agents(2, SETTLE).await?;
    for agent in agents {
        let inspected = w.inspect_agent(agent.id.as_deref().unwrap_or_default()).await?;
        let host = inspected.host_config.unwrap_or_default();
        let mounts = inspected.mounts.unwrap_or_default();
        let has_cap = host.cap_add.unwrap_or_default().iter().any(|c| c.contains("NET_ADMIN"));
        let has_etc = mounts.iter().any(|m| m.destination.as_deref() == Some("/host-etc"));
        ensure!(has_cap != has_etc, "each agent got what its Context asked: cap-add {has_cap}, /etc bind {has_etc}");
    }
    let (_, status) = w.action("agentStatus", json!({})).await?;
    let failing = status["failing"].as_array().into_iter().flatten().find(|f| f["machine"] == privileged.as_str()).cloned();
    ensure!(failing.is_some_and(|f| f["error"].as_str().is_some_and(|e| e.contains("'privileged'"))), "privileged still refused: {status}");
    Ok(())
}

/// Changing a Context's options replaces its agents; a plugin restart keeps them (the
/// spec digest of an unchanged spec is the same); bad options are an error naming the
/// layer and key while the other machines keep their agents.
pub async fn changed_options_replace_agents_and_bad_ones_are_refused(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(context_with_options(w, "ctx", &image, &json!({"memory": "64m"})));
    w.sim.put_context(w.context("plain", &image));
    let (uuid, other) = (unique("m"), unique("m"));
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    w.sim.put_machine(World::machine(&other, "plain"));
    let before = w.wait_agents(2, SETTLE).await?;
    let id_of = |agents: &[ce_tests::world::ContainerSummary], machine: &str| {
        agents
            .iter()
            .find(|a| a.labels.as_ref().and_then(|l| l.get("drp.machine")).map(String::as_str) == Some(machine))
            .and_then(|a| a.id.clone())
    };
    let (first, plain) = (id_of(&before, &uuid), id_of(&before, &other));

    w.stop_plugin().await?;
    w.start_plugin().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = w.wait_agents(2, SETTLE).await?;
    ensure!(id_of(&after, &uuid) == first && id_of(&after, &other) == plain, "a restart replaced agents whose spec did not change");

    w.sim.put_context(context_with_options(w, "ctx", &image, &json!({"memory": "96m"})));
    let deadline = tokio::time::Instant::now() + SETTLE;
    let replaced = loop {
        let running = w.running_agents().await?;
        if let Some(id) = id_of(&running, &uuid).filter(|id| Some(id) != first.as_ref()) {
            break id;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the agent was not replaced after its Context's options changed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let inspected = w.inspect_agent(&replaced).await?;
    ensure!(inspected.host_config.and_then(|h| h.memory) == Some(96 << 20), "the replacement has the new memory");

    // Bad input in each outside layer: named, and nothing else disturbed.
    let mut bad = w.context("ctx", &image);
    bad["Meta"]["agent-options"] = json!("{\"memory\": ");
    w.sim.put_context(bad);
    let third = unique("m");
    w.sim.put_machine(World::machine(&third, "ctx"));
    let error = failure_of(w, &third).await?;
    ensure!(error.contains("the Context 'ctx'") && error.contains("not valid JSON"), "malformed Meta: {error}");
    w.sim.put_context(context_with_options(w, "plain2", &image, &json!({})));
    let fourth = unique("m");
    let mut machine = World::machine(&fourth, "plain2");
    machine["Params"] = json!({"context-engines/agent-options": {"mounts": [{"type": "tmpfs", "target": "relative"}], "memmory": 1}});
    w.sim.put_machine(machine);
    let error = failure_of(w, &fourth).await?;
    ensure!(error.contains(&format!("machine {fourth}")) && error.contains("memmory"), "unknown key: {error}");
    let (code, body) = w
        .plugin()
        .config({
            let mut params = w.params();
            params["context-engines/agent-options"] = json!({"memory": -5});
            params
        })
        .await?;
    ensure!(
        code == 400 && body.to_string().contains("context-engines/agent-options") && body.to_string().contains("memory"),
        "{code} {body}"
    );
    let still = w.agents().await?;
    ensure!(id_of(&still, &other) == plain, "the plain machine's agent was disturbed");
    expect(w.action("agentStatus", json!({})).await.map(|(c, _)| (c, json!(null)))?, 200, json!(null))?;
    Ok(())
}

/// A dr-provision stand-in that serves no machine params (404): agents start with the
/// plugin's and the Context's layers, and are kept, not replaced, at later settles.
pub async fn agents_start_where_dr_provision_serves_no_params(w: &mut World) -> anyhow::Result<()> {
    w.sim.serve_machine_params(false);
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(context_with_options(w, "ctx", &image, &json!({"env": {"CE_PROBE": "no-params"}})));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    let inspected = inspect_agent(w, &uuid).await?;
    ensure!(env_of(&inspected).iter().any(|e| e == "CE_PROBE=no-params"), "the Context layer was not applied");
    w.sim.put_machine(World::machine(&uuid, "ctx"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = w.wait_agents(1, SETTLE).await?;
    ensure!(again[0].id == inspected.id, "a settle replaced the agent");
    Ok(())
}
