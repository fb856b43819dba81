//! The quick-start demo: the real plugin under the bundled dr-provision simulator, with
//! the Docker engine. A machine enters the `context-demo` Context and gets an agent
//! container (its image auto-loaded from the file server); it leaves, and the agent goes.

use std::time::Duration;

use anyhow::{Context as _, bail};
use ce_tests::world::{DOCKER_SOCK, World, fixtures, list_containers};
use ce_tests::{Plugin, Sim};
use serde_json::json;

const IMAGE: &str = "context-demo/agent:latest";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Sim::start().await?;
    say(&format!("dr-provision simulator: API {} · files {}", sim.api_url(), sim.file_url()));
    let fixtures = fixtures();
    // Where agentStart looks for a missing image: files/contexts/<plugin>/<image>.
    let archive = sim.webroot().join(format!("files/contexts/context-engines/{IMAGE}"));
    std::fs::create_dir_all(archive.parent().context("archive dir")?)?;
    std::fs::copy(fixtures.join("plain.tar"), &archive)?;

    let plugin = Plugin::spawn(&sim, &[("RUST_LOG", "info")]).await?;
    say("plugin printed READY!; sending its config");
    let (code, body) = plugin
        .config(json!({
            "context-engines/endpoints": [sim.file_url()],
            "context-engines/drpcli": fixtures.join("drpcli").display().to_string(),
        }))
        .await?;
    if code != 200 {
        bail!("config answered {code}: {body}");
    }
    let label = "drp.plugin=context-engines";
    if let Some(c) = list_containers(DOCKER_SOCK, label).await?.into_iter().next() {
        bail!("an agent of a previous run is still there: {:?}; remove it with docker rm -f", c.names);
    }

    sim.put_context(json!({"Name": "context-demo", "Engine": "context-engines", "Image": IMAGE, "Meta": {}}));
    let uuid = "3f1d7c2e-0d4b-4c55-9a57-6d0c1e2f8a90";
    say(&format!("machine {uuid} enters Context context-demo (image {IMAGE}, engine docker)"));
    sim.put_machine(World::machine(uuid, "context-demo"));
    let agent = wait_for(label, |n| n == 1).await?;
    let agent = agent.first().context("one agent")?;
    say(&format!(
        "agent started: {} (container {}, {})",
        agent.names.clone().unwrap_or_default().join(","),
        agent.id.clone().unwrap_or_default().get(..12).unwrap_or_default(),
        agent.state.clone().unwrap_or_default()
    ));
    let report =
        sim.wait_for("the agent's report", Duration::from_secs(60), || sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
    say(&format!(
        "agent ran `drpcli {}` with RS_UUID={} RS_CONTEXT={} RS_ENDPOINTS={} and a machine token",
        report.args, report.uuid, report.context, report.endpoints
    ));

    say(&format!("machine {uuid} leaves the Context"));
    sim.put_machine(World::machine(uuid, ""));
    wait_for(label, |n| n == 0).await?;
    say("agent stopped and removed");

    plugin.stop().await?;
    say("plugin stopped cleanly (exit 0)");
    Ok(())
}

fn say(line: &str) {
    println!("==> {line}");
}

async fn wait_for(label: &str, done: impl Fn(usize) -> bool) -> anyhow::Result<Vec<ce_tests::world::ContainerSummary>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = list_containers(DOCKER_SOCK, label).await?;
        let running = found.iter().filter(|c| c.state.as_deref() == Some("running")).count();
        if done(found.len()) && running == found.len() {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out; agents now: {:?}", found.iter().map(|c| &c.names).collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
