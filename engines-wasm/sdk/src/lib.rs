//! # context-engines-sdk
//!
//! The guest side of [context-engines](https://github.com/context-engines/context-engines):
//! everything an *engine* needs, so that an engine is one type implementing one trait.
//!
//! An engine is a WebAssembly component (`wasm32-wasip2`) that the context-engines host
//! (a Digital Rebar Provision plugin provider) loads to run *agents* — long-lived
//! containers running `drpcli machines processjobs` for one machine — on some container
//! runtime: it loads images, starts, stops and lists agents. The component model
//! contract is the WIT world `context-engines:engine/engine@0.2.0` (shipped in this
//! crate's `wit/` directory, each item documented there); this crate hides it behind
//! plain Rust types.
//!
//! * [`Engine`]: the trait an engine implements, one method per function of the WIT
//!   interface `context-engines:engine/lifecycle@0.2.0`.
//! * [`AgentSpec`]: the agent to run, computed whole by the host. An engine translates
//!   every field into its runtime's request, or refuses the start with
//!   [`EngineError::Rejected`] naming what it cannot apply; it adds nothing of its own.
//! * [`feature`]: the words an engine declares in [`EngineInfo::features`] to say which
//!   optional parts of the spec it applies; the host refuses, by itself, a start needing
//!   one the engine does not declare.
//! * [`export_engine!`]: makes a type implementing [`Engine`] the component's export.
//!   The SDK keeps one value of that type per component instance: [`Engine::configure`]
//!   builds it, every later call borrows it mutably.
//! * [`Settings`]: the engine's configuration (a JSON object), with accessors whose
//!   errors name the key.
//! * [`Archive`]: an image archive as the host streams it in.
//! * [`http`]: a small blocking HTTP client over `wasi:http/outgoing-handler@0.2.12`
//!   using the [`http`](::http) crate's types, the only way out of the sandbox (and only
//!   to the hosts the operator listed in the engine's `allowed-hosts`). It can splice an
//!   [`Archive`] into a request body without the bytes passing through the engine's
//!   memory.
//! * [`log`]: lines into the plugin's log ([`info!`], [`warn!`], …).
//! * [`time`]: the monotonic clock and [`time::sleep`].
//!
//! ## Writing an engine
//!
//! Make a library crate of type `cdylib` depending on this one:
//!
//! ```toml
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! context-engines-sdk = "0.1"
//!
//! [profile.release]
//! opt-level = "s"
//! lto = true
//! strip = true
//! panic = "abort"     # a panic is a trap: the host discards the instance
//! ```
//!
//! implement [`Engine`] on a type holding what the engine derives from its settings, and
//! export it with [`export_engine!`]. A complete engine driving a (made-up) REST runtime:
//!
//! ```
//! use context_engines_sdk::http::{Request, encode, encode_path};
//! use context_engines_sdk::{self as sdk, AgentInfo, AgentSpec, Archive, Engine, EngineError, EngineInfo, Result, Settings};
//!
//! /// The engine: where its runtime is.
//! struct Rest {
//!     base_url: String,
//! }
//!
//! impl Rest {
//!     /// Sends a request; a transport failure means the runtime is unreachable.
//!     fn send(&self, request: Request) -> Result<sdk::http::Response> {
//!         request.send().map_err(|e| EngineError::Unreachable(e.to_string()))
//!     }
//! }
//!
//! impl Engine for Rest {
//!     fn describe() -> EngineInfo {
//!         // No feature words: the host gives it only specs without options.
//!         EngineInfo::new("rest", env!("CARGO_PKG_VERSION"))
//!     }
//!     fn configure(settings: &Settings) -> Result<Self> {
//!         let base_url = settings.required_string("base-url", "http://127.0.0.1:8080")?;
//!         Ok(Rest { base_url: base_url.trim_end_matches('/').to_string() })
//!     }
//!     fn image_id(&mut self, image: &str) -> Result<Option<String>> {
//!         let response = self.send(Request::get(format!("{}/images/{}", self.base_url, encode_path(image))))?;
//!         match response.status() {
//!             200 => Ok(Some(response.text())),
//!             404 => Ok(None),
//!             _ => Err(EngineError::Failed(format!("image {image}: {}", response.status_line()))),
//!         }
//!     }
//!     fn image_load(&mut self, image: &str, archive: Archive) -> Result<()> {
//!         // The archive may be gigabytes: the host splices it into the request body.
//!         let url = format!("{}/images?name={}", self.base_url, encode(image));
//!         let response = self.send(Request::post(url).header("content-type", "application/x-tar").stream_body(archive))?;
//!         if response.is_success() { Ok(()) } else { Err(EngineError::BadArchive(response.status_line())) }
//!     }
//!     fn image_tag(&mut self, source: &str, target: &str) -> Result<()> {
//!         let url = format!("{}/images/{}/tag?as={}", self.base_url, encode_path(source), encode(target));
//!         let response = self.send(Request::post(url))?; // no body: sent with content-length: 0
//!         if response.is_success() { Ok(()) } else { Err(EngineError::Rejected(response.status_line())) }
//!     }
//!     fn image_remove(&mut self, image: &str) -> Result<bool> {
//!         let response = self.send(Request::delete(format!("{}/images/{}", self.base_url, encode_path(image))))?;
//!         Ok(response.is_success())
//!     }
//!     fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo> {
//!         let body = serde_json::json!({"name": spec.name, "image": spec.image, "env": spec.env, "labels": spec.labels});
//!         let response = self.send(Request::post(format!("{}/agents", self.base_url)).json(&body))?;
//!         if !response.is_success() {
//!             return Err(EngineError::Rejected(format!("starting {}: {}", spec.name, response.status_line())));
//!         }
//!         sdk::info!("started agent {}", spec.name);
//!         Ok(AgentInfo { id: response.text(), name: spec.name, running: true, labels: spec.labels })
//!     }
//!     fn agent_stop(&mut self, name: &str) -> Result<bool> {
//!         let response = self.send(Request::delete(format!("{}/agents/{}", self.base_url, encode(name))))?;
//!         Ok(response.status() != 404)
//!     }
//!     fn agent_list(&mut self, _labels: &[(String, String)]) -> Result<Vec<AgentInfo>> {
//!         Ok(Vec::new())
//!     }
//! }
//!
//! sdk::export_engine!(Rest);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (`rustup target add
//! wasm32-wasip2` first): the `.wasm` rustc writes for a `cdylib` already is a component.
//! The host only lets it reach the `host:port`s of its `allowed-hosts` setting, e.g.
//! `{"base-url": "http://127.0.0.1:8080", "allowed-hosts": ["127.0.0.1:8080"]}`.
//!
//! The crate also builds for the build machine's own target, so an engine's pure parts
//! (request bodies, response parsing) can be unit-tested with `cargo test`; calling into
//! the host (HTTP, logging, the clock) there panics.
#![warn(missing_docs)]

