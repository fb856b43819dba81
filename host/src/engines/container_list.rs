//! Listing containers over the Engine API with a tolerant model. Podman's compat API
//! reports libpod states (`stopped`, `configured`, …) that bollard's typed
//! `ContainerSummaryStateEnum` rejects, which would fail the whole listing whenever one
//! agent is mid-stop; here the state is a plain string.

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

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

/// `GET /v{api}/containers/json?all=1&filters=…` on a `unix://` or `tcp://` host.
pub async fn list(host: &str, api_version: &str, labels: &[(&str, &str)]) -> Result<Vec<Summary>, String> {
    let label_filters: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let filters = serde_json::json!({ "label": label_filters }).to_string();
    let query: String = url_encode(&filters);
    let path = format!("/v{api_version}/containers/json?all=1&filters={query}");
    let body = if let Some(socket) = host.strip_prefix("unix://").or_else(|| host.starts_with('/').then_some(host)) {
        let client: Client<hyperlocal::UnixConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
        get(&client, hyperlocal::Uri::new(socket, &path).into()).await?
    } else {
        let authority = host.trim_start_matches("tcp://").trim_start_matches("http://").trim_end_matches('/');
        let uri: hyper::Uri = format!("http://{authority}{path}").parse().map_err(|e| format!("bad host {host}: {e}"))?;
        let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        get(&client, uri).await?
    };
    serde_json::from_slice(&body).map_err(|e| format!("container list is not what the Engine API returns: {e}"))
}

async fn get<C>(client: &Client<C, Empty<Bytes>>, uri: hyper::Uri) -> Result<Bytes, String>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = client.get(uri).await.map_err(|e| format!("listing containers: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("listing containers: HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
