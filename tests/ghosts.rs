//! Ghosts: participants whose media path died while their signaling socket lives on must not
//! stay in the room as frozen tiles.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchboard::load::client::Client;
use switchboard::load::publish::PublishOptions;
use switchboard::load::wire::ServerMessage;

async fn server() -> switchboard::Server {
    start_server_with(switchboard::Config {
        media_timeout: Duration::from_secs(3),
        ..switchboard::Config::ephemeral()
    })
    .await
}

async fn left_within(watcher: &Client, who: &str, bound: Duration) -> Duration {
    let started = Instant::now();
    watcher
        .wait_for("participant_left", bound, |m| {
            matches!(m, ServerMessage::ParticipantLeft { participant_id } if participant_id == who)
        })
        .await
        .unwrap_or_else(|e| panic!("{who} still in the room: {e}"));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_media_stops_is_removed() {
    let server = server().await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "ghost", "watcher").await.unwrap();
    let frozen = Client::join(&url, "ghost", "frozen").await.unwrap();
    frozen.publish(PublishOptions::default()).await.unwrap();
    watcher
        .wait_received("frozen's media", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 10)
        })
        .await
        .unwrap();
    // The encoder stops; the socket and the peer connections stay up (pings still answered).
    frozen.stop_publishing();
    let took = left_within(&watcher, &frozen.id, Duration::from_secs(10)).await;
    eprintln!("a silent publisher was removed after {took:?} (timeout 3 s)");
    assert!(server.metrics().media_timeouts >= 1);
    assert!(
        frozen.signaling_closed() || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            frozen.signaling_closed()
        }
    );
    watcher.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_peer_connections_without_a_word_is_removed() {
    let server = server().await;
    let url = server.ws_url();
    let speaker = Client::join(&url, "ghost2", "speaker").await.unwrap();
    speaker.publish(PublishOptions::default()).await.unwrap();
    // The quitter only watches: nothing it publishes can go silent; only its connection dies.
    let quitter = Client::join(&url, "ghost2", "quitter").await.unwrap();
    quitter
        .wait_received("the speaker's media", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 10)
        })
        .await
        .unwrap();
    let watcher = &speaker;
    quitter.close_peer_connections().await;
    let took = left_within(watcher, &quitter.id, Duration::from_secs(30)).await;
    eprintln!("a client without peer connections was removed after {took:?}");
    speaker.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// Muting is not dying: a publisher that mutes and sends nothing stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_silent_publisher_stays() {
    let server = server().await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "ghost3", "watcher").await.unwrap();
    let shy = Client::join(&url, "ghost3", "shy").await.unwrap();
    shy.publish(PublishOptions::default()).await.unwrap();
    watcher
        .wait_received("shy's media", WAIT, |r| r.len() == 2)
        .await
        .unwrap();
    for kind in ["audio", "video"] {
        shy.send_json(serde_json::json!({
            "type": "mute", "track_id": format!("{}-{kind}", shy.id), "muted": true
        }));
    }
    shy.stop_publishing();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        server.rooms()[0]
            .participants
            .iter()
            .any(|p| p.id == shy.id),
        "a muted participant was removed"
    );
    shy.leave().await;
    watcher.leave().await;
    server.shutdown().await.unwrap();
}

/// A client that offers to publish but whose connection never comes up (its ICE never reaches
/// the server: a firewall, a crashed tab) is removed: nobody would ever see or hear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_whose_connection_never_comes_up_is_removed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = server().await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "ghost4", "watcher").await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let send = |v: serde_json::Value| Message::text(v.to_string());
    ws.send(send(
        serde_json::json!({"type": "join", "room": "ghost4", "name": "stuck"}),
    ))
    .await
    .unwrap();
    // A real offer's shape; nothing behind it will ever answer a connectivity check.
    let fingerprint = (0..32)
        .map(|i| format!("{i:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let sdp = format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
         a=msid-semantic: WMS s\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
         a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:stuk\r\na=ice-pwd:neverchecksneverchecks00\r\n\
         a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:0\r\na=sendonly\r\n\
         a=msid:s audio-1\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:1111 cname:x\r\n"
    );
    let mut stuck_id = None;
    let mut answered = false;
    let mut close = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while close.is_none() {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the stuck publisher is closed in time")
            .expect("socket open")
            .expect("frame");
        match frame {
            Message::Text(text) => {
                let m: serde_json::Value = serde_json::from_str(&text).unwrap();
                match m["type"].as_str() {
                    Some("joined") => {
                        stuck_id = m["participant"]["id"].as_str().map(str::to_owned);
                        ws.send(send(
                            serde_json::json!({"type": "offer", "pc": "publisher", "sdp": sdp}),
                        ))
                        .await
                        .unwrap();
                    }
                    Some("answer") => answered = true,
                    _ => {}
                }
            }
            Message::Close(frame) => close = frame,
            _ => {}
        }
    }
    assert!(answered, "the offer was answered");
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("never connected"), "{}", close.reason);
    let stuck_id = stuck_id.unwrap();
    left_within(&watcher, &stuck_id, Duration::from_secs(5)).await;
    assert!(server.metrics().media_timeouts >= 1);
    watcher.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}
