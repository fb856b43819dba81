//! The Docker Engine API as plain data: settings, paths, request bodies and the parsing of
//! responses. Nothing here does I/O, so it is unit-tested on the build machine.

use std::collections::BTreeMap;

use context_engines_sdk::http::{encode, encode_path};
use context_engines_sdk::{AgentInfo, AgentSpec, DEFAULT_PATH, DRPCLI_ENTRYPOINT, DRPCLI_IN_AGENT, EngineError, Settings};
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

/// `DELETE /images/{name}?force=1`
pub fn image_remove_path(name: &str) -> String {
    format!("/images/{}?force=1", encode_path(name))
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

/// Grace period for `processjobs` to finish its current step before it is killed.
pub const STOP_GRACE_SECS: u32 = 10;

/// `POST /containers/{name}/stop?t=10`
pub fn container_stop_path(name: &str) -> String {
    format!("/containers/{}/stop?t={STOP_GRACE_SECS}", encode(name))
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

/// The body of `POST /containers/create` for `spec`, running `image` (the name under
/// which the runtime has it). With a drpcli to inject: bind-mounted read-only at
/// `/usr/bin/drpcli`, entrypoint `/usr/bin/drpcli machines processjobs`, no command, and
/// a default `PATH`.
pub fn create_body(spec: &AgentSpec, image: &str) -> Value {
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let labels: Map<String, Value> = spec.labels.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let mut host_config = Map::new();
    host_config.insert("NetworkMode".into(), Value::String(spec.network.clone()));
    let mut body = Map::new();
    body.insert("Image".into(), Value::String(image.to_string()));
    if let Some(drpcli) = &spec.drpcli {
        if spec.env_var("PATH").is_none() {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        host_config.insert("Binds".into(), json!([format!("{drpcli}:{DRPCLI_IN_AGENT}:ro")]));
        body.insert("Entrypoint".into(), json!(DRPCLI_ENTRYPOINT));
        body.insert("Cmd".into(), json!([]));
    }
    host_config.insert("RestartPolicy".into(), json!({ "Name": "unless-stopped" }));
    body.insert("Env".into(), json!(env));
    body.insert("Labels".into(), Value::Object(labels));
    body.insert("HostConfig".into(), Value::Object(host_config));
    Value::Object(body)
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
    #[serde(rename = "Running", default)]
    running: Option<bool>,
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
            running: self.state.and_then(|s| s.running).unwrap_or(false),
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

    fn spec(drpcli: Option<&str>, env: &[(&str, &str)]) -> AgentSpec {
        AgentSpec {
            name: "drp-ctx-1234".into(),
            image: "foo:1".into(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            labels: vec![("drp.machine".into(), "1234".into()), ("drp.image".into(), "foo:1".into())],
            network: "host".into(),
            drpcli: drpcli.map(str::to_string),
        }
    }

    #[test]
    fn create_body_injects_drpcli_like_the_native_engine() {
        let body = create_body(&spec(Some("/srv/drpcli"), &[("RS_UUID", "1234")]), "localhost/foo:1");
        assert_eq!(
            body,
            json!({
                "Image": "localhost/foo:1",
                "Env": ["RS_UUID=1234", format!("PATH={DEFAULT_PATH}")],
                "Labels": {"drp.machine": "1234", "drp.image": "foo:1"},
                "Entrypoint": ["/usr/bin/drpcli", "machines", "processjobs"],
                "Cmd": [],
                "HostConfig": {
                    "NetworkMode": "host",
                    "Binds": ["/srv/drpcli:/usr/bin/drpcli:ro"],
                    "RestartPolicy": {"Name": "unless-stopped"}
                }
            })
        );
        let own_path = create_body(&spec(Some("/srv/drpcli"), &[("PATH", "/x")]), "foo:1");
        assert_eq!(own_path["Env"], json!(["PATH=/x"]));
    }

    #[test]
    fn create_body_without_drpcli_keeps_the_image_entrypoint() {
        let body = create_body(&spec(None, &[("RS_UUID", "1234")]), "foo:1");
        assert_eq!(
            body,
            json!({
                "Image": "foo:1",
                "Env": ["RS_UUID=1234"],
                "Labels": {"drp.machine": "1234", "drp.image": "foo:1"},
                "HostConfig": {"NetworkMode": "host", "RestartPolicy": {"Name": "unless-stopped"}}
            })
        );
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
