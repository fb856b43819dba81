//! The `placement` option: where among its nodes a scheduling engine (swarm) may put an
//! agent; engines that run agents on one host do not apply it. Checked here, before any
//! engine sees it, with swarm's own grammar, so a malformed entry is an Error naming it
//! instead of a 400 from the manager (a well-formed constraint no node satisfies is the
//! swarm engine's to report: "no suitable node").

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

/// The attributes swarm constrains on (matched without regard to case, as swarmkit
/// does); `node.labels.*`/`engine.labels.*` take a label name after the prefix.
const ATTRIBUTES: &[&str] = &["node.id", "node.hostname", "node.ip", "node.role", "node.platform.os", "node.platform.arch"];
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

/// swarmkit's `constraint.Parse`: a key of `[a-z_][a-z0-9-_.]+` and a value of
/// `[a-z0-9:-_ .*()?+[]\^$|/]+` (both without regard to case) around `==` or `!=`,
/// and a known attribute.
fn check_constraint(text: &str) -> Result<(), String> {
    let (attribute, value) = match (text.split_once("=="), text.split_once("!=")) {
        (Some(eq), None) => eq,
        (None, Some(ne)) => ne,
        _ => return Err(format!("'{text}' is not <attribute>==<value> or <attribute>!=<value>")),
    };
    let (attribute, value) = (attribute.trim(), value.trim());
    if !swarm_key(attribute) {
        return Err(format!("'{text}': '{attribute}' is not a constraint key (letters, digits, '-', '_', '.')"));
    }
    let lower = attribute.to_ascii_lowercase();
    let label = LABEL_PREFIXES.iter().find_map(|p| lower.strip_prefix(p));
    match label {
        Some(name) if name.starts_with("drp.") => {
            return Err(format!("'{text}': node labels drp.* are the plugin's own (image placement)"));
        }
        Some(_) => {}
        None if ATTRIBUTES.contains(&lower.as_str()) => {}
        None => {
            return Err(format!(
                "'{text}': unknown attribute '{attribute}' (one of {}, node.labels.<name>, engine.labels.<name>)",
                ATTRIBUTES.join(", ")
            ));
        }
    }
    let value_char = |c: char| c.is_ascii_alphanumeric() || c.is_whitespace() || ":-_.*()?+[]\\^$|/".contains(c);
    if value.is_empty() || !value.chars().all(value_char) {
        return Err(format!("'{text}': the value must be letters, digits, spaces or any of : - _ . * ( ) ? + [ ] \\ ^ $ | /"));
    }
    Ok(())
}

fn swarm_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.len() > 1
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn label_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
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
        let ok = placement(
            &["node.role==worker", "node.labels.zone != b", "engine.labels.disk==ssd", "node.ip==10.0.0.0/24", "Node.Role==manager"],
            &["node.labels.rack"],
        );
        assert_eq!(ok.check(), Ok(()));
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            (placement(&["node.role=worker"], &[]), "placement.constraints[0]", "not <attribute>"),
            (placement(&["node.roles==worker"], &[]), "placement.constraints[0]", "unknown attribute 'node.roles'"),
            (placement(&["node.role==worker", "node.labels.drp.image.abc==1"], &[]), "placement.constraints[1]", "plugin's own"),
            (placement(&["node.labels.zone=="], &[]), "placement.constraints[0]", "the value must be"),
            (placement(&["node.labels.a==b==c"], &[]), "placement.constraints[0]", "the value must be"),
            (placement(&["node.labels.team/x==a"], &[]), "placement.constraints[0]", "not a constraint key"),
            (placement(&["node.labels.zone==eu@1"], &[]), "placement.constraints[0]", "the value must be"),
            (placement(&[], &["zone"]), "placement.spread[0]", "not a label attribute"),
        ];
        for (p, at, why) in cases {
            let (path, message) = p.check().expect_err(at);
            assert_eq!(path, at, "{message}");
            assert!(message.contains(why), "{message}");
        }
    }
}
