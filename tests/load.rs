//! The load tester against a real server: its report must match what really flowed.

mod common;

use std::time::{Duration, Instant};

use common::simulcast::{assert_continuous, downlink, SimulcastRoom};
use common::*;
use switchboard::load::bottleneck::LinkConfig;
use switchboard::load::client::{Client, JoinOptions};
use switchboard::load::publish::PublishOptions;
use switchboard::load::received::RemoteTrackStats;
use switchboard::load::report::Thresholds;
use switchboard::load::{run, LoadConfig};

fn small(url: String) -> LoadConfig {
    LoadConfig {
        url,
        rooms: 1,
        publishers: 2,
        subscribers: 1,
        duration: Duration::from_secs(3),
        ramp: 20.0,
        video_bitrate: 300_000,
        keyframe_interval: 60.0,
        ..LoadConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_run_reports_what_flowed() {
    let server = start_server().await;
    let config = small(server.ws_url());
    let report = run(config.clone()).await.expect("load run");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.participants_planned, 3);
    assert_eq!(report.participants_connected, 3);
    assert_eq!(report.packets_lost, 0, "no loss on loopback");
    assert_eq!(report.loss_percent, 0.0);
    assert!(report.loss_measured);
    assert_eq!(report.freezes, 0);
    assert!(report.packets_expected > 500);
    assert_eq!(report.packets_received, report.packets_expected);

    let p50 = report.latency.p50_ms.expect("latency measured");
    let p99 = report.latency.p99_ms.expect("p99");
    let max = report.latency.max_ms.expect("max");
    assert!(
        p50 > 0.0 && p50 <= p99 && p99 <= max && max < 1000.0,
        "{:?}",
        report.latency
    );
    assert!(report.latency.samples > 100);
    assert!(report.join_ms_p50.is_some_and(|j| j > 0.0 && j < 10_000.0));

    // Publishers receive the other publisher's two tracks; the subscriber receives four.
    for p in &report.participants {
        let want = if p.publishes { 2 } else { 4 };
        assert_eq!(p.tracks_received, want, "{}", p.name);
        assert!(p.join_ms.is_some(), "{} got media", p.name);
    }
    // What subscribers got matches what publishers sent: every packet from the first one a
    // subscriber received to the last one sent, the tail included, with nothing missing.
    let publishers: Vec<_> = report.participants.iter().filter(|p| p.publishes).collect();
    for p in &report.participants {
        for t in &p.tracks {
            let publisher = publishers
                .iter()
                .find(|q| q.id == t.publisher_id)
                .expect("a known publisher");
            let sent = if t.kind == "video" {
                publisher.video_packets_sent
            } else {
                publisher.audio_packets_sent
            };
            let (first, last) = (
                t.first_counter.expect("stamps read"),
                t.last_counter.expect("stamps read"),
            );
            assert_eq!(
                u64::from(last) + 1,
                sent,
                "{} got {}'s {} up to the last packet sent",
                p.name,
                publisher.name,
                t.kind
            );
            assert_eq!(
                t.packets,
                u64::from(last - first) + 1,
                "{} missed none of {}'s {}",
                p.name,
                publisher.name,
                t.kind
            );
            assert_eq!(t.lost, Some(0));
            assert_eq!(t.expected, Some(t.packets));
            assert_eq!(t.freezes, 0, "{} <- {} {}", p.name, publisher.name, t.kind);
            eprintln!(
                "{} <- {} {}: packets {}..={} of {sent}",
                p.name, publisher.name, t.kind, first, last
            );
        }
    }
    assert_eq!(
        report.packets_sent,
        publishers.iter().map(|p| p.packets_sent).sum::<u64>()
    );
    assert!(report
        .server
        .packets_forwarded
        .is_some_and(|f| f >= report.packets_received));
    assert!(report.passed());

    // Thresholds turn the same report into a failure.
    let strict = LoadConfig {
        max_p99_ms: Some(p99 / 2.0),
        ..config
    };
    let verdict = Thresholds::check(&strict, &report);
    assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
    assert!(report.table().contains("PASS"));
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["latency"]["p99_ms"].is_number());
    assert_eq!(json["participants"].as_array().unwrap().len(), 3);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_vp8_clip_flows_through() {
    let server = start_server().await;
    let config = LoadConfig {
        clip: Some("builtin".into()),
        subscribers: 0,
        duration: Duration::from_secs(2),
        ..small(server.ws_url())
    };
    let report = run(config).await.expect("load run");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    for p in &report.participants {
        assert_eq!(p.tracks_received, 2, "{}", p.name);
        assert!(
            p.packets_received > 50,
            "{}: {}",
            p.name,
            p.packets_received
        );
    }
    assert_eq!(report.packets_lost, 0);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_is_reported_not_waited_for() {
    let ServerProcess { mut child, url, .. } = spawn_server(&[]).await;
    let config = LoadConfig {
        duration: Duration::from_secs(30),
        pid: child.id(),
        ..small(url)
    };
    let started = Instant::now();
    let load = tokio::spawn(run(config));
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.kill().await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), load)
        .await
        .expect("the load test ends by itself")
        .unwrap()
        .expect("a report");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "it did not wait out the 30 s"
    );
    assert!(!report.failures.is_empty());
    assert!(
        report.failures.iter().any(|f| f.contains("closed")),
        "{:?}",
        report.failures
    );
    assert!(!report.passed());
    assert!(report.table().contains("FAIL"));
    // Media stopped with the server: what was sent after it died shows as lost.
    assert!(report.packets_lost > 0, "{}", report.table());
}

