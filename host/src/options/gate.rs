//! The safety gate: options that give an agent the host (`privileged`, `devices`,
//! `cap-add`, `security-opt`, bind mounts) are taken from a Context or a machine only
//! where the plugin param `context-engines/agent-options-allowed` allows them. Whoever
//! may edit a Context or a machine's params is not thereby root on the plugin's host.
//! The plugin's own layers are the operator's and pass unchecked.

use super::{AgentOptions, MountType};
use crate::params::AGENT_OPTIONS_ALLOWED;

/// The option keys that are gated; everything else (env, resources, user, workdir,
/// labels, named volumes, tmpfs, cap-drop, read-only-rootfs, init, dns, extra-hosts,
/// stop-timeout-secs) only confines an agent further or stays inside it.
pub const GATED_KEYS: &[&str] = &["privileged", "devices", "cap-add", "security-opt"];

/// What the gate lets through, from `context-engines/agent-options-allowed`: gated keys
/// by name, and absolute host path prefixes for bind mount sources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    keys: Vec<String>,
    bind_prefixes: Vec<String>,
}

/// A gated option asked for by a layer that may not have it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{layer} asks for '{key}'{detail}, which gives the agent the host: refused (allow it in param '{param}' with {allow})")]
pub struct Refused {
    pub layer: String,
    pub key: String,
    detail: String,
    param: &'static str,
    allow: String,
}

impl Allowed {
    /// Reads the param's list; a word that is neither a gated key nor an absolute path
    /// is an error naming it.
    pub fn from_list(items: &[String]) -> Result<Allowed, String> {
        let mut allowed = Allowed::default();
        for item in items {
            if item.starts_with('/') {
                if item.split('/').any(|part| part == "..") {
                    return Err(format!("bind prefix '{item}' must not contain '..'"));
                }
                allowed.bind_prefixes.push(item.trim_end_matches('/').to_string());
            } else if GATED_KEYS.contains(&item.as_str()) {
                allowed.keys.push(item.clone());
            } else {
                return Err(format!("'{item}' is neither a gated option ({}) nor an absolute host path prefix", GATED_KEYS.join(", ")));
            }
        }
        Ok(allowed)
    }

    /// Checks one layer; `layer` says which in the error ("the Context 'x'").
    pub fn check(&self, layer: &str, options: &AgentOptions) -> Result<(), Refused> {
        let refuse = |key: &str, detail: String, allow: String| Refused {
            layer: layer.to_string(),
            key: key.to_string(),
            detail,
            param: AGENT_OPTIONS_ALLOWED,
            allow,
        };
        let asked = [
            ("privileged", options.privileged == Some(true)),
            ("devices", !options.devices.is_empty()),
            ("cap-add", !options.cap_add.is_empty()),
            ("security-opt", !options.security_opt.is_empty()),
        ];
        for (key, set) in asked {
            if set && !self.keys.iter().any(|k| k == key) {
                return Err(refuse(key, String::new(), format!("\"{key}\"")));
            }
        }
        for (i, mount) in options.mounts.iter().enumerate() {
            let Some(source) = mount.source.as_deref().filter(|_| mount.kind == MountType::Bind) else { continue };
            if !self.bind_prefixes.iter().any(|prefix| under(source, prefix)) {
                return Err(refuse(
                    &format!("mounts[{i}]"),
                    format!(" (a bind of host path '{source}')"),
                    format!("\"{source}\" or a parent of it"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `path` is `prefix` or below it, by whole path components.
fn under(path: &str, prefix: &str) -> bool {
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(value: serde_json::Value) -> AgentOptions {
        AgentOptions::from_value(&value).expect("valid options")
    }

    #[test]
    fn by_default_only_what_stays_inside_the_agent_passes() {
        let gate = Allowed::default();
        let fine = options(json!({"env": {"A": "1"}, "memory": "1g", "user": "1000", "cap-drop": ["ALL"], "privileged": false,
            "mounts": [{"type": "volume", "source": "v", "target": "/v"}, {"type": "tmpfs", "target": "/t"}]}));
        assert_eq!(gate.check("the Context 'c'", &fine), Ok(()));
        let refused = gate.check("the Context 'c'", &options(json!({"privileged": true}))).expect_err("privileged");
        assert_eq!(refused.key, "privileged");
        let text = refused.to_string();
        assert!(text.contains("the Context 'c'") && text.contains(AGENT_OPTIONS_ALLOWED), "{text}");
        let refused = gate.check("machine m", &options(json!({"mounts": [{"type": "bind", "source": "/etc", "target": "/etc"}]})));
        assert!(refused.expect_err("bind").to_string().contains("'/etc'"));
    }

    #[test]
    fn the_param_allows_keys_and_bind_prefixes_by_whole_components() {
        let gate = Allowed::from_list(&["privileged".to_string(), "/srv/data/".to_string()]).expect("valid list");
        assert_eq!(gate.check("l", &options(json!({"privileged": true}))), Ok(()));
        let bind = |source: &str| options(json!({"mounts": [{"type": "bind", "source": source, "target": "/d"}]}));
        assert_eq!(gate.check("l", &bind("/srv/data")), Ok(()));
        assert_eq!(gate.check("l", &bind("/srv/data/x")), Ok(()));
        assert!(gate.check("l", &bind("/srv/database")).is_err());
        assert!(gate.check("l", &options(json!({"devices": ["/dev/kvm"]}))).is_err());
        assert!(Allowed::from_list(&["/".to_string()]).expect("root").check("l", &bind("/etc")).is_ok());
        assert!(Allowed::from_list(&["everything".to_string()]).is_err());
    }
}
