//! Which peer connection a datagram on the shared UDP port belongs to.
//!
//! Pure logic, no sockets. A datagram from a known source address goes to the peer connection
//! that address proved itself to. A new address is accepted only through a STUN Binding
//! request whose USERNAME starts with the ufrag of one of our peer connections (RFC 8445
//! 7.2.2: `<our ufrag>:<their ufrag>`); with ICE lite, that is the only way a client's address
//! ever appears. Everything else is dropped and counted, never logged one by one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the first bytes of a datagram say it is (RFC 7983).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stun,
    Dtls,
    /// RTP or RTCP (SRTP/SRTCP on the wire).
    Media,
    Other,
}

pub fn classify(datagram: &[u8]) -> Kind {
    match datagram.first() {
        Some(0..=3) if datagram.len() >= 20 => Kind::Stun,
        Some(20..=63) if datagram.len() >= 13 => Kind::Dtls,
        Some(128..=191) if datagram.len() >= 12 => Kind::Media,
        _ => Kind::Other,
    }
}

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
const ATTR_USERNAME: u16 = 0x0006;

/// The USERNAME of a STUN Binding request, without copying; `None` for anything else.
pub fn binding_request_username(datagram: &[u8]) -> Option<&str> {
    if datagram.len() < 20 || datagram[0..2] != BINDING_REQUEST || datagram[4..8] != MAGIC_COOKIE {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let body = datagram.get(20..20 + len)?;
    let mut at = 0;
    while at + 4 <= body.len() {
        let typ = u16::from_be_bytes([body[at], body[at + 1]]);
        let len = usize::from(u16::from_be_bytes([body[at + 2], body[at + 3]]));
        let value = body.get(at + 4..at + 4 + len)?;
        if typ == ATTR_USERNAME {
            return std::str::from_utf8(value).ok();
        }
        at += 4 + ((len + 3) & !3);
    }
    None
}

/// Our ufrag in a Binding request's USERNAME (`<ours>:<theirs>`).
pub fn local_ufrag(username: &str) -> Option<&str> {
    let (ours, theirs) = username.split_once(':')?;
    (!ours.is_empty() && !theirs.is_empty()).then_some(ours)
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// Not STUN, DTLS, RTP or RTCP.
    Malformed,
    /// From an address no peer connection knows, and not a Binding request naming one.
    UnknownAddress,
    /// A Binding request for a ufrag that is not (or no longer) ours.
    UnknownUfrag,
}

impl Unrouted {
    pub fn as_str(self) -> &'static str {
        match self {
            Unrouted::Malformed => "malformed",
            Unrouted::UnknownAddress => "unknown_address",
            Unrouted::UnknownUfrag => "unknown_ufrag",
        }
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<P> {
    /// To a peer connection; `learned` when this datagram taught us its address.
    Peer {
        peer: P,
        learned: bool,
    },
    /// Another worker owns the peer connection (its ufrag says which).
    Worker(usize),
    Drop(Unrouted),
}

/// An address learned for another worker's peer: forgotten when its Binding requests stop.
#[derive(Debug, Clone, Copy)]
struct Forwarded {
    worker: usize,
    refreshed: Instant,
}

/// How long an address routed to another worker is remembered without a Binding request
/// (clients send one every few seconds for consent freshness, RFC 7675).
pub const FORWARD_TTL: Duration = Duration::from_secs(60);

/// One worker's routing table.
#[derive(Debug)]
pub struct Demux<P> {
    me: usize,
    /// How many workers there are: a ufrag naming another is no peer of ours.
    workers: usize,
    by_addr: HashMap<SocketAddr, P>,
    by_ufrag: HashMap<String, P>,
    forwarded: HashMap<SocketAddr, Forwarded>,
}

impl<P: Copy + PartialEq> Demux<P> {
    pub fn new(me: usize, workers: usize) -> Self {
        Demux {
            me,
            workers,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            forwarded: HashMap::new(),
        }
    }

    /// A peer connection of ours with this local ufrag.
    pub fn add_peer(&mut self, ufrag: &str, peer: P) {
        self.by_ufrag.insert(ufrag.to_string(), peer);
    }

    /// Forgets a peer connection and every address it had.
    pub fn remove_peer(&mut self, ufrag: &str, peer: P) {
        self.by_ufrag.remove(ufrag);
        self.by_addr.retain(|_, p| *p != peer);
    }

    pub fn peers(&self) -> usize {
        self.by_ufrag.len()
    }

    pub fn route(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) -> Route<P> {
        let kind = classify(datagram);
        if kind == Kind::Other {
            return Route::Drop(Unrouted::Malformed);
        }
        // A Binding request names its peer connection: it may (re)bind an address, after a
        // NAT rebinding or an ICE restart.
        if kind == Kind::Stun {
            if let Some(username) = binding_request_username(datagram) {
                return self.route_by_ufrag(from, username, now);
            }
        }
        if let Some(&peer) = self.by_addr.get(&from) {
            return Route::Peer {
                peer,
                learned: false,
            };
        }
        match self.forwarded.get(&from) {
            Some(f) if now.saturating_duration_since(f.refreshed) < FORWARD_TTL => {
                Route::Worker(f.worker)
            }
            _ => Route::Drop(Unrouted::UnknownAddress),
        }
    }

    fn route_by_ufrag(&mut self, from: SocketAddr, username: &str, now: Instant) -> Route<P> {
        let Some(ufrag) = local_ufrag(username) else {
            return Route::Drop(Unrouted::UnknownUfrag);
        };
        match worker_of_ufrag(ufrag) {
            Some(w) if w == self.me => {}
            Some(w) if w < self.workers => {
                self.forwarded.insert(
                    from,
                    Forwarded {
                        worker: w,
                        refreshed: now,
                    },
                );
                return Route::Worker(w);
            }
            _ => return Route::Drop(Unrouted::UnknownUfrag),
        }
        let Some(&peer) = self.by_ufrag.get(ufrag) else {
            return Route::Drop(Unrouted::UnknownUfrag);
        };
        let learned = self.by_addr.insert(from, peer) != Some(peer);
        Route::Peer { peer, learned }
    }

    /// Drops addresses forwarded to other workers that went quiet.
    pub fn expire(&mut self, now: Instant) {
        self.forwarded
            .retain(|_, f| now.saturating_duration_since(f.refreshed) < FORWARD_TTL);
    }
}

/// Characters of a ufrag that name its worker.
const WORKER_DIGITS: usize = 2;

/// A fresh local ufrag for a peer connection on `worker`: the worker that owns it can be read
/// off any Binding request, so a datagram the kernel hands to another worker finds its way.
pub fn new_ufrag(worker: usize) -> String {
    use rand::Rng;
    const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut ufrag = format!("{:0width$x}", worker % 256, width = WORKER_DIGITS);
    for _ in 0..14 {
        ufrag.push(ICE_CHARS[rng.random_range(0..ICE_CHARS.len())] as char);
    }
    ufrag
}

/// A fresh ICE password (RFC 8839: at least 22 characters).
pub fn new_password() -> String {
    use rand::Rng;
    const ICE_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ICE_CHARS[rng.random_range(0..ICE_CHARS.len())] as char)
        .collect()
}

pub fn worker_of_ufrag(ufrag: &str) -> Option<usize> {
    let digits = ufrag.get(..WORKER_DIGITS)?;
    usize::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&ATTR_USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // A PRIORITY attribute before it, as real requests have.
        let mut body = vec![0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4];
        body.extend_from_slice(&attr);
        let mut msg = vec![0x00, 0x01];
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&MAGIC_COOKIE);
        msg.extend_from_slice(&[7; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    const RTP: [u8; 12] = [0x80, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 9];
    const DTLS: [u8; 13] = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    #[test]
    fn classifies_by_first_byte() {
        assert_eq!(classify(&binding_request("a:b")), Kind::Stun);
        assert_eq!(classify(&DTLS), Kind::Dtls);
        assert_eq!(classify(&RTP), Kind::Media);
        assert_eq!(classify(&[0x50; 40]), Kind::Other);
        assert_eq!(classify(&[]), Kind::Other);
        assert_eq!(classify(&[0x80, 1]), Kind::Other);
    }

    #[test]
    fn reads_the_username_of_a_binding_request_only() {
        let req = binding_request("00abc:theirs");
        assert_eq!(binding_request_username(&req), Some("00abc:theirs"));
        let mut response = req.clone();
        response[1] = 0x01;
        response[0] = 0x01;
        assert_eq!(binding_request_username(&response), None);
        // Truncated: the attribute runs past the end.
        assert_eq!(binding_request_username(&req[..req.len() - 8]), None);
        assert_eq!(local_ufrag("ours:theirs"), Some("ours"));
        assert_eq!(local_ufrag(":theirs"), None);
        assert_eq!(local_ufrag("nocolon"), None);
    }

    #[test]
    fn a_known_address_goes_to_its_peer_and_a_new_one_by_ufrag() {
        let now = Instant::now();
        let mut demux: Demux<u32> = Demux::new(0, 1);
        let ufrag = new_ufrag(0);
        demux.add_peer(&ufrag, 7);
        // Media from an address nobody vouched for.
        assert_eq!(
            demux.route(addr(1), &RTP, now),
            Route::Drop(Unrouted::UnknownAddress)
        );
        // The Binding request teaches the address.
        let req = binding_request(&format!("{ufrag}:client"));
        assert_eq!(
            demux.route(addr(1), &req, now),
            Route::Peer {
                peer: 7,
                learned: true
            }
        );
        assert_eq!(
            demux.route(addr(1), &RTP, now),
            Route::Peer {
                peer: 7,
                learned: false
            }
        );
        assert_eq!(
            demux.route(addr(1), &DTLS, now),
            Route::Peer {
                peer: 7,
                learned: false
            }
        );
        // Same ufrag from a new address (NAT rebinding): learned too.
        assert_eq!(
            demux.route(addr(2), &req, now),
            Route::Peer {
                peer: 7,
                learned: true
            }
        );
        // Junk and strangers are dropped.
        assert_eq!(
            demux.route(addr(1), &[0x42; 30], now),
            Route::Drop(Unrouted::Malformed)
        );
        let stranger = binding_request(&format!("{}:client", new_ufrag(0)));
        assert_eq!(
            demux.route(addr(3), &stranger, now),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        // A removed peer takes its addresses with it.
        demux.remove_peer(&ufrag, 7);
        assert_eq!(
            demux.route(addr(1), &RTP, now),
            Route::Drop(Unrouted::UnknownAddress)
        );
        assert_eq!(
            demux.route(addr(1), &req, now),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        assert_eq!(demux.peers(), 0);
    }

    #[test]
    fn another_workers_peer_is_forwarded_until_it_goes_quiet() {
        let now = Instant::now();
        let mut demux: Demux<u32> = Demux::new(0, 2);
        let theirs = new_ufrag(1);
        assert_eq!(worker_of_ufrag(&theirs), Some(1));
        let req = binding_request(&format!("{theirs}:client"));
        assert_eq!(demux.route(addr(5), &req, now), Route::Worker(1));
        assert_eq!(demux.route(addr(5), &RTP, now), Route::Worker(1));
        let later = now + FORWARD_TTL + Duration::from_secs(1);
        demux.expire(later);
        assert_eq!(
            demux.route(addr(5), &RTP, later),
            Route::Drop(Unrouted::UnknownAddress)
        );
        // A ufrag naming a worker that does not exist is nobody's: nothing is remembered.
        let spoofed = binding_request(&format!("{}:client", new_ufrag(7)));
        assert_eq!(
            demux.route(addr(6), &spoofed, now),
            Route::Drop(Unrouted::UnknownUfrag)
        );
        assert_eq!(
            demux.route(addr(6), &RTP, now),
            Route::Drop(Unrouted::UnknownAddress)
        );
    }

    #[test]
    fn ufrags_and_passwords_are_valid_ice_strings() {
        for worker in [0, 1, 15, 200] {
            let u = new_ufrag(worker);
            assert!(u.len() >= 4 && u.is_ascii());
            assert_eq!(worker_of_ufrag(&u), Some(worker));
        }
        let p = new_password();
        assert!(p.len() >= 22);
        assert_ne!(new_ufrag(0), new_ufrag(0));
    }
}
