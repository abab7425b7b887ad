//! Every knob of the server, from flags and environment variables, with defaults that serve
//! localhost with no flags at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Args;
use serde::Serialize;

pub use crate::engine::SrtpWriter;

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

    /// Local IP the media UDP port is bound to. `0.0.0.0` (the default) binds every
    /// interface and announces each non-loopback address, and loopback too when signaling
    /// listens on loopback (browsers that refuse loopback candidates, Firefox by default,
    /// then use the others).
    #[arg(long, env = "SWITCHBOARD_RTC_IP", default_value = "0.0.0.0")]
    pub rtc_ip: IpAddr,

    /// Public IP announced in ICE candidates instead of the bound ones (NAT 1:1 mapping).
    #[arg(long, env = "SWITCHBOARD_PUBLIC_IP", value_delimiter = ',')]
    pub public_ip: Vec<IpAddr>,

    /// The one UDP port every peer connection's media goes through (0: any free port).
    #[arg(long, env = "SWITCHBOARD_UDP_PORT", default_value_t = 7882)]
    pub udp_port: u16,

    /// Media worker threads (0: one per core). A room lives on one worker.
    #[arg(long, env = "SWITCHBOARD_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// SRTP protection profiles offered, in order of preference: aes128gcm, aes256gcm,
    /// aes128cm (AES-CM with HMAC-SHA1-80). Restrict it to force one.
    #[arg(
        long,
        env = "SWITCHBOARD_SRTP",
        default_value = "aes128gcm,aes256gcm,aes128cm"
    )]
    pub srtp: String,

    /// Who protects forwarded media: `worker` marshals and encrypts each packet once, in
    /// place, with the keys the stack's DTLS handshake derived; `stack` hands every packet to
    /// webrtc-rs's per-connection pipeline (about twice the CPU per packet; for comparison).
    #[arg(long, env = "SWITCHBOARD_SRTP_WRITER", value_enum, default_value_t = SrtpWriter::Worker)]
    pub srtp_writer: SrtpWriter,

    /// Most remote ICE candidates one peer connection takes.
    #[arg(long, env = "SWITCHBOARD_MAX_CANDIDATES", default_value_t = 32)]
    pub max_candidates: usize,

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

    /// Longest a video packet may wait in a DownTrack's queue, in milliseconds; older ones
    /// are dropped and the DownTrack restarts on a keyframe.
    #[arg(long, env = "SWITCHBOARD_VIDEO_QUEUE_MS", default_value_t = 200)]
    pub video_queue_ms: u64,

    /// Longest an audio packet may wait in a DownTrack's queue, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_AUDIO_QUEUE_MS", default_value_t = 100)]
    pub audio_queue_ms: u64,

    /// Seconds a participant's media may be absent before it is removed as a ghost: its
    /// subscriber connection never came up, or every unmuted track it publishes went silent.
    #[arg(long, env = "SWITCHBOARD_MEDIA_TIMEOUT", default_value = "15", value_parser = parse_duration_secs)]
    pub media_timeout: Duration,

    /// Video packets kept for retransmission when a subscriber NACKs one (rounded up to a
    /// power of two): one copy per published track, shared by its subscribers, and a 12-byte
    /// note per packet per subscriber of which packet each of its sequence numbers carried.
    #[arg(long, env = "SWITCHBOARD_NACK_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=32768))]
    pub nack_window: u16,

    /// Oldest packet retransmitted, in milliseconds: later, the frame it belongs to is past.
    #[arg(long, env = "SWITCHBOARD_NACK_MAX_AGE_MS", default_value_t = 1000)]
    pub nack_max_age_ms: u64,

    /// Most packets retransmitted a second to one subscriber's video track (bursts of twice
    /// that): a subscriber that floods NACKs gets no more, and costs the worker no more.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_RETRANSMITS_PER_SEC",
        default_value_t = 300
    )]
    pub max_retransmits_per_sec: u32,

    /// Each subscriber's downlink estimate before its first feedback, bits a second: the
    /// layers its first tracks start on (the estimate then follows the feedback, and probes
    /// for more when a larger layer is wanted).
    #[arg(
        long,
        env = "SWITCHBOARD_BWE_START_BITRATE",
        default_value_t = 1_500_000
    )]
    pub bwe_start_bitrate: u64,

    /// The most a subscriber's downlink estimate may reach, bits a second.
    #[arg(
        long,
        env = "SWITCHBOARD_BWE_MAX_BITRATE",
        default_value_t = 20_000_000
    )]
    pub bwe_max_bitrate: u64,

    /// No bandwidth estimate per subscriber: layers are chosen by the size a client shows
    /// them at only (as a server without congestion control would).
    #[arg(long, env = "SWITCHBOARD_NO_BWE")]
    pub no_bwe: bool,

    /// Least time between two keyframe requests (PLI) sent to one publisher, in milliseconds.
    /// A subscriber that has nothing to show yet does not wait for it.
    #[arg(long, env = "SWITCHBOARD_PLI_INTERVAL_MS", default_value_t = 500)]
    pub pli_interval_ms: u64,

    /// Most signaling sockets (WebSockets) open at once; an upgrade over it is refused with
    /// HTTP 503. Capped at start to what the process's open-file limit leaves room for.
    #[arg(long, env = "SWITCHBOARD_MAX_SOCKETS", default_value_t = 2000)]
    pub max_sockets: usize,

    /// Most signaling sockets from one client IP (an IPv6 client: its /64; loopback included)
    /// that have not joined a room yet; an upgrade over it is refused with HTTP 429. Joined
    /// participants do not count: many people may share one public address (CGNAT).
    #[arg(long, env = "SWITCHBOARD_MAX_SOCKETS_PER_IP", default_value_t = 20)]
    pub max_sockets_per_ip: usize,

    /// Joins a second from one client IP (bursts of twice that); a join over it gets
    /// `rate_limited` and may be retried. Keeps a reconnect storm or a script in check.
    #[arg(long, env = "SWITCHBOARD_JOIN_RATE_PER_IP", default_value_t = 100)]
    pub join_rate_per_ip: u32,

    /// Seconds a signaling socket has to join a room; then it gets `not_joined` and is closed
    /// (1008), so sockets that never join cannot pile up.
    #[arg(long, env = "SWITCHBOARD_JOIN_TIMEOUT", default_value = "10", value_parser = parse_duration_secs)]
    pub join_timeout: Duration,

    /// Seconds an HTTP connection has to send a complete request header (the first request
    /// and each one after on a kept-alive connection); then it is closed.
    #[arg(long, env = "SWITCHBOARD_HEADER_TIMEOUT", default_value = "10", value_parser = parse_duration_secs)]
    pub header_timeout: Duration,

    /// Seconds a TLS client has to complete its handshake; then it is closed.
    #[arg(long, env = "SWITCHBOARD_TLS_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_duration_secs)]
    pub tls_handshake_timeout: Duration,

    /// Most bytes of signaling messages waiting for one client (queued, not yet taken by the
    /// kernel); a client over it is not reading and is disconnected.
    #[arg(long, env = "SWITCHBOARD_MAX_UNSENT_BYTES", default_value_t = 1 << 20)]
    pub max_unsent_bytes: usize,

    /// Seconds a write to a client's connection may make no progress (its kernel send buffer
    /// full: the client stopped reading) before the connection is dropped.
    #[arg(long, env = "SWITCHBOARD_WRITE_TIMEOUT", default_value = "10", value_parser = parse_duration_secs)]
    pub write_timeout: Duration,

    /// Kernel send buffer of each HTTP connection, in bytes (0: the kernel's autotuning, up to
    /// megabytes). Bounds what a client that stops reading holds in the kernel.
    #[arg(long, env = "SWITCHBOARD_TCP_SEND_BUFFER", default_value_t = 64 * 1024)]
    pub tcp_send_buffer: usize,

    /// Most `a=candidate` lines in one offer or answer; more is refused with `bad_request`
    /// before the SDP reaches the media engine.
    #[arg(
        long,
        env = "SWITCHBOARD_MAX_CANDIDATES_PER_OFFER",
        default_value_t = 32
    )]
    pub max_candidates_per_offer: usize,

    /// Most media sections (`m=` lines) in one publisher offer; more is refused with
    /// `bad_request` before the SDP reaches the media engine.
    #[arg(long, env = "SWITCHBOARD_MAX_MEDIA_SECTIONS", default_value_t = 64)]
    pub max_media_sections: usize,

    /// Publisher offers one participant may send per second (burst of twice that); excess
    /// offers get `rate_limited` and are not acted on.
    #[arg(
        long = "offer-rate",
        env = "SWITCHBOARD_OFFER_RATE",
        default_value_t = 5
    )]
    pub offer_rate_per_sec: u32,

    /// Origins allowed to open `/ws`, besides the page's own (same host as the `Host` header)
    /// and any origin on loopback; repeatable or comma separated, `*` for any. A request with
    /// no `Origin` (not a browser) is allowed; others are refused with HTTP 403.
    #[arg(
        long = "allowed-origin",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Fault injection for tests: every Receiver drops every Nth packet from its publisher.
    /// Not a flag: only a test sets it, to prove the load tester sees loss.
    #[arg(skip)]
    pub fault_drop_every_nth_packet: Option<u32>,

    /// Fault injection for tests: a lossy downlink. Every Nth video RTP datagram a worker
    /// sends to a subscriber is dropped after encryption, as a network would lose it, so the
    /// subscriber's NACKs must bring it back. Not a flag.
    #[arg(skip)]
    pub fault_drop_sent_video_every_nth: Option<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            rtc_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            public_ip: Vec::new(),
            udp_port: 7882,
            workers: 0,
            srtp: "aes128gcm,aes256gcm,aes128cm".into(),
            srtp_writer: SrtpWriter::Worker,
            max_candidates: 32,
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
            video_queue_ms: 200,
            audio_queue_ms: 100,
            media_timeout: Duration::from_secs(15),
            pli_interval_ms: 500,
            bwe_start_bitrate: 1_500_000,
            bwe_max_bitrate: 20_000_000,
            no_bwe: false,
            nack_window: 256,
            nack_max_age_ms: 1000,
            max_retransmits_per_sec: 300,
            max_sockets: 2000,
            max_sockets_per_ip: 20,
            join_rate_per_ip: 100,
            join_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_unsent_bytes: 1 << 20,
            write_timeout: Duration::from_secs(10),
            tcp_send_buffer: 64 * 1024,
            max_candidates_per_offer: 32,
            max_media_sections: 64,
            offer_rate_per_sec: 5,
            allowed_origins: Vec::new(),
            fault_drop_every_nth_packet: None,
            fault_drop_sent_video_every_nth: None,
        }
    }
}

