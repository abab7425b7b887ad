//! Datagram routing on the shared UDP port: `classify`, `binding_request_username` and
//! `Demux::route` on arbitrary datagrams from a handful of addresses, with peers added and
//! removed along the way.
//!
//! What must hold: junk never reaches a peer; an address is learned only from a Binding
//! request naming one of our live ufrags; a removed peer's addresses and ufrag route nowhere;
//! another worker's ufrag goes to that worker.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switchboard::engine::demux::{
    binding_request_username, classify, local_ufrag, worker_of_ufrag, Demux, Kind, Route, Unrouted,
};

/// Ufrags of this worker (0) and of another (1), as `new_ufrag` makes them.
const UFRAGS: [&str; 4] = [
    "00aaaaaaaaaaaaaa",
    "00bbbbbbbbbbbbbb",
    "00cccccccccccccc",
    "01dddddddddddddd",
];

fn binding_request(username: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]);
    body.extend_from_slice(&0x0006u16.to_be_bytes());
    body.extend_from_slice(&(username.len() as u16).to_be_bytes());
    body.extend_from_slice(username);
    while body.len() % 4 != 0 {
        body.push(0);
    }
    body.extend_from_slice(extra);
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    msg.extend_from_slice(&[7; 12]);
    msg.extend_from_slice(&body);
    msg
}

fuzz_target!(|data: &[u8]| {
    // The raw functions on the whole input.
    let kind = classify(data);
    if let Some(username) = binding_request_username(data) {
        assert_eq!(kind, Kind::Stun);
        assert!(data.len() >= 20 && data[0..2] == [0, 1]);
        if let Some(ours) = local_ufrag(username) {
            assert!(!ours.is_empty() && username.starts_with(ours));
            let _ = worker_of_ufrag(ours);
        }
    }

    let mut demux: Demux<u32> = Demux::new(0, 2);
    // Which peer (by index in UFRAGS) is live, and the addresses the harness saw learned.
    let mut live = [false; 3];
    let mut learned: HashMap<SocketAddr, u32> = HashMap::new();
    let t0 = Instant::now();
    let mut now = t0;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(op & 0x3f);
        let n = len.min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        let from = SocketAddr::from(([192, 0, 2, 1], 5000 + u16::from(op >> 6)));
        now += Duration::from_secs(u64::from(op & 0x07));
        let peer = usize::from(chunk.first().copied().unwrap_or(0) % 3);
        let datagram: Vec<u8> = match op >> 6 {
            // Add or remove a peer.
            0 if chunk.len() < 2 => {
                if live[peer] {
                    demux.remove_peer(UFRAGS[peer], peer as u32);
                    learned.retain(|_, p| *p != peer as u32);
                } else {
                    demux.add_peer(UFRAGS[peer], peer as u32);
                }
                live[peer] = !live[peer];
                assert_eq!(demux.peers(), live.iter().filter(|l| **l).count());
                continue;
            }
            // A Binding request naming one of the ufrags (or a mangled one).
            1 => {
                let u = usize::from(chunk.first().copied().unwrap_or(0) % 4);
                let mut username = format!("{}:theirs", UFRAGS[u]).into_bytes();
                if let Some(&b) = chunk.get(1) {
                    if b & 0x80 != 0 {
                        let at = usize::from(b) % username.len();
                        username[at] = chunk.get(2).copied().unwrap_or(b':');
                    }
                }
                binding_request(&username, chunk.get(3..).unwrap_or(&[]))
            }
            _ => chunk.to_vec(),
        };
        let route = demux.route(from, &datagram, now);
        let k = classify(&datagram);
        match route {
            Route::Peer { peer, learned: new } => {
                assert_ne!(k, Kind::Other, "junk routed to a peer");
                assert!(live[peer as usize], "routed to a removed peer");
                match binding_request_username(&datagram) {
                    Some(username) if k == Kind::Stun => {
                        assert_eq!(local_ufrag(username), Some(UFRAGS[peer as usize]));
                        let before = learned.insert(from, peer);
                        assert_eq!(new, before != Some(peer));
                    }
                    _ => {
                        assert!(!new);
                        assert_eq!(learned.get(&from), Some(&peer), "an address never learned");
                    }
                }
            }
            Route::Worker(w) => {
                assert_ne!(w, 0, "our own ufrags stay here");
                if let Some(username) = binding_request_username(&datagram) {
                    let ours = local_ufrag(username).expect("a ufrag");
                    assert_eq!(worker_of_ufrag(ours), Some(w));
                }
            }
            Route::Drop(why) => {
                if k == Kind::Other {
                    assert_eq!(why, Unrouted::Malformed);
                }
                if let (Some(p), Kind::Media | Kind::Dtls) = (learned.get(&from), k) {
                    panic!("a learned address ({from} → {p}) dropped: {why:?}");
                }
            }
        }
        if op & 0x38 == 0x38 {
            demux.expire(now);
        }
    }
});
