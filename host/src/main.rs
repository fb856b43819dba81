//! `context-engines`: a dr-provision plugin provider that keeps one agent per machine
//! running wherever its Context says, through pluggable engines.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use context_engines::drp::socket::DrpSocket;
use context_engines::environment::Environment;
use context_engines::params::Settings;
use context_engines::plugin::Plugin;
use context_engines::protocol::Service;

#[derive(Parser)]
#[command(name = "context-engines", version, about = "dr-provision plugin provider: Contexts run as agents through pluggable engines")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the PluginProvider definition as JSON.
    Define,
    /// Write the embedded assets (bundled WASM engines) into DIR.
    Unpack { dir: PathBuf },
    /// Serve dr-provision on TO_PLUGIN_SOCK, talking back over FROM_PLUGIN_SOCK.
    Listen { to_plugin_sock: PathBuf, from_plugin_sock: PathBuf },
    /// Tools for WASM engine authors.
    Engines {
        #[command(subcommand)]
        command: EnginesCommand,
    },
}

#[derive(Subcommand)]
enum EnginesCommand {
    /// Validate FILE against the engine world and print what it exports and imports.
    Check { file: PathBuf },
    /// Print the SHA-256 of every engine file in DIR as JSON, ready to be the
    /// `context-engines/engine-sha256` param.
    Digests { dir: PathBuf },
    /// Run the conformance kit: every engine-level behaviour of the contract, against
    /// the engine's real runtime. One line per check, then `N passed, M failed`; exits
    /// non-zero when a check fails. Everything it creates is removed at the end.
    Test(TestArgs),
}

#[derive(clap::Args)]
struct TestArgs {
    /// The engine's `.wasm` file.
    #[arg(required_unless_present = "native", conflicts_with = "native")]
    file: Option<PathBuf>,
    /// Test a native engine instead: `docker` or `podman`.
    #[arg(long)]
    native: Option<String>,
    /// The engine's entry of `context-engines/engine-config`, as JSON, e.g.
    /// '{"base-url":"http://127.0.0.1:2375","allowed-hosts":["127.0.0.1:2375"]}'.
    #[arg(long, default_value = "{}")]
    config: String,
    /// Run only these check groups (describe, images, agents, limits), comma-separated.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Size of the large image archive in MiB (0 leaves that check out).
    #[arg(long, default_value_t = 1024)]
    large_mb: u64,
    /// Network mode of the kit's agents.
    #[arg(long, default_value = "host")]
    network: String,
    /// As `context-engines/wasm-memory-mb`.
    #[arg(long, default_value_t = 64)]
    memory_mb: u64,
    /// As `context-engines/wasm-deadline-ms`.
    #[arg(long, default_value_t = 30_000)]
    deadline_ms: u64,
    /// As `context-engines/wasm-max-instances`.
    #[arg(long, default_value_t = 4)]
    max_instances: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Define => print_json(&context_engines::provider::define()),
        Command::Unpack { dir } => {
            context_engines::provider::unpack(&dir).map_err(|e| anyhow::anyhow!("unpacking into {}: {e}", dir.display()))
        }
        Command::Listen { to_plugin_sock, from_plugin_sock } => listen(to_plugin_sock, from_plugin_sock),
        Command::Engines { command: EnginesCommand::Check { file } } => check_engine(&file),
        Command::Engines { command: EnginesCommand::Test(args) } => test_engine(args),
        Command::Engines { command: EnginesCommand::Digests { dir } } => context_engines::wasm::provenance::digests(&dir)
            .map_err(|e| anyhow::anyhow!("engines digests: {e}"))
            .and_then(|digests| print_json(&serde_json::json!(digests))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("context-engines: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_engine(file: &std::path::Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(context_engines::wasm::check::check(file)).map_err(|e| anyhow::anyhow!("engines check: {e}"))?;
    print!("{report}");
    Ok(())
}

fn test_engine(args: TestArgs) -> anyhow::Result<()> {
    use context_engines::conformance::{self, Group, Options, Subject};
    let groups = if args.only.is_empty() {
        Group::ALL.to_vec()
    } else {
        args.only.iter().map(|g| Group::parse(g)).collect::<Result<_, _>>().map_err(|e| anyhow::anyhow!("engines test: --only: {e}"))?
    };
    let options = Options { groups, large_mb: args.large_mb, network: args.network };
    let limits = context_engines::wasm::Limits {
        deadline: Duration::from_millis(args.deadline_ms),
        memory_bytes: usize::try_from(args.memory_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
        max_instances: args.max_instances,
    };
    // The engine's own log lines (and the host's) on stderr: what an author reads when
    // a check fails. RUST_LOG=debug shows more.
    context_engines::logging::init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let subject = match (&args.file, &args.native) {
            (_, Some(native)) => Subject::native(native, &args.config),
            (Some(file), None) => Subject::wasm(file, &args.config, limits).await,
            (None, None) => Err("name an engine file or --native".to_string()),
        }
        .map_err(|e| anyhow::anyhow!("engines test: {e}"))?;
        let mut out = std::io::stdout();
        let interrupted = async {
            // Without a handler Ctrl-C would leave the kit's agents and images behind.
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        Ok::<_, anyhow::Error>(conformance::run(subject, options, &mut out, interrupted).await)
    })?;
    println!("{}", report.summary());
    if report.failed() > 0 { Err(anyhow::anyhow!("engines test: {} of the checks failed", report.failed())) } else { Ok(()) }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn listen(to_plugin_sock: PathBuf, from_plugin_sock: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        context_engines::logging::init();
        let env = Environment::from_process();
        let socket = DrpSocket::new(&from_plugin_sock);
        context_engines::logging::forward_to(Arc::new(socket.clone()));
        let settings = Settings::from_params(&serde_json::json!({}), &env)?;
        let scratch_dir = std::env::current_dir()?;
        let plugin = Arc::new(Plugin::new(env, socket.clone(), settings, scratch_dir.clone())?);
        let service = Service::new(plugin, Some(scratch_dir.join("wasm-cache")));
        let listener =
            context_engines::protocol::bind(&to_plugin_sock).map_err(|e| anyhow::anyhow!("binding {}: {e}", to_plugin_sock.display()))?;
        let server = tokio::spawn(context_engines::protocol::serve(listener, Arc::clone(&service)));
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "READY!")?;
            out.flush()?;
        }
        tracing::info!("listening on {}", to_plugin_sock.display());
        wait_for_stop(&service).await;
        // Let the reply to /stop reach dr-provision before the socket goes away, and the
        // settles under way finish, so no start is cut between its create and its start.
        tokio::join!(tokio::time::sleep(Duration::from_millis(100)), service.reconciler.drain(Duration::from_secs(10)));
        server.abort();
        if let Err(e) = socket.leaving().await {
            tracing::warn!("telling dr-provision the plugin is leaving: {e}");
        }
        let _ = std::fs::remove_file(&to_plugin_sock);
        tracing::info!("stopped; agents keep running");
        Ok(())
    })
}

/// Until `/stop`, SIGTERM or SIGINT.
async fn wait_for_stop(service: &Service) {
    let mut stop = service.shutdown_signal();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stop| *stop) => {}
        _ = term => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
    }
    service.request_shutdown();
}
