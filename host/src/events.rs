//! dr-provision's event stream: a websocket on `/api/v3/ws`, subscribed to machine and
//! context events. The connection may drop at any time; every (re)connect re-registers
//! and runs a full reconcile, because events were missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::controller::reconciler::Reconciler;
use crate::plugin::Plugin;
use crate::tls;

const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const PING_EVERY: Duration = Duration::from_secs(20);
/// No frame (not even a pong) for this long: the peer is gone without a FIN.
const SILENCE_LIMIT: Duration = Duration::from_secs(65);
const SUBSCRIPTIONS: &[&str] = &["register machines.*.*", "register contexts.*.*"];

/// One event from the bus. `Object` stays raw until the reconciler knows its type.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Object", default)]
    pub object: Value,
}

impl Event {
    pub fn object<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.object.clone())
            .map_err(|e| format!("{}.{} event for '{}' has an unreadable Object: {e}", self.kind, self.action, self.key))
    }
}

/// `https://h:8092` → `wss://h:8092/api/v3/ws` (http → ws).
pub fn ws_url(endpoint: &str) -> Result<String, String> {
    let rest = endpoint
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| endpoint.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .ok_or_else(|| format!("RS_ENDPOINT '{endpoint}' is neither http:// nor https://"))?;
    Ok(format!("{}/api/v3/ws", rest.trim_end_matches('/')))
}

/// Runs until `shutdown` turns true.
pub async fn run(plugin: Arc<Plugin>, reconciler: Arc<Reconciler>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        tokio::select! {
            outcome = session(&plugin, &reconciler) => match outcome {
                Ok(()) => backoff = BACKOFF_FIRST,
                Err(e) => tracing::warn!("event stream: {e}; reconnecting in {}ms", backoff.as_millis()),
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: connect, subscribe, reconcile, then apply events until it
/// drops. Returns Ok when a healthy connection ended, so the next one starts quickly.
async fn session(plugin: &Plugin, reconciler: &Arc<Reconciler>) -> Result<(), String> {
    let endpoint = plugin.env.endpoint.clone().ok_or("RS_ENDPOINT is not set")?;
    let url = ws_url(&endpoint)?;
    let mut request = url.as_str().into_client_request().map_err(|e| format!("bad websocket URL {url}: {e}"))?;
    if let Some(token) = &plugin.env.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| "RS_TOKEN is not a valid header value")?;
        request.headers_mut().insert("Authorization", value);
    }
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(plugin.drp.trust.client_config()));
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector)),
    )
    .await
    .map_err(|_| format!("connecting to {url} timed out"))?
    .map_err(|e| format!("connecting to {url}: {}", tls::describe(&e)))?;
    for subscription in SUBSCRIPTIONS {
        ws.send(Message::text(*subscription)).await.map_err(|e| format!("subscribing: {e}"))?;
    }
    tracing::info!("event stream connected to {url}");
    let _connected = Connected::new();
    // Events arriving meanwhile wait in the socket and are applied after the listing,
    // so none is lost and none is applied to state older than itself.
    full_reconcile_until_done(reconciler).await;
    let mut ping = tokio::time::interval(PING_EVERY);
    // The silence deadline runs from the last frame received (a pong counts) and is not
    // moved by anything we send, so a peer that vanished without a FIN is noticed.
    let mut heard = tokio::time::Instant::now();
    let mut relisted = tokio::time::Instant::now();
    loop {
        // Read each pass, so a reconfigure of resync-secs applies at once.
        let resync_every = plugin.settings().resync_secs;
        let next_resync = relisted + Duration::from_secs(resync_every);
        tokio::select! {
            frame = ws.next() => {
                heard = tokio::time::Instant::now();
                match frame {
                    Some(Ok(Message::Text(text))) => apply(reconciler, text.as_str()),
                    Some(Ok(Message::Close(_))) | None => return Ok(()),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(format!("websocket error: {e}")),
                }
            }
            _ = tokio::time::sleep_until(heard + SILENCE_LIMIT) => {
                return Err(format!("no frame from dr-provision for {}s", SILENCE_LIMIT.as_secs()));
            }
            _ = ping.tick() => {
                ws.send(Message::Ping(Default::default())).await.map_err(|e| format!("ping: {e}"))?;
            }
            _ = tokio::time::sleep_until(next_resync), if resync_every > 0 => {
                tracing::info!("periodic resync");
                full_reconcile_until_done(reconciler).await;
                // Frames waited in the socket meanwhile: the silence is ours, not theirs.
                (relisted, heard) = (tokio::time::Instant::now(), tokio::time::Instant::now());
            }
            _ = reconciler.resync_requested() => {
                full_reconcile_until_done(reconciler).await;
                (relisted, heard) = (tokio::time::Instant::now(), tokio::time::Instant::now());
            }
        }
    }
}

/// Counts a connection and, when it goes (however its session ends), its drop.
struct Connected;

impl Connected {
    fn new() -> Connected {
        crate::metrics::global().event_stream(true);
        Connected
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        crate::metrics::global().event_stream(false);
    }
}

async fn full_reconcile_until_done(reconciler: &Arc<Reconciler>) {
    let mut backoff = BACKOFF_FIRST;
    while let Err(e) = reconciler.full().await {
        tracing::warn!("full reconcile failed: {e}; retrying in {}ms", backoff.as_millis());
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn apply(reconciler: &Arc<Reconciler>, text: &str) {
    let event: Event = match serde_json::from_str(text) {
        Ok(event) => event,
        Err(e) => {
            tracing::warn!("ignoring a websocket frame that is not an Event ({e}): {:.200}", text);
            return;
        }
    };
    if let Err(e) = reconciler.on_event(&event) {
        // The object is unreadable, so this machine's state is unknown: re-learn all.
        tracing::warn!("{e}; running a full reconcile");
        reconciler.request_resync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_follows_the_endpoint_scheme() {
        assert_eq!(ws_url("https://h:8092").as_deref(), Ok("wss://h:8092/api/v3/ws"));
        assert_eq!(ws_url("http://h:8092/").as_deref(), Ok("ws://h:8092/api/v3/ws"));
        assert!(ws_url("ftp://h").is_err());
    }

    #[test]
    fn events_decode_without_an_object() {
        let e: Event = serde_json::from_str(r#"{"Type":"machines","Action":"delete","Key":"u"}"#).expect("decode");
        assert_eq!(e.key, "u");
        assert!(e.object.is_null());
    }
}
