//! The shared UDP port: one socket per worker on the same address (`SO_REUSEPORT`), batched
//! reads (`recvmmsg` and GRO, through quinn-udp) and batched writes (`sendmmsg`: one system
//! call for a packet's whole fan-out, whatever the destinations; with GSO, one buffer for each
//! subscriber's run of equal-sized datagrams).

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState, BATCH_SIZE};
use socket2::{Domain, Protocol, Socket, Type};

/// Kernel buffers asked for each socket: bursts (a keyframe to every subscriber) must not
/// overflow between two reads or two writes.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Largest datagram read (GRO may coalesce several into one buffer).
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// Send buffers are this large (a full-size packet and its SRTP tag) and kept for reuse once
/// sent, up to [`MAX_SPARE_BUFFERS`]: the fan-out marshals into them instead of allocating.
const SEND_BUFFER_BYTES: usize = 1536;
const MAX_SPARE_BUFFERS: usize = 1024;

/// Binds one socket of the shared port. `reuse_port` lets every worker bind the same
/// address; the kernel then spreads clients across them by a hash of their address.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Keeps a send buffer for reuse if it is of the usual size and not too many are kept.
fn keep_spare(spare: &mut Vec<BytesMut>, mut data: BytesMut) {
    if spare.len() < MAX_SPARE_BUFFERS
        && (SEND_BUFFER_BYTES..=2 * SEND_BUFFER_BYTES).contains(&data.capacity())
    {
        data.clear();
        spare.push(data);
    }
}

/// A datagram to send.
#[derive(Debug)]
pub struct Outgoing {
    pub to: SocketAddr,
    pub data: BytesMut,
    /// When it was queued: what waits too long for the socket is dropped.
    pub queued: Instant,
}

/// A received datagram.
#[derive(Debug)]
pub struct Incoming {
    pub from: SocketAddr,
    /// The local IP it was sent to (a socket bound to every interface has several).
    pub to: Option<std::net::IpAddr>,
    pub data: BytesMut,
}

pub struct Udp {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    recv_buffers: Vec<Vec<u8>>,
    recv_meta: Vec<RecvMeta>,
    #[cfg(not(target_os = "linux"))]
    gso_buffer: Vec<u8>,
    #[cfg(target_os = "linux")]
    mmsg: mmsg::Scratch,
    /// Datagrams waiting for the socket to take them.
    pub queue: VecDeque<Outgoing>,
    spare: Vec<BytesMut>,
    /// Most datagrams the kernel segments from one buffer (1: no GSO).
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    gso_segments: usize,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    pub datagrams: u64,
    /// Buffers handed to the kernel: fewer than datagrams when GSO sent runs as one.
    pub messages: u64,
    pub syscalls: u64,
    /// Waited longer than the limit for the socket: dropped.
    pub expired: u64,
    /// Refused by the kernel (unreachable destination, too large): dropped.
    pub failed: u64,
    /// The socket is full: wait until it is writable and flush again.
    pub blocked: bool,
}

