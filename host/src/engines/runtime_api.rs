//! Native engines over the Docker Engine API, through bollard: `docker` against dockerd,
//! `podman` against Podman's Docker-compatible API (same socket as its libpod API).
//!
//! Podman is driven through its compat API rather than the `podman-api` crate: that
//! crate is unmaintained, pulls a second hyper stack, and is reported broken on Podman 5
//! (vv9k/podman-api-rs#169), while the compat API is served by Podman 4 and 5 alike.

use std::collections::HashMap;
use std::future::Future;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateResponse, EventMessage};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ImportImageOptionsBuilder, LogsOptions, RemoveContainerOptionsBuilder,
    RemoveImageOptionsBuilder, StopContainerOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;

use super::{container_spec, containers};
use crate::engine::{AgentEvents, AgentGone, AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo, labels};
use crate::images::ImageRef;

/// Long enough for a multi-gigabyte image load; bollard applies it per request.
const LOAD_TIMEOUT_SECS: u64 = 900;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Docker,
    Podman,
}

impl Flavor {
    pub fn default_host(self) -> &'static str {
        match self {
            Flavor::Docker => "unix:///var/run/docker.sock",
            Flavor::Podman => "unix:///run/podman/podman.sock",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Flavor::Docker => "native/docker",
            Flavor::Podman => "native/podman",
        }
    }
}

pub struct RuntimeApiEngine {
    name: String,
    flavor: Flavor,
    host: String,
    /// Connected lazily: the runtime may come up after the plugin, and a failed
    /// negotiation must be retried on the next call, not cached.
    client: OnceCell<Docker>,
    timeout_secs: u64,
}

impl RuntimeApiEngine {
    pub fn new(name: &str, flavor: Flavor, host: Option<&str>, timeout_secs: Option<u64>) -> Self {
        RuntimeApiEngine {
            name: name.to_string(),
            flavor,
            host: host.unwrap_or(flavor.default_host()).to_string(),
            timeout_secs: timeout_secs.unwrap_or(crate::params::DEFAULT_REQUEST_TIMEOUT_SECS),
            client: OnceCell::new(),
        }
    }

    /// Where the runtime is, as configured.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The negotiated client (for engines built on this one, as `swarm` is).
    pub async fn docker(&self) -> Result<&Docker, EngineError> {
        self.client().await
    }

    /// The image `image` (a name or an id) as an archive `image_load` takes, streamed
    /// as the runtime writes it, under the load's long timeout.
    pub async fn image_export(&self, image: &str) -> Result<ArchiveStream, EngineError> {
        let docker = self.client().await?.clone().with_timeout(std::time::Duration::from_secs(LOAD_TIMEOUT_SECS));
        let stream = docker.export_image(image).map(|chunk| chunk.map_err(std::io::Error::other));
        Ok(Box::pin(stream))
    }

    async fn client(&self) -> Result<&Docker, EngineError> {
        self.client
            .get_or_try_init(|| async {
                let docker = self.connect().map_err(|e| self.unreachable(&e))?;
                docker.negotiate_version().await.map_err(|e| self.unreachable(&e))
            })
            .await
    }

    fn connect(&self) -> Result<Docker, BollardError> {
        let version = bollard::API_DEFAULT_VERSION;
        if self.host.starts_with("tcp://") || self.host.starts_with("http://") {
            Docker::connect_with_http(&self.host, self.timeout_secs, version)
        } else {
            Docker::connect_with_unix(&self.host, self.timeout_secs, version)
        }
    }

    fn unreachable(&self, e: &BollardError) -> EngineError {
        EngineError::Unreachable { engine: self.name.clone(), address: self.host.clone(), cause: e.to_string() }
    }

    /// Sorts a bollard error into what the caller can act on.
    pub fn error(&self, e: BollardError) -> EngineError {
        match e {
            BollardError::DockerResponseServerError { status_code, message } if (400..500).contains(&status_code) => {
                EngineError::Rejected { engine: self.name.clone(), cause: format!("{message} (HTTP {status_code})") }
            }
            BollardError::DockerResponseServerError { .. }
            | BollardError::DockerStreamError { .. }
            | BollardError::JsonDataError { .. }
            | BollardError::JsonSerdeError { .. } => EngineError::Failed { engine: self.name.clone(), cause: e.to_string() },
            other => self.unreachable(&other),
        }
    }

    fn is_not_found(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
    }

    /// Podman stores a loaded or tagged `foo/bar:1` as `localhost/foo/bar:1`, and its
    /// compat API does not always resolve the short name back, so try both.
    fn candidates(&self, image: &str) -> Vec<String> {
        let mut names = vec![image.to_string()];
        let short = ImageRef::parse(image).is_ok_and(|r| !r.has_registry());
        if self.flavor == Flavor::Podman && short {
            names.push(format!("localhost/{image}"));
        }
        names
    }

