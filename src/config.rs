//! Every knob of the server, from flags and environment variables, with defaults that serve
//! localhost with no flags at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

/// One ICE server handed to clients in `joined` (STUN or TURN).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl std::str::FromStr for IceServer {
    type Err = String;

    /// `stun:host:port` or `turn:host:port?transport=udp|user:pass`: credentials after the
    /// last `|`, so the URL itself may hold `:` and `?`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (url, creds) = match s.rsplit_once('|') {
            Some((url, creds)) => (url, Some(creds)),
            None => (s, None),
        };
        if !["stun:", "stuns:", "turn:", "turns:"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return Err(format!(
                "ICE server URL must start with stun:, stuns:, turn: or turns: (got {url:?})"
            ));
        }
        let (username, credential) = match creds {
            Some(creds) => {
                let (user, pass) = creds
                    .split_once(':')
                    .ok_or_else(|| "TURN credentials must be user:password".to_string())?;
                (Some(user.to_string()), Some(pass.to_string()))
            }
            None => (None, None),
        };
        Ok(IceServer {
            urls: vec![url.to_string()],
            username,
            credential,
        })
    }
}

/// An inclusive UDP port range for the peer connections' sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("port range must be MIN-MAX (got {s:?})"))?;
        let min: u16 = a
            .trim()
            .parse()
            .map_err(|e| format!("bad port {a:?}: {e}"))?;
        let max: u16 = b
            .trim()
            .parse()
            .map_err(|e| format!("bad port {b:?}: {e}"))?;
        if min == 0 || min > max {
            return Err(format!(
                "port range must satisfy 0 < MIN <= MAX (got {s:?})"
            ));
        }
        Ok(PortRange { min, max })
    }
}

