//! An emulated bottleneck in front of a client's receive path, without root: what a router on a
//! slow downlink does to the datagrams, in the process.
//!
//! [`Link`] is the emulation, sans-IO: each datagram offered to it is served at the link's rate
//! behind those still queued (drop-tail past [`Link::queue_limit`]), arrives a fixed delay
//! later, or is lost at random (seeded, so a run can be repeated). [`ShapedSocket`] puts a
//! `Link` between a UDP socket and the WebRTC stack that reads it: the stack sees each
//! datagram only when the emulated link delivers it. Its rate can change while it runs
//! (`Client::set_downlink`), as a real network's does.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{AsyncUdpSocket, EcnCodepoint, RecvMeta, Transmit};

/// How a link behaves.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConfig {
    /// Served at this many bits per second; `None`: at once, whatever the rate.
    pub rate_bps: Option<u64>,
    /// Added to every datagram that gets through.
    pub delay: Duration,
    /// The chance that a datagram is lost, from 0 to 1.
    pub loss: f64,
}

impl LinkConfig {
    /// A link that changes nothing.
    pub fn is_transparent(&self) -> bool {
        self.rate_bps.is_none() && self.delay.is_zero() && self.loss <= 0.0
    }
}

/// The queue holds at least this much, whatever the rate.
pub const MIN_QUEUE_BYTES: u64 = 64 * 1024;
/// ... and at least this long of the rate, as a router's buffer is sized.
pub const QUEUE_TIME: Duration = Duration::from_millis(200);
/// The slowest rate the link is served at: below, a datagram would wait minutes.
const MIN_RATE_BPS: u64 = 1_000;

/// What becomes of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It arrives at this time.
    Deliver(Instant),
    /// Lost at random.
    Lost,
    /// The queue was full: dropped at its tail.
    Overflow,
}

/// What a link did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub datagrams: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub lost: u64,
    pub overflowed: u64,
    /// The most bytes that were ever queued at once.
    pub max_queued_bytes: u64,
}

/// The emulated link: a FIFO served at the rate, a fixed delay, random loss.
#[derive(Debug, Clone)]
pub struct Link {
    config: LinkConfig,
    /// When the link will have served everything queued so far.
    busy_until: Option<Instant>,
    rng: SplitMix64,
    stats: LinkStats,
}

