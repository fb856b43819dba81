//! Per-world copies of the fixture archives, each holding an image of its own.
//!
//! Parallel tests load the same fixtures into one runtime. Were they one image, the
//! tests would share an image id and a loaded name (`ce-test/plain:1`), and Podman 4's
//! image store loses a tag that lands while another load of the same id commits (its
//! containers/image sets the whole name list it read earlier). A test must only see its
//! own doings, so every world's archives get a label of its own (a new config, hence a
//! new image id) and a repository name of its own; the layers stay shared.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Copies the `docker save` archive `src` (plain or gzipped, as its name says) to `dst`,
/// with `world` as a label of the image and a suffix of its repository names.
pub fn copy_for_world(src: &Path, dst: &Path, world: &str) -> anyhow::Result<()> {
    let gzipped = src.extension().is_some_and(|e| e == "gz");
    let raw = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let tar = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out)?;
        out
    } else {
        raw
    };
    let rewritten = rewrite(&tar, world).with_context(|| format!("rewriting {}", src.display()))?;
    let bytes = if gzipped {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&rewritten)?;
        gz.finish()?
    } else {
        rewritten
    };
    std::fs::write(dst, bytes).with_context(|| format!("writing {}", dst.display()))
}

fn rewrite(tar: &[u8], world: &str) -> anyhow::Result<Vec<u8>> {
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut headers = std::collections::HashMap::new();
    for entry in tar::Archive::new(tar).entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        headers.insert(path.clone(), entry.header().clone());
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        entries.push((path, data));
    }
    // The fixtures come from dockerd 20.10: the legacy layout. Docker 25+ also writes an
    // OCI index.json pointing at the config this rewrites; refuse rather than mislead.
    if entries.iter().any(|(p, _)| p == "index.json") {
        bail!("an OCI-layout archive (index.json); only the legacy docker save layout is rewritten");
    }
    let manifest_at = entries.iter().position(|(p, _)| p == "manifest.json").context("no manifest.json")?;
    let mut manifest: Value = serde_json::from_slice(&entries[manifest_at].1)?;
    let Some(images) = manifest.as_array_mut() else { bail!("manifest.json is not a list") };
    for image in images {
        let config_path = image["Config"].as_str().context("manifest entry without Config")?.to_string();
        let at = entries.iter().position(|(p, _)| *p == config_path).with_context(|| format!("no {config_path}"))?;
        let mut config: Value = serde_json::from_slice(&entries[at].1)?;
        config["config"]["Labels"] = json!({ "ce-test.world": world });
        let bytes = serde_json::to_vec(&config)?;
        let new_path = format!("{}.json", hex::encode(Sha256::digest(&bytes)));
        entries[at] = (new_path.clone(), bytes);
        image["Config"] = json!(new_path);
        if let Some(tags) = image["RepoTags"].as_array_mut() {
            for tag in tags {
                let renamed = tag.as_str().and_then(|t| t.rsplit_once(':')).map(|(repo, tag)| format!("{repo}-{world}:{tag}"));
                if let Some(renamed) = renamed {
                    *tag = json!(renamed);
                }
            }
        }
    }
    entries[manifest_at].1 = serde_json::to_vec(&manifest)?;
    // `repositories` is the pre-1.10 index; manifest.json supersedes it for every loader.
    entries.retain(|(p, _)| p != "repositories");

    let mut out = tar::Builder::new(Vec::new());
    for (path, data) in &entries {
        // The original header (type, mode, times) where there was one; the config is new.
        let mut header = headers.get(path).cloned().unwrap_or_else(|| {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header
        });
        header.set_size(data.len() as u64);
        out.append_data(&mut header, path, data.as_slice())?;
    }
    Ok(out.into_inner()?)
}
