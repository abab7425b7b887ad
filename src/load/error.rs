//! The load tester's and the protocol client's own errors.

/// What can go wrong for one protocol client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {url}: {source}")]
    Connect {
        url: String,
        source: tokio_tungstenite::tungstenite::Error,
    },
    #[error("the server closed the signaling socket")]
    Closed,
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The server answered with an `error` message: its code, as the protocol spells it.
    #[error("server refused: {code}: {message}")]
    Refused { code: String, message: String },
    #[error("WebRTC: {0}")]
    Rtc(String),
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad load shape: {0}")]
    Shape(String),
    #[error("loading the clip: {0}")]
    Clip(String),
}
