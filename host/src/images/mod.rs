//! Image archives: where they come from (URL, file server, RS_WEBROOT), how they reach an
//! engine (streamed, gunzipped on the way, never whole in memory), checksums, and merging
//! concurrent loads of one image into one.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_compression::tokio::bufread::GzipDecoder;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

pub mod gc;
pub mod ledger;
mod reference;
pub mod trust;

use ledger::Ledger;
pub use reference::{ImageRef, check_reference};
use trust::DownloadTrust;

use crate::engine::{ArchiveStream, Engine, EngineError};
use crate::environment::Environment;

/// The tag that records "this image was loaded from the archive with this sha256". It
/// lives in the runtime beside the image, so it survives plugin restarts.
const CHECKSUM_MARKER_REPO: &str = "context-engines-archive";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image path '{path}' is not acceptable: {why}")]
    BadPath { path: String, why: String },
    #[error("downloading image archive {url} failed: {cause}")]
    Download { url: String, cause: String },
    #[error(
        "downloading image archive {url} failed: the certificate of {host} is not trusted ({why}); to download from it anyway, list '{host}' in {param}",
        param = crate::params::INSECURE_HOSTS
    )]
    Untrusted { url: String, host: String, why: String },
    #[error("image archive {source_name} is larger than {param} allows ({limit_mb} MiB): refused", param = crate::params::MAX_ARCHIVE_MB)]
    TooLarge { source_name: String, limit_mb: u64 },
    #[error("spooling image archive {source_name} would leave {dir} with less than {reserve_mib} MiB free ({free_mib} MiB free, the archive is {size}): refused", reserve_mib = SPOOL_RESERVE >> 20)]
    NoSpace { source_name: String, dir: String, free_mib: u64, size: String },
    #[error("reading image archive {path} failed: {cause}")]
    Read { path: String, cause: String },
    #[error("image archive {source_name} has sha256 {actual}, but the Context's Checksum is {expected}: rejected")]
    ChecksumMismatch { source_name: String, expected: String, actual: String },
    #[error("Checksum '{0}' is not a sha256 (64 hex digits, optionally prefixed 'sha256:')")]
    BadChecksum(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Shared(Arc<ImageError>),
    #[error("the image load stopped abnormally: {0}")]
    Aborted(String),
}

impl ImageError {
    /// Retrying cannot help until something changes (the Context, the file, the
    /// params): the next event or resync tries again.
    pub fn is_permanent(&self) -> bool {
        match self {
            ImageError::BadPath { .. }
            | ImageError::BadChecksum(_)
            | ImageError::ChecksumMismatch { .. }
            | ImageError::Untrusted { .. }
            | ImageError::TooLarge { .. } => true,
            ImageError::Engine(EngineError::Misconfigured { .. }) => true,
            ImageError::Shared(inner) => inner.is_permanent(),
            ImageError::Download { .. }
            | ImageError::Read { .. }
            | ImageError::NoSpace { .. }
            | ImageError::Engine(_)
            | ImageError::Aborted(_) => false,
        }
    }
}

/// Spooled archives a crashed earlier run left behind: no load of this process can be
/// using them yet, and each may be gigabytes.
fn remove_leftover_spool(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("archive-") && name.ends_with(".tar") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!("removed {name}, spooled by an earlier run"),
                Err(e) => tracing::warn!("cannot remove {name}, spooled by an earlier run: {e}"),
            }
        }
    }
}

/// Where an archive is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSource {
    Url(String),
    File(PathBuf),
}

impl ArchiveSource {
    fn describe(&self) -> String {
        match self {
            ArchiveSource::Url(url) => url.clone(),
            ArchiveSource::File(path) => path.display().to_string(),
        }
    }
}

type MergedLoad = Shared<BoxFuture<'static, Result<(), Arc<ImageError>>>>;

/// Free space a spool must leave on its filesystem: the plugin is not the only thing
/// on the dr-provision host that needs disk.
const SPOOL_RESERVE: u64 = 1 << 30;

