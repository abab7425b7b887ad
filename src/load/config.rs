//! The shape of a load run: `switchboard load`'s flags, their defaults, and the plan of
//! participants they make.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::load::bottleneck::LinkConfig;
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
    /// Publish the synthetic video as three simulcast layers (rids q, h, f: 320x180, 640x360,
    /// 1280x720), each its own RTP stream with its own keyframes.
    #[arg(long)]
    pub simulcast: bool,
    /// The simulcast layers' bitrates, lowest first: `150kbit,450kbit,1.5Mbit`. Default: 15 %,
    /// 30 % and 100 % of --video-bitrate.
    #[arg(long, value_parser = parse_layer_bitrates)]
    pub layer_bitrates: Option<[u32; 3]>,
    /// An emulated bottleneck in front of what subscribers receive: its rate (`300kbit`,
    /// `2Mbit`, or bits per second), served from a drop-tail queue of 200 ms of the rate (at
    /// least 64 KiB).
    #[arg(long, value_parser = parse_bitrate)]
    pub downlink: Option<u64>,
    /// Random loss on the subscribers' downlink: `3%`.
    #[arg(long, value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// Fixed delay on the subscribers' downlink: `75ms`.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Only the first N subscribers of each room get the emulated downlink (default: all).
    #[arg(long)]
    pub shaped_subscribers: Option<usize>,
    /// Seeds the emulated downlinks' random loss: the same seed loses the same datagrams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the report as a self-contained HTML page with plots over time to this file.
    #[arg(long)]
    pub html: Option<std::path::PathBuf>,
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
            simulcast: false,
            layer_bitrates: None,
            downlink: None,
            loss: None,
            delay: None,
            shaped_subscribers: None,
            seed: 1,
            html: None,
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
    /// Its emulated downlink (transparent unless shaped).
    pub(crate) downlink: LinkConfig,
    /// Seeds its downlink's random loss.
    pub(crate) seed: u64,
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
                    downlink: LinkConfig::default(),
                    seed: self.seed_of(plan.len()),
                });
            }
            for s in 0..self.subscribers {
                let shaped = self.shaped_subscribers.is_none_or(|n| s < n);
                plan.push(Planned {
                    room: room.clone(),
                    name: format!("sub-{r}-{s}"),
                    publishes: false,
                    downlink: if shaped {
                        self.downlink()
                    } else {
                        LinkConfig::default()
                    },
                    seed: self.seed_of(plan.len()),
                });
            }
        }
        plan
    }

    /// The seed of the `index`th participant planned: each its own.
    fn seed_of(&self, index: usize) -> u64 {
        self.seed.wrapping_mul(1_000_003).wrapping_add(index as u64)
    }

    /// The emulated downlink of a shaped subscriber.
    pub fn downlink(&self) -> LinkConfig {
        LinkConfig {
            rate_bps: self.downlink,
            delay: self.delay.unwrap_or_default(),
            loss: self.loss.unwrap_or(0.0),
        }
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
            simulcast: self.simulcast,
            layer_bitrates_bps: self.layer_bitrates,
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
        if self.simulcast && (self.clip.is_some() || self.no_video) {
            return Err(LoadError::Shape(
                "--simulcast sends synthetic video: not with --clip or --no-video".into(),
            ));
        }
        if self.loss.is_some_and(|l| !(0.0..=1.0).contains(&l)) {
            return Err(LoadError::Shape("--loss must be 0% to 100%".into()));
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

/// Bitrates on the command line: `300kbit`, `1.5Mbit`, `2Gbit`, `500k`, `2M`, `64kbps`, or
/// plain bits per second.
pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("expected a bitrate like 300kbit or 2Mbit, got {s:?}"))?;
    let scale = match unit.trim() {
        "" | "bit" | "bps" | "b" => 1.0,
        "k" | "kbit" | "kbps" | "Kbit" | "Kbps" => 1e3,
        "M" | "Mbit" | "Mbps" | "m" | "mbit" | "mbps" => 1e6,
        "G" | "Gbit" | "Gbps" | "g" | "gbit" | "gbps" => 1e9,
        other => {
            return Err(format!(
                "unknown bitrate unit {other:?} (bit, kbit, Mbit, Gbit)"
            ))
        }
    };
    let bps = number * scale;
    if !bps.is_finite() || bps < 1.0 {
        return Err(format!("expected a positive bitrate, got {s:?}"));
    }
    Ok(bps.round() as u64)
}