/// The server broken on purpose: every Receiver drops every 10th packet. The report must
/// show it, from the publishers' counters, whatever the SFU did to sequence numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_dropping_every_tenth_packet_is_reported_with_ten_percent_loss() {
    let server = start_server_with(switchboard::Config {
        fault_drop_every_nth_packet: Some(10),
        ..switchboard::Config::ephemeral()
    })
    .await;
    let config = LoadConfig {
        max_loss_percent: Some(1.0),
        ..small(server.ws_url())
    };
    let report = run(config).await.expect("load run");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        (8.0..=12.5).contains(&report.loss_percent),
        "loss {}%\n{}",
        report.loss_percent,
        report.table()
    );
    for p in &report.participants {
        for t in &p.tracks {
            let loss = t.lost.unwrap() as f64 * 100.0 / t.expected.unwrap() as f64;
            assert!(
                (5.0..=15.0).contains(&loss),
                "{} <- {} {}: {loss}%",
                p.name,
                t.publisher_name,
                t.kind
            );
        }
    }
    assert!(!report.passed());
    assert!(report.table().contains("FAIL: loss"), "{}", report.table());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_writes_json_and_gates_on_thresholds() {
    let server = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let run_cli = |extra: &[&str]| {
        let mut args = vec![
            "load".to_string(),
            "--url".into(),
            server.ws_url(),
            "--publishers".into(),
            "2".into(),
            "--duration".into(),
            "1.5".into(),
            "--quiet".into(),
            "--json".into(),
            json.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        tokio::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(args)
            .output()
    };
    let ok = run_cli(&["--max-loss-percent", "1", "--max-p99-ms", "1000"])
        .await
        .unwrap();
    let table = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{table}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        table.contains("latency publisher -> subscriber") && table.contains("PASS"),
        "{table}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["participants_connected"], 2);
    assert!(report["latency"]["p50_ms"]
        .as_f64()
        .is_some_and(|v| v > 0.0));
    assert!(report["server"]["packets_forwarded"]
        .as_u64()
        .is_some_and(|v| v > 0));

    // A latency bound no network meets: the run fails with exit code 2 and says why.
    let strict = run_cli(&["--max-p99-ms", "0.000001"]).await.unwrap();
    assert_eq!(strict.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&strict.stdout).contains("FAIL: latency p99"));
    server.shutdown().await.unwrap();
}

