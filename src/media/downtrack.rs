//! DownTrack: one published track as one subscriber receives it.
//!
//! It has its own SSRC, sequence and timestamp space (see `forwarder`), the payload type and
//! extension ids its subscriber negotiated, and writes each outgoing packet from the shared
//! publisher packet straight into the send buffer it is given: its own header, marshalled in
//! place, then the publisher's payload. Nothing is allocated or reference-counted per packet.
//!
//! Nothing is sent before the subscriber has accepted the m-line in an answer: until then it
//! cannot know the payload type, and a client may route an unknown SSRC to the wrong
//! receiver. What waited too long before it could be sent is dropped: a conference prefers a
//! dropped packet and a keyframe to seconds of delay.
//!
//! Of a simulcast track it forwards one layer ([`LayerSelector`]), switching on a keyframe of
//! the new one; its SSRC, sequence numbers, timestamps and (VP8) picture ids run on unbroken.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::media::extensions::{Carried, SubscriberExtensions};
use crate::media::forwarder::{Decision, Forwarder, Refused, Rewritten};
use crate::media::history::{PacketHistory, Sent, SentLog};
use crate::media::layers::{Admit, LayerSelector};
use crate::media::receiver::Incoming;
use crate::media::vp8::{self, PictureIds};

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

/// A packet a DownTrack wrote into a buffer: a header of `header_len` bytes, then the
/// payload; the transport-wide sequence number, when negotiated, goes at `transport_cc_at`
/// (two bytes, written by the sender as the packet leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub header_len: usize,
    pub transport_cc_at: Option<usize>,
    pub video: bool,
    /// A retransmission: it takes from the subscriber's bandwidth like media does.
    pub retransmission: bool,
}

/// The padding in one probing packet: the most one packet can carry.
pub const PADDING_BYTES: usize = 255;

/// What a DownTrack made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The packet is in the buffer.
    Send(Shape),
    /// Not its layer (or it is paused): not a loss, nothing to count. It may want a keyframe
    /// of the layer it waits to switch to.
    Skip { wants_keyframe: bool },
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
    video: bool,
    clock_rate: u32,
    /// Video only: what each recent sequence number carried, to answer NACKs.
    sent_log: Option<SentLog>,
    report: SendCounters,
    layers: LayerSelector,
    /// VP8: picture ids and TL0PICIDX kept continuous across layer switches.
    pictures: Option<PictureIds>,
    /// The last packet forwarded ended a frame: padding may follow without splitting one.
    last_marker: bool,
}

/// What a sender report tells the subscriber (RFC 3550 §6.4.1): the counters wrap, as the
/// RTCP fields do.
#[derive(Debug, Default)]
struct SendCounters {
    packets: u32,
    payload_octets: u32,
    /// The RTP timestamp last sent, and when.
    last: Option<(u32, Instant)>,
}

