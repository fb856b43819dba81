//! Security: whom the plugin believes (dr-provision's certificate, archive servers'
//! certificates), which engine files it runs, what it refuses to read, and what it
//! refuses as config. Each test runs the real binary under the simulator with the
//! native docker engine against the real dockerd.

use std::time::Duration;

use anyhow::ensure;
use ce_tests::sim::Sim;
use ce_tests::world::{DOCKER_TCP, World, docker_api_at, engine_sha256, unique, wasm_engines};
use serde_json::{Value, json};

const SETTLE: Duration = Duration::from_secs(60);

/// Runs `body` in a fresh docker world and cleans up whatever happened.
async fn in_world(body: impl AsyncFnOnce(&mut World) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let mut world = World::new("docker").await?;
    let outcome = body(&mut world).await;
    let tail = world.stderr_tail();
    world.cleanup().await;
    outcome.map_err(|e| e.context(format!("plugin stderr (tail):\n{tail}")))
}

/// Everything the plugin said: stderr and the lines it sent dr-provision.
fn said(w: &World) -> String {
    let lines: Vec<String> = w.sim.logs().iter().map(|line| line["Message"].as_str().unwrap_or_default().to_string()).collect();
    w.plugin().stderr_text() + &lines.join("\n")
}

async fn wait_said(w: &World, needle: &str) -> anyhow::Result<()> {
    w.sim.wait_for(&format!("the plugin to say '{needle}'"), SETTLE, || said(w).contains(needle).then_some(())).await
}

/// A machine in `ctx` with its agent up, proving the plugin reaches dr-provision.
async fn machine_gets_an_agent(w: &World, ctx: &str, agents_after: usize) -> anyhow::Result<String> {
    let uuid = unique("m");
    w.sim.put_machine(World::machine(&uuid, ctx));
    w.wait_agents(agents_after, SETTLE).await?;
    Ok(uuid)
}

