//! `switchboard load`: simulated publishers and subscribers against a running server.
//!
//! Every simulated participant is a real WebRTC peer (the protocol client), with real ICE,
//! DTLS and SRTP. The run joins them at the ramp rate, lets media flow for the duration,
//! stops the publishers, waits out the tail, and reports what each subscriber got.
//!
//! Loss and freezes are counted against the publishers' own per-track counters: every packet
//! a publisher sent to a room is expected at every other participant of that room, from the
//! first one it received (or the end of the settle time after the last join, if earlier) to
//! the last one sent. The SFU's rewritten sequence numbers are never used.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinSet;

use crate::load::client::Client;
use crate::load::clip::Clip;
use crate::load::publish::PublishOptions;
use crate::load::received::{new_latency_histogram, RemoteTrackStats, DEFAULT_FREEZE_THRESHOLD};
use crate::load::report::{
    LatencySummary, MemorySample, ParticipantReport, ProcessSample, Report, ServerReport, Shape,
    Thresholds, TrackReport,
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
    /// Media time after the last join: `90s`, `15m`, `1h`, or plain seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Time after the last join before every packet sent counts as expected everywhere
    /// (the last joiners' first keyframe may still be on its way before).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// No packet on a track for longer than this counts as a freeze.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub freeze_threshold: Duration,
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
    /// Fail (exit 2) when subscribers saw more than this many freezes in all.
    #[arg(long)]
    pub max_freezes: Option<u64>,
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
            duration: Duration::from_secs(10),
            settle: Duration::from_secs(2),
            freeze_threshold: DEFAULT_FREEZE_THRESHOLD,
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
            max_freezes: None,
            quiet: true,
        }
    }
}

