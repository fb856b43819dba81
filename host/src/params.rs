//! The plugin's params (SPEC §5), decoded from the `config` body into typed settings.
//! Every param is optional; a param of the wrong type is an error naming it, never a
//! silent default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::drp::trust::TrustSettings;
use crate::environment::Environment;
use crate::images::trust::insecure_host;
use crate::options::AgentOptions;
use crate::options::gate::Allowed;
use crate::options::layers::PluginLayers;

pub const PLUGIN_NAME: &str = "context-engines/plugin-name";
pub const DEFAULT_ENGINE: &str = "context-engines/default-engine";
pub const ENGINES_DIR: &str = "context-engines/engines-dir";
pub const ENDPOINTS: &str = "context-engines/endpoints";
pub const ENGINE_CONFIG: &str = "context-engines/engine-config";
pub const AGENT_NETWORK: &str = "context-engines/agent-network";
pub const DRPCLI: &str = "context-engines/drpcli";
pub const MAX_PARALLEL: &str = "context-engines/max-parallel";
/// More concurrent runtime calls than this only queue inside the runtime.
const MAX_PARALLEL_LIMIT: u64 = 4096;
pub const WASM_DEADLINE_MS: &str = "context-engines/wasm-deadline-ms";
pub const WASM_MEMORY_MB: &str = "context-engines/wasm-memory-mb";
pub const WASM_MAX_INSTANCES: &str = "context-engines/wasm-max-instances";
pub const RESYNC_SECS: &str = "context-engines/resync-secs";
pub const AGENT_OPTIONS: &str = "context-engines/agent-options";
pub const AGENT_OPTIONS_ENFORCED: &str = "context-engines/agent-options-enforced";
pub const AGENT_OPTIONS_ALLOWED: &str = "context-engines/agent-options-allowed";
pub const DRP_CA: &str = "context-engines/drp-ca";
pub const DRP_CERT_SHA256: &str = "context-engines/drp-cert-sha256";
pub const INSECURE_HOSTS: &str = "context-engines/insecure-hosts";
pub const ENGINE_SHA256: &str = "context-engines/engine-sha256";
pub const MAX_ARCHIVE_MB: &str = "context-engines/max-archive-mb";
pub const DEFAULT_MAX_ARCHIVE_MB: u64 = 16_384;
pub const IMAGE_GC_SECS: &str = "context-engines/image-gc-secs";
pub const IMAGE_GC_GRACE_SECS: &str = "context-engines/image-gc-grace-secs";
pub const DRY_RUN_PARAM: &str = "context-engines/dry-run";
pub const METRICS_ADDRESS: &str = "context-engines/metrics-address";

/// All plugin params, in the order `define` lists them.
pub const ALL: &[&str] = &[
    PLUGIN_NAME,
    DEFAULT_ENGINE,
    ENGINES_DIR,
    ENDPOINTS,
    ENGINE_CONFIG,
    AGENT_NETWORK,
    DRPCLI,
    MAX_PARALLEL,
    WASM_DEADLINE_MS,
    WASM_MEMORY_MB,
    WASM_MAX_INSTANCES,
    RESYNC_SECS,
    AGENT_OPTIONS,
    AGENT_OPTIONS_ENFORCED,
    AGENT_OPTIONS_ALLOWED,
    DRP_CA,
    DRP_CERT_SHA256,
    INSECURE_HOSTS,
    ENGINE_SHA256,
    MAX_ARCHIVE_MB,
    IMAGE_GC_SECS,
    IMAGE_GC_GRACE_SECS,
    DRY_RUN_PARAM,
    METRICS_ADDRESS,
];

