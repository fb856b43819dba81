//! WebAssembly engines: components implementing the `context-engines:engine` world in
//! `wit/`, compiled once (and cached on disk by content hash), pre-instantiated, and
//! called with a per-call deadline, a memory cap and an HTTP allow-list.

pub mod bindings;
pub mod check;
pub mod directory;
pub mod engine;
pub mod pool;
pub mod provenance;
pub mod runtime;
pub mod state;

pub use engine::WasmEngine;
pub use runtime::{Limits, WasmRuntime};
