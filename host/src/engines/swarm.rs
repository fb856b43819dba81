//! The `swarm` engine: an agent is a Docker Swarm service of one replica, so the swarm
//! schedules it over its nodes, restarts it, and keeps it when the host that started
//! it (or the plugin) goes away. Images do not come from a registry: each load goes to
//! every node listed in `engine-config.swarm.nodes`, from the one stream, in parallel;
//! the nodes that hold an image get the node label `drp.image.<id12>=1`, and every
//! service is constrained to that label, so swarm only places an agent where its image
//! is. Services name their image by id, which the swarm never tries to pull.
//!
//! Settings: `host` (the manager's Engine API, as for `docker`), `nodes` (the Engine API
//! of every node images go to; default: the manager alone), `request-timeout-secs`.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    NetworkAttachmentConfig, NodeSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, TaskSpec, TaskSpecContainerSpec,
    TaskSpecPlacement, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder, UpdateNodeOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::runtime_api::{Flavor, RuntimeApiEngine, name_taken};
use crate::engine::{AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo, labels};

/// The engine's name, and the `engine-config` key whose presence turns it on.
pub const NAME: &str = "swarm";
/// How long a removed service's task may take to go.
const STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
/// Nanoseconds between restarts of an agent that exits.
const RESTART_DELAY_NS: i64 = 5_000_000_000;

pub struct SwarmEngine {
    name: String,
    /// The manager: services, tasks and nodes.
    manager: RuntimeApiEngine,
    /// Every node images go to (the manager among them when listed).
    nodes: Vec<RuntimeApiEngine>,
}

impl SwarmEngine {
    pub fn new(name: &str, settings: &Map<String, Value>) -> Result<SwarmEngine, String> {
        let timeout = crate::params::request_timeout(name, settings).map_err(|e| e.to_string())?;
        let host = match settings.get("host") {
            None => None,
            Some(Value::String(host)) => Some(host.as_str()),
            Some(other) => return Err(format!("`host` must be a string, not {other}")),
        };
        let manager = RuntimeApiEngine::new(name, Flavor::Docker, host, timeout);
        let addresses: Vec<String> = match settings.get("nodes") {
            None => vec![manager.host().to_string()],
            Some(Value::Array(nodes)) if !nodes.is_empty() => nodes
                .iter()
                .map(|n| n.as_str().map(str::to_string).ok_or_else(|| format!("`nodes` entries must be strings, not {n}")))
                .collect::<Result<_, _>>()?,
            Some(other) => return Err(format!("`nodes` must be a non-empty list of Engine API addresses, not {other}")),
        };
        let nodes = addresses.iter().map(|a| RuntimeApiEngine::new(name, Flavor::Docker, Some(a), timeout)).collect();
        Ok(SwarmEngine { name: name.to_string(), manager, nodes })
    }

    async fn docker(&self) -> Result<&Docker, EngineError> {
        self.manager.docker().await
    }

    fn rejected(&self, cause: String) -> EngineError {
        EngineError::Rejected { engine: self.name.clone(), cause }
    }

