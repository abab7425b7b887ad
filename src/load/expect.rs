//! What each participant of a run should have received, against what it did: loss counted
//! on the publishers' own counters (within each run of one layer, with simulcast), freezes,
//! and the track second by second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::load::client::Client;
use crate::load::config::{LoadConfig, Planned};
use crate::load::received::RemoteTrackStats;
use crate::load::report::{LayerRunReport, TimelineSample, TrackReport};

/// A participant that joined, with its client.
pub(crate) struct Joined {
    pub(crate) planned: Planned,
    pub(crate) client: Client,
}

/// Packets each publisher has sent, per kind and per simulcast layer, read from its own
/// counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct SentCounts {
    kinds: HashMap<(String, &'static str), u64>,
    layers: HashMap<String, [u64; 3]>,
}

impl SentCounts {
    pub(crate) fn of(joined: &[Joined]) -> Self {
        let mut counts = SentCounts::default();
        for j in joined.iter().filter(|j| j.planned.publishes) {
            let stats = &j.client.publish_stats;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let id = &j.client.id;
            counts
                .kinds
                .insert((id.clone(), "video"), load(&stats.video_packets));
            counts
                .kinds
                .insert((id.clone(), "audio"), load(&stats.audio_packets));
            counts.layers.insert(
                id.clone(),
                std::array::from_fn(|l| load(&stats.layer_packets[l])),
            );
        }
        counts
    }

    pub(crate) fn get(&self, publisher_id: &str, kind: &str) -> u64 {
        self.kinds
            .iter()
            .find(|((id, k), _)| id == publisher_id && *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// Video packets of each simulcast layer.
    pub(crate) fn layers(&self, publisher_id: &str) -> [u64; 3] {
        self.layers.get(publisher_id).copied().unwrap_or_default()
    }

    pub(crate) fn total_of(&self, publisher_id: &str) -> u64 {
        self.get(publisher_id, "video") + self.get(publisher_id, "audio")
    }
}

/// The part of the run in which every packet sent is expected everywhere.
pub(crate) struct Window {
    pub(crate) settled_at: Instant,
    pub(crate) stopped_at: Instant,
    pub(crate) freeze_threshold: Duration,
    /// Where the report's timelines count seconds from (the run's start); `None`: no
    /// timelines (the progress line needs none).
    pub(crate) origin: Option<Instant>,
}

/// One expected remote track: a publisher of the room and one kind it sends.
struct ExpectedTrack {
    room: String,
    publisher_id: String,
    publisher_name: String,
    kind: &'static str,
    /// Whether its packets carry stamps (a clip's video does not: no loss figure for it).
    stamped: bool,
    /// Sent in simulcast layers: loss is counted within each run of one layer received.
    simulcast: bool,
    /// The publisher's counter when the window opened.
    sent_at_settle: Option<u64>,
    /// With simulcast: its lowest layer's counter then.
    lowest_layer_at_settle: Option<u64>,
}

/// What each participant should receive.
pub(crate) struct Expectations {
    tracks: Vec<ExpectedTrack>,
}

/// One participant's receiving side, summed up.
#[derive(Default)]
pub(crate) struct Received {
    pub(crate) tracks: Vec<TrackReport>,
    pub(crate) bytes: u64,
    pub(crate) jitter_ms: f64,
    pub(crate) first_media: Option<Instant>,
    /// When the last of the expected tracks started (if all did).
    pub(crate) all_media: Option<Instant>,
}

impl Expectations {
    pub(crate) fn new(
        config: &LoadConfig,
        joined: &[Joined],
        settled: Option<&SentCounts>,
    ) -> Self {
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
                    simulcast: kind == "video" && config.simulcast && stamped,
                    sent_at_settle: settled.map(|c| c.get(&j.client.id, kind)),
                    lowest_layer_at_settle: settled.map(|c| c.layers(&j.client.id)[0]),
                });
            }
        }
        Expectations { tracks }
    }

    /// Every track `j` should have received, against what it did receive.
    pub(crate) fn outcomes(
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
            let sent = Sent {
                packets: sent_end.get(&t.publisher_id, t.kind),
                layers: sent_end.layers(&t.publisher_id),
            };
            out.tracks.push(track_outcome(t, stats, sent, window));
        }
        if !all_started {
            out.all_media = None;
        }
        out
    }
}

