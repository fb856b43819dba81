//! The Docker Engine API as plain data: settings, paths, request bodies and the parsing of
//! responses. Nothing here does I/O, so it is unit-tested on the build machine.

use std::collections::BTreeMap;

use context_engines_sdk::http::{encode, encode_path};
use context_engines_sdk::{AgentInfo, AgentSpec, EngineError, Mount, MountKind, Settings};
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The API version used when the settings name none: what Debian's dockerd 20.10 and
/// Podman's compat API both serve.
pub const DEFAULT_API_VERSION: &str = "1.41";

/// What the engine derives from its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `http://host:port` (or `https://`, possibly with a path prefix), without a trailing
    /// `/`.
    pub base_url: String,
    /// `1.41`, without a leading `v`.
    pub api_version: String,
}

impl Config {
    /// Reads `base-url` (required) and `api-version` (default [`DEFAULT_API_VERSION`]).
    pub fn from_settings(settings: &Settings) -> Result<Config, EngineError> {
        let raw = settings.required_string("base-url", "\"http://127.0.0.1:2375\"")?.trim();
        let base_url = normalize_base_url(raw).map_err(|problem| settings.error("base-url", &problem))?;
        let api_version = match settings.get("api-version") {
            None => DEFAULT_API_VERSION.to_string(),
            Some(Value::String(s)) => s.trim().trim_start_matches(['v', 'V']).to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(settings.error("api-version", "must be a string like \"1.41\"")),
        };
        let valid = api_version.split_once('.').is_some_and(|(major, minor)| is_digits(major) && is_digits(minor));
        if !valid {
            return Err(settings.error("api-version", &format!("is {api_version:?}, expected a version like \"1.41\"")));
        }
        Ok(Config { base_url, api_version })
    }

    /// The URL of API path `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/v{}{path}", self.base_url, self.api_version)
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// `tcp://h:p` (Docker's own spelling) becomes `http://h:p`; a trailing `/` goes. Unix
/// sockets are refused: a WebAssembly engine only has outgoing HTTP.
fn normalize_base_url(raw: &str) -> Result<String, String> {
    let (scheme, rest) = raw.split_once("://").ok_or_else(|| format!("is {raw:?}, expected a URL like \"http://127.0.0.1:2375\""))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" | "tcp" => "http",
        "https" => "https",
        "unix" | "npipe" => {
            return Err(format!(
                "is {raw:?}: the docker-api engine reaches the daemon over TCP only (use the native docker engine for a unix socket)"
            ));
        }
        other => {
            return Err(format!("is {raw:?}: scheme {other:?} is not http, https or tcp"));
        }
    };
    let rest = rest.trim_end_matches('/');
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("is {raw:?}: it names no host"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!("is {raw:?}: a base URL has no query or fragment"));
    }
    Ok(format!("{scheme}://{rest}"))
}

/// Whether the reference names a registry (`quay.io/x`, `reg:5000/x`, `localhost/x`).
pub fn has_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| first.contains('.') || first.contains(':') || first == "localhost")
}

/// The names under which the runtime may hold `image`: Podman stores a loaded or tagged
/// `foo/bar:1` as `localhost/foo/bar:1`, and its compat API does not always resolve the
/// short name back; on Docker the second name just is not found.
pub fn candidates(image: &str) -> Vec<String> {
    let mut names = vec![image.to_string()];
    if !has_registry(image) && !image.starts_with("sha256:") {
        names.push(format!("localhost/{image}"));
    }
    names
}

