//! One test's world: a simulator, the real plugin configured against it, and a direct
//! line to the container runtime the engine under test drives, to check what really
//! runs. Every world has its own plugin name, so its agents carry their own
//! `drp.plugin` label and parallel tests never see (or clean up) each other's agents.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::plugin::Plugin;
use crate::sim::Sim;

pub const DOCKER_SOCK: &str = "unix:///var/run/docker.sock";
pub const PODMAN_SOCK: &str = "unix:///run/podman/podman.sock";

/// A fresh name part, unique within this test run and across runs.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{:x}{n}", std::process::id(), nanos & 0xffff_ffff)
}

/// Where scripts/fixtures.sh put the test images and the test drpcli.
pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("CE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures"));
    assert!(dir.join("plain.tar").is_file(), "test fixtures missing in {}: run scripts/fixtures.sh (scripts/test.sh does)", dir.display());
    dir
}

/// Where engines-wasm/build.sh put the WASM engines.
pub fn wasm_engines() -> PathBuf {
    let dir = std::env::var_os("CE_WASM_ENGINES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engines-wasm/target/engines"));
    assert!(
        dir.join("docker-api.wasm").is_file(),
        "WASM engines missing in {}: run engines-wasm/build.sh (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// The SHA-256 of the built engine `file`, as `engine-sha256` lists it.
pub fn engine_sha256(file: &str) -> anyhow::Result<String> {
    use sha2::Digest as _;
    Ok(hex::encode(sha2::Sha256::digest(std::fs::read(wasm_engines().join(file))?)))
}

/// The `docker-api` engine's settings for the Engine API at `authority`.
pub fn docker_api_at(authority: &str) -> Value {
    json!({"base-url": format!("http://{authority}"), "allowed-hosts": [authority]})
}

/// The Engine API of each runtime on loopback TCP (scripts/runtimes.sh), for WASM engines.
pub const DOCKER_TCP: &str = "127.0.0.1:23750";
pub const PODMAN_TCP: &str = "127.0.0.1:23760";
/// The swarm worker's Engine API (scripts/swarm.sh), for the `swarm` engine's image loads.
pub const SWARM_WORKER: &str = "tcp://169.254.231.2:2375";
/// The worker's own socket, for looking at its containers (scripts/swarm.sh).
pub const SWARM_WORKER_SOCK: &str = "unix:///run/ce-swarm-worker.sock";
/// The host's end of the link to the worker, where agents on either node reach the host.
pub const SWARM_HOST_IP: &str = "169.254.231.1";

/// One engine as the behaviour suite tests it: the engine name contexts use, the runtime
/// it drives (checked directly by the tests), and for WASM engines the file to install
/// and its engine-config entry.
#[derive(Debug, Clone)]
pub struct EngineUnderTest {
    pub engine: &'static str,
    pub runtime_sock: &'static str,
    /// More runtimes agents may run on (a swarm's other nodes), looked at like the first.
    pub more_socks: &'static [&'static str],
    /// The address agents reach the simulator on, when not 127.0.0.1.
    pub agent_ip: Option<&'static str>,
    pub wasm_file: Option<&'static str>,
    pub config: Value,
}

/// What an engine under test on one host does not set.
const ONE_HOST: EngineUnderTest =
    EngineUnderTest { engine: "", runtime_sock: "", more_socks: &[], agent_ip: None, wasm_file: None, config: Value::Null };

/// The engines the suite knows, by test id.
pub fn engine_under_test(id: &str) -> EngineUnderTest {
    let docker_api = |tcp: &str| json!({"base-url": format!("http://{tcp}"), "allowed-hosts": [tcp]});
    match id {
        "docker" => EngineUnderTest {
            engine: "docker",
            runtime_sock: DOCKER_SOCK,
            wasm_file: None,
            config: json!({"host": DOCKER_SOCK}),
            ..ONE_HOST
        },
        "podman" => EngineUnderTest {
            engine: "podman",
            runtime_sock: PODMAN_SOCK,
            wasm_file: None,
            config: json!({"host": PODMAN_SOCK}),
            ..ONE_HOST
        },
        "docker_api" => EngineUnderTest {
            engine: "docker-api",
            runtime_sock: DOCKER_SOCK,
            wasm_file: Some("docker-api.wasm"),
            config: docker_api(DOCKER_TCP),
            ..ONE_HOST
        },
        "docker_api_on_podman" => EngineUnderTest {
            engine: "docker-api",
            runtime_sock: PODMAN_SOCK,
            wasm_file: Some("docker-api.wasm"),
            config: docker_api(PODMAN_TCP),
            ..ONE_HOST
        },
        // Swarm services over the two-node swarm of scripts/swarm.sh.
        "swarm" => EngineUnderTest {
            engine: "swarm",
            runtime_sock: DOCKER_SOCK,
            wasm_file: None,
            config: json!({"host": DOCKER_SOCK, "nodes": [DOCKER_SOCK, SWARM_WORKER]}),
            more_socks: &[SWARM_WORKER_SOCK],
            agent_ip: Some(SWARM_HOST_IP),
        },
        // The engine in a second language (engines-wasm/python-docker).
        "python_docker" => EngineUnderTest {
            engine: "python-docker",
            runtime_sock: DOCKER_SOCK,
            wasm_file: Some("python-docker.wasm"),
            config: docker_api(DOCKER_TCP),
            ..ONE_HOST
        },
        other => panic!("no engine under test called {other}"),
    }
}

