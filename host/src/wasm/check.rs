//! `context-engines engines check FILE.wasm`: what an engine author runs before
//! shipping. Loads the component exactly as the plugin would, then reports what it
//! exports and imports and what it says about itself.

use std::path::Path;

use wasmtime::Store;
use wasmtime::component::types::ComponentItem;

use super::bindings::Contract;
use super::runtime::{Limits, WasmRuntime};
use super::state::{Budget, GuestState, MemoryCap};
use crate::options::feature;

/// A report on stdout's behalf, or an error saying precisely why the file does not fit.
pub async fn check(path: &Path) -> Result<String, String> {
    let runtime = WasmRuntime::new(None).map_err(|e| format!("starting the WebAssembly runtime: {e:#}"))?;
    let loaded = runtime.load(path).map_err(|e| e.to_string())?;
    let contract = loaded.pre.contract();
    let mut report = format!(
        "ok: {} implements context-engines:engine/engine@{}\ncontract: {}\ncompiled in {} ms, sha256 {}\n",
        path.display(),
        contract.version(),
        contract.version(),
        loaded.compile_time.as_millis(),
        loaded.sha256
    );
    let ty = loaded.component.component_type();
    for (name, item) in ty.exports(&runtime.engine) {
        report.push_str(&format!("exports {name}{}\n", functions(&runtime.engine, &item.ty)));
    }
    for (name, _) in ty.imports(&runtime.engine) {
        report.push_str(&format!("imports {name}\n"));
    }
    let limits = Limits::default();
    let state = GuestState::new("check", Vec::new(), MemoryCap::new(limits.memory_bytes));
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|state| &mut state.limits);
    store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().budget.check()));
    store.data_mut().budget = Budget::new(limits.deadline);
    store.set_epoch_deadline(1);
    let instance = loaded.pre.instantiate_async(&mut store).await.map_err(|e| format!("{} does not instantiate: {e:#}", path.display()))?;
    let info = instance.describe(&mut store).await.map_err(|e| format!("{}: describe trapped: {e:#}", path.display()))?;
    report.push_str(&format!("describe: name={} version={} features=[{}]\n", info.name, info.version, info.features.join(", ")));
    report.push_str(&features(contract, &info.features));
    Ok(report)
}

/// What the host makes of the declared features: which options the engine can be given.
fn features(contract: Contract, declared: &[String]) -> String {
    if contract == Contract::V0_1 {
        return "features: none the host reads (engine@0.1.0 has env, labels, network and the drpcli injection only)\n".to_string();
    }
    let known = [feature::MOUNTS, feature::RESOURCES, feature::SECURITY, feature::PROCESS, feature::LOGS];
    let (read, other): (Vec<&String>, Vec<&String>) = declared.iter().partition(|f| known.contains(&f.as_str()));
    let missing: Vec<&str> = known.into_iter().filter(|k| !declared.iter().any(|d| d == k)).collect();
    let list = |items: Vec<&str>| if items.is_empty() { "none".to_string() } else { items.join(", ") };
    format!(
        "features: {}\nfeatures not declared (options needing them are refused): {}\nother words (shown only): {}\n",
        list(read.iter().map(|s| s.as_str()).collect()),
        list(missing),
        list(other.iter().map(|s| s.as_str()).collect())
    )
}

fn functions(engine: &wasmtime::Engine, item: &ComponentItem) -> String {
    match item {
        ComponentItem::ComponentInstance(instance) => {
            let names: Vec<&str> = instance
                .exports(engine)
                .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentFunc(_)))
                .map(|(name, _)| name)
                .collect();
            format!(": {}", names.join(", "))
        }
        _ => String::new(),
    }
}