/// Splits `repo[:tag]` as the tag endpoint wants it; a `:` before the last `/` is a
/// registry port, not a tag.
pub fn split_reference(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// `GET /images/{name}/json`
pub fn image_inspect_path(name: &str) -> String {
    format!("/images/{}/json", encode_path(name))
}

/// `POST /images/{source}/tag?repo=…&tag=…`
pub fn image_tag_path(source: &str, target: &str) -> String {
    let (repo, tag) = split_reference(target);
    format!("/images/{}/tag?repo={}&tag={}", encode_path(source), encode(repo), encode(tag))
}

/// `DELETE /images/{name}`, never forced: Podman's forced removal takes the image's
/// containers with it, running agents included. Unforced, the daemon refuses (409) to
/// remove the last name of an image a container uses.
pub fn image_remove_path(name: &str) -> String {
    format!("/images/{}", encode_path(name))
}

/// `POST /images/load?quiet=1`
pub const IMAGE_LOAD_PATH: &str = "/images/load?quiet=1";

/// `GET /containers/{name}/json`
pub fn container_inspect_path(name: &str) -> String {
    format!("/containers/{}/json", encode(name))
}

/// `POST /containers/create?name=…`
pub fn container_create_path(name: &str) -> String {
    format!("/containers/create?name={}", encode(name))
}

/// `POST /containers/{id}/start`
pub fn container_start_path(id: &str) -> String {
    format!("/containers/{}/start", encode(id))
}

/// `POST /containers/{name}/stop`, without `t`: the daemon waits the agent's own stop
/// timeout (`stop-timeout-secs`, else 10 s) before it kills.
pub fn container_stop_path(name: &str) -> String {
    format!("/containers/{}/stop", encode(name))
}

/// `DELETE /containers/{id}?force=1`
pub fn container_remove_path(id: &str) -> String {
    format!("/containers/{}?force=1", encode(id))
}

/// `GET /containers/json?all=1&filters={"label":["k=v",…]}`
pub fn container_list_path(labels: &[(String, String)]) -> String {
    let filters: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let filters = json!({ "label": filters }).to_string();
    format!("/containers/json?all=1&filters={}", encode(&filters))
}

/// `GET /containers/{name}/logs?stdout=1&stderr=1&timestamps=1&tail=N`
pub fn container_logs_path(name: &str, lines: u32) -> String {
    format!("/containers/{}/logs?stdout=1&stderr=1&timestamps=1&tail={lines}", encode(name))
}

/// The body of `POST /containers/create` for `spec`, running `image` (the name under
/// which the runtime has it). A translation only, field for field as the host's native
/// engines build it (`host/src/engines/container_spec.rs`): every decision (env, mounts,
/// the drpcli entrypoint) was the host's. Unset options are left out, so the runtime's
/// defaults apply.
pub fn create_body(spec: &AgentSpec, image: &str) -> Value {
    let mut body = Map::new();
    body.insert("Image".into(), json!(image));
    body.insert("Env".into(), json!(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()));
    let labels: BTreeMap<&str, &str> = spec.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    body.insert("Labels".into(), json!(labels));
    if let Some(entrypoint) = &spec.entrypoint {
        body.insert("Entrypoint".into(), json!(entrypoint));
        // A replaced entrypoint runs without the image's command.
        body.insert("Cmd".into(), json!([]));
    }
    insert_some(&mut body, "User", spec.security.user.as_ref());
    insert_some(&mut body, "WorkingDir", spec.process.workdir.as_ref());
    insert_some(&mut body, "StopTimeout", spec.process.stop_timeout_secs);
    body.insert("HostConfig".into(), Value::Object(host_config(spec)));
    Value::Object(body)
}

/// `HostConfig`: network, mounts, resources, security and the restart policy.
fn host_config(spec: &AgentSpec) -> Map<String, Value> {
    let (r, sec, p) = (&spec.resources, &spec.security, &spec.process);
    let mut host = Map::new();
    host.insert("NetworkMode".into(), json!(spec.network));
    if !spec.mounts.is_empty() {
        host.insert("Mounts".into(), Value::Array(spec.mounts.iter().map(mount).collect()));
    }
    insert_some(&mut host, "Memory", r.memory);
    insert_some(&mut host, "MemorySwap", r.memory_swap);
    // Whole nano-CPUs: 0.5 CPU is 500,000,000.
    insert_some(&mut host, "NanoCpus", r.cpus.map(|c| (c * 1e9).round() as i64));
    insert_some(&mut host, "PidsLimit", r.pids_limit);
    insert_some(&mut host, "ShmSize", r.shm_size);
    insert_some(&mut host, "Privileged", sec.privileged);
    insert_list(&mut host, "CapAdd", &sec.cap_add);
    insert_list(&mut host, "CapDrop", &sec.cap_drop);
    insert_list(&mut host, "SecurityOpt", &sec.security_opt);
    if !sec.devices.is_empty() {
        host.insert("Devices".into(), Value::Array(sec.devices.iter().map(|d| device(d)).collect()));
    }
    insert_some(&mut host, "ReadonlyRootfs", sec.read_only_rootfs);
    insert_some(&mut host, "Init", p.init);
    insert_list(&mut host, "ExtraHosts", &p.extra_hosts);
    insert_list(&mut host, "Dns", &p.dns);
    host.insert("RestartPolicy".into(), json!({ "Name": "unless-stopped" }));
    host
}

fn insert_some(map: &mut Map<String, Value>, key: &str, value: Option<impl serde::Serialize>) {
    if let Some(value) = value {
        map.insert(key.into(), json!(value));
    }
}

fn insert_list(map: &mut Map<String, Value>, key: &str, items: &[String]) {
    if !items.is_empty() {
        map.insert(key.into(), json!(items));
    }
}

/// One entry of `HostConfig.Mounts`.
fn mount(m: &Mount) -> Value {
    let mut out = Map::new();
    out.insert("Target".into(), json!(m.target));
    insert_some(&mut out, "Source", m.source.as_ref());
    let kind = match m.kind {
        MountKind::Bind => "bind",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    };
    out.insert("Type".into(), json!(kind));
    if m.read_only {
        out.insert("ReadOnly".into(), json!(true));
    }
    if let Some(size) = m.tmpfs_size {
        out.insert("TmpfsOptions".into(), json!({ "SizeBytes": size }));
    }
    Value::Object(out)
}

/// `host[:container[:permissions]]`, as `docker run --device` splits it.
fn device(text: &str) -> Value {
    let mut parts = text.splitn(3, ':');
    let host = parts.next().unwrap_or_default();
    let container = parts.next().filter(|p| !p.is_empty()).unwrap_or(host);
    let permissions = parts.next().filter(|p| !p.is_empty()).unwrap_or("rwm");
    json!({ "PathOnHost": host, "PathInContainer": container, "CgroupPermissions": permissions })
}

/// The lines of a `GET /containers/{name}/logs` body, at most the last `lines`. Without a
/// TTY the daemon multiplexes stdout and stderr into frames of an 8-byte header (stream
/// type, three zero bytes, a big-endian length) and a payload; a TTY's output (or a
/// daemon that does not frame) is the raw text.
pub fn log_lines(body: &[u8], lines: u32) -> Vec<String> {
    let text = demultiplex(body).unwrap_or_else(|| body.to_vec());
    let text = String::from_utf8_lossy(&text);
    let all: Vec<String> = text.lines().map(str::to_string).collect();
    let keep = usize::try_from(lines).unwrap_or(usize::MAX).min(all.len());
    all[all.len() - keep..].to_vec()
}

/// The payloads of a framed body in order, or `None` when it is not framed.
fn demultiplex(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    while !body.is_empty() {
        let header = body.get(..8)?;
        if header[0] > 2 || header[1..4] != [0, 0, 0] {
            return None;
        }
        let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let payload = body.get(8..8usize.checked_add(len)?)?;
        out.extend_from_slice(payload);
        body = &body[8 + len..];
    }
    Some(out)
}

/// `GET /images/{name}/json`, the part used.
#[derive(Debug, Deserialize)]
pub struct ImageInspect {
    /// The image id (`sha256:…`).
    #[serde(rename = "Id")]
    pub id: String,
}

/// `GET /containers/{name}/json`, the parts used.
#[derive(Debug, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "State", default)]
    state: Option<ContainerState>,
    #[serde(rename = "Config", default)]
    config: Option<ContainerConfig>,
}

