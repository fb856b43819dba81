//! Image garbage collection against the real dockerd: only images the plugin loaded are
//! candidates; a Context's image stays; an unused one is reported by a dry run, removed
//! only without one, and only after the grace period; an image loaded (or tagged) by
//! hand is never touched; the periodic run collects on its own.

use std::time::Duration;

use anyhow::ensure;
use bollard::query_parameters::TagImageOptionsBuilder;
use ce_tests::world::{World, run_scenario};
use serde_json::{Value, json};

async fn prune(w: &World, params: Value) -> anyhow::Result<Vec<Value>> {
    let (code, body) = w.action("imagePrune", params).await?;
    ensure!(code == 200, "imagePrune: {code} {body}");
    Ok(body["Images"].as_array().cloned().unwrap_or_default())
}

fn outcome(verdicts: &[Value], image: &str) -> Option<(String, String)> {
    verdicts.iter().find(|v| v["Image"] == image).map(|v| {
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        (text("Outcome"), text("Reason"))
    })
}

async fn exists(w: &World, image: &str) -> anyhow::Result<bool> {
    let (code, body) = w.action("imageExists", json!({"context/image-name": image})).await?;
    ensure!(code == 200, "imageExists {image}: {code} {body}");
    Ok(body == json!(true))
}

async fn configure(w: &World, grace: u64, every: u64) -> anyhow::Result<()> {
    let mut params = w.params();
    params["context-engines/image-gc-grace-secs"] = json!(grace);
    params["context-engines/image-gc-secs"] = json!(every);
    let (code, body) = w.plugin().config(params).await?;
    ensure!(code == 200, "config: {code} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_gc_removes_only_unused_images_the_plugin_loaded() {
    run_scenario("docker", "image_gc_removes_only_unused_images_the_plugin_loaded", async |w| {
        let kept = w.image();
        let gone = format!("ce-test/{}-gone:1", w.plugin_name);
        let by_hand = format!("ce-hand/{}:1", w.plugin_name);
        w.upload("plain.tar", &kept).await?;
        w.upload("baked.tar", &gone).await?;
        // The unused image also carries a name given by hand: that name must survive.
        let options = TagImageOptionsBuilder::default().repo(&format!("ce-hand/{}", w.plugin_name)).tag("1").build();
        w.runtime.tag_image(&gone, Some(options)).await?;
        w.sim.put_context(w.context("kept", &kept));
        w.sim.put_context(w.context("gone", &gone));
        w.sim.delete_context("gone");

        // Within the grace period (default 3600 s) nothing goes.
        let verdicts = prune(w, json!({})).await?;
        ensure!(outcome(&verdicts, &gone).is_some_and(|(o, r)| o == "kept" && r.contains("image-gc-grace-secs")), "{verdicts:?}");
        ensure!(outcome(&verdicts, &by_hand).is_none(), "a hand-made name was considered: {verdicts:?}");

        configure(w, 0, 0).await?;
        // A dry run (the default) reports and removes nothing.
        let verdicts = prune(w, json!({})).await?;
        ensure!(outcome(&verdicts, &gone).is_some_and(|(o, _)| o == "would be removed"), "{verdicts:?}");
        ensure!(outcome(&verdicts, &kept).is_some_and(|(o, r)| o == "kept" && r.contains("Context")), "{verdicts:?}");
        ensure!(exists(w, &gone).await?, "a dry run removed {gone}");

        let verdicts = prune(w, json!({"context/dry-run": "false"})).await?;
        ensure!(outcome(&verdicts, &gone).is_some_and(|(o, _)| o == "removed"), "{verdicts:?}");
        ensure!(!exists(w, &gone).await?, "{gone} is still there");
        ensure!(exists(w, &kept).await?, "{kept} (named by a Context) was removed");
        ensure!(exists(w, &by_hand).await?, "{by_hand} (tagged by hand) was removed");

        // Periodic: an image nothing names goes without being asked.
        let later = format!("ce-test/{}-later:1", w.plugin_name);
        w.upload("baked.tar", &later).await?;
        configure(w, 0, 1).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while exists(w, &later).await? {
            ensure!(tokio::time::Instant::now() < deadline, "periodic GC never removed {later}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        ensure!(exists(w, &kept).await? && exists(w, &by_hand).await?, "periodic GC removed too much");
        let _ = w.runtime.remove_image(&by_hand, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_prune_refuses_bad_params_by_name() {
    run_scenario("docker", "image_prune_refuses_bad_params_by_name", async |w| {
        let (code, body) = w.action("imagePrune", json!({"context/dry-run": "maybe"})).await?;
        ensure!(code == 400 && body.to_string().contains("context/dry-run"), "{code} {body}");
        let (code, body) = w.action("imagePrune", json!({"context/engine": "nope"})).await?;
        ensure!(code == 400 && body.to_string().contains("nope"), "{code} {body}");
        Ok(())
    })
    .await
}