pub use crate::load::error::LoadError;

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
            flood: None,
            start_muted: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), LoadError> {
        if self.rooms == 0 || self.publishers + self.subscribers == 0 {
            return Err(LoadError::Shape("no participants to simulate".into()));
        }
        if self.no_video && self.no_audio && self.publishers > 0 {
            return Err(LoadError::Shape("publishers need audio or video".into()));
        }
        if self.duration.is_zero() || self.ramp.is_nan() || self.ramp <= 0.0 {
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
        progress.print(&joined, &config, None, failures.len(), total, false);
    }
    while let Some(result) = joins.join_next().await {
        match result {
            Ok(Ok(j)) => joined.push(j),
            Ok(Err(reason)) => failures.push(reason),
            Err(e) => failures.push(format!("join task: {e}")),
        }
    }

    // Media flows for the duration; stop early if the server goes away. After the settle
    // time, every packet a publisher sends is expected at every other participant.
    let media_started = Instant::now();
    let mut settled: Option<(Instant, SentCounts)> = None;
    let mut server_settled: Option<(ProcessSample, u64)> = None;
    let mut memory = MemoryTimeline::default();
    memory.sample(config.pid, media_started);
    while media_started.elapsed() < config.duration {
        let left = config.duration.saturating_sub(media_started.elapsed());
        tokio::time::sleep(Duration::from_millis(500).min(left)).await;
        if settled.is_none() && media_started.elapsed() >= config.settle {
            settled = Some((Instant::now(), SentCounts::of(&joined)));
            server_settled = server_sample(config.pid, metrics_url.as_deref()).await;
        }
        memory.sample(config.pid, media_started);
        progress.print(
            &joined,
            &config,
            settled.as_ref(),
            failures.len(),
            total,
            false,
        );
        if !joined.is_empty() && joined.iter().all(|j| j.client.signaling_closed()) {
            break;
        }
    }
    let server_end = server_sample(config.pid, metrics_url.as_deref()).await;
    for j in &joined {
        j.client.stop_publishing();
    }
    let stopped_at = Instant::now();
    // The run's tail: packets in flight when publishing stopped.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_end = SentCounts::of(&joined);
    progress.print(
        &joined,
        &config,
        settled.as_ref(),
        failures.len(),
        total,
        true,
    );

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
    memory.sample_now(config.pid, media_started);

    let window = Window {
        // A run shorter than the settle time expects only what subscribers started on.
        settled_at: settled.as_ref().map_or(stopped_at, |(at, _)| *at),
        stopped_at,
        freeze_threshold: config.freeze_threshold,
    };
    let expectations = Expectations::new(&config, &joined, settled.as_ref().map(|(_, c)| c));
    let mut participants = Vec::new();
    let mut all_latencies = new_latency_histogram();
    for j in &joined {
        if j.client.signaling_closed() {
            failures.push(format!(
                "{}: signaling socket closed by the server",
                j.planned.name
            ));
        }
        let mut latencies = new_latency_histogram();
        let received = j
            .client
            .with_received(|received| {
                for stats in received.values() {
                    if let Some(h) = &stats.latency_us {
                        for merged in [latencies.as_mut(), all_latencies.as_mut()]
                            .into_iter()
                            .flatten()
                        {
                            let _ = merged.add(h);
                        }
                    }
                }
                expectations.outcomes(j, received, &sent_end, &window)
            })
            .unwrap_or_default();
        for t in &received.tracks {
            if t.packets == 0 {
                failures.push(format!(
                    "{}: received nothing of {}'s {}",
                    j.planned.name, t.publisher_name, t.kind
                ));
            }
        }
        let stats = &j.client.publish_stats;
        let tracks_received = received.tracks.iter().filter(|t| t.packets > 0).count() as u64;
        let sum = |f: fn(&TrackReport) -> u64| received.tracks.iter().map(f).sum::<u64>();
        let expected = sum(|t| t.expected.unwrap_or(0));
        let lost = sum(|t| t.lost.unwrap_or(0));
        participants.push(ParticipantReport {
            name: j.planned.name.clone(),
            room: j.planned.room.clone(),
            id: j.client.id.clone(),
            publishes: j.planned.publishes,
            join_ms: received.first_media.map(|at| since_start(&j.client, at)),
            join_all_ms: received.all_media.map(|at| since_start(&j.client, at)),
            tracks_received,
            packets_received: sum(|t| t.packets),
            bytes_received: received.bytes,
            packets_expected: expected,
            packets_lost: lost,
            loss_percent: percent(lost, expected),
            duplicates: sum(|t| t.duplicates),
            freezes: sum(|t| t.freezes),
            frozen_ms: received.tracks.iter().map(|t| t.frozen_ms).sum(),
            jitter_ms: received.jitter_ms,
            latency: LatencySummary::from_histogram(latencies.as_ref()),
            packets_sent: sent_end.total_of(&j.client.id),
            video_packets_sent: sent_end.get(&j.client.id, "video"),
            audio_packets_sent: sent_end.get(&j.client.id, "audio"),
            tracks: received.tracks,
            keyframe_requests_received: stats
                .plis_received
                .load(std::sync::atomic::Ordering::Relaxed),
        });
    }
    for j in joined {
        j.client.close().await;
    }

    let total_of = |f: fn(&ParticipantReport) -> u64| participants.iter().map(f).sum::<u64>();
    let expected = total_of(|p| p.packets_expected);
    let lost = total_of(|p| p.packets_lost);
    let join_times: Vec<f64> = participants.iter().filter_map(|p| p.join_ms).collect();
    let join_all_times: Vec<f64> = participants.iter().filter_map(|p| p.join_all_ms).collect();
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
    let mut server = server.with_steady_state(server_settled, server_end);
    server.rss_timeline = memory.server;
    let mut report = Report {
        shape: Shape::from(&config),
        wall_seconds: wall.as_secs_f64(),
        media_seconds: media_secs,
        participants_planned: total,
        participants_connected: participants.len(),
        failures,
        packets_sent: total_of(|p| p.packets_sent),
        packets_expected: expected,
        packets_received: total_of(|p| p.packets_received),
        packets_lost: lost,
        loss_percent: percent(lost, expected),
        loss_measured: expected > 0,
        duplicates: total_of(|p| p.duplicates),
        freezes: total_of(|p| p.freezes),
        frozen_seconds: participants.iter().map(|p| p.frozen_ms).sum::<f64>() / 1000.0,
        receive_bitrate_bps: total_of(|p| p.bytes_received) as f64 * 8.0 / media_secs.max(0.001),
        jitter_ms_max: participants.iter().map(|p| p.jitter_ms).fold(0.0, f64::max),
        latency: LatencySummary::from_histogram(all_latencies.as_ref()),
        join_ms_p50: quantile(&join_times, 0.5),
        join_ms_p99: quantile(&join_times, 0.99),
        join_all_ms_p50: quantile(&join_all_times, 0.5),
        join_all_ms_p99: quantile(&join_all_times, 0.99),
        join_ms_max: join_times
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
        keyframe_requests: total_of(|p| p.keyframe_requests_received),
        server,
        tester_cpu_seconds: tester,
        tester_rss_timeline: memory.tester,
        tester_cpu_percent_per_participant: tester
            .map(|s| s / wall.as_secs_f64().max(0.001) * 100.0 / (total.max(1) as f64)),
        participants,
        thresholds: Thresholds::default(),
    };
    report.thresholds = Thresholds::check(&config, &report);
    Ok(report)
}