#[derive(Debug, Deserialize)]
struct ContainerState {
    /// `running`, `restarting`, `paused`, `exited`, …: Docker's `Running` flag stays true
    /// while a container is paused or waits out its restart delay, and such an agent must
    /// be replaced, not kept (the listing says the same).
    #[serde(rename = "Status", default)]
    status: String,
}

#[derive(Debug, Deserialize)]
struct ContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
}

impl ContainerInspect {
    /// The agent `name` as this inspection shows it.
    pub fn into_agent(self, name: &str) -> AgentInfo {
        AgentInfo {
            name: name.to_string(),
            id: self.id,
            running: self.state.is_some_and(|s| s.status == "running"),
            labels: self.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect(),
        }
    }
}

/// `POST /containers/create`'s answer.
#[derive(Debug, Deserialize)]
pub struct Created {
    /// The new container's id.
    #[serde(rename = "Id")]
    pub id: String,
}

/// One entry of `GET /containers/json`. `State` is a plain string: Podman's compat API
/// reports libpod states (`stopped`, `configured`, …) besides Docker's.
#[derive(Debug, Deserialize)]
pub struct ContainerSummary {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Labels", default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "State", default)]
    state: Option<String>,
}

impl ContainerSummary {
    /// The agent this entry is.
    pub fn into_agent(self) -> AgentInfo {
        AgentInfo {
            name: self.names.and_then(|n| n.into_iter().next()).map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default(),
            id: self.id,
            running: self.state.as_deref() == Some("running"),
            labels: self.labels.unwrap_or_default().into_iter().collect(),
        }
    }
}