use std::fmt;

pub mod archive;
pub mod http;
pub mod log;
pub mod settings;
pub mod time;

pub use archive::Archive;
pub use settings::Settings;

/// The records of [`AgentSpec`]'s optional parts, as the WIT defines them (every field
/// documented in `wit/engine.wit`).
pub use bindings::context_engines::engine::types::{Mount, MountKind, Process, Resources, Security};

/// The words of [`EngineInfo::features`] the host reads. Declare exactly those the
/// engine applies in full.
pub mod feature {
    /// Every [`crate::Mount`] (binds beyond the drpcli one, volumes, tmpfs).
    pub const MOUNTS: &str = "mounts";
    /// Every field of [`crate::Resources`].
    pub const RESOURCES: &str = "resources";
    /// Every field of [`crate::Security`].
    pub const SECURITY: &str = "security";
    /// Every field of [`crate::Process`].
    pub const PROCESS: &str = "process";
    /// [`crate::Engine::agent_logs`] works.
    pub const LOGS: &str = "logs";
}

/// The bindings `wit-bindgen` generates from `wit/` (world `engine`, with the WASI
/// interfaces it reaches: `wasi:http@0.2.12`, `wasi:io@0.2.12`,
/// `wasi:clocks/monotonic-clock@0.2.12`). Engines normally need none of it; it is public
/// for the exceptional engine that wants a raw WASI call, and for [`export_engine!`].
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
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
    /// What the engine applies beyond the fields every engine applies: the words of
    /// [`feature`], which the host reads, and free-form words it only shows.
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
/// `drpcli machines processjobs` for one machine. Computed whole by the host: apply every
/// field, or refuse the start with [`EngineError::Rejected`] naming what cannot be
/// applied; add nothing of your own (no default env, mounts or entrypoint).
///
/// Its `Debug` output hides the environment's values: `RS_TOKEN` is a machine token.
#[derive(Clone)]
pub struct AgentSpec {
    /// Unique name, `drp-<context>-<machine-uuid>`; use it as the runtime's name so the
    /// agent can be found again by it.
    pub name: String,
    /// Image reference, exactly as the Context names it.
    pub image: String,
    /// `None`: the image's own entrypoint and command. `Some`: this entrypoint, and the
    /// image's command dropped.
    pub entrypoint: Option<Vec<String>>,
    /// The whole environment: `RS_UUID`, `RS_TOKEN` (keep it out of logs), `RS_CONTEXT`,
    /// `RS_ENDPOINTS`, `PATH` when drpcli is injected, and the operator's own.
    pub env: Vec<(String, String)>,
    /// Labels to attach and return from [`Engine::agent_list`]: `drp.machine`,
    /// `drp.context`, `drp.plugin`, `drp.engine`, `drp.image`, [`SPEC_LABEL`], and the
    /// operator's own. The host finds agents by them.
    pub labels: Vec<(String, String)>,
    /// Network mode, e.g. `host`.
    pub network: String,
    /// Every mount, in order (the drpcli bind at `/usr/bin/drpcli` among them when the
    /// host injects drpcli).
    pub mounts: Vec<Mount>,
    /// Resource limits (feature [`feature::RESOURCES`]).
    pub resources: Resources,
    /// User and privileges (feature [`feature::SECURITY`]).
    pub security: Security,
    /// How the process runs (feature [`feature::PROCESS`]).
    pub process: Process,
}

