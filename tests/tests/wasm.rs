//! WASM engines in a running plugin: hot loading from the engines directory, precedence
//! over native engines, bad files, isolation of misbehaving engines, and the
//! `engines check` tool. The behaviour suite (engines.rs) covers `docker-api` itself.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ce_tests::load_proxy::{LoadProxy, OnLoad};
use ce_tests::plugin_bin;
use ce_tests::world::{DOCKER_TCP, PODMAN_TCP, World, docker_api_at, engine_sha256, list_containers, run_scenario, unique, wasm_engines};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(60);

async fn engine_row(w: &World, name: &str) -> anyhow::Result<Option<Value>> {
    let (code, rows) = w.action("enginesList", json!({})).await?;
    ensure!(code == 200, "enginesList: {code} {rows}");
    Ok(rows.as_array().and_then(|r| r.iter().find(|e| e["name"] == name).cloned()))
}

async fn wait_row(w: &World, name: &str, want: impl Fn(Option<&Value>) -> bool) -> anyhow::Result<Option<Value>> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let row = engine_row(w, name).await?;
        if want(row.as_ref()) {
            return Ok(row);
        }
        ensure!(Instant::now() < deadline, "engine row for {name} never became as expected; last: {row:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_dropped_into_a_running_plugin_serves_at_once_and_leaves_when_deleted() {
    run_scenario("docker", "an_engine_dropped_into_a_running_plugin_serves_at_once_and_leaves_when_deleted", async |w| {
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        let mut params = w.params();
        params["context-engines/engine-config"]["docker-api"] =
            json!({"base-url": format!("http://{DOCKER_TCP}"), "allowed-hosts": [DOCKER_TCP]});
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let mut ctx = w.context("wasm", &image);
        ctx["Meta"] = json!({"context-engine": "docker-api"});
        w.sim.put_context(ctx);
        let uuid = unique("m");
        w.sim.put_machine(World::machine(&uuid, "wasm"));
        // No such engine yet: the start fails, is reported, and is retried.
        w.sim
            .wait_for("agent-failed for the missing engine", SETTLE, || {
                w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == uuid.as_str())
            })
            .await?;
        ensure!(w.agents().await?.is_empty(), "an agent started without its engine");
        w.install_engine("docker-api.wasm", "docker-api")?;
        let agents = w.wait_agents(1, SETTLE).await?;
        let labels = agents[0].labels.clone().unwrap_or_default();
        ensure!(labels.get("drp.engine").map(String::as_str) == Some("docker-api"), "labels {labels:?}");
        let row = engine_row(w, "docker-api").await?.context("docker-api listed")?;
        ensure!(row["kind"] == "wasm" && row["state"] == "ready", "row {row}");
        // Leaving the context stops the agent through the WASM engine.
        w.sim.put_machine(World::machine(&uuid, ""));
        w.wait_agents(0, SETTLE).await?;
        std::fs::remove_file(w.engines_dir().join("docker-api.wasm"))?;
        wait_row(w, "docker-api", |row| row.is_none()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_engine_file_is_reported_and_changes_nothing_else() {
    run_scenario("docker", "a_bad_engine_file_is_reported_and_changes_nothing_else", async |w| {
        w.install_engine("null.wasm", "null")?;
        wait_row(w, "null", |r| r.is_some_and(|r| r["state"] == "ready")).await?;
        let dir = w.engines_dir();
        std::fs::write(dir.join("broken.wasm"), b"\0asm this is not a component")?;
        let row = wait_row(w, "broken", |r| r.is_some()).await?.context("broken listed")?;
        ensure!(row["state"] == "failed", "row {row}");
        ensure!(row["error"].to_string().contains("not a WebAssembly component"), "reason: {row}");
        // A real component, for another version of the package.
        w.install_engine("future.wasm", "future")?;
        let row = wait_row(w, "future", |r| r.is_some()).await?.context("future listed")?;
        ensure!(row["state"] == "failed", "row {row}");
        ensure!(row["error"].to_string().contains("lifecycle@0.3.0"), "reason: {row}");
        ensure!(row["error"].to_string().contains("no engine contract this host supports"), "reason: {row}");
        // The other engines are untouched and serve.
        ensure!(engine_row(w, "null").await?.is_some_and(|r| r["state"] == "ready"), "null engine lost");
        ensure!(engine_row(w, "docker").await?.is_some_and(|r| r["state"] == "ready"), "docker engine lost");
        let (code, body) = w.action("imageExists", json!({"context/image-name": "any:1", "context/engine": "broken"})).await?;
        ensure!(code == 400 && body["Messages"].to_string().contains("failed to load"), "using the broken engine: {code} {body}");
        // Replacing the file with a good one heals it.
        w.install_engine("null.wasm", "broken")?;
        wait_row(w, "broken", |r| r.is_some_and(|r| r["state"] == "ready")).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_engine_named_like_a_native_one_takes_precedence_until_removed() {
    run_scenario("docker", "a_wasm_engine_named_like_a_native_one_takes_precedence_until_removed", async |w| {
        let native = engine_row(w, "docker").await?.context("docker listed")?;
        ensure!(native["kind"] == "native/docker", "row {native}");
        // Only a WASM engine the operator vouched for may take a native engine's place.
        let mut params = w.params();
        params["context-engines/engine-sha256"] = json!({"docker": engine_sha256("null.wasm")?});
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        w.install_engine("null.wasm", "docker")?;
        wait_row(w, "docker", |r| r.is_some_and(|r| r["kind"] == "wasm")).await?;
        // The null engine claims to have every image: proof that it, not dockerd, answers.
        let (code, body) = w.action("imageExists", json!({"context/image-name": format!("ce-none/{}:1", unique("x"))})).await?;
        ensure!(code == 200 && body == json!(true), "imageExists through the WASM docker: {code} {body}");
        std::fs::remove_file(w.engines_dir().join("docker.wasm"))?;
        wait_row(w, "docker", |r| r.is_some_and(|r| r["kind"] == "native/docker")).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_engines_are_contained() {
    run_scenario("docker", "misbehaving_engines_are_contained", async |w| {
        for name in ["null", "spin", "hog", "trap", "slow", "forbidden"] {
            w.install_engine(&format!("{name}.wasm"), name)?;
        }
        let mut params = w.params();
        params["context-engines/wasm-deadline-ms"] = json!(1000);
        params["context-engines/wasm-memory-mb"] = json!(32);
        params["context-engines/engine-config"]["forbidden"] = json!({"allowed-hosts": ["127.0.0.1:23750"]});
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(code == 200, "config: {code} {body}");
        for name in ["null", "spin", "hog", "trap", "slow", "forbidden"] {
            wait_row(w, name, |r| r.is_some()).await?;
        }
        let cases = [
            ("spin", "deadline of 1000 ms"),
            ("hog", "memory cap of 32 MiB"),
            ("trap", "trapped"),
            ("slow", "deadline of 1000 ms"),
            ("forbidden", "denied"),
        ];
        for (engine, says) in cases {
            for attempt in 1..=2 {
                let started = Instant::now();
                let (code, body) = w.action("imageExists", json!({"context/image-name": "x:1", "context/engine": engine})).await?;
                let took = started.elapsed();
                let message = body["Messages"].to_string().to_lowercase();
                ensure!(code >= 400, "{engine} (attempt {attempt}) succeeded: {body}");
                ensure!(message.contains(&format!("'{engine}'")), "{engine}: error does not name the engine: {message}");
                ensure!(message.contains(&says.to_lowercase()), "{engine}: error should say {says:?}: {message}");
                ensure!(took < Duration::from_secs(10), "{engine}: contained only after {took:?}");
                // Everything else still answers, at once.
                let (code, body) = w.action("imageExists", json!({"context/image-name": "x:1", "context/engine": "null"})).await?;
                ensure!(code == 200 && body == json!(true), "null engine after {engine}: {code} {body}");
                let (code, _) = w.action("imageExists", json!({"context/image-name": "x:1"})).await?;
                ensure!(code == 200, "docker engine after {engine}: {code}");
            }
        }
        // The slow engine is only slow: with a longer deadline it answers.
        params["context-engines/wasm-deadline-ms"] = json!(10_000);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let (code, body) = w.action("imageExists", json!({"context/image-name": "x:1", "context/engine": "slow"})).await?;
        ensure!(code == 200, "slow engine with a 10 s deadline: {code} {body}");
        ensure!(w.plugin.as_mut().is_some_and(|p| p.is_running()), "the plugin died");
        Ok(())
    })
    .await
}

/// TCP, UDP, name lookup and files are denied by the host's own WASI settings. The
/// `sockets` engine aims its TCP connect and UDP send at listeners of this test, so a
/// denial is the sandbox's and not an empty port: the listeners must see nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_gets_no_sockets_no_name_lookup_and_no_files() {
    run_scenario("docker", "an_engine_gets_no_sockets_no_name_lookup_and_no_files", async |w| {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        tcp.set_nonblocking(true)?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        udp.set_nonblocking(true)?;
        w.install_engine("sockets.wasm", "sockets")?;
        let mut params = w.params();
        params["context-engines/engine-config"]["sockets"] =
            json!({"port": tcp.local_addr()?.port(), "udp-port": udp.local_addr()?.port()});
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        wait_row(w, "sockets", |r| r.is_some()).await?;
        let (code, body) = w.action("imageExists", json!({"context/image-name": "x:1", "context/engine": "sockets"})).await?;
        ensure!(code >= 400, "the sockets engine always fails, got: {code} {body}");
        let message = body["Messages"].to_string();
        eprintln!("wasm: the sockets engine reported: {message}");
        for probe in ["tcp", "udp", "lookup", "file"] {
            ensure!(message.contains(&format!("{probe}=denied: ")), "{probe} was not denied: {message}");
        }
        ensure!(!message.contains("ALLOWED"), "something was let through: {message}");
        match tcp.accept() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => bail!("the TCP listener was reached: {other:?}"),
        }
        match udp.recv_from(&mut [0; 64]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => bail!("the UDP socket was reached: {other:?}"),
        }
        Ok(())
    })
    .await
}

#[test]
fn engines_check_reports_what_fits_and_what_does_not() {
    let good = Command::new(plugin_bin())
        .args(["engines", "check"])
        .arg(wasm_engines().join("docker-api.wasm"))
        .output()
        .expect("run engines check");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "check of docker-api failed: {}", String::from_utf8_lossy(&good.stderr));
    assert!(stdout.contains("implements context-engines:engine/engine@0.2.0"), "{stdout}");
    assert!(stdout.contains("contract: 0.2.0"), "{stdout}");
    assert!(stdout.contains("exports context-engines:engine/lifecycle@0.2.0"), "{stdout}");
    assert!(stdout.contains("image-load") && stdout.contains("agent-start") && stdout.contains("agent-logs"), "{stdout}");
    assert!(stdout.contains("describe: name=docker-api"), "{stdout}");
    assert!(stdout.contains("features: mounts, resources, security, process, logs\n"), "{stdout}");
    assert!(stdout.contains("features not declared (options needing them are refused): none"), "{stdout}");

    // The frozen 0.1 engine still fits, and says which contract it has.
    let legacy = Command::new(plugin_bin())
        .args(["engines", "check"])
        .arg(wasm_engines().join("legacy-docker.wasm"))
        .output()
        .expect("run engines check");
    let stdout = String::from_utf8_lossy(&legacy.stdout);
    assert!(legacy.status.success(), "check of legacy-docker failed: {}", String::from_utf8_lossy(&legacy.stderr));
    assert!(stdout.contains("implements context-engines:engine/engine@0.1.0") && stdout.contains("contract: 0.1.0"), "{stdout}");
    assert!(stdout.contains("exports context-engines:engine/lifecycle@0.1.0"), "{stdout}");
    assert!(!stdout.contains("agent-logs"), "{stdout}");

    // null declares no feature: the check says what it will be refused.
    let null = Command::new(plugin_bin()).args(["engines", "check"]).arg(wasm_engines().join("null.wasm")).output().expect("run check");
    let stdout = String::from_utf8_lossy(&null.stdout);
    assert!(stdout.contains("features: none\n"), "{stdout}");
    assert!(
        stdout.contains("features not declared (options needing them are refused): mounts, resources, security, process, logs"),
        "{stdout}"
    );

    // A component for a version the host does not speak: refused, saying what it is.
    let future =
        Command::new(plugin_bin()).args(["engines", "check"]).arg(wasm_engines().join("future.wasm")).output().expect("run engines check");
    let stderr = String::from_utf8_lossy(&future.stderr);
    assert!(!future.status.success(), "a component of engine@0.3.0 passed the check");
    assert!(stderr.contains("implements no engine contract this host supports (context-engines:engine@0.1.0 or @0.2.0)"), "{stderr}");
    assert!(stderr.contains("exports context-engines:engine/lifecycle@0.3.0"), "the error should show what it exports: {stderr}");

    let junk = std::env::temp_dir().join(format!("{}.wasm", unique("junk")));
    std::fs::write(&junk, b"definitely not wasm").expect("write junk");
    let bad = Command::new(plugin_bin()).args(["engines", "check"]).arg(&junk).output().expect("run engines check");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success(), "junk passed the check");
    assert!(stderr.contains("is not a WebAssembly component"), "{stderr}");
    let _ = std::fs::remove_file(&junk);
}

#[test]
fn unpack_writes_the_bundled_engines() {
    let dir = std::env::temp_dir().join(unique("ce-unpack-"));
    let status = Command::new(plugin_bin()).arg("unpack").arg(&dir).status().expect("run unpack");
    assert!(status.success());
    for engine in ["docker-api", "null"] {
        let file = dir.join(format!("engines/{engine}.wasm"));
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(
            bytes,
            std::fs::read(wasm_engines().join(format!("{engine}.wasm"))).expect("built engine"),
            "{engine} differs from the build"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_engine_drains_its_agents_run_until_their_machines_move() {
    run_scenario("docker_api", "a_removed_engine_drains_its_agents_run_until_their_machines_move", async |w| {
        let mut params = w.params();
        // Resyncs every 2 s: the drained engine is let go at a listing.
        params["context-engines/resync-secs"] = json!(2);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        w.sim.put_context(w.context("wasm", &image));
        let machines = [unique("m"), unique("m")];
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, "wasm"));
        }
        let before: Vec<Option<String>> = w.wait_agents(2, SETTLE).await?.into_iter().map(|a| a.id).collect();
        std::fs::remove_file(w.engines_dir().join("docker-api.wasm"))?;
        let row = wait_row(w, "docker-api@wasm", |r| r.is_some()).await?.context("draining row")?;
        ensure!(row["state"] == "draining", "row {row}");
        // Its machines change (and resyncs pass): their agents keep running, untouched.
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, "wasm"));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut after: Vec<Option<String>> = w.wait_agents(2, SETTLE).await?.into_iter().map(|a| a.id).collect();
        let mut want = before.clone();
        after.sort();
        want.sort();
        ensure!(after == want, "the agents were replaced: {before:?} -> {after:?}");
        // Moved out, they are stopped by the engine that started them, and then it goes.
        for uuid in &machines {
            w.sim.put_machine(World::machine(uuid, ""));
        }
        w.wait_agents(0, SETTLE).await?;
        wait_row(w, "docker-api@wasm", |r| r.is_none()).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasm_docker_on_another_runtime_takes_over_and_the_native_agents_are_stopped() {
    run_scenario("docker", "a_wasm_docker_on_another_runtime_takes_over_and_the_native_agents_are_stopped", async |w| {
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        w.sim.put_context(w.context("ctx", &image));
        let uuid = unique("m");
        w.sim.put_machine(World::machine(&uuid, "ctx"));
        w.wait_agents(1, SETTLE).await?;
        // "docker" is now docker-api talking to Podman.
        let mut params = w.params();
        params["context-engines/engine-config"]["docker"] =
            json!({"host": ce_tests::world::DOCKER_SOCK, "base-url": format!("http://{PODMAN_TCP}"), "allowed-hosts": [PODMAN_TCP]});
        params["context-engines/engine-sha256"] = json!({"docker": engine_sha256("docker-api.wasm")?});
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        w.install_engine("docker-api.wasm", "docker")?;
        wait_row(w, "docker", |r| r.is_some_and(|r| r["kind"] == "wasm")).await?;
        w.upload("plain.tar", &image).await?;
        w.sim.put_machine(World::machine(&uuid, "ctx"));
        let label = format!("drp.plugin={}", w.plugin_name);
        let deadline = Instant::now() + SETTLE;
        loop {
            let on_docker = list_containers(ce_tests::world::DOCKER_SOCK, &label).await?;
            let on_podman = list_containers(ce_tests::world::PODMAN_SOCK, &label).await?;
            let running = |c: &Vec<ce_tests::world::ContainerSummary>| c.iter().filter(|c| c.state.as_deref() == Some("running")).count();
            if on_docker.is_empty() && on_podman.len() == 1 && running(&on_podman) == 1 {
                break;
            }
            ensure!(Instant::now() < deadline, "docker {} / podman {} agents\n{}", on_docker.len(), on_podman.len(), w.stderr_tail());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Removing the file hands "docker" back to dockerd, and the agent moves back.
        std::fs::remove_file(w.engines_dir().join("docker.wasm"))?;
        w.sim.put_machine(World::machine(&uuid, "ctx"));
        w.wait_agents(1, SETTLE).await?;
        let deadline = Instant::now() + SETTLE;
        while !list_containers(ce_tests::world::PODMAN_SOCK, &label).await?.is_empty() {
            ensure!(Instant::now() < deadline, "the Podman agent was left behind\n{}", w.stderr_tail());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_load_the_runtime_stops_reading_fails_within_the_deadline() {
    run_scenario("docker_api", "an_image_load_the_runtime_stops_reading_fails_within_the_deadline", async |w| {
        let proxy = LoadProxy::start(DOCKER_TCP, OnLoad::StopReading).await?;
        let mut params = w.params();
        params["context-engines/wasm-deadline-ms"] = json!(2000);
        params["context-engines/engine-config"]["docker-api"] = docker_api_at(&proxy.authority());
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        // Larger than every socket buffer between the engine and the proxy.
        std::fs::write(w.sim.webroot().join("files/fixtures/big.tar"), vec![0u8; 64 << 20])?;
        let started = Instant::now();
        let (code, body) =
            w.action("imageUpload", json!({"context/image-name": w.image(), "context/image-path": "files/fixtures/big.tar"})).await?;
        let took = started.elapsed();
        let message = body["Messages"].to_string();
        ensure!(proxy.loads() == 1, "the load never reached the proxy ({} loads): {code} {body}", proxy.loads());
        ensure!(code >= 400 && message.contains("made no progress for 2000 ms"), "{code} {body}");
        ensure!(took < Duration::from_secs(30), "the stall was noticed only after {took:?}");
        // The engine still serves.
        let (code, _) = w.action("imageExists", json!({"context/image-name": w.image()})).await?;
        ensure!(code == 200, "imageExists after the stall: {code}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_load_answered_late_is_bounded_by_the_request_timeout_not_the_deadline() {
    run_scenario("docker_api", "an_image_load_answered_late_is_bounded_by_the_request_timeout_not_the_deadline", async |w| {
        let proxy = LoadProxy::start(DOCKER_TCP, OnLoad::HoldAnswer(Duration::from_secs(4))).await?;
        let mut params = w.params();
        params["context-engines/wasm-deadline-ms"] = json!(1000);
        params["context-engines/engine-config"]["docker-api"] = docker_api_at(&proxy.authority());
        let (code, body) = w.plugin().config(params.clone()).await?;
        ensure!(code == 200, "config: {code} {body}");
        // Answered 4 s after the last byte, past the 1 s call deadline: still a success.
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        let (code, body) = w.action("imageExists", json!({"context/image-name": image})).await?;
        ensure!(code == 200 && body == json!(true), "loaded image: {code} {body}");
        // With a request timeout of 1 s, the same late answer fails the load, saying so.
        params["context-engines/engine-config"]["docker-api"]["request-timeout-secs"] = json!(1);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let (code, body) = w
            .action("imageUpload", json!({"context/image-name": "ce-test/late:2", "context/image-path": "files/fixtures/plain.tar"}))
            .await?;
        let message = body["Messages"].to_string();
        ensure!(code >= 400 && message.contains("within 1 s after the archive's last byte"), "{code} {body}");
        ensure!(proxy.loads() == 2, "loads through the proxy: {}", proxy.loads());
        Ok(())
    })
    .await
}

/// The error of the `agent-failed` event published for `machine`.
async fn start_failure(w: &World, machine: &str) -> anyhow::Result<String> {
    let failed = w
        .sim
        .wait_for("an agent-failed event", SETTLE, || {
            w.sim.published().into_iter().find(|e| e["Action"] == "agent-failed" && e["Object"]["Machine"] == machine)
        })
        .await?;
    Ok(failed["Object"]["Error"].as_str().unwrap_or_default().to_string())
}

/// A Context of `w` on engine `engine`, with agent options (JSON text) when given.
fn context_on(w: &World, name: &str, image: &str, engine: &str, options: Option<&str>) -> Value {
    let mut ctx = w.context(name, image);
    ctx["Meta"] = json!({"context-engine": engine});
    if let Some(options) = options {
        ctx["Meta"]["agent-options"] = json!(options);
    }
    ctx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_0_1_runs_plain_agents_and_a_start_with_options_fails_naming_them() {
    run_scenario("docker", "an_engine_0_1_runs_plain_agents_and_a_start_with_options_fails_naming_them", async |w| {
        w.install_engine("legacy-docker.wasm", "legacy")?;
        let mut params = w.params();
        params["context-engines/engine-config"]["legacy"] = docker_api_at(DOCKER_TCP);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let row = wait_row(w, "legacy", |r| r.is_some_and(|r| r["state"] == "ready")).await?.context("legacy listed")?;
        ensure!(row["version"].as_str().is_some_and(|v| v.contains("engine@0.1.0")), "the row should show the contract: {row}");
        let image = w.image();
        w.upload("plain.tar", &image).await?;
        // Without options, a 0.1 engine runs the agent, drpcli injected as 0.1 knows it.
        w.sim.put_context(context_on(w, "plain", &image, "legacy", None));
        let plain = unique("m");
        w.sim.put_machine(World::machine(&plain, "plain"));
        let agents = w.wait_agents(1, SETTLE).await?;
        let labels = agents[0].labels.clone().unwrap_or_default();
        ensure!(labels.get("drp.engine").map(String::as_str) == Some("legacy"), "labels {labels:?}");
        // With an option 0.1 cannot express, the start fails, naming engine, contract and option.
        w.sim.put_context(context_on(w, "opts", &image, "legacy", Some(r#"{"memory":"64m"}"#)));
        let opts = unique("m");
        w.sim.put_machine(World::machine(&opts, "opts"));
        let error = start_failure(w, &opts).await?;
        for says in ["'legacy'", "engine@0.1.0", "memory"] {
            ensure!(error.contains(says), "the error should say {says:?}: {error}");
        }
        ensure!(w.agents().await?.len() == 1, "an agent started without its options");
        // The plugin keeps serving, through that engine too.
        let (code, body) = w.action("imageExists", json!({"context/image-name": image, "context/engine": "legacy"})).await?;
        ensure!(code == 200 && body == json!(true), "imageExists through legacy: {code} {body}");
        w.sim.put_machine(World::machine(&plain, ""));
        w.sim.put_machine(World::machine(&opts, ""));
        w.wait_agents(0, SETTLE).await?;
        ensure!(w.plugin.as_mut().is_some_and(|p| p.is_running()), "the plugin died");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_0_2_lacking_a_feature_is_refused_the_start_naming_it() {
    run_scenario("docker", "an_engine_0_2_lacking_a_feature_is_refused_the_start_naming_it", async |w| {
        w.install_engine("null.wasm", "null")?;
        let row = wait_row(w, "null", |r| r.is_some_and(|r| r["state"] == "ready")).await?.context("null listed")?;
        ensure!(row["version"].as_str().is_some_and(|v| v.contains("engine@0.2.0")), "the row should show the contract: {row}");
        w.sim.put_context(context_on(w, "opts", "ce-none/x:1", "null", Some(r#"{"memory":"64m","workdir":"/tmp"}"#)));
        let uuid = unique("m");
        w.sim.put_machine(World::machine(&uuid, "opts"));
        let error = start_failure(w, &uuid).await?;
        for says in ["'null'", "engine@0.2.0", "resources (for memory)", "process (for workdir)", "declares: none"] {
            ensure!(error.contains(says), "the error should say {says:?}: {error}");
        }
        ensure!(w.plugin.as_mut().is_some_and(|p| p.is_running()), "the plugin died");
        Ok(())
    })
    .await
}

/// docker-api applies the whole spec, on dockerd and on Podman's compat API alike, and
/// keeps an agent whose spec is unchanged.
async fn docker_api_applies_agent_options(w: &mut World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    let options = |memory: &str| {
        json!({
            "memory": memory, "cpus": 0.5, "pids-limit": 100, "workdir": "/tmp", "cap-drop": ["NET_RAW"],
            "mounts": [{"type": "tmpfs", "target": "/scratch", "tmpfs-size": "1m"}],
            "labels": {"team": "infra"}, "env": {"EXTRA": "1"}
        })
        .to_string()
    };
    w.sim.put_context(context_on(w, "opts", &image, "docker-api", Some(&options("64m"))));
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, "opts"));
    let agents = w.wait_agents(1, SETTLE).await?;
    let id = agents[0].id.clone().context("agent id")?;
    let inspect = w.runtime.inspect_container(&id, None).await?;
    let host = inspect.host_config.clone().unwrap_or_default();
    let config = inspect.config.clone().unwrap_or_default();
    ensure!(host.memory == Some(64 << 20), "memory {:?}", host.memory);
    ensure!(host.nano_cpus == Some(500_000_000), "nano cpus {:?}", host.nano_cpus);
    ensure!(host.pids_limit == Some(100), "pids limit {:?}", host.pids_limit);
    ensure!(config.working_dir.as_deref() == Some("/tmp"), "workdir {:?}", config.working_dir);
    ensure!(config.labels.unwrap_or_default().get("team").map(String::as_str) == Some("infra"), "labels");
    ensure!(config.env.unwrap_or_default().iter().any(|e| e == "EXTRA=1"), "env");
    let scratch = host.mounts.unwrap_or_default().iter().any(|m| m.target.as_deref() == Some("/scratch"))
        || host.tmpfs.unwrap_or_default().contains_key("/scratch")
        || inspect.mounts.unwrap_or_default().iter().any(|m| m.destination.as_deref() == Some("/scratch"));
    ensure!(scratch, "no tmpfs at /scratch");
    // The same spec again: kept. Another one: replaced.
    w.sim.put_machine(World::machine(&uuid, "opts"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = w.wait_agents(1, SETTLE).await?;
    ensure!(again[0].id.as_deref() == Some(id.as_str()), "an unchanged agent was replaced");
    w.sim.put_context(context_on(w, "opts", &image, "docker-api", Some(&options("96m"))));
    w.sim.put_machine(World::machine(&uuid, "opts"));
    let deadline = Instant::now() + SETTLE;
    loop {
        let now = w.running_agents().await?;
        if let Some(new) = now.iter().find(|a| a.id.as_deref() != Some(id.as_str())).and_then(|a| a.id.clone()) {
            let memory = w.runtime.inspect_container(&new, None).await?.host_config.and_then(|h| h.memory);
            ensure!(memory == Some(96 << 20), "replaced agent's memory {memory:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "the agent was not replaced after its options changed\n{}", w.stderr_tail());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    w.sim.put_machine(World::machine(&uuid, ""));
    w.wait_agents(0, SETTLE).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_api_applies_agent_options_on_dockerd() {
    run_scenario("docker_api", "docker_api_applies_agent_options_on_dockerd", docker_api_applies_agent_options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_api_applies_agent_options_on_podman() {
    run_scenario("docker_api_on_podman", "docker_api_applies_agent_options_on_podman", docker_api_applies_agent_options).await
}
