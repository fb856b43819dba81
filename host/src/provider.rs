//! What `define` prints: the PluginProvider dr-provision registers (SPEC §2), and what
//! `unpack` writes.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::params;

/// The content pack built from `content/` by build.rs.
pub const CONTENT: &str = include_str!(concat!(env!("OUT_DIR"), "/content.yaml"));

// WASM engines built from `engines-wasm/` and embedded by build.rs: (name, bytes).
include!(concat!(env!("OUT_DIR"), "/bundled_engines.rs"));

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Action {
    command: &'static str,
    model: &'static str,
    required_params: &'static [&'static str],
    optional_params: &'static [&'static str],
}

const ENGINE_ONLY: &[&str] = &[params::ENGINE];

const ACTIONS: &[Action] = &[
    Action { command: "imageUpload", model: "", required_params: &[params::IMAGE_NAME, params::IMAGE_PATH], optional_params: ENGINE_ONLY },
    Action { command: "imageExists", model: "", required_params: &[params::IMAGE_NAME], optional_params: ENGINE_ONLY },
    Action { command: "imageDetail", model: "", required_params: &[params::IMAGE_NAME], optional_params: ENGINE_ONLY },
    Action { command: "imageRemove", model: "", required_params: &[params::IMAGE_NAME], optional_params: ENGINE_ONLY },
    Action {
        command: "agentStart",
        model: "machines",
        required_params: &[params::IMAGE_NAME, params::CONTEXT_NAME],
        optional_params: ENGINE_ONLY,
    },
    Action { command: "agentStop", model: "machines", required_params: &[params::CONTEXT_NAME], optional_params: ENGINE_ONLY },
    Action {
        command: "agentLogs",
        model: "machines",
        required_params: &[params::CONTEXT_NAME],
        optional_params: &[params::LINES, params::ENGINE],
    },
    Action { command: "imagePrune", model: "", required_params: &[], optional_params: &[params::DRY_RUN, params::ENGINE] },
    Action { command: "enginesList", model: "", required_params: &[], optional_params: &[] },
    Action { command: "agentStatus", model: "", required_params: &[], optional_params: &[] },
];

const DOCUMENTATION: &str = "\
context-engines
===============

Runs dr-provision Contexts as agents (containers running ``drpcli machines processjobs``)
through engines: native ``docker`` and ``podman``, and WebAssembly engines dropped into the
engines directory (``context-engines/engines-dir``) without a restart.

A Context is served when its ``Engine`` is this plugin's name; its ``Meta[\"context-engine\"]``
picks the engine (default: ``context-engines/default-engine``). Every machine whose
``Context`` names such a Context gets exactly one agent, named ``drp-<context>-<uuid>``.

Actions: imageUpload, imageExists, imageDetail, imageRemove, imagePrune, agentStart, agentStop, agentLogs,
enginesList, agentStatus.
";

pub fn define() -> Value {
    json!({
        "Name": "context-engines",
        "Version": env!("CARGO_PKG_VERSION"),
        "PluginVersion": 4,
        "AutoStart": true,
        "HasPublish": false,
        "AvailableActions": ACTIONS,
        "RequiredParams": [],
        "OptionalParams": params::ALL,
        "StoreObjects": {},
        "Documentation": DOCUMENTATION,
        "Content": CONTENT,
    })
}

pub fn unpack(dir: &Path) -> std::io::Result<()> {
    let engines = dir.join("engines");
    std::fs::create_dir_all(&engines)?;
    for (name, bytes) in BUNDLED_ENGINES {
        std::fs::write(engines.join(format!("{name}.wasm")), bytes)?;
    }
    Ok(())
}
