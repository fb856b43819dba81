//! Image garbage collection, driven by the source of truth: an image the plugin loaded
//! (the ledger) is removed only when no Context of ours names it, no agent of ours
//! (running or not) uses it, and it was loaded longer ago than the grace period. The
//! `imagePrune` action runs it (a dry run by default); `image-gc-secs` runs it
//! periodically.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::ledger::{Load, marker, now_secs};
use crate::agents::engine_for;
use crate::drp::DrpError;
use crate::engine::{Engine, labels};
use crate::params;
use crate::plugin::Plugin;

/// What GC did, or would do, with one loaded image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    #[serde(rename = "Engine")]
    pub engine: String,
    #[serde(rename = "Image")]
    pub image: String,
    /// Seconds since the Unix epoch.
    #[serde(rename = "LoadedAt")]
    pub loaded_at: u64,
    /// `removed`, `would be removed` (a dry run), `kept`, or `forgotten` (no longer the
    /// image the plugin loaded, or gone).
    #[serde(rename = "Outcome")]
    pub outcome: String,
    #[serde(rename = "Reason")]
    pub reason: String,
}

/// Without the Contexts, nothing can be known unused: nothing is removed.
#[derive(Debug, thiserror::Error)]
#[error("image GC needs dr-provision's Contexts and could not read them: {0}")]
pub struct GcError(#[from] DrpError);

/// What is in use on one engine: names (and the images they point at).
struct InUse {
    names: BTreeSet<String>,
    ids: BTreeSet<String>,
    /// Why nothing of this engine may go (its agents could not be listed).
    unknown: Option<String>,
}

pub async fn collect(plugin: &Plugin, only_engine: Option<&str>, dry_run: bool) -> Result<Vec<Verdict>, GcError> {
    let settings = plugin.settings();
    let contexts: Vec<_> = plugin.drp.contexts().await?.into_iter().filter(|c| c.engine == settings.plugin_name).collect();
    let mut loads = plugin.images.ledger.loads();
    loads.retain(|l| only_engine.is_none_or(|e| e == l.engine));
    let engines: BTreeSet<String> = loads.iter().map(|l| l.engine.clone()).collect();
    let mut verdicts = Vec::new();
    for engine_name in engines {
        let of_engine: Vec<&Load> = loads.iter().filter(|l| l.engine == engine_name).collect();
        let Ok(engine) = plugin.registry.get(&engine_name) else {
            verdicts.extend(of_engine.iter().map(|l| kept(l, format!("engine '{engine_name}' is not available"))));
            continue;
        };
        let named: BTreeSet<String> =
            contexts.iter().filter(|c| engine_for(c, &settings.default_engine) == engine_name).map(|c| c.image.clone()).collect();
        let in_use = in_use(plugin, engine.as_ref(), named).await;
        for load in of_engine {
            verdicts.push(judge(plugin, engine.as_ref(), load, &in_use, settings.image_gc_grace_secs, dry_run).await);
        }
    }
    Ok(verdicts)
}

async fn in_use(plugin: &Plugin, engine: &dyn Engine, mut names: BTreeSet<String>) -> InUse {
    let plugin_name = plugin.settings().plugin_name.clone();
    let unknown = match engine.agent_list(&[(labels::PLUGIN, plugin_name.as_str())]).await {
        Ok(agents) => {
            names.extend(agents.iter().filter_map(|a| a.labels.get(labels::IMAGE).cloned()));
            None
        }
        Err(e) => Some(format!("the engine's agents could not be listed: {e}")),
    };
    let mut ids = BTreeSet::new();
    for name in &names {
        if let Ok(Some(id)) = engine.image_id(name).await {
            ids.insert(id);
        }
    }
    InUse { names, ids, unknown }
}

fn kept(load: &Load, reason: String) -> Verdict {
    verdict(load, "kept", reason)
}

fn verdict(load: &Load, outcome: &str, reason: String) -> Verdict {
    Verdict { engine: load.engine.clone(), image: load.image.clone(), loaded_at: load.loaded_at, outcome: outcome.to_string(), reason }
}

async fn judge(plugin: &Plugin, engine: &dyn Engine, load: &Load, in_use: &InUse, grace_secs: u64, dry_run: bool) -> Verdict {
    let ledger = &plugin.images.ledger;
    if in_use.names.contains(&load.image) {
        return kept(load, "a Context of this plugin names it, or an agent uses it".to_string());
    }
    if let Some(why) = &in_use.unknown {
        return kept(load, why.clone());
    }
    let (id, marked) = match (engine.image_id(&load.image).await, engine.image_id(&marker(&load.image)).await) {
        (Ok(id), Ok(marked)) => (id, marked),
        (Err(e), _) | (_, Err(e)) => return kept(load, format!("the runtime could not be asked about it: {e}")),
    };
    let Some(id) = id else {
        ledger.forget(&load.engine, &load.image);
        let _ = engine.image_remove(&marker(&load.image)).await;
        return verdict(load, "forgotten", "it is no longer in the runtime".to_string());
    };
    if marked.as_ref() != Some(&id) {
        ledger.forget(&load.engine, &load.image);
        return verdict(load, "forgotten", "the name now points at another image than the one the plugin loaded".to_string());
    }
    if in_use.ids.contains(&id) {
        return kept(load, "the same image is in use under another name".to_string());
    }
    let age = now_secs().saturating_sub(load.loaded_at);
    if age < grace_secs {
        return kept(load, format!("loaded {age} s ago, within {} ({grace_secs} s)", params::IMAGE_GC_GRACE_SECS));
    }
    if dry_run {
        return verdict(load, "would be removed", "unused: no Context of this plugin names it and no agent uses it".to_string());
    }
    match plugin.images.remove(engine, &load.image).await {
        Ok(()) => {
            tracing::info!(engine = load.engine, image = load.image, "image GC removed an unused image");
            verdict(load, "removed", "unused: no Context of this plugin names it and no agent uses it".to_string())
        }
        Err(e) => kept(load, format!("removing it failed: {e}")),
    }
}

/// Runs GC every `image-gc-secs` (read each round; 0 is off) until shutdown.
pub async fn periodically(plugin: Arc<Plugin>, mut shutdown: watch::Receiver<bool>) {
    const IDLE_CHECK: Duration = Duration::from_secs(5);
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(IDLE_CHECK.min(Duration::from_secs(plugin.settings().image_gc_secs.max(1)))) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let every = plugin.settings().image_gc_secs;
        if every == 0 || last.elapsed() < Duration::from_secs(every) {
            continue;
        }
        last = tokio::time::Instant::now();
        match collect(&plugin, None, false).await {
            Ok(verdicts) => {
                let removed = verdicts.iter().filter(|v| v.outcome == "removed").count();
                tracing::info!("periodic image GC: {removed} removed, {} considered", verdicts.len());
            }
            Err(e) => tracing::warn!("periodic image GC: {e}"),
        }
    }
}
