//! The provider protocol as dr-provision sees it: `define`, `unpack`, `listen`, and every
//! kind of bad request, against the real binary over real unix sockets.

use std::process::Command;

use anyhow::ensure;
use ce_tests::world::World;
use ce_tests::{Plugin, Sim, plugin_bin};
use serde_json::{Value, json};

fn define() -> Value {
    let out = Command::new(plugin_bin()).arg("define").output().expect("run define");
    assert!(out.status.success(), "define failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("define prints JSON")
}

#[test]
fn define_matches_the_spec_field_for_field() {
    let d = define();
    assert_eq!(d["Name"], "context-engines");
    let version = d["Version"].as_str().expect("Version is a string");
    assert_eq!(version.split('.').count(), 3, "Version {version} is not semver");
    assert_eq!(d["PluginVersion"], 4);
    assert_eq!(d["AutoStart"], true);
    assert_eq!(d["HasPublish"], false);
    assert_eq!(d["RequiredParams"], json!([]));
    assert_eq!(d["StoreObjects"], json!({}));
    assert!(d["Documentation"].as_str().is_some_and(|s| s.len() > 100));
    let optional: Vec<&str> = d["OptionalParams"].as_array().expect("list").iter().filter_map(Value::as_str).collect();
    for param in [
        "context-engines/plugin-name",
        "context-engines/default-engine",
        "context-engines/engines-dir",
        "context-engines/endpoints",
        "context-engines/engine-config",
        "context-engines/agent-network",
        "context-engines/drpcli",
        "context-engines/max-parallel",
    ] {
        assert!(optional.contains(&param), "{param} missing from OptionalParams");
    }
    let actions = d["AvailableActions"].as_array().expect("AvailableActions");
    let spec = [
        ("imageUpload", "", json!(["context/image-name", "context/image-path"]), json!(["context/engine"])),
        ("imageExists", "", json!(["context/image-name"]), json!(["context/engine"])),
        ("imageRemove", "", json!(["context/image-name"]), json!(["context/engine"])),
        ("agentStart", "machines", json!(["context/image-name", "context/name"]), json!(["context/engine"])),
        ("agentStop", "machines", json!(["context/name"]), json!(["context/engine"])),
    ];
    for (command, model, required, optional) in spec {
        let action = actions.iter().find(|a| a["Command"] == command).unwrap_or_else(|| panic!("{command} missing"));
        assert_eq!(action["Model"], model, "{command} Model");
        assert_eq!(action["RequiredParams"], required, "{command} RequiredParams");
        assert_eq!(action["OptionalParams"], optional, "{command} OptionalParams");
    }
    // The content bundle is YAML with every param defined and documented.
    let content: serde_yaml::Value = serde_yaml::from_str(d["Content"].as_str().expect("Content string")).expect("Content is YAML");
    assert_eq!(content["meta"]["Name"].as_str(), Some("context-engines"));
    for param in &optional {
        let p = &content["sections"]["params"][*param];
        assert!(p["Schema"]["type"].is_string(), "{param} has no schema in content");
        assert!(p["Documentation"].as_str().is_some_and(|s| !s.is_empty()), "{param} undocumented");
    }
}

#[test]
fn unpack_creates_the_engines_directory() {
    let dir = std::env::temp_dir().join(ce_tests::world::unique("ce-unpack-"));
    let status = Command::new(plugin_bin()).arg("unpack").arg(&dir).status().expect("run unpack");
    assert!(status.success());
    assert!(dir.join("engines").is_dir(), "unpack did not create {}/engines", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
}

async fn started() -> anyhow::Result<(Sim, Plugin)> {
    let sim = Sim::start().await?;
    let plugin = Plugin::spawn(&sim, &[("RUST_LOG", "info")]).await?;
    let (code, body) = plugin.config(json!({"context-engines/plugin-name": "protocol-test"})).await?;
    ensure!(code == 200 && body == json!({"Code": 200}), "config: {code} {body}");
    Ok((sim, plugin))
}

fn error_json(bytes: &[u8]) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_slice(bytes)?;
    ensure!(v["Code"].is_number() && v["Messages"].is_array(), "not an Error JSON: {v}");
    for key in ["Model", "Key", "Type"] {
        ensure!(v[key].is_string(), "Error JSON lacks {key}: {v}");
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_the_plugin_keeps_serving() -> anyhow::Result<()> {
    let (sim, plugin) = started().await?;
    // (path, content type, body, status wanted, message wanted)
    type Case<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/api-plugin/v4/action", None, br#"{"Command":"enginesList"}"#.to_vec(), 400, "Content-Type"),
        ("/api-plugin/v4/action", Some("text/plain"), br#"{}"#.to_vec(), 400, "Content-Type"),
        ("/api-plugin/v4/action", Some("application/json"), b"{not json".to_vec(), 400, "not valid JSON"),
        ("/api-plugin/v4/action", Some("application/json"), br#"{"Command":7}"#.to_vec(), 400, "not an Action"),
        ("/api-plugin/v4/action", Some("application/json"), br#"{"Command":"explode"}"#.to_vec(), 404, "unknown action 'explode'"),
        ("/api-plugin/v4/action", Some("application/json"), br#"{"Command":"imageExists","Params":[1]}"#.to_vec(), 400, "params must be"),
        (
            "/api-plugin/v4/action",
            Some("application/json"),
            br#"{"Command":"imageExists","Params":{}}"#.to_vec(),
            400,
            "context/image-name",
        ),
        (
            "/api-plugin/v4/action",
            Some("application/json"),
            br#"{"Command":"imageExists","Params":{"context/image-name":5}}"#.to_vec(),
            400,
            "must be a string",
        ),
        (
            "/api-plugin/v4/action",
            Some("application/json"),
            br#"{"Command":"imageExists","Params":{"context/image-name":"x","context/engine":"nope"}}"#.to_vec(),
            400,
            "unknown engine 'nope'",
        ),
        (
            "/api-plugin/v4/action",
            Some("application/json"),
            br#"{"Command":"agentStop","Model":"machine?","Params":{"context/name":"c"}}"#.to_vec(),
            400,
            "not a machine",
        ),
        (
            "/api-plugin/v4/config",
            Some("application/json"),
            br#"{"context-engines/max-parallel":"lots"}"#.to_vec(),
            400,
            "context-engines/max-parallel",
        ),
        (
            "/api-plugin/v4/config",
            Some("application/json"),
            br#"{"context-engines/engine-config":{"docker":"unix:///x"}}"#.to_vec(),
            400,
            "docker",
        ),
        ("/api-plugin/v4/config", Some("application/json"), b"[]".to_vec(), 400, "must be a JSON object"),
        ("/api-plugin/v4/nothing", Some("application/json"), b"{}".to_vec(), 404, "no such endpoint"),
        ("/api-plugin/v4/action", Some("application/json"), vec![b' '; 9 * 1024 * 1024], 413, "limit"),
    ];
    for (path, content_type, body, code, says) in cases {
        let (got, reply) = plugin.post_raw(path, content_type, body).await?;
        let error = error_json(&reply)?;
        ensure!(got == code, "{path} with {content_type:?}: expected {code}, got {got}: {error}");
        ensure!(error["Code"] == code, "Error JSON Code {} != HTTP {code}", error["Code"]);
        ensure!(error["Messages"].to_string().contains(says), "{path}: error should say {says:?}: {error}");
    }
    // Still serving, with the earlier good config in force.
    let (code, engines) = plugin.action(json!({}), "enginesList", json!({})).await?;
    ensure!(code == 200, "enginesList: {code} {engines}");
    let names: Vec<&str> = engines.as_array().map(|r| r.iter().filter_map(|e| e["name"].as_str()).collect()).unwrap_or_default();
    ensure!(names.contains(&"docker") && names.contains(&"podman"), "engines: {engines}");
    let (code, status) = plugin.action(json!({}), "agentStatus", json!({})).await?;
    ensure!(code == 200 && status["agents"].is_array(), "agentStatus: {code} {status}");
    drop(sim);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_replies_leaves_and_exits_zero() -> anyhow::Result<()> {
    let (sim, plugin) = started().await?;
    let sock = plugin.to_sock().to_path_buf();
    // A connection counts before its register frames are read: wait for those.
    let wanted = ["machines.*.*", "contexts.*.*"];
    let registered = sim
        .wait_for("event stream registrations", std::time::Duration::from_secs(30), || {
            let registrations = sim.registrations();
            wanted.iter().all(|t| registrations.iter().any(|r| r == t)).then_some(registrations)
        })
        .await;
    ensure!(registered.is_ok(), "not registered for {wanted:?}: {:?}", sim.registrations());
    // Log lines reach dr-provision through the client socket.
    sim.wait_for("forwarded log line", std::time::Duration::from_secs(10), || {
        sim.logs().into_iter().find(|l| l["Message"].as_str().is_some_and(|m| m.contains("event stream")))
    })
    .await?;
    let status = plugin.stop().await?;
    ensure!(status.success(), "exit status {status}");
    ensure!(sim.leaving() == 1, "leaving posted {} times", sim.leaving());
    ensure!(!sock.exists(), "socket file left behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced() -> anyhow::Result<()> {
    let sim = Sim::start().await?;
    // A crashed predecessor's socket: the next plugin must still bind.
    let first = Plugin::spawn(&sim, &[]).await?;
    let sock = first.to_sock().to_path_buf();
    let mut first = first;
    first.kill();
    ensure!(sock.exists(), "kill should leave the socket file behind for this test");
    let second = Plugin::spawn(&sim, &[]).await?;
    let (code, _) = second.config(json!({})).await?;
    ensure!(code == 200, "config on the second plugin: {code}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leave_the_plugin() -> anyhow::Result<()> {
    let mut world = World::new("docker").await?;
    let outcome = async {
        let image = world.image();
        world.upload("plain.tar", &image).await?;
        world.sim.put_context(world.context("ctx", &image));
        let uuid = ce_tests::world::unique("m");
        world.sim.put_machine(World::machine(&uuid, "ctx"));
        world.wait_agents(1, std::time::Duration::from_secs(60)).await?;
        // An action that fails after fetching a token, to cover error paths too.
        world.sim.put_machine(World::machine(&uuid, ""));
        world.wait_agents(0, std::time::Duration::from_secs(60)).await?;
        let mut secrets = vec![world.sim.token()];
        secrets.extend(world.sim.issued_tokens().into_iter().map(|(_, t)| t));
        ensure!(secrets.len() >= 2, "no machine token was issued");
        let captured = world.sim.all_captured_text() + &world.plugin().stderr_text() + &world.plugin().stdout_text();
        for secret in &secrets {
            ensure!(!captured.contains(secret.as_str()), "a token leaked into what the plugin logged or sent");
        }
        Ok(())
    }
    .await;
    world.cleanup().await;
    outcome
}
