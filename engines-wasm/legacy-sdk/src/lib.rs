//! # legacy-sdk: FROZEN
//!
//! The guest SDK exactly as it was for `context-engines:engine@0.1.0` (commit 2cf8b0a),
//! built from the pinned WIT in `wit/v0.1/`. It exists only so that `legacy-docker`, the
//! test engine of the host's 0.1 path, keeps building. Do not develop it, do not use it
//! for new engines (use `sdk`, engine@0.2.0), and do not "fix" it: a fixture of an old
//! contract must stay what engines of that contract were.
//!
//! # context-engines-sdk (0.1.0)
//!
//! The guest side of `context-engines`: everything an engine compiled to a WebAssembly
//! component needs, so that an engine is one type implementing one trait.
//!
//! * [`Engine`]: the trait an engine implements, one method per function of the WIT
//!   interface `context-engines:engine/lifecycle@0.1.0`, with plain Rust types.
//! * [`export_engine!`]: makes a type implementing [`Engine`] the component's export.
//!   The SDK keeps one value of that type per component instance: [`Engine::configure`]
//!   builds it, every later call borrows it mutably.
//! * [`log`]: lines into the plugin's log ([`info!`], [`warn!`], …).
//! * [`http`]: a small blocking HTTP client over `wasi:http/outgoing-handler@0.2.12`,
//!   the only way out of the sandbox (and only to the hosts the operator listed in the
//!   engine's `allowed-hosts`).
//! * [`time`]: the monotonic clock and [`time::sleep`].
//!
//! A complete engine:
//!
//! ```ignore
//! use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineInfo, Result, Settings};
//!
//! struct Null;
//!
//! impl Engine for Null {
//!     fn describe() -> EngineInfo {
//!         EngineInfo::new("null", env!("CARGO_PKG_VERSION"))
//!     }
//!     fn configure(_settings: &Settings) -> Result<Self> {
//!         Ok(Null)
//!     }
//!     fn image_id(&mut self, _image: &str) -> Result<Option<String>> {
//!         Ok(Some("null".into()))
//!     }
//!     fn image_load(&mut self, _image: &str, mut archive: Archive) -> Result<()> {
//!         archive.discard()?;
//!         Ok(())
//!     }
//!     fn image_tag(&mut self, _source: &str, _target: &str) -> Result<()> {
//!         Ok(())
//!     }
//!     fn image_remove(&mut self, _image: &str) -> Result<bool> {
//!         Ok(true)
//!     }
//!     fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
//!         Ok(AgentInfo { id: spec.name.clone(), name: spec.name, running: true, labels: spec.labels })
//!     }
//!     fn agent_stop(&mut self, _name: &str) -> Result<bool> {
//!         Ok(false)
//!     }
//!     fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! sdk::export_engine!(Null);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2` (`cargo build --release --target
//! wasm32-wasip2`): the `.wasm` rustc writes is already a component.
#![warn(missing_docs)]

use std::fmt;

pub mod archive;
pub mod http;
pub mod log;
pub mod settings;
pub mod time;

pub use archive::Archive;
pub use settings::Settings;

/// The bindings `wit-bindgen` generates from `wit/` (world `engine`, with the WASI
/// interfaces it reaches: `wasi:http@0.2.12`, `wasi:io@0.2.12`,
/// `wasi:clocks/monotonic-clock@0.2.12`). Engines normally need none of it; it is public
/// for the exceptional engine that wants a raw WASI call, and for [`export_engine!`].
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit/v0.1",
        world: "engine",
        generate_all,
        pub_export_macro: true,
        export_macro_name: "__export_engine_world",
        default_bindings_module: "context_engines_sdk::bindings",
    });
}

/// The WASI interfaces an engine may call directly (`wasi:http`, `wasi:io`,
/// `wasi:clocks/monotonic-clock`, all `@0.2.12`), as generated from `wit/deps`.
pub use bindings::wasi;

use bindings::context_engines::engine::types as wit;

/// The result of every engine operation.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Why an operation failed: the WIT variant `engine-error`. The host turns each case into
/// an HTTP code of the Error it returns to dr-provision, so pick the case that says whose
/// fault it is. The message is shown to operators: say what failed and where (the
/// runtime's address, the request), and never include a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// The runtime could not be reached: connection refused, timeout, DNS. (HTTP 503)
    Unreachable(String),
    /// The image named does not exist on the runtime. (HTTP 404)
    ImageMissing(String),
    /// The runtime refused the image archive: corrupt, wrong format. (HTTP 422)
    BadArchive(String),
    /// The runtime refused the request: bad name, conflict, invalid spec. (HTTP 422)
    Rejected(String),
    /// The engine's settings are missing or wrong. (HTTP 400)
    BadConfig(String),
    /// Anything else. (HTTP 500)
    Failed(String),
}