    async fn inspect_agent(&self, name: &str) -> Result<Option<(AgentInfo, String)>, EngineError> {
        let Some(container) = self.inspect(name).await? else { return Ok(None) };
        let running = container.running();
        let config = container.config.unwrap_or_default();
        let info = AgentInfo { name: name.to_string(), id: container.id, running, labels: config.labels.unwrap_or_default() };
        Ok(Some((info, config.image.unwrap_or_default())))
    }

    /// The container `name` (see [`containers`] for why not bollard's typed inspect).
    async fn inspect(&self, name: &str) -> Result<Option<containers::Inspect>, EngineError> {
        let docker = self.client().await?;
        let version = docker.client_version().to_string();
        let read = containers::inspect(&self.host, &version, name);
        self.bounded(&format!("inspecting {name}"), read).await
    }

    /// A read of [`containers`], under the request timeout, its error sorted.
    async fn bounded<T>(&self, what: &str, read: impl Future<Output = Result<T, containers::ReadError>>) -> Result<T, EngineError> {
        let engine = self.name.clone();
        match tokio::time::timeout(std::time::Duration::from_secs(self.timeout_secs), read).await {
            Err(_) => Err(EngineError::Failed { engine, cause: format!("{what}: no answer within {}s", self.timeout_secs) }),
            Ok(Ok(found)) => Ok(found),
            Ok(Err(containers::ReadError::Unreachable(cause))) => {
                Err(EngineError::Unreachable { engine, address: self.host.clone(), cause })
            }
            Ok(Err(containers::ReadError::Refused(cause))) => Err(EngineError::Rejected { engine, cause }),
            Ok(Err(containers::ReadError::Failed(cause))) => Err(EngineError::Failed { engine, cause }),
        }
    }

    /// Creates and starts the agent, unless a container already has its name: that one is
    /// kept when it runs from the same image, else replaced, so exactly one agent remains.
    /// Creating first (instead of looking first) keeps the usual start at two requests.
    async fn create_and_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        let docker = self.client().await?;
        let created = match self.create(docker, spec).await {
            Ok(created) => created,
            // Before anything is touched: a start from a missing image must not cost the
            // agent that runs now (the caller loads the image and tries once more).
            Err(e) if Self::is_missing_image(&e) => return Err(self.create_error(e, spec)),
            // Podman answers a taken name with 500, Docker with 409: look either way.
            Err(e) => {
                let Some((info, _)) = self.inspect_agent(&spec.name).await? else {
                    return Err(self.create_error(e, spec));
                };
                // Two plugin instances never touch each other's agents, nor anything else
                // that happens to hold the name.
                let ours = spec.labels().get(labels::PLUGIN).map(String::as_str);
                if info.label(labels::PLUGIN) != ours {
                    return Err(EngineError::Rejected {
                        engine: self.name.clone(),
                        cause: name_taken(&spec.name, info.label(labels::PLUGIN)),
                    });
                }
                // The same spec (options, image, drpcli, …) is kept; anything else replaced.
                if info.running && info.label(labels::SPEC) == spec.labels().get(labels::SPEC).map(String::as_str) {
                    return Ok(info);
                }
                self.remove(&info.id).await?;
                self.create(docker, spec).await.map_err(|e| self.create_error(e, spec))?
            }
        };
        if let Err(e) = docker.start_container(&created.id, None).await {
            // A created-but-unstartable container would block the name forever.
            let _ = self.remove(&created.id).await;
            return Err(self.error(e));
        }
        Ok(AgentInfo { name: spec.name.clone(), id: created.id, running: true, labels: spec.labels().clone() })
    }

    /// Creates the agent's container from the first name the runtime knows the image by.
    /// The create is the lookup: an image inspect costs about as much as a create on
    /// Podman, and a create of a missing image fails at once with 404.
    async fn create(&self, docker: &Docker, spec: &AgentSpec) -> Result<ContainerCreateResponse, BollardError> {
        let options = CreateContainerOptionsBuilder::new().name(&spec.name).build();
        let mut candidates = self.candidates(&spec.image).into_iter().peekable();
        while let Some(image) = candidates.next() {
            match docker.create_container(Some(options.clone()), container_spec::create_body(spec, &image)).await {
                Err(e) if Self::is_missing_image(&e) && candidates.peek().is_some() => continue,
                outcome => return outcome,
            }
        }
        Err(BollardError::DockerResponseServerError { status_code: 404, message: format!("no such image: {}", spec.image) })
    }

    /// A create's 404 about the image: Docker says "No such image: …", Podman "no such
    /// image: …: image not known". Other 404s (a network that does not exist) are not.
    fn is_missing_image(e: &BollardError) -> bool {
        matches!(e, BollardError::DockerResponseServerError { status_code: 404, message }
            if message.to_ascii_lowercase().contains("image"))
    }

    fn create_error(&self, e: BollardError, spec: &AgentSpec) -> EngineError {
        if Self::is_missing_image(&e) {
            return EngineError::ImageMissing { engine: self.name.clone(), image: spec.image.clone() };
        }
        self.error(e)
    }

    async fn remove(&self, id: &str) -> Result<bool, EngineError> {
        let docker = self.client().await?;
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(true),
            Err(e) if Self::is_not_found(&e) => Ok(false),
            // Removal already under way (a concurrent stop): the outcome is the same.
            Err(BollardError::DockerResponseServerError { status_code: 409, .. }) => Ok(true),
            Err(e) => Err(self.error(e)),
        }
    }
}