impl Link {
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Link {
            config,
            busy_until: None,
            rng: SplitMix64(seed),
            stats: LinkStats::default(),
        }
    }

    pub fn config(&self) -> LinkConfig {
        self.config
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Changes the rate; what is queued is served at the new one from now on.
    pub fn set_rate(&mut self, rate_bps: Option<u64>, now: Instant) {
        if let (Some(old), Some(busy)) = (self.rate(), self.busy_until) {
            let queued = queued_at(busy, now, old);
            self.busy_until = match rate_bps.map(|r| r.max(MIN_RATE_BPS)) {
                Some(new) if queued > 0 => Some(now + serve_time(queued, new)),
                _ => None,
            };
        }
        self.config.rate_bps = rate_bps;
    }

    fn rate(&self) -> Option<u64> {
        self.config.rate_bps.map(|r| r.max(MIN_RATE_BPS))
    }

    /// The most bytes the queue holds: [`QUEUE_TIME`] of the rate or [`MIN_QUEUE_BYTES`],
    /// whichever is larger.
    pub fn queue_limit(&self) -> u64 {
        let of_rate = self.rate().map_or(0, |r| {
            (r as u128 * QUEUE_TIME.as_micros() / 8_000_000) as u64
        });
        of_rate.max(MIN_QUEUE_BYTES)
    }

    /// Bytes waiting to be served at `now`.
    pub fn queued_bytes(&self, now: Instant) -> u64 {
        match (self.rate(), self.busy_until) {
            (Some(rate), Some(busy)) => queued_at(busy, now, rate),
            _ => 0,
        }
    }

    /// A datagram of `len` bytes reaches the link at `now`: what becomes of it.
    pub fn offer(&mut self, now: Instant, len: usize) -> Fate {
        self.stats.datagrams += 1;
        self.stats.bytes += len as u64;
        if self.config.loss > 0.0 && self.rng.unit() < self.config.loss {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        let served_at = match self.rate() {
            None => now,
            Some(rate) => {
                let queued = self.queued_bytes(now);
                if queued + len as u64 > self.queue_limit() {
                    self.stats.overflowed += 1;
                    return Fate::Overflow;
                }
                self.stats.max_queued_bytes = self.stats.max_queued_bytes.max(queued + len as u64);
                let start = self.busy_until.map_or(now, |b| b.max(now));
                let done = start + serve_time(len as u64, rate);
                self.busy_until = Some(done);
                done
            }
        };
        self.stats.delivered += 1;
        Fate::Deliver(served_at + self.config.delay)
    }
}

/// How long `bytes` take at `rate` bits per second.
fn serve_time(bytes: u64, rate: u64) -> Duration {
    Duration::from_nanos((bytes as u128 * 8 * 1_000_000_000 / rate as u128) as u64)
}

/// Bytes still to serve at `now` when the link is busy until `busy` at `rate`.
fn queued_at(busy: Instant, now: Instant, rate: u64) -> u64 {
    let left = busy.saturating_duration_since(now);
    (left.as_nanos() * rate as u128 / 8 / 1_000_000_000) as u64
}

/// A small seeded generator (SplitMix64): the same seed loses the same datagrams.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A link shared by the socket it shapes and whoever changes it.
pub type SharedLink = Arc<Mutex<Link>>;

/// A datagram on its way through the emulated link.
struct Held {
    at: Instant,
    from: SocketAddr,
    dst_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: Vec<u8>,
}

/// What the socket keeps between reads.
#[derive(Default)]
struct Shaping {
    /// Delivered by the link but not yet due, in the order they fall due.
    held: VecDeque<Held>,
    /// Wakes the reader when the first held datagram falls due.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Buffers the real socket is read into (made on first use).
    scratch: Vec<Vec<u8>>,
}

/// Messages read from the real socket at once, when shaping.
const SCRATCH_MESSAGES: usize = 8;
/// Reads from the real socket in one call to `poll_recv`, before the caller gets a turn.
const MAX_READS_PER_POLL: usize = 64;

/// A UDP socket whose receive path goes through a [`Link`]. Sending is untouched.
pub struct ShapedSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    link: SharedLink,
    shaping: Mutex<Shaping>,
}

impl fmt::Debug for ShapedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShapedSocket")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl ShapedSocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, link: SharedLink) -> Self {
        ShapedSocket {
            inner,
            link,
            shaping: Mutex::new(Shaping::default()),
        }
    }

    /// Reads what the real socket has into the link, until it has nothing more (its waker is
    /// then set) or a bounded number of reads.
    fn take_in(&self, cx: &mut Context<'_>, shaping: &mut Shaping) -> io::Result<()> {
        if shaping.scratch.is_empty() {
            let size = self.inner.max_gro_segments().clamp(1, 64) * 1500;
            shaping.scratch = vec![vec![0; size]; SCRATCH_MESSAGES];
        }
        for _ in 0..MAX_READS_PER_POLL {
            let mut meta = [RecvMeta::default(); SCRATCH_MESSAGES];
            let mut bufs: Vec<IoSliceMut<'_>> = shaping
                .scratch
                .iter_mut()
                .map(|b| IoSliceMut::new(b))
                .collect();
            let n = match self.inner.poll_recv(cx, &mut bufs, &mut meta) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(n)) => n,
            };
            drop(bufs);
            let now = Instant::now();
            let Ok(mut link) = self.link.lock() else {
                return Ok(());
            };
            for (m, buf) in meta.iter().zip(&shaping.scratch).take(n) {
                let stride = m.stride.max(1);
                let mut at = 0;
                while at < m.len {
                    let end = (at + stride).min(m.len);
                    if let Fate::Deliver(due) = link.offer(now, end - at) {
                        shaping.held.push_back(Held {
                            at: due,
                            from: m.addr,
                            dst_ip: m.dst_ip,
                            ecn: m.ecn,
                            data: buf[at..end].to_vec(),
                        });
                    }
                    at = end;
                }
            }
        }
        // Still more to read: come back for it once the caller had its turn.
        cx.waker().wake_by_ref();
        Ok(())
    }
}

