//! Test engine `slow`: every lifecycle call waits (blocked on a monotonic-clock pollable,
//! not spinning), then answers like the `null` engine. `describe` and `configure` behave.
//!
//! Settings: `delay-ms` (default 3000), the wait of each call.

use std::time::Duration;

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};

struct Slow {
    delay: Duration,
}

impl Slow {
    fn wait(&self) {
        sdk::time::sleep(self.delay);
    }
}

impl Engine for Slow {
    fn describe() -> EngineInfo {
        EngineInfo::new("slow", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(settings: &Settings) -> Result<Self> {
        let ms: u64 = settings.value("delay-ms")?.unwrap_or(3000);
        Ok(Slow { delay: Duration::from_millis(ms) })
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        self.wait();
        Ok(Some("slow".to_string()))
    }
    fn image_load(&mut self, _image: &str, mut archive: Archive) -> Result<()> {
        self.wait();
        archive.discard()?;
        Ok(())
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        self.wait();
        Ok(())
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        self.wait();
        Ok(true)
    }
    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
        self.wait();
        Ok(AgentInfo { id: format!("slow-{}", spec.name), name: spec.name, running: true, labels: spec.labels })
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        self.wait();
        Ok(false)
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        self.wait();
        Ok(Vec::new())
    }
}

sdk::export_engine!(Slow);
