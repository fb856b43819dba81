//! Runs the real `context-engines` binary in `listen` mode against a [`Sim`] and
//! speaks the dr-provision → plugin half of the provider protocol to it.

use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::sim::Sim;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The plugin binary under test: `$CONTEXT_ENGINES_BIN`, else the one cargo built
/// next to the test executable's `deps/` directory.
pub fn plugin_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONTEXT_ENGINES_BIN") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "CONTEXT_ENGINES_BIN={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let dir = exe.parent().expect("test binary has a parent directory");
    let candidates = [dir.join("../context-engines"), dir.join("context-engines")];
    for c in &candidates {
        if c.is_file() {
            return c.canonicalize().unwrap_or_else(|_| c.clone());
        }
    }
    panic!(
        "plugin binary not found at {} (build it with cargo build --release -p context-engines, \
         or set CONTEXT_ENGINES_BIN)",
        candidates[0].display()
    );
}

/// A running `context-engines listen` process.
pub struct Plugin {
    child: Option<Child>,
    to_sock: PathBuf,
    workdir: PathBuf,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    client: Client<UnixConnector, Full<Bytes>>,
}

impl Plugin {
    /// Starts the plugin and waits for its `READY!` line.
    pub async fn spawn(sim: &Sim, extra_env: &[(&str, &str)]) -> anyhow::Result<Plugin> {
        Self::spawn_bin(sim, &plugin_bin(), extra_env).await
    }

    /// Like [`Plugin::spawn`] with an explicit executable (e.g. an older build
    /// for upgrade tests, or a stand-in for testing the harness itself).
    pub async fn spawn_bin(sim: &Sim, bin: &Path, extra_env: &[(&str, &str)]) -> anyhow::Result<Plugin> {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let to_sock = sim.scratch().join(format!("to-plugin-{n}.sock"));
        let workdir = sim.scratch().join(format!("plugin-{n}"));
        std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;

        let mut child =
            plugin_command(bin, sim, &to_sock, &workdir, extra_env).spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = oneshot::channel();
        let out = child.stdout.take().context("plugin stdout pipe")?;
        let err = child.stderr.take().context("plugin stderr pipe")?;
        pump_lines(out, stdout.clone(), "[plugin stdout] ", Some(ready_tx));
        pump_lines(err, stderr.clone(), "[plugin] ", None);

        // Built before waiting so Drop kills the child on every error path below.
        let mut plugin = Plugin {
            child: Some(child),
            to_sock,
            workdir,
            stdout,
            stderr,
            client: Client::builder(TokioExecutor::new()).build(UnixConnector),
        };
        match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(plugin),
            Ok(Err(_)) => {
                let status = plugin.wait_exit(Duration::from_secs(2)).await;
                // Let the stderr pump drain the last lines, which usually say why.
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!("plugin closed stdout before READY! (exit: {status:?}); stderr:\n{}", plugin.stderr_text())
            }
            Err(_) => bail!("plugin did not print READY! within {READY_TIMEOUT:?}; stderr:\n{}", plugin.stderr_text()),
        }
    }

    /// The plugin's server socket (TO_PLUGIN_SOCK).
    pub fn to_sock(&self) -> &Path {
        &self.to_sock
    }

    /// The plugin's working directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub async fn config(&self, params: Value) -> anyhow::Result<(u16, Value)> {
        self.post_json("/api-plugin/v4/config", &params).await
    }

    pub async fn action(&self, model: Value, command: &str, params: Value) -> anyhow::Result<(u16, Value)> {
        let body = json!({
            "Model": model,
            "Plugin": "context-engines",
            "Command": command,
            "CommandSet": "",
            "Params": params,
        });
        self.post_json("/api-plugin/v4/action", &body).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        let (status, raw) = self.post_raw(path, Some("application/json"), body.to_string().into_bytes()).await?;
        let value = serde_json::from_slice(&raw)
            .with_context(|| format!("POST {path}: status {status}, body is not JSON: {:?}", String::from_utf8_lossy(&raw)))?;
        Ok((status, value))
    }

    /// POSTs arbitrary bytes, for malformed-input tests.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> anyhow::Result<(u16, Vec<u8>)> {
        // hyperlocal::Uri::new panics on a bad path; check first.
        path.parse::<hyper::Uri>().with_context(|| format!("bad request path {path:?}"))?;
        let uri: hyper::Uri = hyperlocal::Uri::new(&self.to_sock, path).into();
        let mut req = Request::builder().method(Method::POST).uri(uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Full::new(Bytes::from(body))).with_context(|| format!("building POST {path}"))?;
        let exchange = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body.to_vec()))
        };
        let sock = self.to_sock.display();
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("POST {path} on {sock}: no answer within {REQUEST_TIMEOUT:?}"))?
            .with_context(|| format!("POST {path} on {sock}"))
    }

    /// Asks the plugin to stop and waits for it to exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let (status, body) = self.post_raw("/api-plugin/v4/stop", Some("application/json"), b"{}".to_vec()).await?;
        if status != 200 {
            bail!("stop answered {status}: {}", String::from_utf8_lossy(&body));
        }
        match self.wait_exit(EXIT_TIMEOUT).await {
            Some(exit) => Ok(exit),
            None => bail!("plugin did not exit within {EXIT_TIMEOUT:?} after stop; stderr:\n{}", self.stderr_text()),
        }
    }

    /// Polls for exit; `None` if still running at the deadline.
    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stderr_text(&self) -> String {
        lock(&self.stderr).clone()
    }

    pub fn stdout_text(&self) -> String {
        lock(&self.stdout).clone()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.kill();
    }
}

fn plugin_command(bin: &Path, sim: &Sim, to_sock: &Path, workdir: &Path, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("listen")
        .arg(to_sock)
        .arg(sim.plugin_sock())
        .current_dir(workdir)
        .env("RS_ENDPOINT", sim.api_url())
        .env("RS_TOKEN", sim.token())
        .env("RS_FILESERVER", sim.file_url())
        .env("RS_WEBROOT", sim.webroot())
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Copies a pipe line by line into `sink` and the test's stderr on a plain
/// thread, so capture continues even while no async task is polling.
/// With `ready`, signals it on the exact line `READY!`; dropping it at EOF
/// tells the waiter the process went away first.
fn pump_lines(pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>, prefix: &'static str, ready: Option<oneshot::Sender<()>>) {
    std::thread::spawn(move || {
        let mut ready = ready;
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // Lossy: a stray non-UTF-8 byte must not stop the capture.
            let line = String::from_utf8_lossy(&buf);
            let line = line.strip_suffix('\n').unwrap_or(&line);
            if line == "READY!"
                && let Some(tx) = ready.take()
            {
                let _ = tx.send(());
            }
            eprintln!("{prefix}{line}");
            let mut s = lock(&sink);
            s.push_str(line);
            s.push('\n');
        }
    });
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
