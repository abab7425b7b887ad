//! Limits and deadlines on the signaling and HTTP side (issue 9): each cap refuses the excess
//! with its code while everyone else carries on, and clients that hold resources without
//! using them are dropped within their deadlines. A real server on an ephemeral loopback
//! port, each test a few seconds.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard::load::client::Client;
use switchboard::load::wire::ServerMessage;
use switchboard::{Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

/// A TCP connection to the server from a chosen loopback address (all of 127/8 is local),
/// so a test can be many clients; `recv_buffer` shrinks the client's kernel buffer.
async fn tcp_from(server: SocketAddr, from: IpAddr, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(server).await.expect("connect")
}

/// Opens `/ws` from `from` with an optional `Origin` and `Host`; the refusal's HTTP status on
/// failure.
async fn open_ws(
    server: &Server,
    from: IpAddr,
    origin: Option<&str>,
    host: Option<&str>,
    recv_buffer: Option<u32>,
) -> Result<Ws, u16> {
    let stream = tcp_from(server.local_addr(), from, recv_buffer).await;
    let mut request = server.ws_url().into_client_request().expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().expect("origin header"));
    }
    if let Some(host) = host {
        request
            .headers_mut()
            .insert("host", host.parse().expect("host header"));
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

async fn ws(server: &Server) -> Ws {
    open_ws(server, localhost(), None, None, None)
        .await
        .expect("socket accepted")
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string()))
        .await
        .expect("send");
}

/// Next JSON message, skipping pings and the server's negotiation.
async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("socket open")
            .expect("frame");
        if let Message::Text(t) = frame {
            let v: serde_json::Value = serde_json::from_str(&t).expect("JSON");
            if v["type"] != "offer" && v["type"] != "candidate" {
                return v;
            }
        }
    }
}

/// Reads until the server's close frame; its status code.
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

async fn join(ws: &mut Ws, room: &str, name: &str) {
    send(
        ws,
        &serde_json::json!({"type": "join", "room": room, "name": name}).to_string(),
    )
    .await;
    let joined = next_json(ws).await;
    assert_eq!(joined["type"], "joined", "{joined}");
}

/// A full HTTP response to `GET path`: status line and headers, lower-cased, and the body.
async fn http_get(server: &Server, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_ascii_lowercase(), body.to_string())
}

/// CPU time of this process (server and test client together), user plus system.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A flood of sockets that never join: the total cap refuses the excess with 503 (from any
/// address), the per-IP cap with 429; `/healthz` and a real join stay fast meanwhile, and a
/// freed place is usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_caps_refuse_the_excess_and_leave_the_others_alone() {
    const FLOOD: usize = 300;
    let mut config = Config::ephemeral();
    config.max_sockets = FLOOD + 1;
    config.max_sockets_per_ip = 5;
    config.join_timeout = Duration::from_secs(60);
    let server = start_server_with(config).await;

    // Per IP: the sixth socket from one address is refused, another address is not.
    let one = IpAddr::from([127, 0, 0, 3]);
    let mut mine = Vec::new();
    for _ in 0..5 {
        mine.push(
            open_ws(&server, one, None, None, None)
                .await
                .expect("under the cap"),
        );
    }
    assert_eq!(
        open_ws(&server, one, None, None, None).await.err(),
        Some(429)
    );
    drop(mine);
    wait_metrics(&server, "the five closed", |m| m.websockets == 0).await;

    // A flood spread over many addresses, five each: only the total cap can stop it.
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let from = IpAddr::from([127, 0, 1 + (i / 5 / 250) as u8, 1 + (i / 5 % 250) as u8]);
        flood.push(
            open_ws(&server, from, None, None, None)
                .await
                .unwrap_or_else(|status| panic!("socket {i} refused with {status}")),
        );
    }
    wait_metrics(&server, "the flood connected", |m| {
        m.websockets == FLOOD as i64
    })
    .await;

    let started = Instant::now();
    let (status, _) = get(&format!("{}/healthz", server.http_url())).await;
    let healthz = started.elapsed();
    assert_eq!(status, 200);
    let started = Instant::now();
    let client = Client::join(&server.ws_url(), "busy", "alice")
        .await
        .expect("a real join during the flood");
    let join_time = started.elapsed();
    eprintln!(
        "during a flood of {FLOOD} unjoined sockets: /healthz {healthz:?}, join {join_time:?}"
    );
    assert!(healthz < Duration::from_millis(500), "{healthz:?}");
    assert!(join_time < Duration::from_secs(3), "{join_time:?}");

    // Full: refused with 503 from an address that holds nothing.
    let fresh = IpAddr::from([127, 0, 9, 9]);
    assert_eq!(
        open_ws(&server, fresh, None, None, None).await.err(),
        Some(503)
    );
    let m = server.metrics();
    assert_eq!((m.sockets_refused_per_ip, m.sockets_refused_max), (1, 1));
    // The joined client never noticed.
    client.send_json(serde_json::json!({"type": "ping"}));
    client
        .wait_for("pong", WAIT, |m| matches!(m, ServerMessage::Pong))
        .await
        .expect("pong");

    // One place freed is one place usable.
    flood.pop();
    wait_metrics(&server, "one flood socket gone", |m| {
        m.websockets == FLOOD as i64
    })
    .await;
    let mut again = open_ws(&server, fresh, None, None, None)
        .await
        .expect("accepted once a place is free");
    send(&mut again, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut again).await["type"], "pong");
    drop(flood);
    drop(again);
    client.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// A socket that does not join in time gets `not_joined` and close 1008; one that joined in
