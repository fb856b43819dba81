//! Which engine files may load. The engines directory lies under the file server's root
//! by default, so anyone who may upload files could otherwise become an engine, receive
//! every machine token in every agent spec, and even take the place of the native
//! `docker` engine. `engine-sha256` names the files an operator vouches for.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use sha2::{Digest as _, Sha256};

use crate::params::ENGINE_SHA256;
use crate::provider::BUNDLED_ENGINES;

/// The engines this binary carries (what `unpack` writes), by name: vouched for by
/// whoever built the plugin, so never refused.
static BUNDLED: LazyLock<BTreeMap<&'static str, String>> =
    LazyLock::new(|| BUNDLED_ENGINES.iter().map(|(name, bytes)| (*name, hex::encode(Sha256::digest(bytes)))).collect());

/// Whether the file of engine `name`, whose SHA-256 is `sha256`, may load. `listed` is
/// `engine-sha256` (None when unset); `native` whether a native engine has that name.
pub fn admit(name: &str, sha256: &str, listed: Option<&BTreeMap<String, String>>, native: bool) -> Result<(), String> {
    if BUNDLED.get(name).is_some_and(|bundled| bundled == sha256) {
        return Ok(());
    }
    match listed.map(|listed| listed.get(name)) {
        Some(Some(wanted)) if wanted == sha256 => Ok(()),
        Some(Some(wanted)) => Err(format!("its file's SHA-256 is {sha256}, but {ENGINE_SHA256} lists {wanted} for it: refused")),
        Some(None) => Err(format!("it is not listed in {ENGINE_SHA256} (its file's SHA-256 is {sha256}): refused")),
        None if native => Err(format!(
            "it would take the place of the native engine '{name}', which a WASM engine may do only when {ENGINE_SHA256} lists it (its file's SHA-256 is {sha256}): refused"
        )),
        None => Ok(()),
    }
}

/// The SHA-256 of every engine file in `dir`, by engine name: what an operator vouches
/// for with `engine-sha256`.
pub fn digests(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    super::directory::list(dir)
        .into_iter()
        .map(|(name, (path, _))| match std::fs::read(&path) {
            Ok(bytes) => Ok((name, hex::encode(Sha256::digest(bytes)))),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vouched_for_files_load() {
        let digest = "ab".repeat(32);
        let listed: BTreeMap<String, String> = [("mine".to_string(), digest.clone())].into();
        assert_eq!(admit("mine", &digest, Some(&listed), false), Ok(()));
        assert!(admit("mine", &"cd".repeat(32), Some(&listed), false).unwrap_err().contains(&digest));
        assert!(admit("other", &digest, Some(&listed), false).unwrap_err().contains("not listed"));
        assert_eq!(admit("other", &digest, None, false), Ok(()));
        assert!(admit("docker", &digest, None, true).unwrap_err().contains("native engine 'docker'"));
        let docker: BTreeMap<String, String> = [("docker".to_string(), digest.clone())].into();
        assert_eq!(admit("docker", &digest, Some(&docker), true), Ok(()));
    }

    #[test]
    fn bundled_engines_load_under_any_list() {
        for (name, bytes) in BUNDLED_ENGINES {
            let digest = hex::encode(Sha256::digest(bytes));
            assert_eq!(admit(name, &digest, Some(&BTreeMap::new()), false), Ok(()));
        }
    }
}
