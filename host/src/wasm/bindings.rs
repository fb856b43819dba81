//! Rust bindings of the engine contracts the host speaks, generated at build time: `v01`
//! from the pinned `wit/v0.1/` (engine@0.1.0) and `v02` from `wit/` (engine@0.2.0). `wasi:io`
//! and `wasi:http` map onto wasmtime-wasi's own implementations, so an archive handed to
//! an engine is a real `wasi:io` input-stream it can splice into an outgoing HTTP body.

use std::collections::BTreeMap;

/// `context-engines:engine@0.1.0`, frozen.
pub mod v01 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1",
        world: "context-engines:engine/engine@0.1.0",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });

    pub use context_engines::engine::types::{AgentInfo, AgentSpec, EngineError, EngineInfo, KeyValue};
}

/// `context-engines:engine@0.2.0`, the current contract.
pub mod v02 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "context-engines:engine/engine@0.2.0",
        imports: { default: trappable },
        exports: { default: async },
        require_store_data_send: true,
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        },
    });

    pub use context_engines::engine::types::{
        AgentInfo, AgentSpec, EngineError, EngineInfo, KeyValue, Mount, MountKind, Process, Resources, Security,
    };
}

/// The host's own error shape for a guest's `engine-error`: the two versions' variants are
/// the same, and the call machinery handles one type.
pub use v02::EngineError;

/// What the two versions share, written once for each.
macro_rules! common {
    ($v:ident) => {
        impl $v::KeyValue {
            pub fn pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<$v::KeyValue> {
                pairs.into_iter().map(|(key, value)| $v::KeyValue { key: key.to_string(), value: value.to_string() }).collect()
            }

            pub fn map(map: &BTreeMap<String, String>) -> Vec<$v::KeyValue> {
                $v::KeyValue::pairs(map.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            }
        }

        impl From<$v::AgentInfo> for crate::engine::AgentInfo {
            fn from(info: $v::AgentInfo) -> crate::engine::AgentInfo {
                crate::engine::AgentInfo {
                    name: info.name,
                    id: info.id,
                    running: info.running,
                    labels: info.labels.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                }
            }
        }

        impl ToHost for $v::AgentInfo {
            type Host = crate::engine::AgentInfo;
            fn to_host(self) -> crate::engine::AgentInfo {
                self.into()
            }
        }

        impl ToHost for Vec<$v::AgentInfo> {
            type Host = Vec<crate::engine::AgentInfo>;
            fn to_host(self) -> Vec<crate::engine::AgentInfo> {
                self.into_iter().map(Into::into).collect()
            }
        }

        impl From<$v::EngineInfo> for Described {
            fn from(info: $v::EngineInfo) -> Described {
                Described { name: info.name, version: info.version, features: info.features }
            }
        }
    };
}

/// A guest's answer in the host's types, whichever contract it came through.
pub trait ToHost {
    type Host;
    fn to_host(self) -> Self::Host;
}

macro_rules! same_in_both {
    ($($t:ty),*) => { $( impl ToHost for $t { type Host = $t; fn to_host(self) -> $t { self } } )* };
}

same_in_both!((), bool, Option<String>, Vec<String>);

common!(v01);
common!(v02);

impl From<v01::EngineError> for EngineError {
    fn from(e: v01::EngineError) -> EngineError {
        match e {
            v01::EngineError::Unreachable(m) => EngineError::Unreachable(m),
            v01::EngineError::ImageMissing(m) => EngineError::ImageMissing(m),
            v01::EngineError::BadArchive(m) => EngineError::BadArchive(m),
            v01::EngineError::Rejected(m) => EngineError::Rejected(m),
            v01::EngineError::BadConfig(m) => EngineError::BadConfig(m),
            v01::EngineError::Failed(m) => EngineError::Failed(m),
        }
    }
}

/// What an engine said about itself (`describe`), whatever its contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    pub name: String,
    pub version: String,
    pub features: Vec<String>,
}

