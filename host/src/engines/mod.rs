//! Engines compiled into the binary.
pub mod container_list;
pub mod runtime_api;
