//! The `null` engine: no runtime at all. Every image exists, every agent starts, nothing
//! is kept. It is the smallest complete engine (a template for new ones) and the engine
//! the host's per-call overhead benchmark drives.
//!
//! Settings: none; any JSON object is accepted.

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};

/// The engine; it has no state.
struct Null;

impl Engine for Null {
    fn describe() -> EngineInfo {
        // No features: a spec with options is refused by the host before it gets here.
        EngineInfo::new("null", env!("CARGO_PKG_VERSION"))
    }

    fn configure(_settings: &Settings) -> Result<Self> {
        Ok(Null)
    }

    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        Ok(Some("null".to_string()))
    }

    fn image_load(&mut self, image: &str, mut archive: Archive) -> Result<()> {
        // Read it all, as a real engine would, and keep none of it.
        let size = archive.discard()?;
        sdk::debug!("discarded a {size}-byte archive for {image}");
        Ok(())
    }

    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        Ok(())
    }

    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        Ok(true)
    }

    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
        Ok(AgentInfo { id: format!("null-{}", spec.name), name: spec.name, running: true, labels: spec.labels })
    }

    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        Ok(false)
    }

    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        Ok(Vec::new())
    }
}

sdk::export_engine!(Null);
