//! The one seam every engine plugs into. The reconciler, the actions and the image
//! loader speak only this trait; Docker, Podman and WASM engines implement it.

use std::collections::BTreeMap;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;

use crate::options::AgentOptions;

/// An image archive as a stream of chunks, already decompressed. Engines must consume it
/// incrementally: archives can be gigabytes.
pub type ArchiveStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// What a runtime's own event feed says happened to an agent: it was removed (by
/// anyone: `docker rm -f`, a prune, our own stop).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentGone {
    pub name: String,
    pub id: String,
    pub machine: String,
}

/// A runtime's event feed, for as long as it lasts.
pub type AgentEvents = Pin<Box<dyn Stream<Item = Result<AgentGone, EngineError>> + Send>>;

/// Labels put on every agent; reconciliation and adoption find agents by them.
pub mod labels {
    pub const MACHINE: &str = "drp.machine";
    pub const CONTEXT: &str = "drp.context";
    pub const PLUGIN: &str = "drp.plugin";
    pub const ENGINE: &str = "drp.engine";
    /// The image reference the agent was started from, as the Context named it (the
    /// runtime may normalise its own copy, e.g. Podman's `localhost/` prefix).
    pub const IMAGE: &str = "drp.image";
    /// `true` on an agent started by the `agentStart` action: it outlives settles that
    /// do not want it (see [`crate::agents::Agent::manual`]).
    pub const MANUAL: &str = "drp.manual";
    /// A digest of the computed spec (token aside): an agent whose digest differs from
    /// the wanted one is replaced (see [`crate::agents::spec_digest`]).
    pub const SPEC: &str = "drp.spec";
}

/// Everything an engine needs to run one agent, computed whole by the host
/// ([`crate::agents`]): engines translate it into their runtime's request and decide
/// nothing of their own (no default env, no mounts, no entrypoint policy).
#[derive(Clone, PartialEq)]
pub struct AgentSpec {
    pub name: String,
    /// Image reference, exactly as the Context names it (an engine may look it up
    /// under its runtime's own spelling, e.g. Podman's `localhost/`).
    pub image: String,
    /// `None`: the image's own entrypoint and command. `Some`: this entrypoint, and the
    /// image's command dropped.
    pub entrypoint: Option<Vec<String>>,
    /// Network mode, e.g. `host`.
    pub network: String,
    /// Env (`RS_*`, `PATH` when drpcli is injected), mounts (the drpcli bind among them),
    /// labels (`drp.*` among them) and every other option, merged from all layers.
    pub options: AgentOptions,
}

impl AgentSpec {
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.options.labels
    }
}

/// Never prints env values: `RS_TOKEN` is a machine's credential.
impl std::fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env: Vec<&str> = self.options.env.keys().map(String::as_str).collect();
        f.debug_struct("AgentSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("entrypoint", &self.entrypoint)
            .field("network", &self.network)
            .field("env (values hidden)", &env)
            .field("labels", &self.options.labels)
            .field("mounts", &self.options.mounts)
            .finish_non_exhaustive()
    }
}

/// An agent as the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentInfo {
    pub name: String,
    pub id: String,
    pub running: bool,
    pub labels: BTreeMap<String, String>,
}

impl AgentInfo {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// What an engine says about itself, for `enginesList`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    pub name: String,
    pub kind: &'static str,
    pub version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `address` is empty when the host does not know it (a WASM engine's runtime is
    /// wherever its own settings point).
    #[error("engine '{engine}' cannot reach its runtime{}: {cause}", if address.is_empty() { String::new() } else { format!(" at {address}") })]
    Unreachable { engine: String, address: String, cause: String },
    #[error("engine '{engine}': no such image: {image}")]
    ImageMissing { engine: String, image: String },
    #[error("engine '{engine}' rejected the image archive: {cause}")]
    BadArchive { engine: String, cause: String },
    #[error("engine '{engine}' refused the request: {cause}")]
    Rejected { engine: String, cause: String },
    #[error("engine '{engine}' is misconfigured: {cause}")]
    Misconfigured { engine: String, cause: String },
    #[error("engine '{engine}' failed: {cause}")]
    Failed { engine: String, cause: String },
}

/// An image/agent lifecycle provider. Every method is idempotent where the contract
/// says so: starting a running agent, stopping a missing one, removing a missing image.
#[async_trait]
pub trait Engine: Send + Sync {
    fn name(&self) -> &str;
    /// `native/docker`, `native/podman`, `wasm`, …: where the engine comes from.
    fn kind(&self) -> &'static str;
    async fn info(&self) -> Result<EngineInfo, EngineError>;
    /// The image's id, or `None` when the runtime does not have it.
    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError>;
    /// Load a `docker save`/OCI archive and make `image` name the image it holds.
    async fn image_load(&self, image: &str, archive: ArchiveStream) -> Result<(), EngineError>;
    /// Give the image `source` the additional name `target`.
    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError>;
    /// Returns whether an image was removed (false: it was absent).
    async fn image_remove(&self, image: &str) -> Result<bool, EngineError>;
    /// Start the agent; an agent of that name already running from the same image is
    /// adopted as it is.
    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError>;
    /// Stop and remove the agent; returns whether one existed.
    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError>;
    /// Agents carrying all the given labels, running or not.
    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError>;
    /// The runtime's own feed of agents (carrying all `labels`) being removed, so one
    /// removed by hand is replaced at once rather than at the next resync. `None`: the
    /// engine has no feed (WASM engines), and resyncs alone find such removals.
    /// The last `lines` lines of the agent's output (stdout and stderr, in order).
    async fn agent_logs(&self, name: &str, _lines: u32) -> Result<Vec<String>, EngineError> {
        Err(EngineError::Rejected {
            engine: self.name().to_string(),
            cause: format!("this engine cannot show agent logs (asked for {name})"),
        })
    }
    async fn agent_events(&self, _labels: &[(&str, &str)]) -> Result<Option<AgentEvents>, EngineError> {
        Ok(None)
    }
    /// Where the image is, for engines spread over several stores (swarm: per node);
    /// `None` for an engine with one store, where `image_id` says it all.
    async fn image_detail(&self, _image: &str) -> Result<Option<serde_json::Value>, EngineError> {
        Ok(None)
    }
}
