//! Engines compiled into the binary.
pub mod container_spec;
pub mod containers;
pub mod runtime_api;
pub mod swarm;