impl SendCounters {
    fn count(&mut self, timestamp: u32, payload: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.payload_octets = self.payload_octets.wrapping_add(payload as u32);
        self.last = Some((timestamp, now));
    }
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
            video,
            clock_rate,
            sent_log: None,
            report: SendCounters::default(),
            layers: LayerSelector::new(Some(0)),
            pictures: None,
            last_marker: false,
        }
    }

    /// The track is VP8: picture ids are rewritten to run on across layer switches.
    pub fn with_vp8(mut self) -> Self {
        self.pictures = Some(PictureIds::default());
        self
    }

    /// Forwards simulcast layer `target` from now on (`None`: nothing, paused). True when that
    /// takes a keyframe of `target`, which the caller asks the publisher for.
    pub fn set_layer(&mut self, target: Option<u8>) -> bool {
        self.layers.set_target(target)
    }

    /// The layer forwarded now, and the one wanted.
    pub fn layers(&self) -> LayerSelector {
        self.layers
    }

    /// The layer whose keyframe the DownTrack needs to go on.
    pub fn keyframe_layer(&self) -> Option<u8> {
        self.layers.keyframe_layer()
    }

    /// Remembers the last `window` packets sent, so that NACKs for them can be answered.
    pub fn with_retransmissions(mut self, window: u16) -> Self {
        self.sent_log = Some(SentLog::new(window));
        self
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

    /// The track's layers changed (a publisher renegotiated): start again on a keyframe of
    /// the target.
    pub fn restart_layers(&mut self) {
        self.layers.restart();
    }

    pub fn is_video(&self) -> bool {
        self.video
    }

    /// Its subscriber accepted the m-line and its transport is up: what it forwards arrives.
    pub fn is_ready(&self) -> bool {
        self.negotiated.is_some() && self.transport_ready
    }

    pub fn is_sending(&self) -> bool {
        self.negotiated.is_some() && self.transport_ready && !self.forwarder.is_waiting()
    }

    /// Writes the packet this subscriber gets of `incoming` into `buf` (cleared first): the
    /// header, marshalled in place, then the publisher's payload.
    pub fn forward(
        &mut self,
        incoming: &Incoming<'_>,
        now: Instant,
        ntp_now: u64,
        buf: &mut BytesMut,
    ) -> Outcome {
        if self.negotiated.is_none() || !self.transport_ready {
            return Outcome::Drop {
                why: Dropped::NotNegotiated,
                wants_keyframe: false,
            };
        }
        match self.layers.admit(incoming.layer, incoming.is_keyframe) {
            Admit::Skip => {
                let waiting = self.layers.switch_pending() == Some(incoming.layer);
                if waiting && self.layers.current().is_none() {
                    // Nothing to show until that keyframe: the same wait as a restart's.
                    return Outcome::Drop {
                        why: Dropped::Refused(Refused::WaitingForKeyframe),
                        wants_keyframe: true,
                    };
                }
                return Outcome::Skip {
                    wants_keyframe: waiting,
                };
            }
            Admit::Switch => {
                if let Some(p) = self.pictures.as_mut() {
                    p.switch();
                }
            }
            Admit::Forward => {}
        }
        let ssrc = self.ssrc;
        let (rewritten, negotiated) = match self.decide(incoming, now) {
            Ok(decided) => decided,
            Err(refused) => {
                if matches!(refused, Outcome::Drop { .. }) && self.forwarder.is_waiting() {
                    // Whatever restarts the run restarts the layer's picture numbering too.
                    if let Some(p) = self.pictures.as_mut() {
                        p.switch();
                    }
                }
                return refused;
            }
        };
        let shape = write_header(
            buf,
            ssrc,
            negotiated,
            incoming.packet.header.marker,
            rewritten.sequence_number,
            rewritten.timestamp,
            &incoming.carried,
            ntp_now,
        );
        buf.extend_from_slice(&incoming.packet.payload);
        let header_len = shape.header_len;
        let picture = self.pictures.as_mut().and_then(|ids| {
            let payload = &mut buf[header_len..];
            let d = vp8::Descriptor::parse(payload)?;
            let (picture, tl0) = ids.map(&d);
            vp8::rewrite(payload, &d, picture, tl0);
            Some((picture, tl0))
        });
        if let Some(log) = self.sent_log.as_mut() {
            log.record(Sent {
                sequence_number: rewritten.sequence_number,
                timestamp: rewritten.timestamp,
                layer: incoming.layer,
                source_sequence_number: incoming.packet.header.sequence_number,
                source_timestamp: incoming.packet.header.timestamp,
                picture,
            });
        }
        self.last_marker = incoming.packet.header.marker;
        Outcome::Send(Shape {
            video: self.video,
            ..shape
        })
    }

    /// Whether `incoming` goes to this subscriber, and under which numbers; what is sent is
    /// counted for sender reports and noted for retransmissions.
    fn decide(
        &mut self,
        incoming: &Incoming<'_>,
        now: Instant,
    ) -> Result<(Rewritten, &Negotiated), Outcome> {
        let Some(negotiated) = self.negotiated.as_ref().filter(|_| self.transport_ready) else {
            return Err(Outcome::Drop {
                why: Dropped::NotNegotiated,
                wants_keyframe: false,
            });
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
                return Err(Outcome::Drop {
                    why: Dropped::Refused(why),
                    wants_keyframe: matches!(why, Refused::WaitingForKeyframe | Refused::Expired),
                })
            }
        };
        self.report
            .count(rewritten.timestamp, incoming.packet.payload.len(), now);
        Ok((rewritten, negotiated))
    }

    /// Writes into `buf` the packet this DownTrack sent as `sequence_number`, again, when the
    /// subscriber NACKed it and the publisher's packet is still in `history`; the header's
    /// length, or `None`. The caller counts it as sent with
    /// [`DownTrack::count_retransmitted`] if it goes.
    pub fn retransmit<'h>(
        &mut self,
        sequence_number: u16,
        history_of: impl Fn(u8) -> Option<&'h PacketHistory>,
        now: Instant,
        ntp_now: u64,
        buf: &mut BytesMut,
    ) -> Option<Shape> {
        let negotiated = self.negotiated.as_ref().filter(|_| self.transport_ready)?;
        let sent = self.sent_log.as_ref()?.get(sequence_number)?;
        let history = history_of(sent.layer)?;
        let kept = history.get(sent.source_sequence_number, sent.source_timestamp, now)?;
        let shape = write_header(
            buf,
            self.ssrc,
            negotiated,
            kept.packet.header.marker,
            sent.sequence_number,
            sent.timestamp,
            &kept.carried,
            ntp_now,
        );
        buf.extend_from_slice(&kept.packet.payload);
        if let Some((picture, tl0)) = sent.picture {
            let payload = &mut buf[shape.header_len..];
            if let Some(d) = vp8::Descriptor::parse(payload) {
                vp8::rewrite(payload, &d, picture, tl0);
            }
        }
        Some(Shape {
            video: self.video,
            retransmission: true,
            ..shape
        })
    }

    /// Writes into `buf` a padding-only packet (RFC 3550 §5.1: no payload, `PADDING_BYTES`
    /// of padding), numbered next in the stream, to probe the subscriber's downlink. Only
    /// between frames of a running video stream: a padding packet inside a frame's numbers
    /// would leave the frame incomplete.
    pub fn pad(&mut self, now: Instant, ntp_now: u64, buf: &mut BytesMut) -> Option<Shape> {
        if !self.video || !self.last_marker || !self.is_sending() {
            return None;
        }
        let negotiated = self.negotiated.as_ref()?;
        let rewritten = self.forwarder.pad(now)?;
        let shape = write_header(
            buf,
            self.ssrc,
            negotiated,
            false,
            rewritten.sequence_number,
            rewritten.timestamp,
            &Carried::default(),
            ntp_now,
        );
        buf[0] |= 0x20;
        buf.resize(shape.header_len + PADDING_BYTES - 1, 0);
        buf.extend_from_slice(&[PADDING_BYTES as u8]);
        Some(Shape {
            video: true,
            ..shape
        })
    }

    /// A retransmission (`packet`, its header `header_len` bytes) went out: sender reports
    /// count it as a packet sent.
    pub fn count_retransmitted(&mut self, packet: &[u8], header_len: usize, now: Instant) {
        let Some(timestamp) = packet.get(4..8) else {
            return;
        };
        let timestamp =
            u32::from_be_bytes([timestamp[0], timestamp[1], timestamp[2], timestamp[3]]);
        self.report
            .count(timestamp, packet.len().saturating_sub(header_len), now);
    }

    /// The sender report for this stream at `now`, once it has sent anything: the RTP time
    /// is extrapolated from the last packet sent, so audio and video can be synchronized.
    pub fn sender_report(
        &self,
        now: Instant,
        ntp_now: u64,
    ) -> Option<rtc::rtcp::sender_report::SenderReport> {
        let (timestamp, at) = self.report.last?;
        let elapsed = now.saturating_duration_since(at);
        let ticks = (elapsed.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000) as u32;
        Some(rtc::rtcp::sender_report::SenderReport {
            ssrc: self.ssrc,
            ntp_time: ntp_now,
            rtp_time: timestamp.wrapping_add(ticks),
            packet_count: self.report.packets,
            octet_count: self.report.payload_octets,
            ..Default::default()
        })
    }
}

