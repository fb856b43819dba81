//! An engine as the rest of the plugin sees it: the engine itself, with every call's
//! answer recorded for `/healthz` and every archive's bytes counted as they stream.
//! The registry wraps each engine once, when it is made, so identity checks on the
//! `Arc` (is this still the engine under that name?) keep working.

use std::ops::Deref;

use async_trait::async_trait;
use futures_util::StreamExt;

use crate::engine::{AgentEvents, AgentInfo, AgentSpec, ArchiveStream, Engine, EngineError, EngineInfo};

pub struct Observed<E> {
    inner: E,
}

impl<E: Engine> Observed<E> {
    pub fn new(inner: E) -> Observed<E> {
        Observed { inner }
    }

    fn answered<T>(&self, result: Result<T, EngineError>) -> Result<T, EngineError> {
        super::global().engine_answered(self.inner.name(), &result);
        result
    }
}

/// The engine's own methods beyond the trait (a WASM engine's reconfigure, say).
impl<E> Deref for Observed<E> {
    type Target = E;

    fn deref(&self) -> &E {
        &self.inner
    }
}

#[async_trait]
impl<E: Engine> Engine for Observed<E> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn info(&self) -> Result<EngineInfo, EngineError> {
        self.answered(self.inner.info().await)
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, EngineError> {
        self.answered(self.inner.image_id(image).await)
    }

    async fn image_load(&self, image: &str, archive: ArchiveStream) -> Result<(), EngineError> {
        let name = self.inner.name().to_string();
        let counted = archive.inspect(move |chunk| {
            if let Ok(bytes) = chunk {
                super::global().image_bytes(&name, bytes.len() as u64);
            }
        });
        let loaded = self.answered(self.inner.image_load(image, Box::pin(counted)).await);
        if loaded.is_ok() {
            super::global().image_loaded(self.inner.name());
        }
        loaded
    }

    async fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        self.answered(self.inner.image_tag(source, target).await)
    }

    async fn image_remove(&self, image: &str) -> Result<bool, EngineError> {
        self.answered(self.inner.image_remove(image).await)
    }

    async fn agent_start(&self, spec: &AgentSpec) -> Result<AgentInfo, EngineError> {
        self.answered(self.inner.agent_start(spec).await)
    }

    async fn agent_stop(&self, name: &str) -> Result<bool, EngineError> {
        self.answered(self.inner.agent_stop(name).await)
    }

    async fn agent_list(&self, labels: &[(&str, &str)]) -> Result<Vec<AgentInfo>, EngineError> {
        self.answered(self.inner.agent_list(labels).await)
    }

    async fn agent_logs(&self, name: &str, lines: u32) -> Result<Vec<String>, EngineError> {
        self.answered(self.inner.agent_logs(name, lines).await)
    }

    async fn image_detail(&self, image: &str) -> Result<Option<serde_json::Value>, EngineError> {
        self.answered(self.inner.image_detail(image).await)
    }

    /// Only a failure counts: a feed may open lazily, so its opening says nothing of
    /// whether the runtime answers (the listing that follows it does).
    async fn agent_events(&self, labels: &[(&str, &str)]) -> Result<Option<AgentEvents>, EngineError> {
        let events = self.inner.agent_events(labels).await;
        if events.is_err() {
            return self.answered(events);
        }
        events
    }
}
