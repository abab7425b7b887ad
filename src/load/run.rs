//! `switchboard load`: simulated publishers and subscribers against a running server.
//!
//! Every simulated participant is a real WebRTC peer (the protocol client), with real ICE,
//! DTLS and SRTP. The run joins them at the ramp rate, lets media flow for the duration,
//! stops the publishers, waits out the tail, and reports what each subscriber got.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use crate::load::client::{Client, PublishOptions};
use crate::load::clip::Clip;
use crate::load::report::{
    LatencySummary, ParticipantReport, ProcessSample, Report, ServerReport, Shape, Thresholds,
    TrackReport,
};

/// The shape of a load test.
#[derive(Debug, Clone, Args)]
pub struct LoadConfig {
    /// Signaling URL of the server under test.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Rooms to fill.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publishing participants per room (they also receive everyone else).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Subscribe-only participants per room.
    #[arg(long, default_value_t = 0)]
    pub subscribers: usize,
    /// Seconds of media after the last join.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Joins per second.
    #[arg(long, default_value_t = 10.0)]
    pub ramp: f64,
    /// Publish no video.
    #[arg(long)]
    pub no_video: bool,
    /// Publish no audio.
    #[arg(long)]
    pub no_audio: bool,
    /// Video bitrate of each synthetic publisher, bits per second.
    #[arg(long, default_value_t = 1_500_000)]
    pub video_bitrate: u32,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub frame_rate: u32,
    /// Seconds between keyframes (publishers also send one on every PLI).
    #[arg(long, default_value_t = 10.0)]
    pub keyframe_interval: f64,
    /// Send a real VP8 clip instead of synthetic frames: `builtin` (the shipped test
    /// pattern) or an IVF file. Latency is not measured on clip packets.
    #[arg(long)]
    pub clip: Option<String>,
    /// Room name prefix; rooms are PREFIX-0, PREFIX-1, ...
    #[arg(long, default_value = "load")]
    pub room_prefix: String,
    /// PID of the server, when it runs on this machine, to report its CPU and memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Fail (exit 2) when packet loss exceeds this percentage.
    #[arg(long)]
    pub max_loss_percent: Option<f64>,
    /// Fail (exit 2) when the p99 end-to-end latency exceeds this many milliseconds.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit 2) when more than this many participants failed to join or dropped.
    #[arg(long, default_value_t = 0)]
    pub max_failures: usize,
    /// Print no live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        LoadConfig {
            url: "ws://127.0.0.1:8080/ws".into(),
            rooms: 1,
            publishers: 2,
            subscribers: 0,
            duration: 10.0,
            ramp: 10.0,
            no_video: false,
            no_audio: false,
            video_bitrate: 1_500_000,
            frame_rate: 30,
            keyframe_interval: 10.0,
            clip: None,
            room_prefix: "load".into(),
            pid: None,
            json: None,
            max_loss_percent: None,
            max_p99_ms: None,
            max_failures: 0,
            quiet: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("bad load shape: {0}")]
    Shape(String),
    #[error("loading the clip: {0}")]
    Clip(String),
}

struct Planned {
    room: String,
    name: String,
    publishes: bool,
}

struct Joined {
    planned: Planned,
    client: Client,
}

impl LoadConfig {
    fn plan(&self) -> Vec<Planned> {
        let mut plan = Vec::new();
        for r in 0..self.rooms {
            let room = format!("{}-{r}", self.room_prefix);
            for p in 0..self.publishers {
                plan.push(Planned {
                    room: room.clone(),
                    name: format!("pub-{r}-{p}"),
                    publishes: true,
                });
            }
            for s in 0..self.subscribers {
                plan.push(Planned {
                    room: room.clone(),
                    name: format!("sub-{r}-{s}"),
                    publishes: false,
                });
            }
        }
        plan
    }