pub async fn connect_runtime(host: &str) -> anyhow::Result<Docker> {
    let docker = Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION).with_context(|| format!("connecting to {host}"))?;
    docker.negotiate_version().await.with_context(|| format!("{host} does not answer: start it with scripts/runtimes.sh"))
}

/// A container as the Engine API lists it. bollard's typed model is not used here:
/// Podman reports states (`stopped`) its enum rejects, failing the whole list.
#[derive(Debug, Clone, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    pub id: Option<String>,
    #[serde(rename = "Names")]
    pub names: Option<Vec<String>>,
    #[serde(rename = "Labels")]
    pub labels: Option<HashMap<String, String>>,
    #[serde(rename = "State")]
    pub state: Option<String>,
}

/// Containers with `label` (`key=value`) on the runtime at `host`, running or not.
pub async fn list_containers(host: &str, label: &str) -> anyhow::Result<Vec<ContainerSummary>> {
    let socket = host.trim_start_matches("unix://");
    let filters = serde_json::json!({ "label": [label] }).to_string();
    let query: String = form_urlencoded::byte_serialize(filters.as_bytes()).collect();
    let uri: hyper::Uri = hyperlocal::Uri::new(socket, &format!("/v1.41/containers/json?all=1&filters={query}")).into();
    let client: Client<hyperlocal::UnixConnector, http_body_util::Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
    let response = client.get(uri).await.with_context(|| format!("listing containers on {host}"))?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("listing containers on {host}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok(serde_json::from_slice(&body)?)
}

pub struct World {
    pub sim: Sim,
    pub plugin: Option<Plugin>,
    pub plugin_name: String,
    /// The engine name contexts use.
    pub engine: String,
    pub under_test: EngineUnderTest,
    pub runtime: Docker,
    pub fixtures: PathBuf,
    /// Params a test adds to (or puts in place of) `params`' own at every start.
    pub extra_params: serde_json::Map<String, Value>,
    /// Where agents report to (`context-engines/endpoints`): the simulator's file server.
    pub agent_endpoint: String,
}

impl World {
    /// A world for the engine under test `id` (see [`engine_under_test`]).
    pub async fn new(id: &str) -> anyhow::Result<World> {
        let under_test = engine_under_test(id);
        let sim = Sim::start().await?;
        let fixtures = fixtures();
        let runtime = connect_runtime(under_test.runtime_sock).await?;
        if let Some(file) = under_test.wasm_file {
            let dir = sim.webroot().join("files/plugin_providers/context-engines/engines");
            std::fs::create_dir_all(&dir)?;
            std::fs::copy(wasm_engines().join(file), dir.join(file))?;
        }
        let plugin_name = unique("cet-");
        // Archives are served by the simulator's file server and found under its webroot,
        // each holding this world's own image (see `archive`).
        let served = sim.webroot().join("files/fixtures");
        std::fs::create_dir_all(&served)?;
        for file in ["plain.tar", "plain.tar.gz", "baked.tar", "baked.tar.gz"] {
            crate::archive::copy_for_world(&fixtures.join(file), &served.join(file), &plugin_name)?;
        }
        let agent_endpoint = match under_test.agent_ip {
            Some(ip) => sim.serve_files_on(ip).await?,
            None => sim.file_url(),
        };
        let mut world = World {
            agent_endpoint,
            sim,
            plugin: None,
            plugin_name,
            engine: under_test.engine.to_string(),
            under_test,
            runtime,
            fixtures,
            extra_params: serde_json::Map::new(),
        };
        world.start_plugin().await?;
        Ok(world)
    }

    /// The params every test starts from: its own plugin name, the engine under test as
    /// default, agents reporting to the simulator, and the test drpcli injected.
    pub fn params(&self) -> Value {
        let mut params = json!({
            "context-engines/plugin-name": self.plugin_name,
            "context-engines/default-engine": self.engine,
            "context-engines/endpoints": [self.agent_endpoint],
            "context-engines/drpcli": self.fixtures.join("drpcli").display().to_string(),
            "context-engines/engine-config": {
                "docker": {"host": DOCKER_SOCK},
                "podman": {"host": PODMAN_SOCK},
                self.engine.clone(): self.under_test.config,
            },
            "context-engines/max-parallel": 8,
        });
        if let Some(params) = params.as_object_mut() {
            params.extend(self.extra_params.clone());
        }
        params
    }

    pub async fn start_plugin(&mut self) -> anyhow::Result<()> {
        let plugin = Plugin::spawn(&self.sim, &[("RUST_LOG", "info,context_engines=debug")]).await?;
        let (code, body) = plugin.config(self.params()).await?;
        if code != 200 {
            bail!("config answered {code}: {body}");
        }
        self.plugin = Some(plugin);
        Ok(())
    }

    pub fn plugin(&self) -> &Plugin {
        self.plugin.as_ref().expect("plugin is running")
    }

    pub async fn stop_plugin(&mut self) -> anyhow::Result<()> {
        if let Some(plugin) = self.plugin.take() {
            let status = plugin.stop().await?;
            if !status.success() {
                bail!("plugin exited with {status}");
            }
        }
        Ok(())
    }

    pub async fn action(&self, command: &str, params: Value) -> anyhow::Result<(u16, Value)> {
        self.plugin().action(json!({}), command, params).await
    }

    pub async fn machine_action(&self, machine: &Value, command: &str, params: Value) -> anyhow::Result<(u16, Value)> {
        self.plugin().action(machine.clone(), command, params).await
    }

    /// The image name a test loads its fixture under: this world's own.
    pub fn image(&self) -> String {
        format!("ce-test/{}:1", self.plugin_name)
    }

    /// This world's copy of a fixture archive, as its file server serves it.
    pub fn fixture(&self, name: &str) -> PathBuf {
        self.sim.webroot().join("files/fixtures").join(name)
    }

    /// Loads a fixture archive into the engine under test as `image`, through the plugin.
    pub async fn upload(&self, fixture: &str, image: &str) -> anyhow::Result<()> {
        let (code, body) = self
            .action(
                "imageUpload",
                json!({
                    "context/image-name": image,
                    "context/image-path": format!("files/fixtures/{fixture}"),
                }),
            )
            .await?;
        if code != 200 || body != json!(true) {
            bail!("imageUpload of {fixture} as {image} answered {code}: {body}");
        }
        Ok(())
    }

    pub fn context(&self, name: &str, image: &str) -> Value {
        json!({
            "Name": name,
            "Engine": self.plugin_name,
            "Image": image,
            "Meta": {"context-engine": self.engine},
            "Description": "test context",
            "Available": true,
        })
    }

    pub fn machine(uuid: &str, context: &str) -> Value {
        json!({
            "Uuid": uuid,
            "Name": format!("{uuid}.test"),
            "Context": context,
            "Meta": {},
            "Workflow": "",
            "Runnable": true,
        })
    }

    /// The plugin's engines directory (its default, under the simulator's file server).
    pub fn engines_dir(&self) -> PathBuf {
        self.sim.webroot().join("files/plugin_providers/context-engines/engines")
    }

    /// Puts `bytes` in the engines directory as `<name>.wasm`, written aside and then
    /// renamed, as an operator's tooling should, so a scan never sees half a file.
    pub fn put_engine(&self, bytes: &[u8], name: &str) -> anyhow::Result<()> {
        let dir = self.engines_dir();
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(format!(".{name}.partial"));
        std::fs::write(&partial, bytes)?;
        std::fs::rename(&partial, dir.join(format!("{name}.wasm")))?;
        Ok(())
    }

    /// Puts the built engine `file` (e.g. `null.wasm`) in the engines directory as `<name>.wasm`.
    pub fn install_engine(&self, file: &str, name: &str) -> anyhow::Result<()> {
        self.put_engine(&std::fs::read(wasm_engines().join(file))?, name)
    }

    /// Containers that carry this world's plugin label, running or not.
    /// On every runtime agents may run on (the nodes of a swarm).
    pub async fn agents(&self) -> anyhow::Result<Vec<ContainerSummary>> {
        let label = format!("drp.plugin={}", self.plugin_name);
        let mut all = list_containers(self.under_test.runtime_sock, &label).await?;
        for sock in self.under_test.more_socks {
            all.extend(list_containers(sock, &label).await?);
        }
        Ok(all)
    }

    pub async fn running_agents(&self) -> anyhow::Result<Vec<ContainerSummary>> {
        Ok(self.agents().await?.into_iter().filter(|c| c.state.as_ref().is_some_and(|s| *s == "running")).collect())
    }

    /// The container `id` (or name), inspected on whichever runtime holds it.
    pub async fn inspect_agent(&self, id: &str) -> anyhow::Result<bollard::models::ContainerInspectResponse> {
        let mut last = None;
        for sock in std::iter::once(&self.under_test.runtime_sock).chain(self.under_test.more_socks) {
            match connect_runtime(sock).await?.inspect_container(id, None).await {
                Ok(found) => return Ok(found),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no runtime to look for {id} on")))
    }

    /// Removes the container `id` by hand (forced), on whichever runtime holds it.
    pub async fn remove_agent_container(&self, id: &str) -> anyhow::Result<()> {
        let inspected = self.inspect_agent(id).await?;
        for sock in std::iter::once(&self.under_test.runtime_sock).chain(self.under_test.more_socks) {
            let options = RemoveContainerOptionsBuilder::new().force(true).build();
            if connect_runtime(sock).await?.remove_container(inspected.id.as_deref().unwrap_or(id), Some(options)).await.is_ok() {
                return Ok(());
            }
        }
        bail!("could not remove container {id} on any runtime")
    }

    /// The id the plugin gives the agent of `container`: the container's, or for a
    /// swarm task's container its service's.
    pub fn agent_id(container: &ContainerSummary) -> Option<String> {
        let service = container.labels.as_ref().and_then(|l| l.get("com.docker.swarm.service.id")).cloned();
        service.or_else(|| container.id.clone())
    }

    /// Waits until exactly `n` agents of this world exist and all of them run.
    pub async fn wait_agents(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<ContainerSummary>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let all = self.agents().await?;
            let running = all.iter().filter(|c| c.state.as_ref().is_some_and(|s| *s == "running")).count();
            if all.len() == n && running == n {
                return Ok(all);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "waited {timeout:?} for {n} running agents on {}; have {} ({} running): {:?}\nplugin stderr tail:\n{}",
                    self.engine,
                    all.len(),
                    running,
                    all.iter().map(|c| (&c.names, &c.state)).collect::<Vec<_>>(),
                    self.stderr_tail(),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn stderr_tail(&self) -> String {
        let text = self.plugin.as_ref().map(|p| p.stderr_text()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Removes whatever this world left in the runtime, even after a failure.
    pub async fn cleanup(&mut self) {
        if let Some(mut plugin) = self.plugin.take() {
            plugin.kill();
        }
        let label = format!("drp.plugin={}", self.plugin_name);
        {
            // Swarm services first (any world may have configured the swarm engine), or
            // swarm would start their containers again; a runtime not in swarm mode
            // answers the listing with an error, and there is nothing to do.
            let filters = HashMap::from([("label", vec![label.clone()])]);
            let options = bollard::query_parameters::ListServicesOptionsBuilder::new().filters(&filters).build();
            for service in self.runtime.list_services(Some(options)).await.unwrap_or_default() {
                if let Some(id) = service.id {
                    let _ = self.runtime.delete_service(&id).await;
                }
            }
        }
        for sock in std::iter::once(&self.under_test.runtime_sock).chain(self.under_test.more_socks) {
            let (Ok(runtime), Ok(agents)) = (connect_runtime(sock).await, list_containers(sock, &label).await) else { continue };
            for id in agents.into_iter().filter_map(|a| a.id) {
                let options = RemoveContainerOptionsBuilder::new().force(true).build();
                let _ = runtime.remove_container(&id, Some(options)).await;
            }
        }
    }
}

/// Runs one scenario for one engine in a fresh world; a failure names both.
pub async fn run_scenario(engine: &str, scenario: &str, body: impl AsyncFnOnce(&mut World) -> anyhow::Result<()>) {
    let mut world = match World::new(engine).await {
        Ok(world) => world,
        Err(e) => panic!("engine '{engine}', scenario '{scenario}': setting up: {e:#}"),
    };
    let outcome = body(&mut world).await;
    let tail = world.stderr_tail();
    world.cleanup().await;
    if let Err(e) = outcome {
        panic!("engine '{engine}', scenario '{scenario}' failed: {e:#}\n--- plugin stderr (tail) ---\n{tail}");
    }
}
