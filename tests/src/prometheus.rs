//! A real Prometheus (Debian's `prometheus` package, installed by scripts/runtimes.sh)
//! scraping the plugin's metrics listener on loopback, and plain HTTP GETs of that
//! listener. The test starts its own Prometheus, with its own config and storage under
//! the test's scratch dir, because only the test knows which port the plugin got.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A loopback address with a port nobody listens on right now.
pub fn free_loopback() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?)
}

/// `GET http://{at}{path}`: status and body.
pub async fn get(at: SocketAddr, path_and_query: &str) -> anyhow::Result<(u16, String)> {
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = format!("http://{at}{path_and_query}").parse()?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(uri.clone()))
        .await
        .with_context(|| format!("GET {uri} timed out"))?
        .with_context(|| format!("GET {uri}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub struct Prometheus {
    child: Child,
    pub address: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second as job `context-engines`, and
    /// waits until it is ready.
    pub async fn start(target: SocketAddr, dir: &Path) -> anyhow::Result<Prometheus> {
        ensure!(Path::new(PROMETHEUS).is_file(), "{PROMETHEUS} is missing: scripts/runtimes.sh installs Debian's prometheus package");
        std::fs::create_dir_all(dir.join("data"))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: context-engines\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let address = free_loopback()?;
        let log = dir.join("prometheus.log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {PROMETHEUS}"))?;
        let prometheus = Prometheus { child, address, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if matches!(get(address, "/-/ready").await, Ok((200, _))) {
                return Ok(prometheus);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Prometheus did not become ready within 60 s: {}", prometheus.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The value of an instant query whose result is one sample (`sum(…)`, `up{…}`);
    /// `None` while it has no sample.
    pub async fn value(&self, query: &str) -> anyhow::Result<Option<f64>> {
        let encoded: String = form_urlencoded::byte_serialize(query.as_bytes()).collect();
        let (status, body) = get(self.address, &format!("/api/v1/query?query={encoded}")).await?;
        ensure!(status == 200, "Prometheus answered {status} to {query}: {body}");
        let answer: Value = serde_json::from_str(&body)?;
        let results = answer["data"]["result"].as_array().cloned().unwrap_or_default();
        ensure!(results.len() <= 1, "{query} has {} series, expected one: {body}", results.len());
        let Some(sample) = results.first() else { return Ok(None) };
        let text = sample["value"][1].as_str().context("a sample without a value")?;
        Ok(Some(text.parse()?))
    }

    /// Waits until `query`'s value is `want`.
    pub async fn wait_for(&self, query: &str, want: f64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let value = self.value(query).await?;
            if value == Some(want) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Prometheus: {query} is {value:?} after {timeout:?}, wanted {want}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