/// time stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_joins_is_closed_at_the_join_deadline() {
    let mut config = Config::ephemeral();
    config.join_timeout = Duration::from_millis(600);
    let server = start_server_with(config).await;
    let mut joined = ws(&server).await;
    join(&mut joined, "deadline", "alice").await;
    let started = Instant::now();
    let mut idle = ws(&server).await;
    // Pings before joining do not buy time.
    send(&mut idle, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut idle).await["type"], "pong");
    let e = next_json(&mut idle).await;
    assert_eq!(e["code"], "not_joined", "{e}");
    assert_eq!(close_code(&mut idle).await, 1008);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    assert_eq!(server.metrics().join_timeouts, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&mut joined, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut joined).await["type"], "pong");
    drop(joined);
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// Connections that send half a request header, or nothing, are closed at the header
/// deadline; the server answers others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_clients_are_dropped_at_the_header_deadline() {
    let mut config = Config::ephemeral();
    config.header_timeout = Duration::from_millis(500);
    let server = start_server_with(config).await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
        if i > 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(stream);
    }
    let (status, _) = get(&format!("{}/healthz", server.http_url())).await;
    assert_eq!(status, 200);
    for mut stream in slow {
        let mut buf = [0u8; 1024];
        // Closed: end of stream (or a reset), never a hang.
        loop {
            match tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("closed in time")
            {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    wait_metrics(&server, "twenty header timeouts", |m| {
        m.header_timeouts == 20
    })
    .await;
    server.shutdown().await.unwrap();
}

fn tls_config(dir: &std::path::Path) -> Config {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = Config::ephemeral();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    config
}

/// A TLS client that never finishes its handshake is closed at the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_dropped_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tls_config(dir.path());
    config.tls_handshake_timeout = Duration::from_millis(500);
    let server = start_server_with(config).await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut partial = TcpStream::connect(server.local_addr()).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    wait_metrics(&server, "two handshake timeouts", |m| {
        m.tls_handshake_timeouts == 2
    })
    .await;
    server.shutdown().await.unwrap();
}

/// Sends requests whose replies are large (an unknown type is echoed back) and never reads.
async fn provoke_replies(ws: &mut Ws, count: usize) {
    let request = serde_json::json!({"type": "x".repeat(2000)}).to_string();
    for _ in 0..count {
        if ws.send(Message::text(request.clone())).await.is_err() {
            return;
        }
    }
}

/// A client that stops reading while replies pile up is dropped once more than
/// --max-unsent-bytes wait for it, well before the message cap; the room hears it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_past_the_unsent_bytes_bound() {
    let mut config = Config::ephemeral();
    config.max_unsent_bytes = 64 * 1024;
    config.signaling_queue_messages = 100_000;
    config.tcp_send_buffer = 16 * 1024;
    config.message_rate_per_sec = 100_000;
    let server = start_server_with(config).await;
    let watcher = Client::join(&server.ws_url(), "reader", "watcher")
        .await
        .unwrap();
    let mut deaf = open_ws(&server, localhost(), None, None, Some(4096))
        .await
        .unwrap();
    join(&mut deaf, "reader", "deaf").await;
    let started = Instant::now();
    // About 4 KiB a reply: 400 replies are 1.6 MB, far over the bound and the buffers.
    provoke_replies(&mut deaf, 400).await;
    watcher
        .wait_for("deaf left", WAIT, |m| {
            matches!(m, ServerMessage::ParticipantLeft { .. })
        })
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("a client that stopped reading was dropped after {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    wait_metrics(&server, "only the watcher's socket", |m| {
        m.websockets == 1 && m.participants == 1
    })
    .await;
    assert_eq!(server.metrics().slow_readers_dropped, 1);
    drop(deaf);
    watcher.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// A client whose buffers are full but whose queue stays under the byte bound is dropped
