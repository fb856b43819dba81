//! The metrics listener, scraped by a real Prometheus on loopback: the agents-running
//! gauge follows a burst of 20 machines up and down, `up` is 1, the names are
//! Prometheus' own conventions; and the listener follows its param (moved, closed, an
//! address that cannot be bound refused by name, the plugin serving on). `/healthz`
//! turning 503 while dockerd is down is in faults.rs, which may stop dockerd.

use std::time::Duration;

use anyhow::ensure;
use ce_tests::prometheus::{Prometheus, free_loopback, get};
use ce_tests::world::{World, run_scenario, unique};
use serde_json::json;

const MACHINES: usize = 20;
const SETTLE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_running_agents_follow_a_burst_up_and_down() {
    run_scenario("docker", "prometheus_sees_the_running_agents_follow_a_burst_up_and_down", async |w| {
        let at = free_loopback()?;
        w.extra_params.insert("context-engines/metrics-address".into(), json!(at.to_string()));
        let (code, body) = w.plugin().config(w.params()).await?;
        ensure!(code == 200, "config with a metrics address: {code} {body}");
        let prometheus = Prometheus::start(at, &w.sim.scratch().join("prometheus")).await?;
        prometheus.wait_for(r#"up{job="context-engines"}"#, 1.0, Duration::from_secs(30)).await?;

        let image = w.image();
        w.upload("plain.tar", &image).await?;
        w.sim.put_context(w.context("ctx", &image));
        let machines: Vec<String> = (0..MACHINES).map(|_| unique("m")).collect();
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, "ctx"));
        }
        let running = r#"sum(context_engines_agents_running{context="ctx",engine="docker"}) or vector(0)"#;
        let wanted = r#"sum(context_engines_agents_wanted{context="ctx",engine="docker"}) or vector(0)"#;
        prometheus.wait_for(wanted, MACHINES as f64, SETTLE).await?;
        prometheus.wait_for(running, MACHINES as f64, SETTLE).await?;
        w.wait_agents(MACHINES, SETTLE).await?;
        let starts = prometheus.value(r#"sum(context_engines_agent_starts_total{engine="docker"})"#).await?;
        ensure!(starts.is_some_and(|n| n >= MACHINES as f64), "agent starts: {starts:?}");
        let loads = prometheus.value(r#"sum(context_engines_image_loads_total{engine="docker"})"#).await?;
        ensure!(loads.is_some_and(|n| n >= 1.0), "image loads: {loads:?}");
        let bytes = prometheus.value(r#"sum(context_engines_image_load_bytes_total{engine="docker"})"#).await?;
        let archive = std::fs::metadata(w.fixture("plain.tar"))?.len() as f64;
        ensure!(bytes.is_some_and(|n| n >= archive), "image bytes {bytes:?}, the archive alone is {archive}");

        // Straight from the listener: the conventions Prometheus users expect.
        let (code, text) = get(at, "/metrics").await?;
        ensure!(code == 200, "/metrics answered {code}");
        for name in [
            "context_engines_build_info{version=",
            "context_engines_agent_start_seconds_bucket{",
            "context_engines_full_reconcile_seconds_count",
            "context_engines_event_stream_connects_total",
            "context_engines_work_queue_depth",
            "context_engines_healthy 1",
        ] {
            ensure!(text.contains(name), "/metrics lacks {name}:\n{text}");
        }
        let (code, health) = get(at, "/healthz").await?;
        ensure!(code == 200 && health.trim() == "ok", "/healthz with everything up: {code} {health}");

        for uuid in &machines {
            w.sim.delete_machine(uuid);
        }
        prometheus.wait_for(running, 0.0, SETTLE).await?;
        prometheus.wait_for(wanted, 0.0, SETTLE).await?;
        w.wait_agents(0, SETTLE).await?;
        let stops = prometheus.value(r#"sum(context_engines_agent_stops_total{engine="docker"})"#).await?;
        ensure!(stops.is_some_and(|n| n >= MACHINES as f64), "agent stops: {stops:?}");
        prometheus.wait_for(r#"up{job="context-engines"}"#, 1.0, Duration::from_secs(10)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_follows_its_param_and_an_address_it_cannot_bind_is_refused_by_name() {
    run_scenario("docker", "the_listener_follows_its_param_and_an_address_it_cannot_bind_is_refused_by_name", async |w| {
        let first = free_loopback()?;
        let mut params = w.params();
        params["context-engines/metrics-address"] = json!(first.to_string());
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(code == 200, "config: {code} {body}");
        let (code, _) = get(first, "/metrics").await?;
        ensure!(code == 200, "/metrics on {first}: {code}");
        let (code, body) = get(first, "/nothing").await?;
        ensure!(code == 404 && body.contains("/healthz"), "an unknown path: {code} {body}");

        // Not an IP address and port: refused, naming the param and the value.
        params["context-engines/metrics-address"] = json!("localhost:9464");
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(
            code == 400 && body.to_string().contains("context-engines/metrics-address") && body.to_string().contains("localhost:9464"),
            "a host name as metrics address: {code} {body}"
        );
        // Taken: refused naming the address; nothing of that config applied, so the
        // listener stays where it was.
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let taken_at = taken.local_addr()?;
        params["context-engines/metrics-address"] = json!(taken_at.to_string());
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(code == 400 && body.to_string().contains(&taken_at.to_string()), "an address in use: {code} {body}");
        let (code, _) = get(first, "/metrics").await?;
        ensure!(code == 200, "after a refused config, /metrics on {first}: {code}");

        // Moved: the new address serves, the old one is closed.
        let second = free_loopback()?;
        params["context-engines/metrics-address"] = json!(second.to_string());
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(code == 200, "moving the listener: {code} {body}");
        let (code, _) = get(second, "/healthz").await?;
        ensure!(code == 200 || code == 503, "/healthz on {second}: {code}");
        ensure!(get(first, "/metrics").await.is_err(), "{first} still answers after the listener moved");

        // Unset: closed.
        let (code, body) = w.plugin().config(w.params()).await?;
        ensure!(code == 200, "config without a metrics address: {code} {body}");
        ensure!(get(second, "/metrics").await.is_err(), "{second} still answers after the param was removed");
        let (code, status) = w.action("agentStatus", json!({})).await?;
        ensure!(code == 200, "the plugin keeps serving: {code} {status}");
        Ok(())
    })
    .await
}
