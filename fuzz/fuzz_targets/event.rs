//! Websocket frames from dr-provision's event bus: each input is up to 64 frames, one per
//! line, decoded as Events and applied in order to a fresh reconciler (as the event
//! stream does), then every machine an event touched is decided. No I/O happens here:
//! `apply` and `decide` are the pure half of the reconciler. Checks: an unreadable
//! object is an error naming its key, and a decision starts at most the one agent the
//! machine's context names, under a name a runtime accepts.
#![no_main]

use std::sync::{Arc, OnceLock};

use context_engines::controller::reconciler::Reconciler;
use context_engines::drp::socket::DrpSocket;
use context_engines::environment::Environment;
use context_engines::events::Event;
use context_engines::params::Settings;
use context_engines::plugin::Plugin;
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fn plugin() -> Arc<Plugin> {
    static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();
    Arc::clone(PLUGIN.get_or_init(|| {
        let env = Environment::default();
        let settings = Settings::from_params(&json!({}), &env).expect("defaults");
        let socket = DrpSocket::new(std::path::Path::new("/nonexistent/ce-fuzz.sock"));
        Arc::new(Plugin::new(env, socket, settings, std::env::temp_dir()).expect("plugin"))
    }))
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let reconciler = Reconciler::new(plugin());
    for frame in text.split('\n').take(64) {
        let Ok(event) = serde_json::from_str::<Event>(frame) else { continue };
        match reconciler.apply(&event) {
            Ok(touched) => {
                for uuid in touched {
                    let Ok(decision) = reconciler.decide(&uuid) else { continue };
                    assert!(decision.stop.is_empty(), "nothing was started, so nothing can be stopped");
                    if let Some((agent, context)) = decision.start {
                        assert_eq!(agent.machine, uuid);
                        assert_eq!(agent.context, context.name);
                        assert_eq!(context.engine, "context-engines", "only our contexts get agents");
                        assert_eq!(agent.name, format!("drp-{}-{uuid}", context.name));
                        assert!(agent.name.chars().all(valid_name_char), "agent name {:?}", agent.name);
                    }
                }
            }
            Err(e) => assert!(e.contains(&format!("'{}'", event.key)), "an unreadable object names its key: {e}"),
        }
    }
    let _ = reconciler.summary();
});
