//! Agent options: what an operator may add to an agent beyond its image (env, mounts,
//! resources, security), as one JSON object type. They come in layers
//! ([`layers`]), pass a safety gate ([`gate`]) and end up, merged, in the
//! [`crate::engine::AgentSpec`] the host computes; engines only translate them.
//!
//! The JSON shape is fixed by `content/params/context-engines-agent-options.yaml` (its
//! schema) and documented there; unknown keys are errors, so a typo never goes unseen.

pub mod gate;
pub mod layers;
mod placement;
mod size;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use placement::Placement;
pub use size::Size;

/// The words an engine puts in `engine-info.features` to say what it applies.
pub mod feature {
    /// Mounts beyond the drpcli bind: more binds, named volumes, tmpfs.
    pub const MOUNTS: &str = "mounts";
    /// memory, memory-swap, cpus, pids-limit, shm-size.
    pub const RESOURCES: &str = "resources";
    /// user, cap-add, cap-drop, security-opt, devices, privileged, read-only-rootfs.
    pub const SECURITY: &str = "security";
    /// workdir, init, stop-timeout-secs, extra-hosts, dns.
    pub const PROCESS: &str = "process";
    /// `agent-logs`.
    pub const LOGS: &str = "logs";
}

/// One layer's options, or the merge of all layers. Every key is optional; an unset
/// one is absent from the serialized form, so adding a key to this type never changes
/// the digest of a spec that does not use it (see [`crate::agents::spec_digest`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentOptions {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Size>,
    /// Memory plus swap; `-1` for unlimited swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<SwapSize>,
    /// CPUs, fractional (`0.5` is half a CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Size>,
    /// `uid`, `uid:gid` or a user name of the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// `host-path[:container-path[:permissions]]`, as `docker run --device`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privileged: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only_rootfs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// `host:ip`, as `docker run --add-host`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// Extra labels; `drp.*` are the host's own and refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Seconds the runtime waits after SIGTERM before it kills the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout_secs: Option<u32>,
    /// Where among its nodes a scheduling engine (swarm) may run the agent. Engines that
    /// run agents on one host have one place, and do not apply it: a plugin-wide
    /// placement must not stop every agent on them (a refused start after a spec change
    /// would leave the machine without one).
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountType {
    /// A host path; gated (see [`gate`]).
    Bind,
    /// A named volume of the runtime, created on first use.
    Volume,
    /// A memory-backed file system; `source` must be absent.
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub target: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<Size>,
}

/// `memory-swap`: a size, or `-1` for unlimited swap (Docker's convention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SwapSize {
    Unlimited(UnlimitedMarker),
    Limit(Size),
}

impl SwapSize {
    /// In bytes, `-1` for unlimited, as runtimes take it.
    pub fn bytes(self) -> i64 {
        match self {
            SwapSize::Unlimited(_) => -1,
            SwapSize::Limit(size) => size.signed(),
        }
    }
}

/// The literal `-1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnlimitedMarker;

impl Serialize for UnlimitedMarker {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(-1)
    }
}

impl<'de> Deserialize<'de> for UnlimitedMarker {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) if n.as_i64() == Some(-1) => Ok(UnlimitedMarker),
            serde_json::Value::String(s) if s == "-1" => Ok(UnlimitedMarker),
            other => Err(serde::de::Error::custom(format!("not -1: {other}"))),
        }
    }
}

/// Why options cannot be used. `at` is the key, as a path (`mounts[0].target`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {why}")]
pub struct OptionError {
    pub at: String,
    pub why: String,
}

impl OptionError {
    fn new(at: impl Into<String>, why: impl Into<String>) -> OptionError {
        OptionError { at: at.into(), why: why.into() }
    }
}

impl AgentOptions {
    /// Decodes and checks one layer. An error names the key that is wrong.
    pub fn from_value(value: &serde_json::Value) -> Result<AgentOptions, OptionError> {
        if value.is_null() {
            return Ok(AgentOptions::default());
        }
        if !value.is_object() {
            return Err(OptionError::new("(top)", format!("must be an object, got {}", crate::params::type_name(value))));
        }
        let options: AgentOptions = serde_path_to_error::deserialize(value).map_err(|e| {
            let at = e.path().to_string();
            OptionError::new(if at == "." { "(top)".to_string() } else { at }, e.into_inner().to_string())
        })?;
        options.check()?;
        Ok(options)
    }