impl Udp {
    /// Wraps a socket from [`bind`]; must run inside the worker's runtime.
    pub fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let io = tokio::net::UdpSocket::from_std(socket)?;
        let state = UdpSocketState::new(UdpSockRef::from(&io))?;
        let gso_segments = state.max_gso_segments().max(1);
        let batch = BATCH_SIZE.max(1);
        Ok(Udp {
            io,
            state,
            recv_buffers: (0..batch).map(|_| vec![0u8; RECV_BUFFER_BYTES]).collect(),
            recv_meta: vec![RecvMeta::default(); batch],
            #[cfg(not(target_os = "linux"))]
            gso_buffer: Vec::with_capacity(64 * 1024),
            #[cfg(target_os = "linux")]
            mmsg: mmsg::Scratch::default(),
            queue: VecDeque::new(),
            spare: Vec::new(),
            gso_segments,
        })
    }

    /// An empty send buffer, reused if one is spare.
    pub fn buffer(&mut self) -> BytesMut {
        self.spare
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(SEND_BUFFER_BYTES))
    }

    /// A buffer from [`Udp::buffer`] that was not sent after all.
    pub fn give_back(&mut self, data: BytesMut) {
        keep_spare(&mut self.spare, data);
    }

    /// Takes the first `n` queued datagrams off the queue (sent or refused), keeping their
    /// buffers for [`Udp::buffer`].
    fn done_with(&mut self, n: usize) {
        let Udp { queue, spare, .. } = self;
        for sent in queue.drain(..n) {
            keep_spare(spare, sent.data);
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    pub async fn readable(&self) -> io::Result<()> {
        self.io.readable().await
    }

    pub async fn writable(&self) -> io::Result<()> {
        self.io.writable().await
    }

    /// Reads one batch of datagrams into `out`; `Ok(0)` when nothing is waiting.
    pub fn recv_batch(&mut self, out: &mut Vec<Incoming>) -> io::Result<usize> {
        let Udp {
            io,
            state,
            recv_buffers,
            recv_meta,
            ..
        } = self;
        let mut slices: Vec<IoSliceMut<'_>> = recv_buffers
            .iter_mut()
            .map(|b| IoSliceMut::new(b))
            .collect();
        let received = io.try_io(tokio::io::Interest::READABLE, || {
            let n = state.recv(UdpSockRef::from(&*io), &mut slices, recv_meta)?;
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut datagrams = 0;
        for (meta, buffer) in recv_meta.iter().zip(slices.iter()).take(n) {
            // GRO: several datagrams from one sender, `stride` bytes each.
            let stride = if meta.stride == 0 {
                meta.len.max(1)
            } else {
                meta.stride
            };
            for chunk in buffer[..meta.len].chunks(stride) {
                out.push(Incoming {
                    from: meta.addr,
                    to: meta.dst_ip,
                    data: BytesMut::from(chunk),
                });
                datagrams += 1;
            }
        }
        Ok(datagrams)
    }

    /// Sends what is queued, many datagrams per system call. Datagrams that waited longer than
    /// `max_wait` are dropped.
    ///
    /// A fan-out queues one datagram per subscriber per packet, so destinations interleave;
    /// where the kernel has UDP GSO, the queue is first grouped by destination (stably: each
    /// destination's datagrams stay in order), and a run of same-sized datagrams to one
    /// subscriber (a video frame's packets) goes as one buffer the kernel segments, which costs
    /// it one route lookup and one socket buffer instead of one per datagram.
    #[cfg(target_os = "linux")]
    pub fn flush(&mut self, now: Instant, max_wait: Duration) -> Flushed {
        let mut done = Flushed::default();
        let before = self.queue.len();
        self.queue
            .retain(|d| now.saturating_duration_since(d.queued) <= max_wait);
        done.expired = (before - self.queue.len()) as u64;
        let queue = self.queue.make_contiguous();
        if self.gso_segments > 1 && queue.len() > 1 {
            queue.sort_by_key(|d| d.to);
        }
        while !self.queue.is_empty() {
            // Contiguous: made so above, and taking from the front keeps it so.
            let (slice, _) = self.queue.as_slices();
            let io = &self.io;
            let scratch = &mut self.mmsg;
            let segments = self.gso_segments;
            let sent = io.try_io(tokio::io::Interest::WRITABLE, || {
                use std::os::fd::AsRawFd;
                scratch.send(io.as_raw_fd(), slice, segments)
            });
            match sent {
                Ok(sent) => {
                    done.syscalls += 1;
                    done.datagrams += sent.datagrams as u64;
                    done.messages += sent.messages as u64;
                    if sent.datagrams == 0 {
                        done.failed += 1;
                    }
                    self.done_with(sent.datagrams.max(1).min(slice.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.blocked = true;
                    break;
                }
                Err(e)
                    if self.gso_segments > 1
                        && matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL)) =>
                {
                    // The route's device cannot segment: send one datagram per buffer.
                    tracing::warn!(error = %e, "UDP GSO refused; sending datagrams one by one");
                    self.gso_segments = 1;
                }
                Err(_) => {
                    // The first datagram was refused (unreachable, too large): drop it, not
                    // the ones behind it.
                    done.failed += 1;
                    self.done_with(1);
                }
            }
        }
        done
    }

    /// Sends what is queued, in order: runs of same-sized datagrams to one destination go in
    /// one GSO system call. Datagrams that waited longer than `max_wait` are dropped.
    #[cfg(not(target_os = "linux"))]
    pub fn flush(&mut self, now: Instant, max_wait: Duration) -> Flushed {
        let mut done = Flushed::default();
        let max_segments = self.state.max_gso_segments().max(1);
        while let Some(first) = self.queue.front() {
            if now.saturating_duration_since(first.queued) > max_wait {
                self.queue.pop_front();
                done.expired += 1;
                continue;
            }
            // The run: same destination, same size, except that the last may be shorter.
            let to = first.to;
            let size = first.data.len();
            let mut run = 1;
            while run < max_segments {
                match self.queue.get(run) {
                    Some(next) if next.to == to && next.data.len() <= size => {
                        run += 1;
                        if next.data.len() < size {
                            break;
                        }
                    }
                    _ => break,
                }
            }
            let result = if run == 1 {
                send(&self.io, &self.state, to, &first.data, None)
            } else {
                self.gso_buffer.clear();
                for d in self.queue.iter().take(run) {
                    self.gso_buffer.extend_from_slice(&d.data);
                }
                send(&self.io, &self.state, to, &self.gso_buffer, Some(size))
            };
            match result {
                Ok(()) => {
                    done.syscalls += 1;
                    done.messages += 1;
                    done.datagrams += run as u64;
                    self.queue.drain(..run);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.blocked = true;
                    break;
                }
                Err(_) => {
                    // Not retried: a refused datagram would block all that follow it.
                    done.failed += run as u64;
                    self.queue.drain(..run);
                }
            }
        }
        done
    }
}

/// `sendmmsg(2)`: quinn-udp batches only datagrams to one destination (GSO); a fan-out sends
/// one datagram to each of many.
#[cfg(target_os = "linux")]
mod mmsg {
    use super::Outgoing;
    use socket2::SockAddr;
    use std::io;
    use std::os::fd::RawFd;

    /// Datagrams per system call.
    pub const MAX_BATCH: usize = 256;

    /// Bytes of one GSO buffer at most (an IPv4 datagram's limit, less headers).
    const MAX_GSO_BYTES: usize = 65_000;

    /// Buffers reused from call to call.
    #[derive(Default)]
    pub struct Scratch {
        addrs: Vec<SockAddr>,
        iovs: Vec<libc::iovec>,
        headers: Vec<libc::mmsghdr>,
        /// Per message: datagrams in it, and their size (the GSO segment size).
        runs: Vec<(usize, usize)>,
        /// Per message: room for one `UDP_SEGMENT` control message.
        controls: Vec<[u64; 4]>,
    }

    // The raw pointers only point into this struct's own vectors and the datagrams passed to
    // `send`, and only while it runs.
    unsafe impl Send for Scratch {}

    /// What one `sendmmsg` took.
    pub struct Sent {
        pub messages: usize,
        pub datagrams: usize,
    }

    impl Scratch {
        /// Sends the start of `batch` in one call: up to [`MAX_BATCH`] messages, each one
        /// datagram or, with `max_segments` over 1, a run of up to that many same-sized
        /// datagrams to one destination (the last may be shorter) for the kernel to segment.
        pub fn send(
            &mut self,
            fd: RawFd,
            batch: &[Outgoing],
            max_segments: usize,
        ) -> io::Result<Sent> {
            let Scratch {
                addrs,
                iovs,
                headers,
                runs,
                controls,
            } = self;
            addrs.clear();
            iovs.clear();
            headers.clear();
            runs.clear();
            let mut i = 0;
            while i < batch.len() && runs.len() < MAX_BATCH {
                let first = &batch[i];
                let size = first.data.len();
                let mut run = 1;
                let mut total = size;
                while run < max_segments && size > 0 {
                    let Some(next) = batch.get(i + run) else {
                        break;
                    };
                    let len = next.data.len();
                    if next.to != first.to || len == 0 || len > size || total + len > MAX_GSO_BYTES
                    {
                        break;
                    }
                    run += 1;
                    total += len;
                    if len < size {
                        break;
                    }
                }
                addrs.push(SockAddr::from(first.to));
                for d in &batch[i..i + run] {
                    iovs.push(libc::iovec {
                        iov_base: d.data.as_ptr() as *mut libc::c_void,
                        iov_len: d.data.len(),
                    });
                }
                runs.push((run, size));
                i += run;
            }
            if controls.len() < runs.len() {
                controls.resize(runs.len(), [0; 4]);
            }
            let mut offset = 0;
            for ((&(run, size), addr), control) in
                runs.iter().zip(addrs.iter()).zip(controls.iter_mut())
            {
                // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                header.msg_hdr.msg_namelen = addr.len();
                header.msg_hdr.msg_iov = iovs[offset..].as_mut_ptr();
                header.msg_hdr.msg_iovlen = run as _;
                if run > 1 {
                    header.msg_hdr.msg_control = control.as_mut_ptr() as *mut libc::c_void;
                    // SAFETY: CMSG_* only compute sizes and offsets within `control`, which is
                    // 32 aligned bytes: room for one header and a u16.
                    unsafe {
                        header.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as _;
                        let cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                        (*cmsg).cmsg_level = libc::SOL_UDP;
                        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                        (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut u16, size as u16);
                    }
                }
                offset += run;
                headers.push(header);
            }
            // SAFETY: `headers` holds `len` initialized entries whose pointers refer to
            // `addrs`, `iovs`, `controls` and the datagrams, all alive and unmoved until this
            // returns.
            let sent = unsafe {
                libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as libc::c_uint, 0)
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            let messages = sent as usize;
            Ok(Sent {
                messages,
                datagrams: runs[..messages].iter().map(|(run, _)| run).sum(),
            })
        }
    }
}

#[cfg_attr(target_os = "linux", allow(dead_code))]
fn send(
    io: &tokio::net::UdpSocket,
    state: &UdpSocketState,
    to: SocketAddr,
    contents: &[u8],
    segment_size: Option<usize>,
) -> io::Result<()> {
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size,
        src_ip: None,
    };
    io.try_io(tokio::io::Interest::WRITABLE, || {
        state.try_send(UdpSockRef::from(io), &transmit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_goes_out_in_few_syscalls_and_comes_back_whole() {
        let a = Udp::new(bind("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap();
        let mut b = Udp::new(bind("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut a = a;
        let now = Instant::now();
        // A video frame: nine full packets and a short last one.
        for i in 0..10u8 {
            let len = if i == 9 { 300 } else { 1200 };
            a.queue.push_back(Outgoing {
                to,
                data: BytesMut::from(&vec![i; len][..]),
                queued: now,
            });
        }
        a.writable().await.unwrap();
        let flushed = a.flush(now, Duration::from_secs(1));
        assert_eq!(flushed.datagrams, 10);
        assert!(flushed.syscalls <= 10);
        let mut got = Vec::new();
        while got.len() < 10 {
            b.readable().await.unwrap();
            b.recv_batch(&mut got).unwrap();
        }
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.data[0], i as u8);
            assert_eq!(d.data.len(), if i == 9 { 300 } else { 1200 });
        }
    }

    /// A fan-out's queue interleaves destinations: every subscriber still gets its datagrams
    /// whole and in order, and with GSO each subscriber's run of equal-sized datagrams goes as
    /// one buffer.
    #[tokio::test]
    async fn an_interleaved_fan_out_arrives_whole_and_in_order_at_each_destination() {
        let mut a = Udp::new(bind("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap();
        let mut subscribers: Vec<Udp> = (0..3)
            .map(|_| Udp::new(bind("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap())
            .collect();
        let now = Instant::now();
        // Four packets (three full, a short last one), each fanned out to three subscribers.
        for packet in 0..4u8 {
            for s in &subscribers {
                let len = if packet == 3 { 500 } else { 1100 };
                a.queue.push_back(Outgoing {
                    to: s.local_addr().unwrap(),
                    data: BytesMut::from(&vec![packet; len][..]),
                    queued: now,
                });
            }
        }
        a.writable().await.unwrap();
        let flushed = a.flush(now, Duration::from_secs(1));
        assert_eq!(flushed.datagrams, 12);
        assert_eq!(flushed.syscalls, 1);
        if a.gso_segments >= 4 {
            assert_eq!(flushed.messages, 3, "one buffer per subscriber");
        } else {
            assert_eq!(flushed.messages, 12);
        }
        for s in &mut subscribers {
            let mut got = Vec::new();
            while got.len() < 4 {
                s.readable().await.unwrap();
                s.recv_batch(&mut got).unwrap();
            }
            let order: Vec<(u8, usize)> = got.iter().map(|d| (d.data[0], d.data.len())).collect();
            assert_eq!(order, [(0, 1100), (1, 1100), (2, 1100), (3, 500)]);
        }
        assert!(a.queue.is_empty());
    }

    #[test]
    fn what_waited_too_long_is_dropped() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut a = Udp::new(bind("127.0.0.1:0".parse().unwrap(), false).unwrap()).unwrap();
            let t0 = Instant::now();
            a.queue.push_back(Outgoing {
                to: "127.0.0.1:9".parse().unwrap(),
                data: BytesMut::from(&b"old"[..]),
                queued: t0,
            });
            let flushed = a.flush(t0 + Duration::from_secs(1), Duration::from_millis(100));
            assert_eq!((flushed.expired, flushed.datagrams), (1, 0));
        });
    }
}