/// What `POST /images/load` said: the first image it reports loading, or the error in
/// its message stream.
#[derive(Debug, PartialEq, Eq)]
pub enum LoadOutcome {
    /// The name (or id) of the first image loaded.
    Loaded(String),
    /// The daemon's error.
    Error(String),
    /// Nothing recognizable.
    Nothing,
}

/// Parses the body of `POST /images/load`: a stream of JSON messages
/// (`{"stream":"Loaded image: X\n"}`, `{"errorDetail":{"message":…},"error":…}`), or
/// plain text from a daemon that did not answer in JSON.
pub fn parse_load_output(body: &[u8]) -> LoadOutcome {
    let mut loaded = None;
    let mut messages = serde_json::Deserializer::from_slice(body).into_iter::<Value>();
    let mut parsed_any = false;
    for message in messages.by_ref() {
        let Ok(message) = message else { break };
        parsed_any = true;
        let error =
            message.pointer("/errorDetail/message").and_then(Value::as_str).or_else(|| message.get("error").and_then(Value::as_str));
        if let Some(error) = error.filter(|e| !e.is_empty()) {
            return LoadOutcome::Error(error.trim().to_string());
        }
        let said =
            message.get("stream").and_then(Value::as_str).or_else(|| message.get("status").and_then(Value::as_str)).unwrap_or_default();
        if loaded.is_none() {
            loaded = loaded_reference(said);
        }
    }
    if !parsed_any {
        loaded = String::from_utf8_lossy(body).lines().find_map(loaded_reference);
    }
    loaded.map_or(LoadOutcome::Nothing, LoadOutcome::Loaded)
}

/// `docker load` reports what it loaded as `Loaded image: X` or `Loaded image ID: X`
/// (Podman: `Loaded image(s): X,Y`).
pub fn loaded_reference(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("Loaded image")?;
    let (_, names) = rest.split_once(':')?;
    names.split(',').map(str::trim).find(|s| !s.is_empty()).map(str::to_string)
}

/// The daemon's explanation in an error response: its JSON `message` (Docker and Podman
/// both send one), else the body as text, shortened.
pub fn error_message(body: &[u8]) -> String {
    let from_json = serde_json::from_slice::<Value>(body).ok().and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string));
    let text = from_json.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let text = text.trim();
    const MAX: usize = 500;
    if text.len() > MAX {
        let mut end = MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &text[..end])
    } else {
        text.to_string()
    }
}

