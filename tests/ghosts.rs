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
