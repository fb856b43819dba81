//! A unix-socket proxy in front of a real runtime that can be told to stall container
//! listings: every other request goes through untouched, `GET …/containers/json` on a
//! fresh connection is read and never answered (the everyday "docker ps hangs",
//! moby#46661). The plugin lists over a connection of its own per listing, so the first
//! request of a connection is the one to look at.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

pub struct StallProxy {
    path: PathBuf,
    stall: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// Listens on `path` and forwards to the runtime socket `target`.
    pub fn start(path: &Path, target: &Path) -> anyhow::Result<StallProxy> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let stall = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicUsize::new(0));
        let (flag, count, target) = (Arc::clone(&stall), Arc::clone(&stalled), target.to_path_buf());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (flag, count, target) = (Arc::clone(&flag), Arc::clone(&count), target.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &target, &flag, &count).await;
                });
            }
        });
        Ok(StallProxy { path: path.to_path_buf(), stall, stalled, task })
    }

    /// `unix://…`, for an engine's `host`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    pub fn set_stall(&self, stall: bool) {
        self.stall.store(stall, Ordering::SeqCst);
    }

    /// Listings held so far.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(mut client: UnixStream, target: &Path, stall: &AtomicBool, stalled: &AtomicUsize) -> std::io::Result<()> {
    let Some((head, line)) = read_request_line(&mut client).await? else { return Ok(()) };
    let mut buf = [0u8; 4096];
    if stall.load(Ordering::SeqCst) && line.starts_with("GET ") && line.contains("/containers/json") {
        stalled.fetch_add(1, Ordering::SeqCst);
        // Hold the connection open, reading and answering nothing, until the client
        // gives up.
        while client.read(&mut buf).await? > 0 {}
        return Ok(());
    }
    let mut upstream = UnixStream::connect(target).await?;
    upstream.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Reads a connection's first bytes up to the end of its request line: what was read
/// (to forward as it is) and the line. `None` when the client closed first.
pub async fn read_request_line(client: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Option<(Vec<u8>, String)>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head[..head.windows(2).position(|w| w == b"\r\n").unwrap_or(0)]).to_string();
    Ok(Some((head, line)))
}
