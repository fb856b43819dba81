//! (5) Memory: the plugin's RSS idle after its config with the bundled engines loaded,
//! and its RSS while streaming a 1 GiB image archive through `imageUpload` (plus the
//! upload's time against bollard importing the same file). The RSS with 1000 agents
//! managed comes from the burst (2).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bollard::Docker;
use bollard::query_parameters::{ImportImageOptionsBuilder, RemoveImageOptionsBuilder};
use bytes::Bytes;
use ce_tests::world::World;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::{Config, Figure, Goal, RssSampler, median, steady_rss};

pub const SECTION: u8 = 5;
const UPLOADED: &str = "ce-bench/big-up:1";
/// The tag the archive itself carries (scripts/bench.sh).
const ARCHIVED: &str = "ce-bench/big:1";
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

pub async fn run(config: &Config) -> Vec<Figure> {
    let engine = match config.get::<String>("memory-engine") {
        Ok(engine) => engine,
        Err(e) => return vec![Figure::missing(SECTION, "memory", e)],
    };
    match super::world(&engine, config.max_parallel).await {
        Ok((mut world, bundled)) => {
            let figures = measure(&world, &bundled, &engine, config)
                .await
                .unwrap_or_else(|e| vec![Figure::missing(SECTION, "memory", format!("failed: {e:#}"))]);
            super::cleanup(&mut world).await;
            let _ = tokio::time::timeout(Duration::from_secs(60), remove_images(&world.runtime)).await;
            figures
        }
        Err(e) => vec![Figure::missing(SECTION, "memory", format!("failed: {e:#}"))],
    }
}

async fn measure(world: &World, bundled: &[String], engine: &str, config: &Config) -> anyhow::Result<Vec<Figure>> {
    let pid = super::pid_of(world.plugin())?;
    // Let the reconcile that follows the engines' loading finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = steady_rss(pid).await?;
    let engines = if bundled.is_empty() {
        "none: this build bundles no WASM engine (engines-wasm/build.sh not run before building)".to_string()
    } else {
        bundled.join(", ")
    };
    let mut figures = vec![
        Figure::new(SECTION, "RSS idle after config, bundled engines loaded", "MiB")
            .value(idle, 1)
            .note(format!("median of 5 VmRSS samples; bundled engines: {engines}")),
    ];
    let runs: usize = config.get::<usize>("upload-runs")?.max(1);
    let limit = Duration::from_secs(120 + 2 * UPLOAD_TIMEOUT.as_secs() * runs as u64);
    match super::bounded("the 1 GiB upload", limit, upload(world, pid, engine, runs, config)).await {
        Ok(found) => figures.extend(found),
        Err(e) => figures.push(Figure::missing(SECTION, "RSS while streaming a 1 GiB imageUpload", format!("{e:#}"))),
    }
    Ok(figures)
}

/// RSS while the plugin streams the archive, and the upload's time against bollard
/// importing the same file (alternating, each from an image-free dockerd).
async fn upload(world: &World, pid: u32, engine: &str, runs: usize, config: &Config) -> anyhow::Result<Vec<Figure>> {
    let archive = config.path("big-archive");
    if !archive.is_file() {
        bail!("skipped: {} missing (scripts/bench.sh makes it)", archive.display());
    }
    let served = world.sim.webroot().join("files/bench/big.tar");
    std::fs::create_dir_all(served.parent().context("served dir")?)?;
    // A hard link: same bytes on disk, and inside RS_WEBROOT (a symlink out is refused).
    if std::fs::hard_link(&archive, &served).is_err() {
        std::fs::copy(&archive, &served)?;
    }
    let size_gib = std::fs::metadata(&archive)?.len() as f64 / (1u64 << 30) as f64;
    // For the health probe only.
    world.upload("plain.tar", super::IMAGE).await?;
    let (mut before, mut peak, mut plugin_s, mut bollard_s) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        if run > 0 && !config.time_left() {
            break;
        }
        remove_images(&world.runtime).await;
        super::runtime_healthy(&world.runtime, &super::start::resolve_image(&world.runtime, super::IMAGE).await?).await?;
        before.push(steady_rss(pid).await?);
        let sampler = RssSampler::start(pid);
        let started = Instant::now();
        let params = json!({"context/image-name": UPLOADED, "context/image-path": "files/bench/big.tar", "context/engine": engine});
        let (code, reply) = long_action(world, "imageUpload", params).await;
        let took = started.elapsed();
        peak.push(sampler.stop());
        if code != 200 {
            bail!("imageUpload answered {code}: {reply}");
        }
        plugin_s.push(took.as_secs_f64());

        remove_images(&world.runtime).await;
        let started = Instant::now();
        super::bounded("bollard import", UPLOAD_TIMEOUT, bollard_import(&world.runtime, &archive)).await?;
        bollard_s.push(started.elapsed().as_secs_f64());
    }
    remove_images(&world.runtime).await;
    let _ = std::fs::remove_file(&served);
    let growth = median(&peak) - median(&before);
    Ok(vec![
        Figure::new(SECTION, format!("RSS peak while streaming a {size_gib:.2} GiB imageUpload"), "MiB")
            .value(median(&peak), peak.len())
            .baseline("the same plugin idle just before", median(&before))
            .goal(Goal::GrowthBelow(16.0))
            .note(format!("growth {growth:.1} MiB; VmRSS sampled every 20 ms and VmHWM reset at the start")),
        Figure::new(SECTION, format!("{size_gib:.2} GiB imageUpload time"), "s")
            .value(median(&plugin_s), plugin_s.len())
            .baseline(format!("bollard import of the same file into {engine}"), median(&bollard_s))
            .note(format!("plugin ({engine} engine): read from RS_WEBROOT, streamed to the runtime's load endpoint, tagged")),
    ])
}

async fn bollard_import(runtime: &Docker, archive: &Path) -> anyhow::Result<()> {
    let file = tokio::fs::File::open(archive).await?;
    let options = ImportImageOptionsBuilder::new().quiet(true).build();
    let mut progress = runtime.import_image_stream(options, tokio_util::io::ReaderStream::new(file), None);
    while let Some(item) = progress.next().await {
        item.context("bollard import")?;
    }
    Ok(())
}

async fn remove_images(runtime: &Docker) {
    let podman_names = [UPLOADED, ARCHIVED].map(|i| format!("localhost/{i}"));
    for image in [UPLOADED, ARCHIVED].into_iter().chain(podman_names.iter().map(String::as_str)) {
        let options = RemoveImageOptionsBuilder::new().force(true).build();
        let _ = runtime.remove_image(image, Some(options), None).await;
    }
}

/// An action with a longer timeout than ce_tests::Plugin's 30 s: loading 1 GiB into
/// dockerd takes longer than that here.
async fn long_action(world: &World, command: &str, params: Value) -> (u16, Value) {
    let body = json!({"Model": {}, "Plugin": "context-engines", "Command": command, "CommandSet": "", "Params": params});
    let client: Client<hyperlocal::UnixConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(hyperlocal::UnixConnector);
    let uri: hyper::Uri = hyperlocal::Uri::new(world.plugin().to_sock(), "/api-plugin/v4/action").into();
    let exchange = async {
        let request =
            hyper::Request::post(uri).header("Content-Type", "application/json").body(Full::new(Bytes::from(body.to_string())))?;
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))))
    };
    match tokio::time::timeout(UPLOAD_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => (0, Value::String(format!("{e:#}"))),
        Err(_) => (0, Value::String(format!("no answer within {UPLOAD_TIMEOUT:?}"))),
    }
}