pub struct Images {
    env: Environment,
    http: reqwest::Client,
    trust: Arc<DownloadTrust>,
    /// `max-archive-mb` in bytes, for the archive as read and as the engine gets it.
    max_archive_bytes: AtomicU64,
    /// Every image this plugin loaded: image GC's only candidates.
    pub ledger: Ledger,
    spool_dir: PathBuf,
    in_flight: Mutex<HashMap<String, MergedLoad>>,
    /// One archive at a time into each engine. A load is "load, then tag what the
    /// runtime says it loaded" (an archive names its own image), and two loads whose
    /// archives name the same image would otherwise each tag the other's.
    engine_turns: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    pub fn new(env: Environment, spool_dir: PathBuf, ledger: PathBuf) -> Result<Images, reqwest::Error> {
        let trust = Arc::new(DownloadTrust::from_system());
        // No overall timeout: archives are large. Connect and idle stalls still fail.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(trust.client_config())
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(120))
            .build()?;
        remove_leftover_spool(&spool_dir);
        Ok(Images {
            env,
            http,
            trust,
            max_archive_bytes: AtomicU64::new(crate::params::DEFAULT_MAX_ARCHIVE_MB << 20),
            ledger: Ledger::open(ledger),
            spool_dir,
            in_flight: Mutex::new(HashMap::new()),
            engine_turns: Mutex::new(HashMap::new()),
        })
    }

    pub fn configure(&self, settings: &crate::params::Settings) {
        self.trust.set_insecure_hosts(&settings.insecure_hosts);
        self.max_archive_bytes.store(settings.max_archive_mb.saturating_mul(1 << 20), Ordering::Relaxed);
    }

    /// `context/image-path` → a source: an http(s) URL, or a path relative to the file
    /// server, read from RS_WEBROOT when the file is there and fetched otherwise.
    pub fn resolve(&self, image_path: &str) -> Result<ArchiveSource, ImageError> {
        if image_path.starts_with("http://") || image_path.starts_with("https://") {
            return Ok(ArchiveSource::Url(image_path.to_string()));
        }
        let relative = checked_relative(image_path)?;
        if let Some(root) = &self.env.webroot {
            let candidate = root.join(&relative);
            if candidate.is_file() {
                return Ok(ArchiveSource::File(inside_root(root, &candidate, image_path)?));
            }
        }
        match &self.env.fileserver {
            Some(server) => Ok(ArchiveSource::Url(format!("{server}/{}", relative.display()))),
            None => Err(ImageError::BadPath {
                path: image_path.to_string(),
                why: "it is relative to the file server, but it is not under RS_WEBROOT and RS_FILESERVER is not set".to_string(),
            }),
        }
    }

    /// Loads `source` into `engine` as `image`, merging with a load of the same archive
    /// as the same image already under way. A load of that image from another source or
    /// with another checksum is a load of its own (verified on its own, so a mismatch is
    /// rejected), which waits for the engine's turn. With a checksum the archive is
    /// verified before the engine sees a byte of it.
    pub async fn load(
        self: &Arc<Self>,
        engine: Arc<dyn Engine>,
        image: &str,
        source: ArchiveSource,
        checksum: Option<String>,
    ) -> Result<(), ImageError> {
        let key = [engine.name(), image, &source.describe(), checksum.as_deref().unwrap_or_default()].join("\u{0}");
        let merged = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight
                .entry(key.clone())
                .or_insert_with(|| {
                    let this = Arc::clone(self);
                    let image = image.to_string();
                    // A task of its own: the load runs to its end (and gives the engine's
                    // turn back) even when every caller waiting for it has given up.
                    let (owner, done_key) = (Arc::clone(self), key.clone());
                    let task = tokio::spawn(async move {
                        let result = this.load_now(engine.as_ref(), &image, &source, checksum.as_deref()).await;
                        this.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                        result.map_err(Arc::new)
                    });
                    async move {
                        task.await.unwrap_or_else(|e| {
                            // The task died (a panic) before forgetting itself: forget it
                            // here, so the next load of this image starts afresh.
                            owner.in_flight.lock().unwrap_or_else(|p| p.into_inner()).remove(&done_key);
                            Err(Arc::new(ImageError::Aborted(e.to_string())))
                        })
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        merged.await.map_err(ImageError::Shared)
    }

    async fn load_now(&self, engine: &dyn Engine, image: &str, source: &ArchiveSource, checksum: Option<&str>) -> Result<(), ImageError> {
        tracing::info!(engine = engine.name(), image, source = %source.describe(), "loading image archive");
        let expected = checksum.map(normalize_checksum).transpose()?;
        // A download, or an archive with a checksum, is spooled to disk first (hashed on
        // the way), so an engine's turn is never spent waiting on the network and only a
        // verified archive reaches it. A local file without a checksum is read in place.
        let spooled = match (source, &expected) {
            (ArchiveSource::File(_), None) => None,
            _ => Some(self.spool(source, expected.as_deref()).await?),
        };
        let result = async {
            let _turn = self.engine_turn(engine.name()).await;
            let raw = match &spooled {
                Some(path) => self.open(&ArchiveSource::File(path.clone())).await?,
                None => self.open(source).await?,
            };
            // Bounded as read and as unpacked: a small gzip can unpack to anything.
            let limit = self.limit(source);
            let archive = limit.bound(gunzip(limit.bound(raw.stream)).await?);
            engine.image_load(image, archive).await.map_err(|e| limit.explain(e.into()))?;
            if let Some(expected) = &expected {
                engine.image_tag(image, &checksum_marker(expected)).await?;
            }
            // Recorded before the marker is set: a load whose marker failed is still
            // ours, and GC forgets (never removes) an image whose marker does not match.
            self.ledger.record(engine.name(), image);
            engine.image_tag(image, &ledger::marker(image)).await?;
            Ok(())
        }
        .await;
        if let Some(path) = &spooled {
            let _ = tokio::fs::remove_file(path).await;
        }
        result
    }

    async fn engine_turn(&self, engine: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut turns = self.engine_turns.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(turns.entry(engine.to_string()).or_default())
        };
        turn.lock_owned().await
    }

    /// True when `image` is the very image that was loaded from an archive of `checksum`.
    pub async fn loaded_from(&self, engine: &dyn Engine, image: &str, checksum: &str) -> Result<bool, ImageError> {
        let marker = checksum_marker(&normalize_checksum(checksum)?);
        let (image_id, marker_id) = (engine.image_id(image).await?, engine.image_id(&marker).await?);
        Ok(image_id.is_some() && image_id == marker_id)
    }

    /// Removes `image` and the marker its load left, and forgets the load: a marker
    /// left behind would keep the image's layers on disk.
    pub async fn remove(&self, engine: &dyn Engine, image: &str) -> Result<(), EngineError> {
        engine.image_remove(image).await?;
        let marker = ledger::marker(image);
        if let Err(e) = engine.image_remove(&marker).await {
            // The marker was the image's last name and a container uses the image: the
            // runtime keeps it (removals are never forced). Give the name back, so the
            // image is as it was and still counted as ours.
            if let Err(back) = engine.image_tag(&marker, image).await {
                tracing::warn!("removing {image}: its marker stayed ({e}) and naming it {image} again failed: {back}");
            }
            return Err(e);
        }
        self.ledger.forget(engine.name(), image);
        Ok(())
    }

    fn limit(&self, source: &ArchiveSource) -> Limit {
        Limit { max: self.max_archive_bytes.load(Ordering::Relaxed), source_name: source.describe(), exceeded: Arc::default() }
    }

    async fn open(&self, source: &ArchiveSource) -> Result<Opened, ImageError> {
        match source {
            ArchiveSource::File(path) => {
                let file = tokio::fs::File::open(path).await.map_err(|e| read_error(path, e))?;
                let size = file.metadata().await.ok().map(|m| m.len());
                Ok(Opened { stream: Box::pin(ReaderStream::new(file)), size })
            }
            ArchiveSource::Url(url) => {
                let response = self.http.get(url).send().await.map_err(|e| self.download_error(url, e))?;
                if !response.status().is_success() {
                    return Err(ImageError::Download { url: url.clone(), cause: format!("HTTP {}", response.status()) });
                }
                let size = response.content_length();
                Ok(Opened { stream: Box::pin(response.bytes_stream().map_err(std::io::Error::other)), size })
            }
        }
    }

    /// A refused certificate is told as such, naming the param that would let it pass:
    /// the HTTP client's own text says only that sending failed.
    fn download_error(&self, url: &str, error: reqwest::Error) -> ImageError {
        let host = error.url().and_then(|u| u.host_str()).unwrap_or(url).trim_start_matches('[').trim_end_matches(']').to_string();
        match crate::tls::certificate_problem(&error) {
            Some(why) if !self.trust.is_insecure(&host) => ImageError::Untrusted { url: url.to_string(), host, why },
            _ => ImageError::Download { url: url.to_string(), cause: crate::tls::error_chain(&error.without_url()) },
        }
    }

    /// Copies `source` to a spool file while hashing it; with `expected`, only an archive
    /// of that sha256 is kept.
    async fn spool(&self, source: &ArchiveSource, expected: Option<&str>) -> Result<PathBuf, ImageError> {
        static SPOOLED: AtomicU64 = AtomicU64::new(0);
        let opened = self.open(source).await?;
        tokio::fs::create_dir_all(&self.spool_dir).await.map_err(|e| read_error(&self.spool_dir, e))?;
        let limit = self.limit(source);
        if opened.size.is_some_and(|size| size > limit.max) {
            return Err(limit.refusal());
        }
        self.check_free_space(source, opened.size)?;
        let mut raw = limit.bound(opened.stream);
        let n = SPOOLED.fetch_add(1, Ordering::Relaxed);
        let path = self.spool_dir.join(format!("archive-{}-{n}.tar", std::process::id()));
        let mut file = tokio::fs::File::create(&path).await.map_err(|e| read_error(&path, e))?;
        let mut hasher = Sha256::new();
        let copied = async {
            while let Some(chunk) = raw.next().await {
                let chunk = chunk.map_err(|e| read_error(Path::new(&source.describe()), e))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| read_error(&path, e))?;
            }
            file.flush().await.map_err(|e| read_error(&path, e))
        }
        .await;
        let actual = hex::encode(hasher.finalize());
        let mismatch = expected.filter(|expected| *expected != actual);
        if copied.is_err() || mismatch.is_some() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        copied.map_err(|e| limit.explain(e))?;
        if let Some(expected) = mismatch {
            return Err(ImageError::ChecksumMismatch { source_name: source.describe(), expected: expected.to_string(), actual });
        }
        Ok(path)
    }

    fn check_free_space(&self, source: &ArchiveSource, size: Option<u64>) -> Result<(), ImageError> {
        let Ok(stat) = rustix::fs::statvfs(&self.spool_dir) else { return Ok(()) };
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        if free.saturating_sub(size.unwrap_or(0)) >= SPOOL_RESERVE {
            return Ok(());
        }
        Err(ImageError::NoSpace {
            source_name: source.describe(),
            dir: self.spool_dir.display().to_string(),
            free_mib: free >> 20,
            size: size.map_or_else(|| "of unknown size".to_string(), |size| format!("{} MiB", size >> 20)),
        })
    }
}

