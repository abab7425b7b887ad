//! Receiver: one published track as it arrives from its publisher.
//!
//! Pure logic with the clock passed in: it tells keyframes apart, keeps the forwarded header
//! extensions by URI, and decides when a keyframe request may go to the publisher. The worker
//! that owns it hands each packet to the track's DownTracks in a plain loop.

use std::time::{Duration, Instant};

use crate::media::extensions::{Carried, ExtensionIds};
use crate::media::keyframe::VideoCodec;
use crate::media::kind::TrackKind;

/// The codec a track was published with, as negotiated with its publisher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Codec {
    pub mime_type: String,
    pub clock_rate: u32,
    pub channels: u16,
    pub sdp_fmtp_line: String,
}

/// Static facts about the published track.
#[derive(Debug, Clone)]
pub struct TrackMeta {
    pub publisher_id: String,
    pub track_id: String,
    pub kind: TrackKind,
    pub codec: Codec,
    /// The publisher's ids for the extensions forwarded to subscribers.
    pub extensions: ExtensionIds,
}

/// One publisher packet, as every DownTrack of the track sees it.
#[derive(Debug)]
pub struct Incoming<'a> {
    pub packet: &'a rtp::Packet,
    /// The simulcast layer of the stream it came on (0 for a track that is not simulcast).
    pub layer: u8,
    pub is_keyframe: bool,
    pub carried: Carried,
    /// When the worker read it from the socket.
    pub arrived: Instant,
}

/// What to do about a keyframe request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRequest {
    /// Send a PLI to the publisher now.
    SendNow,
    /// One will go at this time (call [`Receiver::keyframe_due`] then).
    At(Instant),
    /// Audio, or nothing received yet: nothing to ask for.
    Nothing,
}

/// A PLI sent this recently has a keyframe on its way: a new subscriber waits for that one.
pub const URGENT_PLI_GAP: Duration = Duration::from_millis(100);

pub struct Receiver {
    pub meta: TrackMeta,
    /// Which simulcast layer this stream is (0, lowest, for a track that is not simulcast).
    pub layer: u8,
    video_codec: Option<VideoCodec>,
    /// The publisher's SSRC for this track (the media SSRC of our PLIs).
    pub media_ssrc: u32,
    pli_interval: Duration,
    last_pli: Option<Instant>,
    pending_pli: Option<Instant>,
    /// A keyframe began arriving after the last PLI: that request is answered, and whoever
    /// asks now has missed its start.
    answered_since_pli: bool,
    /// Test-only fault injection: drop every Nth packet (0: never).
    fault_drop_every: u32,
    fault_count: u32,
}

impl Receiver {
    pub fn new(meta: TrackMeta, media_ssrc: u32, pli_interval: Duration) -> Self {
        let video_codec = match meta.kind {
            TrackKind::Video => Some(VideoCodec::from_mime(&meta.codec.mime_type)),
            TrackKind::Audio => None,
        };
        Receiver {
            meta,
            layer: 0,
            video_codec,
            media_ssrc,
            pli_interval,
            last_pli: None,
            pending_pli: None,
            answered_since_pli: false,
            fault_drop_every: 0,
            fault_count: 0,
        }
    }

    /// Makes the Receiver drop every `n`th packet: only tests break the server on purpose.
    pub fn set_fault_drop_every(&mut self, n: Option<u32>) {
        self.fault_drop_every = n.unwrap_or(0);
    }

    pub fn is_video(&self) -> bool {
        self.video_codec.is_some()
    }

