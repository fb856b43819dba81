//! The body of `/api-plugin/v4/config`: decoded into Settings as the plugin does, then
//! applied the way the config endpoint applies it (settings swapped in place, engines
//! reconfigured, the worker pool resized). Every accepted config must be usable; every
//! refused one must name the param at fault.
#![no_main]

use std::sync::{Arc, OnceLock};

use context_engines::controller::reconciler::Reconciler;
use context_engines::drp::socket::DrpSocket;
use context_engines::environment::Environment;
use context_engines::params::{self, Settings};
use context_engines::plugin::Plugin;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fn service() -> &'static (Arc<Plugin>, Arc<Reconciler>) {
    static SERVICE: OnceLock<(Arc<Plugin>, Arc<Reconciler>)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let env = Environment::default();
        let settings = Settings::from_params(&json!({}), &env).expect("defaults");
        let socket = DrpSocket::new(std::path::Path::new("/nonexistent/ce-fuzz.sock"));
        let plugin = Arc::new(Plugin::new(env, socket, settings, std::env::temp_dir()).expect("plugin"));
        let reconciler = Reconciler::new(Arc::clone(&plugin));
        (plugin, reconciler)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    match Settings::from_params(&value, &Environment::default()) {
        Ok(settings) => {
            assert!(settings.max_parallel >= 1);
            assert!(settings.wasm_deadline_ms >= 1 && settings.wasm_memory_mb >= 1);
            assert!(!settings.plugin_name.is_empty() && !settings.default_engine.is_empty());
            let _ = settings.wasm_limits();
            for engine in settings.engine_config.keys() {
                let _ = settings.engine_settings(engine);
            }
            let (plugin, reconciler) = service();
            let previous = plugin.reconfigure(settings.clone());
            if previous.max_parallel != settings.max_parallel {
                reconciler.set_max_parallel(settings.max_parallel);
            }
            assert_eq!(*plugin.settings(), settings);
        }
        Err(e) => {
            let message = e.to_string();
            match &value {
                Value::Object(_) => {
                    assert!(params::ALL.iter().any(|name| message.contains(name)), "a refused config names the param: {message}")
                }
                _ => assert!(message.starts_with("params must be a JSON object"), "{message}"),
            }
        }
    }
});