/// A contract version the host speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    V0_1,
    V0_2,
}

impl Contract {
    /// Newest first: a component exporting both is taken at its newest.
    pub const ALL: [Contract; 2] = [Contract::V0_2, Contract::V0_1];

    /// `0.2.0`.
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// The interface an engine of this version exports.
    pub fn lifecycle(self) -> String {
        format!("context-engines:engine/lifecycle@{}", self.version())
    }

    /// `engine@0.2.0`, as errors name it.
    pub fn package(self) -> String {
        format!("context-engines:engine@{}", self.version())
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "engine@{}", self.version())
    }
}

/// A component linked and ready to instantiate, with the bindings of its contract.
pub enum EnginePre<T: 'static> {
    V0_1(v01::EnginePre<T>),
    V0_2(v02::EnginePre<T>),
}

// By hand: a derive would ask `T: Clone`, which the store's data is not (nor need be).
impl<T: 'static> Clone for EnginePre<T> {
    fn clone(&self) -> Self {
        match self {
            EnginePre::V0_1(pre) => EnginePre::V0_1(pre.clone()),
            EnginePre::V0_2(pre) => EnginePre::V0_2(pre.clone()),
        }
    }
}

impl<T: 'static> EnginePre<T> {
    pub fn contract(&self) -> Contract {
        match self {
            EnginePre::V0_1(_) => Contract::V0_1,
            EnginePre::V0_2(_) => Contract::V0_2,
        }
    }
}

impl<T: Send + 'static> EnginePre<T> {
    pub async fn instantiate_async(&self, store: &mut wasmtime::Store<T>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            EnginePre::V0_1(pre) => Bindings::V0_1(pre.instantiate_async(store).await?),
            EnginePre::V0_2(pre) => Bindings::V0_2(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports, of either contract.
pub enum Bindings {
    V0_1(v01::Engine),
    V0_2(v02::Engine),
}

impl Bindings {
    pub async fn describe<T: Send>(&self, store: &mut wasmtime::Store<T>) -> wasmtime::Result<Described> {
        Ok(match self {
            Bindings::V0_1(e) => e.context_engines_engine_lifecycle().call_describe(store).await?.into(),
            Bindings::V0_2(e) => e.context_engines_engine_lifecycle().call_describe(store).await?.into(),
        })
    }

    pub async fn configure<T: Send>(&self, store: &mut wasmtime::Store<T>, json: &str) -> wasmtime::Result<Result<(), EngineError>> {
        Ok(match self {
            Bindings::V0_1(e) => e.context_engines_engine_lifecycle().call_configure(store, json).await?.map_err(Into::into),
            Bindings::V0_2(e) => e.context_engines_engine_lifecycle().call_configure(store, json).await?,
        })
    }
}

/// Calls the same export on either contract's instance, with the same arguments, and
/// converts its answer ([`ToHost`]) and error ([`EngineError`]) to one type. `$args` may
/// name the arm's bindings module as `$v` (e.g. to build a `$v::KeyValue` list).
macro_rules! wasm_call {
    ($bindings:expr, $store:expr, |$v:ident| $method:ident($($arg:expr),*)) => {
        match $bindings {
            $crate::wasm::bindings::Bindings::V0_1(e) => {
                #[allow(unused_imports)]
                use $crate::wasm::bindings::v01 as $v;
                e.context_engines_engine_lifecycle()
                    .$method($store, $($arg),*)
                    .await
                    .map(|r| r.map($crate::wasm::bindings::ToHost::to_host).map_err(Into::into))
            }
            $crate::wasm::bindings::Bindings::V0_2(e) => {
                #[allow(unused_imports)]
                use $crate::wasm::bindings::v02 as $v;
                e.context_engines_engine_lifecycle().$method($store, $($arg),*).await.map(|r| r.map($crate::wasm::bindings::ToHost::to_host))
            }
        }
    };
}

pub(crate) use wasm_call;