    /// Reads one packet from the publisher; `None` when it is not to be forwarded at all.
    pub fn incoming<'a>(
        &mut self,
        packet: &'a rtp::Packet,
        arrived: Instant,
    ) -> Option<Incoming<'a>> {
        if self.fault_drop_every != 0 {
            self.fault_count = self.fault_count.wrapping_add(1);
            if self.fault_count.is_multiple_of(self.fault_drop_every) {
                return None;
            }
        }
        // Padding-only packets (bandwidth probes) carry nothing a subscriber can use.
        if packet.payload.is_empty() {
            return None;
        }
        let is_keyframe = match self.video_codec {
            Some(codec) => codec.is_keyframe(&packet.payload),
            None => true,
        };
        if is_keyframe {
            self.answered_since_pli = true;
        }
        Some(Incoming {
            packet,
            layer: self.layer,
            is_keyframe,
            carried: Carried::read(&packet.header, &self.meta.extensions),
            arrived,
        })
    }

    /// A DownTrack wants a keyframe. Requests are coalesced: at most one PLI per interval.
    /// A subscriber that has nothing to show yet waits at most [`URGENT_PLI_GAP`] for the
    /// keyframe a recent PLI asked for, and not at all once that keyframe has begun (it
    /// missed the start): one urgent request outstanding at a time.
    pub fn request_keyframe(&mut self, now: Instant, urgent: bool) -> KeyframeRequest {
        if self.video_codec.is_none() || self.media_ssrc == 0 {
            return KeyframeRequest::Nothing;
        }
        let gap = if urgent {
            URGENT_PLI_GAP
        } else {
            self.pli_interval
        };
        let ready = match self.last_pli {
            Some(_) if urgent && self.answered_since_pli => now,
            Some(at) => at + gap,
            None => now,
        };
        // A deferred request whose time passed (its timer has not fired yet) goes now too.
        let overdue = self.pending_pli.is_some_and(|at| at <= now);
        if ready <= now || overdue {
            self.sent_pli(now);
            return KeyframeRequest::SendNow;
        }
        let at = self.pending_pli.map_or(ready, |p| p.min(ready));
        self.pending_pli = Some(at);
        KeyframeRequest::At(at)
    }

    fn sent_pli(&mut self, now: Instant) {
        self.last_pli = Some(now);
        self.pending_pli = None;
        self.answered_since_pli = false;
    }

    /// The deferred request's time came: true when a PLI goes now.
    pub fn keyframe_due(&mut self, now: Instant) -> bool {
        match self.pending_pli {
            Some(at) if at <= now => {
                self.sent_pli(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(payload: &'static [u8]) -> rtp::Packet {
        rtp::Packet {
            payload: bytes::Bytes::from_static(payload),
            ..Default::default()
        }
    }

    fn video() -> Receiver {
        Receiver::new(
            TrackMeta {
                publisher_id: "p".into(),
                track_id: "t".into(),
                kind: TrackKind::Video,
                codec: Codec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90_000,
                    ..Codec::default()
                },
                extensions: ExtensionIds::default(),
            },
            42,
            Duration::from_millis(500),
        )
    }

    #[test]
    fn the_first_request_goes_at_once_and_later_ones_are_coalesced() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = video();
        assert_eq!(r.request_keyframe(ms(0), false), KeyframeRequest::SendNow);
        // A storm within the interval: one PLI when it ends.
        for t in 1..50 {
            assert_eq!(
                r.request_keyframe(ms(t), false),
                KeyframeRequest::At(ms(500))
            );
        }
        assert!(!r.keyframe_due(ms(499)));
        assert!(r.keyframe_due(ms(500)));
        assert!(!r.keyframe_due(ms(501)), "only once");
        // A new subscriber does not wait out the interval, only the short gap.
        assert_eq!(
            r.request_keyframe(ms(560), true),
            KeyframeRequest::At(ms(600))
        );
        assert_eq!(r.request_keyframe(ms(650), true), KeyframeRequest::SendNow);
    }

    #[test]
    fn a_newcomer_after_the_requested_keyframe_began_asks_again_at_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = video();
        assert_eq!(r.request_keyframe(ms(0), true), KeyframeRequest::SendNow);
        // Its keyframe is not there yet: a second newcomer waits for it.
        assert_eq!(
            r.request_keyframe(ms(20), true),
            KeyframeRequest::At(ms(100))
        );
        // It begins at 35 ms; the deferred request is still due (it asked before)...
        let key = packet(&[0x10, 0x00, 0x9d, 1]);
        assert!(r.incoming(&key, ms(35)).unwrap().is_keyframe);
        // ...and a third newcomer, who missed its start, asks at once.
        assert_eq!(r.request_keyframe(ms(50), true), KeyframeRequest::SendNow);
        // Now one request is outstanding again.
        assert_eq!(
            r.request_keyframe(ms(60), true),
            KeyframeRequest::At(ms(150))
        );
        // A routine request still waits out the interval.
        assert!(r.incoming(&key, ms(80)).unwrap().is_keyframe);
        assert_eq!(
            r.request_keyframe(ms(90), false),
            KeyframeRequest::At(ms(150))
        );
    }

    /// Found by the `rtp_path` fuzz target: a request made after a deferred one fell due,
    /// before its timer fired, was told to wait for a time already past.
    #[test]
    fn an_overdue_deferred_request_goes_at_once() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut r = video();
        assert_eq!(r.request_keyframe(ms(0), false), KeyframeRequest::SendNow);
        assert_eq!(
            r.request_keyframe(ms(50), true),
            KeyframeRequest::At(ms(100))
        );
        // 120 ms: the urgent one is due; a routine request must not defer it to the past.
        assert_eq!(r.request_keyframe(ms(120), false), KeyframeRequest::SendNow);
        assert!(!r.keyframe_due(ms(130)), "nothing left pending");
    }

    #[test]
    fn audio_needs_no_keyframes_and_every_packet_starts() {
        let mut r = video();
        r.meta.kind = TrackKind::Audio;
        let mut audio = Receiver::new(r.meta.clone(), 1, Duration::from_millis(500));
        assert_eq!(
            audio.request_keyframe(Instant::now(), true),
            KeyframeRequest::Nothing
        );
        let p = packet(&[1, 2, 3]);
        assert!(audio.incoming(&p, Instant::now()).unwrap().is_keyframe);
    }

    #[test]
    fn keyframes_are_told_apart_and_padding_is_not_forwarded() {
        let mut r = video();
        let now = Instant::now();
        assert!(
            r.incoming(&packet(&[0x10, 0x00, 0x9d, 1]), now)
                .unwrap()
                .is_keyframe
        );
        assert!(
            !r.incoming(&packet(&[0x10, 0x01, 0x9d, 1]), now)
                .unwrap()
                .is_keyframe
        );
        assert!(r.incoming(&packet(&[]), now).is_none());
    }

    #[test]
    fn fault_injection_drops_every_nth() {
        let mut r = video();
        r.set_fault_drop_every(Some(10));
        let p = packet(&[0x00, 1]);
        let passed = (0..100)
            .filter(|_| r.incoming(&p, Instant::now()).is_some())
            .count();
        assert_eq!(passed, 90);
    }
}