/// An archive opened for reading, with its size when the source tells it.
struct Opened {
    stream: ArchiveStream,
    size: Option<u64>,
}

/// `max-archive-mb` applied to one load's streams.
struct Limit {
    max: u64,
    source_name: String,
    /// Set when a stream went over, so an engine's or a write's error that followed is
    /// reported as what it was.
    exceeded: Arc<AtomicBool>,
}

impl Limit {
    /// `stream`, failing once more than the limit has passed through it.
    fn bound(&self, stream: ArchiveStream) -> ArchiveStream {
        let (max, exceeded) = (self.max, Arc::clone(&self.exceeded));
        let mut seen: u64 = 0;
        Box::pin(stream.map(move |chunk| {
            let chunk = chunk?;
            seen = seen.saturating_add(chunk.len() as u64);
            if seen > max {
                exceeded.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other(format!("the archive is larger than {} MiB", max >> 20)));
            }
            Ok(chunk)
        }))
    }

    fn refusal(&self) -> ImageError {
        ImageError::TooLarge { source_name: self.source_name.clone(), limit_mb: self.max >> 20 }
    }

    fn explain(&self, error: ImageError) -> ImageError {
        if self.exceeded.load(Ordering::Relaxed) { self.refusal() } else { error }
    }
}

fn read_error(path: &Path, e: std::io::Error) -> ImageError {
    ImageError::Read { path: path.display().to_string(), cause: e.to_string() }
}