impl Config {
    /// A configuration for tests: ephemeral ports on loopback, everything else default but
    /// the per-IP socket cap, which every test client on loopback shares (a test of the cap
    /// lowers it again).
    pub fn ephemeral() -> Self {
        Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            rtc_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            udp_port: 0,
            max_sockets_per_ip: 1000,
            ..Config::default()
        }
    }

    pub fn pli_interval(&self) -> Duration {
        Duration::from_millis(self.pli_interval_ms)
    }

    pub fn queue_limits(&self) -> crate::media::downtrack::QueueLimits {
        crate::media::downtrack::QueueLimits {
            audio_age: Duration::from_millis(self.audio_queue_ms.max(1)),
            video_age: Duration::from_millis(self.video_queue_ms.max(1)),
        }
    }

    /// The engine's settings: the shared UDP port and what it announces.
    pub fn engine(&self) -> Result<crate::engine::EngineConfig, crate::Error> {
        let workers = if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        };
        Ok(crate::engine::EngineConfig {
            workers,
            bind: SocketAddr::new(self.rtc_ip, self.udp_port),
            announce: self.announced_ips()?,
            srtp: self.srtp.clone(),
            srtp_writer: self.srtp_writer,
            pli_interval: self.pli_interval(),
            nack_window: self.nack_window,
            nack_max_age: Duration::from_millis(self.nack_max_age_ms),
            max_retransmits_per_sec: self.max_retransmits_per_sec,
            queue: self.queue_limits(),
            max_chat_bytes: self.max_chat_bytes,
            bwe: (!self.no_bwe).then(|| crate::engine::BweSettings {
                start: self.bwe_start_bitrate as f64,
                max: (self.bwe_max_bitrate as f64).max(crate::engine::BweSettings::MIN),
            }),
            max_candidates: self.max_candidates,
            media_timeout: self.media_timeout,
            fault_drop_every: self.fault_drop_every_nth_packet,
            fault_drop_sent_video_every: self.fault_drop_sent_video_every_nth,
        })
    }

    /// The IPs put in ICE candidates: the public ones, else the bound one, else (bound to
    /// every interface) each non-loopback address of the machine, after loopback when
    /// signaling is on loopback.
    pub fn announced_ips(&self) -> Result<Vec<IpAddr>, crate::Error> {
        if !self.public_ip.is_empty() {
            return Ok(self.public_ip.clone());
        }
        if !self.rtc_ip.is_unspecified() {
            return Ok(vec![self.rtc_ip]);
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        if self.listen.ip().is_loopback() {
            ips.push(match self.rtc_ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            });
        }
        let interfaces = if_addrs::get_if_addrs()
            .map_err(|e| crate::Error::Config(format!("listing network interfaces: {e}")))?;
        for ip in interfaces.into_iter().map(|i| i.ip()) {
            if !ip.is_loopback() && ip.is_ipv4() == self.rtc_ip.is_ipv4() && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Err(crate::Error::Config(format!(
                "--rtc-ip {} found no non-loopback address to announce; give --public-ip",
                self.rtc_ip
            )));
        }
        Ok(ips)
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
        if self.max_sockets == 0 || self.max_sockets_per_ip == 0 || self.join_rate_per_ip == 0 {
            return Err(crate::Error::Config(
                "--max-sockets, --max-sockets-per-ip and --join-rate-per-ip must be positive"
                    .into(),
            ));
        }
        for origin in &self.allowed_origins {
            if origin != "*" && crate::http::origin::normalize(origin).is_none() {
                return Err(crate::Error::Config(format!(
                    "--allowed-origin {origin:?} is not an origin like https://host[:port] or *"
                )));
            }
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
            "--udp-port",
            "50000",
            "--workers",
            "2",
            "--srtp",
            "aes128gcm",
            "--max-candidates",
            "10",
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
            "--signaling-queue",
            "32",
            "--pli-interval-ms",
            "250",
            "--video-queue-ms",
            "150",
            "--audio-queue-ms",
            "60",
            "--max-sockets",
            "100",
            "--max-sockets-per-ip",
            "6",
            "--join-timeout",
            "4",
            "--header-timeout",
            "5",
            "--tls-handshake-timeout",
            "6",
            "--max-unsent-bytes",
            "65536",
            "--write-timeout",
            "7",
            "--tcp-send-buffer",
            "32768",
            "--max-candidates-per-offer",
            "16",
            "--max-media-sections",
            "20",
            "--offer-rate",
            "3",
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example:8443",
            "--media-timeout",
            "20",
        ])
        .expect("every documented flag parses");
        let c = cli.config;
        assert_eq!(c.max_participants_per_room, 4);
        assert_eq!(c.max_tracks_per_participant, 5);
        assert_eq!(c.message_rate_per_sec, 7);
        assert_eq!(c.queue_limits().video_age, Duration::from_millis(150));
        assert_eq!((c.max_sockets, c.max_sockets_per_ip), (100, 6));
        assert_eq!(c.join_timeout, Duration::from_secs(4));
        assert_eq!(c.header_timeout, Duration::from_secs(5));
        assert_eq!(c.tls_handshake_timeout, Duration::from_secs(6));
        assert_eq!(c.max_unsent_bytes, 65536);
        assert_eq!(c.write_timeout, Duration::from_secs(7));
        assert_eq!(c.tcp_send_buffer, 32768);
        assert_eq!((c.max_candidates_per_offer, c.max_media_sections), (16, 20));
        assert_eq!(c.offer_rate_per_sec, 3);
        assert_eq!(
            c.allowed_origins,
            vec!["https://a.example", "https://b.example:8443"]
        );
        assert_eq!(c.queue_limits().audio_age, Duration::from_millis(60));
        assert_eq!(c.signaling_queue_messages, 32);
        assert_eq!(c.ice_servers.len(), 2);
        assert_eq!(c.idle_timeout, Duration::from_secs(12));
        assert_eq!((c.udp_port, c.workers, c.max_candidates), (50000, 2, 10));
        assert_eq!(c.engine().unwrap().bind.port(), 50000);
    }

    #[test]
    fn media_is_announced_on_loopback_and_the_machines_own_addresses() {
        let config = Config::default();
        let ips = config.announced_ips().unwrap();
        assert_eq!(ips[0], IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(ips[1..].iter().all(|ip| !ip.is_loopback()));
        let pinned = Config {
            rtc_ip: "127.0.0.1".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            pinned.announced_ips().unwrap(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        let natted = Config {
            public_ip: vec!["203.0.113.7".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(natted.announced_ips().unwrap(), natted.public_ip);
    }

    #[test]
    fn tls_is_required_off_loopback() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.listen = "0.0.0.0:8443".parse().unwrap();
        assert!(config.validate().is_err());
    }
}
