//! A stream longer than the sequence-number space, through a real server: the forwarder must
//! carry it across every wrap without losing, repeating or reordering a packet.
//!
//! On a busy machine the kernel may still drop a datagram between the server's socket and the
//! client's; the client then asks for it again by NACK, as a browser would, and the test
//! requires that every packet arrived once all the same. Order is judged on the numbering:
//! each packet carries the sequence number of its place in the publisher's order, contiguous
//! through both wraps, and only repaired packets may arrive late.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use switchboard::load::client::Client;
use switchboard::load::publish::{Flood, PublishOptions};
use switchboard::Config;

const PACKETS: u64 = 140_000;
const PER_SECOND: u32 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_140_000_packets_crosses_two_wraps_intact() {
    let mut config = Config::ephemeral();
    // Retransmissions for a stream this fast: a second of it kept (the default window is a
    // second of 2.5 Mbit/s video), and a budget that a burst of kernel drops cannot exhaust.
    config.nack_window = PER_SECOND as u16;
    config.max_retransmits_per_sec = PER_SECOND;
    // 5,000 packets a second is what the in-process test client can take; transport-wide
    // feedback for each would push it over (it drops packets past its NACKs). The estimate
    // has its own tests.
    config.no_bwe = true;
    let server = start_server_with(config).await;
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
                per_second: PER_SECOND,
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
    // Every packet arrived, and each carries the sequence number of its place in the
    // publisher's order: contiguous from the first, through both wraps.
    let (first_counter, first_seq) = arrivals[0];
    let mut seen = HashSet::new();
    let mut highest = first_counter;
    let mut late = 0u64;
    let mut repeats = 0u64;
    for &(counter, seq) in arrivals {
        let place = counter.wrapping_sub(first_counter);
        assert_eq!(
            seq,
            first_seq.wrapping_add(place as u16),
            "packet {counter} numbered out of its place"
        );
        if !seen.insert(counter) {
            // A retransmission of a packet whose first repair was already on its way.
            repeats += 1;
            continue;
        }
        if counter < highest {
            late += 1;
        }
        highest = highest.max(counter);
    }
    assert_eq!(seen.len() as u64, expected);
    assert_eq!(track.duplicates, repeats);
    let wraps = (u64::from(first_seq) + expected) / 65_536;
    assert!(wraps >= 2, "crossed {wraps} wraps");
    // Only repaired packets arrive late or twice: on an idle machine, none.
    let m = server.metrics();
    assert!(
        late + repeats <= 2 * m.retransmissions,
        "{late} late and {repeats} repeated arrivals, {} retransmissions",
        m.retransmissions
    );
    eprintln!(
        "{expected} packets, {wraps} wraps; {late} repaired by NACK ({} retransmissions, {repeats} repeats)",
        m.retransmissions
    );
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
