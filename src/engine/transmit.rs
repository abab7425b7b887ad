//! The worker's [`MediaOut`]: a forwarded packet is protected for its peer connection in
//! place, with the keys the stack's DTLS handshake derived, and queued for the socket; until a
//! connection's keys are proven (or if they never are) it goes through the stack's own SRTP
//! pipeline instead, drained at the end of the batch.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::sansio::Protocol;
use rtc::shared::marshal::Unmarshal;
use tracing::debug;

use crate::engine::peers::Peers;
use crate::engine::router::MediaOut;
use crate::engine::srtp::SrtpError;
use crate::engine::udp::{self, Udp};
use crate::media::downtrack::Shape;
use crate::metrics::Metrics;

/// Test-only fault injection: every Nth video datagram to subscribers is lost after
/// encryption, as on a lossy downlink.
pub struct SendFault {
    every: Option<u32>,
    count: u32,
}

impl SendFault {
    pub fn new(every: Option<u32>) -> Self {
        SendFault { every, count: 0 }
    }

    pub fn is_on(&self) -> bool {
        self.every.is_some()
    }

    /// Counts a video datagram about to be sent; true if it is to be lost.
    pub fn drops(&mut self) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        self.count = self.count.wrapping_add(1);
        self.count.is_multiple_of(every.max(1))
    }
}

/// Everything a send needs, borrowed from the worker for one fan-out or retransmission.
pub struct Transmit<'a> {
    pub peers: &'a mut Peers,
    pub udp: &'a mut Udp,
    pub fault: &'a mut SendFault,
    pub metrics: &'a Metrics,
}

impl MediaOut for Transmit<'_> {
    fn buffer(&mut self) -> BytesMut {
        self.udp.buffer()
    }

    fn give_back(&mut self, buf: BytesMut) {
        self.udp.give_back(buf);
    }

    fn may_retransmit(&mut self, peer: usize, len: usize, now: Instant) -> bool {
        self.peers
            .get_mut(peer)
            .and_then(|p| p.congestion.as_mut())
            .is_none_or(|c| c.may_retransmit(len, now))
    }

    fn send(&mut self, peer: usize, mut packet: BytesMut, shape: Shape, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(peer) else {
            self.udp.give_back(packet);
            return false;
        };
        if shape.retransmission {
            if let Some(c) = p.congestion.as_mut() {
                c.on_retransmitted(packet.len());
            }
        }
        // Numbered as it leaves, in the order it leaves: the estimate compares send times.
        if let (Some(at), Some(congestion)) = (shape.transport_cc_at, p.congestion.as_mut()) {
            let seq = congestion.on_sent(packet.len(), now);
            if let Some(place) = packet.get_mut(at..at + 2) {
                place.copy_from_slice(&seq.to_be_bytes());
            }
        }
        if let Some((sender, to)) = p.srtp.direct() {
            let protected = sender.protect(&mut packet, shape.header_len);
            return queue_protected(
                protected,
                packet,
                to,
                shape.video,
                self.udp,
                self.fault,
                self.metrics,
                now,
            );
        }
        // The stack's pipeline takes its own packet type: parsed back from what was written.
        let parsed = rtp::Packet::unmarshal(&mut &packet[..]);
        self.udp.give_back(packet);
        let Ok(parsed) = parsed else {
            return false;
        };
        let written = p.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(String::new(), parsed),
        });
        if written.is_ok() {
            self.peers.mark_dirty(peer);
        }
        written.is_ok()
    }
}

/// Queues a datagram the worker protected (unless the test-only lossy downlink loses it).
/// True if it went; a protection error is counted and the packet not sent.
#[allow(clippy::too_many_arguments)]
fn queue_protected(
    protected: Result<(), SrtpError>,
    data: BytesMut,
    to: SocketAddr,
    video: bool,
    udp: &mut Udp,
    fault: &mut SendFault,
    metrics: &Metrics,
    now: Instant,
) -> bool {
    if let Err(e) = protected {
        debug!(%to, error = %e, "protecting a packet");
        Metrics::add(&metrics.srtp_protect_errors, 1);
        udp.give_back(data);
        return false;
    }
    if video && fault.drops() {
        udp.give_back(data);
    } else {
        udp.queue.push_back(udp::Outgoing {
            to,
            data,
            queued: now,
        });
    }
    true
}
