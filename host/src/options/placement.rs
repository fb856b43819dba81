//! The `placement` option: where a scheduling engine (swarm) may put an agent. Checked
//! here, before any engine sees it, with swarm's own grammar, so a typo is an Error
//! naming the entry instead of a service that never gets a node.

use serde::{Deserialize, Serialize};

/// Node constraints (all must hold) and spread preferences (in order).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Placement {
    /// `<attribute> == <value>` or `<attribute> != <value>`, as `docker service create
    /// --constraint` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Node label attributes (`node.labels.zone`) to spread agents evenly over, as
    /// `--placement-pref spread=…`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spread: Vec<String>,
}

/// The attributes swarm (API 1.41 on) constrains on; `node.labels.*`/`engine.labels.*`
/// take a label name after the prefix.
const ATTRIBUTES: &[&str] = &["node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch"];
const LABEL_PREFIXES: &[&str] = &["node.labels.", "engine.labels."];

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.constraints.is_empty() && self.spread.is_empty()
    }

    /// Appends `upper`'s entries, as every list option merges.
    pub fn merge(&mut self, upper: Placement) {
        self.constraints.extend(upper.constraints);
        self.spread.extend(upper.spread);
    }

    /// The first entry that swarm would refuse or that reaches into the plugin's own
    /// labels, as (path, why).
    pub fn check(&self) -> Result<(), (String, String)> {
        for (i, constraint) in self.constraints.iter().enumerate() {
            check_constraint(constraint).map_err(|why| (format!("placement.constraints[{i}]"), why))?;
        }
        for (i, spread) in self.spread.iter().enumerate() {
            let label = LABEL_PREFIXES.iter().find_map(|p| spread.strip_prefix(p));
            if !label.is_some_and(label_name) {
                return Err((
                    format!("placement.spread[{i}]"),
                    format!("'{spread}' is not a label attribute to spread over (node.labels.<name> or engine.labels.<name>)"),
                ));
            }
        }
        Ok(())
    }
}

fn check_constraint(text: &str) -> Result<(), String> {
    let (attribute, value) = match (text.split_once("=="), text.split_once("!=")) {
        (Some(eq), None) => eq,
        (None, Some(ne)) => ne,
        _ => return Err(format!("'{text}' is not <attribute>==<value> or <attribute>!=<value>")),
    };
    let (attribute, value) = (attribute.trim(), value.trim());
    let label = LABEL_PREFIXES.iter().find_map(|p| attribute.strip_prefix(p));
    match label {
        Some(name) if name.starts_with("drp.") => {
            return Err(format!("'{text}': node labels drp.* are the plugin's own (image placement)"));
        }
        Some(name) if !label_name(name) => return Err(format!("'{text}': '{name}' is not a label name")),
        Some(_) => {}
        None if ATTRIBUTES.contains(&attribute) => {}
        None => {
            return Err(format!(
                "'{text}': unknown attribute '{attribute}' (one of {}, node.labels.<name>, engine.labels.<name>)",
                ATTRIBUTES.join(", ")
            ));
        }
    }
    if value.is_empty() || value.contains(['=', '!', ',']) {
        return Err(format!("'{text}': the value must be non-empty, without '=', '!' or ','"));
    }
    Ok(())
}

fn label_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placement(constraints: &[&str], spread: &[&str]) -> Placement {
        Placement {
            constraints: constraints.iter().map(|s| s.to_string()).collect(),
            spread: spread.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn swarm_grammar_passes() {
        let ok = placement(&["node.role==worker", "node.labels.zone != b", "engine.labels.disk==ssd"], &["node.labels.rack"]);
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            (placement(&["node.role=worker"], &[]), "placement.constraints[0]", "not <attribute>"),
            (placement(&["node.roles==worker"], &[]), "placement.constraints[0]", "unknown attribute 'node.roles'"),
            (placement(&["node.role==worker", "node.labels.drp.image.abc==1"], &[]), "placement.constraints[1]", "plugin's own"),
            (placement(&["node.labels.zone=="], &[]), "placement.constraints[0]", "non-empty"),
            (placement(&["node.labels.a==b==c"], &[]), "placement.constraints[0]", "without"),
            (placement(&[], &["zone"]), "placement.spread[0]", "not a label attribute"),
        ];
        for (p, at, why) in cases {
            let (path, message) = p.check().expect_err(at);
            assert_eq!(path, at, "{message}");
            assert!(message.contains(why), "{message}");
        }
    }
}
