//! Test engine `spin`: every lifecycle call loops forever, burning CPU. `describe` and
//! `configure` behave. The host must end such calls at its deadline (epoch interruption
//! or fuel) and keep serving.

use std::hint::black_box;

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};

struct Spin;

/// Never returns; `black_box` keeps the optimiser from proving the loop useless.
fn spin() -> ! {
    let mut turns: u64 = 0;
    loop {
        turns = black_box(turns).wrapping_add(1);
    }
}

impl Engine for Spin {
    fn describe() -> EngineInfo {
        EngineInfo::new("spin", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(_settings: &Settings) -> Result<Self> {
        Ok(Spin)
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        spin()
    }
    fn image_load(&mut self, _image: &str, _archive: Archive) -> Result<()> {
        spin()
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        spin()
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        spin()
    }
    fn agent_start(&mut self, _spec: AgentSpec) -> Result<AgentInfo> {
        spin()
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        spin()
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        spin()
    }
}

sdk::export_engine!(Spin);
