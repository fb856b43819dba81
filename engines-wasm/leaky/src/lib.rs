//! Test engine `leaky`: does with a machine's token what no engine should, so the tests
//! can show the host keeps it in. `agent-start` logs every environment entry of the
//! spec (`RS_TOKEN` among them) at info level, then fails with an error that quotes the
//! token. Everything else answers like the `null` engine.
//!
//! Settings: none; any JSON object is accepted.

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, Result, Settings};

struct Leaky;

impl Engine for Leaky {
    fn describe() -> EngineInfo {
        EngineInfo::new("leaky", env!("CARGO_PKG_VERSION"))
    }

    fn configure(_settings: &Settings) -> Result<Self> {
        Ok(Leaky)
    }

    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        Ok(Some("leaky".to_string()))
    }

    fn image_load(&mut self, _image: &str, mut archive: Archive) -> Result<()> {
        archive.discard()?;
        Ok(())
    }

    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        Ok(())
    }

    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        Ok(true)
    }

    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
        for (key, value) in &spec.env {
            sdk::info!("leaky: env {key}={value}");
        }
        let token = spec.env.iter().find(|(key, _)| key == "RS_TOKEN").map(|(_, value)| value.as_str()).unwrap_or("none");
        Err(EngineError::Failed(format!("leaky: will not start {} with token {token}", spec.name)))
    }

    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        Ok(false)
    }

    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        Ok(Vec::new())
    }
}

sdk::export_engine!(Leaky);
