//! The four layers of agent options, lowest first:
//!
//! 1. plugin param `context-engines/agent-options` (the operator's defaults);
//! 2. the Context's `Meta["agent-options"]`, a JSON object in a string (Meta is a
//!    string map in dr-provision);
//! 3. the machine's aggregated param `context-engines/agent-options` (machine, its
//!    profiles, global), plus RackN's `context/volumes` (Docker `--mount` strings) read
//!    as mounts;
//! 4. plugin param `context-engines/agent-options-enforced`, which wins.
//!
//! Layers 2 and 3 pass the [`super::gate`] first. The plugin's layers were checked when
//! the config arrived.

use serde_json::{Map, Value};

use super::gate::{Allowed, Refused};
use super::{AgentOptions, Mount, MountType, OptionError, Size};
use crate::drp::Context;

/// The Context Meta key holding its layer.
pub const META_AGENT_OPTIONS: &str = "agent-options";
/// The machine param holding its layer (same name as the plugin param: dr-provision
/// aggregates it over machine, profiles and global).
pub const MACHINE_AGENT_OPTIONS: &str = "context-engines/agent-options";
/// RackN docker-context's mounts, read for migration.
pub const MACHINE_VOLUMES: &str = "context/volumes";

/// The plugin's own layers, from its params.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginLayers {
    pub defaults: AgentOptions,
    pub enforced: AgentOptions,
    pub allowed: Allowed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    #[error("agent options of {layer}: {error}")]
    Bad { layer: String, error: OptionError },
    #[error(transparent)]
    Refused(#[from] Refused),
}

impl PluginLayers {
    /// The merged options for an agent of `context` on a machine whose aggregated
    /// params are `machine_params` (`None`: no machine layer, e.g. a check before any
    /// machine param was read).
    pub fn resolve(&self, context: &Context, machine: &str, machine_params: &Map<String, Value>) -> Result<AgentOptions, LayerError> {
        let context_layer = context_layer(context)?;
        let machine_layer = machine_layer(machine, machine_params)?;
        self.allowed.check(&format!("the Context '{}' (Meta[\"{META_AGENT_OPTIONS}\"])", context.name), &context_layer)?;
        self.allowed.check(&format!("machine {machine} (param '{MACHINE_AGENT_OPTIONS}' or '{MACHINE_VOLUMES}')"), &machine_layer)?;
        Ok(self.defaults.clone().merge(context_layer).merge(machine_layer).merge(self.enforced.clone()))
    }
}

fn context_layer(context: &Context) -> Result<AgentOptions, LayerError> {
    let Some(text) = context.meta(META_AGENT_OPTIONS) else { return Ok(AgentOptions::default()) };
    AgentOptions::from_json(text)
        .map_err(|error| LayerError::Bad { layer: format!("the Context '{}' (Meta[\"{META_AGENT_OPTIONS}\"])", context.name), error })
}

fn machine_layer(machine: &str, params: &Map<String, Value>) -> Result<AgentOptions, LayerError> {
    let bad = |param: &str, error: OptionError| LayerError::Bad { layer: format!("machine {machine} (param '{param}')"), error };
    let mut layer = match params.get(MACHINE_AGENT_OPTIONS) {
        None => AgentOptions::default(),
        Some(value) => AgentOptions::from_value(value).map_err(|e| bad(MACHINE_AGENT_OPTIONS, e))?,
    };
    let volumes = match params.get(MACHINE_VOLUMES) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            let why = format!("must be a list of --mount strings, got {}", crate::params::type_name(other));
            return Err(bad(MACHINE_VOLUMES, OptionError::new("(top)", why)));
        }
    };
    for (i, item) in volumes.iter().enumerate() {
        let at = |why: String| bad(MACHINE_VOLUMES, OptionError::new(format!("[{i}]"), why));
        let text = item.as_str().ok_or_else(|| at(format!("must be a string, got {}", crate::params::type_name(item))))?;
        layer.mounts.push(parse_mount_flag(text).map_err(at)?);
    }
    Ok(layer)
}

