//! Caps on signaling sockets: in total, taken at the upgrade and held by the session until its
//! socket is gone; and per client IP for sockets that have not joined a room yet, with a join
//! rate per IP.
//!
//! The per-IP cap stops a flood of sockets that never join. It does not count participants: an
//! office, a school or a mobile carrier puts hundreds of people behind one public address
//! (CGNAT), and they count only against the server, room and participant caps once joined.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::warn;

use crate::ratelimit::TokenBucket;

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every one of `--max-sockets` is taken (HTTP 503).
    Full,
    /// This IP holds `--max-sockets-per-ip` sockets that have not joined (HTTP 429).
    PerIp,
}

struct Counts {
    total: usize,
    /// Sockets not joined yet, per client key.
    unjoined: HashMap<IpAddr, usize>,
    /// Joins per client key (`--join-rate-per-ip`).
    joins: HashMap<IpAddr, TokenBucket>,
}

pub struct SocketLimits {
    max: usize,
    max_per_ip: usize,
    join_rate_per_ip: u32,
    counts: Mutex<Counts>,
}

/// One socket's place under the caps; given back on drop.
pub struct SocketPermit {
    limits: Arc<SocketLimits>,
    ip: IpAddr,
    /// Joined: no longer counted against its address.
    joined: bool,
}

/// Join buckets kept before the full ones (addresses idle for a while) are forgotten.
const MAX_JOIN_BUCKETS: usize = 4096;

impl SocketLimits {
    /// `max` is lowered to what the process's open-file limit leaves room for (each socket
    /// is a descriptor; some are kept for the listener, media and files), so the cap bites
    /// before the accept loop runs out of descriptors.
    pub fn new(max: usize, max_per_ip: usize, join_rate_per_ip: u32) -> Arc<SocketLimits> {
        let max = match open_file_limit() {
            Some(limit) if limit.saturating_sub(RESERVED_FDS) < max => {
                let capped = limit.saturating_sub(RESERVED_FDS).max(1);
                warn!(
                    max_sockets = max,
                    open_file_limit = limit,
                    capped,
                    "--max-sockets is above what the open-file limit allows; capping it"
                );
                capped
            }
            _ => max,
        };
        Arc::new(SocketLimits {
            max,
            max_per_ip,
            join_rate_per_ip,
            counts: Mutex::new(Counts {
                total: 0,
                unjoined: HashMap::new(),
                joins: HashMap::new(),
            }),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<SocketPermit, Refused> {
        let ip = client_key(ip);
        let mut counts = self.lock();
        let mine = counts.unjoined.get(&ip).copied().unwrap_or(0);
        if mine >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        if counts.total >= self.max {
            return Err(Refused::Full);
        }
        counts.total += 1;
        counts.unjoined.insert(ip, mine + 1);
        Ok(SocketPermit {
            limits: self.clone(),
            ip,
            joined: false,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Counts {
    fn release_unjoined(&mut self, ip: IpAddr) {
        if let Some(n) = self.unjoined.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.unjoined.remove(&ip);
            }
        }
    }
}

impl SocketPermit {
    /// Takes one join from its address's rate (`--join-rate-per-ip`); false when that address
    /// is joining faster than that (a reconnect storm, a script).
    pub fn allow_join(&self, now: Instant) -> bool {
        let mut counts = self.limits.lock();
        if counts.joins.len() >= MAX_JOIN_BUCKETS && !counts.joins.contains_key(&self.ip) {
            counts.joins.retain(|_, bucket| !bucket.is_full(now));
        }
        counts
            .joins
            .entry(self.ip)
            .or_insert_with(|| TokenBucket::new(self.limits.join_rate_per_ip))
            .allow(now)
    }

    /// The socket joined a room: from now on it counts only against the total.
    pub fn joined(&mut self) {
        if !std::mem::replace(&mut self.joined, true) {
            self.limits.lock().release_unjoined(self.ip);
        }
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total = counts.total.saturating_sub(1);
        if !self.joined {
            counts.release_unjoined(self.ip);
        }
    }
}

/// Whom a socket counts against: its IPv4 address, or the /64 of an IPv6 one (one host
/// commonly holds a whole /64, so per address would be no cap at all).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

/// Descriptors kept out of `--max-sockets`: the listener, the media socket, HTTP requests
/// that are not WebSockets, the log, files.
const RESERVED_FDS: usize = 256;

fn open_file_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    usize::try_from(limit.rlim_cur).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_ip_and_gives_back_on_drop() {
        let limits = SocketLimits::new(3, 2, 10);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let a1 = limits.acquire(a).unwrap();
        let _a2 = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refused::PerIp));
        let _b1 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some(Refused::Full));
        drop(a1);
        let _b2 = limits.acquire(b).unwrap();
        assert_eq!(limits.acquire(b).err(), Some(Refused::PerIp));
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let limits = SocketLimits::new(10, 1, 10);
        let _a = limits.acquire("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert_eq!(
            limits
                .acquire("2001:db8:1:2:ffff::9".parse().unwrap())
                .err(),
            Some(Refused::PerIp)
        );
        let _b = limits.acquire("2001:db8:1:3::1".parse().unwrap()).unwrap();
        let _c = limits.acquire("192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(
            limits.acquire("::ffff:192.0.2.1".parse().unwrap()).err(),
            Some(Refused::PerIp)
        );
    }

    #[test]
    fn a_joined_socket_counts_against_the_total_only() {
        let limits = SocketLimits::new(100, 2, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let mut joined = Vec::new();
        for _ in 0..50 {
            let mut permit = limits.acquire(a).expect("an unjoined place is free");
            permit.joined();
            joined.push(permit);
        }
        let first = limits.acquire(a).unwrap();
        let _second = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refused::PerIp));
        // Leaving joined sockets frees no unjoined place; an unjoined one leaving does.
        joined.truncate(10);
        assert_eq!(limits.acquire(a).err(), Some(Refused::PerIp));
        drop(first);
        let mut third = limits.acquire(a).unwrap();
        third.joined();
        third.joined();
        let _fourth = limits.acquire(a).unwrap();
        assert_eq!(limits.acquire(a).err(), Some(Refused::PerIp));
        assert_eq!(limits.lock().total, 10 + 3);
    }

    #[test]
    fn joins_per_address_are_rate_limited() {
        let limits = SocketLimits::new(100, 10, 5);
        let t0 = Instant::now();
        let a = limits.acquire("192.0.2.1".parse().unwrap()).unwrap();
        let b = limits.acquire("192.0.2.2".parse().unwrap()).unwrap();
        // A burst of twice the rate, then the rate.
        assert_eq!((0..20).filter(|_| a.allow_join(t0)).count(), 10);
        assert!(b.allow_join(t0), "another address has its own rate");
        assert!(a.allow_join(t0 + std::time::Duration::from_millis(200)));
        assert!(!a.allow_join(t0 + std::time::Duration::from_millis(200)));
    }
}