// Action params.
pub const IMAGE_NAME: &str = "context/image-name";
pub const IMAGE_PATH: &str = "context/image-path";
pub const CONTEXT_NAME: &str = "context/name";
pub const ENGINE: &str = "context/engine";
pub const LINES: &str = "context/lines";
pub const DRY_RUN: &str = "context/dry-run";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParamError {
    #[error("param '{name}' must be {expected}, got {got}")]
    WrongType { name: String, expected: &'static str, got: String },
    #[error("param '{0}' is required")]
    Missing(String),
    #[error("param '{name}' is invalid: {why}")]
    Invalid { name: String, why: String },
    #[error("params must be a JSON object, got {0}")]
    NotAnObject(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub plugin_name: String,
    pub default_engine: String,
    pub engines_dir: Option<PathBuf>,
    pub endpoints: Vec<String>,
    pub engine_config: BTreeMap<String, Map<String, Value>>,
    pub agent_network: String,
    pub drpcli: Option<PathBuf>,
    pub max_parallel: usize,
    pub wasm_deadline_ms: u64,
    pub wasm_memory_mb: u64,
    pub wasm_max_instances: u64,
    /// Seconds between full reconciles while connected; 0 turns them off.
    pub resync_secs: u64,
    /// Agent options of the plugin's own layers, and the gate for the others.
    pub agent_options: PluginLayers,
    /// How dr-provision's certificate is verified.
    pub drp_trust: TrustSettings,
    /// Hosts whose certificate an image download does not check (lowercase).
    pub insecure_hosts: Vec<String>,
    /// Engine name → SHA-256 of its file; when set, the only WASM engines that load.
    pub engine_sha256: Option<BTreeMap<String, String>>,
    pub max_archive_mb: u64,
    /// Seconds between periodic image GC runs; 0 turns them off.
    pub image_gc_secs: u64,
    /// Images loaded more recently than this are never collected.
    pub image_gc_grace_secs: u64,
    /// Plan only: the reconciler decides and reports, and touches no runtime.
    pub dry_run: bool,
    /// Where `/metrics` and `/healthz` are served; `None`: nowhere.
    pub metrics_address: Option<SocketAddr>,
}

impl Settings {
    pub fn from_params(params: &Value, env: &Environment) -> Result<Settings, ParamError> {
        let params = as_object(params)?;
        let endpoints = match params.get(ENDPOINTS) {
            Some(_) => string_list(params, ENDPOINTS)?,
            None => env.endpoint.iter().cloned().collect(),
        };
        let max_parallel = positive(params, MAX_PARALLEL, 16)?;
        if max_parallel > MAX_PARALLEL_LIMIT {
            return Err(ParamError::Invalid {
                name: MAX_PARALLEL.to_string(),
                why: format!("{max_parallel} is more than the supported {MAX_PARALLEL_LIMIT}"),
            });
        }
        Ok(Settings {
            plugin_name: optional_string(params, PLUGIN_NAME)?.unwrap_or_else(|| "context-engines".to_string()),
            default_engine: optional_string(params, DEFAULT_ENGINE)?.unwrap_or_else(|| "docker".to_string()),
            engines_dir: optional_string(params, ENGINES_DIR)?.map(PathBuf::from).or_else(|| env.default_engines_dir()),
            endpoints,
            engine_config: engine_config(params)?,
            agent_network: optional_string(params, AGENT_NETWORK)?.unwrap_or_else(|| "host".to_string()),
            drpcli: optional_string(params, DRPCLI)?.map(|path| executable_file(DRPCLI, path)).transpose()?,
            max_parallel: usize::try_from(max_parallel).unwrap_or(usize::MAX),
            wasm_deadline_ms: positive(params, WASM_DEADLINE_MS, 30_000)?,
            wasm_memory_mb: positive(params, WASM_MEMORY_MB, 64)?,
            wasm_max_instances: at_most(WASM_MAX_INSTANCES, positive(params, WASM_MAX_INSTANCES, 4)?, 1024)?,
            resync_secs: at_most(RESYNC_SECS, whole(params, RESYNC_SECS, 300)?, 31_536_000)?,
            agent_options: PluginLayers {
                defaults: agent_options(params, AGENT_OPTIONS)?,
                enforced: agent_options(params, AGENT_OPTIONS_ENFORCED)?,
                allowed: Allowed::from_list(&string_list(params, AGENT_OPTIONS_ALLOWED)?)
                    .map_err(|why| ParamError::Invalid { name: AGENT_OPTIONS_ALLOWED.to_string(), why })?,
            },
            drp_trust: TrustSettings::from_params(
                optional_string(params, DRP_CA)?.as_deref(),
                optional_string(params, DRP_CERT_SHA256)?.as_deref(),
            )?,
            insecure_hosts: string_list(params, INSECURE_HOSTS)?
                .iter()
                .map(|entry| insecure_host(entry).map_err(|why| ParamError::Invalid { name: INSECURE_HOSTS.to_string(), why }))
                .collect::<Result<_, _>>()?,
            engine_sha256: engine_sha256(params)?,
            max_archive_mb: at_most(MAX_ARCHIVE_MB, positive(params, MAX_ARCHIVE_MB, DEFAULT_MAX_ARCHIVE_MB)?, 1 << 30)?,
            image_gc_secs: at_most(IMAGE_GC_SECS, whole(params, IMAGE_GC_SECS, 0)?, 31_536_000)?,
            image_gc_grace_secs: at_most(IMAGE_GC_GRACE_SECS, whole(params, IMAGE_GC_GRACE_SECS, 3600)?, 31_536_000)?,
            dry_run: flag(params, DRY_RUN_PARAM, false)?,
            metrics_address: optional_string(params, METRICS_ADDRESS)?.map(|a| socket_address(METRICS_ADDRESS, &a)).transpose()?,
        })
    }

    pub fn wasm_limits(&self) -> crate::wasm::Limits {
        crate::wasm::Limits {
            deadline: std::time::Duration::from_millis(self.wasm_deadline_ms),
            memory_bytes: usize::try_from(self.wasm_memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
            max_instances: usize::try_from(self.wasm_max_instances).unwrap_or(usize::MAX),
        }
    }

    /// The settings object an engine gets from `engine-config` (empty when absent).
    pub fn engine_settings(&self, engine: &str) -> Map<String, Value> {
        self.engine_config.get(engine).cloned().unwrap_or_default()
    }
}

pub fn as_object(value: &Value) -> Result<&Map<String, Value>, ParamError> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Err(ParamError::NotAnObject("null".to_string())),
        other => Err(ParamError::NotAnObject(type_name(other).to_string())),
    }
}

/// A string param; null counts as absent, an empty string too (dr-provision UIs clear a
/// param that way).
pub fn optional_string(params: &Map<String, Value>, name: &str) -> Result<Option<String>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(wrong_type(name, "a string", other)),
    }
}

