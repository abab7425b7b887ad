//! Signaling: chat, leave and drop, errors; each with other participants watching.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard::load::client::Client;
use switchboard::load::publish::PublishOptions;
use switchboard::load::wire::ServerMessage;
use switchboard::Config;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_socket(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
}

/// Next server JSON message, skipping pings.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = frame {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

/// Reads until the server's close frame; returns its status code.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => return u16::from(frame.expect("close frame").code),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn expect_error(ws: &mut Ws, text: &str, code: &str) -> serde_json::Value {
    send(ws, text).await;
    let reply = next_non_negotiation(ws).await;
    assert_eq!(reply["type"], "error", "reply to {text}: {reply}");
    assert_eq!(reply["code"], code, "reply to {text}: {reply}");
    assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_the_others_with_the_server_set_sender_and_not_the_sender() {
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "chat", "alice").await.unwrap();
    let b = Client::join(&url, "chat", "bob").await.unwrap();
    let c = Client::join(&url, "chat", "carol").await.unwrap();
    let other_room = Client::join(&url, "quiet", "olga").await.unwrap();
    // Wait until everyone's chat channel is up: a ping round through each.
    for client in [&b, &c, &other_room] {
        client.chat_raw("not json").await.unwrap();
    }
    for client in [&b, &c, &other_room] {
        wait_until(|| !client.chat_errors().is_empty()).await;
    }
    // A client may not claim to be someone else: `from` is the server's.
    a.chat_raw(r#"{"text":"hello from alice","from":{"id":"px","name":"mallory"}}"#)
        .await
        .unwrap();
    for client in [&b, &c] {
        wait_until(|| !client.chat_received().is_empty()).await;
        let got = client.chat_received();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].text, "hello from alice");
        assert_eq!(got[0].from.id, a.id);
        assert_eq!(got[0].from.name, "alice");
        assert_eq!(got[0].kind, "chat");
        assert!(got[0].ts > 1_600_000_000_000);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(a.chat_received().is_empty(), "the sender is not echoed");
    assert!(
        other_room.chat_received().is_empty(),
        "chat stays in its room"
    );

    // The longest text, every byte of it escaped to six in JSON both ways, still fits the
    // data channel's message size.
    let escaped = "\u{1}".repeat(4096);
    a.chat(&escaped).await.unwrap();
    wait_until(|| b.chat_received().len() == 2).await;
    assert_eq!(b.chat_received()[1].text, escaped);

    // Malformed and oversized messages get an error on the channel and go nowhere.
    a.chat_raw(&serde_json::json!({"text": "x".repeat(5000)}).to_string())
        .await
        .unwrap();
    a.chat_raw(r#"{"txt":"typo"}"#).await.unwrap();
    wait_until(|| a.chat_errors().len() >= 2).await;
    for e in a.chat_errors() {
        let v: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "bad_request");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.chat_received().len(), 2);
    assert_eq!(server.metrics().chat_messages, 2);
    for client in [a, b, c, other_room] {
        client.leave().await;
    }
    server.shutdown().await.unwrap();
}