/// What a publisher had sent of one track: its packets, and with simulcast each layer's.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    packets: u64,
    layers: [u64; 3],
}

/// How many of a track's simulcast runs the report lists (a run that switches layers every
/// few seconds for an hour would list a thousand).
const RUNS_REPORTED: usize = 200;

/// One expected track as one participant received it.
fn track_outcome(
    t: &ExpectedTrack,
    stats: Option<&RemoteTrackStats>,
    sent: Sent,
    window: &Window,
) -> TrackReport {
    let first = stats.and_then(|s| s.first_counter).map(u64::from);
    let start = match (first, t.sent_at_settle) {
        (Some(f), Some(s)) => f.min(s),
        (Some(f), None) => f,
        (None, Some(s)) => s,
        (None, None) => sent.packets,
    };
    let (expected, lost) = match (t.stamped, t.simulcast, stats) {
        (false, _, _) => (None, None),
        // Each run of a layer from its first packet received to its last (the last run to
        // the last packet sent): the layers the subscriber was not on are not expected.
        (true, true, Some(s)) if s.is_simulcast() => {
            let (expected, lost) = s.simulcast_loss(&sent.layers);
            (Some(expected), Some(expected.min(lost)))
        }
        // Nothing of it arrived: at least its lowest layer was due from the settle time on.
        (true, true, _) => {
            let from = t.lowest_layer_at_settle.unwrap_or(sent.layers[0]);
            let expected = sent.layers[0].saturating_sub(from);
            (Some(expected), Some(expected))
        }
        (true, false, _) => {
            let expected = sent.packets.saturating_sub(start);
            let lost = stats.map_or(expected, |s| s.lost_of(start, sent.packets));
            (Some(expected), Some(lost))
        }
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
    let simulcast = stats.is_some_and(RemoteTrackStats::is_simulcast);
    let since = |origin: Instant, at: Instant| at.saturating_duration_since(origin).as_secs_f64();
    let (timeline, layer_runs) = match (window.origin, stats) {
        (Some(origin), Some(s)) => (
            timeline_of(s, origin),
            s.runs
                .iter()
                .enumerate()
                .take(RUNS_REPORTED)
                .map(|(i, r)| LayerRunReport {
                    layer: r.layer,
                    first_counter: r.first_counter(),
                    last_counter: r.last_counter(),
                    received: r.received,
                    lost: r.lost(),
                    from_s: since(origin, r.started_at),
                    to_s: since(
                        origin,
                        s.runs.get(i + 1).map_or(r.last_at, |next| next.started_at),
                    ),
                })
                .collect(),
        ),
        _ => (Vec::new(), Vec::new()),
    };
    let bytes = stats.map_or(0, |s| s.bytes);
    let receiving = match (first_at, last_at) {
        (Some(first), Some(last)) => last.saturating_duration_since(first).as_secs_f64(),
        _ => 0.0,
    };
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
        bytes,
        mean_bitrate_bps: if receiving > 0.0 {
            bytes as f64 * 8.0 / receiving
        } else {
            0.0
        },
        simulcast,
        layer_seconds: match stats {
            Some(s) if simulcast => s.layer_time().iter().map(Duration::as_secs_f64).collect(),
            _ => Vec::new(),
        },
        layer_switches: stats.map_or(0, |s| s.runs.len().saturating_sub(1) as u64),
        layer_runs,
        timeline,
    }
}