/// Gunzips on the fly when the stream starts with the gzip magic; Podman 4.3 refuses
/// compressed archives, so engines always get a plain tar.
pub async fn gunzip(raw: ArchiveStream) -> Result<ArchiveStream, ImageError> {
    let mut reader = BufReader::with_capacity(64 * 1024, StreamReader::new(raw));
    let head = reader.fill_buf().await.map_err(|e| ImageError::Read { path: "archive".to_string(), cause: e.to_string() })?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = GzipDecoder::new(reader);
        decoder.multiple_members(true);
        Ok(Box::pin(ReaderStream::with_capacity(decoder, 64 * 1024)))
    } else {
        Ok(Box::pin(ReaderStream::with_capacity(reader, 64 * 1024)))
    }
}

fn normalize_checksum(checksum: &str) -> Result<String, ImageError> {
    crate::tls::parse_sha256(checksum).map_err(|_| ImageError::BadChecksum(checksum.to_string()))
}

fn checksum_marker(hex: &str) -> String {
    format!("{CHECKSUM_MARKER_REPO}:{hex}")
}

/// A relative path with no `..`, no root and no empty remainder: `files/../../etc` must
/// never leave the file server's root.
fn checked_relative(image_path: &str) -> Result<PathBuf, ImageError> {
    let bad = |why: &str| ImageError::BadPath { path: image_path.to_string(), why: why.to_string() };
    let trimmed = image_path.trim_start_matches('/');
    if trimmed.is_empty() {
        return Err(bad("it is empty"));
    }
    let mut clean = PathBuf::new();
    for component in Path::new(trimmed).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(bad("it contains '..' and could escape the file server root")),
            Component::RootDir | Component::Prefix(_) => return Err(bad("it must be relative to the file server")),
        }
    }
    Ok(clean)
}

