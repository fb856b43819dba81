//! Starting and stopping one agent: machine token, image presence (auto-load,
//! `Imagepull`/`Checksum`), drpcli injection, names and labels. Shared by the actions
//! and the reconciler, which decide *when*; this decides *how*.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::drp::{Context, DrpError};
use crate::engine::{AgentInfo, AgentSpec, Engine, EngineError, labels};
use crate::images::{ArchiveSource, ImageError};
use crate::plugin::Plugin;

/// Context Meta keys this plugin reads.
pub const META_ENGINE: &str = "context-engine";
pub const META_IMAGEPULL: &str = "Imagepull";
pub const META_CHECKSUM: &str = "Checksum";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "cannot name an agent for context '{context}' and machine '{machine}': a container name allows only letters, digits, '_', '.' and '-'"
    )]
    BadName { context: String, machine: String },
    #[error("context '{0}' has no Image")]
    NoImage(String),
    #[error("context '{context}': {why}")]
    BadImage { context: String, why: String },
    #[error("fetching the machine token: {0}")]
    Token(#[from] DrpError),
    #[error("image '{image}': {source}")]
    Image { image: String, source: ImageError },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    UnknownEngine(#[from] crate::registry::UnknownEngine),
    #[error("cancelled: the plugin is stopping")]
    Cancelled,
}

impl AgentError {
    /// Whether trying again without a change (an event, a reconfigure) cannot help: the
    /// reconciler parks such a machine instead of retrying it.
    pub fn is_permanent(&self) -> bool {
        match self {
            AgentError::BadName { .. } | AgentError::NoImage(_) | AgentError::BadImage { .. } | AgentError::UnknownEngine(_) => true,
            AgentError::Engine(EngineError::Misconfigured { .. }) => true,
            AgentError::Image { source, .. } => source.is_permanent(),
            AgentError::Token(_) | AgentError::Engine(_) | AgentError::Cancelled => false,
        }
    }
}

/// An agent the plugin runs: which machine, which context, where, from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub machine: String,
    pub context: String,
    pub engine: String,
    pub name: String,
    pub image: String,
    /// The runtime's id of the container, when known: tells a removal of this agent
    /// from one of an earlier container of the same name.
    pub id: String,
    /// Started by the `agentStart` action rather than wanted by the machine's Context:
    /// kept while its machine exists, until `agentStop` or the Context takes it over.
    pub manual: bool,
    /// False for a container that exited: it is removed, under the machine's lock, by
    /// the next settle.
    pub running: bool,
}

impl Agent {
    /// The agent for `machine` in `context`, run by `engine`.
    pub fn new(machine: &str, context: &Context, engine: &str) -> Result<Agent, AgentError> {
        Ok(Agent {
            machine: machine.to_string(),
            context: context.name.clone(),
            engine: engine.to_string(),
            name: agent_name(&context.name, machine)?,
            image: context.image.clone(),
            id: String::new(),
            manual: false,
            running: true,
        })
    }

    /// The same agent as `other` for the purpose of keeping it: same name, engine,
    /// context and image; whether either is manual does not matter.
    pub fn same_as(&self, other: &Agent) -> bool {
        (&self.name, &self.engine, &self.context, &self.image) == (&other.name, &other.engine, &other.context, &other.image)
    }

    /// An agent as found in a runtime, from its labels; `None` for one without them.
    pub fn from_labels(found: &AgentInfo) -> Option<Agent> {
        Some(Agent {
            machine: found.label(labels::MACHINE)?.to_string(),
            context: found.label(labels::CONTEXT)?.to_string(),
            engine: found.label(labels::ENGINE)?.to_string(),
            name: found.name.clone(),
            image: found.label(labels::IMAGE).unwrap_or_default().to_string(),
            id: found.id.clone(),
            manual: found.label(labels::MANUAL) == Some("true"),
            running: found.running,
        })
    }
}

/// `drp-<context>-<machine-uuid>`, checked against what runtimes accept as a name.
pub fn agent_name(context: &str, machine: &str) -> Result<String, AgentError> {
    let name = format!("drp-{context}-{machine}");
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if context.is_empty() || !name.chars().all(valid) {
        return Err(AgentError::BadName { context: context.to_string(), machine: machine.to_string() });
    }
    Ok(name)
}

/// The engine that serves `context`: its `Meta["context-engine"]`, else the default.
pub fn engine_for(context: &Context, default_engine: &str) -> String {
    context.meta(META_ENGINE).unwrap_or(default_engine).to_string()
}

fn check_image(agent: &Agent) -> Result<(), AgentError> {
    if agent.image.is_empty() {
        return Err(AgentError::NoImage(agent.context.clone()));
    }
    crate::images::check_reference(&agent.image).map_err(|why| AgentError::BadImage { context: agent.context.clone(), why })
}

/// What a start needs that may be slow, got before the machine's lock is taken (so an
/// `agentStop` is never kept waiting by a slow file server or dr-provision): the
/// machine's token and, with `Imagepull`, the downloaded, verified and loaded image.
#[derive(Debug, Clone)]
pub struct Prepared {
    token: String,
}