/// A track's seconds as the report gives them, counted from `origin`.
fn timeline_of(stats: &RemoteTrackStats, origin: Instant) -> Vec<TimelineSample> {
    stats
        .timeline()
        .iter()
        // The second under way when the run stopped, if it is too short to say a rate.
        .filter(|s| s.length >= Duration::from_millis(200))
        .map(|s| {
            let latency = |us: f64| (s.latency_samples > 0).then_some(us / 1000.0);
            TimelineSample {
                t: s.at.saturating_duration_since(origin).as_secs_f64(),
                layer: s.layer,
                bitrate_bps: s.bytes as f64 * 8.0 / s.length.as_secs_f64(),
                packets: s.packets,
                lost: s.lost,
                freezes: s.freezes,
                latency_ms: latency(s.latency_sum_us as f64 / f64::from(s.latency_samples.max(1))),
                latency_max_ms: latency(s.latency_max_us as f64),
            }
        })
        .collect()
}

fn clock_rate_of(kind: &str) -> Option<u32> {
    match kind {
        "audio" => Some(48_000),
        "video" => Some(90_000),
        _ => None,
    }
}

pub(crate) fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(sent_at_settle: Option<u64>) -> ExpectedTrack {
        ExpectedTrack {
            room: "r".into(),
            publisher_id: "p".into(),
            publisher_name: "pub".into(),
            kind: "video",
            stamped: true,
            simulcast: false,
            sent_at_settle,
            lowest_layer_at_settle: None,
        }
    }

    fn sent(packets: u64) -> Sent {
        Sent {
            packets,
            layers: [0; 3],
        }
    }

    fn window(settled_at: Instant, stopped_at: Instant) -> Window {
        Window {
            settled_at,
            stopped_at,
            freeze_threshold: Duration::from_millis(500),
            origin: None,
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
        let window = window(t0, t0 + Duration::from_secs(60));
        // Everything up to counter 32,767, then nothing while the publisher sent 70,000.
        let stats = received(100, 32_767, t0, t0 + Duration::from_secs(20));
        let t = track_outcome(&expected(Some(150)), Some(&stats), sent(70_000), &window);
        assert_eq!(t.expected, Some(70_000 - 100));
        assert_eq!(t.lost, Some(70_000 - 32_768));
        assert_eq!(t.freezes, 1);
        assert!((t.frozen_ms - 40_000.0).abs() < 1.0);
    }

    #[test]
    fn a_stream_that_never_arrives_is_all_lost_and_frozen() {
        let t0 = Instant::now();
        let window = window(t0, t0 + Duration::from_secs(10));
        let t = track_outcome(&expected(Some(200)), None, sent(1_200), &window);
        assert_eq!(
            (t.expected, t.lost, t.packets),
            (Some(1_000), Some(1_000), 0)
        );
        assert_eq!(t.freezes, 1);
    }

    #[test]
    fn a_complete_stream_has_no_loss_and_no_freeze() {
        let t0 = Instant::now();
        let window = window(t0 + Duration::from_secs(2), t0 + Duration::from_secs(10));
        let stats = received(10, 999, t0, t0 + Duration::from_millis(9_990));
        let t = track_outcome(&expected(Some(300)), Some(&stats), sent(1_000), &window);
        assert_eq!((t.expected, t.lost, t.freezes), (Some(990), Some(0), 0));
    }

    #[test]
    fn a_simulcast_track_that_never_arrives_owes_its_lowest_layer() {
        let t0 = Instant::now();
        let window = window(t0, t0 + Duration::from_secs(10));
        let track = ExpectedTrack {
            simulcast: true,
            lowest_layer_at_settle: Some(100),
            ..expected(Some(900))
        };
        let sent = Sent {
            packets: 3_000,
            layers: [400, 800, 1_800],
        };
        let t = track_outcome(&track, None, sent, &window);
        assert_eq!((t.expected, t.lost), (Some(300), Some(300)));
        assert!(t.timeline.is_empty() && t.layer_seconds.is_empty());
    }
}