/// Symlinks under the webroot must not lead out of it either.
fn inside_root(root: &Path, candidate: &Path, image_path: &str) -> Result<PathBuf, ImageError> {
    let resolved = candidate.canonicalize().map_err(|e| read_error(candidate, e))?;
    let root = root.canonicalize().map_err(|e| read_error(root, e))?;
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(ImageError::BadPath { path: image_path.to_string(), why: "it resolves outside RS_WEBROOT".to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["files/../../etc/passwd", "..", "", "files/a/../../../x"] {
            assert!(checked_relative(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(checked_relative("files/contexts/x.tar").expect("plain path"), PathBuf::from("files/contexts/x.tar"));
        assert_eq!(checked_relative("/files/./a").expect("leading slash"), PathBuf::from("files/a"));
    }

    #[test]
    fn checksums_accept_prefix_and_case() {
        let hex = "AB".repeat(32);
        assert_eq!(normalize_checksum(&format!("sha256:{hex}")).expect("valid"), hex.to_lowercase());
        assert!(normalize_checksum("abc").is_err());
    }

    #[tokio::test]
    async fn gzip_is_detected_and_decoded_on_the_fly() {
        use async_compression::tokio::write::GzipEncoder;
        let plain = b"not really a tar, but bytes".repeat(1000);
        let mut encoder = GzipEncoder::new(Vec::new());
        encoder.write_all(&plain).await.expect("encode");
        encoder.shutdown().await.expect("finish");
        let gz = encoder.into_inner();
        for input in [gz, plain.clone()] {
            let raw: ArchiveStream =
                Box::pin(futures_util::stream::iter(input.chunks(7).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>()));
            let out: Vec<u8> = gunzip(raw)
                .await
                .expect("open")
                .try_fold(Vec::new(), |mut acc, c| async move {
                    acc.extend_from_slice(&c);
                    Ok(acc)
                })
                .await
                .expect("read");
            assert_eq!(out, plain);
        }
    }

    #[test]
    fn archives_spooled_by_a_crashed_run_are_removed_at_start() {
        let dir = std::env::temp_dir().join(format!("ce-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("archive-1-0.tar"), b"left over").expect("write");
        std::fs::write(dir.join("keep.txt"), b"not ours").expect("write");
        Images::new(Environment::default(), dir.clone(), dir.join("ledger.json")).expect("images");
        assert!(!dir.join("archive-1-0.tar").exists());
        assert!(dir.join("keep.txt").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