    /// The image's id and the swarm node ids of the nodes that hold it (none when no
    /// node does). A node that does not answer counts as not holding it.
    async fn holders(&self, image: &str) -> Result<Option<(String, Vec<String>)>, EngineError> {
        let mut id = None;
        let mut holders = Vec::new();
        let mut last_error = None;
        for node in &self.nodes {
            match node.image_id(image).await {
                Ok(Some(found)) => {
                    let node_id = node.docker().await?.info().await.map_err(|e| node.error(e))?.swarm.and_then(|s| s.node_id);
                    match node_id.filter(|n| !n.is_empty()) {
                        Some(node_id) => holders.push(node_id),
                        None => return Err(self.rejected(format!("{} is not a node of a swarm", node.host()))),
                    }
                    id.get_or_insert(found);
                }
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
        }
        match (id, last_error) {
            (Some(id), _) => Ok(Some((id, holders))),
            (None, Some(e)) if holders.is_empty() => Err(e),
            (None, _) => Ok(None),
        }
    }

    /// Puts `label` on every node of `holders` that lacks it.
    async fn label_nodes(&self, label: &str, holders: &[String]) -> Result<(), EngineError> {
        let docker = self.docker().await?;
        for node_id in holders {
            let node = docker.inspect_node(node_id).await.map_err(|e| self.manager.error(e))?;
            let mut spec: NodeSpec = node.spec.unwrap_or_default();
            let labels = spec.labels.get_or_insert_with(HashMap::new);
            if labels.get(label).map(String::as_str) == Some("1") {
                continue;
            }
            labels.insert(label.to_string(), "1".to_string());
            let version = node.version.and_then(|v| v.index).unwrap_or_default();
            let options = UpdateNodeOptionsBuilder::new().version(version as i64).build();
            docker.update_node(node_id, spec, options).await.map_err(|e| self.manager.error(e))?;
        }
        Ok(())
    }

    /// Services carrying all of `labels`, each with whether a task of it runs.
    async fn services(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        let docker = self.docker().await?;
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let filters = HashMap::from([("label", wanted)]);
        let services = docker.list_services(Some(ListServicesOptionsBuilder::new().filters(&filters).build())).await;
        let services = services.map_err(|e| self.manager.error(e))?;
        let running = self.running_services().await?;
        Ok(services
            .into_iter()
            .map(|s| {
                let spec = s.spec.unwrap_or_default();
                let id = s.id.unwrap_or_default();
                AgentInfo {
                    name: spec.name.unwrap_or_default(),
                    running: running.contains(&id),
                    id,
                    labels: spec.labels.unwrap_or_default().into_iter().collect(),
                }
            })
            .collect())
    }

    /// The service called `name`, if there is one.
    async fn service_named(&self, name: &str) -> Result<Option<AgentInfo>, EngineError> {
        let docker = self.docker().await?;
        let service = match docker.inspect_service(name, None).await {
            Ok(service) => service,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.manager.error(e)),
        };
        let id = service.id.unwrap_or_default();
        let spec = service.spec.unwrap_or_default();
        let running = self.running_services().await?.contains(&id);
        Ok(Some(AgentInfo {
            name: spec.name.unwrap_or_default(),
            id,
            running,
            labels: spec.labels.unwrap_or_default().into_iter().collect(),
        }))
    }

