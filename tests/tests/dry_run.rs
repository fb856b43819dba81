//! `context-engines/dry-run`: the reconciler plans and reports, touching no runtime; the
//! plan in `agentStatus` names every start; turning it off carries the plan out.

use std::time::Duration;

use anyhow::ensure;
use ce_tests::world::{World, run_scenario, unique};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(60);
const MACHINES: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_plans_every_start_and_starts_nothing_until_it_is_turned_off() {
    run_scenario("docker", "a_dry_run_plans_every_start_and_starts_nothing_until_it_is_turned_off", async |w| {
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        let mut params = w.params();
        params["context-engines/dry-run"] = json!(true);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        w.sim.put_context(w.context("ctx", &image));
        let machines: Vec<String> = (0..MACHINES).map(|_| unique("m")).collect();
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, "ctx"));
        }
        // Every machine is planned as a start, and announced as such.
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let (code, status) = w.action("agentStatus", json!({})).await?;
            ensure!(code == 200 && status["dry_run"] == json!(true), "agentStatus: {code} {status}");
            let plan = status["plan"].as_array().cloned().unwrap_or_default();
            let starts = machines.iter().filter(|m| plan.iter().any(|p| p["machine"] == m.as_str() && p["next"] == "start")).count();
            let announced = machines
                .iter()
                .filter(|m| w.sim.published().iter().any(|e| e["Action"] == "agent-planned" && e["Key"] == m.as_str()))
                .count();
            if starts == MACHINES && announced == MACHINES {
                break;
            }
            ensure!(tokio::time::Instant::now() < deadline, "planned {starts}, announced {announced} of {MACHINES}: {status}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ensure!(w.agents().await?.is_empty(), "a dry run created containers");

        let (code, body) = w.plugin().config(w.params()).await?;
        ensure!(code == 200, "config: {code} {body}");
        w.wait_agents(MACHINES, SETTLE).await?;
        let (_, status) = w.action("agentStatus", json!({})).await?;
        let plan = status["plan"].as_array().cloned().unwrap_or_default();
        ensure!(plan.iter().all(|p| p["next"] == "nothing"), "after carrying it out: {status}");
        Ok(())
    })
    .await
}