impl EngineError {
    /// The message, without the case.
    pub fn message(&self) -> &str {
        match self {
            EngineError::Unreachable(m)
            | EngineError::ImageMissing(m)
            | EngineError::BadArchive(m)
            | EngineError::Rejected(m)
            | EngineError::BadConfig(m)
            | EngineError::Failed(m) => m,
        }
    }

    /// The case's WIT name: `unreachable`, `image-missing`, `bad-archive`, `rejected`,
    /// `bad-config` or `failed`.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Unreachable(_) => "unreachable",
            EngineError::ImageMissing(_) => "image-missing",
            EngineError::BadArchive(_) => "bad-archive",
            EngineError::Rejected(_) => "rejected",
            EngineError::BadConfig(_) => "bad-config",
            EngineError::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for EngineError {}

impl From<EngineError> for wit::EngineError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Unreachable(m) => wit::EngineError::Unreachable(m),
            EngineError::ImageMissing(m) => wit::EngineError::ImageMissing(m),
            EngineError::BadArchive(m) => wit::EngineError::BadArchive(m),
            EngineError::Rejected(m) => wit::EngineError::Rejected(m),
            EngineError::BadConfig(m) => wit::EngineError::BadConfig(m),
            EngineError::Failed(m) => wit::EngineError::Failed(m),
        }
    }
}

/// What an engine says about itself (WIT `engine-info`), shown by the `enginesList`
/// action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    /// The engine's own name for itself (the host names it after its file).
    pub name: String,
    /// The engine's version, free-form (semver recommended).
    pub version: String,
    /// Optional capabilities, free-form words (e.g. `gzip`, `oci-archive`).
    pub features: Vec<String>,
}

impl EngineInfo {
    /// An engine named `name` at `version` (typically `env!("CARGO_PKG_VERSION")`), with
    /// no features.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        EngineInfo { name: name.into(), version: version.into(), features: Vec::new() }
    }

    /// Adds a feature word.
    pub fn feature(mut self, feature: impl Into<String>) -> Self {
        self.features.push(feature.into());
        self
    }
}

/// One agent to run (WIT `agent-spec`): a long-lived process running
/// `drpcli machines processjobs` for one machine.
///
/// Its `Debug` output hides the environment's values: `RS_TOKEN` is a machine token.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentSpec {
    /// Unique name, `drp-<context>-<machine-uuid>`; use it as the runtime's name so the
    /// agent can be found again by it.
    pub name: String,
    /// Image reference, exactly as the Context names it.
    pub image: String,
    /// Environment: `RS_UUID`, `RS_TOKEN` (keep it out of logs), `RS_CONTEXT`,
    /// `RS_ENDPOINTS`, and `PATH` when the host wants it set.
    pub env: Vec<(String, String)>,
    /// Labels to attach and return from [`Engine::agent_list`]: `drp.machine`,
    /// `drp.context`, `drp.plugin`, `drp.engine`, `drp.image`. The host finds agents by
    /// them.
    pub labels: Vec<(String, String)>,
    /// Network mode, e.g. `host`.
    pub network: String,
    /// When present: a host path to bind-mount read-only at [`DRPCLI_IN_AGENT`], which
    /// then becomes the entrypoint ([`DRPCLI_ENTRYPOINT`]) with [`DEFAULT_PATH`] as `PATH`
    /// unless `env` sets one. When absent: run the image's own entrypoint.
    pub drpcli: Option<String>,
}

/// Where an injected drpcli is mounted inside the agent.
pub const DRPCLI_IN_AGENT: &str = "/usr/bin/drpcli";
/// The entrypoint of an agent whose drpcli is injected.
pub const DRPCLI_ENTRYPOINT: [&str; 3] = [DRPCLI_IN_AGENT, "machines", "processjobs"];
/// `PATH` of an agent whose drpcli is injected, unless its spec sets one.
pub const DEFAULT_PATH: &str = "/bin:/usr/bin:/usr/local/bin:/sbin:/usr/sbin:/usr/local/sbin";
/// The label carrying the image an agent was started from.
pub const IMAGE_LABEL: &str = "drp.image";
/// The label naming the plugin instance an agent belongs to; an engine never removes a
/// container whose value differs from its spec's.
pub const PLUGIN_LABEL: &str = "drp.plugin";

