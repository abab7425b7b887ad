//! The media engine as an operator sees it from outside the process: every peer on one UDP
//! port, whatever the number of participants.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use switchboard::load::client::{Client, JoinOptions};
use switchboard::load::publish::PublishOptions;

/// Ports of the UDP sockets a process holds (from /proc).
fn udp_ports_of(pid: u32) -> Vec<u16> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(link) = std::fs::read_link(fd.path()) {
            let link = link.to_string_lossy().to_string();
            if let Some(inode) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(inode)) = (fields.get(1), fields.get(9)) else {
                continue;
            };
            if inodes.contains(*inode) {
                let port = local.rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

fn candidate_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|c| c.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_of_ten_is_served_on_one_udp_port() {
    // Its sockets are then its own to count; two workers share the port.
    let ServerProcess { child, url, .. } = spawn_server(&["--workers", "2"]).await;
    let pid = child.id().expect("a pid");
    let mut clients = Vec::new();
    for i in 0..10 {
        clients.push(
            Client::join(&url, "one-port", &format!("p{i}"))
                .await
                .expect("joins"),
        );
    }
    // Two of them publish: everyone else receives both.
    for c in &clients[..2] {
        c.publish(PublishOptions {
            video_bitrate_bps: 100_000,
            ..PublishOptions::default()
        })
        .await
        .expect("publishes");
    }
    for c in &clients {
        let want = if clients[..2].iter().any(|p| p.id == c.id) {
            2
        } else {
            4
        };
        c.wait_received("media from the publishers", WAIT, |r| {
            r.len() == want && r.values().all(|t| t.packets > 3)
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", c.name));
    }
    let mut announced = HashSet::new();
    for c in &clients {
        let offer = c.last_subscriber_offer().expect("a subscriber offer");
        announced.extend(candidate_ports(&offer));
    }
    for c in &clients[..2] {
        announced.extend(candidate_ports(
            &c.last_publisher_answer().expect("an answer"),
        ));
    }
    assert_eq!(
        announced.len(),
        1,
        "every candidate names one port: {announced:?}"
    );
    let port = *announced.iter().next().unwrap();
    // The server holds its two workers' sockets on that port, and no socket per peer.
    let held = udp_ports_of(pid);
    assert_eq!(held, vec![port, port], "the server's UDP sockets");
    for c in clients {
        c.leave().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(udp_ports_of(pid), vec![port, port]);
}

/// Every latency a subscriber measured so far, on all its tracks.
fn latencies(client: &Client) -> hdrhistogram::Histogram<u64> {
    client
        .received()
        .values()
        .filter_map(|t| t.latency_us.clone())
        .reduce(|mut all, h| {
            all.add(&h).unwrap();
            all
        })
        .expect("latency measured")
}

/// Latency percentile (ms) of what a subscriber received from `after` on.
fn p99_since(client: &Client, after: &hdrhistogram::Histogram<u64>) -> (f64, u64) {
    let mut during = latencies(client);
    during.subtract(after).unwrap();
    (during.value_at_quantile(0.99) as f64 / 1000.0, during.len())
}

/// Fifty participants join within a second while a call goes on: the call's forwarding
/// latency must not notice (each join costs the worker a peer connection and an offer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_does_not_delay_an_ongoing_call() {
    let server = start_server_with(switchboard::Config {
        workers: 1,
        max_participants_per_room: 60,
        ..switchboard::Config::ephemeral()
    })
    .await;
    let url = server.ws_url();
    let publisher = Client::join(&url, "storm", "speaker").await.unwrap();
    let listener = Client::join(&url, "storm", "listener").await.unwrap();
    publisher
        .publish(PublishOptions {
            video_bitrate_bps: 500_000,
            ..PublishOptions::default()
        })
        .await
        .unwrap();
    listener
        .wait_received("the call flowing", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 50)
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = latencies(&listener);
    // The storm: fifty sockets join within a second; the server makes each a subscriber
    // peer connection carrying the call's two tracks, and offers it.
    let mut joiners = Vec::new();
    for i in 0..50 {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        use futures_util::SinkExt;
        let join = serde_json::json!({"type": "join", "room": "storm", "name": format!("j{i}")});
        ws.send(tokio_tungstenite::tungstenite::Message::text(
            join.to_string(),
        ))
        .await
        .unwrap();
        joiners.push(ws);
        tokio::time::sleep(Duration::from_millis(18)).await;
    }
    wait_metrics(&server, "fifty more participants", |m| m.participants == 52).await;
    wait_metrics(&server, "their peer connections", |m| {
        m.peer_connections >= 53
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (p99, samples) = p99_since(&listener, &before);
    eprintln!("forwarding latency p99 during the join storm: {p99:.2} ms over {samples} packets");
    assert!(samples > 50, "the call went on: {samples} packets");
    assert!(p99 < 25.0, "p99 {p99:.1} ms during the storm");
    drop(joiners);
    publisher.leave().await;
    listener.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// A client starts its connectivity checks as soon as it has the server's offer; its answer
/// may come later over a slow signaling path. Checks that arrive before the answer are held
/// and replayed when it is applied, rather than dropped for the client to retry (~200 ms
/// later in webrtc-rs, and in browsers): nothing on the join path waits on a retry timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_that_arrive_before_the_answer_are_answered_once_it_comes() {
    let server = start_server().await;
    let url = server.ws_url();
    let alice = Client::join(&url, "early", "alice").await.expect("joins");
    alice
        .publish(PublishOptions {
            video_bitrate_bps: 100_000,
            ..PublishOptions::default()
        })
        .await
        .expect("publishes");
    let slow = JoinOptions {
        answer_delay: Duration::from_millis(400),
        ..JoinOptions::default()
    };
    let bob = Client::join_with(&url, "early", "bob", &slow)
        .await
        .expect("joins");
    bob.wait_received("alice's media", WAIT, |r| {
        r.len() == 2 && r.values().all(|t| t.packets > 3)
    })
    .await
    .expect("media arrives");
    let m = server.metrics();
    assert!(m.ice_checks_early > 0, "{m:?}");
    bob.leave().await;
    alice.leave().await;
    wait_metrics(&server, "everything torn down", all_freed).await;
}

/// A subscriber floods NACKs for packets still kept: it gets no more retransmissions than
/// its budget (300 a second, bursts of 600), and another subscriber of the same track is
/// not disturbed. Without the budget each of the 3,000 NACKs is a full send through the
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_flood_gets_its_budget_and_disturbs_nobody() {
    let server = start_server().await;
    let url = server.ws_url();
    let alice = Client::join(&url, "flood", "alice").await.expect("joins");
    let mallory = Client::join(&url, "flood", "mallory").await.expect("joins");
    let carol = Client::join(&url, "flood", "carol").await.expect("joins");
    mallory.record_arrivals();
    alice
        .publish(PublishOptions {
            audio: false,
            video_bitrate_bps: 300_000,
            ..PublishOptions::default()
        })
        .await
        .expect("publishes");
    for c in [&mallory, &carol] {
        c.wait_received("alice's video", WAIT, |r| {
            r.values().any(|t| t.kind == "video" && t.packets > 20)
        })
        .await
        .expect("video arrives");
    }
    let video = |c: &Client| {
        c.received()
            .into_values()
            .find(|t| t.kind == "video")
            .expect("a video track")
    };
    let track = video(&mallory);
    let (stream_id, track_id) = (track.stream_id.clone(), track.track_id.clone());
    let carol_before = video(&carol).distinct;
    let started = std::time::Instant::now();
    for i in 0..3_000 {
        // Always a packet the server still keeps: the newest Mallory saw.
        let newest = video(&mallory).arrivals.unwrap().last().unwrap().1;
        mallory
            .request_retransmission(&stream_id, &track_id, newest)
            .await
            .expect("NACK sent");
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    wait_metrics(&server, "the flood counted", |m| {
        m.retransmissions + m.retransmissions_limited + m.retransmissions_missed >= 3_000
    })
    .await;
    let m = server.metrics();
    let budget = 600.0 + 300.0 * (elapsed + 1.0);
    assert!(
        (m.retransmissions as f64) <= budget,
        "{} retransmissions in {elapsed:.2} s\n{m:?}",
        m.retransmissions
    );
    assert!(m.retransmissions_limited > 1_000, "{m:?}");
    // Carol's video went on meanwhile, whole.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = video(&carol);
    assert!(after.distinct > carol_before + 5, "carol's video stalled");
    assert_eq!(after.freezes, 0);
    for c in [alice, mallory, carol] {
        c.leave().await;
    }
    wait_metrics(&server, "everything torn down", all_freed).await;
}

/// Forwarded media is protected by the worker itself (marshalled once, encrypted in place,
/// with the keys the stack's DTLS handshake derived, proven on the stack's first packet), for
/// each SRTP profile the server negotiates; and by the stack's pipeline when
/// `--srtp-writer stack` asks for it. Either way the subscriber decrypts what it is sent:
/// packets that did not authenticate would never reach its counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_protected_by_the_worker_with_every_profile_or_by_the_stack() {
    use switchboard::config::SrtpWriter;
    let cases = [
        ("aes128gcm", SrtpWriter::Worker),
        ("aes256gcm", SrtpWriter::Worker),
        ("aes128cm", SrtpWriter::Worker),
        ("aes128gcm", SrtpWriter::Stack),
    ];
    for (profile, writer) in cases {
        let server = start_server_with(switchboard::Config {
            srtp: profile.into(),
            srtp_writer: writer,
            ..switchboard::Config::ephemeral()
        })
        .await;
        let url = server.ws_url();
        let alice = Client::join(&url, "srtp", "alice").await.expect("joins");
        alice
            .publish(PublishOptions {
                video_bitrate_bps: 300_000,
                ..PublishOptions::default()
            })
            .await
            .expect("publishes");
        let bob = Client::join(&url, "srtp", "bob").await.expect("joins");
        bob.wait_received("alice's audio and video", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 100)
        })
        .await
        .unwrap_or_else(|e| panic!("{profile} by {writer:?}: {e}"));
        let m = server.metrics();
        match writer {
            // Bob's subscriber connection; alice's has nothing to send.
            SrtpWriter::Worker => assert_eq!(m.srtp_sessions_in_worker, 1, "{profile}: {m:?}"),
            SrtpWriter::Stack => assert_eq!(m.srtp_sessions_in_worker, 0, "{m:?}"),
        }
        assert_eq!(m.srtp_sessions_unproven, 0, "{profile}: {m:?}");
        assert_eq!(m.srtp_protect_errors, 0, "{profile}: {m:?}");
        bob.leave().await;
        alice.leave().await;
        wait_metrics(&server, "everything torn down", all_freed).await;
    }
}
