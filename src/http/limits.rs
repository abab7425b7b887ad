//! Caps on signaling sockets: in total and per client IP, taken at the upgrade and held by
//! the session until its socket is gone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tracing::warn;

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every one of `--max-sockets` is taken (HTTP 503).
    Full,
    /// This IP holds `--max-sockets-per-ip` (HTTP 429).
    PerIp,
}

struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

pub struct SocketLimits {
    max: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

/// One socket's place under the caps; given back on drop.
pub struct SocketPermit {
    limits: Arc<SocketLimits>,
    ip: IpAddr,
}

impl SocketLimits {
    /// `max` is lowered to what the process's open-file limit leaves room for (each socket
    /// is a descriptor; some are kept for the listener, media and files), so the cap bites
    /// before the accept loop runs out of descriptors.
    pub fn new(max: usize, max_per_ip: usize) -> Arc<SocketLimits> {
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
            counts: Mutex::new(Counts {
                total: 0,
                per_ip: HashMap::new(),
            }),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<SocketPermit, Refused> {
        let ip = client_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.per_ip.get(&ip).copied().unwrap_or(0);
        if mine >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        if counts.total >= self.max {
            return Err(Refused::Full);
        }
        counts.total += 1;
        counts.per_ip.insert(ip, mine + 1);
        Ok(SocketPermit {
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
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
        let limits = SocketLimits::new(3, 2);
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
        let limits = SocketLimits::new(10, 1);
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
}