pub fn required_string(params: &Map<String, Value>, name: &str) -> Result<String, ParamError> {
    optional_string(params, name)?.ok_or_else(|| ParamError::Missing(name.to_string()))
}

/// An agent options layer of the plugin's own; a wrong key is an error naming it.
fn agent_options(params: &Map<String, Value>, name: &str) -> Result<AgentOptions, ParamError> {
    let value = params.get(name).cloned().unwrap_or(Value::Null);
    AgentOptions::from_value(&value).map_err(|e| ParamError::Invalid { name: name.to_string(), why: e.to_string() })
}

/// A yes/no action param (a boolean, or `true`/`false` in a string: drpcli sends action
/// params as it reads them), or `default` when absent.
/// `host:port` with an IP address: the listener binds exactly there, never a name that
/// could resolve elsewhere.
fn socket_address(name: &str, text: &str) -> Result<SocketAddr, ParamError> {
    text.trim().parse().map_err(|_| ParamError::Invalid {
        name: name.to_string(),
        why: format!("'{text}' is not an IP address and port such as 127.0.0.1:9464 or [::1]:9464"),
    })
}

pub fn flag(params: &Map<String, Value>, name: &str, default: bool) -> Result<bool, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(ParamError::Invalid { name: name.to_string(), why: format!("must be true or false, got {other}") }),
    }
}

/// A whole number from 1 to `max` (a number, or digits in a string: drpcli sends action
/// params as it reads them), or `default` when absent.
pub fn bounded_number(params: &Map<String, Value>, name: &str, default: u32, max: u32) -> Result<u32, ParamError> {
    let value = match params.get(name) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(v) => v.as_u64(),
    };
    match value.and_then(|n| u32::try_from(n).ok()).filter(|n| (1..=max).contains(n)) {
        Some(n) => Ok(n),
        None => Err(ParamError::Invalid {
            name: name.to_string(),
            why: format!("must be a whole number from 1 to {max}, got {}", params[name]),
        }),
    }
}