    /// The ids of services with a task running now.
    async fn running_services(&self) -> Result<Vec<String>, EngineError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("desired-state", vec!["running".to_string()])]);
        let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await;
        let tasks = tasks.map_err(|e| self.manager.error(e))?;
        Ok(tasks
            .into_iter()
            .filter(|t| t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING))
            .filter_map(|t| t.service_id)
            .collect())
    }

    /// Removes the service `name` and waits until its tasks are gone, so a stopped
    /// agent is stopped and not merely scheduled to be.
    async fn remove_service(&self, name: &str) -> Result<bool, EngineError> {
        let docker = self.docker().await?;
        let id = match docker.inspect_service(name, None).await {
            Ok(service) => service.id.unwrap_or_default(),
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(self.manager.error(e)),
        };
        match docker.delete_service(&id).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(false),
            Err(e) => return Err(self.manager.error(e)),
        }
        let began = std::time::Instant::now();
        loop {
            // Filtered here: the API's `service` filter answers 404 once the service is
            // gone, while its tasks (and their containers) are still being removed.
            let tasks = docker.list_tasks(None::<bollard::query_parameters::ListTasksOptions>).await;
            let tasks = tasks.map_err(|e| self.manager.error(e))?;
            if !tasks.iter().any(|t| t.service_id.as_deref() == Some(id.as_str())) && self.containers_gone(&id).await? {
                return Ok(true);
            }
            if began.elapsed() > STOP_WAIT {
                return Err(EngineError::Failed {
                    engine: self.name.clone(),
                    cause: format!("service {name} was removed but its task was still there after {} s", STOP_WAIT.as_secs()),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Waits until swarm has placed service `id`'s task and started it: true once it
    /// runs, false when it ran and ended already (its restart policy takes it from
    /// there); a task swarm cannot place or start fails the start with swarm's reason.
    async fn first_task(&self, name: &str, id: &str) -> Result<bool, EngineError> {
        let docker = self.docker().await?;
        let began = std::time::Instant::now();
        loop {
            let filters = HashMap::from([("service", vec![id.to_string()])]);
            let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await;
            let tasks = tasks.map_err(|e| self.manager.error(e))?;
            let status = tasks.iter().filter_map(|t| t.status.as_ref()).map(|s| (s.state, s.err.clone().or(s.message.clone())));
            let mut last = None;
            for (state, message) in status {
                match state {
                    Some(TaskState::RUNNING) => return Ok(true),
                    Some(TaskState::COMPLETE | TaskState::FAILED | TaskState::SHUTDOWN) => return Ok(false),
                    Some(TaskState::REJECTED) => {
                        return Err(self.rejected(format!("swarm rejected service {name}'s task: {}", message.unwrap_or_default())));
                    }
                    other => last = Some(format!("{other:?}: {}", message.unwrap_or_default())),
                }
            }
            if began.elapsed() > STOP_WAIT {
                return Err(EngineError::Failed {
                    engine: self.name.clone(),
                    cause: format!(
                        "service {name} has no task started after {} s (last: {})",
                        STOP_WAIT.as_secs(),
                        last.unwrap_or_else(|| "no task".to_string())
                    ),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Whether no node has a container of service `id` left (the manager forgets a task
    /// a moment before its node has removed the container).
    async fn containers_gone(&self, id: &str) -> Result<bool, EngineError> {
        for node in &self.nodes {
            if node.agent_list(&[("com.docker.swarm.service.id", id)]).await.is_ok_and(|left| !left.is_empty()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The service for `spec`, running the image `image_id`, placed where the image is.
    fn service_spec(&self, spec: &AgentSpec, image_id: &str) -> Result<ServiceSpec, EngineError> {
        let rest = unsupported(spec);
        if !rest.is_empty() {
            return Err(self.rejected(format!("the swarm engine cannot apply the agent options {}", rest.join(", "))));
        }
        let labels: HashMap<String, String> = spec.labels().clone().into_iter().collect();
        let env: Vec<String> = spec.options.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mounts = super::container_spec::mounts(spec);
        let container = TaskSpecContainerSpec {
            image: Some(image_id.to_string()),
            labels: Some(labels.clone()),
            command: spec.entrypoint.clone(),
            args: spec.entrypoint.as_ref().map(|_| Vec::new()),
            env: Some(env),
            mounts: Some(mounts),
            ..Default::default()
        };
        let networks =
            (!spec.network.is_empty()).then(|| vec![NetworkAttachmentConfig { target: Some(spec.network.clone()), ..Default::default() }]);
        Ok(ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(RESTART_DELAY_NS),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(vec![format!("node.labels.{}==1", image_label(image_id))]),
                    ..Default::default()
                }),
                networks,
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode { replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }), ..Default::default() }),
            ..Default::default()
        })
    }
}

/// The node label of an image: `drp.image.<the first 12 hex digits of its id>`.
fn image_label(image_id: &str) -> String {
    let hex: String = image_id.trim_start_matches("sha256:").chars().take(12).collect();
    format!("drp.image.{hex}")
}

/// The option keys of `spec` this engine does not apply yet: every option family but
/// env, labels and mounts.
fn unsupported(spec: &AgentSpec) -> Vec<String> {
    let mut rest = spec.options.clone();
    rest.env.clear();
    rest.labels.clear();
    rest.mounts.clear();
    rest.keys()
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

#[async_trait]
impl Engine for SwarmEngine {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "native/swarm"
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        let docker = self.docker().await?;
        let swarm =
            docker.inspect_swarm().await.map_err(|e| self.rejected(format!("{} is not a swarm manager: {e}", self.manager.host())))?;
        let version = docker.version().await.map_err(|e| self.manager.error(e))?;
        Ok(EngineInfo {
            name: self.name.clone(),
            kind: "native/swarm",
            version: format!(
                "swarm {} on docker {} ({} image nodes)",
                swarm.id.unwrap_or_default(),
                version.version.unwrap_or_default(),
                self.nodes.len()
            ),
        })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        Ok(self.holders(image).await?.map(|(id, _)| id))
    }

    /// Streams the one archive to every node at once; the slowest node sets the pace.
    async fn image_load(&self, image: &str, mut archive: ArchiveStream) -> Result<(), EngineError> {
        let mut senders = Vec::new();
        let mut loads = Vec::new();
        for node in &self.nodes {
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
            senders.push(Some(tx));
            let stream: ArchiveStream = Box::pin(tokio_stream_from(rx));
            loads.push(node.image_load(image, stream));
        }
        let feed = async {
            while let Some(chunk) = archive.next().await {
                let failed = chunk.is_err();
                for sender in senders.iter_mut() {
                    let Some(tx) = sender else { continue };
                    let copy = match &chunk {
                        Ok(bytes) => Ok(bytes.clone()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    // A node whose load ended early stops listening; the others go on.
                    if tx.send(copy).await.is_err() {
                        *sender = None;
                    }
                }
                if failed {
                    break;
                }
            }
            senders.clear();
        };
        let (_, results) = tokio::join!(feed, futures_util::future::join_all(loads));
        let failures: Vec<String> =
            results.iter().zip(&self.nodes).filter_map(|(r, node)| r.as_ref().err().map(|e| format!("{}: {e}", node.host()))).collect();
        if let Some((first, _)) = results.into_iter().zip(&self.nodes).find(|(r, _)| r.is_err()) {
            let first = first.err().unwrap_or_else(|| EngineError::Failed { engine: self.name.clone(), cause: String::new() });
            return Err(match first {
                EngineError::BadArchive { engine, .. } => EngineError::BadArchive { engine, cause: failures.join("; ") },
                EngineError::Unreachable { engine, address, .. } => {
                    EngineError::Unreachable { engine, address, cause: failures.join("; ") }
                }
                _ => EngineError::Failed {
                    engine: self.name.clone(),
                    cause: format!("loading {image} into the nodes: {}", failures.join("; ")),
                },
            });
        }
        if let Some((id, holders)) = self.holders(image).await? {
            self.label_nodes(&image_label(&id), &holders).await?;
        }
        Ok(())
    }

    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let mut tagged = false;
        for node in &self.nodes {
            match node.image_tag(source, target).await {
                Ok(()) => tagged = true,
                Err(EngineError::ImageMissing { .. }) | Err(EngineError::Rejected { .. }) if tagged => {}
                Err(EngineError::ImageMissing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if tagged { Ok(()) } else { Err(EngineError::ImageMissing { engine: self.name.clone(), image: format!("{source} (on no node)") }) }
    }

    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        let mut removed = false;
        for node in &self.nodes {
            removed |= node.image_remove(image).await?;
        }
        Ok(removed)
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        // The image first: a start that cannot happen leaves the running agent alone.
        let Some((image_id, holders)) = self.holders(&spec.image).await? else {
            return Err(EngineError::ImageMissing { engine: self.name.clone(), image: format!("{} (on no node)", spec.image) });
        };
        self.label_nodes(&image_label(&image_id), &holders).await?;
        let wanted = self.service_spec(spec, &image_id)?;
        let existing = self.service_named(&spec.name).await?;
        if let Some(existing) = existing {
            let ours = spec.labels().get(labels::PLUGIN).map(String::as_str);
            if existing.label(labels::PLUGIN) != ours {
                return Err(self.rejected(name_taken(&spec.name, existing.label(labels::PLUGIN))));
            }
            if existing.running && existing.label(labels::SPEC) == spec.labels().get(labels::SPEC).map(String::as_str) {
                return Ok(existing);
            }
            self.remove_service(&spec.name).await?;
        }
        let docker = self.docker().await?;
        let created = docker.create_service(wanted, None).await.map_err(|e| self.manager.error(e))?;
        let id = created.id.unwrap_or_default();
        let running = self.first_task(&spec.name, &id).await?;
        Ok(AgentInfo { name: spec.name.clone(), id, running, labels: spec.labels().clone() })
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        self.remove_service(name).await
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        self.services(labels).await
    }
}

/// `rx` as a stream.
fn tokio_stream_from(mut rx: mpsc::Receiver<std::io::Result<Bytes>>) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_label_is_its_id_shortened() {
        assert_eq!(image_label("sha256:0123456789abcdef0123"), "drp.image.0123456789ab");
        assert_eq!(image_label("abc"), "drp.image.abc");
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let settings = |v: Value| v.as_object().cloned().unwrap_or_default();
        assert!(SwarmEngine::new("swarm", &settings(serde_json::json!({"nodes": []}))).err().is_some_and(|e| e.contains("`nodes`")));
        assert!(SwarmEngine::new("swarm", &settings(serde_json::json!({"nodes": [1]}))).err().is_some_and(|e| e.contains("strings")));
        assert!(SwarmEngine::new("swarm", &settings(serde_json::json!({"host": 5}))).err().is_some_and(|e| e.contains("`host`")));
        let ok = SwarmEngine::new("swarm", &settings(serde_json::json!({"nodes": ["tcp://127.0.0.1:1", "unix:///x.sock"]})));
        assert_eq!(ok.map(|e| e.nodes.len()).ok(), Some(2));
    }
}