/// A container removal from the runtime's event feed (Docker says `destroy`, Podman's
/// compat API `destroy` or `remove`), with the agent's machine from its labels.
fn agent_gone(event: EventMessage) -> Option<AgentGone> {
    if !matches!(event.action.as_deref(), Some("destroy" | "remove")) {
        return None;
    }
    let actor = event.actor?;
    let attributes = actor.attributes.unwrap_or_default();
    Some(AgentGone {
        name: attributes.get("name")?.trim_start_matches('/').to_string(),
        id: actor.id.unwrap_or_default(),
        machine: attributes.get(labels::MACHINE)?.clone(),
    })
}

/// Why a start cannot take a name another owner's container holds.
pub fn name_taken(name: &str, owner: Option<&str>) -> String {
    match owner {
        Some(owner) => format!("container name '{name}' is held by an agent of plugin '{owner}', which is left alone"),
        None => format!("container name '{name}' is held by a container no plugin owns (no drp.plugin label), which is left alone"),
    }
}

/// `docker load` reports what it loaded as `Loaded image: X` or `Loaded image ID: X`
/// (Podman: `Loaded image(s): X,Y`).
fn loaded_reference(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("Loaded image")?;
    let (_, names) = rest.split_once(':')?;
    names.split(',').map(str::trim).find(|s| !s.is_empty()).map(str::to_string)
}