/// A whole number of at least 1, or `default` when absent.
fn positive(params: &Map<String, Value>, name: &str, default: u64) -> Result<u64, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(n),
            _ => Err(ParamError::WrongType { name: name.to_string(), expected: "a whole number of at least 1", got: v.to_string() }),
        },
    }
}

fn whole(params: &Map<String, Value>, name: &str, default: u64) -> Result<u64, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| ParamError::WrongType {
            name: name.to_string(),
            expected: "a whole number (0 or more)",
            got: v.to_string(),
        }),
    }
}

fn at_most(name: &str, value: u64, limit: u64) -> Result<u64, ParamError> {
    if value > limit {
        return Err(ParamError::Invalid { name: name.to_string(), why: format!("{value} is more than the supported {limit}") });
    }
    Ok(value)
}

fn string_list(params: &Map<String, Value>, name: &str) -> Result<Vec<String>, ParamError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(wrong_type(name, "a list of strings", other)),
            })
            .collect(),
        // A single URL is what an operator means when they give a string.
        Some(Value::String(s)) => Ok(s.split_whitespace().map(str::to_string).collect()),
        Some(other) => Err(wrong_type(name, "a list of strings", other)),
    }
}

/// The `drpcli` the agents get bind-mounted: a path that is not an executable file
/// would have Docker create a directory there, and every agent crash-loop.
fn executable_file(name: &str, path: String) -> Result<PathBuf, ParamError> {
    use std::os::unix::fs::PermissionsExt as _;
    let invalid = |why: String| ParamError::Invalid { name: name.to_string(), why };
    let meta = std::fs::metadata(&path).map_err(|e| invalid(format!("'{path}': {e}")))?;
    if !meta.is_file() {
        return Err(invalid(format!("'{path}' is not a regular file")));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(invalid(format!("'{path}' is not executable")));
    }
    Ok(PathBuf::from(path))
}

