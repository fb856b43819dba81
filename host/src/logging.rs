//! Logging: to stderr always, and info and above also to dr-provision's log through the
//! plugin socket, so operators see the plugin's lines in dr-provision. Forwarding never
//! blocks the code that logs: lines go through a bounded queue and are dropped (and
//! counted) when dr-provision cannot keep up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use serde_json::json;
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::drp::socket::{DrpSocket, now_rfc3339};

const QUEUE: usize = 1024;

struct Forward {
    sender: OnceLock<mpsc::Sender<serde_json::Value>>,
    dropped: AtomicU64,
}

static FORWARD: Forward = Forward { sender: OnceLock::new(), dropped: AtomicU64::new(0) };

struct ForwardLayer;

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::INFO {
            return;
        }
        let Some(sender) = FORWARD.sender.get() else { return };
        let mut message = MessageVisitor::default();
        event.record(&mut message);
        let line = json!({
            "Time": now_rfc3339(),
            "Name": "context-engines",
            "Service": "plugin",
            "Principal": "plugin:context-engines",
            "Level": level.as_str().to_ascii_lowercase(),
            "Message": message.0,
        });
        if sender.try_send(line).is_err() {
            FORWARD.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct MessageVisitor(String);

impl Visit for MessageVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

/// Stderr with every known token masked. The formatter hands over one whole line per
/// write, so a token is never split across two writes.
struct RedactedStderr;

impl std::io::Write for RedactedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = crate::redact::secrets().redact(&String::from_utf8_lossy(buf));
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Installs the stderr logger and the (not yet connected) forwarding layer.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(|| RedactedStderr).with_filter(filter))
        .with(ForwardLayer)
        .try_init();
}

/// Starts forwarding to dr-provision. Called once the socket is known.
pub fn forward_to(socket: Arc<DrpSocket>) {
    let (sender, mut receiver) = mpsc::channel(QUEUE);
    if FORWARD.sender.set(sender).is_err() {
        return;
    }
    tokio::spawn(async move {
        while let Some(line) = receiver.recv().await {
            // Logging a failure here would feed the queue; stderr only.
            if let Err(e) = socket.log(&line).await {
                eprintln!("context-engines: could not forward a log line to dr-provision: {e}");
            }
            let dropped = FORWARD.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                eprintln!("context-engines: {dropped} log lines were not forwarded to dr-provision (queue full)");
            }
        }
    });
}
