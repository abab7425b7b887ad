//! Counters and gauges an operator asks for, rendered in Prometheus text format.
//!
//! Gauges of objects (peer connections, receivers, downtracks) move in constructors and
//! `Drop`, so they count what is really alive, not what the control plane believes.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

macro_rules! metrics {
    (
        gauges { $($g:ident: $gh:literal,)* }
        counters { $($c:ident: $ch:literal,)* }
        dropped { $($d:ident,)* }
    ) => {
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $g: AtomicI64,)*
            $(pub $c: AtomicU64,)*
            /// RTP packets not forwarded to a subscriber, by reason.
            pub dropped: Dropped,
        }

        /// RTP packets not forwarded to a subscriber, one counter per reason; rendered as one
        /// family, `switchboard_packets_dropped_total{reason="..."}`.
        #[derive(Debug, Default)]
        pub struct Dropped {
            $(pub $d: AtomicU64,)*
        }

        /// A point-in-time copy of [`Dropped`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct DroppedSnapshot {
            $(pub $d: u64,)*
        }

        impl DroppedSnapshot {
            pub fn total(&self) -> u64 {
                0 $(+ self.$d)*
            }
        }

        /// A point-in-time copy of every metric.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct MetricsSnapshot {
            $(pub $g: i64,)*
            $(pub $c: u64,)*
            pub dropped: DroppedSnapshot,
        }

        impl Metrics {
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($g: self.$g.load(Ordering::Relaxed),)*
                    $($c: self.$c.load(Ordering::Relaxed),)*
                    dropped: DroppedSnapshot {
                        $($d: self.dropped.$d.load(Ordering::Relaxed),)*
                    },
                }
            }

            pub fn render_prometheus(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP switchboard_{} {}", stringify!($g), $gh);
                    let _ = writeln!(out, "# TYPE switchboard_{} gauge", stringify!($g));
                    let _ = writeln!(out, "switchboard_{} {}", stringify!($g), self.$g.load(Ordering::Relaxed));
                )*
                $(
                    let _ = writeln!(out, "# HELP switchboard_{}_total {}", stringify!($c), $ch);
                    let _ = writeln!(out, "# TYPE switchboard_{}_total counter", stringify!($c));
                    let _ = writeln!(out, "switchboard_{}_total {}", stringify!($c), self.$c.load(Ordering::Relaxed));
                )*
                let _ = writeln!(out, "# HELP switchboard_packets_dropped_total RTP packets not forwarded to a subscriber, by reason.");
                let _ = writeln!(out, "# TYPE switchboard_packets_dropped_total counter");
                $(
                    let _ = writeln!(out, "switchboard_packets_dropped_total{{reason=\"{}\"}} {}", stringify!($d), self.dropped.$d.load(Ordering::Relaxed));
                )*
                out
            }
        }
    };
}

