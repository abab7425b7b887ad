//! The data plane's per-packet work: one publisher packet through a Receiver to N DownTracks,
//! with each DownTrack's keyframe gate and sequence/timestamp rewrite, for N = 1, 10, 100.
//!
//! Everything but the socket write is here: the fan-out (lock-free sink list, one shared
//! `Arc` per packet, a bounded-queue `try_send` per subscriber) and each writer's dequeue,
//! forwarding decision and header rewrite.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use switchboard::media::forwarder::{Decision, Forwarder};
use switchboard::media::receiver::{DownTrackSink, Receiver, TrackMeta};
use switchboard::signal::protocol::TrackKind;
use switchboard::Metrics;

fn packet(seq: u16, keyframe: bool) -> rtp::Packet {
    let mut payload = vec![0u8; 1100];
    payload[0] = 0x10;
    payload[1] = if keyframe { 0x00 } else { 0x01 };
    rtp::Packet {
        header: rtp::header::Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: u32::from(seq) * 3000,
            ssrc: 0x1234_5678,
            ..Default::default()
        },
        payload: bytes::Bytes::from(payload),
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("receiver_to_downtracks");
    for n in [1usize, 10, 100] {
        let metrics = Arc::new(Metrics::default());
        let receiver = Receiver::new(
            TrackMeta {
                publisher_id: "p1".into(),
                track_id: "t1".into(),
                kind: TrackKind::Video,
                codec: RTCRtpCodec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90_000,
                    ..Default::default()
                },
                extensions: Default::default(),
            },
            metrics,
        );
        let mut downtracks = Vec::new();
        for i in 0..n {
            let (sink, rx) = DownTrackSink::new(format!("s{i}"), 512);
            receiver.add_sink(sink);
            downtracks.push((rx, Forwarder::new(true, 90_000, i as u16, i as u32)));
        }
        // Start every DownTrack on a keyframe, as in a running call.
        receiver.fan_out(packet(0, true));
        for (rx, forwarder) in &mut downtracks {
            if let Ok(p) = rx.try_recv() {
                forwarder.decide(p.packet.header.ssrc, 0, 0, true, Instant::now());
            }
        }
        let mut seq = 1u16;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                receiver.fan_out(packet(seq, false));
                let now = Instant::now();
                for (rx, forwarder) in &mut downtracks {
                    let Ok(shared) = rx.try_recv() else { continue };
                    let h = &shared.packet.header;
                    if let Decision::Forward(r) = forwarder.decide(
                        h.ssrc,
                        h.sequence_number,
                        h.timestamp,
                        shared.is_keyframe,
                        now,
                    ) {
                        let mut out = shared.packet.clone();
                        out.header.ssrc = 42;
                        out.header.sequence_number = r.sequence_number;
                        out.header.timestamp = r.timestamp;
                        black_box(out);
                    }
                }
                seq = seq.wrapping_add(1);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out);
criterion_main!(benches);
