//! The library's error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("WebRTC: {0}")]
    Rtc(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("media engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
}