/// when a write makes no progress for --write-timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_the_write_timeout() {
    let mut config = Config::ephemeral();
    config.max_unsent_bytes = 64 << 20;
    config.signaling_queue_messages = 100_000;
    config.tcp_send_buffer = 16 * 1024;
    config.message_rate_per_sec = 100_000;
    config.write_timeout = Duration::from_secs(1);
    let server = start_server_with(config).await;
    let mut deaf = open_ws(&server, localhost(), None, None, Some(4096))
        .await
        .unwrap();
    join(&mut deaf, "stuck", "deaf").await;
    provoke_replies(&mut deaf, 200).await;
    let started = Instant::now();
    wait_metrics(&server, "the deaf client dropped", |m| m.websockets == 0).await;
    let took = started.elapsed();
    eprintln!("a stuck writer was dropped {took:?} after the last request");
    assert!(took < Duration::from_secs(4), "{took:?}");
    let m = server.metrics();
    assert_eq!((m.write_timeouts, m.slow_readers_dropped), (1, 0));
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// RFC 6455: a text frame that is not UTF-8 closes with 1007; a message over axum's 1 MiB
/// cap gets `too_large` and closes with 1009, even while the client is still sending it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_and_an_oversized_message_with_1009() {
    let server = start_server().await;
    let mut bad = ws(&server).await;
    join(&mut bad, "codes", "mallory").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    bad.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(next_json(&mut bad).await["code"], "bad_request");
    assert_eq!(close_code(&mut bad).await, 1007);

    let big = ws(&server).await;
    let (mut sink, mut stream) = big.split();
    let text = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat((1 << 20) + 1024)
    );
    // The server stops reading at the frame header: the send may fail or hang; the reply
    // and the close come anyway.
    let sender = tokio::spawn(async move {
        let _ = sink.send(Message::text(text)).await;
        sink
    });
    let mut replies = Vec::new();
    let code = loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("a reply in time")
        {
            Some(Ok(Message::Text(t))) => {
                replies.push(serde_json::from_str::<serde_json::Value>(&t).unwrap())
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("expected too_large and a close, got {other:?} after {replies:?}"),
        }
    };
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0]["code"], "too_large");
    assert_eq!(code, Some(1009));
    sender.abort();
    let m = server.metrics();
    assert_eq!((m.frames_invalid_utf8, m.frames_too_large), (1, 1));
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// The web client is served with a CSP, nosniff, no referrer and a permissions policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_client_is_served_with_security_headers() {
    let server = start_server().await;
    for path in ["/", "/app.js", "/style.css", "/healthz"] {
        let (head, _) = http_get(&server, path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        for expected in [
            "content-security-policy: default-src 'self'; script-src 'self';",
            "connect-src 'self' ws: wss:",
            "media-src 'self' blob: mediastream:",
            "frame-ancestors 'none'",
            "x-content-type-options: nosniff",
            "referrer-policy: no-referrer",
            "permissions-policy: camera=(self), microphone=(self)",
        ] {
            assert!(head.contains(expected), "{path} lacks {expected:?}: {head}");
        }
    }
    server.shutdown().await.unwrap();
}

