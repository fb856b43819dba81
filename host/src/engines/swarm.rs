//! The `swarm` engine: an agent is a Docker Swarm service of one replica, so the swarm
//! schedules it over its nodes, restarts it, and keeps it when the host that started
//! it (or the plugin) goes away. Images do not come from a registry: each load goes to
//! every node listed in `engine-config.swarm.nodes`, from the one stream, in parallel,
//! and a start copies its image from a node that holds it to a listed node that lacks it;
//! the nodes that hold an image get the node label `drp.image.<id12>=1`, and every
//! service is constrained to that label, so swarm only places an agent where its image
//! is. Services name their image by id, which the swarm never tries to pull.
//!
//! Settings: `host` (the manager's Engine API, as for `docker`), `nodes` (the Engine API
//! of every node images go to; default: the manager alone), `request-timeout-secs`.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{
    Limit, NetworkAttachmentConfig, NodeSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecDnsConfig, TaskSpecPlacement, TaskSpecPlacementPreferences, TaskSpecPlacementSpread,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
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
/// How long after a failed copy of an image to a node no start tries it again.
const COPY_RETRY: std::time::Duration = std::time::Duration::from_secs(60);
/// Nanoseconds between restarts of an agent that exits.
const RESTART_DELAY_NS: i64 = 5_000_000_000;