/// `engine-sha256`: engine name → SHA-256 of its file. Absent or null: no provenance
/// check; an empty object: no WASM engine but the bundled ones loads.
fn engine_sha256(params: &Map<String, Value>) -> Result<Option<BTreeMap<String, String>>, ParamError> {
    let Some(value) = params.get(ENGINE_SHA256).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(map) = value else {
        return Err(wrong_type(ENGINE_SHA256, "an object of engine name to SHA-256", value));
    };
    map.iter()
        .map(|(engine, digest)| {
            let invalid = |why: String| ParamError::Invalid { name: ENGINE_SHA256.to_string(), why: format!("engine '{engine}': {why}") };
            let digest = digest.as_str().ok_or_else(|| invalid(format!("must be a string, got {}", type_name(digest))))?;
            Ok((engine.clone(), crate::tls::parse_sha256(digest).map_err(invalid)?))
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

fn engine_config(params: &Map<String, Value>) -> Result<BTreeMap<String, Map<String, Value>>, ParamError> {
    let Some(value) = params.get(ENGINE_CONFIG).filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(engines) = value else {
        return Err(wrong_type(ENGINE_CONFIG, "an object of engine name to settings", value));
    };
    engines
        .iter()
        .map(|(engine, settings)| match settings {
            Value::Object(map) => {
                request_timeout(engine, map)?;
                if engine == crate::engines::swarm::NAME {
                    crate::engines::swarm::SwarmEngine::new(engine, map).map_err(|why| ParamError::Invalid {
                        name: ENGINE_CONFIG.to_string(),
                        why: format!("settings of engine '{engine}': {why}"),
                    })?;
                }
                Ok((engine.clone(), map.clone()))
            }
            other => Err(ParamError::Invalid {
                name: ENGINE_CONFIG.to_string(),
                why: format!("settings of engine '{engine}' must be an object, got {}", type_name(other)),
            }),
        })
        .collect()
}

/// Key of an engine's settings: seconds a runtime request may take, 1 to 3600. Native
/// engines bound every request but an image load by it; WASM engines bound the time
/// their runtime takes after an image archive's last byte.
pub const REQUEST_TIMEOUT_SECS: &str = "request-timeout-secs";
/// `request-timeout-secs` when unset: a runtime that hangs fails the call (and frees the
/// machine's lock) within this, and a stop's grace period fits in it many times over.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 120;

/// The engine's `request-timeout-secs`, if set; a wrong one is refused by name.
pub fn request_timeout(engine: &str, settings: &Map<String, Value>) -> Result<Option<u64>, ParamError> {
    let Some(value) = settings.get(REQUEST_TIMEOUT_SECS) else { return Ok(None) };
    match value.as_u64().filter(|secs| (1..=3600).contains(secs)) {
        Some(secs) => Ok(Some(secs)),
        None => Err(ParamError::Invalid {
            name: ENGINE_CONFIG.to_string(),
            why: format!("'{REQUEST_TIMEOUT_SECS}' of engine '{engine}' must be a whole number of seconds from 1 to 3600, got {value}"),
        }),
    }
}

fn wrong_type(name: &str, expected: &'static str, got: &Value) -> ParamError {
    ParamError::WrongType { name: name.to_string(), expected, got: type_name(got).to_string() }
}

pub fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Environment {
        Environment {
            endpoint: Some("https://drp:8092".to_string()),
            token: None,
            fileserver: None,
            webroot: Some(PathBuf::from("/srv/tftpboot")),
        }
    }

    #[test]
    fn defaults_follow_the_spec() {
        let s = Settings::from_params(&json!({}), &env()).expect("empty params are valid");
        assert_eq!(s.plugin_name, "context-engines");
        assert_eq!(s.default_engine, "docker");
        assert_eq!(s.endpoints, ["https://drp:8092"]);
        assert_eq!(s.agent_network, "host");
        assert_eq!(s.max_parallel, 16);
        assert_eq!(s.resync_secs, 300);
        assert_eq!(Settings::from_params(&json!({ RESYNC_SECS: 0 }), &env()).map(|s| s.resync_secs), Ok(0));
        assert_eq!(s.engines_dir, Some(PathBuf::from("/srv/tftpboot/files/plugin_providers/context-engines/engines")));
    }

    #[test]
    fn wrong_types_name_the_param() {
        let err = Settings::from_params(&json!({ MAX_PARALLEL: "many" }), &env()).unwrap_err();
        assert!(err.to_string().contains(MAX_PARALLEL), "{err}");
        let err = Settings::from_params(&json!({ ENGINE_CONFIG: {"docker": 3} }), &env()).unwrap_err();
        assert!(err.to_string().contains("docker"), "{err}");
        let err = Settings::from_params(&json!({ ENGINE_CONFIG: {"podman": {REQUEST_TIMEOUT_SECS: 0}} }), &env()).unwrap_err();
        assert!(err.to_string().contains("podman") && err.to_string().contains(REQUEST_TIMEOUT_SECS), "{err}");
        let err = Settings::from_params(&json!({ RESYNC_SECS: u64::MAX }), &env()).unwrap_err();
        assert!(err.to_string().contains(RESYNC_SECS), "{err}");
        let err = Settings::from_params(&json!({ RESYNC_SECS: -1 }), &env()).unwrap_err();
        assert!(err.to_string().contains(RESYNC_SECS), "{err}");
        let err = Settings::from_params(&json!({ AGENT_OPTIONS: {"memory": "lots"} }), &env()).unwrap_err();
        assert!(err.to_string().contains(AGENT_OPTIONS) && err.to_string().contains("memory"), "{err}");
        let err = Settings::from_params(&json!({ AGENT_OPTIONS_ALLOWED: ["root"] }), &env()).unwrap_err();
        assert!(err.to_string().contains(AGENT_OPTIONS_ALLOWED) && err.to_string().contains("'root'"), "{err}");
        let err = Settings::from_params(&json!([1]), &env()).unwrap_err();
        assert_eq!(err, ParamError::NotAnObject("a list".to_string()));
    }
}