/// A foreign `Origin` is refused with 403; the page's own origin, loopback origins, listed
/// origins and clients that send no `Origin` are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_and_same_origin_is_not() {
    let mut config = Config::ephemeral();
    config.allowed_origins = vec!["https://app.example".into()];
    let server = start_server_with(config).await;
    let page = format!("http://{}", server.local_addr());
    // (Origin, Host, what the upgrade gets)
    let cases = [
        (None, None, Ok(())),
        (Some(page.as_str()), None, Ok(())),
        (Some("http://localhost:5173"), None, Ok(())),
        (
            Some("https://meet.example.org"),
            Some("meet.example.org"),
            Ok(()),
        ),
        (
            Some("https://app.example"),
            Some("meet.example.org"),
            Ok(()),
        ),
        (
            Some("https://evil.example"),
            Some("meet.example.org"),
            Err(403),
        ),
        (Some("null"), None, Err(403)),
    ];
    for (origin, host, expected) in cases {
        let result = open_ws(&server, localhost(), origin, host, None).await;
        assert_eq!(
            result.as_ref().map(|_| ()).map_err(|s| *s),
            expected,
            "{origin:?} {host:?}"
        );
        if let Ok(mut ws) = result {
            send(&mut ws, r#"{"type":"ping"}"#).await;
            assert_eq!(next_json(&mut ws).await["type"], "pong");
        }
    }
    assert_eq!(server.metrics().origins_refused, 2);
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// A publisher offer carrying `candidates` a=candidate lines, as many as fit in 64 KiB at 850.
fn laden_offer(candidates: usize) -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS s\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 \
6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n\
a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=msid:s a1\r\na=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\na=ssrc:1111 cname:x\r\n",
    );
    for i in 0..candidates {
        sdp.push_str(&format!(
            "a=candidate:{i} 1 udp 2122260223 192.0.2.{} {} typ host\r\n",
            i % 250 + 1,
            40000 + i
        ));
    }
    sdp
}

/// Sends `count` offers and waits for each reply; the process's CPU time per offer and the
/// reply types.
async fn offer_storm(ws: &mut Ws, offer: &str, count: u32) -> (Duration, Vec<String>) {
    let text = serde_json::json!({"type": "offer", "pc": "publisher", "sdp": offer}).to_string();
    let before = cpu_time();
    let mut replies = Vec::new();
    for _ in 0..count {
        send(ws, &text).await;
        let reply = next_json(ws).await;
        replies.push(format!(
            "{}{}",
            reply["type"].as_str().unwrap_or("?"),
            reply["code"]
                .as_str()
                .map(|c| format!(":{c}"))
                .unwrap_or_default()
        ));
    }
    ((cpu_time() - before) / count, replies)
}