async fn context_with_image(w: &World) -> anyhow::Result<()> {
    let image = w.image();
    w.upload("plain.tar", &image).await?;
    w.sim.put_context(w.context("ctx", &image));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dr_provision_is_pinned_at_the_first_connection_and_another_certificate_refused() -> anyhow::Result<()> {
    in_world(async |w| {
        context_with_image(w).await?;
        machine_gets_an_agent(w, "ctx", 1).await?;
        wait_said(w, "is pinned for the life of this process").await?;
        w.sim.rotate_cert()?;
        wait_said(w, "dr-provision's certificate changed").await?;
        // Nothing reaches the plugin any more: a new machine gets no agent, and an
        // action that needs dr-provision fails saying why.
        let late = unique("m");
        w.sim.put_machine(World::machine(&late, "ctx"));
        let start = json!({"context/name": "ctx", "context/image-name": w.image()});
        let (code, body) = w.machine_action(&World::machine(&late, "ctx"), "agentStart", start).await?;
        ensure!(code >= 400 && body.to_string().contains("certificate changed"), "agentStart answered {code}: {body}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        w.wait_agents(1, Duration::from_secs(1)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drp_ca_verifies_dr_provision_from_the_start_and_accepts_its_rotation() -> anyhow::Result<()> {
    in_world(async |w| {
        w.stop_plugin().await?;
        w.extra_params.insert("context-engines/drp-ca".into(), json!(w.sim.ca_pem()));
        w.start_plugin().await?;
        context_with_image(w).await?;
        machine_gets_an_agent(w, "ctx", 1).await?;
        ensure!(!w.plugin().stderr_text().contains("is pinned"), "pinned although a CA was given");
        w.sim.rotate_cert()?;
        machine_gets_an_agent(w, "ctx", 2).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_drp_ca_is_refused_and_a_broken_one_refused_at_config() -> anyhow::Result<()> {
    in_world(async |w| {
        w.stop_plugin().await?;
        w.extra_params.insert("context-engines/drp-ca".into(), json!(Sim::unrelated_ca_pem()?));
        w.start_plugin().await?;
        wait_said(w, "does not verify against context-engines/drp-ca").await?;
        let mut broken = w.params();
        broken["context-engines/drp-ca"] = json!("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
        let (code, body) = w.plugin().config(broken).await?;
        ensure!(code == 400 && body.to_string().contains("context-engines/drp-ca"), "config answered {code}: {body}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_server_with_an_untrusted_certificate_is_refused_unless_listed() -> anyhow::Result<()> {
    in_world(async |w| {
        let image = w.image();
        let upload = json!({
            "context/image-name": image,
            "context/image-path": format!("{}/files/fixtures/plain.tar", w.sim.https_file_url()),
        });
        let (code, body) = w.action("imageUpload", upload.clone()).await?;
        let text = body.to_string();
        ensure!(
            code == 502 && text.contains("127.0.0.1") && text.contains("context-engines/insecure-hosts"),
            "imageUpload from a self-signed server answered {code}: {body}"
        );
        let (code, body) = w.action("imageExists", json!({"context/image-name": image})).await?;
        ensure!(code == 200 && body == json!(false), "imageExists after the refusal: {code} {body}");
        // The same for a Context's Imagepull: its machine's agent fails, saying why.
        let mut context = w.context("pulled", &image);
        context["Meta"]["Imagepull"] = json!(format!("{}/files/fixtures/plain.tar", w.sim.https_file_url()));
        w.sim.put_context(context);
        w.sim.put_machine(World::machine(&unique("m"), "pulled"));
        w.sim
            .wait_for("an agent-failed event naming insecure-hosts", SETTLE, || {
                let failed = |e: &Value| e["Action"] == "agent-failed" && e.to_string().contains("context-engines/insecure-hosts");
                w.sim.published().iter().any(failed).then_some(())
            })
            .await?;
        w.wait_agents(0, Duration::from_secs(1)).await?;

        // Listed, the host is taken on trust: the upload loads, and the waiting machine
        // gets its agent (a reconfigure retries what was parked).
        let mut params = w.params();
        params["context-engines/insecure-hosts"] = json!(["127.0.0.1"]);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        w.wait_agents(1, SETTLE).await?;
        let (code, body) = w.action("imageUpload", upload).await?;
        ensure!(code == 200 && body == json!(true), "imageUpload from a listed host answered {code}: {body}");
        wait_said(w, "not checking the certificate of 127.0.0.1").await?;

        let mut params = w.params();
        params["context-engines/insecure-hosts"] = json!(["127.0.0.1:8443"]);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 400 && body.to_string().contains("context-engines/insecure-hosts"), "a host with a port: {code} {body}");
        Ok(())
    })
    .await
}

/// The `enginesList` rows named `name`, as (kind, state, error).
async fn rows(w: &World, name: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let (code, rows) = w.action("enginesList", json!({})).await?;
    ensure!(code == 200, "enginesList: {code} {rows}");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    Ok(rows
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["name"] == name)
        .map(|row| (text(&row["kind"]), text(&row["state"]), text(&row["error"])))
        .collect())
}

async fn wait_rows(w: &World, name: &str, want: impl Fn(&[(String, String, String)]) -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let now = rows(w, name).await?;
        if want(&now) {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "enginesList rows for '{name}' never became as expected; last: {now:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn has(rows: &[(String, String, String)], kind: &str, state: &str, error: &str) -> bool {
    rows.iter().any(|(k, s, e)| k.starts_with(kind) && s == state && e.contains(error))
}

fn gzip(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running gzip: {e}"))?;
    let mut stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("gzip stdin"))?;
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer.join().map_err(|_| anyhow::anyhow!("writing to gzip panicked"))??;
    ensure!(output.status.success(), "gzip failed: {}", output.status);
    Ok(output.stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_engine_files_an_operator_vouched_for_load() -> anyhow::Result<()> {
    in_world(async |w| {
        let engine = std::fs::read(wasm_engines().join("docker-api.wasm"))?;
        let digest = engine_sha256("docker-api.wasm")?;
        context_with_image(w).await?;

        // Unlisted, a docker.wasm may not take the native engine's place.
        w.put_engine(&engine, "docker")?;
        wait_rows(w, "docker", |r| has(r, "wasm", "failed", "native engine 'docker'") && has(r, "native", "ready", "")).await?;
        machine_gets_an_agent(w, "ctx", 1).await?;

        // Listed with its digest (as `engines digests` prints the map), it loads and
        // takes over.
        let printed =
            std::process::Command::new(ce_tests::plugin::plugin_bin()).args(["engines", "digests"]).arg(w.engines_dir()).output()?;
        ensure!(printed.status.success(), "engines digests: {}", String::from_utf8_lossy(&printed.stderr));
        let map: Value = serde_json::from_slice(&printed.stdout)?;
        ensure!(map == json!({"docker": digest}), "engines digests printed {map}");
        let mut params = w.params();
        params["context-engines/engine-sha256"] = map;
        params["context-engines/engine-config"]["docker"] = docker_api_at(DOCKER_TCP);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        wait_rows(w, "docker", |r| has(r, "wasm", "ready", "") && !r.iter().any(|(_, s, _)| s == "failed")).await?;

        // One byte changed: refused, naming both digests; the native engine answers again.
        let mut changed = engine.clone();
        changed.push(0);
        w.put_engine(&changed, "docker")?;
        wait_rows(w, "docker", |r| has(r, "wasm", "failed", &digest) && has(r, "native", "ready", "")).await?;

        // Any other file is refused while the list is set.
        w.put_engine(&engine, "other")?;
        wait_rows(w, "other", |r| has(r, "wasm", "failed", "not listed in context-engines/engine-sha256")).await?;
        // The native engine still serves.
        machine_gets_an_agent(w, "ctx", 2).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_over_max_archive_mb_is_refused_mid_stream_leaving_nothing() -> anyhow::Result<()> {
    in_world(async |w| {
        let mut params = w.params();
        params["context-engines/max-archive-mb"] = json!(1);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let size = std::fs::metadata(w.fixture("plain.tar"))?.len();
        ensure!(size > 1 << 20, "the fixture must be larger than 1 MiB for this test; it is {size} bytes");
        let image = w.image();
        // Read in place from the webroot (streamed to the engine), and downloaded (spooled).
        for path in ["files/fixtures/plain.tar".to_string(), format!("{}/files/fixtures/plain.tar", w.sim.file_url())] {
            let (code, body) = w.action("imageUpload", json!({"context/image-name": image, "context/image-path": path})).await?;
            ensure!(code == 413 && body.to_string().contains("context-engines/max-archive-mb"), "imageUpload of {path}: {code} {body}");
            let (code, body) = w.action("imageExists", json!({"context/image-name": image})).await?;
            ensure!(code == 200 && body == json!(false), "imageExists after refusing {path}: {code} {body}");
        }
        // A gzip under the limit that unpacks beyond it is refused too: the archive
        // padded with 8 MiB of zeros (valid tar, compressing to almost nothing) under a
        // 3 MiB limit.
        let mut padded = std::fs::read(w.fixture("plain.tar"))?;
        padded.resize(padded.len() + (8 << 20), 0);
        let gz = gzip(&padded)?;
        ensure!(gz.len() < 3 << 20, "the padded archive gzips to {} bytes", gz.len());
        std::fs::write(w.fixture("padded.tar.gz"), &gz)?;
        let mut params = w.params();
        params["context-engines/max-archive-mb"] = json!(3);
        let (code, body) = w.plugin().config(params).await?;
        ensure!(code == 200, "config: {code} {body}");
        let (code, body) =
            w.action("imageUpload", json!({"context/image-name": image, "context/image-path": "files/fixtures/padded.tar.gz"})).await?;
        ensure!(code == 413 && body.to_string().contains("context-engines/max-archive-mb"), "imageUpload of padded.tar.gz: {code} {body}");
        let spool = w.plugin().workdir().join("spool");
        let left: Vec<_> = std::fs::read_dir(&spool).map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect()).unwrap_or_default();
        ensure!(left.is_empty(), "spool files left behind: {left:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drpcli_param_that_is_not_an_executable_file_is_refused_keeping_the_old_config() -> anyhow::Result<()> {
    in_world(async |w| {
        let not_executable = w.sim.scratch().join("drpcli-not-executable");
        std::fs::write(&not_executable, "#!/bin/sh\n")?;
        let missing = w.sim.scratch().join("no-such-drpcli");
        for (path, why) in [(&missing, "No such file"), (&w.sim.scratch(), "not a regular file"), (&not_executable, "not executable")] {
            let mut params = w.params();
            params["context-engines/drpcli"] = json!(path.display().to_string());
            let (code, body) = w.plugin().config(params).await?;
            let text = body.to_string();
            ensure!(
                code == 400 && text.contains("context-engines/drpcli") && text.contains(why),
                "drpcli {}: {code} {body}",
                path.display()
            );
        }
        // The old config stands: agents still get the working drpcli.
        context_with_image(w).await?;
        let uuid = machine_gets_an_agent(w, "ctx", 1).await?;
        w.sim.wait_for("the agent to call back", SETTLE, || w.sim.agent_reports().into_iter().find(|r| r.uuid == uuid)).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_an_engine_logs_or_quotes_never_leaves_the_plugin() -> anyhow::Result<()> {
    in_world(async |w| {
        w.install_engine("leaky.wasm", "leaky")?;
        let mut context = w.context("leaky", "ce-test/leaky:1");
        context["Meta"]["context-engine"] = json!("leaky");
        w.sim.put_context(context);
        let uuid = unique("m");
        let machine = World::machine(&uuid, "leaky");
        w.sim.put_machine(machine.clone());
        // The engine logged the token and failed quoting it: both reached dr-provision
        // masked (a log line, an agent-failed event), and so does an action's Error.
        wait_said(w, "leaky: env RS_TOKEN=[redacted]").await?;
        let quoted = "with token [redacted]";
        w.sim
            .wait_for("an agent-failed event quoting the masked token", SETTLE, || {
                w.sim.published().iter().any(|e| e["Action"] == "agent-failed" && e.to_string().contains(quoted)).then_some(())
            })
            .await?;
        let mut replies = Vec::new();
        let start = json!({"context/name": "leaky", "context/image-name": "ce-test/leaky:1"});
        replies.push(w.machine_action(&machine, "agentStart", start).await?);
        ensure!(replies[0].0 >= 400 && replies[0].1.to_string().contains(quoted), "agentStart: {:?}", replies[0]);
        replies.push(w.action("enginesList", json!({})).await?);
        replies.push(w.action("agentStatus", json!({})).await?);
        replies.push(w.machine_action(&machine, "agentLogs", json!({"context/name": "leaky"})).await?);

        let mut secrets = vec![w.sim.token()];
        secrets.extend(w.sim.issued_tokens().into_iter().filter(|(m, _)| *m == uuid).map(|(_, t)| t));
        ensure!(secrets.len() >= 2, "no token was issued for {uuid}");
        let everything = format!("{}{}{}{replies:?}", w.sim.all_captured_text(), w.plugin().stderr_text(), w.plugin().stdout_text());
        for secret in &secrets {
            ensure!(!everything.contains(secret.as_str()), "a token left the plugin");
        }
        Ok(())
    })
    .await
}
