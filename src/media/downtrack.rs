//! DownTrack: one published track as one subscriber receives it.
//!
//! It has its own SSRC, sequence and timestamp space (see `forwarder`), the payload type and
//! extension ids its subscriber negotiated, and builds each outgoing packet from the shared
//! publisher packet: only the header is new, the payload is the publisher's buffer.
//!
//! Nothing is sent before the subscriber has accepted the m-line in an answer: until then it
//! cannot know the payload type, and a client may route an unknown SSRC to the wrong
//! receiver. What waited too long before it could be sent is dropped: a conference prefers a
//! dropped packet and a keyframe to seconds of delay.

use std::time::{Duration, Instant};

use crate::media::extensions::SubscriberExtensions;
use crate::media::forwarder::{Decision, Forwarder, Refused};
use crate::media::receiver::Incoming;

/// How long a packet may wait before it is sent to one subscriber.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub audio_age: Duration,
    pub video_age: Duration,
}

/// Why a DownTrack did not send a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The subscriber has not accepted the m-line yet, or its transport is not up.
    NotNegotiated,
    Refused(Refused),
}

/// What a DownTrack made of one packet.
#[derive(Debug)]
pub enum Outcome {
    Send(rtp::Packet),
    Drop {
        why: Dropped,
        /// The DownTrack cannot go on without a keyframe.
        wants_keyframe: bool,
    },
}

/// What the subscriber's answer settled for this m-line.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub payload_type: u8,
    pub extensions: SubscriberExtensions,
}

#[derive(Debug)]
pub struct DownTrack {
    pub ssrc: u32,
    forwarder: Forwarder,
    negotiated: Option<Negotiated>,
    transport_ready: bool,
    max_age: Duration,
}

impl DownTrack {
    /// `initial_seq` and `initial_ts` seed the outgoing spaces (random in production).
    pub fn new(
        ssrc: u32,
        video: bool,
        clock_rate: u32,
        max_age: Duration,
        initial_seq: u16,
        initial_ts: u32,
    ) -> Self {
        DownTrack {
            ssrc,
            forwarder: Forwarder::new(video, clock_rate, initial_seq, initial_ts),
            negotiated: None,
            transport_ready: false,
            max_age,
        }
    }

    /// The subscriber's answer accepted the m-line. True the first time: the DownTrack has
    /// nothing to show yet and wants a keyframe at once.
    pub fn set_negotiated(&mut self, negotiated: Negotiated) -> bool {
        let first = self.negotiated.is_none();
        self.negotiated = Some(negotiated);
        if first {
            self.forwarder.restart();
        }
        first && self.transport_ready
    }

    /// The subscriber's transport came up (again): what was sent before may never have
    /// arrived, so the DownTrack restarts on a keyframe. True when one is wanted now.
    pub fn transport_up(&mut self) -> bool {
        self.transport_ready = true;
        self.forwarder.restart();
        self.negotiated.is_some()
    }

    pub fn transport_down(&mut self) {
        self.transport_ready = false;
    }

    /// Forgets the current run: the next packet sent starts on a keyframe.
    pub fn resync(&mut self) {
        self.forwarder.restart();
    }

    pub fn is_sending(&self) -> bool {
        self.negotiated.is_some() && self.transport_ready && !self.forwarder.is_waiting()
    }

