use super::*;
use crate::engine::router::SubscriberKeyframe;
use crate::media::downtrack::Negotiated;
use crate::media::extensions::{ExtensionIds, SubscriberExtensions, SDES_MID};
use crate::media::kind::TrackKind;
use crate::media::receiver::Codec;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::NackPair;
use rtc::shared::marshal::Unmarshal;

/// What a test's `MediaOut` was given: (peer, the packet as a subscriber parses it).
#[derive(Default)]
struct Recorded {
    sent: Vec<(usize, rtp::Packet)>,
    buffers_out: usize,
    refuse_peer: Option<usize>,
}

impl MediaOut for Recorded {
    fn buffer(&mut self) -> BytesMut {
        self.buffers_out += 1;
        BytesMut::with_capacity(1500)
    }
    fn give_back(&mut self, _buf: BytesMut) {
        self.buffers_out -= 1;
    }
    fn send(&mut self, peer: usize, packet: BytesMut, shape: Shape, _: Instant) -> bool {
        self.buffers_out -= 1;
        if self.refuse_peer == Some(peer) {
            return false;
        }
        let parsed = rtp::Packet::unmarshal(&mut &packet[..]).expect("an RTP packet");
        let padding = if parsed.header.padding {
            usize::from(packet[packet.len() - 1])
        } else {
            0
        };
        assert_eq!(
            packet.len() - shape.header_len,
            parsed.payload.len() + padding
        );
        self.sent.push((peer, parsed));
        true
    }
}

fn router() -> Router {
    Router::new(
        RouterConfig {
            pli_interval: Duration::from_millis(500),
            nack_window: 64,
            nack_max_age: Duration::from_secs(1),
            max_retransmits_per_sec: 2,
            queue: QueueLimits {
                audio_age: Duration::from_millis(100),
                video_age: Duration::from_millis(200),
            },
            fault_drop_every: None,
        },
        Arc::new(Metrics::default()),
    )
}

fn video_meta(publisher: &str) -> TrackMeta {
    TrackMeta {
        publisher_id: publisher.into(),
        track_id: format!("{publisher}-video"),
        kind: TrackKind::Video,
        codec: Codec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
        },
        extensions: ExtensionIds::default(),
    }
}

/// A subscriber DownTrack that has its answer and its transport.
fn subscribe(
    r: &mut Router,
    rk: usize,
    subscriber: usize,
    peer: usize,
    ssrc: u32,
    mid: &str,
) -> usize {
    let dk = r.add_downtrack(rk, subscriber, peer, ssrc, true).unwrap();
    r.downtrack_mut(dk)
        .unwrap()
        .downtrack
        .set_negotiated(Negotiated {
            payload_type: 96 + subscriber as u8,
            extensions: SubscriberExtensions::new(
                ExtensionIds::from_negotiated([(SDES_MID, 1)]),
                Some(1),
                mid,
            ),
        });
    dk
}

fn vp8(seq: u16, keyframe: bool) -> rtp::Packet {
    let mut p = rtp::Packet::default();
    p.header.ssrc = 1234;
    p.header.sequence_number = seq;
    p.header.timestamp = u32::from(seq) * 3000;
    // VP8 payload descriptor, then a frame header whose lowest bit is 0 on a keyframe.
    p.payload = bytes::Bytes::from(vec![0x10, u8::from(!keyframe), 0x9d, 0x01, 0x2a, seq as u8]);
    p
}

