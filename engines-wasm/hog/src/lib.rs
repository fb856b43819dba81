//! Test engine `hog`: every lifecycle call allocates memory without bound, writing every
//! byte of it, until an allocation fails and the instance traps (at the host's memory cap,
//! or at 4 GiB, wasm32's limit). `describe` and `configure` behave.

use std::hint::black_box;

use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};

struct Hog;

/// Allocates and fills 1 MiB blocks forever; a failed allocation aborts, which traps.
fn hog() -> ! {
    const BLOCK: usize = 1 << 20;
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = Vec::with_capacity(BLOCK);
        block.resize(BLOCK, 0xA5);
        hoard.push(black_box(block));
    }
}

impl Engine for Hog {
    fn describe() -> EngineInfo {
        EngineInfo::new("hog", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(_settings: &Settings) -> Result<Self> {
        Ok(Hog)
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        hog()
    }
    fn image_load(&mut self, _image: &str, _archive: Archive) -> Result<()> {
        hog()
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        hog()
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        hog()
    }
    fn agent_start(&mut self, _spec: AgentSpec) -> Result<AgentInfo> {
        hog()
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        hog()
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        hog()
    }
}

sdk::export_engine!(Hog);
