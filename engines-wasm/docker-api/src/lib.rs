//! The `docker-api` engine: agents are containers of a Docker daemon (or Podman's
//! Docker-compatible API) reached over TCP through the Docker Engine HTTP API. It behaves
//! like the host's native `docker` engine, which speaks the same API over a unix socket.
//!
//! Settings (the engine's entry of `context-engines/engine-config`):
//!
//! ```json
//! {"base-url": "http://127.0.0.1:2375", "api-version": "1.41", "allowed-hosts": ["127.0.0.1:2375"]}
//! ```
//!
//! * `base-url` (required): `http://host:port` (`tcp://host:port` is taken as `http`;
//!   `https://` works when the host's TLS trusts the daemon).
//! * `api-version` (default `1.41`, served by dockerd 20.10+ and Podman 4+): requests go
//!   to `{base-url}/v{api-version}/…`.
//! * `allowed-hosts`: read by the host, which lets the engine reach only those; it must
//!   list the `host:port` of `base-url`.

mod api;

use std::time::Duration;

use context_engines_sdk::http::{HttpError, Method, Request, Response};
use context_engines_sdk::{
    self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, PLUGIN_LABEL, Result, SPEC_LABEL, Settings, feature,
};

use api::{Config, LoadOutcome};

const NAME: &str = "docker-api";
/// A daemon that does not accept a connection in this time is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine: where the daemon is.
struct DockerApi {
    config: Config,
}

/// What a request sends.
enum Payload {
    None,
    Json(serde_json::Value),
    Archive(Archive),
}

impl DockerApi {
    /// `docker-api at http://…: METHOD /path: ` — the start of every message.
    fn context(&self, method: &Method, path: &str) -> String {
        format!("{NAME} at {}: {method} {}", self.config.base_url, api::path_only(path))
    }

    /// Sends one API request; a response of any status is returned, a transport failure
    /// is an error.
    fn call(&self, method: Method, path: &str, payload: Payload) -> Result<Response> {
        let url = self.config.url(path);
        let mut request = Request::new(method.clone(), url.as_str()).connect_timeout(CONNECT_TIMEOUT);
        request = match payload {
            Payload::None => request,
            Payload::Json(body) => request.json(&body),
            Payload::Archive(archive) => request.header("content-type", "application/x-tar").stream_body(archive),
        };
        request.send().map_err(|e| {
            let context = self.context(&method, path);
            // The SDK's message starts with the method and full URL; ours says it shorter.
            let prefix = format!("{method} {url}: ");
            let cause = e.message().strip_prefix(prefix.as_str()).unwrap_or(e.message());
            match e {
                HttpError::Transport(_) => EngineError::Unreachable(format!("{context}: {cause}")),
                HttpError::Denied(_) => {
                    EngineError::BadConfig(format!("{context}: {cause}: add the daemon's host:port to `allowed-hosts`"))
                }
                HttpError::Invalid(_) | HttpError::Body(_) | HttpError::Decode(_) => EngineError::Failed(format!("{context}: {cause}")),
            }
        })
    }

    /// The error an unexpected status means: 4xx the daemon refused (`rejected`), the
    /// rest is its failure (`failed`).
    fn status_error(&self, method: &Method, path: &str, response: &Response) -> EngineError {
        let message = format!("{}: {}: {}", self.context(method, path), response.status_line(), api::error_message(response.body()));
        if (400..500).contains(&response.status()) { EngineError::Rejected(message) } else { EngineError::Failed(message) }
    }

    /// Parses a successful response's JSON body.
    fn parse<T: serde::de::DeserializeOwned>(&self, method: &Method, path: &str, response: &Response) -> Result<T> {
        response.json().map_err(|e| EngineError::Failed(format!("{}: {e}", self.context(method, path))))
    }

    /// The image's inspection under the first of its candidate names the daemon has.
    fn find_image(&self, image: &str) -> Result<Option<(String, api::ImageInspect)>> {
        for candidate in api::candidates(image) {
            let path = api::image_inspect_path(&candidate);
            let response = self.call(Method::GET, &path, Payload::None)?;
            match response.status() {
                200 => {
                    return Ok(Some((candidate, self.parse(&Method::GET, &path, &response)?)));
                }
                404 => continue,
                _ => return Err(self.status_error(&Method::GET, &path, &response)),
            }
        }
        Ok(None)
    }

