//! What dr-provision tells the plugin through its environment (SPEC §2).

use std::path::PathBuf;

#[derive(Clone, Default, PartialEq)]
pub struct Environment {
    /// `RS_ENDPOINT`: the API URL, usually `https://host:8092`.
    pub endpoint: Option<String>,
    /// `RS_TOKEN`: a superuser token. Never logged, never given to an engine.
    pub token: Option<String>,
    /// `RS_FILESERVER`: the static file server URL.
    pub fileserver: Option<String>,
    /// `RS_WEBROOT`: the file server's root on disk.
    pub webroot: Option<PathBuf>,
}

// Hand-written so the token can never reach a log through `{:?}`.
impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("fileserver", &self.fileserver)
            .field("webroot", &self.webroot)
            .finish()
    }
}

impl Environment {
    pub fn from_process() -> Environment {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Environment {
            endpoint: var("RS_ENDPOINT").map(|s| s.trim_end_matches('/').to_string()),
            token: var("RS_TOKEN"),
            fileserver: var("RS_FILESERVER").map(|s| s.trim_end_matches('/').to_string()),
            webroot: var("RS_WEBROOT").map(PathBuf::from),
        }
    }

    pub fn default_engines_dir(&self) -> Option<PathBuf> {
        self.webroot.as_ref().map(|root| root.join("files/plugin_providers/context-engines/engines"))
    }
}
