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
    Serve(Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,webrtc=warn,rtc=warn")),
        )
        .init();
    let cli = Cli::parse();
    let config = match cli.command {
        Some(Command::Serve(config)) => config,
        None => cli.serve,
    };
    let server = Server::start(config).await.context("starting the server")?;
    println!("switchboard listening on {}", server.http_url());
    let shutdown = tokio::signal::ctrl_c();
    tokio::select! {
        result = server_wait(&server) => result?,
        _ = shutdown => {}
    }
    server.shutdown().await.context("shutting down")?;
    Ok(())
}

async fn server_wait(_server: &Server) -> anyhow::Result<()> {
    std::future::pending::<()>().await;
    Ok(())
}