async fn wait_until(pred: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !pred() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_and_socket_drop_tell_the_others_and_free_everything() {
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "bye", "alice").await.unwrap();
    let b = Client::join(&url, "bye", "bob").await.unwrap();
    let c = Client::join(&url, "bye", "carol").await.unwrap();
    for client in [&a, &b, &c] {
        client.publish(PublishOptions::default()).await.unwrap();
    }
    for client in [&a, &b, &c] {
        client
            .wait_received("four tracks", WAIT, |r| {
                r.len() == 4 && r.values().all(|t| t.packets > 5)
            })
            .await
            .unwrap();
    }
    let (_, body) = get(&format!("{}/api/rooms", server.http_url())).await;
    let rooms: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rooms["rooms"][0]["name"], "bye");
    assert_eq!(
        rooms["rooms"][0]["participants"].as_array().unwrap().len(),
        3
    );
    assert_eq!(
        rooms["rooms"][0]["participants"][0]["tracks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Bob leaves politely.
    let bob_id = b.id.clone();
    b.leave().await;
    for client in [&a, &c] {
        let unpublished = client
            .wait_for("track_unpublished", WAIT, |m| matches!(m, ServerMessage::TrackUnpublished { participant_id, .. } if *participant_id == bob_id))
            .await
            .unwrap();
        assert!(matches!(
            unpublished,
            ServerMessage::TrackUnpublished { .. }
        ));
        client
            .wait_for("participant_left", WAIT, |m| matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == bob_id))
            .await
            .unwrap();
    }
    wait_metrics(&server, "bob's tracks gone", |m| {
        m.participants == 2 && m.published_tracks == 4 && m.downtracks == 4
    })
    .await;

    // Carol's tab dies: no leave, the socket just drops.
    let carol_id = c.id.clone();
    c.close().await;
    a.wait_for("participant_left for carol", WAIT, |m| matches!(m, ServerMessage::ParticipantLeft { participant_id } if *participant_id == carol_id))
        .await
        .unwrap();
    wait_metrics(&server, "only alice left", |m| {
        m.participants == 1 && m.published_tracks == 2 && m.downtracks == 0
    })
    .await;
    // The streams alice receives stop: nothing of bob or carol still flows.
    let before = a.received();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = a.received();
    for (key, stats) in &after {
        assert_eq!(
            stats.packets, before[key].packets,
            "{key:?} stopped flowing"
        );
    }

    a.leave().await;
    wait_metrics(&server, "room gone and everything freed", all_freed).await;
    let (status, body) = get(&format!("{}/api/rooms", server.http_url())).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["rooms"],
        serde_json::json!([])
    );
    let (_, metrics) = get(&format!("{}/metrics", server.http_url())).await;
    assert!(metrics.contains("switchboard_participants 0"));
    assert!(metrics.contains("switchboard_packets_out_total "));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_track_renegotiates_it_away_from_the_others() {
    let server = start_server().await;
    let url = server.ws_url();
    let a = Client::join(&url, "unpub", "alice").await.unwrap();
    let b = Client::join(&url, "unpub", "bob").await.unwrap();
    a.publish(PublishOptions::default()).await.unwrap();
    b.wait_received("alice's two tracks", WAIT, |r| {
        r.len() == 2 && r.values().all(|t| t.packets > 5)
    })
    .await
    .unwrap();
    a.unpublish("video").await.unwrap();
    let video_id = format!("{}-video", a.id);
    b.wait_for(
        "track_unpublished",
        WAIT,
        |m| matches!(m, ServerMessage::TrackUnpublished { track_id, .. } if *track_id == video_id),
    )
    .await
    .unwrap();
    wait_metrics(&server, "one track left", |m| {
        m.published_tracks == 1 && m.downtracks == 1
    })
    .await;
    let audio_before = b.received()[&(a.id.clone(), format!("{}-audio", a.id))].packets;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.received()[&(a.id.clone(), format!("{}-audio", a.id))].packets > audio_before,
        "audio still flows"
    );
    a.leave().await;
    b.leave().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_a_client_can_provoke_leaves_the_connection_and_the_room_alone() {
    let mut config = Config::ephemeral();
    config.max_participants_per_room = 2;
    let server = start_server_with(config).await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "errs", "watcher").await.unwrap();
    let mut ws = raw_socket(&url).await;

    // Before join.
    expect_error(&mut ws, "{not json", "bad_request").await;
    expect_error(&mut ws, r#"{"no_type":1}"#, "bad_request").await;
    let e = expect_error(&mut ws, r#"{"type":"dance"}"#, "unknown_type").await;
    assert_eq!(e["request_type"], "dance");
    let e = expect_error(
        &mut ws,
        r#"{"type":"offer","pc":"publisher","sdp":"v=0"}"#,
        "not_joined",
    )
    .await;
    assert_eq!(e["request_type"], "offer");
    expect_error(
        &mut ws,
        r#"{"type":"mute","track_id":"t","muted":true}"#,
        "not_joined",
    )
    .await;
    send(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    expect_error(
        &mut ws,
        r#"{"type":"join","room":"bad room!","name":"x"}"#,
        "invalid_room",
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"join","room":"","name":"x"}"#,
        "invalid_room",
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"join","room":"errs","name":"   "}"#,
        "invalid_name",
    )
    .await;
    expect_error(
        &mut ws,
        &format!(
            r#"{{"type":"join","room":"errs","name":"{}"}}"#,
            "n".repeat(65)
        ),
        "invalid_name",
    )
    .await;
    expect_error(
        &mut ws,
        r#"{"type":"join","room":5,"name":"x"}"#,
        "bad_request",
    )
    .await;
    send(&mut ws, r#"{"type":"binary next"}"#).await;
    let _ = next_json(&mut ws).await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_request");

    // Join, then misbehave.
    send(
        &mut ws,
        r#"{"type":"join","room":"errs","name":"mallory","unknown_field":true}"#,
    )
    .await;
    let joined = next_json(&mut ws).await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(joined["participants"][0]["name"], "watcher");
    assert!(joined["ice_servers"].is_array());
    let e = expect_error(
        &mut ws,
        r#"{"type":"join","room":"errs","name":"again"}"#,
        "already_joined",
    )
    .await;
    assert_eq!(e["request_type"], "join");
    // The server's subscriber offer may come in between; skip it while expecting errors.
    send(
        &mut ws,
        r#"{"type":"offer","pc":"publisher","sdp":"this is not SDP"}"#,
    )
    .await;
    let e = next_non_negotiation(&mut ws).await;
    assert_eq!(e["code"], "invalid_sdp", "{e}");
    send(&mut ws, r#"{"type":"offer","pc":"subscriber","sdp":"v=0"}"#).await;
    assert_eq!(next_non_negotiation(&mut ws).await["code"], "bad_request");
    send(&mut ws, r#"{"type":"mute","track_id":"nope","muted":true}"#).await;
    assert_eq!(next_non_negotiation(&mut ws).await["code"], "bad_request");
    send(
        &mut ws,
        r#"{"type":"answer","pc":"subscriber","sdp":"garbage"}"#,
    )
    .await;
    assert_eq!(next_non_negotiation(&mut ws).await["code"], "invalid_sdp");

    // The room is full (two participants): a third is refused.
    let refused = Client::join(&url, "errs", "third").await;
    assert!(
        matches!(refused, Err(switchboard::load::ClientError::Refused { ref code, .. }) if code == "room_full"),
        "{:?}",
        refused.err()
    );

    // The watcher saw mallory join and nothing else went wrong for it.
    watcher
        .wait_for("participant_joined", WAIT, |m| matches!(m, ServerMessage::ParticipantJoined { participant } if participant.name == "mallory"))
        .await
        .unwrap();
    assert!(watcher
        .drain_events()
        .await
        .iter()
        .all(|m| !matches!(m, ServerMessage::Error { .. })));

    // Oversized frame: too_large, then close 1009.
    send(
        &mut ws,
        &format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(70 * 1024)),
    )
    .await;
    let e = next_non_negotiation(&mut ws).await;
    assert_eq!(e["code"], "too_large");
    assert_eq!(close_code(&mut ws).await, 1009);
    watcher
        .wait_for("mallory leaves", WAIT, |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await
        .unwrap();
    send_ping_pong(&watcher).await;
    watcher.leave().await;
    server.shutdown().await.unwrap();
}

async fn send_ping_pong(client: &Client) {
    client.send_json(serde_json::json!({"type": "ping"}));
    client
        .wait_for("pong", WAIT, |m| matches!(m, ServerMessage::Pong))
        .await
        .unwrap();
}

async fn next_non_negotiation(ws: &mut Ws) -> serde_json::Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] != "offer" && v["type"] != "candidate" {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_token_and_rate_limit() {
    let mut config = Config::ephemeral();
    config.auth_token = Some("s3cret".into());
    config.message_rate_per_sec = 5;
    let server = start_server_with(config).await;
    let url = server.ws_url();
    let mut ws = raw_socket(&url).await;
    expect_error(
        &mut ws,
        r#"{"type":"join","room":"r","name":"x","token":"wrong"}"#,
        "unauthorized",
    )
    .await;
    assert_eq!(close_code(&mut ws).await, 4001);
    let ok = Client::join_with_token(&url, "r", "x", Some("s3cret"))
        .await
        .expect("right token joins");

    // A burst over the rate gets rate_limited, and the socket stays usable.
    let mut ws = raw_socket(&url).await;
    for _ in 0..30 {
        send(&mut ws, r#"{"type":"ping"}"#).await;
    }
    let mut limited = 0;
    let mut pongs = 0;
    for _ in 0..30 {
        let v = next_json(&mut ws).await;
        match v["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if v["code"] == "rate_limited" => limited += 1,
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        limited > 0 && pongs >= 10,
        "limited {limited}, pongs {pongs}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    ok.leave().await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_dropped_and_counts_as_leave() {
    let mut config = Config::ephemeral();
    config.idle_timeout = Duration::from_millis(800);
    config.ping_interval = Duration::from_secs(30);
    let server = start_server_with(config).await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "idle", "watcher").await.unwrap();
    // A raw socket that joins and then never reads or writes again.
    let mut ws = raw_socket(&url).await;
    send(&mut ws, r#"{"type":"join","room":"idle","name":"sleeper"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "joined");
    // The watcher is held to the same idle timeout: it keeps talking, the sleeper does not.
    let keep_alive = async {
        loop {
            watcher.send_raw(r#"{"type":"ping"}"#);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let left = tokio::select! {
        left = watcher.wait_for("sleeper dropped", WAIT, |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        }) => left,
        _ = keep_alive => unreachable!("the keep-alive loop never ends"),
    };
    left.unwrap();
    drop(ws);
    watcher.leave().await;
    server.shutdown().await.unwrap();
}

/// SDP that parses as SDP but lies: none of it may take the server down or leak the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sdp_gets_errors_and_leaks_nothing() {
    let server = start_server().await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "sdp", "watcher").await.unwrap();
    let hostile = [
        "v=0\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96\r\na=msid:\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1 2 3\r\nm=audio 99999999999 UDP/TLS/RTP/SAVPF 300\r\na=mid:0\r\na=rtpmap:300 opus/48000/2\r\na=ssrc:-1 cname:x\r\na=fingerprint:sha-256 zz\r\na=ice-ufrag:\r\na=ice-pwd:\r\n",
        "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:70000\r\na=max-message-size:-5\r\n",
    ];
    for round in 0..2 {
        let mut ws = raw_socket(&url).await;
        send(
            &mut ws,
            &format!(r#"{{"type":"join","room":"sdp","name":"mallory{round}"}}"#),
        )
        .await;
        assert_eq!(next_json(&mut ws).await["type"], "joined");
        for sdp in hostile {
            let offer = serde_json::json!({"type": "offer", "pc": "publisher", "sdp": sdp});
            send(&mut ws, &offer.to_string()).await;
            let reply = next_non_negotiation(&mut ws).await;
            assert_eq!(reply["type"], "error", "{reply}");
            let answer = serde_json::json!({"type": "answer", "pc": "subscriber", "sdp": sdp});
            send(&mut ws, &answer.to_string()).await;
            let reply = next_non_negotiation(&mut ws).await;
            assert_eq!(reply["type"], "error", "{reply}");
        }
        send(&mut ws, r#"{"type":"ping"}"#).await;
        assert_eq!(
            next_non_negotiation(&mut ws).await["type"],
            "pong",
            "the socket still works"
        );
        drop(ws);
    }
    send_ping_pong(&watcher).await;
    wait_metrics(&server, "only the watcher left", |m| {
        m.participants == 1 && m.websockets == 1 && m.peer_connections == 1
    })
    .await;
    watcher.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// A client that joins with its microphone off mutes the track right after its offer,
/// before any media: the state holds, reaches the others with the track, and a late joiner
/// sees it in `joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_muted_before_its_media_is_published_muted() {
    let server = start_server().await;
    let url = server.ws_url();
    let alice = Client::join(&url, "muted", "alice").await.unwrap();
    let bob = Client::join(&url, "muted", "bob").await.unwrap();
    alice
        .publish(PublishOptions {
            start_muted: vec!["audio".into()],
            ..PublishOptions::default()
        })
        .await
        .unwrap();
    let audio_id = format!("{}-audio", alice.id);
    let video_id = format!("{}-video", alice.id);
    // Both announcements, in whatever order the media arrived.
    let mut published = std::collections::HashMap::new();
    while published.len() < 2 {
        let message = bob
            .wait_for("track_published", WAIT, |m| {
                matches!(m, ServerMessage::TrackPublished { .. })
            })
            .await
            .unwrap();
        if let ServerMessage::TrackPublished { track, .. } = message {
            published.insert(track.id.clone(), track.muted);
        }
    }
    assert_eq!(published.get(&audio_id), Some(&true), "{published:?}");
    assert_eq!(published.get(&video_id), Some(&false), "{published:?}");
    let carol = Client::join(&url, "muted", "carol").await.unwrap();
    let alice_state = carol
        .participants_at_join
        .iter()
        .find(|p| p.id == alice.id)
        .expect("alice in joined");
    for t in &alice_state.tracks {
        assert_eq!(t.muted, t.id == audio_id, "{} in carol's joined", t.id);
    }
    let errors: Vec<_> = alice
        .drain_events()
        .await
        .into_iter()
        .filter(|m| matches!(m, ServerMessage::Error { .. }))
        .collect();
    assert!(errors.is_empty(), "alice got {errors:?}");
    // Unmuting later works as before.
    alice.send_json(serde_json::json!({"type": "mute", "track_id": audio_id, "muted": false}));
    bob.wait_for("track_muted false", WAIT, |m| {
        matches!(m, ServerMessage::TrackMuted { track_id, muted: false, .. } if *track_id == audio_id)
    })
    .await
    .unwrap();
    for c in [alice, bob, carol] {
        c.leave().await;
    }
    server.shutdown().await.unwrap();
}

/// An offer the server refuses halfway (a candidate naming a host, say) must not leave the
/// publisher connection waiting for an answer: the client's next, good offer goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_offer_does_not_block_the_next() {
    let server = start_server().await;
    let url = server.ws_url();
    let watcher = Client::join(&url, "retry", "watcher").await.unwrap();
    let publisher = Client::join(&url, "retry", "publisher").await.unwrap();
    let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n\
a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:1234 cname:x\r\n\
a=msid:s t\r\na=candidate:1 1 udp 2130706431 host.invalid 9999 typ host\r\n";
    publisher.send_json(serde_json::json!({"type": "offer", "pc": "publisher", "sdp": sdp}));
    let refused = publisher
        .wait_for("the refusal", WAIT, |m| {
            matches!(m, ServerMessage::Error { .. })
        })
        .await
        .unwrap();
    assert!(
        matches!(&refused, ServerMessage::Error { code, .. } if code == "invalid_sdp"),
        "{refused:?}"
    );
    publisher.publish(PublishOptions::default()).await.unwrap();
    watcher
        .wait_received("the publisher's media after all", WAIT, |r| {
            r.len() == 2 && r.values().all(|t| t.packets > 5)
        })
        .await
        .unwrap();
    publisher.leave().await;
    watcher.leave().await;
    server.shutdown().await.unwrap();
}

/// A message sent the moment someone joins, before their chat channel is open, still reaches
/// them once it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_sent_while_a_newcomers_channel_opens_is_not_lost() {
    let server = start_server().await;
    let url = server.ws_url();
    let host = Client::join(&url, "welcome", "host").await.unwrap();
    // The host's own channel is open once a message of its own goes out.
    host.chat("warming up").await.unwrap();
    let guest = Client::join(&url, "welcome", "guest").await.unwrap();
    host.chat("welcome, guest").await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if guest
            .chat_received()
            .iter()
            .any(|c| c.text == "welcome, guest")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the welcome never arrived: {:?}",
            guest.chat_received()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = guest.chat_received();
    assert_eq!(
        got.len(),
        1,
        "only what was sent after the guest joined: {got:?}"
    );
    assert_eq!(got[0].from.name, "host");
    host.leave().await;
    guest.leave().await;
    server.shutdown().await.unwrap();
}