    pub fn forward(&mut self, incoming: &Incoming<'_>, now: Instant, ntp_now: u64) -> Outcome {
        let Some(negotiated) = self.negotiated.as_ref().filter(|_| self.transport_ready) else {
            return Outcome::Drop {
                why: Dropped::NotNegotiated,
                wants_keyframe: false,
            };
        };
        let source = &incoming.packet.header;
        let decision = self.forwarder.decide_queued(
            source.ssrc,
            source.sequence_number,
            source.timestamp,
            incoming.is_keyframe,
            incoming.arrived,
            now,
            self.max_age,
        );
        let rewritten = match decision {
            Decision::Forward(rewritten) => rewritten,
            Decision::Refuse(why) => {
                return Outcome::Drop {
                    why: Dropped::Refused(why),
                    wants_keyframe: matches!(why, Refused::WaitingForKeyframe | Refused::Expired),
                }
            }
        };
        let mut header = rtp::header::Header {
            version: 2,
            marker: source.marker,
            payload_type: negotiated.payload_type,
            sequence_number: rewritten.sequence_number,
            timestamp: rewritten.timestamp,
            ssrc: self.ssrc,
            ..Default::default()
        };
        negotiated
            .extensions
            .write(&mut header, &incoming.carried, ntp_now);
        Outcome::Send(rtp::Packet {
            header,
            // The publisher's buffer, shared by every subscriber.
            payload: incoming.packet.payload.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::extensions::{Carried, ExtensionIds, SDES_MID};

    fn packet(seq: u16, payload: &'static [u8]) -> rtp::Packet {
        let mut p = rtp::Packet::default();
        p.header.ssrc = 7;
        p.header.sequence_number = seq;
        p.header.timestamp = u32::from(seq) * 3000;
        p.header.marker = true;
        p.payload = bytes::Bytes::from_static(payload);
        p
    }

    fn incoming(p: &rtp::Packet, keyframe: bool, arrived: Instant) -> Incoming<'_> {
        Incoming {
            packet: p,
            is_keyframe: keyframe,
            carried: Carried::default(),
            arrived,
        }
    }

    fn negotiated() -> Negotiated {
        Negotiated {
            payload_type: 102,
            extensions: SubscriberExtensions::new(
                ExtensionIds::from_negotiated([(SDES_MID, 3)]),
                Some(3),
                "4",
            ),
        }
    }

    #[test]
    fn nothing_goes_before_the_answer_and_the_transport() {
        let now = Instant::now();
        let mut dt = DownTrack::new(99, true, 90_000, Duration::from_millis(200), 10, 0);
        let p = packet(1, b"\x10\x00\x9d");
        assert!(matches!(
            dt.forward(&incoming(&p, true, now), now, 0),
            Outcome::Drop {
                why: Dropped::NotNegotiated,
                ..
            }
        ));
        assert!(!dt.set_negotiated(negotiated()), "transport not up yet");
        assert!(dt.transport_up(), "now it wants a keyframe");
        let Outcome::Send(out) = dt.forward(&incoming(&p, true, now), now, 0) else {
            panic!("a keyframe starts it")
        };
        assert_eq!(out.header.ssrc, 99);
        assert_eq!(out.header.payload_type, 102);
        assert_eq!(out.header.sequence_number, 10);
        assert!(out.header.marker);
        assert_eq!(out.header.get_extension(3).unwrap().as_ref(), b"4");
        assert_eq!(
            out.payload.as_ptr(),
            p.payload.as_ptr(),
            "payload shared, not copied"
        );
        assert!(dt.is_sending());
    }

    #[test]
    fn a_delta_frame_waits_for_a_keyframe_and_asks_for_one() {
        let now = Instant::now();
        let mut dt = DownTrack::new(1, true, 90_000, Duration::from_millis(200), 0, 0);
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let p = packet(5, b"\x10\x01");
        assert!(matches!(
            dt.forward(&incoming(&p, false, now), now, 0),
            Outcome::Drop {
                why: Dropped::Refused(Refused::WaitingForKeyframe),
                wants_keyframe: true
            }
        ));
    }

    #[test]
    fn a_packet_that_waited_too_long_is_dropped_for_a_keyframe() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, true, 90_000, Duration::from_millis(200), 0, 0);
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let k = packet(1, b"\x10\x00");
        assert!(matches!(
            dt.forward(&incoming(&k, true, t0), t0, 0),
            Outcome::Send(_)
        ));
        let late = packet(2, b"\x10\x01");
        let now = t0 + Duration::from_millis(300);
        assert!(matches!(
            dt.forward(&incoming(&late, false, t0), now, 0),
            Outcome::Drop {
                why: Dropped::Refused(Refused::Expired),
                wants_keyframe: true
            }
        ));
        assert!(!dt.is_sending());
    }
}
