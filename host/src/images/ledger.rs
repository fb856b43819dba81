//! Which images this plugin loaded, and when: the only images image GC ever considers,
//! so an image loaded by hand or by another tool is never touched. Kept as JSON in the
//! plugin's working directory, so it survives restarts. Every load also tags its image
//! with a marker derived from the name (`context-engines-loaded:<digest>`); a name that
//! no longer points at its marker's image was re-pointed by someone else since, and GC
//! leaves it alone.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// One image the plugin loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub engine: String,
    pub image: String,
    /// Seconds since the Unix epoch.
    pub loaded_at: u64,
}

pub struct Ledger {
    path: PathBuf,
    loads: Mutex<BTreeMap<(String, String), u64>>,
}

/// The marker tag of a load of `image`.
pub fn marker(image: &str) -> String {
    format!("context-engines-loaded:{}", &hex::encode(Sha256::digest(image.as_bytes()))[..32])
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Ledger {
    /// The ledger at `path`; a missing file is an empty ledger, an unreadable one too
    /// (said once: GC then only forgets, it never removes what it does not know).
    pub fn open(path: PathBuf) -> Ledger {
        let loads = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Load>>(&bytes) {
                Ok(loads) => loads.into_iter().map(|l| ((l.engine, l.image), l.loaded_at)).collect(),
                Err(e) => {
                    tracing::warn!("{} is not a ledger of loaded images ({e}); starting an empty one", path.display());
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        Ledger { path, loads: Mutex::new(loads) }
    }

    pub fn record(&self, engine: &str, image: &str) {
        self.change(|loads| {
            loads.insert((engine.to_string(), image.to_string()), now_secs());
        });
    }

    pub fn forget(&self, engine: &str, image: &str) {
        self.change(|loads| {
            loads.remove(&(engine.to_string(), image.to_string()));
        });
    }

    pub fn loads(&self) -> Vec<Load> {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        loads.iter().map(|((engine, image), at)| Load { engine: engine.clone(), image: image.clone(), loaded_at: *at }).collect()
    }

    /// Applies `edit` and writes the ledger (to a side file, then renamed: a crash
    /// leaves the old ledger or the new one, never half of one).
    fn change(&self, edit: impl FnOnce(&mut BTreeMap<(String, String), u64>)) {
        let mut loads = self.loads.lock().unwrap_or_else(|p| p.into_inner());
        edit(&mut loads);
        let list: Vec<Load> =
            loads.iter().map(|((engine, image), at)| Load { engine: engine.clone(), image: image.clone(), loaded_at: *at }).collect();
        let side = self.path.with_extension("json.partial");
        let written = serde_json::to_vec_pretty(&list)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&side, bytes))
            .and_then(|()| std::fs::rename(&side, &self.path));
        if let Err(e) = written {
            tracing::warn!("cannot write the ledger of loaded images {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_survive_a_reopen_and_forgetting() {
        let dir = std::env::temp_dir().join(format!("ce-ledger-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("images-loaded.json");
        let ledger = Ledger::open(path.clone());
        ledger.record("docker", "a/b:1");
        ledger.record("podman", "a/b:1");
        ledger.forget("docker", "a/b:1");
        let reopened = Ledger::open(path);
        let loads = reopened.loads();
        assert_eq!(loads.len(), 1);
        assert_eq!((loads[0].engine.as_str(), loads[0].image.as_str()), ("podman", "a/b:1"));
        assert_ne!(marker("a/b:1"), marker("a/b:2"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