/// Three bitrates, lowest layer first: `150kbit,450kbit,1.5Mbit`.
pub fn parse_layer_bitrates(s: &str) -> Result<[u32; 3], String> {
    let rates: Vec<u64> = s.split(',').map(parse_bitrate).collect::<Result<_, _>>()?;
    let rates: Vec<u32> = rates
        .into_iter()
        .map(|r| u32::try_from(r).map_err(|_| format!("{r} bit/s is too fast")))
        .collect::<Result<_, _>>()?;
    rates
        .try_into()
        .map_err(|_| format!("expected three bitrates, lowest first, got {s:?}"))
}

/// A percentage: `3%`, `0.5%` or `3` (percent either way), as a fraction.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let number = s.trim().trim_end_matches('%').trim();
    let percent: f64 = number
        .parse()
        .map_err(|_| format!("expected a percentage like 3%, got {s:?}"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("expected 0% to 100%, got {s:?}"));
    }
    Ok(percent / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates_and_percentages_read_as_a_person_writes_them() {
        assert_eq!(parse_bitrate("300kbit"), Ok(300_000));
        assert_eq!(parse_bitrate("1.5Mbit"), Ok(1_500_000));
        assert_eq!(parse_bitrate("2Gbit"), Ok(2_000_000_000));
        assert_eq!(parse_bitrate("500k"), Ok(500_000));
        assert_eq!(parse_bitrate("64kbps"), Ok(64_000));
        assert_eq!(parse_bitrate("800000"), Ok(800_000));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("3 furlongs").is_err());
        assert!(parse_bitrate("0kbit").is_err());
        assert_eq!(
            parse_layer_bitrates("150kbit,450kbit,1.3Mbit"),
            Ok([150_000, 450_000, 1_300_000])
        );
        assert!(parse_layer_bitrates("150k,450k").is_err());
        assert_eq!(parse_percent("3%"), Ok(0.03));
        assert_eq!(parse_percent("0.5%"), Ok(0.005));
        assert_eq!(parse_percent("10"), Ok(0.1));
        assert!(parse_percent("120%").is_err());
        assert!(parse_percent("lots").is_err());
    }

    #[test]
    fn the_first_subscribers_of_each_room_are_shaped() {
        let config = LoadConfig {
            rooms: 2,
            publishers: 1,
            subscribers: 3,
            downlink: Some(300_000),
            delay: Some(Duration::from_millis(75)),
            loss: Some(0.03),
            shaped_subscribers: Some(1),
            ..LoadConfig::default()
        };
        let plan = config.plan();
        let shaped: Vec<&str> = plan
            .iter()
            .filter(|p| !p.downlink.is_transparent())
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(shaped, ["sub-0-0", "sub-1-0"]);
        let link = plan[1].downlink;
        assert_eq!(link.rate_bps, Some(300_000));
        assert_eq!(link.delay, Duration::from_millis(75));
        assert_eq!(link.loss, 0.03);
        let everyone = LoadConfig {
            shaped_subscribers: None,
            ..config
        };
        let shaped = everyone
            .plan()
            .iter()
            .filter(|p| !p.downlink.is_transparent())
            .count();
        assert_eq!(shaped, 6, "all subscribers, never the publishers");
        // Each subscriber's loss has its own seed.
        let seeds: std::collections::HashSet<u64> =
            everyone.plan().iter().map(|p| p.seed).collect();
        assert_eq!(seeds.len(), 8);
    }

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