fn parse_duration_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|e| format!("expected seconds, got {s:?}: {e}"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("expected a positive number of seconds, got {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Server configuration. Every field is a flag with an environment variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// HTTP listen address (HOST:PORT); port 0 picks a free port.
    #[arg(long, env = "SWITCHBOARD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Local IP the peer connections bind their UDP sockets to. `0.0.0.0` means every
    /// non-loopback interface.
    #[arg(long, env = "SWITCHBOARD_RTC_IP", default_value = "127.0.0.1")]
    pub rtc_ip: IpAddr,

    /// Public IPs announced in ICE candidates instead of the bound ones (NAT 1:1 mapping),
    /// comma separated.
    #[arg(long, env = "SWITCHBOARD_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// UDP port range the peer connections bind in (MIN-MAX); ephemeral ports when unset.
    #[arg(long, env = "SWITCHBOARD_UDP_PORTS")]
    pub udp_ports: Option<PortRange>,

    /// STUN/TURN servers handed to clients, repeatable or comma separated:
    /// `stun:host:3478` or `turn:host:3478|user:password`.
    #[arg(
        long = "ice-server",
        env = "SWITCHBOARD_ICE_SERVERS",
        value_delimiter = ','
    )]
    pub ice_servers: Vec<IceServer>,

    /// TLS certificate (PEM). Required, with --tls-key, to listen on anything but loopback:
    /// browsers give getUserMedia only to HTTPS pages and localhost.
    #[arg(long, env = "SWITCHBOARD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// TLS private key (PEM).
    #[arg(long, env = "SWITCHBOARD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Shared token a client must send in `join`; auth is off when unset.
    #[arg(long, env = "SWITCHBOARD_AUTH_TOKEN")]
    pub auth_token: Option<String>,

    /// Bearer token for `/api/rooms`; open when unset.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
    pub admin_token: Option<String>,

    /// Most rooms open at once.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS", default_value_t = 1000)]
    pub max_rooms: usize,

    /// Most participants in one room.
    #[arg(
        long = "max-participants",
        env = "SWITCHBOARD_MAX_PARTICIPANTS",
        default_value_t = 50
    )]
    pub max_participants_per_room: usize,

    /// Most tracks one participant may publish.
    #[arg(
        long = "max-tracks",
        env = "SWITCHBOARD_MAX_TRACKS",
        default_value_t = 8
    )]
    pub max_tracks_per_participant: usize,

    /// Largest signaling frame accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest chat text accepted, in bytes of UTF-8.
    #[arg(long, env = "SWITCHBOARD_MAX_CHAT_BYTES", default_value_t = 4096)]
    pub max_chat_bytes: usize,

    /// Signaling and chat messages one participant may send per second (burst of twice that).
    #[arg(
        long = "message-rate",
        env = "SWITCHBOARD_MESSAGE_RATE",
        default_value_t = 50
    )]
    pub message_rate_per_sec: u32,

    /// Seconds of silence after which a signaling peer is dropped.
    #[arg(long, env = "SWITCHBOARD_IDLE_TIMEOUT", default_value = "30", value_parser = parse_duration_secs)]
    pub idle_timeout: Duration,

    /// Seconds between server WebSocket pings.
    #[arg(long, env = "SWITCHBOARD_PING_INTERVAL", default_value = "10", value_parser = parse_duration_secs)]
    pub ping_interval: Duration,

    /// Signaling messages queued for one client before it counts as not reading and is
    /// disconnected.
    #[arg(
        long = "signaling-queue",
        env = "SWITCHBOARD_SIGNALING_QUEUE",
        default_value_t = 512
    )]
    pub signaling_queue_messages: usize,

    /// Packets a DownTrack may queue before it drops (a slow subscriber drops, never stalls).
    #[arg(
        long = "downtrack-queue",
        env = "SWITCHBOARD_DOWNTRACK_QUEUE",
        default_value_t = 512
    )]
    pub downtrack_queue_packets: usize,

    /// Longest a video packet may wait in a DownTrack's queue, in milliseconds; older ones
    /// are dropped and the DownTrack restarts on a keyframe.
    #[arg(long, env = "SWITCHBOARD_VIDEO_QUEUE_MS", default_value_t = 200)]
    pub video_queue_ms: u64,

    /// Longest an audio packet may wait in a DownTrack's queue, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_AUDIO_QUEUE_MS", default_value_t = 100)]
    pub audio_queue_ms: u64,

    /// Least time between two keyframe requests (PLI) sent to one publisher, in milliseconds.
    /// A subscriber that has nothing to show yet does not wait for it.
    #[arg(long, env = "SWITCHBOARD_PLI_INTERVAL_MS", default_value_t = 500)]
    pub pli_interval_ms: u64,

    /// Fault injection for tests: every Receiver drops every Nth packet from its publisher.
    /// Not a flag: only a test sets it, to prove the load tester sees loss.
    #[arg(skip)]
    pub fault_drop_every_nth_packet: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            rtc_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip: Vec::new(),
            udp_ports: None,
            ice_servers: Vec::new(),
            tls_cert: None,
            tls_key: None,
            auth_token: None,
            admin_token: None,
            max_rooms: 1000,
            max_participants_per_room: 50,
            max_tracks_per_participant: 8,
            max_message_bytes: 64 * 1024,
            max_chat_bytes: 4096,
            message_rate_per_sec: 50,
            idle_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(10),
            signaling_queue_messages: 512,
            downtrack_queue_packets: 512,
            video_queue_ms: 200,
            audio_queue_ms: 100,
            pli_interval_ms: 500,
            fault_drop_every_nth_packet: None,
        }
    }
}

