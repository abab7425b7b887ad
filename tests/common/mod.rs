//! Shared helpers: a real server on an ephemeral port.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use switchboard::{Config, MetricsSnapshot, Server};

pub const WAIT: Duration = Duration::from_secs(20);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,rtc=error,webrtc=error".into()),
        )
        .with_test_writer()
        .try_init();
}

pub async fn start_server() -> Server {
    start_server_with(Config::ephemeral()).await
}

pub async fn start_server_with(config: Config) -> Server {
    init_tracing();
    Server::start(config).await.expect("server starts")
}

/// Polls the server's metrics until `pred` holds, or panics with the last snapshot.
pub async fn wait_metrics(server: &Server, what: &str, pred: impl Fn(&MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let m = server.metrics();
        if pred(&m) {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; metrics: {m:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when nothing of any participant is left on the server.
pub fn all_freed(m: &MetricsSnapshot) -> bool {
    m.rooms == 0
        && m.participants == 0
        && m.published_tracks == 0
        && m.receivers == 0
        && m.downtracks == 0
        && m.peer_connections == 0
        && m.websockets == 0
}

pub async fn get(url: &str) -> (u16, String) {
    let url = url::Url::parse(url).expect("url");
    let host = url.host_str().expect("host").to_string();
    let port = url.port().expect("port");
    let path = url.path().to_string();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