pub struct SwarmEngine {
    name: String,
    /// The manager: services, tasks and nodes.
    manager: RuntimeApiEngine,
    /// Every node images go to (the manager among them when listed).
    nodes: Vec<RuntimeApiEngine>,
    /// Held while images are copied between nodes, so concurrent starts of one image
    /// copy it once; it keeps when a copy (image id, node) last failed, so a node that
    /// refuses an image is not sent it again by every start.
    spreading: tokio::sync::Mutex<HashMap<(String, String), std::time::Instant>>,
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
        Ok(SwarmEngine { name: name.to_string(), manager, nodes, spreading: tokio::sync::Mutex::new(HashMap::new()) })
    }

    async fn docker(&self) -> Result<&Docker, EngineError> {
        self.manager.docker().await
    }

    fn rejected(&self, cause: String) -> EngineError {
        EngineError::Rejected { engine: self.name.clone(), cause }
    }

    /// The image's id (as the first node that has `image` names it) and, per node of
    /// `nodes` that answers, its swarm node id and whether it holds that id (`None`: no
    /// node has `image`). Holding is by id, not by name: the label names an id, and a
    /// node where the name means another image must not get it.
    async fn holders(&self, image: &str) -> Result<Option<(String, Vec<(String, bool)>)>, EngineError> {
        let Some(id) = self.find_id(image).await? else { return Ok(None) };
        let nodes = self.holders_of(&id).await?;
        Ok(Some((id, nodes)))
    }

    /// The id `image` names on the first node that has it; a node that does not answer
    /// is passed over, and is the error only when no node has the image.
    async fn find_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        let mut last_error = None;
        for node in &self.nodes {
            match node.image_id(image).await {
                Ok(Some(id)) => return Ok(Some(id)),
                Ok(None) => {}
                Err(e) => last_error = Some(e),
            }
        }
        last_error.map_or(Ok(None), Err)
    }

    /// Per node that answers: its swarm node id and whether it holds the image `id`.
    async fn holders_of(&self, id: &str) -> Result<Vec<(String, bool)>, EngineError> {
        let mut nodes = Vec::new();
        for node in &self.nodes {
            let Ok(found) = node.image_id(id).await else { continue };
            let info = node.docker().await?.info().await.map_err(|e| node.error(e))?;
            match info.swarm.and_then(|s| s.node_id).filter(|n| !n.is_empty()) {
                Some(node_id) => nodes.push((node_id, found.is_some())),
                None => return Err(self.rejected(format!("{} is not a node of a swarm", node.host()))),
            }
        }
        Ok(nodes)
    }

    /// Copies the image `id` (named `image`) from a node that holds it to every node of
    /// `nodes` that answers and lacks it: a node added to the swarm (or back with an
    /// empty store) gets its images at the next start, with no registry and no archive
    /// kept. A copy that fails is logged and leaves the node out (the image's label
    /// keeps agents off it); the start goes on where the image is.
    async fn spread(&self, image: &str, id: &str) {
        let mut failed = self.spreading.lock().await;
        failed.retain(|_, at| at.elapsed() < COPY_RETRY);
        let mut source = None;
        let mut lacking = Vec::new();
        for node in &self.nodes {
            match node.image_id(id).await {
                Ok(Some(_)) => source = source.or(Some(node)),
                Ok(None) if !failed.contains_key(&(id.to_string(), node.host().to_string())) => lacking.push(node),
                Ok(None) | Err(_) => {}
            }
        }
        let Some(source) = source else { return };
        for target in lacking {
            let (from, to) = (source.host(), target.host());
            let copied = async { target.image_load(image, source.image_export(id).await?).await };
            match copied.await {
                Ok(()) => tracing::info!(engine = %self.name, image, from, to, "image copied to a node that lacked it"),
                Err(e) => {
                    tracing::warn!(engine = %self.name, image, from, to, "copying the image to a node that lacks it: {e}; retried in {} s", COPY_RETRY.as_secs());
                    failed.insert((id.to_string(), to.to_string()), std::time::Instant::now());
                }
            }
        }
    }

    /// Makes `label` say where the image is: on every node that holds it, off every
    /// node known to lack it (its image removed by hand), so swarm never places an
    /// agent on a node without its image.
    async fn label_nodes(&self, label: &str, nodes: &[(String, bool)]) -> Result<(), EngineError> {
        for (node_id, holds) in nodes {
            // A node update names the version it read; another writer in between (a
            // load of another image) makes it "out of sequence": read again and retry.
            let mut tries = 0;
            while !self.label_node(node_id, label, *holds).await? {
                tries += 1;
                if tries == 5 {
                    return Err(self.rejected(format!("node {node_id} kept changing while its label {label} was set")));
                }
            }
        }
        Ok(())
    }

    /// One try at setting (or clearing) `label` on a node: false when the node changed
    /// since it was read.
    async fn label_node(&self, node_id: &str, label: &str, holds: bool) -> Result<bool, EngineError> {
        let docker = self.docker().await?;
        let node = docker.inspect_node(node_id).await.map_err(|e| self.manager.error(e))?;
        let mut spec: NodeSpec = node.spec.unwrap_or_default();
        let labels = spec.labels.get_or_insert_with(HashMap::new);
        if labels.contains_key(label) == holds {
            return Ok(true);
        }
        if holds {
            labels.insert(label.to_string(), "1".to_string());
        } else {
            labels.remove(label);
        }
        let version = node.version.and_then(|v| v.index).unwrap_or_default();
        let options = UpdateNodeOptionsBuilder::new().version(version as i64).build();
        match docker.update_node(node_id, spec, options).await {
            Ok(()) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError { message, .. }) if message.contains("out of sequence") => Ok(false),
            Err(e) => Err(self.manager.error(e)),
        }
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

    /// The ids of services whose agent swarm keeps (see [`alive`]).
    async fn running_services(&self) -> Result<HashSet<String>, EngineError> {
        let docker = self.docker().await?;
        let tasks = docker.list_tasks(None::<bollard::query_parameters::ListTasksOptions>).await;
        let tasks = tasks.map_err(|e| self.manager.error(e))?;
        let mut by_service: HashMap<String, Vec<Task>> = HashMap::new();
        for task in tasks {
            if let Some(service) = task.service_id.clone() {
                by_service.entry(service).or_default().push(task);
            }
        }
        Ok(by_service.into_iter().filter(|(_, tasks)| alive(tasks)).map(|(service, _)| service).collect())
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
        // Stopped means no node runs a container of it: the agent's process is what must
        // end. Swarm acts on a removal ~3 s later (its dispatcher's pace) and removes the
        // exited container ~2.5 s after that, and the task later still; waiting for those
        // too made a burst of stops twice as slow, for nothing an agent could notice.
        let began = std::time::Instant::now();
        while !self.containers_stopped(&id).await? {
            if began.elapsed() > STOP_WAIT {
                return Err(EngineError::Failed {
                    engine: self.name.clone(),
                    cause: format!("service {name} was removed but its container still ran after {} s", STOP_WAIT.as_secs()),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        Ok(true)
    }

    /// The tasks of one service (`service`: its name or id), as the manager has them.
    async fn service_tasks(&self, service: &str) -> Result<Vec<Task>, EngineError> {
        let docker = self.docker().await?;
        let filters = HashMap::from([("service", vec![service.to_string()])]);
        let tasks = docker.list_tasks(Some(ListTasksOptionsBuilder::new().filters(&filters).build())).await;
        tasks.map_err(|e| self.manager.error(e))
    }

    /// Waits until swarm has placed service `id`'s task and started it: true once it
    /// runs, false when it ran and ended already (its restart policy takes it from
    /// there); a task swarm cannot place or start fails the start with swarm's reason.
    async fn first_task(&self, name: &str, id: &str) -> Result<bool, EngineError> {
        let began = std::time::Instant::now();
        loop {
            let tasks = self.service_tasks(id).await?;
            let status = tasks.iter().filter_map(|t| t.status.as_ref()).map(|s| (s.state, s.err.clone().or(s.message.clone())));
            let mut last = None;
            for (state, message) in status {
                match state {
                    Some(TaskState::RUNNING) => return Ok(true),
                    Some(TaskState::COMPLETE | TaskState::FAILED | TaskState::SHUTDOWN) => return Ok(false),
                    Some(TaskState::REJECTED) => {
                        return Err(self.rejected(format!("swarm rejected service {name}'s task: {}", message.unwrap_or_default())));
                    }
                    // The scheduler says why it cannot place the task ("no suitable node
                    // (scheduling constraints not satisfied on 2 nodes)"): no wait helps.
                    Some(TaskState::PENDING) if unplaceable(message.as_deref()) => {
                        return Err(self.rejected(format!("swarm cannot place service {name}'s task: {}", message.unwrap_or_default())));
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

    /// Whether no node runs a container of service `id`. A node that does not answer
    /// counts as running none: its containers cannot be waited for.
    async fn containers_stopped(&self, id: &str) -> Result<bool, EngineError> {
        for node in &self.nodes {
            if node.agent_list(&[("com.docker.swarm.service.id", id)]).await.is_ok_and(|left| left.iter().any(|c| c.running)) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The service for `spec`, running the image `image_id`, placed where the image is
    /// and where the `placement` option says.
    fn service_spec(&self, spec: &AgentSpec, image_id: &str) -> Result<ServiceSpec, EngineError> {
        let rest = unsupported(spec);
        if !rest.is_empty() {
            return Err(self.rejected(format!(
                "a swarm service cannot apply the agent options {} (swarm has no such setting for a service's container)",
                rest.join(", ")
            )));
        }
        let o = &spec.options;
        let list = |items: &Vec<String>| (!items.is_empty()).then(|| items.clone());
        let labels: HashMap<String, String> = spec.labels().clone().into_iter().collect();
        let env: Vec<String> = o.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let container = TaskSpecContainerSpec {
            image: Some(image_id.to_string()),
            labels: Some(labels.clone()),
            command: spec.entrypoint.clone(),
            args: spec.entrypoint.as_ref().map(|_| Vec::new()),
            env: Some(env),
            mounts: Some(super::container_spec::mounts(spec)),
            user: o.user.clone(),
            dir: o.workdir.clone(),
            init: o.init,
            read_only: o.read_only_rootfs,
            capability_add: list(&o.cap_add),
            capability_drop: list(&o.cap_drop),
            hosts: (!o.extra_hosts.is_empty()).then(|| o.extra_hosts.iter().map(|h| hosts_entry(h)).collect()),
            dns_config: (!o.dns.is_empty())
                .then(|| TaskSpecContainerSpecDnsConfig { nameservers: Some(o.dns.clone()), ..Default::default() }),
            // As a native agent: the runtime's default grace unless the options set one.
            stop_grace_period: Some(i64::from(o.stop_timeout_secs.unwrap_or(10)) * 1_000_000_000),
            ..Default::default()
        };
        let limits = Limit {
            nano_cpus: o.cpus.map(|c| (c * 1e9).round() as i64),
            memory_bytes: o.memory.map(|m| m.signed()),
            pids: o.pids_limit.filter(|p| *p > 0),
        };
        let mut constraints = vec![format!("node.labels.{}==1", image_label(image_id))];
        constraints.extend(o.placement.constraints.iter().cloned());
        let preferences = o
            .placement
            .spread
            .iter()
            .map(|s| TaskSpecPlacementPreferences { spread: Some(TaskSpecPlacementSpread { spread_descriptor: Some(s.clone()) }) })
            .collect::<Vec<_>>();
        let networks =
            (!spec.network.is_empty()).then(|| vec![NetworkAttachmentConfig { target: Some(spec.network.clone()), ..Default::default() }]);
        Ok(ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                resources: (limits != Limit::default()).then(|| TaskSpecResources { limits: Some(limits), ..Default::default() }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(RESTART_DELAY_NS),
                    ..Default::default()
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: Some(constraints),
                    preferences: (!preferences.is_empty()).then_some(preferences),
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

/// `name:ip` (`docker run --add-host`) as swarm's `/etc/hosts` line, `ip name`; an
/// IPv6 address keeps its colons, since the name is split off at the first one.
fn hosts_entry(entry: &str) -> String {
    match entry.split_once(':') {
        Some((name, ip)) => format!("{ip} {name}"),
        None => entry.to_string(),
    }
}

/// Whether swarm keeps a service's agent: a task of it runs, or swarm is about to run
/// one in place of a task that did not end by itself (the first task, or one on a node
/// that went away). An agent whose process exited or failed is dead, as on every engine,
/// and the host replaces it; an agent being moved off a lost node is not, and replacing
/// it would only race swarm.
fn alive(tasks: &[Task]) -> bool {
    if tasks.iter().any(|t| task_state(t) == Some(TaskState::RUNNING) && t.desired_state == Some(TaskState::RUNNING)) {
        return true;
    }
    let mut newest: Vec<&Task> = tasks.iter().collect();
    newest.sort_by_key(|t| std::cmp::Reverse(task_created(t)));
    let Some(next) = newest.first() else { return false };
    let coming = matches!(next.desired_state, Some(TaskState::RUNNING | TaskState::READY))
        && matches!(
            task_state(next),
            Some(
                TaskState::NEW
                    | TaskState::ALLOCATED
                    | TaskState::PENDING
                    | TaskState::ASSIGNED
                    | TaskState::ACCEPTED
                    | TaskState::PREPARING
                    | TaskState::READY
                    | TaskState::STARTING
            )
        );
    let placeable = !unplaceable(next.status.as_ref().and_then(|s| s.err.as_deref()));
    coming
        && placeable
        && !newest
            .get(1)
            .is_some_and(|before| matches!(task_state(before), Some(TaskState::COMPLETE | TaskState::FAILED | TaskState::REJECTED)))
}

/// The task whose container `agentLogs` shows: the running one, else the newest that
/// got a container.
fn shown_task(tasks: &[Task]) -> Option<&Task> {
    tasks.iter().filter(|t| container_of(t).is_some()).max_by_key(|t| (task_state(t) == Some(TaskState::RUNNING), task_created(t)))
}

fn task_state(task: &Task) -> Option<TaskState> {
    task.status.as_ref()?.state
}

fn task_created(task: &Task) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(task.created_at.as_deref()?).ok()
}

/// The id of the task's container, once a node has created one.
fn container_of(task: &Task) -> Option<&str> {
    task.status.as_ref()?.container_status.as_ref()?.container_id.as_deref()
}

/// Whether a pending task's error is the scheduler's "no suitable node (…)".
fn unplaceable(err: Option<&str>) -> bool {
    err.is_some_and(|e| e.contains("no suitable node"))
}

/// The node label of an image: `drp.image.<the first 12 hex digits of its id>`.
fn image_label(image_id: &str) -> String {
    let hex: String = image_id.trim_start_matches("sha256:").chars().take(12).collect();
    format!("drp.image.{hex}")
}

/// The option keys of `spec` a swarm service has no setting for (API 1.41): swap, shm
/// size, devices, privileged and security-opt are a plain container's only.
fn unsupported(spec: &AgentSpec) -> Vec<String> {
    let o = &spec.options;
    let asked = [
        ("memory-swap", o.memory_swap.is_some()),
        ("shm-size", o.shm_size.is_some()),
        ("devices", !o.devices.is_empty()),
        ("privileged", o.privileged == Some(true)),
        ("security-opt", !o.security_opt.is_empty()),
    ];
    asked.into_iter().filter(|(_, set)| *set).map(|(key, _)| key.to_string()).collect()
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
        self.find_id(image).await
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
        if let Some((id, nodes)) = self.holders(image).await? {
            self.label_nodes(&image_label(&id), &nodes).await?;
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

    /// Removes the name on every node, then takes the image's label off the nodes
    /// that no longer hold it, so swarm does not place a restart there.
    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        let id = self.find_id(image).await?;
        let mut removed = false;
        for node in &self.nodes {
            removed |= node.image_remove(image).await?;
        }
        if let Some(id) = id {
            let nodes = self.holders_of(&id).await?;
            self.label_nodes(&image_label(&id), &nodes).await?;
        }
        Ok(removed)
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        // The image first: a start that cannot happen leaves the running agent alone.
        let Some((image_id, mut nodes)) = self.holders(&spec.image).await? else {
            return Err(EngineError::ImageMissing { engine: self.name.clone(), image: format!("{} (on no node)", spec.image) });
        };
        if nodes.iter().any(|(_, holds)| !holds) {
            self.spread(&spec.image, &image_id).await;
            nodes = self.holders_of(&image_id).await?;
        }
        self.label_nodes(&image_label(&image_id), &nodes).await?;
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
        match self.first_task(&spec.name, &id).await {
            Ok(running) => Ok(AgentInfo { name: spec.name.clone(), id, running, labels: spec.labels().clone() }),
            Err(e) => {
                // A service that never ran is no agent: left, it would count as one.
                if let Err(cleanup) = self.remove_service(&spec.name).await {
                    tracing::warn!(service = %spec.name, error = %cleanup, "removing a service that did not start");
                }
                Err(e)
            }
        }
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        self.remove_service(name).await
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        self.services(labels).await
    }

    /// The logs of the container of the service's task that runs, or of its newest when
    /// none runs (the last exit is what an operator wants to read), from whichever node
    /// holds it; every node that can run an agent is one of `nodes`, since agents only go
    /// where their image was loaded.
    async fn agent_logs(&self, name: &str, lines: u32) -> Result<Vec<String>, EngineError> {
        let tasks = self.service_tasks(name).await?;
        let Some(container) = shown_task(&tasks).and_then(container_of) else {
            return Err(self.rejected(format!("service {name} has no container on any node")));
        };
        let mut unreachable = None;
        for node in &self.nodes {
            match node.agent_logs(container, lines).await {
                Ok(lines) => return Ok(lines),
                Err(EngineError::Rejected { .. }) => continue,
                Err(e) => unreachable = Some(e),
            }
        }
        Err(unreachable
            .unwrap_or_else(|| self.rejected(format!("service {name}'s container {container} is on no node of engine-config.swarm.nodes"))))
    }

    async fn image_detail(&self, image: &str) -> Result<Option<Value>, EngineError> {
        let mut nodes = Vec::new();
        for node in &self.nodes {
            let entry = match node.image_id(image).await {
                Ok(id) => serde_json::json!({"node": node.host(), "has": id.is_some(), "id": id}),
                Err(e) => serde_json::json!({"node": node.host(), "has": false, "error": e.to_string()}),
            };
            nodes.push(entry);
        }
        Ok(Some(serde_json::json!({"nodes": nodes})))
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

    fn task(created: &str, state: TaskState, desired: TaskState) -> Task {
        Task {
            created_at: Some(created.to_string()),
            status: Some(bollard::models::TaskStatus { state: Some(state), ..Default::default() }),
            desired_state: Some(desired),
            ..Default::default()
        }
    }

    #[test]
    fn swarm_keeps_an_agent_it_moves_but_not_one_that_exited() {
        use TaskState::*;
        let t = |s: &str| format!("2026-12-04T18:00:{s}.123456789Z");
        assert!(alive(&[task(&t("01"), RUNNING, RUNNING)]));
        assert!(alive(&[task(&t("01"), PENDING, RUNNING)]), "the first task, not placed yet");
        // Its node went away: the old task still shows running, desired shutdown.
        assert!(alive(&[task(&t("01"), RUNNING, SHUTDOWN), task(&t("09"), READY, READY)]));
        // Its process exited: the restart swarm has planned does not keep it.
        assert!(!alive(&[task(&t("01"), COMPLETE, SHUTDOWN), task(&t("09"), READY, READY)]));
        assert!(!alive(&[task(&t("01"), FAILED, SHUTDOWN)]));
        assert!(!alive(&[]));
        // A constraint no node satisfies: the scheduler says so, and waiting is no use.
        let mut stuck = task(&t("01"), PENDING, RUNNING);
        stuck.status.get_or_insert_default().err = Some("no suitable node (scheduling constraints not satisfied on 2 nodes)".into());
        assert!(!alive(&[stuck]));
    }

    #[test]
    fn logs_come_from_the_running_task_else_the_newest() {
        use TaskState::*;
        let t = |s: &str, state: TaskState, container: Option<&str>| {
            let mut task = task(&format!("2026-12-04T18:00:{s}Z"), state, RUNNING);
            let status = task.status.get_or_insert_default();
            status.container_status =
                container.map(|id| bollard::models::ContainerStatus { container_id: Some(id.into()), ..Default::default() });
            task
        };
        let shown = |tasks: &[Task]| shown_task(tasks).and_then(container_of).map(str::to_string);
        assert_eq!(shown(&[t("01", FAILED, Some("a")), t("05", RUNNING, Some("b")), t("09", FAILED, Some("c"))]), Some("b".into()));
        assert_eq!(shown(&[t("01", FAILED, Some("a")), t("09", COMPLETE, Some("c")), t("05", FAILED, Some("b"))]), Some("c".into()));
        assert_eq!(shown(&[t("01", FAILED, Some("a")), t("09", PENDING, None)]), Some("a".into()), "a task not started has no logs");
        assert_eq!(shown(&[]), None);
    }

    #[test]
    fn extra_hosts_become_hosts_lines() {
        assert_eq!(hosts_entry("drp:127.0.0.1"), "127.0.0.1 drp");
        assert_eq!(hosts_entry("v6:::1"), "::1 v6");
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
