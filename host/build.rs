//! Bundles `content/` (the dr-provision content pack) into one YAML document at build
//! time, so `define` carries it without reading files at run time, and a malformed
//! content file fails the build instead of a customer's install.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};

fn main() {
    let content = manifest_dir().join("../content");
    println!("cargo:rerun-if-changed={}", content.display());
    let bundle = bundle(&content).unwrap_or_else(|e| panic!("content/: {e}"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(out.join("content.yaml"), bundle).expect("write content bundle");
    fs::write(out.join("bundled_engines.rs"), bundled_engines()).expect("write engine list");
}

/// The package's directory, read when the script runs, not when it is compiled: two
/// checkouts sharing a target dir (git worktrees) share this script's binary, and each
/// must bundle its own engines and content.
fn manifest_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// The WASM engines `unpack` writes, embedded from engines-wasm/'s build output
/// (engines-wasm/build.sh; scripts/test.sh runs it first). Missing ones are left out
/// with a warning, so the host still builds without the wasm32 target.
const BUNDLED: &[&str] = &["docker-api", "null"];

fn bundled_engines() -> String {
    let dir = manifest_dir().join("../engines-wasm/target/engines");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut entries = String::new();
    for name in BUNDLED {
        let file = dir.join(format!("{name}.wasm"));
        println!("cargo:rerun-if-changed={}", file.display());
        if file.is_file() {
            entries.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", file.display().to_string()));
        } else {
            println!("cargo:warning=bundled engine {} not built; run engines-wasm/build.sh", file.display());
        }
    }
    format!("pub const BUNDLED_ENGINES: &[(&str, &[u8])] = &[\n{entries}];\n")
}

fn bundle(dir: &Path) -> Result<String, String> {
    let meta = read_yaml(&dir.join("meta.yaml"))?;
    let mut sections: BTreeMap<String, Mapping> = BTreeMap::new();
    let mut kinds: Vec<PathBuf> =
        fs::read_dir(dir).map_err(|e| e.to_string())?.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
    kinds.sort();
    for kind_dir in kinds {
        println!("cargo:rerun-if-changed={}", kind_dir.display());
        let kind = kind_dir.file_name().and_then(|n| n.to_str()).ok_or("bad dir name")?.to_string();
        let mut files: Vec<PathBuf> = fs::read_dir(&kind_dir)
            .map_err(|e| e.to_string())?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        files.sort();
        for file in files {
            println!("cargo:rerun-if-changed={}", file.display());
            let object = read_yaml(&file)?;
            let name = object.get("Name").and_then(Value::as_str).ok_or_else(|| format!("{} has no Name", file.display()))?.to_string();
            let section = sections.entry(kind.clone()).or_default();
            if section.insert(Value::String(name.clone()), object).is_some() {
                return Err(format!("{kind}/{name} is defined twice"));
            }
        }
    }
    let mut root = Mapping::new();
    root.insert("meta".into(), meta);
    let sections: Mapping = sections.into_iter().map(|(k, v)| (Value::String(k), Value::Mapping(v))).collect();
    root.insert("sections".into(), Value::Mapping(sections));
    serde_yaml::to_string(&root).map_err(|e| e.to_string())
}

fn read_yaml(path: &Path) -> Result<Value, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}
