//! Test harness for context-engines: a dr-provision simulator and a runner for
//! the real plugin binary.

pub mod archive;
pub mod load_proxy;
pub mod plugin;
pub mod prometheus;
pub mod sim;
pub mod stall_proxy;
pub mod world;

pub use plugin::{Plugin, plugin_bin};
pub use sim::{AgentReport, ApiFault, Sim};
