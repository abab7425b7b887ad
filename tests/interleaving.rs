//! Randomized interleavings against a real server: several tasks, each a stream of real
//! WebRTC participants (the load tester's protocol client) that join one of two rooms,
//! publish audio and video (or only audio, or nothing), unpublish a track, and go by `leave`,
//! by a socket dropped without a word, or by `leave` with the socket dropped at once; some
//! drop their socket while their publisher offer is still being answered. Nothing is
//! coordinated: joins race unpublishes, publishes race the publisher's own departure.
//!
//! When the last one is gone, every gauge of the server is back to zero: no room, participant,
//! track, Receiver, DownTrack, peer connection or socket is left behind.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{all_freed, start_server, wait_metrics};
use rand::{Rng, SeedableRng};
use switchboard::load::client::Client;
use switchboard::load::publish::PublishOptions;

/// New rounds start until this much time has passed; the test ends well under a minute.
const BUDGET: Duration = Duration::from_secs(20);
const ACTORS: u64 = 4;
const MAX_ROUNDS: u32 = 40;

#[derive(Default)]
struct Tally {
    rounds: AtomicU64,
    joins_refused: AtomicU64,
    published: AtomicU64,
    publish_failed: AtomicU64,
    closed_while_publishing: AtomicU64,
    unpublished: AtomicU64,
    left: AtomicU64,
    dropped: AtomicU64,
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

async fn actor(url: String, index: u64, seed: u64, deadline: Instant, tally: Arc<Tally>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(index));
    let mut round = 0;
    while Instant::now() < deadline && round < MAX_ROUNDS {
        round += 1;
        add(&tally.rounds);
        let room = format!("mix-{}", rng.random_range(0..2));
        let client = match Client::join(&url, &room, &format!("a{index}r{round}")).await {
            Ok(client) => client,
            Err(_) => {
                add(&tally.joins_refused);
                continue;
            }
        };
        let options = PublishOptions {
            video: rng.random_ratio(3, 4),
            audio: true,
            video_bitrate_bps: 100_000,
            frame_rate: 15,
            ..PublishOptions::default()
        };
        let kinds: Vec<&str> = if options.video {
            vec!["audio", "video"]
        } else {
            vec!["audio"]
        };
        match rng.random_range(0..6) {
            // Subscribe only.
            0 => pause(&mut rng, 600).await,
            // Gone while the publisher offer is on its way or being answered.
            1 => {
                let wait = Duration::from_millis(rng.random_range(0..400));
                tokio::select! {
                    _ = client.publish(options) => {}
                    _ = tokio::time::sleep(wait) => {}
                }
                add(&tally.closed_while_publishing);
                client.close().await;
                add(&tally.dropped);
                continue;
            }
            _ => {
                if client.publish(options).await.is_ok() {
                    add(&tally.published);
                } else {
                    add(&tally.publish_failed);
                }
                pause(&mut rng, 500).await;
                if rng.random_ratio(1, 2) {
                    let kind = kinds[rng.random_range(0..kinds.len())];
                    if client.unpublish(kind).await.is_ok() {
                        add(&tally.unpublished);
                    }
                    pause(&mut rng, 300).await;
                }
            }
        }
        match rng.random_range(0..3) {
            0 => {
                client.leave().await;
                add(&tally.left);
            }
            1 => {
                client.close().await;
                add(&tally.dropped);
            }
            _ => {
                client.send_json(serde_json::json!({"type": "leave"}));
                client.close().await;
                add(&tally.left);
            }
        }
    }
}

async fn pause(rng: &mut impl Rng, max_ms: u64) {
    let ms = rng.random_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_interleavings_of_join_publish_unpublish_and_leave_leave_nothing_behind() {
    let server = start_server().await;
    let url = server.ws_url();
    let seed: u64 = std::env::var("INTERLEAVING_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("interleaving seed {seed} (INTERLEAVING_SEED={seed} repeats the plans)");
    let started = Instant::now();
    let deadline = started + BUDGET;
    let tally = Arc::new(Tally::default());
    let actors: Vec<_> = (0..ACTORS)
        .map(|i| tokio::spawn(actor(url.clone(), i, seed, deadline, tally.clone())))
        .collect();
    // Meanwhile no gauge ever goes below zero (a double free would).
    let mut samples = 0u64;
    while !actors.iter().all(|a| a.is_finished()) {
        let m = server.metrics();
        let gauges = [
            m.rooms,
            m.participants,
            m.published_tracks,
            m.receivers,
            m.downtracks,
            m.peer_connections,
            m.websockets,
        ];
        assert!(gauges.iter().all(|&g| g >= 0), "a gauge below zero: {m:?}");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(samples > 10);
    for a in actors {
        a.await.expect("an actor panicked");
    }
    wait_metrics(&server, "every gauge back to zero", all_freed).await;
    assert!(server.rooms().is_empty());
    let t = |c: &AtomicU64| c.load(Ordering::Relaxed);
    eprintln!(
        "{} rounds in {:.1?}: {} published ({} failed), {} gone mid-publish, {} unpublished, {} left, {} dropped, {} joins refused",
        t(&tally.rounds),
        started.elapsed(),
        t(&tally.published),
        t(&tally.publish_failed),
        t(&tally.closed_while_publishing),
        t(&tally.unpublished),
        t(&tally.left),
        t(&tally.dropped),
        t(&tally.joins_refused),
    );
    assert!(t(&tally.rounds) >= 12, "too few rounds to mean anything");
    assert!(t(&tally.published) >= 4, "publishing mostly failed");
    assert_eq!(t(&tally.joins_refused), 0);
    let m = server.metrics();
    assert!(m.joins >= t(&tally.rounds), "{m:?}");
    server.shutdown().await.expect("shutdown");
}
