//! A conference end to end: real server, real WebRTC peers on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use switchboard::load::client::Client;
use switchboard::load::publish::PublishOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_each_receive_exactly_the_other_two() {
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "conf", "alice")
        .await
        .expect("alice joins");
    let b = Client::join(&url, "conf", "bob").await.expect("bob joins");
    let c = Client::join(&url, "conf", "carol")
        .await
        .expect("carol joins");
    // Someone in another room must not leak into this one, nor see it.
    let x = Client::join(&url, "elsewhere", "xavier")
        .await
        .expect("xavier joins");
    assert!(x.participants_at_join.is_empty());
    for client in [&a, &b, &c, &x] {
        client
            .publish(PublishOptions::default())
            .await
            .expect("publish");
    }
    let clients = [&a, &b, &c];
    for me in clients {
        let others: HashSet<String> = clients
            .iter()
            .filter(|o| o.id != me.id)
            .map(|o| o.id.clone())
            .collect();
        let received = me
            .wait_received("two others' four tracks flowing", WAIT, |r| {
                r.len() >= 4 && r.values().all(|t| t.packets >= 20)
            })
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; got {:?}",
                    me.name,
                    me.received().keys().collect::<Vec<_>>()
                )
            });
        assert_eq!(
            received.len(),
            4,
            "{} receives exactly four tracks",
            me.name
        );
        let streams: HashSet<String> = received.keys().map(|(s, _)| s.clone()).collect();
        assert_eq!(
            streams, others,
            "{} receives from the other two only",
            me.name
        );
        for ((stream, track), stats) in &received {
            assert_eq!(
                stats.foreign_packets, 0,
                "{track}: payloads from the stream's own publisher"
            );
            assert_eq!(stats.publishers_seen, vec![stream.clone()]);
            assert!(
                track.starts_with(stream.as_str()),
                "track id {track} belongs to {stream}"
            );
        }
        let kinds: Vec<_> = received.values().map(|t| t.kind.clone()).collect();
        assert_eq!(kinds.iter().filter(|k| *k == "video").count(), 2);
        assert_eq!(kinds.iter().filter(|k| *k == "audio").count(), 2);
    }
    // Xavier's room has no one else: he receives nothing, and nobody receives him.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(x.received().is_empty(), "nothing crosses rooms");
    for me in clients {
        assert!(me.received().keys().all(|(s, _)| *s != x.id));
    }
    let m = server.metrics();
    assert_eq!(m.rooms, 2);
    assert_eq!(m.participants, 4);
    assert_eq!(m.published_tracks, 8);
    assert!(m.packets_out > 0 && m.bytes_out > 0);

    for client in [a, b, c, x] {
        client.leave().await;
    }
    wait_metrics(&server, "everything torn down", all_freed).await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_triggers_a_keyframe_request_and_gets_existing_tracks() {
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "late", "alice")
        .await
        .expect("alice joins");
    a.publish(PublishOptions::default()).await.expect("publish");
    wait_metrics(&server, "alice's tracks published", |m| {
        m.published_tracks == 2
    })
    .await;
    // Let the publisher's first keyframe pass; its keyframe interval is a minute.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plis_before = a
        .publish_stats
        .plis_received
        .load(std::sync::atomic::Ordering::Relaxed);

    let b = Client::join(&url, "late", "bob").await.expect("bob joins");
    assert_eq!(b.participants_at_join.len(), 1);
    assert_eq!(b.participants_at_join[0].id, a.id);
    assert_eq!(b.participants_at_join[0].tracks.len(), 2);
    let received = b
        .wait_received("alice's video and audio", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets >= 10)
        })
        .await
        .expect("bob receives alice");
    assert!(received.keys().all(|(s, _)| *s == a.id));
    let plis_after = a
        .publish_stats
        .plis_received
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        plis_after > plis_before,
        "the publisher was asked for a keyframe ({plis_before} -> {plis_after})"
    );
    assert!(server.metrics().plis_sent >= 1);
    a.leave().await;
    b.leave().await;
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_keyframe_requests_reach_the_publisher_rate_limited() {
    use std::sync::atomic::Ordering;
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "pli", "alice")
        .await
        .expect("alice joins");
    a.publish(PublishOptions::default()).await.expect("publish");
    let b = Client::join(&url, "pli", "bob").await.expect("bob joins");
    b.wait_received("alice's video", WAIT, |r| {
        r.values().any(|t| t.kind == "video" && t.packets > 30)
    })
    .await
    .expect("bob receives alice");
    // Let the join's own keyframe requests settle.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = a.publish_stats.plis_received.load(Ordering::Relaxed);
    let received_before = server.metrics().keyframe_requests_received;

    // Bob's decoder asks for keyframes in a storm: 20 PLIs in 200 ms.
    let video = format!("{}-video", a.id);
    for _ in 0..20 {
        b.request_keyframe(&a.id, &video).await.expect("PLI sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_metrics(&server, "the server saw bob's PLIs", |m| {
        m.keyframe_requests_received >= received_before + 10
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let relayed = a.publish_stats.plis_received.load(Ordering::Relaxed) - before;
    // At most one per 500 ms interval reaches alice: the storm spanned about 1 s of them.
    assert!(
        (1..=3).contains(&relayed),
        "alice got {relayed} PLIs for bob's 20"
    );
    a.leave().await;
    b.leave().await;
    server.shutdown().await.expect("shutdown");
}

/// Join, publish, leave, again and again: every task and peer connection of every cycle is
/// gone afterwards (webrtc-rs 0.21.0 leaked one per connection; this would catch it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_close_cycles_leave_no_tasks_behind() {
    let server = start_server().await;
    let url = server.ws_url();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = tasks();
    for cycle in 0..8 {
        let a = Client::join(&url, "soak", "alice").await.expect("join");
        let b = Client::join(&url, "soak", "bob").await.expect("join");
        a.publish(PublishOptions::default()).await.expect("publish");
        b.wait_received("alice's media", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 3)
        })
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        if cycle % 2 == 0 {
            a.leave().await;
            b.leave().await;
        } else {
            a.close().await;
            b.close().await;
        }
        wait_metrics(&server, "the cycle freed everything", all_freed).await;
    }
    let deadline = std::time::Instant::now() + WAIT;
    while tasks() > baseline && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tasks() <= baseline,
        "{} tasks alive after the cycles, {baseline} before",
        tasks()
    );
    server.shutdown().await.expect("shutdown");
}

