//! Starting and stopping one agent: machine token, image presence (auto-load,
//! `Imagepull`/`Checksum`), drpcli injection, names and labels. Shared by the actions
//! and the reconciler, which decide *when*; this decides *how*.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::drp::{Context, DrpError};
use crate::engine::{AgentInfo, AgentSpec, Engine, EngineError, labels};
use crate::images::{ArchiveSource, ImageError};
use crate::options::{AgentOptions, Mount};
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
    #[error("reading the machine's params for its agent options: {0}")]
    Params(DrpError),
    #[error("image '{image}': {source}")]
    Image { image: String, source: ImageError },
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    UnknownEngine(#[from] crate::registry::UnknownEngine),
    #[error(transparent)]
    Options(#[from] crate::options::layers::LayerError),
    #[error("cancelled: the plugin is stopping")]
    Cancelled,
}

impl AgentError {
    /// Whether trying again without a change (an event, a reconfigure) cannot help: the
    /// reconciler parks such a machine instead of retrying it.
    pub fn is_permanent(&self) -> bool {
        match self {
            AgentError::BadName { .. }
            | AgentError::NoImage(_)
            | AgentError::BadImage { .. }
            | AgentError::UnknownEngine(_)
            | AgentError::Options(_) => true,
            AgentError::Engine(EngineError::Misconfigured { .. }) => true,
            AgentError::Image { source, .. } => source.is_permanent(),
            AgentError::Token(_) | AgentError::Params(_) | AgentError::Engine(_) | AgentError::Cancelled => false,
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
    /// The digest of the spec it was started with (label `drp.spec`); empty for an agent
    /// started before specs were digested, which an options change then leaves alone.
    pub spec: String,
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
            spec: String::new(),
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
            spec: found.label(labels::SPEC).unwrap_or_default().to_string(),
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
/// machine's token, its merged agent options and, with `Imagepull`, the downloaded,
/// verified and loaded image.
#[derive(Clone)]
pub struct Prepared {
    token: String,
    options: AgentOptions,
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
    let token = async {
        let token = plugin.drp.machine_token(&agent.machine).await?;
        crate::redact::secrets().add(&token);
        Ok::<_, AgentError>(token)
    };
    let options = options_for(plugin, agent, context);
    if context.meta(META_IMAGEPULL).is_none() {
        let (token, options) = tokio::try_join!(token, options)?;
        return Ok(Prepared { token, options });
    }
    let (_, token, options) = tokio::try_join!(load_image(plugin, engine, agent, context, first_of_context), token, options)?;
    Ok(Prepared { token, options })
}

/// The agent's options, merged from every layer (the machine's read from dr-provision
/// now) and gated.
pub async fn options_for(plugin: &Plugin, agent: &Agent, context: &Context) -> Result<AgentOptions, AgentError> {
    let machine_params = plugin.drp.machine_params(&agent.machine).await.map_err(AgentError::Params)?;
    Ok(plugin.settings().agent_options.resolve(context, &agent.machine, &machine_params)?)
}

/// The digest a start of `agent` with `options` would label it with: whether a running
/// agent is still the wanted one, options included.
pub fn wanted_digest(plugin: &Plugin, agent: &Agent, options: &AgentOptions) -> String {
    spec_digest(&spec(plugin, agent, String::new(), options.clone()))
}

/// The runtime's own create and start (a no-op when the agent already runs): all a
/// start does under the machine's lock. Without `Imagepull` the start itself is the
/// presence check: a present image (nearly always) costs nothing more, a missing one
/// fails with [`EngineError::ImageMissing`] and the caller loads it ([`load_image`])
/// without the lock and starts again.
pub async fn start(plugin: &Plugin, engine: &Arc<dyn Engine>, agent: &Agent, prepared: &Prepared) -> Result<AgentInfo, AgentError> {
    Ok(engine.agent_start(&spec(plugin, agent, prepared.token.clone(), prepared.options.clone())).await?)
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

/// Where an injected drpcli is mounted in the agent, and run from.
pub const DRPCLI_IN_AGENT: &str = "/usr/bin/drpcli";
/// `PATH` of an agent whose drpcli is injected: images with a shell but no `PATH` of
/// their own (scratch-built ones) still find their tools.
pub const AGENT_PATH: &str = "/bin:/usr/bin:/usr/local/bin:/sbin:/usr/sbin:/usr/local/sbin";

/// The whole agent: the host's own env, labels and drpcli injection laid over the
/// merged `options`. The host's `RS_*` env and `drp.*` labels win over any layer (labels
/// `drp.*` are refused earlier; an `RS_*` in a layer is overwritten, not an error, so a
/// copied docker-context profile keeps working). A layer's `PATH` wins over the default.
pub fn spec(plugin: &Plugin, agent: &Agent, token: String, mut options: AgentOptions) -> AgentSpec {
    let settings = plugin.settings();
    let drpcli = drpcli_path(plugin);
    options.env.extend([
        ("RS_UUID".to_string(), agent.machine.clone()),
        ("RS_TOKEN".to_string(), token),
        ("RS_CONTEXT".to_string(), agent.context.clone()),
        ("RS_ENDPOINTS".to_string(), settings.endpoints.join(" ")),
    ]);
    if let Some(path) = &drpcli {
        options.env.entry("PATH".to_string()).or_insert_with(|| AGENT_PATH.to_string());
        options.mounts.push(Mount::bind_read_only(&path.display().to_string(), DRPCLI_IN_AGENT));
    }
    options.labels.extend([
        (labels::MACHINE.to_string(), agent.machine.clone()),
        (labels::CONTEXT.to_string(), agent.context.clone()),
        (labels::PLUGIN.to_string(), settings.plugin_name.clone()),
        (labels::ENGINE.to_string(), agent.engine.clone()),
        (labels::IMAGE.to_string(), agent.image.clone()),
    ]);
    let mut spec = AgentSpec {
        name: agent.name.clone(),
        image: agent.image.clone(),
        entrypoint: drpcli.map(|_| vec![DRPCLI_IN_AGENT.to_string(), "machines".to_string(), "processjobs".to_string()]),
        network: settings.agent_network.clone(),
        options,
    };
    let digest = spec_digest(&spec);
    spec.options.labels.insert(labels::SPEC.to_string(), digest);
    if agent.manual {
        spec.options.labels.insert(labels::MANUAL.to_string(), "true".to_string());
    }
    spec
}

/// A digest of what makes the agent what it is: the spec as canonical JSON, without
/// the machine token (fetched afresh for every start), the digest itself and the
/// `drp.manual` mark (adopting a manual agent must not replace it). Stable across
/// plugin versions for an unchanged spec: [`AgentOptions`] leaves unset keys out, and a
/// golden test below pins the encoding.
pub fn spec_digest(spec: &AgentSpec) -> String {
    let mut options = spec.options.clone();
    options.env.remove("RS_TOKEN");
    options.labels.remove(labels::SPEC);
    options.labels.remove(labels::MANUAL);
    // A struct, not a JSON map: its field order is fixed whatever serde_json's
    // features are, and the options' maps are BTreeMaps.
    #[derive(Serialize)]
    struct Canonical<'a> {
        name: &'a str,
        image: &'a str,
        entrypoint: &'a Option<Vec<String>>,
        network: &'a str,
        options: &'a AgentOptions,
    }
    let canonical =
        Canonical { name: &spec.name, image: &spec.image, entrypoint: &spec.entrypoint, network: &spec.network, options: &options };
    let canonical = serde_json::to_vec(&canonical).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    hex::encode(&digest[..8])
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

    /// Pins the digest encoding: if this changes, every agent of every site is replaced
    /// at the plugin's upgrade. Change it only on purpose, and say so in the README.
    #[test]
    fn the_spec_digest_of_an_unchanged_spec_never_changes() {
        let mut options = AgentOptions::default();
        options.env.insert("RS_UUID".into(), "m1".into());
        options.env.insert("RS_TOKEN".into(), "secret".into());
        options.labels.insert(labels::MACHINE.into(), "m1".into());
        let spec = AgentSpec { name: "drp-c-m1".into(), image: "img:1".into(), entrypoint: None, network: "host".into(), options };
        assert_eq!(spec_digest(&spec), "c77de7ca707d5fdd");
        let mut retokened = spec.clone();
        retokened.options.env.insert("RS_TOKEN".into(), "another".into());
        retokened.options.labels.insert(labels::MANUAL.into(), "true".into());
        assert_eq!(spec_digest(&retokened), spec_digest(&spec));
        retokened.options.memory = Some(crate::options::Size(1 << 30));
        assert_ne!(spec_digest(&retokened), spec_digest(&spec));
    }

    #[test]
    fn agent_names_follow_the_spec_and_refuse_what_runtimes_refuse() {
        assert_eq!(agent_name("ctx", "u-1").expect("valid"), "drp-ctx-u-1");
        assert!(agent_name("my ctx", "u").is_err());
        assert!(agent_name("", "u").is_err());
        assert!(agent_name("a/b", "u").is_err());
    }
}
