//! Engines compiled into the binary.
pub mod container_list;
pub mod container_spec;
pub mod runtime_api;