/// A lossy downlink: every 20th video datagram to a subscriber is lost after encryption, as a
/// network would lose it. The subscriber's NACKs must bring every one back from the track's
/// shared history, so the publishers' own counters show no loss, and the server says how
/// many it sent again. Without retransmission this run loses 5 % of its video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_lost_on_the_way_to_a_subscriber_is_retransmitted_on_nack() {
    let server = start_server_with(switchboard::Config {
        fault_drop_sent_video_every_nth: Some(20),
        // Repair on its own: the fault drops every 20th datagram whatever it is, and the
        // estimator's padding probes would shift which ones (a padding packet is not repaired).
        no_bwe: true,
        ..switchboard::Config::ephemeral()
    })
    .await;
    let config = LoadConfig {
        duration: Duration::from_secs(6),
        video_bitrate: 600_000,
        ..small(server.ws_url())
    };
    let report = run(config).await.expect("load run");
    let m = server.metrics();
    let video: Vec<_> = report
        .participants
        .iter()
        .flat_map(|p| p.tracks.iter().map(move |t| (p, t)))
        .filter(|(_, t)| t.kind == "video")
        .collect();
    assert!(!video.is_empty(), "{}", report.table());
    for (p, t) in &video {
        let (lost, expected) = (t.lost.unwrap(), t.expected.unwrap());
        assert!(
            expected > 200,
            "{} <- {}: {expected} packets",
            p.name,
            t.publisher_name
        );
        assert!(
            lost * 1000 <= expected,
            "{} <- {} video: {lost} of {expected} lost\n{}\n{m:?}",
            p.name,
            t.publisher_name,
            report.table()
        );
    }
    assert!(m.nacks_received > 0, "{m:?}");
    assert!(m.retransmissions > 0, "{m:?}");
    assert!(m.sender_reports > 0, "{m:?}");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

