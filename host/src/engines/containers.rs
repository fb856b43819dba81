//! Reading containers (list and inspect) over the Engine API with a tolerant model.
//! Podman's compat API reports libpod states (`stopped`, `configured`, …) that bollard's
//! typed `ContainerSummaryStateEnum` and `ContainerStateStatusEnum` reject, which would
//! fail a listing whenever one agent is mid-stop, and every look at an agent that has
//! exited; here the state is a plain string.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Why a read failed, sorted as the engine reports it.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No connection (refused, reset, no socket).
    #[error("{0}")]
    Unreachable(String),
    /// The runtime refused the request (4xx).
    #[error("{0}")]
    Refused(String),
    /// The runtime failed (5xx) or answered something else than the API's shape.
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Deserialize)]
pub struct Summary {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Names", default)]
    pub names: Option<Vec<String>>,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "State", default)]
    pub state: String,
}

/// `GET /containers/{name}/json`, the parts the engine reads.
#[derive(Debug, Deserialize)]
pub struct Inspect {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "State", default)]
    pub state: Option<State>,
    #[serde(rename = "Config", default)]
    pub config: Option<Config>,
}

#[derive(Debug, Deserialize)]
pub struct State {
    /// `running`, `restarting`, `paused`, `exited`, … (Podman adds `stopped` and more).
    #[serde(rename = "Status", default)]
    pub status: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Config {
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Image", default)]
    pub image: Option<String>,
}

impl Inspect {
    /// Running now, as the listing says it: Docker's `Running` flag stays true while a
    /// container is paused or waits out its restart delay, and such an agent must be
    /// replaced, not kept.
    pub fn running(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.status == "running")
    }
}

/// `GET /v{api}/containers/json?all=1&filters=…` on a `unix://` or `tcp://` host.
pub async fn list(host: &str, api_version: &str, labels: &[(&str, &str)]) -> Result<Vec<Summary>, ReadError> {
    let label_filters: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let filters = serde_json::json!({ "label": label_filters }).to_string();
    let query: String = url_encode(&filters);
    let body = get_path(host, &format!("/v{api_version}/containers/json?all=1&filters={query}"))
        .await?
        .ok_or_else(|| ReadError::Refused("listing containers: 404".to_string()))?;
    serde_json::from_slice(&body).map_err(|e| ReadError::Failed(format!("container list is not what the Engine API returns: {e}")))
}

/// `GET /v{api}/containers/{name}/json`; none when no container has that name or id.
pub async fn inspect(host: &str, api_version: &str, name: &str) -> Result<Option<Inspect>, ReadError> {
    let Some(body) = get_path(host, &format!("/v{api_version}/containers/{}/json", url_encode(name))).await? else { return Ok(None) };
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| ReadError::Failed(format!("container {name} inspected is not what the Engine API returns: {e}")))
}

/// The body of a GET of `path`; none on 404.
async fn get_path(host: &str, path: &str) -> Result<Option<Bytes>, ReadError> {
    if let Some(socket) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host)) {
        let client: Client<hyperlocal::UnixConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
        get(&client, hyperlocal::Uri::new(socket, path).into()).await
    } else {
        let authority = host.trim_start_matches("tcp://").trim_start_matches("http://").trim_end_matches('/');
        let uri: hyper::Uri =
            format!("http://{authority}{path}").parse().map_err(|e| ReadError::Failed(format!("bad host {host}: {e}")))?;
        let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        get(&client, uri).await
    }
}

async fn get<C>(client: &Client<C, Empty<Bytes>>, uri: hyper::Uri) -> Result<Option<Bytes>, ReadError>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let path = uri.path().to_string();
    let response = client.get(uri).await.map_err(|e| ReadError::Unreachable(format!("GET {path}: {e}")))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| ReadError::Unreachable(format!("GET {path}: {e}")))?.to_bytes();
    if status == hyper::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let message = format!("GET {path}: HTTP {status}: {}", String::from_utf8_lossy(&body).trim());
    if status.is_client_error() {
        return Err(ReadError::Refused(message));
    }
    if !status.is_success() {
        return Err(ReadError::Failed(message));
    }
    Ok(Some(body))
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
