//! The plugin → dr-provision channel: HTTP over the FROM_PLUGIN_SOCK unix socket
//! (`/api-server-plugin/v4/{log,publish,leaving}`), as the Go plugin library posts them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyperlocal::{UnixClientExt, UnixConnector, Uri};
use serde_json::{Value, json};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct DrpSocket {
    client: Client<UnixConnector, Full<Bytes>>,
    path: PathBuf,
}

impl DrpSocket {
    pub fn new(path: &Path) -> DrpSocket {
        DrpSocket { client: Client::unix(), path: path.to_path_buf() }
    }

    /// A `models.Event` as dr-provision's bus carries it.
    pub async fn publish(&self, kind: &str, action: &str, key: &str, object: Value) -> Result<(), String> {
        let event = json!({
            "Time": now_rfc3339(),
            "Type": kind,
            "Action": action,
            "Key": key,
            "Principal": "plugin:context-engines",
            "Object": object,
        });
        self.post("publish", &event).await
    }

    pub async fn log(&self, line: &Value) -> Result<(), String> {
        self.post("log", line).await
    }

    pub async fn leaving(&self) -> Result<(), String> {
        self.post("leaving", &json!({})).await
    }

    async fn post(&self, verb: &str, body: &Value) -> Result<(), String> {
        let uri: hyper::Uri = Uri::new(&self.path, &format!("/api-server-plugin/v4/{verb}")).into();
        let request = hyper::Request::post(uri)
            .header("Content-Type", "application/json")
            // Lines and events may quote an engine or an agent, which may quote a token.
            .body(Full::new(Bytes::from(crate::redact::secrets().redact(&body.to_string()))))
            .map_err(|e| e.to_string())?;
        let send = async {
            let response = self.client.request(request).await.map_err(|e| e.to_string())?;
            let status = response.status();
            // Drain so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() { Ok(()) } else { Err(format!("HTTP {status}")) }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, send)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| format!("POST {verb} to dr-provision over {}: {e}", self.path.display()))
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