/// The synthetic VP8 the load tester sends must read as the server reads it: keyframes where
/// the publisher says so, and nothing else (the client has its own reader in its unit tests;
/// this holds its prefix against the server's).
#[test]
fn the_synthetic_vp8_reads_as_the_server_reads_it() {
    use switchboard::load::payload::{read_stamp, vp8_prefix, vp8_prefix_with, write_stamp, Stamp};
    use switchboard::media::keyframe::vp8_is_keyframe;
    use switchboard::media::vp8::keyframe_size;
    let stamp = Stamp {
        sent_at_micros: 123_456_789,
        publisher_id: "p0123".into(),
        counter: 42,
        layer: None,
    };
    let mut keyframe = Vec::new();
    vp8_prefix(&mut keyframe, true, true);
    write_stamp(&mut keyframe, &stamp, 200);
    assert!(vp8_is_keyframe(&keyframe));
    assert_eq!(read_stamp(&keyframe), Some(stamp.clone()));
    let mut delta = Vec::new();
    vp8_prefix(&mut delta, true, false);
    write_stamp(&mut delta, &stamp, 0);
    assert!(!vp8_is_keyframe(&delta));
    let mut middle = Vec::new();
    vp8_prefix(&mut middle, false, true);
    write_stamp(&mut middle, &stamp, 0);
    assert!(!vp8_is_keyframe(&middle));
    assert_eq!(keyframe_size(&keyframe), None, "no size without simulcast");
    // A simulcast layer's keyframe: picture id in the descriptor, and the size the server
    // chooses layers by.
    let mut layered = Vec::new();
    vp8_prefix_with(
        &mut layered,
        true,
        true,
        Some(0x4321 & 0x7fff),
        Some((640, 360)),
    );
    write_stamp(
        &mut layered,
        &Stamp {
            layer: Some(1),
            ..stamp.clone()
        },
        300,
    );
    assert!(vp8_is_keyframe(&layered));
    assert_eq!(keyframe_size(&layered), Some((640, 360)));
    assert_eq!(read_stamp(&layered).unwrap().layer, Some(1));
    let mut delta = Vec::new();
    vp8_prefix_with(&mut delta, true, false, Some(5), Some((640, 360)));
    assert!(!vp8_is_keyframe(&delta));
    assert_eq!(keyframe_size(&delta), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_subscribers_get_one_layer_each_and_a_small_view_moves_one_down() {
    let server = start_server().await;
    let room = SimulcastRoom::join(&server.ws_url(), &[LinkConfig::default(); 2]).await;
    // Nobody said how large they show it: both end up on the top layer.
    for i in 0..2 {
        room.wait_layer(i, 2).await;
    }
    let before = [room.video(0), room.video(1)];
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (i, then) in before.iter().enumerate() {
        let now = room.video(i);
        let (was, is) = (then.runs.last().unwrap(), now.runs.last().unwrap());
        assert_eq!((was.layer, is.layer), (2, 2));
        assert!(
            is.last_counter() > was.last_counter() + 20,
            "subscriber {i}: the publisher's counters advance: {was:?} then {is:?}"
        );
    }

    // Subscriber 0 shows it small: 300 x 170 is covered by the low layer (320 x 180).
    room.subscribers[0].set_view_size(&room.track_id(), 300, 170);
    room.wait_layer(0, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (low, high) = (room.video(0), room.video(1));
    assert_eq!(low.layer(), Some(0));
    let on_low = low.runs.last().unwrap();
    assert!(on_low.received > 30, "{on_low:?}");
    assert_eq!(
        high.layer(),
        Some(2),
        "the other subscriber stays on the top"
    );
    assert_eq!(
        high.runs.last().unwrap().started_at,
        before[1].runs.last().unwrap().started_at,
        "... without a switch: {:?}",
        high.runs
    );
    assert_continuous(&low, "the small view");
    assert_continuous(&high, "the large view");
    // The layers are the publisher's: each run's counters are its layer's own, which have
    // counted every packet of that layer since the publisher started.
    let stats = &room.publisher.publish_stats;
    let sent: Vec<u64> = stats
        .layer_packets
        .iter()
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    assert!(sent.iter().all(|&n| n > 50), "{sent:?}");
    assert!(u64::from(on_low.last_counter()) < sent[0]);
    assert!(
        sent[2] > sent[1] && sent[1] > sent[0],
        "{sent:?}: bitrates rise by layer"
    );
    // The switch down asked the publisher for a keyframe of the low layer.
    let key = stats.layer_keyframes[0].load(std::sync::atomic::Ordering::Relaxed);
    assert!(key >= 2, "{key} keyframes of layer 0");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulcast_load_run_reports_layers_over_time_without_loss() {
    let server = start_server().await;
    let config = LoadConfig {
        publishers: 1,
        subscribers: 2,
        simulcast: true,
        duration: Duration::from_secs(4),
        video_bitrate: 600_000,
        ..small(server.ws_url())
    };
    let report = run(config).await.expect("load run");
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(report.packets_lost, 0, "{}", report.table());
    for p in report.participants.iter().filter(|p| !p.publishes) {
        let video = p.tracks.iter().find(|t| t.kind == "video").unwrap();
        assert!(video.simulcast, "{}", p.name);
        assert_eq!(video.layer_seconds.len(), 3);
        assert!(
            video.layer_seconds[2] > 2.0,
            "{}: {:?}",
            p.name,
            video.layer_seconds
        );
        assert_eq!(video.expected, Some(video.packets), "{}", p.name);
        assert!(video.first_counter.is_none());
        assert!(!video.layer_runs.is_empty());
        assert!(video.timeline.len() >= 4, "{:?}", video.timeline);
        assert!(video.timeline.iter().any(|s| s.layer == Some(2)));
        assert!(
            video.mean_bitrate_bps > 300_000.0,
            "{}",
            video.mean_bitrate_bps
        );
        let audio = p.tracks.iter().find(|t| t.kind == "audio").unwrap();
        assert!(!audio.simulcast && audio.layer_seconds.is_empty());
        assert_eq!(audio.lost, Some(0));
    }
    let table = report.table();
    assert!(table.contains("sub-0-0 <- pub-0-0  q "), "{table}");
    let page = switchboard::load::html::render(&report);
    assert!(page.contains("<svg") && page.contains("simulcast layer"));
    assert!(
        !page.contains("<script src") && !page.contains("<link"),
        "self-contained"
    );
    server.shutdown().await.unwrap();
}

/// The emulated downlink on real peers: a 300 kbit/s link with 75 ms of delay in front of one
/// subscriber caps what it receives and delays it, the other gets everything at once; raised
/// mid-run, the shaped one gets everything too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_downlink_caps_and_delays_and_can_be_raised_mid_run() {
    // The tool's link on its own: without the server's estimator, which would fit the stream
    // to the link (tests/bandwidth.rs).
    let server = start_server_with(switchboard::Config {
        no_bwe: true,
        ..switchboard::Config::ephemeral()
    })
    .await;
    let url = server.ws_url();
    let shaped = LinkConfig {
        delay: Duration::from_millis(75),
        ..downlink(300_000)
    };
    let free = Client::join(&url, "shaped", "free").await.unwrap();
    let join = JoinOptions {
        downlink: shaped,
        ..JoinOptions::default()
    };
    let slow = Client::join_with(&url, "shaped", "slow", &join)
        .await
        .unwrap();
    let publisher = Client::join(&url, "shaped", "pub").await.unwrap();
    publisher
        .publish(PublishOptions {
            audio: false,
            video_bitrate_bps: 800_000,
            ..PublishOptions::default()
        })
        .await
        .unwrap();
    let video = |c: &Client| {
        c.received()
            .into_values()
            .find(|t| t.kind == "video")
            .expect("video")
    };
    // The payload bits of the last `n` whole seconds, per second.
    let recent_bitrate = |t: &RemoteTrackStats, n: usize| {
        let seconds = t.timeline();
        let whole = &seconds[..seconds.len().saturating_sub(1)];
        let last = &whole[whole.len().saturating_sub(n)..];
        last.iter().map(|s| s.bytes * 8).sum::<u64>() / last.len().max(1) as u64
    };
    for c in [&free, &slow] {
        c.wait_received("video", WAIT, |r| r.values().any(|t| t.packets > 10))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (f, s) = (video(&free), video(&slow));
    let (fast_rate, slow_rate) = (recent_bitrate(&f, 2), recent_bitrate(&s, 2));
    assert!(fast_rate > 650_000, "unshaped: {fast_rate} bit/s");
    assert!(
        (200_000..=310_000).contains(&slow_rate),
        "300 kbit/s link: {slow_rate} bit/s of payload"
    );
    let median = |t: &RemoteTrackStats| {
        t.latency_us
            .as_ref()
            .map_or(0, |h| h.value_at_quantile(0.5))
    };
    assert!(median(&s) >= 75_000, "{} us", median(&s));
    assert!(median(&f) < 50_000, "{} us", median(&f));
    let link = slow.downlink_stats();
    assert!(link.overflowed > 0, "the queue overflowed: {link:?}");
    assert_eq!(free.downlink_stats().datagrams, 0, "nothing to shape");

    // The network gets faster: everything comes through.
    slow.set_downlink(None);
    assert_eq!(slow.link().rate_bps, None);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let raised = recent_bitrate(&video(&slow), 2);
    assert!(raised > 650_000, "raised: {raised} bit/s");
    server.shutdown().await.unwrap();
}
