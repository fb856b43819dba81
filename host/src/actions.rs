//! The plugin's actions (SPEC §2 table): decode params, pick the engine, run, and turn
//! every failure into an Error with an HTTP code and a message that says what and where.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::agents::{self, Agent, AgentError};
use crate::api_error::ApiError;
use crate::controller::reconciler::{AgentFailure, Reconciler};
use crate::drp::{Context, Machine};
use crate::engine::{Engine, EngineError, labels};
use crate::images::ImageError;
use crate::options::layers::LayerError;
use crate::params::{self, ParamError};
use crate::plugin::Plugin;
use crate::registry::UnknownEngine;

/// The body of `/api-plugin/v4/action`.
#[derive(Debug, Deserialize)]
pub struct Action {
    #[serde(rename = "Command")]
    pub command: String,
    #[serde(rename = "Model", default)]
    pub model: Value,
    #[serde(rename = "Params", default)]
    pub params: Value,
}

pub async fn run(plugin: &Arc<Plugin>, reconciler: &Arc<Reconciler>, action: Action) -> Result<Value, ApiError> {
    let empty = Map::new();
    let params = match &action.params {
        Value::Null => &empty,
        other => params::as_object(other).map_err(|e| ApiError::bad_request(e.to_string()))?,
    };
    let context = |e: ApiError| e.in_action(&action.command);
    match action.command.as_str() {
        "imageUpload" => image_upload(plugin, params).await,
        "imageExists" => image_exists(plugin, params).await,
        "imageDetail" => image_detail(plugin, params).await,
        "imageRemove" => image_remove(plugin, params).await,
        "agentStart" => agent_start(plugin, reconciler, &action.model, params).await,
        "agentStop" => agent_stop(plugin, reconciler, &action.model, params).await,
        "agentLogs" => agent_logs(plugin, reconciler, &action.model, params).await,
        "imagePrune" => image_prune(plugin, params).await,
        "enginesList" => Ok(json!(plugin.registry.status().await)),
        "agentStatus" => Ok(reconciler.summary()),
        other => Err(ApiError::new(
            404,
            format!(
                "unknown action '{other}'; this plugin offers imageUpload, imageExists, imageDetail, imageRemove, imagePrune, agentStart, agentStop, agentLogs, enginesList, agentStatus"
            ),
        )),
    }
    .map_err(context)
}

fn image_param(params: &Map<String, Value>) -> Result<String, ApiError> {
    let image = params::required_string(params, params::IMAGE_NAME)?;
    crate::images::check_reference(&image).map_err(|why| ApiError::bad_request(format!("param '{}': {why}", params::IMAGE_NAME)))?;
    Ok(image)
}

fn engine(plugin: &Plugin, params: &Map<String, Value>, fallback: Option<String>) -> Result<Arc<dyn Engine>, ApiError> {
    let name = match params::optional_string(params, params::ENGINE)? {
        Some(name) => name,
        None => fallback.unwrap_or_else(|| plugin.settings().default_engine.clone()),
    };
    Ok(plugin.registry.get(&name)?)
}

async fn image_upload(plugin: &Plugin, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let image = image_param(params)?;
    let path = params::required_string(params, params::IMAGE_PATH)?;
    let engine = engine(plugin, params, None)?;
    let source = plugin.images.resolve(&path)?;
    plugin.images.load(engine, &image, source, None).await?;
    Ok(Value::Bool(true))
}

async fn image_exists(plugin: &Plugin, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let image = image_param(params)?;
    let engine = engine(plugin, params, None)?;
    Ok(Value::Bool(engine.image_id(&image).await?.is_some()))
}

/// What `imageExists` says, with the image's id and, for an engine of several nodes,
/// which node holds it. (A separate action: SPEC fixes `imageExists`' params and its
/// `true`/`false`.)
async fn image_detail(plugin: &Plugin, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let image = image_param(params)?;
    let engine = engine(plugin, params, None)?;
    let id = engine.image_id(&image).await?;
    let mut detail = json!({"exists": id.is_some(), "id": id, "engine": engine.name()});
    if let Some(Value::Object(more)) = engine.image_detail(&image).await?
        && let Some(map) = detail.as_object_mut()
    {
        map.extend(more);
    }
    Ok(detail)
}