#[test]
fn one_packet_reaches_every_subscriber_under_its_own_numbers() {
    let now = Instant::now();
    let mut r = router();
    let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
    let bob = subscribe(&mut r, rk, 1, 10, 0xb0b, "3");
    let carol = subscribe(&mut r, rk, 2, 20, 0xca401, "7");
    let mut out = Recorded::default();
    assert_eq!(r.fan_out(rk, 0, &vp8(100, true), now, now, &mut out), 0);
    assert_eq!(r.fan_out(rk, 0, &vp8(101, false), now, now, &mut out), 0);
    assert_eq!(out.buffers_out, 0, "every buffer sent or given back");
    fn to(out: &Recorded, peer: usize) -> Vec<&rtp::Packet> {
        out.sent
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, p)| p)
            .collect()
    }
    for (peer, ssrc, pt, mid) in [(10, 0xb0b, 97, b"3"), (20, 0xca401, 98, b"7")] {
        let got = to(&out, peer);
        assert_eq!(got.len(), 2);
        assert!(got
            .iter()
            .all(|p| p.header.ssrc == ssrc && p.header.payload_type == pt));
        assert_eq!(got[0].header.get_extension(1).unwrap().as_ref(), mid);
        assert_eq!(
            got[1].header.sequence_number,
            got[0].header.sequence_number.wrapping_add(1)
        );
        assert_eq!(got[0].payload, vp8(100, true).payload);
    }
    assert_eq!(r.metrics.snapshot().packets_out, 4);
    r.remove_downtrack(bob);
    r.fan_out(rk, 0, &vp8(102, false), now, now, &mut out);
    assert_eq!(to(&out, 10).len(), 2, "bob no longer receives");
    assert_eq!(to(&out, 20).len(), 3);
    assert!(r.downtrack(carol).is_some());
}

#[test]
fn a_subscriber_without_a_keyframe_waits_and_asks_for_one() {
    let now = Instant::now();
    let mut r = router();
    let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
    subscribe(&mut r, rk, 1, 10, 5, "0");
    let mut out = Recorded::default();
    assert_eq!(
        r.fan_out(rk, 0, &vp8(7, false), now, now, &mut out),
        1,
        "wants a keyframe of layer 0"
    );
    assert!(out.sent.is_empty());
    assert_eq!(out.buffers_out, 0);
    assert_eq!(r.metrics.snapshot().dropped.waiting_for_keyframe, 1);
    assert_eq!(
        r.request_keyframe(rk, 0, now, true),
        KeyframeRequest::SendNow
    );
}

#[test]
fn a_nack_is_answered_from_the_shared_history_within_the_budget() {
    let now = Instant::now();
    let mut r = router();
    let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
    let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
    let mut out = Recorded::default();
    for seq in 0..10 {
        r.fan_out(rk, 0, &vp8(seq, seq == 0), now, now, &mut out);
    }
    let first = out.sent[0].1.header.sequence_number;
    let nack = TransportLayerNack {
        sender_ssrc: 1,
        media_ssrc: 5,
        nacks: vec![NackPair {
            packet_id: first.wrapping_add(2),
            // The next four too: six wanted, a budget of four (twice the rate).
            lost_packets: 0b1111,
        }],
    };
    out.sent.clear();
    r.retransmit(dk, &nack, now, &mut out);
    assert_eq!(out.sent.len(), 4);
    assert_eq!(out.sent[0].1.header.sequence_number, first.wrapping_add(2));
    assert_eq!(out.sent[0].1.payload, vp8(2, false).payload);
    let m = r.metrics.snapshot();
    assert_eq!((m.retransmissions, m.retransmissions_limited), (4, 1));
    assert_eq!(out.buffers_out, 0);
}

#[test]
fn removing_a_receiver_takes_its_downtracks_with_it() {
    let now = Instant::now();
    let mut r = router();
    let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
    subscribe(&mut r, rk, 1, 10, 5, "0");
    subscribe(&mut r, rk, 2, 20, 6, "0");
    let gone = r.remove_receiver(rk);
    assert_eq!(gone.len(), 2);
    assert!(r.track(&("alice".into(), "alice-video".into())).is_none());
    let m = r.metrics.snapshot();
    assert_eq!((m.receivers, m.downtracks), (0, 0));
    let mut out = Recorded::default();
    assert_eq!(r.fan_out(rk, 0, &vp8(1, true), now, now, &mut out), 0);
    assert!(out.sent.is_empty());
}

