//! A loopback TCP proxy in front of a runtime's Engine API, for WASM engines (which speak
//! HTTP over TCP), that misbehaves on image loads only: it either stops reading the
//! upload (a runtime whose disk is full, or that wedged mid-import) or passes it through
//! and holds the answer back (Podman spooling and then importing a large archive).
//! wasi:http opens a connection per request, so the first request of a connection is the
//! one to look at.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::stall_proxy::read_request_line;

/// What happens to a `POST …/images/load`.
#[derive(Debug, Clone, Copy)]
pub enum OnLoad {
    /// The request's head is read, then nothing more, and nothing is answered.
    StopReading,
    /// The request goes through; the runtime's answer is held back this long.
    HoldAnswer(Duration),
}

pub struct LoadProxy {
    port: u16,
    loads: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl LoadProxy {
    /// Listens on a free loopback port and forwards to `target` (`host:port`).
    pub async fn start(target: &str, on_load: OnLoad) -> anyhow::Result<LoadProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let loads = Arc::new(AtomicUsize::new(0));
        let (count, target) = (Arc::clone(&loads), target.to_string());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (count, target) = (Arc::clone(&count), target.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &target, on_load, &count).await;
                });
            }
        });
        Ok(LoadProxy { port, loads, task })
    }

    /// `127.0.0.1:port`, for an engine's `base-url` and `allowed-hosts`.
    pub fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Image loads seen so far.
    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

impl Drop for LoadProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut client: TcpStream, target: &str, on_load: OnLoad, loads: &AtomicUsize) -> std::io::Result<()> {
    let Some((head, line)) = read_request_line(&mut client).await? else { return Ok(()) };
    let mut buf = [0u8; 4096];
    let mut upstream = TcpStream::connect(target).await?;
    if !(line.starts_with("POST ") && line.contains("/images/load")) {
        upstream.write_all(&head).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    loads.fetch_add(1, Ordering::SeqCst);
    match on_load {
        OnLoad::StopReading => {
            // Hold the connection open, reading nothing more: once the socket buffers
            // are full, the client's writes block.
            tokio::time::sleep(Duration::from_secs(600)).await;
            drop(client);
            Ok(())
        }
        OnLoad::HoldAnswer(hold) => {
            upstream.write_all(&head).await?;
            let (mut client_read, mut client_write) = client.into_split();
            let (mut upstream_read, mut upstream_write) = upstream.into_split();
            let up = tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut upstream_write).await });
            let n = upstream_read.read(&mut buf).await?;
            tokio::time::sleep(hold).await;
            client_write.write_all(&buf[..n]).await?;
            tokio::io::copy(&mut upstream_read, &mut client_write).await?;
            up.abort();
            Ok(())
        }
    }
}
