//! Test engine `forbidden`: every lifecycle call first makes an HTTP GET to a destination
//! that is not in its `allowed-hosts` (by default `http://127.0.0.1:9/`, the discard
//! port) and fails with `failed("forbidden: <the error it got>")`. Should the request
//! get any response, the host let it through, and the call answers like the `null`
//! engine. `describe` and `configure` behave.
//!
//! Settings: `url` (default `http://127.0.0.1:9/`), the destination tried.

use context_engines_sdk::http::Request;
use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, Result, Settings};

struct Forbidden {
    url: String,
}

impl Forbidden {
    /// `Ok` only if the host let the request out.
    fn try_out(&self) -> Result<()> {
        match Request::get(self.url.as_str()).send() {
            Ok(response) => {
                sdk::warn!("GET {} was let through: {}", self.url, response.status_line());
                Ok(())
            }
            Err(e) => Err(EngineError::Failed(format!("forbidden: {e}"))),
        }
    }
}

impl Engine for Forbidden {
    fn describe() -> EngineInfo {
        EngineInfo::new("forbidden", env!("CARGO_PKG_VERSION")).feature("test-only")
    }
    fn configure(settings: &Settings) -> Result<Self> {
        let url = settings.string("url")?.unwrap_or("http://127.0.0.1:9/").to_string();
        Ok(Forbidden { url })
    }
    fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
        self.try_out()?;
        Ok(Some("forbidden".to_string()))
    }
    fn image_load(&mut self, _image: &str, mut archive: Archive) -> Result<()> {
        self.try_out()?;
        archive.discard()?;
        Ok(())
    }
    fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
        self.try_out()
    }
    fn image_remove(&mut self, _image: &str) -> Result<bool> {
        self.try_out()?;
        Ok(true)
    }
    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
        self.try_out()?;
        Ok(AgentInfo { id: format!("forbidden-{}", spec.name), name: spec.name, running: true, labels: spec.labels })
    }
    fn agent_stop(&mut self, _name: &str) -> Result<bool> {
        self.try_out()?;
        Ok(false)
    }
    fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
        self.try_out()?;
        Ok(Vec::new())
    }
}

sdk::export_engine!(Forbidden);
