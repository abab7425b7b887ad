//! What each participant of a run should have received, against what it did: loss counted
//! on the publishers' own counters, and freezes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::load::client::Client;
use crate::load::config::{LoadConfig, Planned};
use crate::load::received::RemoteTrackStats;
use crate::load::report::TrackReport;

/// A participant that joined, with its client.
pub(crate) struct Joined {
    pub(crate) planned: Planned,
    pub(crate) client: Client,
}

/// Packets each publisher has sent, per kind, read from its own counters.
#[derive(Debug, Clone, Default)]
pub(crate) struct SentCounts(HashMap<(String, &'static str), u64>);

impl SentCounts {
    pub(crate) fn of(joined: &[Joined]) -> Self {
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

    pub(crate) fn get(&self, publisher_id: &str, kind: &str) -> u64 {
        self.0
            .iter()
            .find(|((id, k), _)| id == publisher_id && *k == kind)
            .map_or(0, |(_, n)| *n)
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
                    sent_at_settle: settled.map(|c| c.get(&j.client.id, kind)),
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