    /// Decodes a layer given as JSON text (a Context's Meta holds strings only).
    pub fn from_json(text: &str) -> Result<AgentOptions, OptionError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| OptionError::new("(top)", format!("not valid JSON: {e}")))?;
        AgentOptions::from_value(&value)
    }

    /// What serde cannot say about a value on its own.
    fn check(&self) -> Result<(), OptionError> {
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(OptionError::new(format!("env.{key}"), "a variable name must be non-empty, without '=' or NUL"));
            }
        }
        for (i, mount) in self.mounts.iter().enumerate() {
            mount.check().map_err(|why| OptionError::new(format!("mounts[{i}]"), why))?;
        }
        for (i, device) in self.devices.iter().enumerate() {
            if !device.starts_with('/') || device.split(':').count() > 3 {
                return Err(OptionError::new(
                    format!("devices[{i}]"),
                    format!("'{device}' is not host-path[:container-path[:permissions]]"),
                ));
            }
        }
        if self.memory.is_some_and(|m| m.0 == 0) {
            return Err(OptionError::new("memory", "must be more than 0"));
        }
        if let Some(cpus) = self.cpus
            && !(cpus.is_finite() && cpus > 0.0 && cpus <= 1024.0)
        {
            return Err(OptionError::new("cpus", format!("must be a number of CPUs above 0 and at most 1024, got {cpus}")));
        }
        if self.pids_limit.is_some_and(|p| p < 1 && p != -1) {
            return Err(OptionError::new("pids-limit", "must be at least 1, or -1 for unlimited"));
        }
        for (key, value) in [("user", &self.user), ("workdir", &self.workdir)] {
            if value.as_deref().is_some_and(str::is_empty) {
                return Err(OptionError::new(key, "must not be empty"));
            }
        }
        if self.workdir.as_deref().is_some_and(|w| !w.starts_with('/')) {
            return Err(OptionError::new("workdir", "must be an absolute path"));
        }
        if let Some(key) = self.labels.keys().find(|k| k.starts_with("drp.")) {
            return Err(OptionError::new(format!("labels.{key}"), "labels drp.* are the plugin's own"));
        }
        self.placement.check().map_err(|(at, why)| OptionError::new(at, why))
    }

    /// Lays `upper` over `self`: maps merged key by key (upper wins), lists appended,
    /// scalars replaced where `upper` sets them.
    pub fn merge(mut self, upper: AgentOptions) -> AgentOptions {
        self.env.extend(upper.env);
        self.mounts.extend(upper.mounts);
        self.labels.extend(upper.labels);
        self.cap_add.extend(upper.cap_add);
        self.cap_drop.extend(upper.cap_drop);
        self.security_opt.extend(upper.security_opt);
        self.devices.extend(upper.devices);
        self.extra_hosts.extend(upper.extra_hosts);
        self.dns.extend(upper.dns);
        self.placement.merge(upper.placement);
        macro_rules! replace {
            ($($field:ident),*) => { $( if upper.$field.is_some() { self.$field = upper.$field; } )* };
        }
        replace!(memory, memory_swap, cpus, pids_limit, shm_size, user, workdir, privileged, read_only_rootfs, init, stop_timeout_secs);
        self
    }

    /// The keys this layer sets, in the JSON's spelling.
    pub fn keys(&self) -> Vec<String> {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The engine features (as `engine-info.features` declares them) an engine must
    /// have to apply these options, given that the drpcli bind, env and labels are what
    /// every engine applies. A WASM engine lacking one is refused the start, by name.
    pub fn features_needed(&self) -> std::collections::BTreeSet<&'static str> {
        let o = self;
        let drpcli_only = o.mounts.iter().all(|m| m.target == crate::agents::DRPCLI_IN_AGENT && m.kind == MountType::Bind && m.read_only);
        let needs = [
            (feature::MOUNTS, !drpcli_only),
            (
                feature::RESOURCES,
                o.memory.is_some() || o.memory_swap.is_some() || o.cpus.is_some() || o.pids_limit.is_some() || o.shm_size.is_some(),
            ),
            (
                feature::SECURITY,
                o.user.is_some()
                    || !o.cap_add.is_empty()
                    || !o.cap_drop.is_empty()
                    || !o.security_opt.is_empty()
                    || !o.devices.is_empty()
                    || o.privileged.is_some()
                    || o.read_only_rootfs.is_some(),
            ),
            (
                feature::PROCESS,
                o.workdir.is_some() || o.init.is_some() || o.stop_timeout_secs.is_some() || !o.extra_hosts.is_empty() || !o.dns.is_empty(),
            ),
        ];
        needs.into_iter().filter(|(_, needed)| *needed).map(|(name, _)| name).collect()
    }

    pub fn is_empty(&self) -> bool {
        self == &AgentOptions::default()
    }
}

