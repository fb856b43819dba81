//! The plugin's shared services: environment, current settings, the dr-provision
//! clients, the engine registry and the image loader. One instance per process.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::drp::DrpClient;
use crate::drp_socket::DrpSocket;
use crate::environment::Environment;
use crate::images::Images;
use crate::params::Settings;
use crate::redact::Redactor;
use crate::registry::Registry;

pub struct Plugin {
    pub env: Environment,
    pub drp: DrpClient,
    pub socket: DrpSocket,
    pub registry: Registry,
    pub images: Arc<Images>,
    /// The tokens the plugin holds or fetched, masked in agent logs.
    pub redactor: Redactor,
    settings: RwLock<Arc<Settings>>,
}

impl Plugin {
    pub fn new(env: Environment, socket: DrpSocket, settings: Settings, scratch: PathBuf) -> anyhow::Result<Plugin> {
        let registry = Registry::default();
        registry.configure(&settings);
        let redactor = Redactor::default();
        if let Some(token) = &env.token {
            redactor.add(token);
        }
        Ok(Plugin {
            redactor,
            drp: DrpClient::new(&env)?,
            images: Arc::new(Images::new(env.clone(), scratch.join("spool"))?),
            env,
            socket,
            registry,
            settings: RwLock::new(Arc::new(settings)),
        })
    }

    /// A snapshot: callers see one consistent set of settings for a whole operation.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies new settings in place; returns the previous ones.
    pub fn reconfigure(&self, settings: Settings) -> Arc<Settings> {
        self.registry.configure(&settings);
        let mut current = self.settings.write().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *current, Arc::new(settings))
    }

    /// Publishes an event on dr-provision's bus; failures are logged, never fatal.
    pub async fn publish(&self, action: &str, key: &str, object: serde_json::Value) {
        if let Err(e) = self.socket.publish("context-engines", action, key, object).await {
            tracing::warn!("could not publish {action} event for {key}: {e}");
        }
    }
}