/// The label carrying the image an agent was started from.
pub const IMAGE_LABEL: &str = "drp.image";
/// The label naming the plugin instance an agent belongs to; an engine never removes a
/// container whose value differs from its spec's.
pub const PLUGIN_LABEL: &str = "drp.plugin";
/// The label carrying a digest of the spec: a running agent with the spec's value is
/// kept, anything else of that name replaced.
pub const SPEC_LABEL: &str = "drp.spec";

impl AgentSpec {
    /// A spec with no entrypoint, env, labels, mounts or options: the start of one built
    /// field by field (tests, mostly).
    pub fn new(name: impl Into<String>, image: impl Into<String>, network: impl Into<String>) -> AgentSpec {
        AgentSpec {
            name: name.into(),
            image: image.into(),
            entrypoint: None,
            env: Vec::new(),
            labels: Vec::new(),
            network: network.into(),
            mounts: Vec::new(),
            resources: Resources { memory: None, memory_swap: None, cpus: None, pids_limit: None, shm_size: None },
            security: Security {
                user: None,
                cap_add: Vec::new(),
                cap_drop: Vec::new(),
                security_opt: Vec::new(),
                devices: Vec::new(),
                privileged: None,
                read_only_rootfs: None,
            },
            process: Process { workdir: None, init: None, stop_timeout_secs: None, extra_hosts: Vec::new(), dns: Vec::new() },
        }
    }

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
            .field("entrypoint", &self.entrypoint)
            .field("env", &env)
            .field("labels", &self.labels)
            .field("network", &self.network)
            .field("mounts", &self.mounts)
            .field("resources", &self.resources)
            .field("security", &self.security)
            .field("process", &self.process)
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

    /// Starts the agent. The keep rule: an agent of that name that runs and carries the
    /// spec's [`SPEC_LABEL`] value is left as it is and returned; anything else of that
    /// name (stopped, or another spec) is replaced. One whose [`PLUGIN_LABEL`] differs
    /// from the spec's is not ours: fail with [`EngineError::Rejected`] and leave it
    /// alone. Check the image before removing anything, so a failed start leaves a
    /// running agent untouched.
    fn agent_start(&mut self, spec: AgentSpec) -> Result<AgentInfo>;

    /// Stops and removes the agent: `true` when one existed, `false` when none did.
    fn agent_stop(&mut self, name: &str) -> Result<bool>;

    /// Every agent carrying all of `labels` (name, value), running or not.
    fn agent_list(&mut self, labels: &[(String, String)]) -> Result<Vec<AgentInfo>>;

    /// The last `lines` lines of the agent's output (stdout and stderr as the runtime
    /// interleaves them, oldest first, without line ends). The host asks only an engine
    /// declaring [`feature::LOGS`]; the default refuses.
    fn agent_logs(&mut self, name: &str, _lines: u32) -> Result<Vec<String>> {
        Err(EngineError::Rejected(format!("engine {} cannot show agent logs (asked for {name})", Self::describe().name)))
    }
}

/// Makes a type implementing [`Engine`] the export of this component.
///
/// Use it once, at the top level of the engine crate (a `cdylib`), as in the
/// [crate-level example](crate#writing-an-engine):
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
                entrypoint: spec.entrypoint,
                env: from_wit_pairs(spec.env),
                labels: from_wit_pairs(spec.labels),
                network: spec.network,
                mounts: spec.mounts,
                resources: spec.resources,
                security: spec.security,
                process: spec.process,
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

        fn agent_logs(name: String, lines: u32) -> Result<Vec<String>, wit::EngineError> {
            with_engine::<T::Engine, _>(|e| e.agent_logs(&name, lines))
        }
    }
}