#[async_trait]
impl Engine for RuntimeApiEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        self.flavor.kind()
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let docker = self.client().await?;
        let version = docker.version().await.map_err(|e| self.error(e))?;
        Ok(EngineInfo {
            name: self.name.clone(),
            kind: self.flavor.kind(),
            version: format!("{} (API {})", version.version.unwrap_or_default(), version.api_version.unwrap_or_default()),
        })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        let docker = self.client().await?;
        for candidate in self.candidates(image) {
            match docker.inspect_image(&candidate).await {
                Ok(found) => return Ok(Some(found.id.unwrap_or_default())),
                Err(e) if Self::is_not_found(&e) => continue,
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(None)
    }

    async fn image_load(&self, image: &str, archive: ArchiveStream) -> Result<(), EngineError> {
        let docker = self.client().await?.clone().with_timeout(std::time::Duration::from_secs(LOAD_TIMEOUT_SECS));
        let options = ImportImageOptionsBuilder::new().quiet(true).build();
        let mut progress = docker.import_image_stream(options, archive, None);
        let mut loaded = None;
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| match e {
                BollardError::DockerStreamError { error } => EngineError::BadArchive { engine: self.name.clone(), cause: error },
                BollardError::DockerResponseServerError { message, .. } => {
                    EngineError::BadArchive { engine: self.name.clone(), cause: message }
                }
                other => self.error(other),
            })?;
            let said = info.stream.or(info.status).unwrap_or_default();
            loaded = loaded.or_else(|| loaded_reference(&said));
        }
        let loaded = loaded.ok_or_else(|| EngineError::BadArchive {
            engine: self.name.clone(),
            cause: "the runtime accepted the archive but reported no image in it".to_string(),
        })?;
        self.image_tag(&loaded, image).await
    }

    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let docker = self.client().await?;
        let target = ImageRef::parse(target).map_err(|cause| EngineError::Rejected { engine: self.name.clone(), cause })?;
        let (repo, tag) = target.repository_and_tag();
        let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        docker.tag_image(source, Some(options)).await.map_err(|e| self.error(e))
    }

    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        let docker = self.client().await?;
        // Never forced: Podman's forced removal takes every container of the image with
        // it, running agents included. Unforced, a runtime refuses (409, `rejected`) to
        // remove the last name of an image a container uses, and removes just the name
        // otherwise.
        let options = RemoveImageOptionsBuilder::new().build();
        // The removal is the lookup: the first name the runtime knows goes.
        for candidate in self.candidates(image) {
            match docker.remove_image(&candidate, Some(options.clone()), None).await {
                Ok(_) => return Ok(true),
                Err(e) if Self::is_not_found(&e) => continue,
                Err(e) => return Err(self.error(e)),
            }
        }
        Ok(false)
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        // `placement` says where among nodes; one host has one place, so it is not
        // applied (see options::AgentOptions::placement).
        self.create_and_start(spec).await
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        let docker = self.client().await?;
        // No `t`: the runtime then waits the agent's own stop timeout (the
        // `stop-timeout-secs` option, else its default of 10 s) before it kills.
        let options = StopContainerOptionsBuilder::new().build();
        match docker.stop_container(name, Some(options)).await {
            Ok(()) => {}
            Err(e) if Self::is_not_found(&e) => return Ok(false),
            // 304 (already stopped) and the like: removal below settles it.
            Err(_) => {}
        }
        self.remove(name).await
    }

    /// The runtime's log API, with timestamps. The agent's own `RS_TOKEN`, as the
    /// runtime has it, is masked here: the host masks the tokens it knows, but a
    /// restarted plugin no longer knows those of agents started before.
    async fn agent_logs(&self, name: &str, lines: u32) -> Result<Vec<String>, EngineError> {
        let docker = self.client().await?;
        let Some(container) = self.inspect(name).await? else {
            return Err(EngineError::Rejected { engine: self.name.clone(), cause: format!("no agent named {name}") });
        };
        let env = container.config.and_then(|c| c.env).unwrap_or_default();
        let token = env.into_iter().find_map(|e| e.strip_prefix("RS_TOKEN=").map(str::to_string));
        let options = LogsOptions { stdout: true, stderr: true, timestamps: true, tail: lines.to_string(), ..Default::default() };
        let read = docker.logs(name, Some(options)).map(|frame| frame.map(|f| f.into_bytes())).collect::<Vec<_>>();
        let frames = tokio::time::timeout(std::time::Duration::from_secs(self.timeout_secs), read).await.map_err(|_| {
            EngineError::Failed { engine: self.name.clone(), cause: format!("agent logs: no answer within {}s", self.timeout_secs) }
        })?;
        let mut text = Vec::new();
        for frame in frames {
            text.extend_from_slice(&frame.map_err(|e| self.error(e))?);
        }
        let text = String::from_utf8_lossy(&text);
        let mask =
            |line: &str| token.as_deref().filter(|t| !t.is_empty()).map_or(line.to_string(), |t| line.replace(t, crate::redact::MASK));
        Ok(text.lines().map(mask).collect())
    }

    async fn agent_events(&self, labels: &[(&str, &str)]) -> Result<Option<AgentEvents>, EngineError> {
        let docker = self.client().await?.clone();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = HashMap::from([("type", vec!["container".to_string()]), ("label", labels)]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let engine = self.name.clone();
        let feed = docker.events(Some(options)).filter_map(move |event| {
            let gone = match event {
                Ok(event) => agent_gone(event).map(Ok),
                Err(e) => Some(Err(EngineError::Failed { engine: engine.clone(), cause: format!("event feed: {e}") })),
            };
            std::future::ready(gone)
        });
        Ok(Some(Box::pin(feed)))
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        let docker = self.client().await?;
        // The listing has its own client (see containers), so it gets the same bound
        // as every other request here: a runtime that never answers `docker ps` fails the
        // listing instead of holding it.
        let version = docker.client_version().to_string();
        let found = self.bounded("listing containers", containers::list(&self.host, &version, labels)).await?;
        Ok(found
            .into_iter()
            .map(|c| AgentInfo {
                name: c.names.and_then(|n| n.into_iter().next()).map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default(),
                id: c.id,
                running: c.state == "running",
                labels: c.labels.unwrap_or_default(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_reports_are_parsed_for_docker_and_podman() {
        assert_eq!(loaded_reference("Loaded image: foo:1\n").as_deref(), Some("foo:1"));
        assert_eq!(loaded_reference("Loaded image ID: sha256:abc\n").as_deref(), Some("sha256:abc"));
        assert_eq!(loaded_reference("Loaded image(s): localhost/foo:1,localhost/bar:2").as_deref(), Some("localhost/foo:1"));
        assert_eq!(loaded_reference("Loading layer 1/3"), None);
    }

    #[test]
    fn podman_looks_for_short_names_under_localhost() {
        let podman = RuntimeApiEngine::new("podman", Flavor::Podman, None, None);
        assert_eq!(podman.candidates("foo/bar:1"), ["foo/bar:1", "localhost/foo/bar:1"]);
        assert_eq!(podman.candidates("quay.io/x:1"), ["quay.io/x:1"]);
        let docker = RuntimeApiEngine::new("docker", Flavor::Docker, None, None);
        assert_eq!(docker.candidates("foo/bar:1"), ["foo/bar:1"]);
    }
}
