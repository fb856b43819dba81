//! The kit's own images, made on the spot so an author needs no registry and no image
//! tooling: `docker save` archives of one layer holding a 592-byte static agent
//! (`agent.s`), a marker file that makes each image distinct, and for the large-archive
//! check a file of zeros streamed, never held, so a 1 GiB archive costs no memory.

use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::engine::ArchiveStream;

/// x86-64 Linux, static, no libc: see `agent.s` for what it does and how it is built.
pub const AGENT: &[u8] = include_bytes!("agent.bin");
/// The lines the agent prints, in order (the third on stderr).
pub const AGENT_LINES: [&str; 3] = ["conformance-agent: line 1", "conformance-agent: line 2", "conformance-agent: line 3 on stderr"];
/// Where the agent lives in its image; the image's entrypoint.
pub const AGENT_PATH: &str = "/agent";

const BLOCK: usize = 512;
const CHUNK: usize = 1024 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// One test image: `reference` names it in the archive, `marker` makes it an image of
/// its own, `zeros` bytes of padding make it large.
#[derive(Debug, Clone)]
pub struct TestImage {
    pub reference: String,
    pub marker: String,
    pub zeros: u64,
}

/// A file of the layer, its content given or `len` zeros.
enum Content<'a> {
    Bytes(&'a [u8]),
    Zeros(u64),
}

impl TestImage {
    pub fn new(reference: &str, marker: &str) -> TestImage {
        TestImage { reference: reference.to_string(), marker: marker.to_string(), zeros: 0 }
    }

    pub fn large(reference: &str, marker: &str, zeros: u64) -> TestImage {
        TestImage { zeros, ..TestImage::new(reference, marker) }
    }

    /// The archive, streamed in chunks of at most 1 MiB.
    pub fn archive(&self) -> ArchiveStream {
        let parts = self.parts();
        Box::pin(stream::iter(parts.into_iter().flat_map(Part::chunks)).map(Ok))
    }

    /// The archive in memory (for small images only).
    pub fn bytes(&self) -> Vec<u8> {
        assert!(self.zeros <= 64 * 1024 * 1024, "a large test image is streamed, never collected");
        self.parts().into_iter().flat_map(|p| p.chunks()).flat_map(|b| b.to_vec()).collect()
    }

    /// Total archive size in bytes.
    pub fn size(&self) -> u64 {
        self.parts().iter().map(Part::len).sum()
    }

    fn files(&self) -> Vec<(&'static str, u32, Content<'_>)> {
        let mut files = vec![("agent", 0o755, Content::Bytes(AGENT)), ("marker", 0o644, Content::Bytes(self.marker.as_bytes()))];
        if self.zeros > 0 {
            files.push(("zeros", 0o644, Content::Zeros(self.zeros)));
        }
        files
    }

    /// The archive as a list of parts: the layer tar is written in place inside the
    /// outer tar, the config and manifest (which name the layer's digest) after it.
    fn parts(&self) -> Vec<Part> {
        let layer = tar_parts(self.files());
        let layer_len: u64 = layer.iter().map(Part::len).sum();
        let diff_id = digest(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [AGENT_PATH], "Labels": {"context-engines.conformance": self.marker}},
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
            "history": [{"created_by": "context-engines engines test"}],
        }))
        .unwrap_or_default();
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let layer_name = format!("{diff_id}/layer.tar");
        let manifest =
            serde_json::to_vec(&json!([{"Config": config_name, "RepoTags": [self.reference], "Layers": [layer_name]}])).unwrap_or_default();
        let mut parts = vec![Part::Bytes(header(&layer_name, layer_len, 0o644).to_vec())];
        parts.extend(layer);
        parts.extend(tar_parts(vec![
            (config_name.as_str(), 0o644, Content::Bytes(&config)),
            ("manifest.json", 0o644, Content::Bytes(&manifest)),
        ]));
        parts
    }
}

/// A piece of an archive: bytes, or a run of zeros.
enum Part {
    Bytes(Vec<u8>),
    Zeros(u64),
}

