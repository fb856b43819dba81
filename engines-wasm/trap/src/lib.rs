//! Test engine `trap`: every lifecycle call panics, which (built with `panic = "abort"`)
//! is a WebAssembly trap. `describe` and `configure` behave.

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};

struct Trap;

fn trap(call: &str) -> ! {
    panic!("trap engine: {call} traps by design")
}

impl Engine for Trap {
    fn describe() -> EngineInfo {
        EngineInfo::new("trap", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(_settings: &Settings) -> Result<Self> {
        Ok(Trap)
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        trap("image-id")
    }
    fn image_load(&mut self, _image: &str, _archive: Archive) -> Result<()> {
        trap("image-load")
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        trap("image-tag")
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        trap("image-remove")
    }
    fn agent_start(&mut self, _spec: AgentSpec) -> Result<AgentInfo> {
        trap("agent-start")
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        trap("agent-stop")
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        trap("agent-list")
    }
}

sdk::export_engine!(Trap);