impl AsyncUdpSocket for ShapedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        self.inner.poll_send(cx, transmit)
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        // The pass-through path hands the caller's buffers to the real socket.
        self.inner.max_gro_segments()
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Ok(mut shaping) = self.shaping.lock() else {
            return self.inner.poll_recv(cx, bufs, meta);
        };
        let transparent = match self.link.lock() {
            Ok(link) => link.config().is_transparent(),
            Err(_) => true,
        };
        if transparent && shaping.held.is_empty() {
            drop(shaping);
            return self.inner.poll_recv(cx, bufs, meta);
        }
        let read_error = self.take_in(cx, &mut shaping).err();
        let now = Instant::now();
        let mut n = 0;
        while n < bufs.len().min(meta.len()) {
            if shaping.held.front().is_none_or(|h| h.at > now) {
                break;
            }
            let Some(held) = shaping.held.pop_front() else {
                break;
            };
            let len = held.data.len().min(bufs[n].len());
            bufs[n][..len].copy_from_slice(&held.data[..len]);
            // RecvMeta is non-exhaustive: made by default, then filled in.
            let m = &mut meta[n];
            *m = RecvMeta::default();
            m.addr = held.from;
            m.len = len;
            m.stride = len.max(1);
            m.ecn = held.ecn;
            m.dst_ip = held.dst_ip;
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if let Some(e) = read_error {
            return Poll::Ready(Err(e));
        }
        if let Some(due) = shaping.held.front().map(|h| h.at) {
            let due = tokio::time::Instant::from_std(due);
            let timer = shaping
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            timer.as_mut().reset(due);
            if timer.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn link(rate_bps: Option<u64>, delay: Duration, loss: f64) -> Link {
        Link::new(
            LinkConfig {
                rate_bps,
                delay,
                loss,
            },
            7,
        )
    }

    fn delivered_at(fate: Fate) -> Instant {
        match fate {
            Fate::Deliver(at) => at,
            other => panic!("expected delivery, got {other:?}"),
        }
    }

    #[test]
    fn a_burst_is_served_at_the_rate() {
        let t0 = Instant::now();
        let mut l = link(Some(1_000_000), Duration::ZERO, 0.0);
        // 1,000 bytes at 1 Mbit/s: 8 ms each, one behind the other.
        for k in 1..=10u32 {
            assert_eq!(delivered_at(l.offer(t0, 1000)), t0 + 8 * MS * k);
        }
        assert_eq!(l.queued_bytes(t0), 10_000);
        assert_eq!(l.queued_bytes(t0 + 40 * MS), 5_000);
        // Once the queue is empty, a datagram goes through in its own serving time.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(delivered_at(l.offer(later, 125)), later + MS);
    }

    #[test]
    fn a_stream_below_the_rate_is_not_queued() {
        let t0 = Instant::now();
        let mut l = link(Some(2_000_000), Duration::ZERO, 0.0);
        // 1 Mbit/s offered: 1,000 bytes every 8 ms, each served in 4 ms.
        for k in 0..100u32 {
            let now = t0 + 8 * MS * k;
            assert_eq!(delivered_at(l.offer(now, 1000)), now + 4 * MS);
        }
        assert_eq!(l.stats().max_queued_bytes, 1000);
    }

    #[test]
    fn over_the_rate_the_link_delivers_the_rate_and_drops_the_rest_at_the_tail() {
        let t0 = Instant::now();
        let rate = 300_000;
        let mut l = link(Some(rate), Duration::ZERO, 0.0);
        assert_eq!(
            l.queue_limit(),
            MIN_QUEUE_BYTES,
            "200 ms of 300 kbit/s is less"
        );
        // 1.2 Mbit/s offered for 10 s: 1,000 bytes every 6.667 ms.
        let mut last = t0;
        let mut delivered = 0u64;
        let mut overflowed_at = None;
        for k in 0..1500u32 {
            let now = t0 + Duration::from_micros(6_667) * k;
            match l.offer(now, 1000) {
                Fate::Deliver(at) => {
                    assert!(at >= last, "first in, first out");
                    last = at;
                    delivered += 1;
                    assert!(l.queued_bytes(now) <= l.queue_limit());
                }
                Fate::Overflow => {
                    overflowed_at.get_or_insert(now);
                }
                Fate::Lost => unreachable!(),
            }
        }
        // The queue fills in 64 KiB / (1.2 - 0.3 Mbit/s) = 0.58 s, then holds at its limit.
        let full = overflowed_at
            .expect("the queue overflowed")
            .duration_since(t0);
        assert!(full > 500 * MS && full < 700 * MS, "{full:?}");
        // What got through arrives at the rate: 10 s of 300 kbit/s plus the queue at the end.
        let through = delivered * 8_000;
        let want = rate * 10 + MIN_QUEUE_BYTES * 8;
        assert!(through.abs_diff(want) < 2 * 8_000, "{through} vs {want}");
        assert_eq!(l.stats().overflowed, 1500 - delivered);
        // The last datagram waits behind a full queue: 64 KiB at 300 kbit/s, 1.75 s (less
        // the few ms since the last one accepted).
        let wait = last.duration_since(t0 + Duration::from_micros(6_667) * 1499);
        assert!(wait > 1_650 * MS && wait < 1_800 * MS, "{wait:?}");
    }

    #[test]
    fn the_queue_holds_200_ms_of_a_fast_rate() {
        let l = link(Some(10_000_000), Duration::ZERO, 0.0);
        assert_eq!(l.queue_limit(), 250_000);
        assert_eq!(link(None, MS, 0.0).queue_limit(), MIN_QUEUE_BYTES);
        let t0 = Instant::now();
        let mut l = l;
        let mut n = 0;
        while let Fate::Deliver(_) = l.offer(t0, 1200) {
            n += 1;
        }
        assert_eq!(n, 250_000 / 1200);
        assert_eq!(l.stats().overflowed, 1);
    }

    #[test]
    fn the_delay_is_added_to_every_datagram() {
        let t0 = Instant::now();
        let mut l = link(None, 75 * MS, 0.0);
        assert!(!l.config().is_transparent());
        for k in 0..10u32 {
            let now = t0 + MS * k;
            assert_eq!(delivered_at(l.offer(now, 1200)), now + 75 * MS);
        }
        let mut both = link(Some(1_000_000), 75 * MS, 0.0);
        assert_eq!(delivered_at(both.offer(t0, 1000)), t0 + 83 * MS);
    }

    #[test]
    fn loss_is_random_at_the_rate_asked_and_repeats_with_the_seed() {
        let t0 = Instant::now();
        let fates = |seed| {
            let mut l = Link::new(
                LinkConfig {
                    loss: 0.03,
                    ..LinkConfig::default()
                },
                seed,
            );
            let fates: Vec<bool> = (0..100_000)
                .map(|_| l.offer(t0, 100) == Fate::Lost)
                .collect();
            (fates, l.stats())
        };
        let (a, stats) = fates(1);
        assert!((2_700..=3_300).contains(&stats.lost), "{stats:?}");
        assert_eq!(stats.delivered + stats.lost, 100_000);
        assert_eq!(fates(1).0, a, "the same seed loses the same datagrams");
        assert_ne!(fates(2).0, a);
        // Not in bursts of a fixed pattern: losses are spread out.
        let first_half = a[..50_000].iter().filter(|&&l| l).count() as f64;
        assert!((first_half / stats.lost as f64 - 0.5).abs() < 0.05);
    }

    #[test]
    fn raising_the_rate_serves_the_queue_faster_from_then_on() {
        let t0 = Instant::now();
        let mut l = link(Some(100_000), Duration::ZERO, 0.0);
        for _ in 0..10 {
            l.offer(t0, 1250);
        }
        // 12,500 bytes at 100 kbit/s: a second. Half-way, the rate goes ten times up.
        assert_eq!(l.queued_bytes(t0 + 500 * MS), 6_250);
        l.set_rate(Some(1_000_000), t0 + 500 * MS);
        assert_eq!(l.queued_bytes(t0 + 500 * MS), 6_250);
        // The next datagram waits for the rest at the new rate: 50 ms, then 10 ms of its own.
        assert_eq!(delivered_at(l.offer(t0 + 500 * MS, 1250)), t0 + 560 * MS);
        // Unlimited: nothing waits.
        l.set_rate(None, t0 + 600 * MS);
        assert_eq!(delivered_at(l.offer(t0 + 600 * MS, 1250)), t0 + 600 * MS);
        assert!(LinkConfig::default().is_transparent());
    }
}