/// `path` without its query, for messages.
pub fn path_only(path: &str) -> &str {
    path.split('?').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Settings {
        Settings::parse("docker-api", json).unwrap()
    }

    #[test]
    fn settings_need_a_tcp_base_url_and_default_the_api_version() {
        let c = Config::from_settings(&settings(r#"{"base-url":"http://127.0.0.1:2375/","allowed-hosts":["127.0.0.1:2375"]}"#)).unwrap();
        assert_eq!(c, Config { base_url: "http://127.0.0.1:2375".into(), api_version: "1.41".into() });
        assert_eq!(c.url("/images/json"), "http://127.0.0.1:2375/v1.41/images/json");
        let c = Config::from_settings(&settings(r#"{"base-url":"tcp://h:2376","api-version":"v1.43"}"#)).unwrap();
        assert_eq!(c, Config { base_url: "http://h:2376".into(), api_version: "1.43".into() });

        let missing = Config::from_settings(&settings("{}")).unwrap_err();
        assert!(matches!(&missing, EngineError::BadConfig(m) if m.contains("`base-url` is missing")), "{missing}");
        let unix = Config::from_settings(&settings(r#"{"base-url":"unix:///var/run/docker.sock"}"#)).unwrap_err();
        assert!(matches!(&unix, EngineError::BadConfig(m) if m.contains("TCP only")), "{unix}");
        let version = Config::from_settings(&settings(r#"{"base-url":"http://h:1","api-version":"latest"}"#)).unwrap_err();
        assert!(matches!(&version, EngineError::BadConfig(m) if m.contains("`api-version`")), "{version}");
        assert!(Config::from_settings(&settings(r#"{"base-url":"127.0.0.1:2375"}"#)).is_err());
    }

    #[test]
    fn references_split_at_the_tag_not_the_registry_port() {
        assert_eq!(split_reference("foo/bar:1"), ("foo/bar", "1"));
        assert_eq!(split_reference("foo/bar"), ("foo/bar", "latest"));
        assert_eq!(split_reference("reg:5000/foo"), ("reg:5000/foo", "latest"));
        assert_eq!(split_reference("reg:5000/foo:2"), ("reg:5000/foo", "2"));
        assert_eq!(image_tag_path("sha256:abc", "reg:5000/foo:2"), "/images/sha256:abc/tag?repo=reg%3A5000%2Ffoo&tag=2");
    }

    #[test]
    fn short_names_are_also_looked_for_under_localhost() {
        assert_eq!(candidates("foo/bar:1"), ["foo/bar:1", "localhost/foo/bar:1"]);
        assert_eq!(candidates("alpine"), ["alpine", "localhost/alpine"]);
        assert_eq!(candidates("quay.io/x:1"), ["quay.io/x:1"]);
        assert_eq!(candidates("localhost/x:1"), ["localhost/x:1"]);
        assert_eq!(candidates("sha256:abc"), ["sha256:abc"]);
        assert_eq!(image_inspect_path("localhost/foo/bar:1"), "/images/localhost/foo/bar:1/json");
    }

    #[test]
    fn load_reports_are_parsed_for_docker_and_podman() {
        assert_eq!(loaded_reference("Loaded image: foo:1\n").as_deref(), Some("foo:1"));
        assert_eq!(loaded_reference("Loaded image ID: sha256:abc\n").as_deref(), Some("sha256:abc"));
        assert_eq!(loaded_reference("Loaded image(s): localhost/foo:1,localhost/bar:2").as_deref(), Some("localhost/foo:1"));
        assert_eq!(loaded_reference("Loading layer 1/3"), None);

        let docker = b"{\"stream\":\"Loaded image: foo:1\\n\"}\r\n";
        assert_eq!(parse_load_output(docker), LoadOutcome::Loaded("foo:1".into()));
        let podman = br#"{"stream":"Loaded image: localhost/foo:1,localhost/foo:2"}"#;
        assert_eq!(parse_load_output(podman), LoadOutcome::Loaded("localhost/foo:1".into()));
        let by_id = b"{\"stream\":\"Loaded image ID: sha256:abc\\n\"}\n{\"stream\":\"Loaded image ID: sha256:def\\n\"}\n";
        assert_eq!(parse_load_output(by_id), LoadOutcome::Loaded("sha256:abc".into()));
        let failed = br#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#;
        assert_eq!(parse_load_output(failed), LoadOutcome::Error("unexpected EOF".into()));
        assert_eq!(parse_load_output(br#"{"error":"bad"}"#), LoadOutcome::Error("bad".into()));
        assert_eq!(parse_load_output(b"Loaded image: plain:1\n"), LoadOutcome::Loaded("plain:1".into()));
        assert_eq!(parse_load_output(b""), LoadOutcome::Nothing);
    }

    fn spec() -> AgentSpec {
        let mut spec = AgentSpec::new("drp-ctx-1234", "foo:1", "host");
        spec.env = vec![("RS_UUID".into(), "1234".into()), ("PATH".into(), "/bin".into())];
        spec.labels = vec![("drp.machine".into(), "1234".into()), ("drp.spec".into(), "abc".into())];
        spec
    }

    #[test]
    fn create_body_of_a_bare_spec_keeps_the_image_entrypoint_and_adds_nothing() {
        assert_eq!(
            create_body(&spec(), "localhost/foo:1"),
            json!({
                "Image": "localhost/foo:1",
                "Env": ["RS_UUID=1234", "PATH=/bin"],
                "Labels": {"drp.machine": "1234", "drp.spec": "abc"},
                "HostConfig": {"NetworkMode": "host", "RestartPolicy": {"Name": "unless-stopped"}}
            })
        );
    }

    #[test]
    fn create_body_translates_every_field_like_the_native_engines() {
        let mut s = spec();
        s.entrypoint = Some(vec!["/usr/bin/drpcli".into(), "machines".into(), "processjobs".into()]);
        s.mounts = vec![
            Mount {
                kind: MountKind::Bind,
                source: Some("/srv/drpcli".into()),
                target: "/usr/bin/drpcli".into(),
                read_only: true,
                tmpfs_size: None,
            },
            Mount { kind: MountKind::Volume, source: Some("cache".into()), target: "/cache".into(), read_only: false, tmpfs_size: None },
            Mount { kind: MountKind::Tmpfs, source: None, target: "/scratch".into(), read_only: false, tmpfs_size: Some(1 << 20) },
        ];
        s.resources.memory = Some(64 << 20);
        s.resources.memory_swap = Some(-1);
        s.resources.cpus = Some(0.5);
        s.resources.pids_limit = Some(100);
        s.resources.shm_size = Some(1 << 20);
        s.security.user = Some("1000:1000".into());
        s.security.cap_add = vec!["NET_ADMIN".into()];
        s.security.cap_drop = vec!["ALL".into()];
        s.security.security_opt = vec!["no-new-privileges".into()];
        s.security.devices = vec!["/dev/fuse".into(), "/dev/sda:/dev/xvda:r".into()];
        s.security.privileged = Some(false);
        s.security.read_only_rootfs = Some(true);
        s.process.workdir = Some("/work".into());
        s.process.init = Some(true);
        s.process.stop_timeout_secs = Some(30);
        s.process.extra_hosts = vec!["drp:127.0.0.1".into()];
        s.process.dns = vec!["127.0.0.53".into()];
        assert_eq!(
            create_body(&s, "foo:1"),
            json!({
                "Image": "foo:1",
                "Env": ["RS_UUID=1234", "PATH=/bin"],
                "Labels": {"drp.machine": "1234", "drp.spec": "abc"},
                "Entrypoint": ["/usr/bin/drpcli", "machines", "processjobs"],
                "Cmd": [],
                "User": "1000:1000",
                "WorkingDir": "/work",
                "StopTimeout": 30,
                "HostConfig": {
                    "NetworkMode": "host",
                    "Mounts": [
                        {"Target": "/usr/bin/drpcli", "Source": "/srv/drpcli", "Type": "bind", "ReadOnly": true},
                        {"Target": "/cache", "Source": "cache", "Type": "volume"},
                        {"Target": "/scratch", "Type": "tmpfs", "TmpfsOptions": {"SizeBytes": 1048576}}
                    ],
                    "Memory": 67108864,
                    "MemorySwap": -1,
                    "NanoCpus": 500000000,
                    "PidsLimit": 100,
                    "ShmSize": 1048576,
                    "Privileged": false,
                    "CapAdd": ["NET_ADMIN"],
                    "CapDrop": ["ALL"],
                    "SecurityOpt": ["no-new-privileges"],
                    "Devices": [
                        {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"},
                        {"PathOnHost": "/dev/sda", "PathInContainer": "/dev/xvda", "CgroupPermissions": "r"}
                    ],
                    "ReadonlyRootfs": true,
                    "Init": true,
                    "ExtraHosts": ["drp:127.0.0.1"],
                    "Dns": ["127.0.0.53"],
                    "RestartPolicy": {"Name": "unless-stopped"}
                }
            })
        );
    }

    #[test]
    fn logs_are_demultiplexed_and_tailed() {
        let frame = |stream: u8, text: &str| {
            let mut f = vec![stream, 0, 0, 0];
            f.extend_from_slice(&(text.len() as u32).to_be_bytes());
            f.extend_from_slice(text.as_bytes());
            f
        };
        let body = [frame(1, "one\ntw"), frame(2, "o\nthree\n"), frame(1, "four\n")].concat();
        assert_eq!(log_lines(&body, 10), ["one", "two", "three", "four"]);
        assert_eq!(log_lines(&body, 2), ["three", "four"]);
        assert_eq!(log_lines(&body, 0), Vec::<String>::new());
        // A TTY's output is not framed.
        assert_eq!(log_lines(b"plain\nlines\n", 5), ["plain", "lines"]);
        assert!(log_lines(b"", 5).is_empty());
        assert_eq!(container_logs_path("drp-c-1", 50), "/containers/drp-c-1/logs?stdout=1&stderr=1&timestamps=1&tail=50");
    }

    #[test]
    fn listing_filters_by_label_and_tolerates_any_state() {
        let labels = vec![("drp.plugin".to_string(), "context-engines".to_string())];
        assert_eq!(
            container_list_path(&labels),
            "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22drp.plugin%3Dcontext-engines%22%5D%7D"
        );
        let body = br#"[
            {"Id":"a","Names":["/drp-c-1"],"Labels":{"drp.machine":"1"},"State":"running"},
            {"Id":"b","Names":["/drp-c-2"],"Labels":null,"State":"stopped"},
            {"Id":"c"}
        ]"#;
        let agents: Vec<AgentInfo> =
            serde_json::from_slice::<Vec<ContainerSummary>>(body).unwrap().into_iter().map(ContainerSummary::into_agent).collect();
        assert_eq!(agents[0].name, "drp-c-1");
        assert!(agents[0].running);
        assert_eq!(agents[0].label("drp.machine"), Some("1"));
        assert!(!agents[1].running);
        assert!(agents[1].labels.is_empty());
        assert_eq!(agents[2].name, "");
    }

    #[test]
    fn inspections_become_agents() {
        let body = br#"{"Id":"abc","State":{"Running":true,"Status":"running"},"Config":{"Image":"foo:1","Labels":{"drp.image":"foo:1"}}}"#;
        let agent = serde_json::from_slice::<ContainerInspect>(body).unwrap().into_agent("drp-c-1");
        assert_eq!(agent.id, "abc");
        assert!(agent.running);
        assert_eq!(agent.label("drp.image"), Some("foo:1"));
    }

    #[test]
    fn error_messages_come_from_the_json_message() {
        assert_eq!(error_message(br#"{"message":"Conflict. The name is in use"}"#), "Conflict. The name is in use");
        assert_eq!(error_message(br#"{"cause":"x","message":"no such image","response":404}"#), "no such image");
        assert_eq!(error_message(b"page not found\n"), "page not found");
        assert_eq!(error_message(&[b'x'; 600]).chars().count(), 501);
        assert_eq!(path_only("/containers/create?name=x"), "/containers/create");
    }
}
