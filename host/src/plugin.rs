//! The plugin's shared services: environment, current settings, the dr-provision
//! clients, the engine registry and the image loader. One instance per process.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::drp::DrpClient;
use crate::drp::socket::DrpSocket;
use crate::environment::Environment;
use crate::images::Images;
use crate::params::Settings;
use crate::registry::Registry;

pub struct Plugin {
    pub env: Environment,
    pub drp: DrpClient,
    pub socket: DrpSocket,
    pub registry: Registry,
    pub images: Arc<Images>,
    settings: RwLock<Arc<Settings>>,
}

impl Plugin {
    pub fn new(env: Environment, socket: DrpSocket, settings: Settings, scratch: PathBuf) -> anyhow::Result<Plugin> {
        let registry = Registry::default();
        if let Some(token) = &env.token {
            crate::redact::secrets().add(token);
        }
        let plugin = Plugin {
            drp: DrpClient::new(&env)?,
            images: Arc::new(Images::new(env.clone(), scratch.join("spool"), scratch.join("images-loaded.json"))?),
            env,
            socket,
            registry,
            settings: RwLock::new(Arc::new(settings.clone())),
        };
        plugin.apply(&settings);
        Ok(plugin)
    }

    /// Hands each service its part of the settings.
    fn apply(&self, settings: &Settings) {
        self.registry.configure(settings);
        self.drp.trust.configure(&settings.drp_trust);
        self.images.configure(settings);
    }

    /// A snapshot: callers see one consistent set of settings for a whole operation.
    pub fn settings(&self) -> Arc<Settings> {
        Arc::clone(&self.settings.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Applies new settings in place; returns the previous ones.
    pub fn reconfigure(&self, settings: Settings) -> Arc<Settings> {
        self.apply(&settings);
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