/// Resident memory of the server (with `--pid`) and of the tester, every
/// [`MEMORY_SAMPLE_EVERY`] of media time: a long run shows whether either creeps.
#[derive(Default)]
struct MemoryTimeline {
    server: Vec<MemorySample>,
    tester: Vec<MemorySample>,
    next: Duration,
}

const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(10);

impl MemoryTimeline {
    fn sample(&mut self, pid: Option<u32>, since: Instant) {
        if since.elapsed() >= self.next {
            self.sample_now(pid, since);
            self.next = since.elapsed() + MEMORY_SAMPLE_EVERY;
        }
    }

    fn sample_now(&mut self, pid: Option<u32>, since: Instant) {
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
async fn server_sample(
    pid: Option<u32>,
    metrics_url: Option<&str>,
) -> Option<(ProcessSample, u64)> {
    let forwarded = scrape_counter(metrics_url?, "switchboard_packets_out_total").await?;
    Some((ProcessSample::of_pid(pid?)?, forwarded))
}

/// Packets each publisher has sent, per kind, read from its own counters.
#[derive(Debug, Clone, Default)]
struct SentCounts(HashMap<(String, &'static str), u64>);

impl SentCounts {
    fn of(joined: &[Joined]) -> Self {
        let mut counts = HashMap::new();
        for j in joined.iter().filter(|j| j.planned.publishes) {
            let stats = &j.client.publish_stats;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            counts.insert((j.client.id.clone(), "video"), load(&stats.video_packets));
            counts.insert((j.client.id.clone(), "audio"), load(&stats.audio_packets));
        }
        SentCounts(counts)
    }

    fn get(&self, publisher_id: &str, kind: &str) -> u64 {
        self.0
            .iter()
            .find(|((id, k), _)| id == publisher_id && *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    fn total_of(&self, publisher_id: &str) -> u64 {
        self.get(publisher_id, "video") + self.get(publisher_id, "audio")
    }
}

/// The part of the run in which every packet sent is expected everywhere.
struct Window {
    settled_at: Instant,
    stopped_at: Instant,
    freeze_threshold: Duration,
}

/// One expected remote track: a publisher of the room and one kind it sends.
struct ExpectedTrack {
    room: String,
    publisher_id: String,
    publisher_name: String,
    kind: &'static str,
    /// Whether its packets carry stamps (a clip's video does not: no loss figure for it).
    stamped: bool,
    /// The publisher's counter when the window opened.
    sent_at_settle: Option<u64>,
}

/// What each participant should receive.
struct Expectations {
    tracks: Vec<ExpectedTrack>,
}

/// One participant's receiving side, summed up.
#[derive(Default)]
struct Received {
    tracks: Vec<TrackReport>,
    bytes: u64,
    jitter_ms: f64,
    first_media: Option<Instant>,
    /// When the last of the expected tracks started (if all did).
    all_media: Option<Instant>,
}

fn since_start(client: &Client, at: Instant) -> f64 {
    at.saturating_duration_since(client.started_at)
        .as_secs_f64()
        * 1000.0
}

impl Expectations {
    fn new(config: &LoadConfig, joined: &[Joined], settled: Option<&SentCounts>) -> Self {
        let mut kinds = Vec::new();
        if !config.no_video {
            kinds.push(("video", config.clip.is_none()));
        }
        if !config.no_audio {
            kinds.push(("audio", true));
        }
        let mut tracks = Vec::new();
        for j in joined.iter().filter(|j| j.planned.publishes) {
            for &(kind, stamped) in &kinds {
                tracks.push(ExpectedTrack {
                    room: j.planned.room.clone(),
                    publisher_id: j.client.id.clone(),
                    publisher_name: j.planned.name.clone(),
                    kind,
                    stamped,
                    sent_at_settle: settled.map(|c| c.get(&j.client.id, kind)),
                });
            }
        }
        Expectations { tracks }
    }

    /// Every track `j` should have received, against what it did receive.
    fn outcomes(
        &self,
        j: &Joined,
        received: &HashMap<(String, String), RemoteTrackStats>,
        sent_end: &SentCounts,
        window: &Window,
    ) -> Received {
        let mut out = Received::default();
        for stats in received.values() {
            out.bytes += stats.bytes;
            if let Some(rate) = clock_rate_of(&stats.kind).filter(|_| stats.packets > 0) {
                out.jitter_ms = out.jitter_ms.max(stats.jitter / f64::from(rate) * 1000.0);
            }
            if let Some(at) = stats.first_packet_at {
                out.first_media = Some(out.first_media.map_or(at, |f: Instant| f.min(at)));
            }
        }
        let expected = self
            .tracks
            .iter()
            .filter(|t| t.room == j.planned.room && t.publisher_id != j.client.id);
        let mut all_started = true;
        for t in expected {
            let stats = received
                .values()
                .find(|s| s.stream_id == t.publisher_id && s.kind == t.kind);
            match stats.and_then(|s| s.first_packet_at) {
                Some(at) => out.all_media = Some(out.all_media.map_or(at, |a: Instant| a.max(at))),
                None => all_started = false,
            }
            out.tracks.push(track_outcome(
                t,
                stats,
                sent_end.get(&t.publisher_id, t.kind),
                window,
            ));
        }
        if !all_started {
            out.all_media = None;
        }
        out
    }
}

/// One expected track as one participant received it.
fn track_outcome(
    t: &ExpectedTrack,
    stats: Option<&RemoteTrackStats>,
    sent: u64,
    window: &Window,
) -> TrackReport {
    let first = stats.and_then(|s| s.first_counter).map(u64::from);
    let start = match (first, t.sent_at_settle) {
        (Some(f), Some(s)) => f.min(s),
        (Some(f), None) => f,
        (None, Some(s)) => s,
        (None, None) => sent,
    };
    let (expected, lost) = if t.stamped {
        let expected = sent.saturating_sub(start);
        let lost = stats.map_or(expected, |s| s.lost_of(start, sent));
        (Some(expected), Some(lost))
    } else {
        (None, None)
    };
    // Freezes: long gaps between packets, plus a stream that started late in the window or
    // stopped before the publisher did.
    let threshold = window.freeze_threshold;
    let (mut freezes, mut frozen) = stats.map_or((0, Duration::ZERO), |s| (s.freezes, s.frozen));
    let first_at = stats.and_then(|s| s.first_packet_at);
    let last_at = stats.and_then(|s| s.last_packet_at);
    let head = first_at
        .unwrap_or(window.stopped_at)
        .saturating_duration_since(window.settled_at);
    let tail = match last_at {
        Some(last) if first_at.is_some() => window.stopped_at.saturating_duration_since(last),
        _ => Duration::ZERO,
    };
    for gap in [head, tail] {
        if gap > threshold {
            freezes += 1;
            frozen += gap;
        }
    }
    TrackReport {
        publisher_id: t.publisher_id.clone(),
        publisher_name: t.publisher_name.clone(),
        track_id: stats.map(|s| s.track_id.clone()).unwrap_or_default(),
        kind: t.kind.to_string(),
        // Unstamped packets cannot be told apart: all of them count.
        packets: stats.map_or(0, |s| if t.stamped { s.distinct } else { s.packets }),
        duplicates: stats.map_or(0, |s| s.duplicates),
        expected,
        lost,
        freezes,
        frozen_ms: frozen.as_secs_f64() * 1000.0,
        longest_gap_ms: stats.map_or(0.0, |s| s.longest_gap.as_secs_f64() * 1000.0),
        foreign_packets: stats.map_or(0, |s| s.foreign_packets),
        first_counter: stats.and_then(|s| s.first_counter),
        last_counter: stats.and_then(|s| s.last_counter),
    }
}

/// Durations on the command line: `90s`, `15m`, `1h`, `1h30m`, `500ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("expected a duration, got {s:?}"));
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("expected a duration like 90s, 15m or 1h ({e})"))
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
    /// Publishers' counters at the previous line: packets sent since may still be in flight.
    last_sent: Option<SentCounts>,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        Progress {
            quiet,
            last: Instant::now(),
            last_bytes: 0,
            last_sent: None,
        }
    }

    fn print(
        &mut self,
        joined: &[Joined],
        config: &LoadConfig,
        settled: Option<&(Instant, SentCounts)>,
        failures: usize,
        total: usize,
        last: bool,
    ) {
        if self.quiet || (!last && self.last.elapsed() < Duration::from_secs(1)) {
            return;
        }
        let (mut bytes, mut packets) = (0u64, 0u64);
        for j in joined {
            let t = j.client.received_totals();
            bytes += t.bytes;
            packets += t.packets;
        }
        // Loss so far, against what publishers had sent a second ago, once settled.
        let (mut expected, mut lost) = (0u64, 0u64);
        if let (Some((settled_at, at_settle)), Some(sent)) = (settled, &self.last_sent) {
            let expectations = Expectations::new(config, joined, Some(at_settle));
            let window = Window {
                settled_at: *settled_at,
                stopped_at: Instant::now(),
                freeze_threshold: Duration::MAX,
            };
            for j in joined {
                if let Some(r) = j
                    .client
                    .with_received(|r| expectations.outcomes(j, r, sent, &window))
                {
                    expected += r.tracks.iter().filter_map(|t| t.expected).sum::<u64>();
                    lost += r.tracks.iter().filter_map(|t| t.lost).sum::<u64>();
                }
            }
        }
        self.last_sent = Some(SentCounts::of(joined));
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
            percent(lost, expected)
        );
        if last {
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_a_person_writes_them() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-3").is_err());
    }

    fn expected(sent_at_settle: Option<u64>) -> ExpectedTrack {
        ExpectedTrack {
            room: "r".into(),
            publisher_id: "p".into(),
            publisher_name: "pub".into(),
            kind: "video",
            stamped: true,
            sent_at_settle,
        }
    }

    fn received(first: u32, last: u32, first_at: Instant, last_at: Instant) -> RemoteTrackStats {
        let mut s = RemoteTrackStats::default();
        s.stream_id = "p".into();
        s.kind = "video".into();
        s.packets = u64::from(last - first + 1);
        s.distinct = s.packets;
        s.first_counter = Some(first);
        s.last_counter = Some(last);
        s.first_packet_at = Some(first_at);
        s.last_packet_at = Some(last_at);
        s
    }

    #[test]
    fn a_stream_that_stops_before_its_publisher_is_lost_and_frozen() {
        let t0 = Instant::now();
        let window = Window {
            settled_at: t0,
            stopped_at: t0 + Duration::from_secs(60),
            freeze_threshold: Duration::from_millis(500),
        };
        // Everything up to counter 32,767, then nothing while the publisher sent 70,000.
        let stats = received(100, 32_767, t0, t0 + Duration::from_secs(20));
        let t = track_outcome(&expected(Some(150)), Some(&stats), 70_000, &window);
        assert_eq!(t.expected, Some(70_000 - 100));
        assert_eq!(t.lost, Some(70_000 - 32_768));
        assert_eq!(t.freezes, 1);
        assert!((t.frozen_ms - 40_000.0).abs() < 1.0);
    }

    #[test]
    fn a_stream_that_never_arrives_is_all_lost_and_frozen() {
        let t0 = Instant::now();
        let window = Window {
            settled_at: t0,
            stopped_at: t0 + Duration::from_secs(10),
            freeze_threshold: Duration::from_millis(500),
        };
        let t = track_outcome(&expected(Some(200)), None, 1_200, &window);
        assert_eq!(
            (t.expected, t.lost, t.packets),
            (Some(1_000), Some(1_000), 0)
        );
        assert_eq!(t.freezes, 1);
    }

    #[test]
    fn a_complete_stream_has_no_loss_and_no_freeze() {
        let t0 = Instant::now();
        let window = Window {
            settled_at: t0 + Duration::from_secs(2),
            stopped_at: t0 + Duration::from_secs(10),
            freeze_threshold: Duration::from_millis(500),
        };
        let stats = received(10, 999, t0, t0 + Duration::from_millis(9_990));
        let t = track_outcome(&expected(Some(300)), Some(&stats), 1_000, &window);
        assert_eq!((t.expected, t.lost, t.freezes), (Some(990), Some(0), 0));
    }
}
