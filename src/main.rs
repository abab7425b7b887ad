//! The `switchboard` command line: `serve` (the default) and `load`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use switchboard::{Config, Server};

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A WebRTC selective forwarding unit"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(Box<Config>),
    /// Load-test a running server with simulated publishers and subscribers.
    Load(Box<switchboard::load::LoadConfig>),
}

/// What an operator acts on: our own info, everyone's warnings, but not the WebRTC stack's
/// per-datagram and per-handshake warnings (junk from the network, harmless SDP details).
const DEFAULT_LOG: &str = "warn,switchboard=info,rtc=error,rtc_ice=error,rtc_dtls=error,\
rtc_sctp=error,rtc_srtp=error,rtc_datachannel=error,webrtc=error";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    let cli = Cli::parse();
    raise_open_file_limit();
    let config = match cli.command {
        Some(Command::Serve(config)) => *config,
        Some(Command::Load(load)) => return run_load(*load).await,
        None => cli.serve,
    };
    let mut server = Server::start(config).await.context("starting the server")?;
    println!("switchboard listening on {}", server.http_url());
    tokio::select! {
        result = server.stopped() => return result.context("the server stopped"),
        _ = shutdown_signal() => {}
    }
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

/// Each signaling socket is a descriptor, and many systems start processes with a soft limit
/// of 1,024: raised to the hard limit, as servers do, so `--max-sockets` is what bites.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// SIGINT (Ctrl-C) or SIGTERM (service managers, containers).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn run_load(config: switchboard::load::LoadConfig) -> anyhow::Result<()> {
    let json = config.json.clone();
    let html = config.html.clone();
    let report = switchboard::load::run(config).await?;
    print!("{}", report.table());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = html {
        let page = switchboard::load::html::render(&report);
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed() {
        std::process::exit(2);
    }
    Ok(())
}