impl Part {
    fn len(&self) -> u64 {
        match self {
            Part::Bytes(b) => b.len() as u64,
            Part::Zeros(n) => *n,
        }
    }

    fn chunks(self) -> Box<dyn Iterator<Item = Bytes> + Send> {
        match self {
            Part::Bytes(b) => Box::new(std::iter::once(Bytes::from(b))),
            Part::Zeros(n) => {
                let whole = n / CHUNK as u64;
                let rest = (n % CHUNK as u64) as usize;
                let full = std::iter::repeat_n(Bytes::from_static(&ZEROS), whole as usize);
                Box::new(full.chain((rest > 0).then(|| Bytes::from_static(&ZEROS[..rest]))))
            }
        }
    }
}

/// A tar of `files` (with its end-of-archive blocks), as parts.
fn tar_parts(files: Vec<(&str, u32, Content<'_>)>) -> Vec<Part> {
    let mut parts = Vec::new();
    for (path, mode, content) in files {
        let len = match &content {
            Content::Bytes(b) => b.len() as u64,
            Content::Zeros(n) => *n,
        };
        let mut head = header(path, len, mode).to_vec();
        match content {
            Content::Bytes(b) => {
                head.extend_from_slice(b);
                parts.push(Part::Bytes(head));
            }
            Content::Zeros(n) => {
                parts.push(Part::Bytes(head));
                parts.push(Part::Zeros(n));
            }
        }
        parts.push(Part::Zeros(padding(len)));
    }
    parts.push(Part::Zeros(2 * BLOCK as u64));
    parts
}

fn header(path: &str, len: u64, mode: u32) -> [u8; BLOCK] {
    let mut header = tar::Header::new_ustar();
    // Paths here are short ASCII names of our own making.
    let _ = header.set_path(path);
    header.set_size(len);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

fn padding(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

/// SHA-256 of `parts` in hex, zeros fed a chunk at a time.
fn digest(parts: &[Part]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        match part {
            Part::Bytes(b) => hasher.update(b),
            Part::Zeros(n) => {
                let mut left = *n;
                while left > 0 {
                    let take = left.min(CHUNK as u64) as usize;
                    hasher.update(&ZEROS[..take]);
                    left -= take as u64;
                }
            }
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_is_a_docker_save_tar_with_a_matching_diff_id() {
        let image = TestImage::large("conformance/agent:1", "a", 5000);
        let bytes = image.bytes();
        assert_eq!(bytes.len() as u64, image.size());
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut names = Vec::new();
        let mut layer = Vec::new();
        let mut manifest = Vec::new();
        for entry in archive.entries().expect("entries") {
            let mut entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name.ends_with("layer.tar") {
                std::io::Read::read_to_end(&mut entry, &mut layer).expect("layer");
            } else if name == "manifest.json" {
                std::io::Read::read_to_end(&mut entry, &mut manifest).expect("manifest");
            }
            names.push(name);
        }
        assert_eq!(names.len(), 3, "{names:?}");
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).expect("manifest json");
        assert_eq!(manifest[0]["RepoTags"][0], "conformance/agent:1");
        let layer_name = manifest[0]["Layers"][0].as_str().expect("layer name");
        assert_eq!(layer_name, format!("{}/layer.tar", hex::encode(Sha256::digest(&layer))));
        let files: Vec<(String, u64)> = tar::Archive::new(layer.as_slice())
            .entries()
            .expect("layer entries")
            .map(|e| {
                let e = e.expect("layer entry");
                (e.path().expect("path").display().to_string(), e.size())
            })
            .collect();
        assert_eq!(files, vec![("agent".to_string(), AGENT.len() as u64), ("marker".to_string(), 1), ("zeros".to_string(), 5000)]);
    }

    #[test]
    fn markers_make_images_of_their_own() {
        assert_ne!(TestImage::new("a:1", "x").bytes(), TestImage::new("a:1", "y").bytes());
        assert!(AGENT.starts_with(b"\x7fELF"));
    }
}
