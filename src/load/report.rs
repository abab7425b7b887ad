//! The load test's report: a table a person reads at a glance, and JSON with every figure.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::load::config::LoadConfig;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl LatencySummary {
    pub fn from_histogram(h: Option<&hdrhistogram::Histogram<u64>>) -> Self {
        let Some(h) = h.filter(|h| !h.is_empty()) else {
            return LatencySummary::default();
        };
        let ms = |us: u64| Some(us as f64 / 1000.0);
        LatencySummary {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// One track a participant should have received, as it received it. Counts are the
/// publisher's own packet counters (from the payload stamps).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrackReport {
    pub publisher_id: String,
    pub publisher_name: String,
    pub track_id: String,
    pub kind: String,
    /// Distinct packets received.
    pub packets: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Packets the publisher sent that this participant should have received; `None` where
    /// packets carry no stamp (a real clip's video).
    pub expected: Option<u64>,
    pub lost: Option<u64>,
    /// No packet for longer than the freeze threshold, and for how long in all.
    pub freezes: u64,
    pub frozen_ms: f64,
    pub longest_gap_ms: f64,
    /// Packets whose stamp named another publisher than the track's stream id.
    pub foreign_packets: u64,
    pub first_counter: Option<u32>,
    pub last_counter: Option<u32>,
    /// Payload bytes received, and over the time it was received.
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub mean_bitrate_bps: f64,
    /// It arrived in simulcast layers (read from the stamps).
    #[serde(default)]
    pub simulcast: bool,
    /// Simulcast: seconds on each layer, lowest first.
    #[serde(default)]
    pub layer_seconds: Vec<f64>,
    #[serde(default)]
    pub layer_switches: u64,
    /// Simulcast: each contiguous run of one layer (the first 200); loss is counted within.
    #[serde(default)]
    pub layer_runs: Vec<LayerRunReport>,
    /// One sample a second.
    #[serde(default)]
    pub timeline: Vec<TimelineSample>,
}

/// One contiguous run of a simulcast layer as a subscriber received it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerRunReport {
    pub layer: u8,
    /// The layer's own counters of the first and last packet received in the run.
    pub first_counter: u32,
    pub last_counter: u32,
    pub received: u64,
    pub lost: u64,
    /// Seconds since the run started: from its first packet to the next run's (or its last).
    pub from_s: f64,
    pub to_s: f64,
}

/// One second of a received track.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimelineSample {
    /// Seconds since the load run started, at the beginning of this second.
    pub t: f64,
    /// The simulcast layer of its last packet (none: not simulcast, or nothing arrived).
    pub layer: Option<u8>,
    /// Payload bits received in the second, per second (the last one may be shorter).
    pub bitrate_bps: f64,
    pub packets: u64,
    /// Counters that went missing in the second, net of the ones repaired in it.
    pub lost: u64,
    /// Freezes that ended in the second.
    pub freezes: u32,
    /// Publisher to subscriber, mean and max of the second.
    pub latency_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
}

/// A subscriber's emulated downlink, and what it did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DownlinkReport {
    /// The rate at the end of the run (none: unlimited).
    pub rate_bps: Option<u64>,
    pub delay_ms: f64,
    pub loss_percent: f64,
    pub datagrams: u64,
    pub delivered: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped at the tail of the full queue.
    pub overflowed: u64,
    pub max_queued_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ParticipantReport {
    pub name: String,
    pub room: String,
    pub id: String,
    pub publishes: bool,
    /// Socket open to first media packet received.
    pub join_ms: Option<f64>,
    /// Socket open to the first packet of the last of the tracks it should receive.
    pub join_all_ms: Option<f64>,
    pub tracks_received: u64,
    /// Distinct packets received of the tracks this participant should receive.
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Packets other participants sent that this one should have received.
    pub packets_expected: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    pub duplicates: u64,
    pub freezes: u64,
    pub frozen_ms: f64,
    pub jitter_ms: f64,
    pub latency: LatencySummary,
    pub packets_sent: u64,
    pub video_packets_sent: u64,
    pub audio_packets_sent: u64,
    pub keyframe_requests_received: u64,
    pub tracks: Vec<TrackReport>,
    /// Its emulated downlink, when it had one.
    #[serde(default)]
    pub downlink: Option<DownlinkReport>,
}

/// CPU time and resident memory of one process, from `/proc`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
}

impl ProcessSample {
    pub fn of_pid(pid: u32) -> Option<Self> {
        Self::read(&format!("/proc/{pid}"))
    }

