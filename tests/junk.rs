//! Junk on the media port: a call under a flood of malformed datagrams loses nothing, and the
//! server's log does not grow with the flood.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rand::Rng;
use switchboard::load::client::Client;
use switchboard::load::publish::PublishOptions;

/// A malformed datagram of one of the shapes the media port sees: random bytes, and things
/// that look like STUN, DTLS or RTP at first glance.
fn junk(rng: &mut impl Rng, i: usize) -> Vec<u8> {
    let len = rng.random_range(1..1200);
    let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
    match i % 4 {
        0 => {}
        1 => {
            // STUN Binding request header with a bogus body and USERNAME.
            d.resize(d.len().max(28), 0);
            d[0..2].copy_from_slice(&[0, 1]);
            d[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        }
        2 => d[0] = 22,   // DTLS handshake
        _ => d[0] = 0x80, // RTP
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_junk_datagrams_disturbs_no_call_and_no_log() {
    let ServerProcess {
        child,
        url,
        udp_port,
        logged,
    } = spawn_server(&["--rtc-ip", "127.0.0.1"]).await;

    let publisher = Client::join(&url, "junk", "speaker").await.unwrap();
    let listener = Client::join(&url, "junk", "listener").await.unwrap();
    publisher.publish(PublishOptions::default()).await.unwrap();
    listener
        .wait_received("the call flowing", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 20)
        })
        .await
        .unwrap();
    let log_before = logged.load(Ordering::Relaxed);
    let before: Vec<(u32, u64)> = counters(&listener);

    // 20,000 junk datagrams over about two seconds, from a stranger.
    let stranger = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target = format!("127.0.0.1:{udp_port}");
    let mut rng = rand::rng();
    for i in 0..20_000 {
        let d = junk(&mut rng, i);
        let _ = stranger.send_to(&d, &target).await;
        if i % 200 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    publisher.stop_publishing();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Everything the publisher sent since before the flood arrived.
    let sent = [
        publisher
            .publish_stats
            .audio_packets
            .load(Ordering::Relaxed),
        publisher
            .publish_stats
            .video_packets
            .load(Ordering::Relaxed),
    ];
    let received = listener.received();
    assert_eq!(received.len(), 2);
    for t in received.values() {
        let sent = if t.kind == "audio" { sent[0] } else { sent[1] };
        let first = u64::from(t.first_counter.unwrap());
        assert_eq!(
            t.distinct,
            sent - first,
            "{} lost packets during the flood",
            t.kind
        );
        assert_eq!(t.last_counter.map(u64::from), Some(sent - 1));
    }
    assert!(before.iter().all(|(_, n)| *n > 0));
    let grown = logged.load(Ordering::Relaxed) - log_before;
    assert!(
        grown < 4096,
        "the log grew {grown} bytes with the flood (default log level)"
    );
    // The flood was seen, and counted.
    let metrics = http_get(&url.replace("ws://", "http://").replace("/ws", "/metrics")).await;
    let unrouted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_datagrams_unrouted_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the counter");
    assert!(unrouted >= 19_000, "{unrouted} counted");
    publisher.leave().await;
    listener.leave().await;
    drop(child);
}

fn counters(client: &Client) -> Vec<(u32, u64)> {
    client
        .received()
        .values()
        .map(|t| (t.first_counter.unwrap_or(0), t.distinct))
        .collect()
}

async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(url).unwrap();
    let mut s = tokio::net::TcpStream::connect((url.host_str().unwrap(), url.port().unwrap()))
        .await
        .unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        url.path()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}