/// One media section of an SDP, as far as these tests look.
#[derive(Debug, Default)]
struct Section {
    kind: String,
    mid: String,
    direction: String,
    track_id: String,
    extmap: Vec<(u8, String)>,
}

fn sections(sdp: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            out.push(Section {
                kind: m.split_whitespace().next().unwrap_or_default().into(),
                ..Section::default()
            });
            continue;
        }
        let Some(s) = out.last_mut() else { continue };
        if let Some(mid) = line.strip_prefix("a=mid:") {
            s.mid = mid.into();
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            s.track_id = msid.split_whitespace().nth(1).unwrap_or_default().into();
        } else if let Some(ext) = line.strip_prefix("a=extmap:") {
            let mut parts = ext.split_whitespace();
            let id = parts.next().unwrap_or_default();
            let id = id
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .unwrap_or(0);
            s.extmap.push((id, parts.next().unwrap_or_default().into()));
        } else if ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive"].contains(&line) {
            s.direction = line[2..].into();
        }
    }
    out
}

const MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

/// RFC 8843 and RFC 6464 on the way through: each forwarded packet carries the subscriber's
/// own MID for its m-line and the publisher's audio level under the subscriber's id, and the
/// server offers what it only sends as `sendonly`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_packets_carry_the_subscribers_mid_and_the_publishers_audio_level() {
    let server = start_server().await;
    let url = server.ws_url();
    let alice = Client::join(&url, "ext", "alice").await.unwrap();
    let bob = Client::join(&url, "ext", "bob").await.unwrap();
    bob.record_arrivals();
    alice.publish(PublishOptions::default()).await.unwrap();
    let received = bob
        .wait_received("alice's audio and video", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.extension_samples.len() >= 30)
        })
        .await
        .unwrap();
    let offer = bob.last_subscriber_offer().expect("an offer");
    let media: Vec<Section> = sections(&offer)
        .into_iter()
        .filter(|s| s.kind == "audio" || s.kind == "video")
        .collect();
    assert_eq!(media.len(), 2, "{offer}");
    for s in &media {
        assert_eq!(s.direction, "sendonly", "m-line {} in\n{offer}", s.mid);
    }
    for track in received.values() {
        let section = media
            .iter()
            .find(|s| s.track_id == track.track_id)
            .unwrap_or_else(|| panic!("no m-line for {}", track.track_id));
        let id_of = |uri: &str| {
            section
                .extmap
                .iter()
                .find(|(_, u)| u == uri)
                .map(|(id, _)| *id)
                .unwrap_or_else(|| panic!("{uri} not offered on {}", section.kind))
        };
        let mid_id = id_of(MID_URI);
        for (counter, extensions) in &track.extension_samples {
            let mid = extensions.iter().find(|(id, _)| *id == mid_id);
            assert_eq!(
                mid.map(|(_, v)| v.as_ref()),
                Some(section.mid.as_bytes()),
                "{} packet {counter} carries mid {:?}",
                track.kind,
                section.mid
            );
            if track.kind == "audio" {
                let level_id = id_of(AUDIO_LEVEL_URI);
                let level = extensions.iter().find(|(id, _)| *id == level_id);
                let expected = 0x80 | switchboard::load::senders::audio_level_of(*counter);
                assert_eq!(
                    level.map(|(_, v)| v.first().copied()),
                    Some(Some(expected)),
                    "audio packet {counter} carries alice's level"
                );
            }
        }
    }
    alice.leave().await;
    bob.leave().await;
    server.shutdown().await.unwrap();
}