async fn image_remove(plugin: &Plugin, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let image = image_param(params)?;
    let engine = engine(plugin, params, None)?;
    plugin.images.remove(engine.as_ref(), &image).await?;
    Ok(Value::Bool(true))
}

/// Image GC now: a dry run unless `context/dry-run` is false.
async fn image_prune(plugin: &Plugin, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let dry_run = params::flag(params, params::DRY_RUN, true)?;
    let only = params::optional_string(params, params::ENGINE)?;
    if let Some(name) = &only {
        plugin.registry.get(name)?;
    }
    let verdicts = crate::images::gc::collect(plugin, only.as_deref(), dry_run).await.map_err(|e| ApiError::new(502, e.to_string()))?;
    Ok(json!({"DryRun": dry_run, "Images": verdicts}))
}

fn machine_of(model: &Value) -> Result<Machine, ApiError> {
    let machine: Machine =
        serde_json::from_value(model.clone()).map_err(|e| ApiError::bad_request(format!("the action's Model is not a machine: {e}")))?;
    if machine.uuid.is_empty() {
        return Err(ApiError::bad_request("the action's Model has no Uuid: machine actions need the machine object"));
    }
    Ok(machine)
}

async fn agent_start(plugin: &Plugin, reconciler: &Reconciler, model: &Value, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let machine = machine_of(model)?;
    let context_name = params::required_string(params, params::CONTEXT_NAME)?;
    let image = image_param(params)?;
    // The Context's Meta (engine, Imagepull, Checksum) applies when it is known; the
    // action's image wins, as dr-provision sends the one it wants.
    let known = reconciler.context(&context_name).unwrap_or_else(|| Context { name: context_name.clone(), ..Context::default() });
    let context = Context { image, ..known };
    let settings = plugin.settings();
    let engine_name = match params::optional_string(params, params::ENGINE)? {
        Some(name) => name,
        None => agents::engine_for(&context, &settings.default_engine),
    };
    plugin.registry.get(&engine_name)?;
    // Outside the machine's own Context the agent is manual: the reconciler leaves it be
    // until agentStop, the machine's deletion, or the Context taking it over.
    let manual = machine.context != context_name;
    let agent = Agent { manual, ..Agent::new(&machine.uuid, &context, &engine_name)? };
    let info = reconciler.start_now(&agent, &context).await?;
    Ok(json!({
        "Name": agent.name,
        "Id": info.id,
        "Machine": agent.machine,
        "Context": agent.context,
        "Engine": agent.engine,
        "Image": agent.image,
        "Manual": agent.manual,
    }))
}

async fn agent_stop(plugin: &Plugin, reconciler: &Reconciler, model: &Value, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let machine = machine_of(model)?;
    let context_name = params::required_string(params, params::CONTEXT_NAME)?;
    let name = agents::agent_name(&context_name, &machine.uuid)?;
    let _machine = reconciler.lock_machine(&machine.uuid).await;
    let engine_name = agent_engine(plugin, reconciler, params, &machine.uuid, &context_name, &name)?;
    let engine = plugin.registry.resolve(&engine_name)?;
    // Only an agent of ours is stopped: a container of that name with another plugin's
    // label (or none) is not ours to remove, so for us the agent is absent.
    if !is_ours(plugin, engine.as_ref(), &machine.uuid, &name).await? {
        return Ok(Value::Bool(true));
    }
    let agent = Agent {
        machine: machine.uuid.clone(),
        context: context_name,
        engine: engine_name,
        name,
        image: String::new(),
        id: String::new(),
        manual: false,
        running: true,
        spec: String::new(),
    };
    reconciler.stop(&agent).await?;
    Ok(Value::Bool(true))
}

/// Lines of an agent's logs an action may ask for.
const MAX_LOG_LINES: u32 = 10_000;
const DEFAULT_LOG_LINES: u32 = 100;