impl Mount {
    fn check(&self) -> Result<(), String> {
        if !self.target.starts_with('/') {
            return Err(format!("target '{}' must be an absolute path", self.target));
        }
        if self.target.split('/').any(|part| part == "..") {
            return Err(format!("target '{}' must not contain '..'", self.target));
        }
        match (self.kind, self.source.as_deref()) {
            (MountType::Bind, Some(source)) if source.starts_with('/') && !source.split('/').any(|p| p == "..") => {}
            (MountType::Bind, _) => return Err("a bind mount needs a source that is an absolute host path without '..'".to_string()),
            (MountType::Volume, Some(source)) if volume_name(source) => {}
            (MountType::Volume, _) => {
                return Err("a volume mount needs a source naming the volume ([a-zA-Z0-9][a-zA-Z0-9_.-]*)".to_string());
            }
            (MountType::Tmpfs, None) => {}
            (MountType::Tmpfs, Some(_)) => return Err("a tmpfs mount has no source".to_string()),
        }
        if self.tmpfs_size.is_some() && self.kind != MountType::Tmpfs {
            return Err("tmpfs-size is for tmpfs mounts only".to_string());
        }
        Ok(())
    }

    /// A read-only bind of a host path.
    pub fn bind_read_only(source: &str, target: &str) -> Mount {
        Mount { kind: MountType::Bind, source: Some(source.to_string()), target: target.to_string(), read_only: true, tmpfs_size: None }
    }
}

fn volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_key_decodes_and_sizes_take_units() {
        let options = AgentOptions::from_value(&json!({
            "env": {"A": "1"},
            "mounts": [{"type": "tmpfs", "target": "/scratch", "tmpfs-size": "64m"},
                       {"type": "volume", "source": "cache", "target": "/cache", "read-only": true}],
            "memory": "512m", "memory-swap": -1, "cpus": 0.5, "pids-limit": 100, "shm-size": 1048576,
            "user": "1000:1000", "workdir": "/work", "cap-add": ["NET_ADMIN"], "cap-drop": ["ALL"],
            "security-opt": ["no-new-privileges"], "devices": ["/dev/fuse"], "privileged": false,
            "read-only-rootfs": true, "init": true, "extra-hosts": ["drp:127.0.0.1"], "dns": ["127.0.0.53"],
            "labels": {"team": "infra"}, "stop-timeout-secs": 30
        }))
        .expect("valid options");
        assert_eq!(options.memory, Some(Size(512 * 1024 * 1024)));
        assert_eq!(options.memory_swap.map(SwapSize::bytes), Some(-1));
        assert_eq!(options.mounts[0].tmpfs_size, Some(Size(64 * 1024 * 1024)));
        let round = AgentOptions::from_value(&serde_json::to_value(&options).expect("serializes")).expect("round trip");
        assert_eq!(round, options);
    }

    #[test]
    fn bad_input_names_the_key() {
        let cases = [
            (json!({"memmory": "1g"}), "memmory", "unknown field `memmory`"),
            (json!({"memory": -5}), "memory", "size"),
            (json!({"memory": "12q"}), "memory", "unit"),
            (json!({"cpus": "two"}), "cpus", "invalid type"),
            (json!({"mounts": [{"type": "tmpfs", "target": "scratch"}]}), "mounts[0]", "absolute"),
            (json!({"mounts": [{"type": "bind", "source": "etc", "target": "/etc"}]}), "mounts[0]", "absolute host path"),
            (json!({"mounts": [{"type": "nfs", "target": "/x"}]}), "mounts[0].type", "unknown variant"),
            (json!({"labels": {"drp.machine": "x"}}), "labels.drp.machine", "plugin's own"),
            (json!({"pids-limit": 0}), "pids-limit", "at least 1"),
            (json!([1]), "(top)", "must be an object"),
        ];
        for (value, at, why) in cases {
            let err = AgentOptions::from_value(&value).expect_err(&value.to_string());
            assert_eq!(err.at, at, "{value}: {err}");
            assert!(err.why.contains(why), "{value}: {err}");
        }
        assert!(AgentOptions::from_json("{not json").expect_err("bad json").why.contains("not valid JSON"));
    }

    #[test]
    fn layers_merge_maps_append_lists_and_replace_scalars() {
        let lower = AgentOptions::from_value(&json!({"env": {"A": "1", "B": "1"}, "cap-drop": ["ALL"], "memory": "1g", "user": "1"}))
            .expect("lower");
        let upper = AgentOptions::from_value(&json!({"env": {"B": "2"}, "cap-drop": ["NET_RAW"], "memory": "2g"})).expect("upper");
        let merged = lower.merge(upper);
        assert_eq!(merged.env, BTreeMap::from([("A".into(), "1".into()), ("B".into(), "2".into())]));
        assert_eq!(merged.cap_drop, ["ALL", "NET_RAW"]);
        assert_eq!(merged.memory, Some(Size(2 * 1024 * 1024 * 1024)));
        assert_eq!(merged.user.as_deref(), Some("1"));
    }
}