    /// The agent named `name`, if the daemon has a container of that name.
    fn inspect_agent(&self, name: &str) -> Result<Option<AgentInfo>> {
        let path = api::container_inspect_path(name);
        let response = self.call(Method::GET, &path, Payload::None)?;
        match response.status() {
            200 => Ok(Some(self.parse::<api::ContainerInspect>(&Method::GET, &path, &response)?.into_agent(name))),
            404 => Ok(None),
            _ => Err(self.status_error(&Method::GET, &path, &response)),
        }
    }

    /// Force-removes a container: true when removed (or removal already under way),
    /// false when there was none.
    fn remove_container(&self, id: &str) -> Result<bool> {
        let path = api::container_remove_path(id);
        let response = self.call(Method::DELETE, &path, Payload::None)?;
        match response.status() {
            200..=299 => Ok(true),
            404 => Ok(false),
            // Removal already in progress (a concurrent stop): the outcome is the same.
            409 => Ok(true),
            _ => Err(self.status_error(&Method::DELETE, &path, &response)),
        }
    }

    /// Creates and starts the agent from `image`, the name the daemon has it under.
    fn create_and_start(&self, spec: AgentSpec, image: &str) -> Result<AgentInfo> {
        let path = api::container_create_path(&spec.name);
        let response = self.call(Method::POST, &path, Payload::Json(api::create_body(&spec, image)))?;
        let created: api::Created = match response.status() {
            200..=299 => self.parse(&Method::POST, &path, &response)?,
            404 => {
                return Err(EngineError::ImageMissing(format!(
                    "{}: {}: {}",
                    self.context(&Method::POST, &path),
                    response.status_line(),
                    api::error_message(response.body())
                )));
            }
            _ => return Err(self.status_error(&Method::POST, &path, &response)),
        };

        let path = api::container_start_path(&created.id);
        let response = self.call(Method::POST, &path, Payload::None)?;
        // 304: already started.
        if !(response.is_success() || response.status() == 304) {
            let error = self.status_error(&Method::POST, &path, &response);
            // A created-but-unstartable container would block the name forever.
            let _ = self.remove_container(&created.id);
            return Err(error);
        }
        sdk::debug!("started agent {} from {image}", spec.name);
        Ok(AgentInfo { name: spec.name, id: created.id, running: true, labels: spec.labels })
    }
}

impl Engine for DockerApi {
    fn describe() -> EngineInfo {
        let info = EngineInfo::new(NAME, env!("CARGO_PKG_VERSION"));
        // It applies the whole spec, as the native engines do.
        let applied = [feature::MOUNTS, feature::RESOURCES, feature::SECURITY, feature::PROCESS, feature::LOGS];
        let info = applied.into_iter().fold(info, EngineInfo::feature);
        info.feature("docker-engine-api").feature("podman-compat").feature("streamed-load")
    }

    fn configure(settings: &Settings) -> Result<Self> {
        Ok(DockerApi { config: Config::from_settings(settings)? })
    }

    fn image_id(&mut self, image: &str) -> Result<Option<String>> {
        Ok(self.find_image(image)?.map(|(_, found)| found.id))
    }

    fn image_load(&mut self, image: &str, archive: Archive) -> Result<()> {
        let path = api::IMAGE_LOAD_PATH;
        let response = self.call(Method::POST, path, Payload::Archive(archive))?;
        let context = self.context(&Method::POST, path);
        if !response.is_success() {
            return Err(EngineError::BadArchive(format!("{context}: {}: {}", response.status_line(), api::error_message(response.body()))));
        }
        let loaded = match api::parse_load_output(response.body()) {
            LoadOutcome::Loaded(loaded) => loaded,
            LoadOutcome::Error(error) => {
                return Err(EngineError::BadArchive(format!("{context}: {error}")));
            }
            LoadOutcome::Nothing => {
                return Err(EngineError::BadArchive(format!("{context}: the daemon accepted the archive but reported no image in it")));
            }
        };
        sdk::info!("loaded {loaded}, tagging it {image}");
        self.image_tag(&loaded, image)
    }