impl AgentSpec {
    /// The value of label `key`, if the spec has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }

    /// The value of environment variable `key`, if the spec sets it.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        lookup(&self.env, key)
    }
}

impl fmt::Debug for AgentSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env: Vec<String> = self.env.iter().map(|(k, _)| format!("{k}=…")).collect();
        f.debug_struct("AgentSpec")
            .field("name", &self.name)
            .field("image", &self.image)
            .field("env", &env)
            .field("labels", &self.labels)
            .field("network", &self.network)
            .field("drpcli", &self.drpcli)
            .finish()
    }
}

/// An agent as the runtime reports it (WIT `agent-info`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The name it was started with.
    pub name: String,
    /// The runtime's id for it.
    pub id: String,
    /// Whether it is running now.
    pub running: bool,
    /// All its labels.
    pub labels: Vec<(String, String)>,
}

impl AgentInfo {
    /// The value of label `key`, if the agent has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        lookup(&self.labels, key)
    }
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// An engine: images and agents on some runtime.
///
/// Implement it on a type holding what the engine derived from its settings (an address,
/// a client), and export that type with [`export_engine!`]. The SDK creates one value per
/// component instance with [`Engine::configure`] and hands it to every later call. The
/// host may discard an instance at any time (after a trap, a deadline, or to free
/// memory), so keep nothing that cannot be rebuilt from the settings.
///
/// Calls are blocking and never concurrent on one instance; the host runs several
/// instances when it needs concurrency. A panic is a trap: the call fails with an error
/// naming the engine and the instance is thrown away, so return an [`EngineError`] for
/// anything that can be expected.
pub trait Engine: Sized + 'static {
    /// Names and versions. Called without an instance (possibly before `configure`);
    /// must not fail and must not do I/O.
    fn describe() -> EngineInfo;

    /// Builds the engine from its settings: the engine's entry of the plugin param
    /// `context-engines/engine-config`, a JSON object (`{}` when absent). The key
    /// `allowed-hosts` is the host's (the `host:port`s this engine may reach over HTTP);
    /// every other key is the engine's own. Return [`EngineError::BadConfig`] naming the
    /// key when a setting is missing or wrong. Should not do I/O: the runtime may not be
    /// up yet.
    fn configure(settings: &Settings) -> Result<Self>;

    /// The image's id, or `None` when the runtime does not have it.
    fn image_id(&mut self, image: &str) -> Result<Option<String>>;

    /// Loads a `docker save` / OCI image archive (already decompressed by the host) and
    /// makes `image` name the image it holds. The archive arrives as the host downloads
    /// it: read it incrementally or send it on as an HTTP body
    /// ([`http::Request::stream_body`]); never collect it whole, it can be gigabytes.
    fn image_load(&mut self, image: &str, archive: Archive) -> Result<()>;

    /// Gives image `source` the additional name `target`.
    fn image_tag(&mut self, source: &str, target: &str) -> Result<()>;

    /// Removes the image: `true` when one was removed, `false` when it was absent.
    fn image_remove(&mut self, image: &str) -> Result<bool>;

    /// Starts the agent. An agent of that name that already runs from the same image
    /// (label [`IMAGE_LABEL`]) is left as it is and returned; one that is stopped or from
    /// another image is replaced. One whose [`PLUGIN_LABEL`] differs from the spec's is
    /// not ours: fail with [`EngineError::Rejected`] and leave it alone.
    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo>;

    /// Stops and removes the agent: `true` when one existed, `false` when none did.
    fn agent_stop(&mut self, name: &str) -> Result<bool>;

    /// Every agent carrying all of `labels` (name, value), running or not.
    fn agent_list(&mut self, labels: &[(String, String)]) -> Result<Vec<AgentInfo>>;
}

/// Makes a type implementing [`Engine`] the export of this component.
///
/// Use it once, at the top level of the engine crate (a `cdylib`):
///
/// ```ignore
/// context_engines_sdk::export_engine!(MyEngine);
/// ```
///
/// The engine crate needs no dependency on `wit-bindgen`: the bindings live in the SDK.
#[macro_export]
macro_rules! export_engine {
    ($engine:ty) => {
        #[doc(hidden)]
        struct __ContextEnginesExport;

        impl $crate::__private::Export for __ContextEnginesExport {
            type Engine = $engine;
        }

        $crate::bindings::__export_engine_world!(__ContextEnginesExport with_types_in $crate::bindings);
    };
}

/// What [`export_engine!`] expands to relies on; not part of the API.
#[doc(hidden)]
pub mod __private {
    use std::any::Any;
    use std::cell::RefCell;

