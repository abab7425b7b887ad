//! A worker's peer connections, as one piece of state: the connections themselves, the
//! demultiplexer that finds one from a datagram, and what it takes to make, feed and close one.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use slab::Slab;
use tracing::debug;

use crate::engine::congestion::Congestion;
use crate::engine::demux::{self, Demux, Route};
use crate::engine::peer::{Peer, PeerSettings};
use crate::engine::srtp::{KeyTap, Writer};
use crate::engine::udp;
use crate::engine::{IceCandidate, PcKind, SdpRefusal, SrtpWriter};
use crate::metrics::Metrics;

/// Connectivity checks held per peer connection until its remote description is known.
const MAX_EARLY_CHECKS: usize = 8;

pub struct Peers {
    slab: Slab<Peer>,
    demux: Demux<usize>,
    settings: Arc<PeerSettings>,
    /// The announced addresses (the peer connections' host candidates).
    candidates: Vec<SocketAddr>,
    srtp_writer: SrtpWriter,
    /// Most remote candidates one peer connection takes.
    max_candidates: usize,
    worker: usize,
    metrics: Arc<Metrics>,
    /// Connections with output to drain at the end of the batch.
    pub dirty: Vec<usize>,
}

impl Peers {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        worker: usize,
        workers: usize,
        settings: Arc<PeerSettings>,
        candidates: Vec<SocketAddr>,
        srtp_writer: SrtpWriter,
        max_candidates: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Peers {
            slab: Slab::new(),
            demux: Demux::new(worker, workers),
            settings,
            candidates,
            srtp_writer,
            max_candidates,
            worker,
            metrics,
            dirty: Vec::new(),
        }
    }

    pub fn get(&self, key: usize) -> Option<&Peer> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Peer> {
        self.slab.get_mut(key)
    }

    /// A new peer connection for participant `owner`, reachable through the shared port.
    pub fn create(&mut self, owner: usize, role: PcKind, now: Instant) -> Result<usize, String> {
        let ufrag = demux::new_ufrag(self.worker);
        let tap = match (role, self.srtp_writer) {
            (PcKind::Subscriber, SrtpWriter::Worker) => {
                let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
                Some(Arc::new(KeyTap::new(provider)))
            }
            _ => None,
        };
        let pc = self
            .settings
            .build(
                role,
                &ufrag,
                &demux::new_password(),
                now,
                tap.clone()
                    .map(|t| t as Arc<dyn rtc::crypto::RTCCryptoProvider>),
            )
            .map_err(|e| e.to_string())?;
        let srtp = match tap {
            Some(tap) => Writer::Proving { tap, tries: 0 },
            None => Writer::Stack,
        };
        let congestion = match role {
            PcKind::Subscriber => self.settings.bwe.map(Congestion::new),
            PcKind::Publisher => None,
        };
        let key = self.slab.insert(Peer::new(
            pc,
            owner,
            role,
            ufrag.clone(),
            srtp,
            congestion,
            now,
        ));
        self.demux.add_peer(&ufrag, key);
        Metrics::inc(&self.metrics.peer_connections);
        Ok(key)
    }

    /// Closes a peer connection; its close_notify and SCTP abort go into `queue`.
    pub fn close(&mut self, key: usize, now: Instant, queue: &mut VecDeque<udp::Outgoing>) {
        if !self.slab.contains(key) {
            return;
        }
        let mut p = self.slab.remove(key);
        let _ = p.pc.close();
        while let Some(out) = p.pc.poll_write() {
            queue.push_back(udp::Outgoing {
                to: out.transport.peer_addr,
                data: out.message,
                queued: now,
            });
        }
        self.demux.remove_peer(&p.ufrag, key);
        self.dirty.retain(|&d| d != key);
        Metrics::dec(&self.metrics.peer_connections);
    }

    /// Queues connection `key` to be drained at the end of the batch, once.
    pub fn mark_dirty(&mut self, key: usize) {
        if let Some(p) = self.slab.get_mut(key) {
            p.mark_dirty(key, &mut self.dirty);
        }
    }

    /// Whose datagram this is.
    pub fn route(&mut self, from: SocketAddr, data: &[u8], at: Instant) -> Route<usize> {
        self.demux.route(from, data, at)
    }

    /// Forgets addresses not heard from for a while.
    pub fn expire_routes(&mut self, now: Instant) {
        self.demux.expire(now);
    }

    /// Gives a datagram to its connection. A connectivity check that comes before the
    /// connection knows the client's credentials (its answer is still on the way) is held,
    /// to be replayed then; false when it was held or dropped.
    pub fn feed(&mut self, key: usize, datagram: udp::Incoming, at: Instant) -> bool {
        let Some(p) = self.slab.get_mut(key) else {
            return false;
        };
        if p.pc.remote_description().is_none()
            && demux::binding_request_username(&datagram.data).is_some()
        {
            if p.early_checks.len() < MAX_EARLY_CHECKS {
                p.early_checks.push(datagram);
            }
            return false;
        }
        // Errors are the stack's own, per datagram, and already counted by it: no log flood.
        let _ =
            p.pc.handle_read(stack_input(&self.candidates, datagram, at));
        true
    }

    /// Applies a client's answer to a connection's offer, then replays the connectivity checks
    /// that came before it.
    pub fn apply_answer(&mut self, key: usize, sdp: String, now: Instant) -> Result<(), String> {
        let Some(p) = self.slab.get_mut(key) else {
            return Err("no such connection".into());
        };
        RTCSessionDescription::answer(sdp)
            .and_then(|desc| p.pc.set_remote_description(now, desc))
            .map_err(|e| e.to_string())?;
        Metrics::add(&self.metrics.ice_checks_early, p.early_checks.len() as u64);
        for datagram in std::mem::take(&mut p.early_checks) {
            let _ =
                p.pc.handle_read(stack_input(&self.candidates, datagram, now));
        }
        Ok(())
    }

    /// Answers a client's offer on connection `key`. A refused offer is rolled back, so the
    /// connection does not wait for an answer and refuse every later offer.
    pub fn answer_offer(
        &mut self,
        key: usize,
        sdp: String,
        now: Instant,
    ) -> Result<String, (SdpRefusal, String)> {
        let Some(p) = self.slab.get_mut(key) else {
            return Err((SdpRefusal::Internal, "no publisher connection".into()));
        };
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| p.pc.set_remote_description(now, offer))
            .map_err(|e| (SdpRefusal::Invalid, format!("offer rejected: {e}")))
            .and_then(|()| {
                p.pc.create_answer(None).map_err(|e| {
                    (
                        SdpRefusal::Invalid,
                        format!("cannot answer this offer: {e}"),
                    )
                })
            })
            .and_then(|answer| {
                let sdp = answer.sdp.clone();
                p.pc.set_local_description(now, answer)
                    .map(|()| sdp)
                    .map_err(|e| {
                        (
                            SdpRefusal::Internal,
                            format!("cannot apply the answer: {e}"),
                        )
                    })
            });
        if answer.is_err() {
            if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                if let Err(e) = p.pc.set_remote_description(now, rollback) {
                    debug!(error = %e, "rolling back a refused publisher offer");
                }
            }
        }
        answer
    }

    /// A client's ICE candidate. ICE lite never checks towards the client: its candidates only
    /// help the stack pair what arrives, and a bounded number is kept.
    pub fn add_candidate(&mut self, key: usize, candidate: IceCandidate) {
        let Some(p) = self.slab.get_mut(key) else {
            return;
        };
        if p.remote_candidates >= self.max_candidates {
            Metrics::add(&self.metrics.candidates_refused, 1);
            return;
        }
        p.remote_candidates += 1;
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_mline_index,
            username_fragment: candidate.username_fragment,
            url: None,
        };
        if let Err(e) = p.pc.add_remote_candidate(init) {
            debug!(error = %e, "ignoring a remote candidate");
        }
    }
}

/// A received datagram as the stack takes it, arrived at `at`. The peer connection knows its
/// datagrams by the candidate they were sent to: the local IP they arrived on when it is
/// announced, else (NAT 1:1) the public one.
fn stack_input(candidates: &[SocketAddr], datagram: udp::Incoming, at: Instant) -> TaggedBytesMut {
    let local_addr = datagram
        .to
        .and_then(|ip| candidates.iter().find(|c| c.ip() == ip))
        .or(candidates.first())
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    TaggedBytesMut {
        now: at,
        transport: TransportContext {
            local_addr,
            peer_addr: datagram.from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message: datagram.data,
    }
}
