//! Rust bindings of `wit/engine.wit`, generated at build time. `wasi:io` and `wasi:http`
//! map onto wasmtime-wasi's own implementations, so an archive handed to an engine is a
//! real `wasi:io` input-stream it can splice into an outgoing HTTP body.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "context-engines:engine/engine",
    imports: { default: trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
    },
});

pub use context_engines::engine::log::Level;
pub use context_engines::engine::types::{AgentInfo, AgentSpec, EngineError, EngineInfo, KeyValue};