    fn publish_options(&self, clip: Option<Arc<Clip>>) -> PublishOptions {
        PublishOptions {
            video: !self.no_video,
            audio: !self.no_audio,
            video_bitrate_bps: self.video_bitrate,
            frame_rate: self.frame_rate,
            keyframe_interval: Duration::from_secs_f64(self.keyframe_interval.max(0.1)),
            clip,
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        if self.rooms == 0 || self.publishers + self.subscribers == 0 {
            return Err(LoadError::Shape("no participants to simulate".into()));
        }
        if self.no_video && self.no_audio && self.publishers > 0 {
            return Err(LoadError::Shape("publishers need audio or video".into()));
        }
        if !(self.duration > 0.0 && self.ramp > 0.0) {
            return Err(LoadError::Shape(
                "--duration and --ramp must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// Runs a load test and returns its report.
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    config.validate()?;
    let clip = match config.clip.as_deref() {
        None => None,
        Some("builtin") => Some(Arc::new(
            Clip::builtin().map_err(|e| LoadError::Clip(e.to_string()))?,
        )),
        Some(path) => {
            let data = std::fs::read(path).map_err(|e| LoadError::Clip(format!("{path}: {e}")))?;
            Some(Arc::new(
                Clip::from_ivf(&data).map_err(|e| LoadError::Clip(format!("{path}: {e}")))?,
            ))
        }
    };
    let started = Instant::now();
    let tester_before = ProcessSample::of_self();
    let server_before = config.pid.and_then(ProcessSample::of_pid);
    let metrics_url = metrics_url(&config.url);
    let forwarded_before = match &metrics_url {
        Some(url) => scrape_counter(url, "switchboard_packets_out_total").await,
        None => None,
    };
    let scraped_at = Instant::now();

    // Join at the ramp rate; each join runs in its own task so a slow one delays no other.
    let plan = config.plan();
    let total = plan.len();
    let mut joins = JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / config.ramp);
    let options = config.publish_options(clip.clone());
    let mut failures: Vec<String> = Vec::new();
    let mut joined: Vec<Joined> = Vec::new();
    let mut progress = Progress::new(config.quiet);
    for planned in plan {
        let url = config.url.clone();
        let options = options.clone();
        joins.spawn(async move {
            let client = Client::join(&url, &planned.room, &planned.name)
                .await
                .map_err(|e| format!("{}: join: {e}", planned.name))?;
            if planned.publishes {
                client
                    .publish(options)
                    .await
                    .map_err(|e| format!("{}: publish: {e}", planned.name))?;
            }
            Ok::<_, String>(Joined { planned, client })
        });
        tokio::time::sleep(gap).await;
        collect(&mut joins, &mut joined, &mut failures);
        progress.print(&joined, failures.len(), total, false);
    }
    while let Some(result) = joins.join_next().await {
        match result {
            Ok(Ok(j)) => joined.push(j),
            Ok(Err(reason)) => failures.push(reason),
            Err(e) => failures.push(format!("join task: {e}")),
        }
    }

    // Media flows for the duration; stop early if the server goes away.
    let media_started = Instant::now();
    let duration = Duration::from_secs_f64(config.duration);
    while media_started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500).min(duration)).await;
        progress.print(&joined, failures.len(), total, false);
        if !joined.is_empty() && joined.iter().all(|j| j.client.signaling_closed()) {
            break;
        }
    }
    for j in &joined {
        j.client.stop_publishing();
    }
    // The run's tail: packets in flight when publishing stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    progress.print(&joined, failures.len(), total, true);

    let forwarded_after = match &metrics_url {
        Some(url) => scrape_counter(url, "switchboard_packets_out_total").await,
        None => None,
    };
    // The server forwards from the first join on, not only once all have joined.
    let forwarding_secs = scraped_at.elapsed().as_secs_f64();
    let wall = started.elapsed();
    let media_secs = media_started.elapsed().as_secs_f64();
    let server_after = config.pid.and_then(ProcessSample::of_pid);
    let tester_after = ProcessSample::of_self();

    let mut participants = Vec::new();
    let mut all_latencies = new_histogram();
    let mut sent_by: HashMap<String, u64> = HashMap::new();
    for j in &joined {
        let stats = &j.client.publish_stats;
        sent_by.insert(
            j.client.id.clone(),
            stats
                .video_packets
                .load(std::sync::atomic::Ordering::Relaxed)
                + stats
                    .audio_packets
                    .load(std::sync::atomic::Ordering::Relaxed),
        );
    }
    for j in &joined {
        if j.client.signaling_closed() {
            failures.push(format!(
                "{}: signaling socket closed by the server",
                j.planned.name
            ));
        }
        let received = j.client.received();
        let mut latencies = new_histogram();
        let (mut packets, mut bytes, mut lost, mut jitter_ms, mut tracks) =
            (0u64, 0u64, 0u64, 0f64, 0u64);
        let mut first_media: Option<Instant> = None;
        for stats in received.values() {
            packets += stats.packets;
            bytes += stats.bytes;
            lost += stats.lost();
            if stats.packets > 0 {
                tracks += 1;
                if let Some(rate) = clock_rate_of(&stats.kind) {
                    jitter_ms = jitter_ms.max(stats.jitter / f64::from(rate) * 1000.0);
                }
            }
            for &us in &stats.latencies_us {
                for h in [latencies.as_mut(), all_latencies.as_mut()]
                    .into_iter()
                    .flatten()
                {
                    let _ = h.record(us.max(1));
                }
            }
            if let Some(at) = stats.first_packet_at {
                first_media = Some(first_media.map_or(at, |f: Instant| f.min(at)));
            }
        }
        let stats = &j.client.publish_stats;
        participants.push(ParticipantReport {
            name: j.planned.name.clone(),
            room: j.planned.room.clone(),
            id: j.client.id.clone(),
            publishes: j.planned.publishes,
            join_ms: first_media.map(|at| {
                at.saturating_duration_since(j.client.started_at)
                    .as_secs_f64()
                    * 1000.0
            }),
            tracks_received: tracks,
            packets_received: packets,
            bytes_received: bytes,
            packets_lost: lost,
            loss_percent: percent(lost, packets + lost),
            jitter_ms,
            latency: LatencySummary::from_histogram(latencies.as_ref()),
            packets_sent: sent_by.get(&j.client.id).copied().unwrap_or(0),
            video_packets_sent: stats
                .video_packets
                .load(std::sync::atomic::Ordering::Relaxed),
            audio_packets_sent: stats
                .audio_packets
                .load(std::sync::atomic::Ordering::Relaxed),
            tracks: received
                .values()
                .map(|t| TrackReport {
                    publisher_id: t.stream_id.clone(),
                    track_id: t.track_id.clone(),
                    kind: t.kind.clone(),
                    packets: t.packets,
                    lost: t.lost(),
                    first_counter: t.first_counter,
                    last_counter: t.last_counter,
                })
                .collect(),
            keyframe_requests_received: stats
                .plis_received
                .load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    for j in joined {
        j.client.close().await;
    }

    let received: u64 = participants.iter().map(|p| p.packets_received).sum();
    let lost: u64 = participants.iter().map(|p| p.packets_lost).sum();
    let sent: u64 = participants.iter().map(|p| p.packets_sent).sum();
    let join_times: Vec<f64> = participants.iter().filter_map(|p| p.join_ms).collect();
    let server = ServerReport::from_samples(
        server_before,
        server_after,
        forwarded_before
            .zip(forwarded_after)
            .map(|(b, a)| a.saturating_sub(b)),
        forwarding_secs,
        participants.len(),
    );
    let tester = ProcessSample::cpu_seconds_between(tester_before, tester_after);
    let mut report = Report {
        shape: Shape::from(&config),
        wall_seconds: wall.as_secs_f64(),
        media_seconds: media_secs,
        participants_planned: total,
        participants_connected: participants.len(),
        failures,
        packets_sent: sent,
        packets_received: received,
        packets_lost: lost,
        loss_percent: percent(lost, received + lost),
        receive_bitrate_bps: participants.iter().map(|p| p.bytes_received).sum::<u64>() as f64
            * 8.0
            / media_secs.max(0.001),
        jitter_ms_max: participants.iter().map(|p| p.jitter_ms).fold(0.0, f64::max),
        latency: LatencySummary::from_histogram(all_latencies.as_ref()),
        join_ms_p50: quantile(&join_times, 0.5),
        join_ms_max: join_times
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        keyframe_requests: participants
            .iter()
            .map(|p| p.keyframe_requests_received)
            .sum(),
        server,
        tester_cpu_seconds: tester,
        tester_cpu_percent_per_participant: tester
            .map(|s| s / wall.as_secs_f64().max(0.001) * 100.0 / (total.max(1) as f64)),
        participants,
        thresholds: Thresholds::default(),
    };
    report.thresholds = Thresholds::check(&config, &report);
    Ok(report)
}

fn collect(
    joins: &mut JoinSet<Result<Joined, String>>,
    joined: &mut Vec<Joined>,
    failures: &mut Vec<String>,
) {
    while let Some(result) = joins.try_join_next() {
        match result {
            Ok(Ok(j)) => joined.push(j),
            Ok(Err(reason)) => failures.push(reason),
            Err(e) => failures.push(format!("join task: {e}")),
        }
    }
}

fn clock_rate_of(kind: &str) -> Option<u32> {
    match kind {
        "audio" => Some(48_000),
        "video" => Some(90_000),
        _ => None,
    }
}

/// Latencies from 1 µs to 60 s at 3 significant digits (valid bounds: never `None` in practice).
fn new_histogram() -> Option<hdrhistogram::Histogram<u64>> {
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).ok()
}

pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn quantile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}

/// `ws://host:port/ws` → `http://host:port/metrics`.
fn metrics_url(ws_url: &str) -> Option<String> {
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
async fn scrape_counter(url: &str, name: &str) -> Option<u64> {
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

/// The live progress line on stderr.
struct Progress {
    quiet: bool,
    last: Instant,
    last_bytes: u64,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            last: Instant::now(),
            last_bytes: 0,
        }
    }

    fn print(&mut self, joined: &[Joined], failures: usize, total: usize, last: bool) {
        if self.quiet || (!last && self.last.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let (mut bytes, mut packets, mut lost) = (0u64, 0u64, 0u64);
        for j in joined {
            for stats in j.client.received().values() {
                bytes += stats.bytes;
                packets += stats.packets;
                lost += stats.lost();
            }
        }
        let secs = self.last.elapsed().as_secs_f64().max(0.001);
        let mbps = (bytes.saturating_sub(self.last_bytes)) as f64 * 8.0 / secs / 1e6;
        self.last = Instant::now();
        self.last_bytes = bytes;
        let connected = joined
            .iter()
            .filter(|j| !j.client.signaling_closed())
            .count();
        eprint!(
            "\rconnected {connected}/{total}  failed {failures}  receiving {mbps:7.2} Mbit/s  packets {packets}  loss {:.2}%   ",
            percent(lost, packets + lost)
        );
        if last {
            eprintln!();
        }
    }
}
