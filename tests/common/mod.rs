//! Shared helpers: a real server on an ephemeral port.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use switchboard::{Config, MetricsSnapshot, Server};

pub mod simulcast;

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

/// The server binary in a process of its own (for what must be seen from outside: its
/// sockets, its log, being killed).
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub url: String,
    pub udp_port: u16,
    /// Bytes it has logged since it listened (its output is read continuously, so a full
    /// pipe never blocks it).
    pub logged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts `switchboard serve` on ephemeral ports with `extra` flags; returns once it listens.
pub async fn spawn_server(extra: &[&str]) -> ServerProcess {
    use tokio::io::AsyncBufReadExt;
    init_tracing();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["serve", "--listen", "127.0.0.1:0", "--udp-port", "0"])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("server starts");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut udp_port = None;
    let url = loop {
        let line = strip_ansi(
            &stdout
                .next_line()
                .await
                .expect("server output")
                .expect("a listening line"),
        );
        if let Some(rest) = line.split("udp_port=").nth(1) {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            udp_port = digits.parse::<u16>().ok();
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break format!("ws://{}/ws", rest.trim());
        }
    };
    let logged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    count_lines(stdout.into_inner(), logged.clone());
    count_lines(child.stderr.take().expect("stderr"), logged.clone());
    ServerProcess {
        child,
        url,
        udp_port: udp_port.expect("the media port in the log"),
        logged,
    }
}

/// Reads a stream of log lines to the end, counting its bytes.
fn count_lines(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::AsyncBufReadExt;
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            total.fetch_add(line.len() + 1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// Log lines as text, without terminal colours.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