/// A three-layer track (150 k, 450 k, 1.3 Mbit/s) and one subscriber of it.
fn simulcast_subscriber(now: Instant) -> (Router, usize, usize) {
    let mut r = router();
    let mut rk = 0;
    for (layer, rate) in [150_000.0, 450_000.0, 1_300_000.0].into_iter().enumerate() {
        rk = r
            .add_receiver(
                0,
                video_meta("alice"),
                layer as u8,
                1000 + layer as u32,
                now,
            )
            .0;
        r.receiver_mut(rk)
            .unwrap()
            .layer_mut(layer as u8)
            .unwrap()
            .bitrate = rate;
    }
    let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
    (r, rk, dk)
}

fn ceiling(r: &Router, dk: usize) -> Option<Option<u8>> {
    r.downtrack(dk).unwrap().ceiling
}

#[test]
fn a_subscriber_gets_what_its_estimate_allows_down_at_once_up_after_a_hold() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, rk, dk) = simulcast_subscriber(t0);
    let a = r.allocate_within(&[dk], 700_000.0, 700_000.0, false, at(0));
    assert_eq!(ceiling(&r, dk), Some(Some(1)));
    assert_eq!(a.keyframes, vec![(rk, 1)], "the middle layer's keyframe");
    assert!(a.wanted > 1_000_000.0, "it would take the full layer");
    // The estimate falls under the lowest layer: the lowest at once, paused (and said so)
    // only if that lasts.
    let a = r.allocate_within(&[dk], 100_000.0, 100_000.0, false, at(250));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    assert!(a.paused_changed.is_empty());
    let a = r.allocate_within(&[dk], 100_000.0, 100_000.0, false, at(2_300));
    assert_eq!(ceiling(&r, dk), Some(None));
    assert_eq!(a.paused_changed, vec![(dk, true)]);
    // Room again: resumed on the lowest layer once that has held for three seconds.
    let a = r.allocate_within(&[dk], 300_000.0, 300_000.0, false, at(2_500));
    assert_eq!(ceiling(&r, dk), Some(None));
    assert!(a.paused_changed.is_empty());
    let a = r.allocate_within(&[dk], 300_000.0, 300_000.0, false, at(5_500));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    assert_eq!(a.paused_changed, vec![(dk, false)]);
    // Plenty: held for three seconds first.
    r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, false, at(5_750));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, false, at(8_000));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    let a = r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, false, at(8_800));
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
    assert_eq!(a.keyframes, vec![(rk, 2)]);
    // A little short of what it has: it keeps it.
    r.allocate_within(&[dk], 1_300_000.0, 1_300_000.0, false, at(9_000));
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
    // A view smaller than the top layer caps it whatever the estimate.
    r.downtrack_mut(dk).unwrap().view = View {
        width: 0,
        height: 0,
        enabled: false,
    };
    let a = r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, false, at(9_250));
    assert_eq!(a.wanted, 0.0, "a hidden track wants nothing");
}

#[test]
fn a_budget_a_probe_has_just_proven_moves_up_without_the_hold() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, rk, dk) = simulcast_subscriber(t0);
    r.allocate_within(&[dk], 200_000.0, 200_000.0, false, at(0));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    let a = r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, true, at(250));
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
    assert_eq!(a.keyframes, vec![(rk, 2)]);
}