/// The agent's last lines, every token the plugin knows masked.
async fn agent_logs(plugin: &Plugin, reconciler: &Reconciler, model: &Value, params: &Map<String, Value>) -> Result<Value, ApiError> {
    let machine = machine_of(model)?;
    let context_name = params::required_string(params, params::CONTEXT_NAME)?;
    let lines = params::bounded_number(params, params::LINES, DEFAULT_LOG_LINES, MAX_LOG_LINES)?;
    let name = agents::agent_name(&context_name, &machine.uuid)?;
    let engine_name = agent_engine(plugin, reconciler, params, &machine.uuid, &context_name, &name)?;
    let engine = plugin.registry.resolve(&engine_name)?;
    if !is_ours(plugin, engine.as_ref(), &machine.uuid, &name).await? {
        return Err(ApiError::new(404, format!("no agent '{name}' of this plugin on engine '{engine_name}'")));
    }
    // Tokens an agent printed are masked on the way out, as in every reply.
    let logged = engine.agent_logs(&name, lines).await?;
    Ok(json!({"Name": name, "Engine": engine_name, "Lines": logged}))
}

/// The engine of a machine's agent in `context_name`: the action's `context/engine`,
/// else the one the reconciler knows runs it, else its Context's, else the default.
fn agent_engine(
    plugin: &Plugin,
    reconciler: &Reconciler,
    params: &Map<String, Value>,
    machine: &str,
    context_name: &str,
    name: &str,
) -> Result<String, ApiError> {
    Ok(match params::optional_string(params, params::ENGINE)? {
        Some(name) => name,
        None => reconciler
            .agents_of(machine)
            .into_iter()
            .find(|a| a.name == name)
            .map(|a| a.engine)
            .or_else(|| reconciler.context(context_name).map(|c| agents::engine_for(&c, &plugin.settings().default_engine)))
            .unwrap_or_else(|| plugin.settings().default_engine.clone()),
    })
}

/// Whether the engine runs an agent of this plugin called `name` for `machine`.
async fn is_ours(plugin: &Plugin, engine: &dyn Engine, machine: &str, name: &str) -> Result<bool, ApiError> {
    let plugin_name = plugin.settings().plugin_name.clone();
    let ours = engine.agent_list(&[(labels::PLUGIN, plugin_name.as_str()), (labels::MACHINE, machine)]).await?;
    Ok(ours.iter().any(|a| a.name == name))
}

impl From<ParamError> for ApiError {
    fn from(e: ParamError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<UnknownEngine> for ApiError {
    fn from(e: UnknownEngine) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        ApiError::new(engine_error_code(&e), e.to_string())
    }
}

fn engine_error_code(e: &EngineError) -> u16 {
    match e {
        EngineError::Unreachable { .. } => 503,
        EngineError::ImageMissing { .. } => 404,
        EngineError::BadArchive { .. } | EngineError::Rejected { .. } => 422,
        EngineError::Misconfigured { .. } => 400,
        EngineError::Failed { .. } => 500,
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> ApiError {
        let code = image_error_code(&e);
        ApiError::new(code, e.to_string())
    }
}

fn image_error_code(e: &ImageError) -> u16 {
    match e {
        ImageError::BadPath { .. } | ImageError::BadChecksum(_) => 400,
        ImageError::Download { .. } | ImageError::Untrusted { .. } => 502,
        ImageError::Read { .. } => 404,
        ImageError::TooLarge { .. } => 413,
        ImageError::NoSpace { .. } => 507,
        ImageError::ChecksumMismatch { .. } => 422,
        ImageError::Engine(engine) => engine_error_code(engine),
        ImageError::Shared(inner) => image_error_code(inner),
        ImageError::Aborted(_) => 500,
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> ApiError {
        ApiError::new(agent_error_code(&e), e.to_string())
    }
}

impl From<AgentFailure> for ApiError {
    fn from(e: AgentFailure) -> ApiError {
        ApiError::new(agent_error_code(&e.source), e.to_string())
    }
}

fn agent_error_code(e: &AgentError) -> u16 {
    match e {
        AgentError::BadName { .. } | AgentError::NoImage(_) | AgentError::BadImage { .. } | AgentError::UnknownEngine(_) => 400,
        AgentError::Token(_) | AgentError::Params(_) => 502,
        AgentError::Image { source, .. } => image_error_code(source),
        AgentError::Engine(engine) => engine_error_code(engine),
        AgentError::Options(LayerError::Bad { .. }) => 400,
        AgentError::Options(LayerError::Refused(_)) => 403,
        AgentError::Cancelled => 503,
    }
}
