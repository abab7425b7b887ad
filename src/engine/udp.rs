//! The shared UDP port: one socket per worker on the same address (`SO_REUSEPORT`), batched
//! reads (`recvmmsg` and GRO, through quinn-udp) and batched writes (`sendmmsg`: one system
//! call for a packet's whole fan-out, whatever the destinations).

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
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flushed {
    pub datagrams: u64,
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

    /// Sends what is queued, in order, many datagrams per system call. Datagrams that waited
    /// longer than `max_wait` are dropped.
    #[cfg(target_os = "linux")]
    pub fn flush(&mut self, now: Instant, max_wait: Duration) -> Flushed {
        let mut done = Flushed::default();
        while let Some(first) = self.queue.front() {
            if now.saturating_duration_since(first.queued) > max_wait {
                self.queue.pop_front();
                done.expired += 1;
                continue;
            }
            let batch = self.queue.len().min(mmsg::MAX_BATCH);
            let (front, back) = self.queue.as_slices();
            let slice = if front.len() >= batch {
                &front[..batch]
            } else {
                // Rare: the ring wrapped. Send what is contiguous first.
                let _ = back;
                front
            };
            let io = &self.io;
            let scratch = &mut self.mmsg;
            let sent = io.try_io(tokio::io::Interest::WRITABLE, || {
                use std::os::fd::AsRawFd;
                scratch.send(io.as_raw_fd(), slice)
            });
            match sent {
                Ok(n) => {
                    done.syscalls += 1;
                    done.datagrams += n as u64;
                    let taken = n.max(1).min(slice.len());
                    self.done_with(taken);
                    if n == 0 {
                        done.failed += 1;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    done.blocked = true;
                    break;
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

    /// Buffers reused from call to call.
    #[derive(Default)]
    pub struct Scratch {
        addrs: Vec<SockAddr>,
        iovs: Vec<libc::iovec>,
        headers: Vec<libc::mmsghdr>,
    }

    // The raw pointers only point into this struct's own vectors and the datagrams passed to
    // `send`, and only while it runs.
    unsafe impl Send for Scratch {}

    impl Scratch {
        /// Sends `batch` in one call; returns how many the kernel took (0 only on an error).
        pub fn send(&mut self, fd: RawFd, batch: &[Outgoing]) -> io::Result<usize> {
            self.addrs.clear();
            self.iovs.clear();
            self.headers.clear();
            for d in batch {
                self.addrs.push(SockAddr::from(d.to));
                self.iovs.push(libc::iovec {
                    iov_base: d.data.as_ptr() as *mut libc::c_void,
                    iov_len: d.data.len(),
                });
            }
            for (addr, iov) in self.addrs.iter().zip(self.iovs.iter_mut()) {
                // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the call.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                header.msg_hdr.msg_namelen = addr.len();
                header.msg_hdr.msg_iov = iov as *mut libc::iovec;
                header.msg_hdr.msg_iovlen = 1;
                self.headers.push(header);
            }
            // SAFETY: `headers` holds `len` initialized entries whose pointers refer to
            // `addrs`, `iovs` and the datagrams, all alive and unmoved until this returns.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.headers.len() as libc::c_uint,
                    0,
                )
            };
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(sent as usize)
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
