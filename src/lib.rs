//! switchboard: a WebRTC selective forwarding unit.
//!
//! Start a [`Server`] from a [`Config`], read its address, shut it down. The binary
//! (`src/main.rs`) is a thin command line over this.

pub mod config;
pub mod engine;
mod error;
pub mod http;
pub mod load;
pub mod media;
pub mod metrics;
pub mod ratelimit;
pub mod room;
pub mod signal;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

pub use config::Config;
pub use error::Error;
pub use metrics::{Metrics, MetricsSnapshot};

use crate::engine::Engine;

/// What every request handler shares.
pub struct AppState {
    pub config: Config,
    pub registry: room::Registry,
    pub metrics: Arc<Metrics>,
    pub engine: Arc<Engine>,
    /// Where the engine's events find their session.
    pub sessions: Arc<signal::sessions::Sessions>,
    pub accepting: std::sync::atomic::AtomicBool,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Server {
    /// Binds the listener and starts serving.
    pub async fn start(config: Config) -> Result<Server, Error> {
        config.validate()?;
        let metrics = Arc::new(Metrics::default());
        let sessions = Arc::new(signal::sessions::Sessions::default());
        let engine = Arc::new(Engine::start(
            config.engine()?,
            metrics.clone(),
            sessions.clone(),
        )?);
        info!(
            udp_port = engine.udp_port(),
            workers = engine.workers(),
            "media engine started"
        );
        let state = Arc::new(AppState {
            registry: room::Registry::new(
                config.max_rooms,
                config.max_participants_per_room,
                config.max_tracks_per_participant,
                Arc::new(signal::link::EnginePlacer {
                    engine: engine.clone(),
                }),
                metrics.clone(),
            ),
            engine,
            sessions,
            metrics,
            accepting: std::sync::atomic::AtomicBool::new(true),
            config,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (addr, task) = http::serve(state.clone(), shutdown_rx).await?;
        info!(%addr, tls = state.config.tls_cert.is_some(), "switchboard listening");
        Ok(Server {
            addr,
            state,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://` or `wss://` URL of the signaling endpoint.
    pub fn ws_url(&self) -> String {
        let scheme = if self.state.config.tls_cert.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// `http://` or `https://` base URL.
    pub fn http_url(&self) -> String {
        let scheme = if self.state.config.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        self.state.metrics.snapshot()
    }

    pub fn rooms(&self) -> Vec<room::RoomSnapshot> {
        self.state.registry.snapshot()
    }

    /// The shared UDP port every peer connection's media goes through.
    pub fn udp_port(&self) -> u16 {
        self.state.engine.udp_port()
    }

    /// Stops accepting connections and waits for the listener to close.
    pub async fn shutdown(self) -> Result<(), Error> {
        self.state
            .accepting
            .store(false, std::sync::atomic::Ordering::Release);
        let _ = self.shutdown.send(true);
        let result = match self.task.await {
            Ok(result) => result,
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        };
        // Joining the worker threads blocks: off the async threads.
        let engine = self.state.engine.clone();
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        result
    }

    /// Resolves if the listener stops by itself (an accept loop failure, say).
    pub async fn stopped(&mut self) -> Result<(), Error> {
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(Error::Io(std::io::Error::other(e))),
        }
    }
}