/// A storm of candidate-laden offers from one participant is refused before the media engine
/// for little CPU each, while the others' chat still round-trips quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_candidate_laden_offers_costs_little_and_disturbs_no_one() {
    const OFFERS: u32 = 100;
    let offer = laden_offer(850);
    assert!(offer.len() < 64 * 1024 - 100, "{}", offer.len());

    // For comparison: the same storm with the limit out of the way reaches the engine.
    let mut config = Config::ephemeral();
    config.message_rate_per_sec = 1000;
    config.offer_rate_per_sec = 1000;
    config.max_candidates_per_offer = 100_000;
    let server = start_server_with(config).await;
    let mut mallory = ws(&server).await;
    join(&mut mallory, "storm", "mallory").await;
    let (parsed, replies) = offer_storm(&mut mallory, &offer, 20).await;
    assert!(replies.iter().all(|r| r == "answer"), "{replies:?}");
    drop(mallory);
    server.shutdown().await.unwrap();

    let mut config = Config::ephemeral();
    config.message_rate_per_sec = 1000;
    let server = start_server_with(config).await;
    let url = server.ws_url();
    let alice = Client::join(&url, "storm", "alice").await.unwrap();
    let bob = Client::join(&url, "storm", "bob").await.unwrap();
    // Both chat channels open: each answers a malformed message with an error.
    for client in [&alice, &bob] {
        client.chat_raw("not json").await.unwrap();
    }
    for client in [&alice, &bob] {
        wait_until(|| !client.chat_errors().is_empty()).await;
    }
    alice.chat("warm-up").await.unwrap();
    wait_until(|| bob.chat_received().len() == 1).await;
    let mut mallory = ws(&server).await;
    join(&mut mallory, "storm", "mallory").await;

    let chat = tokio::spawn(async move {
        // Chat round trips alice → bob while the storm lasts.
        let mut worst = Duration::ZERO;
        for i in 0..20 {
            let started = Instant::now();
            alice.chat(&format!("during the storm {i}")).await.unwrap();
            wait_until(|| bob.chat_received().len() == i + 2).await;
            worst = worst.max(started.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (worst, alice, bob)
    });
    let (refused, replies) = offer_storm(&mut mallory, &offer, OFFERS).await;
    assert!(
        replies.iter().all(|r| r == "error:bad_request"),
        "{replies:?}"
    );
    let (worst_chat, alice, bob) = chat.await.unwrap();
    eprintln!(
        "CPU per 850-candidate offer: {parsed:?} parsed by the engine, {refused:?} refused; \
         worst chat round trip during the storm {worst_chat:?}"
    );
    assert!(
        refused < Duration::from_millis(20),
        "{refused:?} per refused offer"
    );
    assert!(worst_chat < Duration::from_secs(1), "{worst_chat:?}");
    assert_eq!(server.metrics().offers_refused, u64::from(OFFERS));
    // Mallory's socket is still usable, and it never reached the engine: no publisher PC.
    send(&mut mallory, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut mallory).await["type"], "pong");
    assert_eq!(server.metrics().participants, 3);
    drop(mallory);
    alice.leave().await;
    bob.leave().await;
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// Offers with too many media sections are refused, and offers over --offer-rate get
/// `rate_limited`; the socket stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_over_the_section_limit_or_the_offer_rate_are_refused() {
    let mut config = Config::ephemeral();
    config.max_media_sections = 4;
    config.offer_rate_per_sec = 2;
    let server = start_server_with(config).await;
    let mut ws = ws(&server).await;
    join(&mut ws, "offers", "mallory").await;
    let mut sdp = laden_offer(0);
    for i in 1..5 {
        sdp.push_str(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\n"));
    }
    let offer =
        |sdp: &str| serde_json::json!({"type": "offer", "pc": "publisher", "sdp": sdp}).to_string();
    send(&mut ws, &offer(&sdp)).await;
    let e = next_json(&mut ws).await;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("media sections"),
        "{e}"
    );
    // A burst of twice the rate passes to the engine (which refuses the junk SDP), then the
    // rate bites.
    let mut codes = Vec::new();
    for _ in 0..6 {
        send(&mut ws, &offer("v=0\r\n")).await;
        codes.push(
            next_json(&mut ws).await["code"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        );
    }
    assert_eq!(
        codes.iter().filter(|c| *c == "rate_limited").count(),
        2,
        "{codes:?}"
    );
    send(&mut ws, r#"{"type":"ping"}"#).await;
    assert_eq!(next_json(&mut ws).await["type"], "pong");
    let m = server.metrics();
    assert_eq!((m.offers_refused, m.offers_rate_limited), (1, 2));
    drop(ws);
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

async fn wait_until(pred: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An office, a school or a carrier (CGNAT) puts hundreds of people behind one address: with
/// the default flags, 200 of them join four rooms of 50, while sockets from that same address
/// that never join are still capped, and a join from another address during that flood goes
/// through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_behind_one_address_join_while_its_unjoined_sockets_stay_capped() {
    const PEOPLE: usize = 200;
    const ROOM_SIZE: usize = 50;
    const FLOOD: usize = 3_000;
    let defaults = Config::default();
    let mut config = Config::ephemeral();
    config.max_sockets_per_ip = defaults.max_sockets_per_ip;
    config.join_rate_per_ip = defaults.join_rate_per_ip;
    let server = start_server_with(config).await;
    let office = localhost();

    let mut people = Vec::new();
    let mut last_joined = Vec::new();
    for i in 0..PEOPLE {
        let mut ws = open_ws(&server, office, None, None, None)
            .await
            .unwrap_or_else(|status| panic!("person {i} refused with {status}"));
        let room = format!("office-{}", i / ROOM_SIZE);
        send(
            &mut ws,
            &serde_json::json!({"type": "join", "room": room, "name": format!("person {i}")})
                .to_string(),
        )
        .await;
        let joined = next_json(&mut ws).await;
        assert_eq!(joined["type"], "joined", "person {i}: {joined}");
        if i % ROOM_SIZE == ROOM_SIZE - 1 {
            last_joined.push(joined);
        }
        people.push(ws);
    }
    for joined in &last_joined {
        assert_eq!(
            joined["participants"].as_array().map(Vec::len),
            Some(ROOM_SIZE - 1),
            "the last of each room sees the 49 others"
        );
    }
    let m = server.metrics();
    assert_eq!((m.participants, m.rooms), (PEOPLE as i64, 4));
    assert_eq!(m.sockets_refused_per_ip + m.joins_rate_limited, 0);

    // Sockets from the same address that never join: the first --max-sockets-per-ip are held,
    // every other one refused, however many joined participants the address has.
    let flood = tokio::spawn({
        let server_addr = server.local_addr();
        let url = server.ws_url();
        async move {
            let mut held = Vec::new();
            let mut refused = 0;
            for _ in 0..FLOOD {
                let stream = tcp_from(server_addr, office, None).await;
                let request = url.as_str().into_client_request().expect("request");
                match tokio_tungstenite::client_async(request, stream).await {
                    Ok((ws, _)) => held.push(ws),
                    Err(tungstenite::Error::Http(r)) if r.status().as_u16() == 429 => refused += 1,
                    Err(e) => panic!("flood socket: {e}"),
                }
            }
            (held, refused)
        }
    });
    wait_metrics(&server, "the flood under way", |m| {
        m.sockets_refused_per_ip >= 500
    })
    .await;
    let started = Instant::now();
    let mut other = open_ws(&server, IpAddr::from([127, 0, 0, 2]), None, None, None)
        .await
        .expect("another address is not refused");
    join(&mut other, "elsewhere", "visitor").await;
    let join_time = started.elapsed();
    eprintln!("a join from another address during a flood of {FLOOD}: {join_time:?}");
    assert!(join_time < Duration::from_secs(3), "{join_time:?}");

    let (held, refused) = flood.await.expect("flood task");
    assert_eq!(held.len(), defaults.max_sockets_per_ip);
    assert_eq!(refused, FLOOD - defaults.max_sockets_per_ip);
    let m = server.metrics();
    assert_eq!(m.sockets_refused_per_ip, refused as u64);
    assert_eq!(m.participants, PEOPLE as i64 + 1);
    // The people in the office never noticed.
    for ws in people.iter_mut().step_by(37) {
        send(ws, r#"{"type":"ping"}"#).await;
        // Past the news of later joins.
        while next_json(ws).await["type"] != "pong" {}
    }
    drop(held);
    drop(people);
    drop(other);
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}

/// Joins from one address beyond --join-rate-per-ip (a reconnect storm, a script) get
/// `rate_limited` on an open socket, which may retry a moment later; other addresses carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_from_one_address_past_its_rate_are_refused_and_may_retry() {
    let mut config = Config::ephemeral();
    config.join_rate_per_ip = 2; // bursts of 4
    let server = start_server_with(config).await;
    let storm = IpAddr::from([127, 0, 0, 4]);
    let mut joined = Vec::new();
    for i in 0..4 {
        let mut ws = open_ws(&server, storm, None, None, None)
            .await
            .expect("open");
        join(&mut ws, "storm", &format!("n{i}")).await;
        joined.push(ws);
    }
    let mut late = open_ws(&server, storm, None, None, None)
        .await
        .expect("open");
    send(&mut late, r#"{"type":"join","room":"storm","name":"late"}"#).await;
    let refused = next_json(&mut late).await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("rate_limited")),
        "{refused}"
    );
    assert_eq!(refused["request_type"], "join");
    let mut elsewhere = open_ws(&server, IpAddr::from([127, 0, 0, 5]), None, None, None)
        .await
        .expect("open");
    join(&mut elsewhere, "storm", "neighbour").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    join(&mut late, "storm", "late").await;
    assert_eq!(server.metrics().joins_rate_limited, 1);
    drop((joined, late, elsewhere));
    wait_metrics(&server, "everything freed", all_freed).await;
    server.shutdown().await.unwrap();
}