#[test]
fn padding_continues_the_numbering_between_frames() {
    let now = Instant::now();
    let mut r = router();
    let (rk, _) = r.add_receiver(0, video_meta("alice"), 0, 1234, now);
    let dk = subscribe(&mut r, rk, 1, 10, 5, "0");
    let mut out = Recorded::default();
    // No stream yet: nothing to pad.
    assert_eq!(r.pad(&[dk], 1000, now, &mut out), 0);
    for seq in 0..20 {
        let mut p = vp8(seq, seq == 0);
        p.header.marker = true;
        r.fan_out(rk, 0, &p, now, now, &mut out);
    }
    let last = out.sent.last().unwrap().1.header.clone();
    let sent = r.pad(&[dk], 1000, now, &mut out);
    assert!(sent >= 1000, "{sent}");
    let padding: Vec<_> = out.sent[20..].iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(padding.len(), 4, "255 bytes of padding each");
    for (i, p) in padding.iter().enumerate() {
        assert!(p.header.padding && p.payload.is_empty());
        assert_eq!(
            p.header.sequence_number,
            last.sequence_number.wrapping_add(1 + i as u16)
        );
        assert_eq!(p.header.timestamp, last.timestamp);
        assert_eq!(p.header.ssrc, 5);
    }
    let mut next = vp8(20, false);
    next.header.marker = true;
    r.fan_out(rk, 0, &next, now, now, &mut out);
    assert_eq!(
        out.sent.last().unwrap().1.header.sequence_number,
        last.sequence_number.wrapping_add(5)
    );
    assert_eq!(r.metrics.snapshot().padding_packets, 4);
    assert_eq!(out.buffers_out, 0);
}

#[test]
fn the_publisher_is_asked_for_the_layers_someone_shows_and_stops_the_rest_after_a_while() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, rk, dk) = simulcast_subscriber(t0);
    for (layer, rid) in ["q", "h", "f"].into_iter().enumerate() {
        r.set_rid(rk, layer as u8, Some(rid.into()));
    }
    // Sizes from keyframes: 320×180, 640×360, 1280×720.
    for (layer, width) in [320u32, 640, 1280].into_iter().enumerate() {
        r.receiver_mut(rk)
            .unwrap()
            .layer_mut(layer as u8)
            .unwrap()
            .info
            .size = Some((width, width * 9 / 16));
    }
    let rids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // Unknown view: the top, so everything.
    assert_eq!(r.layers_to_ask(at(0)), vec![(rk, rids(&["q", "h", "f"]))]);
    assert!(r.layers_to_ask(at(100)).is_empty(), "told once");
    // A small tile: fewer layers, but only once that has lasted.
    r.downtrack_mut(dk).unwrap().view = View {
        enabled: true,
        width: 300,
        height: 170,
    };
    assert!(r.layers_to_ask(at(200)).is_empty());
    assert!(r.layers_to_ask(at(2_000)).is_empty());
    assert_eq!(r.layers_to_ask(at(3_300)), vec![(rk, rids(&["q"]))]);
    // Larger again: more at once.
    r.downtrack_mut(dk).unwrap().view = View {
        enabled: true,
        width: 600,
        height: 340,
    };
    assert_eq!(r.layers_to_ask(at(3_400)), vec![(rk, rids(&["q", "h"]))]);
    // Hidden: the lowest stays on.
    r.downtrack_mut(dk).unwrap().view = View {
        enabled: false,
        width: 0,
        height: 0,
    };
    assert!(r.layers_to_ask(at(3_500)).is_empty());
    assert_eq!(r.layers_to_ask(at(6_600)), vec![(rk, rids(&["q"]))]);
}

#[test]
fn an_audio_track_measures_its_speech_from_the_level_extension() {
    let now = Instant::now();
    let mut r = router();
    let mut meta = video_meta("alice");
    meta.kind = TrackKind::Audio;
    meta.track_id = "alice-audio".into();
    meta.codec = Codec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        sdp_fmtp_line: String::new(),
    };
    meta.extensions = ExtensionIds::from_negotiated([(crate::media::extensions::AUDIO_LEVEL, 1)]);
    let (rk, _) = r.add_receiver(0, meta, 0, 77, now);
    let mut out = Recorded::default();
    for seq in 0..10u16 {
        let mut p = rtp::Packet::default();
        p.header.ssrc = 77;
        p.header.sequence_number = seq;
        p.header.extension = true;
        p.header.extension_profile = 0xbede;
        p.header
            .set_extension(1, bytes::Bytes::from_static(&[0x80 | 20]))
            .unwrap();
        p.payload = bytes::Bytes::from_static(&[1, 2, 3]);
        r.fan_out(rk, 0, &p, now, now, &mut out);
    }
    let level = r.receiver_mut(rk).unwrap().speech.take(now);
    assert!(level.is_some_and(|l| l > 0.8), "{level:?}");
}

