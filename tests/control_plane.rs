//! Property tests of the control plane: `room::Registry` driven by random sequences of join,
//! publish, unpublish, announce, mute, publisher offers and leave across several participants
//! and rooms, against a model (`control_plane/model.rs`, which the fuzz target
//! `control_plane` shares) and a recording fake media plane.
//!
//! What holds after every step: every `subscribe` the room sends names a track that exists at
//! that moment, a subscriber in the room and never the track's own publisher; after
//! `remove_track` or `remove_participant` nothing more is subscribed for it; everyone in a
//! room forwards exactly every other member's published tracks; what each participant was
//! told adds up to the room as it is, event by event (`joined` first, `track_published`
//! before `track_unpublished`, `participant_left` last); the gauges count what the model
//! holds, and all come back to zero when everyone leaves.

#[path = "control_plane/model.rs"]
mod model;

use std::collections::HashSet;
use std::sync::Arc;
use std::thread;

use model::{apply_message, offer_sdp, ClientView, FakePlacer, Harness, Inbox, Op};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use switchboard::media::kind::TrackKind;
use switchboard::metrics::Metrics;
use switchboard::room::{Participant, PublishedTrack, Registry, RoomEvent};

const PEOPLE: usize = 6;

fn who() -> impl Strategy<Value = usize> {
    0..PEOPLE
}

fn room() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string)
}