/// Marshals one outgoing packet's header into `buf` (cleared first): the subscriber's SSRC,
/// payload type, numbering and extensions, to go before the publisher's payload. Its length,
/// and where the transport-wide sequence number goes (`video` is left for the caller).
#[allow(clippy::too_many_arguments)]
fn write_header(
    buf: &mut BytesMut,
    ssrc: u32,
    negotiated: &Negotiated,
    marker: bool,
    sequence_number: u16,
    timestamp: u32,
    carried: &Carried,
    ntp_now: u64,
) -> Shape {
    buf.clear();
    buf.extend_from_slice(&[
        0x80,
        (u8::from(marker) << 7) | (negotiated.payload_type & 0x7f),
    ]);
    buf.extend_from_slice(&sequence_number.to_be_bytes());
    buf.extend_from_slice(&timestamp.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    let written = negotiated.extensions.marshal(buf, carried, ntp_now);
    if written.block {
        buf[0] |= 0x10;
    }
    Shape {
        header_len: buf.len(),
        transport_cc_at: written.transport_cc_at,
        video: false,
        retransmission: false,
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
            layer: 0,
            is_keyframe: keyframe,
            carried: Carried::default(),
            arrived,
        }
    }

    /// Forwards `p` and parses what was written, as a subscriber would.
    fn forward(
        dt: &mut DownTrack,
        inc: &Incoming<'_>,
        now: Instant,
    ) -> Result<rtp::Packet, Outcome> {
        let mut buf = BytesMut::new();
        match dt.forward(inc, now, 0, &mut buf) {
            Outcome::Send(Shape { header_len, .. }) => {
                let mut wire = &buf[..];
                let packet = <rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut wire)
                    .expect("a forwarded packet parses");
                assert_eq!(buf.len() - header_len, packet.payload.len());
                Ok(packet)
            }
            refused => Err(refused),
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

    fn retransmit(
        dt: &mut DownTrack,
        seq: u16,
        history: &PacketHistory,
        now: Instant,
    ) -> Option<rtp::Packet> {
        let mut buf = BytesMut::new();
        dt.retransmit(seq, |_| Some(history), now, 0, &mut buf)?;
        let mut wire = &buf[..];
        Some(
            <rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut wire)
                .expect("a retransmission parses"),
        )
    }

    #[test]
    fn nothing_goes_before_the_answer_and_the_transport() {
        let now = Instant::now();
        let mut dt = DownTrack::new(99, true, 90_000, Duration::from_millis(200), 10, 0);
        let p = packet(1, b"\x10\x00\x9d");
        assert!(matches!(
            forward(&mut dt, &incoming(&p, true, now), now),
            Err(Outcome::Drop {
                why: Dropped::NotNegotiated,
                ..
            })
        ));
        assert!(!dt.set_negotiated(negotiated()), "transport not up yet");
        assert!(dt.transport_up(), "now it wants a keyframe");
        let out = forward(&mut dt, &incoming(&p, true, now), now)
            .expect("a keyframe starts it")
            .header;
        assert_eq!(out.ssrc, 99);
        assert_eq!(out.payload_type, 102);
        assert_eq!(out.sequence_number, 10);
        assert!(out.marker);
        assert_eq!(out.get_extension(3).unwrap().as_ref(), b"4");
        assert!(dt.is_sending());
    }

    #[test]
    fn a_delta_frame_waits_for_a_keyframe_and_asks_for_one() {
        let now = Instant::now();
        let mut dt = DownTrack::new(1, true, 90_000, Duration::from_millis(200), 0, 0);
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let p = packet(5, b"\x10\x01");
        assert_eq!(
            forward(&mut dt, &incoming(&p, false, now), now).err(),
            Some(Outcome::Drop {
                why: Dropped::Refused(Refused::WaitingForKeyframe),
                wants_keyframe: true
            })
        );
    }

    #[test]
    fn a_packet_that_waited_too_long_is_dropped_for_a_keyframe() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(1, true, 90_000, Duration::from_millis(200), 0, 0);
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let k = packet(1, b"\x10\x00");
        assert!(forward(&mut dt, &incoming(&k, true, t0), t0).is_ok());
        let late = packet(2, b"\x10\x01");
        let now = t0 + Duration::from_millis(300);
        assert_eq!(
            forward(&mut dt, &incoming(&late, false, t0), now).err(),
            Some(Outcome::Drop {
                why: Dropped::Refused(Refused::Expired),
                wants_keyframe: true
            })
        );
        assert!(!dt.is_sending());
    }

    #[test]
    fn a_nacked_packet_is_rebuilt_from_the_shared_history_with_its_own_numbering() {
        let t0 = Instant::now();
        let mut history = PacketHistory::new(64, Duration::from_secs(1));
        let mut dt = DownTrack::new(99, true, 90_000, Duration::from_millis(200), 65_530, 7)
            .with_retransmissions(64);
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let mut sent = Vec::new();
        for seq in 1000..1012u16 {
            let p = packet(
                seq,
                if seq == 1000 {
                    b"\x10\x00"
                } else {
                    b"\x10\x01"
                },
            );
            let inc = incoming(&p, seq == 1000, t0);
            history.insert(&p, &inc.carried, t0);
            sent.push(forward(&mut dt, &inc, t0).expect("forwarded"));
        }
        // Across the DownTrack's wrap: the 8th packet went out as sequence 65,536 + 1.
        let lost = &sent[7];
        assert_eq!(lost.header.sequence_number, 1);
        let again = retransmit(&mut dt, 1, &history, t0).expect("still kept");
        assert_eq!(again.header.sequence_number, lost.header.sequence_number);
        assert_eq!(again.header.timestamp, lost.header.timestamp);
        assert_eq!(again.header.ssrc, 99);
        assert_eq!(again.header.payload_type, 102);
        assert_eq!(again.header.get_extension(3).unwrap().as_ref(), b"4");
        assert_eq!(again.payload, lost.payload);
        assert!(
            retransmit(&mut dt, 2, &history, t0).is_some(),
            "the next one too"
        );
        assert!(
            retransmit(&mut dt, 12, &history, t0).is_none(),
            "never sent"
        );
        let late = t0 + Duration::from_secs(2);
        assert!(
            retransmit(&mut dt, 1, &history, late).is_none(),
            "too old to help"
        );
        // Audio is not NACKed: no log, nothing to answer from.
        let mut audio = DownTrack::new(5, false, 48_000, Duration::from_millis(100), 0, 0);
        audio.set_negotiated(negotiated());
        audio.transport_up();
        assert!(retransmit(&mut audio, 0, &history, t0).is_none());
    }

    #[test]
    fn a_sender_report_counts_what_was_sent_and_extrapolates_the_rtp_clock() {
        let t0 = Instant::now();
        let mut dt = DownTrack::new(42, true, 90_000, Duration::from_millis(200), 0, 1_000);
        assert!(dt.sender_report(t0, 0).is_none(), "nothing sent yet");
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let k = packet(1, b"\x10\x00\x00");
        assert!(forward(&mut dt, &incoming(&k, true, t0), t0).is_ok());
        let d = packet(2, b"\x10\x01");
        let last = forward(&mut dt, &incoming(&d, false, t0), t0)
            .expect("forwarded")
            .header;
        let sr = dt
            .sender_report(t0 + Duration::from_millis(500), 0xAB)
            .expect("a report");
        assert_eq!(sr.ssrc, 42);
        assert_eq!(sr.ntp_time, 0xAB);
        assert_eq!(sr.packet_count, 2);
        assert_eq!(sr.octet_count, 5);
        // Half a second of the 90 kHz clock passed since the last packet went out.
        assert_eq!(sr.rtp_time, last.timestamp.wrapping_add(45_000));
    }

    /// Three layers, each with its own SSRC, numbering, clock and VP8 picture ids, switched
    /// between 1,000 times (each switch on a keyframe of the new layer): the subscriber sees
    /// one stream whose sequence numbers, timestamps and picture ids run on without a jump.
    #[test]
    fn a_thousand_layer_switches_keep_one_continuous_stream() {
        let t0 = Instant::now();
        let mut dt =
            DownTrack::new(42, true, 90_000, Duration::from_millis(200), 500, 77).with_vp8();
        dt.set_negotiated(negotiated());
        dt.transport_up();
        let mut seq = [1_000u16, 30_000, 65_500];
        let mut ts = [5u32, 2_000_000_000, 4_294_000_000];
        let mut picture = [10u16, 16_000, 32_760];
        let mut tl0 = [1u8, 100, 250];
        let mut target = 0u8;
        dt.set_layer(Some(target));
        let mut switches = 0;
        let mut last: Option<(u16, u32, u16)> = None;
        let mut frames_out = 0;
        for frame in 0..6_000u32 {
            let now = t0 + Duration::from_millis(u64::from(frame) * 33);
            if frame % 5 == 0 && frame > 0 {
                target = (target + 1 + (frame / 5 % 2) as u8) % 3;
                dt.set_layer(Some(target));
            }
            let pending = dt.layers().switch_pending();
            for layer in 0..3u8 {
                let l = usize::from(layer);
                // The layer being switched to answers with a keyframe.
                let keyframe = frame == 0 || pending == Some(layer);
                let mut frame_out = None;
                for part in 0..3u8 {
                    let mut payload = vec![
                        0x80 | if part == 0 { 0x10 } else { 0 },
                        0xc0,
                        0x80 | (picture[l] >> 8) as u8,
                        picture[l] as u8,
                        tl0[l],
                        u8::from(!keyframe),
                    ];
                    payload.extend_from_slice(&[layer; 20]);
                    let mut p = rtp::Packet::default();
                    p.header.ssrc = 100 + u32::from(layer);
                    p.header.sequence_number = seq[l];
                    p.header.timestamp = ts[l];
                    p.header.marker = part == 2;
                    p.payload = bytes::Bytes::from(payload);
                    seq[l] = seq[l].wrapping_add(1);
                    let inc = Incoming {
                        packet: &p,
                        layer,
                        is_keyframe: keyframe && part == 0,
                        carried: Carried::default(),
                        arrived: now,
                    };
                    let Ok(out) = forward(&mut dt, &inc, now) else {
                        continue;
                    };
                    assert_eq!(out.payload[6..], [layer; 20], "frame {frame}");
                    assert_eq!(out.header.ssrc, 42);
                    let d = crate::media::vp8::Descriptor::parse(&out.payload).unwrap();
                    let pid = d.picture_id.unwrap().0;
                    let (s, t) = (out.header.sequence_number, out.header.timestamp);
                    if let Some((ls, lt, lp)) = last {
                        assert_eq!(s, ls.wrapping_add(1), "sequence at frame {frame}");
                        let step = t.wrapping_sub(lt);
                        if part == 0 {
                            assert!(
                                (1..=6_000).contains(&step),
                                "timestamp step {step} at frame {frame}"
                            );
                            assert_eq!(
                                pid,
                                lp.wrapping_add(1) & 0x7fff,
                                "picture id at frame {frame}"
                            );
                        } else {
                            assert_eq!((step, pid), (0, lp), "within frame {frame}");
                        }
                    }
                    last = Some((s, t, pid));
                    frame_out = Some(layer);
                }
                if let Some(layer) = frame_out {
                    frames_out += 1;
                    if pending == Some(layer) {
                        switches += 1;
                    }
                }
                ts[l] = ts[l].wrapping_add(3_000);
                picture[l] = picture[l].wrapping_add(1) & 0x7fff;
                tl0[l] = tl0[l].wrapping_add(1);
            }
        }
        assert!(switches >= 1_000, "{switches} switches");
        // A frame of one layer each time; at a switch up, the old layer's frame of that
        // moment too, before the new one's keyframe.
        assert!(
            (6_000..=6_000 + switches).contains(&frames_out),
            "{frames_out} frames out, {switches} switches"
        );
    }
}