metrics! {
    gauges {
        rooms: "Rooms open.",
        participants: "Participants joined.",
        published_tracks: "Tracks published and forwarded.",
        peer_connections: "Peer connections alive.",
        receivers: "Receivers alive (one per published track).",
        downtracks: "DownTracks alive (one per forwarded track per subscriber).",
        websockets: "Signaling sockets open.",
    }
    counters {
        packets_in: "RTP packets received from publishers.",
        bytes_in: "RTP payload bytes received from publishers.",
        packets_out: "RTP packets forwarded to subscribers.",
        bytes_out: "RTP payload bytes forwarded to subscribers.",
        plis_sent: "Keyframe requests (PLI) sent to publishers.",
        keyframe_requests_received: "Keyframe requests (PLI/FIR) received from subscribers.",
        keyframe_requests_held: "Subscribers' keyframe requests not passed on to the publisher: repeated within a second of the last one.",
        nacks_received: "NACKs received from subscribers.",
        retransmissions: "Packets subscribers NACKed, sent again from the track's shared history.",
        retransmissions_missed: "Packets subscribers NACKed that were no longer kept (--nack-window, --nack-max-age) or never sent to them.",
        retransmissions_limited: "Packets subscribers NACKed beyond --max-retransmits-per-sec: not sent again.",
        sender_reports: "RTCP sender reports sent to subscribers (lip sync, round trip).",
        padding_packets: "Padding-only packets sent to subscribers to probe their downlink for a higher layer.",
        twcc_feedback: "Transport-wide congestion control feedback reports received from subscribers.",
        remb_received: "REMB bandwidth estimates received from subscribers without transport-wide feedback.",
        layer_switches: "Layer changes a subscriber's bandwidth estimate forced (down) or allowed (up).",
        tracks_paused_bandwidth: "Times a subscriber's video track was paused because not even its lowest layer fitted its bandwidth.",
        srtp_sessions_in_worker: "Subscriber connections whose media the worker protects itself (--srtp-writer worker): the tapped keys authenticated one of the stack's own packets.",
        srtp_sessions_unproven: "Subscriber connections left on the stack's SRTP pipeline: no tapped key authenticated its first packets.",
        srtp_protect_errors: "Forwarded packets the worker could not protect (not sent).",
        nacks_sent: "NACKs sent to publishers for packets lost on the uplink.",
        chat_messages: "Chat messages relayed.",
        signaling_errors: "Error replies sent on signaling sockets.",
        joins: "Successful joins.",
        datagrams_sent: "UDP datagrams the media workers sent.",
        send_syscalls: "System calls the media workers made to send them (sendmmsg: many buffers each).",
        send_buffers: "Buffers the media workers handed to the kernel: with GSO one buffer carries a run of equal-sized datagrams to one subscriber.",
        datagrams_send_dropped: "UDP datagrams dropped after waiting too long for the socket, or refused by it.",
        datagrams_unrouted: "UDP datagrams that matched no peer connection (junk, strangers, stale): dropped.",
        datagrams_handed_over: "UDP datagrams that reached another worker's socket and were passed to the owner.",
        ice_checks_early: "Connectivity checks that arrived before the client's answer: held and replayed once it came, rather than left to the client's retry.",
        media_timeouts: "Participants removed because their media connection failed.",
        candidates_refused: "Remote ICE candidates refused over the per-connection limit.",
        sockets_refused_max: "WebSocket upgrades refused with 503: --max-sockets signaling sockets were open.",
        sockets_refused_per_ip: "WebSocket upgrades refused with 429: the client's IP had --max-sockets-per-ip open that had not joined.",
        joins_rate_limited: "Joins refused (rate_limited) over --join-rate-per-ip.",
        origins_refused: "WebSocket upgrades refused with 403: an Origin not allowed (--allowed-origin).",
        join_timeouts: "Signaling sockets closed for not joining within --join-timeout.",
        header_timeouts: "HTTP connections closed for not sending a request header within --header-timeout.",
        tls_handshake_timeouts: "TLS connections closed for not finishing the handshake within --tls-handshake-timeout.",
        slow_readers_dropped: "Signaling sockets dropped with more than --max-unsent-bytes (or --signaling-queue messages) waiting for a client that does not read.",
        write_timeouts: "Connections dropped after a write made no progress for --write-timeout (the client stopped reading).",
        accept_errors: "Errors accepting TCP connections (out of file descriptors, say); the accept loop backs off.",
        offers_refused: "Offers and answers refused before the media engine: over --max-candidates-per-offer or --max-media-sections.",
        offers_rate_limited: "Publisher offers refused over --offer-rate.",
        frames_too_large: "Signaling frames refused as too large (error too_large, close 1009).",
        frames_invalid_utf8: "Signaling text frames that were not UTF-8 (close 1007).",
    }
    dropped {
        // The DownTrack's queue was full: its subscriber fell behind.
        queue_full,
        // Waited in the DownTrack's queue longer than the configured age.
        expired,
        // Held back while the DownTrack waited for a keyframe to (re)start.
        waiting_for_keyframe,
        // Older than the current run, or than anything the forwarder still tells apart.
        too_old,
        // Already forwarded.
        duplicate,
        // The subscriber has not yet accepted the m-line that carries it.
        not_negotiated,
    }
}

impl Metrics {
    pub fn inc(gauge: &AtomicI64) {
        gauge.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(gauge: &AtomicI64) {
        gauge.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        Metrics::inc(&m.rooms);
        Metrics::add(&m.packets_out, 42);
        let text = m.render_prometheus();
        assert!(text.contains("# TYPE switchboard_rooms gauge\nswitchboard_rooms 1\n"));
        assert!(text.contains("switchboard_packets_out_total 42\n"));
        assert_eq!(m.snapshot().packets_out, 42);
        Metrics::add(&m.dropped.too_old, 3);
        let text = m.render_prometheus();
        assert!(text.contains("switchboard_packets_dropped_total{reason=\"too_old\"} 3\n"));
        assert!(text.contains("switchboard_packets_dropped_total{reason=\"queue_full\"} 0\n"));
        assert_eq!(m.snapshot().dropped.total(), 3);
    }
}