/// Gets what a start of `agent` needs. `first_of_context` says no other agent of this
/// context runs, which is when an unchecked `Imagepull` is fetched again.
pub async fn prepare(
    plugin: &Plugin,
    engine: &Arc<dyn Engine>,
    agent: &Agent,
    context: &Context,
    first_of_context: bool,
) -> Result<Prepared, AgentError> {
    check_image(agent)?;
    let token = async { Ok::<_, AgentError>(plugin.drp.machine_token(&agent.machine).await?) };
    if context.meta(META_IMAGEPULL).is_none() {
        return Ok(Prepared { token: token.await? });
    }
    let (_, token) = tokio::try_join!(load_image(plugin, engine, agent, context, first_of_context), token)?;
    Ok(Prepared { token })
}

/// The runtime's own create and start (a no-op when the agent already runs): all a
/// start does under the machine's lock. Without `Imagepull` the start itself is the
/// presence check: a present image (nearly always) costs nothing more, a missing one
/// fails with [`EngineError::ImageMissing`] and the caller loads it ([`load_image`])
/// without the lock and starts again.
pub async fn start(plugin: &Plugin, engine: &Arc<dyn Engine>, agent: &Agent, prepared: &Prepared) -> Result<AgentInfo, AgentError> {
    Ok(engine.agent_start(&spec(plugin, agent, prepared.token.clone())).await?)
}

/// Whether a start failed only for want of its image.
pub fn needs_image(error: &AgentError) -> bool {
    matches!(error, AgentError::Engine(EngineError::ImageMissing { .. }))
}

/// Makes `agent`'s image present: its Context's `Imagepull`, else the archive in the
/// plugin's file space.
pub async fn load_image(
    plugin: &Plugin,
    engine: &Arc<dyn Engine>,
    agent: &Agent,
    context: &Context,
    first_of_context: bool,
) -> Result<(), AgentError> {
    ensure_image(plugin, engine, &agent.image, context, first_of_context)
        .await
        .map_err(|source| AgentError::Image { image: agent.image.clone(), source })
}

fn spec(plugin: &Plugin, agent: &Agent, token: String) -> AgentSpec {
    let settings = plugin.settings();
    AgentSpec {
        name: agent.name.clone(),
        image: agent.image.clone(),
        env: vec![
            ("RS_UUID".to_string(), agent.machine.clone()),
            ("RS_TOKEN".to_string(), token),
            ("RS_CONTEXT".to_string(), agent.context.clone()),
            ("RS_ENDPOINTS".to_string(), settings.endpoints.join(" ")),
        ],
        labels: BTreeMap::from([
            (labels::MACHINE.to_string(), agent.machine.clone()),
            (labels::CONTEXT.to_string(), agent.context.clone()),
            (labels::PLUGIN.to_string(), settings.plugin_name.clone()),
            (labels::ENGINE.to_string(), agent.engine.clone()),
            (labels::IMAGE.to_string(), agent.image.clone()),
        ])
        .into_iter()
        .chain(agent.manual.then(|| (labels::MANUAL.to_string(), "true".to_string())))
        .collect(),
        network: settings.agent_network.clone(),
        drpcli: drpcli_path(plugin),
    }
}

/// The drpcli to inject: the param, else the one dr-provision serves, else none (the
/// image's own entrypoint runs).
fn drpcli_path(plugin: &Plugin) -> Option<PathBuf> {
    if let Some(path) = plugin.settings().drpcli.clone() {
        return Some(path);
    }
    let served = plugin.env.webroot.as_ref()?.join("files/drpcli.amd64.linux");
    served.is_file().then_some(served)
}

async fn ensure_image(
    plugin: &Plugin,
    engine: &Arc<dyn Engine>,
    image: &str,
    context: &Context,
    first_of_context: bool,
) -> Result<(), ImageError> {
    let images = &plugin.images;
    if let Some(url) = context.meta(META_IMAGEPULL) {
        let source = ArchiveSource::Url(url.to_string());
        return match context.meta(META_CHECKSUM) {
            Some(sum) if images.loaded_from(engine.as_ref(), image, sum).await? => Ok(()),
            Some(sum) => images.load(Arc::clone(engine), image, source, Some(sum.to_string())).await,
            None if first_of_context || engine.image_id(image).await?.is_none() => {
                images.load(Arc::clone(engine), image, source, None).await
            }
            None => Ok(()),
        };
    }
    if engine.image_id(image).await?.is_some() {
        return Ok(());
    }
    let plugin_name = plugin.settings().plugin_name.clone();
    let source = images.resolve(&format!("files/contexts/{plugin_name}/{image}"))?;
    images.load(Arc::clone(engine), image, source, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_names_follow_the_spec_and_refuse_what_runtimes_refuse() {
        assert_eq!(agent_name("ctx", "u-1").expect("valid"), "drp-ctx-u-1");
        assert!(agent_name("my ctx", "u").is_err());
        assert!(agent_name("", "u").is_err());
        assert!(agent_name("a/b", "u").is_err());
    }
}
