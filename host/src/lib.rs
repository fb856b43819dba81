//! context-engines as a library: everything the binary is made of, so benchmarks, fuzz
//! targets and tests can drive the same code the plugin runs.

pub mod actions;
pub mod agents;
pub mod api_error;
pub mod conformance;
pub mod controller;
pub mod drp;
pub mod engine;
pub mod engines;
pub mod environment;
pub mod events;
pub mod images;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod params;
pub mod plugin;
pub mod protocol;
pub mod provider;
pub mod redact;
pub mod registry;
pub mod tls;
pub mod wasm;