#[test]
fn a_subscriber_asking_again_and_again_is_moved_down_not_passed_on() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, rk, dk) = simulcast_subscriber(t0);
    let mut out = Recorded::default();
    r.fan_out(rk, 2, &vp8(1, true), t0, t0, &mut out);
    assert_eq!(
        r.downtrack(dk).unwrap().downtrack.layers().current(),
        Some(2)
    );
    // The first request is passed on; one repeated soon on an open link is not.
    assert_eq!(
        r.subscriber_wants_keyframe(dk, false, at(0)),
        SubscriberKeyframe::Ask(2)
    );
    assert_eq!(
        r.subscriber_wants_keyframe(dk, false, at(300)),
        SubscriberKeyframe::Ignore
    );
    // On a constrained link, a repeat moves it a layer down.
    assert_eq!(
        r.subscriber_wants_keyframe(dk, true, at(1_100)),
        SubscriberKeyframe::Ask(2)
    );
    assert_eq!(
        r.subscriber_wants_keyframe(dk, true, at(1_400)),
        SubscriberKeyframe::StepDown(1)
    );
    assert_eq!(ceiling(&r, dk), Some(Some(1)));
    r.fan_out(rk, 1, &vp8(2, true), at(1_500), at(1_500), &mut out);
    assert_eq!(
        r.downtrack(dk).unwrap().downtrack.layers().current(),
        Some(1)
    );
    // On the lowest layer there is nowhere further down: held.
    r.fan_out(rk, 0, &vp8(3, true), at(1_600), at(1_600), &mut out);
    assert_eq!(
        r.subscriber_wants_keyframe(dk, true, at(1_700)),
        SubscriberKeyframe::StepDown(0)
    );
    r.fan_out(rk, 0, &vp8(4, true), at(1_800), at(1_800), &mut out);
    assert_eq!(
        r.subscriber_wants_keyframe(dk, true, at(1_900)),
        SubscriberKeyframe::Ignore
    );
}

#[test]
fn an_estimate_the_path_has_not_shown_does_not_take_a_subscriber_up() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, _rk, dk) = simulcast_subscriber(t0);
    r.allocate_within(&[dk], 200_000.0, 200_000.0, false, at(0));
    assert_eq!(ceiling(&r, dk), Some(Some(0)));
    // The estimate says 5 Mbit/s, but only 500 kbit/s has been seen to arrive: the middle
    // layer, not the top, however long it holds.
    for ms in (250..10_000).step_by(250) {
        r.allocate_within(&[dk], 5_000_000.0, 500_000.0, false, at(ms));
    }
    assert_eq!(ceiling(&r, dk), Some(Some(1)));
    // Shown to carry it (a probe delivered it): up.
    r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, true, at(10_000));
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
}

#[test]
fn a_track_whose_media_stopped_is_not_paused_for_bandwidth() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let (mut r, rk, dk) = simulcast_subscriber(t0);
    r.allocate_within(&[dk], 5_000_000.0, 5_000_000.0, false, at(0));
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
    // Every layer stops arriving (the publisher's network froze).
    assert_eq!(r.stalled_layers(at(5_000)), vec![rk]);
    for ms in (5_000..10_000).step_by(250) {
        let a = r.allocate_within(&[dk], 300_000.0, 300_000.0, false, at(ms));
        assert!(a.paused_changed.is_empty(), "told paused at {ms} ms");
    }
    assert_eq!(ceiling(&r, dk), Some(Some(2)));
}
