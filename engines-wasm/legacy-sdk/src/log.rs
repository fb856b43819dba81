//! Lines into the plugin's log (stderr, and dr-provision's log at info and above),
//! prefixed by the host with the engine's name. Never log a token: `RS_TOKEN` in
//! [`AgentSpec::env`](crate::AgentSpec::env) is a machine's credential.
//!
//! Plain functions take a `&str`; the macros [`debug!`](crate::debug),
//! [`info!`](crate::info), [`warn!`](crate::warn) and [`error!`](crate::error) take
//! `format!` arguments and are re-exported here, so both `log::info("…")` and
//! `log::info!("… {x}")` work.

use crate::bindings::context_engines::engine::log as wit;

pub use crate::{debug, error, info, warn};

/// How important a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Detail for whoever debugs the engine.
    Debug,
    /// Normal operation worth recording.
    Info,
    /// Something unexpected that the engine worked around.
    Warn,
    /// Something failed.
    Error,
}

/// Writes one line at `level`.
pub fn write(level: Level, message: &str) {
    let level = match level {
        Level::Debug => wit::Level::Debug,
        Level::Info => wit::Level::Info,
        Level::Warn => wit::Level::Warn,
        Level::Error => wit::Level::Error,
    };
    wit::log(level, message);
}

/// Writes one line at debug level.
pub fn debug(message: &str) {
    write(Level::Debug, message)
}

/// Writes one line at info level.
pub fn info(message: &str) {
    write(Level::Info, message)
}

/// Writes one line at warn level.
pub fn warn(message: &str) {
    write(Level::Warn, message)
}

/// Writes one line at error level.
pub fn error(message: &str) {
    write(Level::Error, message)
}

/// Logs at debug level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Debug, &::std::format!($($arg)+)) };
}

/// Logs at info level, with `format!` arguments.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Info, &::std::format!($($arg)+)) };
}

/// Logs at warn level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Warn, &::std::format!($($arg)+)) };
}

/// Logs at error level, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log::write($crate::log::Level::Error, &::std::format!($($arg)+)) };
}