impl Config {
    /// A configuration for tests: an ephemeral port on loopback, everything else default.
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..Config::default()
        }
    }

    pub fn pli_interval(&self) -> Duration {
        Duration::from_millis(self.pli_interval_ms)
    }

    pub fn queue_limits(&self) -> crate::media::downtrack::QueueLimits {
        crate::media::downtrack::QueueLimits {
            packets: self.downtrack_queue_packets,
            audio_age: Duration::from_millis(self.audio_queue_ms.max(1)),
            video_age: Duration::from_millis(self.video_queue_ms.max(1)),
        }
    }

    /// Checks what clap cannot: TLS is needed off loopback.
    pub fn validate(&self) -> Result<(), crate::Error> {
        if !self.listen.ip().is_loopback() && self.tls_cert.is_none() {
            return Err(crate::Error::Config(format!(
                "listening on {} needs --tls-cert and --tls-key: browsers only allow camera \
                 and microphone on HTTPS pages or localhost",
                self.listen
            )));
        }
        if self.max_message_bytes < 1024 || self.max_chat_bytes == 0 {
            return Err(crate::Error::Config(
                "--max-message-bytes must be at least 1024 and --max-chat-bytes positive".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ice_servers_with_and_without_credentials() {
        let stun: IceServer = "stun:stun.example.org:3478".parse().unwrap();
        assert_eq!(stun.urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(stun.username, None);
        let turn: IceServer = "turn:turn.example.org:3478?transport=udp|alice:s3cret"
            .parse()
            .unwrap();
        assert_eq!(turn.urls, vec!["turn:turn.example.org:3478?transport=udp"]);
        assert_eq!(turn.username.as_deref(), Some("alice"));
        assert_eq!(turn.credential.as_deref(), Some("s3cret"));
        assert!("http://nope".parse::<IceServer>().is_err());
    }

    #[test]
    fn parses_port_ranges() {
        assert_eq!(
            "50000-50100".parse::<PortRange>().unwrap(),
            PortRange {
                min: 50000,
                max: 50100
            }
        );
        assert!("50100-50000".parse::<PortRange>().is_err());
        assert!("0-10".parse::<PortRange>().is_err());
        assert!("5000".parse::<PortRange>().is_err());
    }

    /// The flags the README documents, all accepted.
    #[test]
    fn accepts_every_documented_flag() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            config: Config,
        }
        let cli = Cli::try_parse_from([
            "switchboard",
            "--listen",
            "127.0.0.1:9000",
            "--rtc-ip",
            "0.0.0.0",
            "--public-ip",
            "203.0.113.7",
            "--udp-ports",
            "50000-50999",
            "--ice-server",
            "stun:stun.example.org:3478",
            "--ice-server",
            "turn:turn.example.org:3478|user:pass",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--auth-token",
            "t",
            "--admin-token",
            "a",
            "--max-rooms",
            "3",
            "--max-participants",
            "4",
            "--max-tracks",
            "5",
            "--max-message-bytes",
            "2048",
            "--max-chat-bytes",
            "100",
            "--message-rate",
            "7",
            "--idle-timeout",
            "12",
            "--ping-interval",
            "3",
            "--downtrack-queue",
            "64",
            "--signaling-queue",
            "32",
            "--pli-interval-ms",
            "250",
            "--video-queue-ms",
            "150",
            "--audio-queue-ms",
            "60",
        ])
        .expect("every documented flag parses");
        let c = cli.config;
        assert_eq!(c.max_participants_per_room, 4);
        assert_eq!(c.max_tracks_per_participant, 5);
        assert_eq!(c.message_rate_per_sec, 7);
        assert_eq!(c.downtrack_queue_packets, 64);
        assert_eq!(c.queue_limits().video_age, Duration::from_millis(150));
        assert_eq!(c.queue_limits().audio_age, Duration::from_millis(60));
        assert_eq!(c.signaling_queue_messages, 32);
        assert_eq!(c.ice_servers.len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(12));
        assert_eq!(
            c.udp_ports,
            Some(PortRange {
                min: 50000,
                max: 50999
            })
        );
    }

    #[test]
    fn tls_is_required_off_loopback() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.listen = "0.0.0.0:8443".parse().unwrap();
        assert!(config.validate().is_err());
    }
}
