//! What the run measures of the machine and the server besides media: the server's
//! forwarded-packet counter (from its `/metrics`), and the CPU and memory of both processes.

use std::time::{Duration, Instant};

use crate::load::report::{MemorySample, ProcessSample};

/// Resident memory of the server (with `--pid`) and of the tester, every
/// [`MEMORY_SAMPLE_EVERY`] of media time: a long run shows whether either creeps.
#[derive(Default)]
pub(crate) struct MemoryTimeline {
    pub(crate) server: Vec<MemorySample>,
    pub(crate) tester: Vec<MemorySample>,
    next: Duration,
}

pub(crate) const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(10);

impl MemoryTimeline {
    pub(crate) fn sample(&mut self, pid: Option<u32>, since: Instant) {
        if since.elapsed() >= self.next {
            self.sample_now(pid, since);
            self.next = since.elapsed() + MEMORY_SAMPLE_EVERY;
        }
    }

    pub(crate) fn sample_now(&mut self, pid: Option<u32>, since: Instant) {
        let at_seconds = since.elapsed().as_secs_f64();
        let point = |s: ProcessSample| MemorySample {
            at_seconds,
            rss_mib: s.rss_bytes as f64 / 1_048_576.0,
        };
        if let Some(s) = pid.and_then(ProcessSample::of_pid) {
            self.server.push(point(s));
        }
        if let Some(s) = ProcessSample::of_self() {
            self.tester.push(point(s));
        }
    }
}

/// The server's CPU and memory with its forwarded-packet counter, read together.
pub(crate) async fn server_sample(
    pid: Option<u32>,
    metrics_url: Option<&str>,
) -> Option<(ProcessSample, u64)> {
    let forwarded = scrape_counter(metrics_url?, "switchboard_packets_out_total").await?;
    Some((ProcessSample::of_pid(pid?)?, forwarded))
}

/// `ws://host:port/ws` → `http://host:port/metrics`.
pub(crate) fn metrics_url(ws_url: &str) -> Option<String> {
    let mut url = url::Url::parse(ws_url).ok()?;
    let scheme = if url.scheme() == "wss" {
        "https"
    } else {
        "http"
    };
    url.set_scheme(scheme).ok()?;
    url.set_path("/metrics");
    Some(url.to_string())
}

/// Reads one counter from the server's Prometheus text, over plain HTTP only.
pub(crate) async fn scrape_counter(url: &str, name: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(url).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?.to_string();
    let port = url.port_or_known_default()?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await.ok()?;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()?
}