    use crate::bindings::exports::context_engines::engine::lifecycle as export;
    use crate::bindings::wasi::io::streams::InputStream;
    use crate::wit;
    use crate::{AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, Settings};

    /// Ties the type generated by `export_engine!` to the engine type.
    pub trait Export {
        /// The engine exported.
        type Engine: Engine;
    }

    enum Slot {
        /// `configure` has not been called on this instance.
        Empty,
        /// `configure` failed with this error.
        Failed(EngineError),
        /// The engine, type-erased so one static serves any engine type.
        Ready(Box<dyn Any>),
    }

    thread_local! {
        static INSTANCE: RefCell<Slot> = const { RefCell::new(Slot::Empty) };
    }

    fn with_engine<E: Engine, T>(f: impl FnOnce(&mut E) -> crate::Result<T>) -> Result<T, wit::EngineError> {
        INSTANCE.with_borrow_mut(|slot| match slot {
            Slot::Ready(engine) => match engine.downcast_mut::<E>() {
                Some(engine) => f(engine).map_err(Into::into),
                None => unreachable!("one engine type per component"),
            },
            Slot::Failed(e) => {
                Err(EngineError::BadConfig(format!("engine {} is not configured: configure failed: {}", E::describe().name, e.message()))
                    .into())
            }
            Slot::Empty => Err(EngineError::BadConfig(format!("engine {} was called before configure", E::describe().name)).into()),
        })
    }

    fn to_wit_pairs(pairs: Vec<(String, String)>) -> Vec<wit::KeyValue> {
        pairs.into_iter().map(|(key, value)| wit::KeyValue { key, value }).collect()
    }

    fn from_wit_pairs(pairs: Vec<wit::KeyValue>) -> Vec<(String, String)> {
        pairs.into_iter().map(|kv| (kv.key, kv.value)).collect()
    }

    fn to_wit_agent(info: AgentInfo) -> wit::AgentInfo {
        wit::AgentInfo { name: info.name, id: info.id, running: info.running, labels: to_wit_pairs(info.labels) }
    }

    fn to_wit_info(info: EngineInfo) -> wit::EngineInfo {
        wit::EngineInfo { name: info.name, version: info.version, features: info.features }
    }

    impl<T: Export> export::Guest for T {
        fn describe() -> wit::EngineInfo {
            to_wit_info(T::Engine::describe())
        }

        fn configure(settings_json: String) -> Result<(), wit::EngineError> {
            let name = T::Engine::describe().name;
            let built = Settings::parse(&name, &settings_json).and_then(|s| T::Engine::configure(&s));
            INSTANCE.with_borrow_mut(|slot| match built {
                Ok(engine) => {
                    *slot = Slot::Ready(Box::new(engine));
                    Ok(())
                }
                Err(e) => {
                    *slot = Slot::Failed(e.clone());
                    Err(e.into())
                }
            })
        }

        fn image_id(image: String) -> Result<Option<String>, wit::EngineError> {
            with_engine::<T::Engine, _>(|e| e.image_id(&image))
        }

        fn image_load(image: String, archive: InputStream) -> Result<(), wit::EngineError> {
            let archive = Archive::new(archive);
            with_engine::<T::Engine, _>(|e| e.image_load(&image, archive))
        }

        fn image_tag(source: String, target: String) -> Result<(), wit::EngineError> {
            with_engine::<T::Engine, _>(|e| e.image_tag(&source, &target))
        }

        fn image_remove(image: String) -> Result<bool, wit::EngineError> {
            with_engine::<T::Engine, _>(|e| e.image_remove(&image))
        }

        fn agent_start(spec: wit::AgentSpec) -> Result<wit::AgentInfo, wit::EngineError> {
            let spec = AgentSpec {
                name: spec.name,
                image: spec.image,
                env: from_wit_pairs(spec.env),
                labels: from_wit_pairs(spec.labels),
                network: spec.network,
                drpcli: spec.drpcli,
            };
            with_engine::<T::Engine, _>(|e| e.agent_start(spec)).map(to_wit_agent)
        }

        fn agent_stop(name: String) -> Result<bool, wit::EngineError> {
            with_engine::<T::Engine, _>(|e| e.agent_stop(&name))
        }

        fn agent_list(labels: Vec<wit::KeyValue>) -> Result<Vec<wit::AgentInfo>, wit::EngineError> {
            let labels = from_wit_pairs(labels);
            with_engine::<T::Engine, _>(|e| e.agent_list(&labels)).map(|agents| agents.into_iter().map(to_wit_agent).collect())
        }
    }
}
