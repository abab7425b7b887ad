//! The shape of a load run: `switchboard load`'s flags, their defaults, and the plan of
//! participants they make.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::load::clip::Clip;
use crate::load::error::LoadError;
use crate::load::publish::PublishOptions;
use crate::load::received::DEFAULT_FREEZE_THRESHOLD;

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

/// One participant the run will join.
pub(crate) struct Planned {
    pub(crate) room: String,
    pub(crate) name: String,
    pub(crate) publishes: bool,
}

impl LoadConfig {
    pub(crate) fn plan(&self) -> Vec<Planned> {
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

    pub(crate) fn publish_options(&self, clip: Option<Arc<Clip>>) -> PublishOptions {
        PublishOptions {
            video: !self.no_video,
            audio: !self.no_audio,
            video_bitrate_bps: self.video_bitrate,
            frame_rate: self.frame_rate,
            keyframe_interval: Duration::from_secs_f64(self.keyframe_interval.max(0.1)),
            clip,
            flood: None,
            start_muted: Vec::new(),
            simulcast: false,
            layer_bitrates_bps: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), LoadError> {
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
}
