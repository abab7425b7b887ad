//! A stream longer than the sequence-number space, through a real server: the forwarder must
//! carry it across every wrap without losing, repeating or reordering a packet.

mod common;

use std::time::Duration;

use common::*;
use switchboard::load::client::{Client, Flood, PublishOptions};

const PACKETS: u64 = 140_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_140_000_packets_crosses_two_wraps_intact() {
    let server = start_server().await;
    let url = server.ws_url();
    let publisher = Client::join(&url, "long", "pub").await.expect("joins");
    let subscriber = Client::join(&url, "long", "sub").await.expect("joins");
    subscriber.record_arrivals();
    publisher
        .publish(PublishOptions {
            audio: false,
            flood: Some(Flood {
                packets: PACKETS,
                // Faster than real time: 140,000 packets in about 28 s.
                per_second: 5_000,
                payload_bytes: 200,
            }),
            ..PublishOptions::default()
        })
        .await
        .expect("publishes");
    subscriber
        .wait_received("every packet of the flood", Duration::from_secs(120), |r| {
            r.values()
                .any(|t| t.last_counter == Some(PACKETS as u32 - 1))
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}; got {:?}; server {:?}; sent {:?}",
                summary(&subscriber),
                server.metrics(),
                publisher.publish_stats
            )
        });
    // Let anything still in flight (a retransmission) land before judging.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let received = subscriber.received();
    let track = received.values().next().expect("one track");
    assert_eq!(received.len(), 1);
    assert_eq!(track.stream_id, publisher.id);
    assert_eq!(track.foreign_packets, 0);
    let arrivals = track.arrivals.as_ref().expect("arrivals recorded");
    let first = track.first_counter.expect("stamped") as u64;
    // The subscriber starts on the first keyframe; from there on, every packet arrives once,
    // in the publisher's order, and the rewritten sequence numbers run on without a hole
    // through both wraps.
    assert!(first < 20_000, "started late, at packet {first}");
    let expected = PACKETS - first;
    assert_eq!(
        track.distinct,
        expected,
        "{}; server {:?}",
        summary(&subscriber),
        server.metrics()
    );
    assert_eq!(track.duplicates, 0);
    assert_eq!(arrivals.len() as u64, expected);
    let (mut prev_counter, mut prev_seq) = arrivals[0];
    let mut wraps = 0;
    for &(counter, seq) in &arrivals[1..] {
        assert_eq!(counter, prev_counter + 1, "in order after {prev_counter}");
        assert_eq!(seq, prev_seq.wrapping_add(1), "contiguous after {prev_seq}");
        if seq < prev_seq {
            wraps += 1;
        }
        (prev_counter, prev_seq) = (counter, seq);
    }
    assert!(wraps >= 2, "crossed {wraps} wraps");
    publisher.leave().await;
    subscriber.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    let m = server.metrics();
    assert_eq!(
        m.dropped.too_old + m.dropped.duplicate,
        0,
        "{:?}",
        m.dropped
    );
    server.shutdown().await.unwrap();
}

fn summary(client: &Client) -> String {
    client
        .received()
        .values()
        .map(|t| {
            format!(
                "{} {}: distinct {} dup {} counters {:?}..{:?}",
                t.stream_id, t.kind, t.distinct, t.duplicates, t.first_counter, t.last_counter
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