/// Track ids from a small pool shared by everyone: collisions between publishers happen.
fn track() -> impl Strategy<Value = String> {
    (0..5u8).prop_map(|i| format!("t{i}"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (who(), room()).prop_map(|(who, room)| Op::Join { who, room }),
        4 => (who(), track(), any::<bool>())
            .prop_map(|(who, track, video)| Op::Publish { who, track, video }),
        2 => (who(), track()).prop_map(|(who, track)| Op::Unpublish { who, track }),
        1 => (who(), prop::collection::vec(track(), 0..4))
            .prop_map(|(who, tracks)| Op::Announce { who, tracks }),
        2 => (who(), track(), any::<bool>())
            .prop_map(|(who, track, muted)| Op::Mute { who, track, muted }),
        2 => (
            who(),
            prop::collection::vec((track(), any::<bool>(), any::<bool>()), 0..5)
        )
            .prop_map(|(who, sections)| Op::Offer {
                who,
                sdp: offer_sdp(&sections),
            }),
        2 => who().prop_map(|who| Op::Leave { who }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_keep_the_rooms_the_media_plane_and_the_clients_in_step(
        ops in prop::collection::vec(op(), 1..150)
    ) {
        let mut h = Harness::new(PEOPLE);
        for op in &ops {
            h.apply(op);
        }
        h.finish();
    }
}

/// One long fixed scenario, so a plain `cargo test` run always covers every refusal.
#[test]
fn a_long_seeded_run_meets_every_refusal() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut h = Harness::new(PEOPLE);
    let tracks = ["t0", "t1", "t2", "t3", "t4"];
    for _ in 0..20_000 {
        let who = rng.random_range(0..PEOPLE);
        let track = tracks[rng.random_range(0..tracks.len())].to_string();
        let op = match rng.random_range(0..10) {
            0..=2 => Op::Join {
                who,
                room: ["a", "b", "c"][rng.random_range(0..3)].to_string(),
            },
            3 | 4 => Op::Publish {
                who,
                track,
                video: rng.random(),
            },
            5 => Op::Unpublish { who, track },
            6 => Op::Mute {
                who,
                track,
                muted: rng.random(),
            },
            7 => {
                let n = rng.random_range(0..5);
                let sections: Vec<(String, bool, bool)> = (0..n)
                    .map(|_| {
                        (
                            tracks[rng.random_range(0..tracks.len())].to_string(),
                            rng.random(),
                            rng.random_ratio(3, 4),
                        )
                    })
                    .collect();
                Op::Offer {
                    who,
                    sdp: offer_sdp(&sections),
                }
            }
            8 => Op::Announce {
                who,
                tracks: vec![track],
            },
            _ => Op::Leave { who },
        };
        h.apply(&op);
    }
    for why in [
        "join",
        "publish",
        "publish (publisher gone)",
        "mute",
        "offer",
    ] {
        assert!(
            h.refusals.get(why).copied().unwrap_or(0) > 0,
            "no {why} refusal in the run: {:?}",
            h.refusals
        );
    }
    assert!(h.media_commands() > 5_000, "{}", h.media_commands());
    h.finish();
}

/// The same rooms under real concurrency: eight threads join, publish, unpublish, mute,
/// leave, and publish for a participant that just left (the media engine racing a leave),
/// with no coordination. The fake media planes check every command as the room sends it:
/// a subscribe that overtook a removal, or named someone gone, is caught there. At the end
/// every client's view is its room and every gauge is back to zero.
#[test]
fn concurrent_sessions_leave_nothing_behind() {
    let metrics = Arc::new(Metrics::default());
    let placer = Arc::new(FakePlacer::default());
    let registry = Arc::new(Registry::new(3, 5, 3, placer.clone(), metrics.clone()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let registry = registry.clone();
            thread::spawn(move || run_person(t, &registry))
        })
        .collect();
    let mut total_steps = 0;
    // Every track instance stays alive to the end: the fake planes know them by address.
    let mut instances = Vec::new();
    for t in threads {
        let (steps, tracks) = t.join().expect("a session thread panicked");
        total_steps += steps;
        instances.extend(tracks);
    }
    assert!(total_steps > 10_000);
    let m = metrics.snapshot();
    assert_eq!(
        (m.rooms, m.participants, m.published_tracks),
        (0, 0, 0),
        "{m:?}"
    );
    assert!(registry.snapshot().is_empty());
    let planes = placer.planes.lock().unwrap().clone();
    assert!(planes.len() > 3, "rooms closed and opened again");
    for plane in planes {
        assert_eq!(plane.violations(), Vec::<String>::new(), "{}", plane.room);
        assert!(plane.is_empty(), "{} still forwards something", plane.room);
    }
}

/// One person's session, over and over; returns the steps made and the track instances.
fn run_person(seed: u64, registry: &Registry) -> (u64, Vec<Arc<PublishedTrack>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut steps = 0;
    let mut instances = Vec::new();
    for generation in 0..150 {
        let id = format!("p{seed}g{generation}");
        let rx = Arc::new(Inbox::default());
        let participant = Arc::new(Participant::new(id.clone(), format!("n{seed}"), rx.clone()));
        let room_name = ["a", "b", "c", "d"][rng.random_range(0..4)];
        let joined = registry.join(room_name, &participant);
        let Ok(room) = joined else {
            thread::yield_now();
            continue;
        };
        let mut view = ClientView::default();
        let Some(RoomEvent::Joined {
            others: participants,
        }) = rx.recv()
        else {
            panic!("{id}: joined is not first");
        };
        view.joined = true;
        view.others = participants;
        let mut published: HashSet<String> = HashSet::new();
        for _ in 0..rng.random_range(1..40) {
            steps += 1;
            let track = format!("{id}-t{}", rng.random_range(0..4));
            match rng.random_range(0..6) {
                0 | 1 => {
                    let kind = if rng.random() {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    };
                    let t = PublishedTrack::new(id.clone(), track.clone(), kind, false);
                    instances.push(t.clone());
                    let already = published.contains(&track);
                    match room.publish(t) {
                        Ok(()) => {
                            assert!(!already);
                            published.insert(track);
                        }
                        Err(_) => assert!(already || published.len() >= 3),
                    }
                }
                2 => {
                    room.unpublish(&id, &track);
                    published.remove(&track);
                }
                3 => {
                    assert_eq!(
                        room.set_muted(&id, &track, rng.random()),
                        published.contains(&track)
                    );
                }
                _ => thread::yield_now(),
            }
            drain(&id, &rx, &mut view);
            let mut mine = room.tracks_of(&id);
            mine.sort();
            let mut expected: Vec<String> = published.iter().cloned().collect();
            expected.sort();
            assert_eq!(mine, expected);
        }
        registry.leave(&room, &id);
        // What was queued before the leave is still consistent; nothing comes after it, even
        // while the others go on and the engine publishes for this participant a moment late.
        drain(&id, &rx, &mut view);
        if rng.random_ratio(1, 2) {
            let late =
                PublishedTrack::new(id.clone(), format!("{id}-late"), TrackKind::Video, false);
            instances.push(late.clone());
            assert!(room.publish(late).is_err(), "{id} published after it left");
        }
        thread::yield_now();
        assert!(rx.recv().is_none(), "{id} was told something after it left");
    }
    (steps, instances)
}

fn drain(id: &str, rx: &Inbox, view: &mut ClientView) {
    while let Some(m) = rx.recv() {
        if let Err(e) = apply_message(view, &m) {
            panic!("{id} got {m:?}: {e}\nits view: {view:?}");
        }
    }
}