    pub fn of_self() -> Option<Self> {
        Self::read("/proc/self")
    }

    fn read(dir: &str) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        // USER_HZ is 100 on every Linux this runs on.
        let cpu_seconds = (utime + stime) / 100.0;
        let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(ProcessSample {
            cpu_seconds,
            rss_bytes: rss_kb * 1024,
            at: Some(std::time::Instant::now()),
        })
    }

    pub fn cpu_seconds_between(before: Option<Self>, after: Option<Self>) -> Option<f64> {
        Some(after?.cpu_seconds - before?.cpu_seconds)
    }
}

/// Resident memory at one point of the media phase.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MemorySample {
    pub at_seconds: f64,
    pub rss_mib: f64,
}

/// `first -> last (max)` of a memory timeline.
fn timeline_summary(timeline: &[MemorySample]) -> Option<String> {
    let first = timeline.first()?;
    let last = timeline.last()?;
    let max = timeline.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    Some(format!(
        "{:.1} MiB at {:.0} s -> {:.1} MiB at {:.0} s (max {max:.1})",
        first.rss_mib, first.at_seconds, last.rss_mib, last.at_seconds
    ))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerReport {
    /// With `--pid`: resident memory every 10 s of media time.
    pub rss_timeline: Vec<MemorySample>,
    /// Packets the server forwarded during the run (from its `/metrics`).
    pub packets_forwarded: Option<u64>,
    pub packets_forwarded_per_second: Option<f64>,
    /// With `--pid`: the server's CPU use over the run, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// With `--pid`: CPU time per forwarded packet, joins included.
    pub cpu_us_per_forwarded_packet: Option<f64>,
    /// With `--pid`: the same once everyone has joined (settle time to the end): what
    /// forwarding itself costs.
    pub steady_cpu_percent: Option<f64>,
    pub steady_cpu_us_per_forwarded_packet: Option<f64>,
    pub steady_packets_forwarded_per_second: Option<f64>,
    pub rss_bytes_before: Option<u64>,
    pub rss_bytes_after: Option<u64>,
    /// Resident memory added per connected participant.
    pub rss_bytes_per_participant: Option<f64>,
}

impl ServerReport {
    /// Fills the steady-state figures from samples at the settle time and at the end.
    pub fn with_steady_state(
        mut self,
        settled: Option<(ProcessSample, u64)>,
        end: Option<(ProcessSample, u64)>,
    ) -> Self {
        let (Some((a, fa)), Some((b, fb))) = (settled, end) else {
            return self;
        };
        let (Some(ta), Some(tb)) = (a.at, b.at) else {
            return self;
        };
        let seconds = tb.saturating_duration_since(ta).as_secs_f64().max(0.001);
        let cpu = b.cpu_seconds - a.cpu_seconds;
        let forwarded = fb.saturating_sub(fa);
        self.steady_cpu_percent = Some(cpu / seconds * 100.0);
        self.steady_packets_forwarded_per_second = Some(forwarded as f64 / seconds);
        self.steady_cpu_us_per_forwarded_packet =
            (forwarded > 0).then(|| cpu * 1e6 / forwarded as f64);
        self
    }

    pub fn from_samples(
        before: Option<ProcessSample>,
        after: Option<ProcessSample>,
        forwarded: Option<u64>,
        forwarding_seconds: f64,
        participants: usize,
    ) -> Self {
        let cpu = ProcessSample::cpu_seconds_between(before, after);
        let elapsed = match (before.and_then(|b| b.at), after.and_then(|a| a.at)) {
            (Some(b), Some(a)) => Some(a.duration_since(b).as_secs_f64()),
            _ => None,
        };
        ServerReport {
            packets_forwarded: forwarded,
            packets_forwarded_per_second: forwarded
                .map(|f| f as f64 / forwarding_seconds.max(0.001)),
            cpu_percent: cpu.zip(elapsed).map(|(c, e)| c / e.max(0.001) * 100.0),
            cpu_us_per_forwarded_packet: cpu
                .zip(forwarded)
                .filter(|(_, f)| *f > 0)
                .map(|(c, f)| c * 1e6 / f as f64),
            rss_bytes_before: before.map(|b| b.rss_bytes),
            rss_bytes_after: after.map(|a| a.rss_bytes),
            rss_timeline: Vec::new(),
            steady_cpu_percent: None,
            steady_cpu_us_per_forwarded_packet: None,
            steady_packets_forwarded_per_second: None,
            rss_bytes_per_participant: before
                .zip(after)
                .filter(|_| participants > 0)
                .map(|(b, a)| (a.rss_bytes as f64 - b.rss_bytes as f64) / participants as f64),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Shape {
    pub url: String,
    pub rooms: usize,
    pub publishers_per_room: usize,
    pub subscribers_per_room: usize,
    pub duration_seconds: f64,
    pub ramp_per_second: f64,
    pub video: bool,
    pub audio: bool,
    pub video_bitrate_bps: u32,
    pub frame_rate: u32,
    pub clip: Option<String>,
    #[serde(default)]
    pub simulcast: bool,
    /// The subscribers' emulated downlink, and how many of each room's have it.
    #[serde(default)]
    pub downlink_bps: Option<u64>,
    #[serde(default)]
    pub downlink_delay_ms: f64,
    #[serde(default)]
    pub downlink_loss_percent: f64,
    #[serde(default)]
    pub shaped_subscribers: Option<usize>,
}

impl From<&LoadConfig> for Shape {
    fn from(c: &LoadConfig) -> Self {
        Shape {
            url: c.url.clone(),
            rooms: c.rooms,
            publishers_per_room: c.publishers,
            subscribers_per_room: c.subscribers,
            duration_seconds: c.duration.as_secs_f64(),
            ramp_per_second: c.ramp,
            video: !c.no_video,
            audio: !c.no_audio,
            video_bitrate_bps: c.video_bitrate,
            frame_rate: c.frame_rate,
            clip: c.clip.clone(),
            simulcast: c.simulcast,
            downlink_bps: c.downlink,
            downlink_delay_ms: c.delay.unwrap_or_default().as_secs_f64() * 1000.0,
            downlink_loss_percent: c.loss.unwrap_or(0.0) * 100.0,
            shaped_subscribers: c.shaped_subscribers,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Thresholds {
    pub max_loss_percent: Option<f64>,
    pub max_p99_ms: Option<f64>,
    pub max_failures: usize,
    pub max_freezes: Option<u64>,
    /// Why the run failed its thresholds; empty when it passed.
    pub violations: Vec<String>,
}

impl Thresholds {
    pub fn check(config: &LoadConfig, report: &Report) -> Self {
        let mut violations = Vec::new();
        if let Some(max) = config.max_loss_percent {
            if !report.loss_measured {
                violations.push("loss not measured: no stamped packets were expected".into());
            } else if report.loss_percent > max {
                violations.push(format!("loss {:.3}% > {max}%", report.loss_percent));
            }
        }
        if let Some(max) = config.max_freezes {
            if report.freezes > max {
                violations.push(format!("{} freezes > {max}", report.freezes));
            }
        }
        if let Some(max) = config.max_p99_ms {
            match report.latency.p99_ms {
                Some(p99) if p99 > max => {
                    violations.push(format!("latency p99 {p99:.1} ms > {max} ms"))
                }
                None if report.latency.samples == 0 && config.clip.is_none() => {
                    violations.push("no latency samples".into())
                }
                _ => {}
            }
        }
        if report.failures.len() > config.max_failures {
            violations.push(format!(
                "{} failures > {} allowed",
                report.failures.len(),
                config.max_failures
            ));
        }
        Thresholds {
            max_loss_percent: config.max_loss_percent,
            max_p99_ms: config.max_p99_ms,
            max_failures: config.max_failures,
            max_freezes: config.max_freezes,
            violations,
        }
    }
}

/// Receivers whose video the table lists one by one.
const RECEIVER_LINES: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub shape: Shape,
    pub wall_seconds: f64,
    pub media_seconds: f64,
    pub participants_planned: usize,
    pub participants_connected: usize,
    /// Participants that failed to join or were dropped, with the reason.
    pub failures: Vec<String>,
    /// Packets the publishers sent (their own counters).
    pub packets_sent: u64,
    /// Packets participants should have received: every packet sent to a room, at every
    /// other participant of it, from the settle time (or its first packet) on.
    pub packets_expected: u64,
    /// Distinct packets participants received of those.
    pub packets_received: u64,
    pub packets_lost: u64,
    pub loss_percent: f64,
    /// False when no packet carried a stamp to count (a real clip without audio).
    pub loss_measured: bool,
    pub duplicates: u64,
    /// Tracks that went without a packet for longer than the freeze threshold.
    pub freezes: u64,
    pub frozen_seconds: f64,
    pub receive_bitrate_bps: f64,
    pub jitter_ms_max: f64,
    pub latency: LatencySummary,
    pub join_ms_p50: Option<f64>,
    pub join_ms_p99: Option<f64>,
    pub join_ms_max: Option<f64>,
    /// Socket open to media from every publisher of the room.
    pub join_all_ms_p50: Option<f64>,
    pub join_all_ms_p99: Option<f64>,
    pub keyframe_requests: u64,
    pub server: ServerReport,
    pub tester_cpu_seconds: Option<f64>,
    /// The tester's own resident memory every 10 s of media time.
    pub tester_rss_timeline: Vec<MemorySample>,
    pub tester_cpu_percent_per_participant: Option<f64>,
    pub participants: Vec<ParticipantReport>,
    pub thresholds: Thresholds,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.thresholds.violations.is_empty()
    }

    /// One line per received video track: time on each simulcast layer, mean bitrate,
    /// freezes, loss, and the downlink it came through.
    fn received_lines(&self, out: &mut String) {
        let lines: Vec<(&ParticipantReport, &TrackReport)> = self
            .participants
            .iter()
            .flat_map(|p| p.tracks.iter().map(move |t| (p, t)))
            .filter(|(_, t)| t.kind == "video")
            .collect();
        if lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "{:-<78}", "");
        let _ = writeln!(
            out,
            "video received: time on layers q/h/f, mean bitrate, freezes, loss"
        );
        for (p, t) in lines.iter().take(RECEIVER_LINES) {
            let mut line = format!("  {} <- {}", p.name, t.publisher_name);
            if t.simulcast {
                let secs = |l: usize| t.layer_seconds.get(l).copied().unwrap_or(0.0);
                let _ = write!(
                    line,
                    "  q {:.1} s  h {:.1} s  f {:.1} s ({} switch{})",
                    secs(0),
                    secs(1),
                    secs(2),
                    t.layer_switches,
                    if t.layer_switches == 1 { "" } else { "es" }
                );
            }
            let _ = write!(
                line,
                "  {:.2} Mbit/s  {} freeze{}",
                t.mean_bitrate_bps / 1e6,
                t.freezes,
                if t.freezes == 1 { "" } else { "s" }
            );
            if let (Some(lost), Some(expected)) = (t.lost, t.expected) {
                let _ = write!(
                    line,
                    "  loss {lost} ({:.2}%)",
                    if expected > 0 {
                        lost as f64 * 100.0 / expected as f64
                    } else {
                        0.0
                    }
                );
            }
            if let Some(d) = &p.downlink {
                let _ = write!(
                    line,
                    "  [downlink {}: {} dropped at the queue, {} lost]",
                    d.rate_bps
                        .map_or("unlimited".to_string(), |b| format!("{} kbit/s", b / 1000)),
                    d.overflowed,
                    d.lost
                );
            }
            let _ = writeln!(out, "{line}");
        }
        if lines.len() > RECEIVER_LINES {
            let _ = writeln!(out, "  ... and {} more", lines.len() - RECEIVER_LINES);
        }
    }

    /// The table a person reads at a glance.
    pub fn table(&self) -> String {
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.1}{unit}"));
        let mut out = String::new();
        let s = &self.shape;
        let _ = writeln!(
            out,
            "switchboard load: {} room(s) x ({} publishers + {} subscribers), {:.0}s, video {}{} at {} kbit/s {} fps, audio {}",
            s.rooms, s.publishers_per_room, s.subscribers_per_room, s.duration_seconds,
            if s.video { s.clip.as_deref().unwrap_or("synthetic") } else { "off" },
            if s.simulcast { " in 3 simulcast layers" } else { "" },
            s.video_bitrate_bps / 1000, s.frame_rate, if s.audio { "on" } else { "off" },
        );
        if s.downlink_bps.is_some() || s.downlink_delay_ms > 0.0 || s.downlink_loss_percent > 0.0 {
            let _ = writeln!(
                out,
                "downlink of {} subscribers: {}, {:.0} ms delay, {:.1}% loss",
                s.shaped_subscribers
                    .map_or("all".to_string(), |n| format!("the first {n}")),
                s.downlink_bps
                    .map_or("unlimited".to_string(), |b| format!("{} kbit/s", b / 1000)),
                s.downlink_delay_ms,
                s.downlink_loss_percent,
            );
        }
        let _ = writeln!(out, "{:-<78}", "");
        let rows: Vec<(&str, String)> = vec![
            (
                "participants",
                format!(
                    "{} connected of {} planned, {} failed",
                    self.participants_connected,
                    self.participants_planned,
                    self.failures.len()
                ),
            ),
            (
                "join time (to first media)",
                format!(
                    "p50 {}  p99 {}  max {}",
                    opt(self.join_ms_p50, " ms"),
                    opt(self.join_ms_p99, " ms"),
                    opt(self.join_ms_max, " ms")
                ),
            ),
            (
                "join time (to every publisher)",
                format!(
                    "p50 {}  p99 {}",
                    opt(self.join_all_ms_p50, " ms"),
                    opt(self.join_all_ms_p99, " ms")
                ),
            ),
            (
                "packets (publishers' counters)",
                format!(
                    "sent {}  expected {}  received {}  duplicated {}",
                    self.packets_sent,
                    self.packets_expected,
                    self.packets_received,
                    self.duplicates
                ),
            ),
            (
                "loss",
                if self.loss_measured {
                    format!("{} ({:.3}%)", self.packets_lost, self.loss_percent)
                } else {
                    "n/a (no stamped packets)".into()
                },
            ),
            (
                "freezes",
                format!("{} ({:.1} s frozen)", self.freezes, self.frozen_seconds),
            ),
            (
                "receive bitrate (all subscribers)",
                format!("{:.2} Mbit/s", self.receive_bitrate_bps / 1e6),
            ),
            (
                "latency publisher -> subscriber",
                format!(
                    "p50 {}  p95 {}  p99 {}  max {}",
                    opt(self.latency.p50_ms, " ms"),
                    opt(self.latency.p95_ms, " ms"),
                    opt(self.latency.p99_ms, " ms"),
                    opt(self.latency.max_ms, " ms")
                ),
            ),
            (
                "jitter (worst subscriber)",
                format!("{:.2} ms", self.jitter_ms_max),
            ),
            (
                "keyframe requests to publishers",
                self.keyframe_requests.to_string(),
            ),
            (
                "server forwarded",
                format!(
                    "{} packets, {}",
                    self.server
                        .packets_forwarded
                        .map_or("n/a".into(), |p| p.to_string()),
                    opt(self.server.packets_forwarded_per_second, " pkt/s")
                ),
            ),
            (
                "server CPU",
                format!(
                    "{} of a core, {} per forwarded packet",
                    opt(self.server.cpu_percent, "%"),
                    self.server
                        .cpu_us_per_forwarded_packet
                        .map_or("n/a".into(), |v| format!("{v:.2} us"))
                ),
            ),
            (
                "server CPU, everyone joined",
                format!(
                    "{} of a core, {} per forwarded packet, {}",
                    opt(self.server.steady_cpu_percent, "%"),
                    self.server
                        .steady_cpu_us_per_forwarded_packet
                        .map_or("n/a".into(), |v| format!("{v:.2} us")),
                    opt(self.server.steady_packets_forwarded_per_second, " pkt/s")
                ),
            ),
            (
                "server memory",
                format!(
                    "{} after, {} per participant",
                    self.server
                        .rss_bytes_after
                        .map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                    self.server
                        .rss_bytes_per_participant
                        .map_or("n/a".into(), |b| format!("{:.0} KiB", b / 1024.0))
                ),
            ),
            (
                "server memory over the run",
                timeline_summary(&self.server.rss_timeline).unwrap_or_else(|| "n/a".into()),
            ),
            (
                "tester memory over the run",
                timeline_summary(&self.tester_rss_timeline).unwrap_or_else(|| "n/a".into()),
            ),
            (
                "load tester CPU",
                format!(
                    "{} s, {} of a core per participant",
                    opt(self.tester_cpu_seconds, ""),
                    opt(self.tester_cpu_percent_per_participant, "%")
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(out, "{k:<34} {v}");
        }
        self.received_lines(&mut out);
        for f in self.failures.iter().take(10) {
            let _ = writeln!(out, "failure: {f}");
        }
        if self.failures.len() > 10 {
            let _ = writeln!(out, "... and {} more failures", self.failures.len() - 10);
        }
        let verdict = if self.passed() {
            "PASS".to_string()
        } else {
            format!("FAIL: {}", self.thresholds.violations.join("; "))
        };
        let _ = writeln!(out, "{:-<78}\n{verdict}", "");
        out
    }
}