/// One `docker run --mount` value: `type=bind,source=/a,target=/b,readonly`.
pub fn parse_mount_flag(text: &str) -> Result<Mount, String> {
    let mut mount = Mount { kind: MountType::Volume, source: None, target: String::new(), read_only: false, tmpfs_size: None };
    for field in text.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = field.split_once('=').map_or((field, None), |(k, v)| (k, Some(v)));
        match (key, value) {
            ("type", Some("bind")) => mount.kind = MountType::Bind,
            ("type", Some("volume")) => mount.kind = MountType::Volume,
            ("type", Some("tmpfs")) => mount.kind = MountType::Tmpfs,
            ("source" | "src", Some(v)) => mount.source = Some(v.to_string()),
            ("target" | "dst" | "destination", Some(v)) => mount.target = v.to_string(),
            ("readonly" | "ro", None | Some("true" | "1")) => mount.read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => mount.read_only = false,
            ("tmpfs-size", Some(v)) => mount.tmpfs_size = Some(Size::parse(v)?),
            _ => return Err(format!("'{field}' in '{text}' is not understood (type, source, target, readonly, tmpfs-size)")),
        }
    }
    if mount.target.is_empty() {
        return Err(format!("'{text}' has no target"));
    }
    mount.check().map_err(|why| format!("'{text}': {why}"))?;
    Ok(mount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn context(meta: Option<&str>) -> Context {
        let mut context = Context { name: "c".into(), engine: "context-engines".into(), image: "i:1".into(), ..Context::default() };
        if let Some(meta) = meta {
            context.meta.insert(META_AGENT_OPTIONS.to_string(), meta.to_string());
        }
        context
    }

    fn layers(defaults: Value, enforced: Value) -> PluginLayers {
        PluginLayers {
            defaults: AgentOptions::from_value(&defaults).expect("defaults"),
            enforced: AgentOptions::from_value(&enforced).expect("enforced"),
            allowed: Allowed::default(),
        }
    }

    fn params(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn each_layer_alone_and_all_four_with_the_enforced_one_winning() {
        let none = layers(json!({}), json!({}));
        let env = |o: AgentOptions| o.env.get("WHO").cloned();
        assert_eq!(
            env(layers(json!({"env": {"WHO": "plugin"}}), json!({})).resolve(&context(None), "m", &Map::new()).expect("1")),
            Some("plugin".into())
        );
        assert_eq!(env(none.resolve(&context(Some(r#"{"env":{"WHO":"context"}}"#)), "m", &Map::new()).expect("2")), Some("context".into()));
        let machine = params(json!({MACHINE_AGENT_OPTIONS: {"env": {"WHO": "machine"}}}));
        assert_eq!(env(none.resolve(&context(None), "m", &machine).expect("3")), Some("machine".into()));
        let all = layers(json!({"env": {"WHO": "plugin", "P": "1"}, "memory": "1g"}), json!({"env": {"WHO": "enforced"}, "memory": "2g"}));
        let merged = all.resolve(&context(Some(r#"{"env":{"WHO":"context","C":"1"},"memory":"512m"}"#)), "m", &machine).expect("4");
        assert_eq!(merged.env, BTreeMap::from([("C".into(), "1".into()), ("P".into(), "1".into()), ("WHO".into(), "enforced".into())]));
        assert_eq!(merged.memory, Some(Size(2 << 30)));
    }

    #[test]
    fn rackn_volumes_are_read_as_mounts() {
        let machine =
            params(json!({MACHINE_VOLUMES: ["type=volume,source=cache,target=/cache,readonly", "type=tmpfs,dst=/t,tmpfs-size=1m"]}));
        let merged = layers(json!({}), json!({})).resolve(&context(None), "m", &machine).expect("volumes");
        assert_eq!(merged.mounts.len(), 2);
        assert!(merged.mounts[0].read_only && merged.mounts[0].source.as_deref() == Some("cache"));
        assert_eq!(merged.mounts[1].tmpfs_size, Some(Size(1 << 20)));
        let err =
            layers(json!({}), json!({})).resolve(&context(None), "m", &params(json!({MACHINE_VOLUMES: ["type=bind,src=/etc,dst=/etc"]})));
        assert!(matches!(err, Err(LayerError::Refused(_))), "{err:?}");
    }

    #[test]
    fn bad_layers_name_the_layer_and_key() {
        let none = layers(json!({}), json!({}));
        let err = none.resolve(&context(Some("{oops")), "m", &Map::new()).expect_err("bad json").to_string();
        assert!(err.contains("the Context 'c'") && err.contains("not valid JSON"), "{err}");
        let err = none.resolve(&context(None), "m", &params(json!({MACHINE_AGENT_OPTIONS: {"memory": true}}))).expect_err("type");
        assert!(err.to_string().contains("machine m") && err.to_string().contains("memory"), "{err}");
    }
}