    fn image_tag(&mut self, source: &str, target: &str) -> Result<()> {
        let mut refused = None;
        for candidate in api::candidates(source) {
            let path = api::image_tag_path(&candidate, target);
            let response = self.call(Method::POST, &path, Payload::None)?;
            match response.status() {
                200..=299 => return Ok(()),
                // Keep the first refusal: it names the image as the caller did.
                404 => {
                    if refused.is_none() {
                        refused = Some((path, response));
                    }
                }
                _ => return Err(self.status_error(&Method::POST, &path, &response)),
            }
        }
        let detail = refused
            .map(|(path, response)| {
                format!("{}: {}: {}", self.context(&Method::POST, &path), response.status_line(), api::error_message(response.body()))
            })
            .unwrap_or_default();
        Err(EngineError::ImageMissing(detail))
    }

    fn image_remove(&mut self, image: &str) -> Result<bool> {
        for candidate in api::candidates(image) {
            let path = api::image_remove_path(&candidate);
            let response = self.call(Method::DELETE, &path, Payload::None)?;
            match response.status() {
                200..=299 => return Ok(true),
                404 => continue,
                _ => return Err(self.status_error(&Method::DELETE, &path, &response)),
            }
        }
        Ok(false)
    }

    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
        // The image first: a start that cannot happen must leave the running agent alone.
        let Some((image, _)) = self.find_image(&spec.image)? else {
            return Err(EngineError::ImageMissing(format!("{} (not on the daemon at {})", spec.image, self.config.base_url)));
        };
        if let Some(existing) = self.inspect_agent(&spec.name)? {
            // Two plugin instances never touch each other's agents, nor anything else
            // that happens to hold the name.
            let owner = existing.label(PLUGIN_LABEL);
            if owner != spec.label(PLUGIN_LABEL) {
                return Err(EngineError::Rejected(match owner {
                    Some(owner) => format!("container name '{}' is held by an agent of plugin '{owner}', which is left alone", spec.name),
                    None => format!(
                        "container name '{}' is held by a container no plugin owns (no drp.plugin label), which is left alone",
                        spec.name
                    ),
                }));
            }
            if existing.running && existing.label(SPEC_LABEL) == spec.label(SPEC_LABEL) {
                return Ok(existing);
            }
            // Stopped, or another spec: replace, so exactly one agent remains.
            sdk::debug!("replacing agent {} ({})", spec.name, if existing.running { "another spec" } else { "not running" });
            self.remove_container(&existing.id)?;
        }
        self.create_and_start(spec, &image)
    }

    fn agent_stop(&mut self, name: &str) -> Result<bool> {
        let path = api::container_stop_path(name);
        let response = self.call(Method::POST, &path, Payload::None)?;
        if response.status() == 404 {
            return Ok(false);
        }
        // 204 stopped, 304 already stopped, anything else: the forced removal settles it.
        self.remove_container(name)
    }

    fn agent_list(&mut self, labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        let path = api::container_list_path(labels);
        let response = self.call(Method::GET, &path, Payload::None)?;
        if !response.is_success() {
            return Err(self.status_error(&Method::GET, &path, &response));
        }
        let found: Vec<api::ContainerSummary> = self.parse(&Method::GET, &path, &response)?;
        Ok(found.into_iter().map(api::ContainerSummary::into_agent).collect())
    }

    fn agent_logs(&mut self, name: &str, lines: u32) -> Result<Vec<String>> {
        let path = api::container_logs_path(name, lines);
        let response = self.call(Method::GET, &path, Payload::None)?;
        match response.status() {
            200..=299 => Ok(api::log_lines(response.body(), lines)),
            404 => Err(EngineError::Rejected(format!("{}: no agent named {name}", self.context(&Method::GET, &path)))),
            _ => Err(self.status_error(&Method::GET, &path, &response)),
        }
    }
}

sdk::export_engine!(DockerApi);
