//! The dr-provision REST API client: machines, contexts and machine tokens, over HTTPS
//! with dr-provision's usually self-signed certificate, believed as `trust` decides.

pub mod socket;
pub mod trust;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use std::sync::Arc;

use crate::environment::Environment;
use crate::tls;
use trust::DrpTrust;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The machine fields the plugin acts on; everything else is ignored.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Machine {
    #[serde(rename = "Uuid")]
    pub uuid: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Context")]
    pub context: String,
    #[serde(rename = "Meta", deserialize_with = "lenient_meta")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Context {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Engine")]
    pub engine: String,
    #[serde(rename = "Image")]
    pub image: String,
    #[serde(rename = "Meta", deserialize_with = "lenient_meta")]
    pub meta: BTreeMap<String, String>,
}

impl Context {
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }
}

/// Meta is a string map in dr-provision, but a hand-edited object may carry numbers or
/// null; those must not make the whole machine unreadable.
fn lenient_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, serde_json::Value>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect())
}

/// Decodes a listing element by element: one malformed object is skipped with a warning
/// naming it, and never hides the others.
fn each_readable<T: DeserializeOwned>(items: Vec<serde_json::Value>, what: &str, key: &str) -> Vec<T> {
    items
        .into_iter()
        .filter_map(|item| {
            let name = item.get(key).map(|k| k.to_string()).unwrap_or_else(|| "?".to_string());
            serde_json::from_value(item).map_err(|e| tracing::warn!("skipping {what} {key}={name}: it is not readable: {e}")).ok()
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum DrpError {
    #[error("RS_ENDPOINT is not set: the plugin cannot reach dr-provision")]
    NoEndpoint,
    #[error("dr-provision request GET {path} failed: {cause}")]
    Transport { path: String, cause: String },
    #[error("dr-provision answered GET {path} with HTTP {status}: {body}")]
    Status { path: String, status: u16, body: String },
    #[error("dr-provision answered GET {path} with a body that is not what was expected: {cause}")]
    Decode { path: String, cause: String },
}

#[derive(Clone)]
pub struct DrpClient {
    http: reqwest::Client,
    /// Shared with the event stream's websocket: one pin for every connection.
    pub trust: Arc<DrpTrust>,
    endpoint: Option<String>,
    token: Option<String>,
    /// Unit tests' stand-in for dr-provision: every machine token is this, and nothing
    /// is asked over the network.
    #[cfg(test)]
    pub fixed_token: Option<String>,
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(rename = "Token")]
    token: String,
}

impl DrpClient {
    pub fn new(env: &Environment) -> Result<DrpClient, reqwest::Error> {
        let trust = Arc::new(DrpTrust::default());
        let http = reqwest::Client::builder().use_preconfigured_tls(trust.client_config()).timeout(REQUEST_TIMEOUT).build()?;
        Ok(DrpClient {
            http,
            trust,
            endpoint: env.endpoint.clone(),
            token: env.token.clone(),
            #[cfg(test)]
            fixed_token: None,
        })
    }

    pub async fn machines(&self) -> Result<Vec<Machine>, DrpError> {
        Ok(each_readable(self.get("/api/v3/machines").await?, "machine", "Uuid"))
    }

    pub async fn contexts(&self) -> Result<Vec<Context>, DrpError> {
        Ok(each_readable(self.get("/api/v3/contexts").await?, "context", "Name"))
    }

    pub async fn machine_token(&self, uuid: &str) -> Result<String, DrpError> {
        #[cfg(test)]
        if let Some(token) = &self.fixed_token {
            return Ok(format!("{token}-{uuid}"));
        }
        let reply: TokenReply = self.get(&format!("/api/v3/machines/{uuid}/token?ttl=3y")).await?;
        Ok(reply.token)
    }

    /// The machine's params, aggregated over its profiles and global as dr-provision
    /// resolves them for the machine (`?aggregate=true`). A 404 reads as no params: an
    /// endpoint that does not serve params (a stand-in for dr-provision) then gives agents
    /// no machine layer rather than no agents; the machine's existence is the token
    /// fetch's to check.
    pub async fn machine_params(&self, uuid: &str) -> Result<serde_json::Map<String, serde_json::Value>, DrpError> {
        #[cfg(test)]
        if self.fixed_token.is_some() {
            return Ok(serde_json::Map::new());
        }
        match self
            .get::<Option<serde_json::Map<String, serde_json::Value>>>(&format!("/api/v3/machines/{uuid}/params?aggregate=true"))
            .await
        {
            Ok(params) => Ok(params.unwrap_or_default()),
            Err(DrpError::Status { status: 404, .. }) => Ok(serde_json::Map::new()),
            Err(e) => Err(e),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, DrpError> {
        let endpoint = self.endpoint.as_deref().ok_or(DrpError::NoEndpoint)?;
        let mut request = self.http.get(format!("{endpoint}{path}"));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let transport = |e: reqwest::Error| DrpError::Transport { path: path.to_string(), cause: tls::describe(&e.without_url()) };
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(transport)?;
        if status != 200 {
            return Err(DrpError::Status {
                path: path.to_string(),
                status,
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| DrpError::Decode { path: path.to_string(), cause: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_decode_with_missing_and_odd_fields() {
        let m: Machine = serde_json::from_str(r#"{"Uuid":"u1","Meta":{"a":1,"BaseContext":"x","n":null}}"#).expect("lenient decode");
        assert_eq!(m.uuid, "u1");
        assert_eq!(m.context, "");
        assert_eq!(m.meta.get("a").map(String::as_str), Some("1"));
        let m: Machine = serde_json::from_str(r#"{"Uuid":"u2","Meta":null}"#).expect("null meta");
        assert!(m.meta.is_empty());
    }
}
