//! The data plane's own work per publisher packet: the Receiver reads it once, and each
//! DownTrack gates it and writes its header and the shared payload into one reused buffer
//! (`receiver_to_downtracks`); then the worker protects it in place with SRTP
//! (`receiver_to_wire`, AES-128-GCM): everything of a forwarded packet but the system call.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::engine::srtp::{Profile, SrtpSender};
use switchboard::media::downtrack::{DownTrack, Negotiated, Outcome};
use switchboard::media::extensions::{ExtensionIds, SubscriberExtensions, SDES_MID};
use switchboard::media::kind::TrackKind;
use switchboard::media::receiver::{Codec, Receiver, TrackMeta};

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
            ssrc: 1234,
            ..Default::default()
        },
        payload: bytes::Bytes::from(payload),
    }
}

fn setup(n: usize) -> (Receiver, Vec<DownTrack>) {
    let mut receiver = Receiver::new(
        TrackMeta {
            publisher_id: "p1".into(),
            track_id: "t1".into(),
            kind: TrackKind::Video,
            codec: Codec {
                mime_type: "video/VP8".into(),
                clock_rate: 90_000,
                ..Codec::default()
            },
            extensions: ExtensionIds::default(),
        },
        1234,
        Duration::from_millis(500),
    );
    let mut downtracks: Vec<DownTrack> = (0..n)
        .map(|i| {
            let mut d = DownTrack::new(i as u32, true, 90_000, Duration::from_secs(1), i as u16, 0);
            d.set_negotiated(Negotiated {
                payload_type: 96,
                extensions: SubscriberExtensions::new(
                    ExtensionIds::from_negotiated([(SDES_MID, 1)]),
                    Some(1),
                    "0",
                ),
            });
            d.transport_up();
            d
        })
        .collect();
    // Start every DownTrack on a keyframe, as in a running call.
    let first = packet(0, true);
    let now = Instant::now();
    let mut buf = bytes::BytesMut::with_capacity(1536);
    if let Some(incoming) = receiver.incoming(&first, now) {
        for d in &mut downtracks {
            let _ = d.forward(&incoming, now, 0, &mut buf);
        }
    }
    (receiver, downtracks)
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("receiver_to_downtracks");
    for n in [1usize, 10, 100] {
        let (mut receiver, mut downtracks) = setup(n);
        let mut buf = bytes::BytesMut::with_capacity(1536);
        let mut seq = 1u16;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let p = packet(seq, false);
                let now = Instant::now();
                if let Some(incoming) = receiver.incoming(&p, now) {
                    for d in &mut downtracks {
                        if let Outcome::Send(_) = d.forward(&incoming, now, 0, &mut buf) {
                            std::hint::black_box(&buf);
                        }
                    }
                }
                seq = seq.wrapping_add(1);
            });
        });
    }
    group.finish();
}

fn to_wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("receiver_to_wire");
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    for n in [1usize, 10, 100] {
        let (mut receiver, mut downtracks) = setup(n);
        let mut senders: Vec<SrtpSender> = (0..n)
            .map(|i| {
                SrtpSender::new(
                    provider.crypto(),
                    Profile::Aes128Gcm,
                    &[i as u8; 16],
                    &[7; 12],
                )
                .expect("keys")
            })
            .collect();
        let mut buf = bytes::BytesMut::with_capacity(1536);
        let mut seq = 1u16;
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let p = packet(seq, false);
                let now = Instant::now();
                if let Some(incoming) = receiver.incoming(&p, now) {
                    for (d, sender) in downtracks.iter_mut().zip(&mut senders) {
                        if let Outcome::Send(shape) = d.forward(&incoming, now, 0, &mut buf) {
                            sender
                                .protect(&mut buf, shape.header_len)
                                .expect("protected");
                            std::hint::black_box(&buf);
                        }
                    }
                }
                seq = seq.wrapping_add(1);
            });
        });
    }
    group.finish();
}

criterion_group!(benches, fan_out, to_wire);
criterion_main!(benches);
