//! One worker: a thread that owns the peer connections of the rooms placed on it, its socket
//! of the shared port, its timers, and the Receivers and DownTracks between them.
//!
//! The loop: wait for a datagram, a command or a timer; handle a batch of them; then, once
//! per batch, send the subscriber offers that became due, drain every peer connection that
//! has output, and flush the datagrams in a few system calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::RTCPeerConnection;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{
    RTCRtpReceiverId, RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverId,
    RTCRtpTransceiverInit,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use slab::Slab;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chat;
use crate::config::SrtpWriter;
use crate::engine::demux::{self, Demux, Route};
use crate::engine::feedback::is_keyframe_request;
use crate::engine::srtp::{KeyTap, Observed, SrtpError, Writer};
use crate::engine::timers::Timers;
use crate::engine::udp::{self, Udp};
use crate::engine::{Command, EngineConfig, Inbox, PeerSettings};
use crate::media::downtrack::{DownTrack, Dropped, Negotiated, Outcome};
use crate::media::extensions::{self, ExtensionIds, SubscriberExtensions};
use crate::media::history::PacketHistory;
use crate::media::receiver::{Codec, KeyframeRequest, Receiver, TrackMeta};
use crate::metrics::Metrics;
use crate::ratelimit::TokenBucket;
use crate::room::{Participant, PublishedTrack, Room};
use crate::signal::protocol::{Candidate, ErrorCode, PcKind, ServerMessage, TrackKind};

/// What a worker starts with.
pub(crate) struct Setup {
    pub index: usize,
    pub socket: std::net::UdpSocket,
    pub inbox: mpsc::UnboundedReceiver<Inbox>,
    pub others: Vec<mpsc::UnboundedSender<Inbox>>,
    /// The announced addresses (the peer connections' host candidates).
    pub candidates: Vec<SocketAddr>,
    pub peers: Arc<PeerSettings>,
    pub config: EngineConfig,
    pub metrics: Arc<Metrics>,
}

/// Datagrams read before the worker stops to flush what it owes.
const MAX_READS_PER_BATCH: usize = 64;
/// Peer connections with output pending, or datagrams queued, after which the worker sends
/// before reading on.
const FLUSH_AFTER_DIRTY: usize = 512;
const FLUSH_AFTER_QUEUED: usize = 512;
/// Chat kept for a member whose channel is not open yet: how many, and how old at most.
const CHAT_BACKLOG_MESSAGES: usize = 64;
const CHAT_BACKLOG_AGE: Duration = Duration::from_secs(10);
/// How long a datagram may wait for the socket before it is dropped.
const MAX_SEND_WAIT: Duration = Duration::from_millis(200);
/// How often ghosts are looked for and stale routes forgotten: bounds how late a ghost goes.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(2);
/// Connectivity checks held per peer connection until its remote description is known.
const MAX_EARLY_CHECKS: usize = 8;
/// How often each subscriber gets a sender report per stream (what browsers send too).
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);
/// Most sequence numbers answered from one NACK packet: a forged one may name thousands.
const MAX_RETRANSMITS_PER_NACK: usize = 256;

pub(crate) fn run(setup: Setup) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = setup.index, error = %e, "cannot start a media worker");
            return;
        }
    };
    let index = setup.index;
    runtime.block_on(async move {
        match Worker::new(setup) {
            Ok(worker) => worker.run().await,
            Err(e) => tracing::error!(worker = index, error = %e, "media worker failed"),
        }
    });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TimerKey {
    Peer(usize),
    /// A Receiver's deferred keyframe request.
    Keyframe(usize),
    Housekeeping,
    SenderReports,
}

struct Peer {
    pc: RTCPeerConnection,
    owner: usize,
    role: PcKind,
    ufrag: String,
    connected: bool,
    /// Has output to drain at the end of the batch.
    dirty: bool,
    remote_candidates: usize,
    /// Connectivity checks that arrived before the answer told us the client's credentials
    /// (the client starts checking as soon as it has our offer, and its answer may come later
    /// over the WebSocket): replayed once it is applied, rather than left to the client's
    /// retry ~200 ms later.
    early_checks: Vec<udp::Incoming>,
    /// Who protects the media it forwards (subscriber connections).
    srtp: Writer,
}

impl Peer {
    /// Queues peer connection `key` (this one) to be drained at the end of the batch, once.
    fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

/// A track forwarded to one participant.
struct Forwarded {
    downtrack: usize,
    sender: RTCRtpSenderId,
    transceiver: RTCRtpTransceiverId,
    /// Its m-line is in the offer now outstanding; the answer to it starts the DownTrack.
    offered: bool,
}

struct Member {
    participant: Arc<Participant>,
    room: Arc<Room>,
    publisher: Option<usize>,
    subscriber: usize,
    /// Tracks to forward that are not on the subscriber PC yet: (publisher id, track id).
    pending: Vec<(String, String)>,
    forwarded: HashMap<(String, String), Forwarded>,
    /// Kinds with an m-line in an answered offer (see `offer`).
    negotiated_kinds: Vec<TrackKind>,
    offer_outstanding: bool,
    needs_offer: bool,
    /// An answer was applied: later offers wait for the transport to be up (aiortc loses
    /// m-lines renegotiated while its DTLS transport is still connecting).
    answered: bool,
    chat: Option<usize>,
    chat_open: bool,
    chat_bucket: TokenBucket,
    /// Chat relayed to it before its channel opened (it joined a moment ago): sent on open.
    chat_backlog: std::collections::VecDeque<(Instant, Arc<str>)>,
    /// The publisher's SSRCs: each one's Receiver, or `None` for a track the room refused.
    receivers_by_ssrc: HashMap<u32, Option<usize>>,
    /// Our DownTrack SSRCs on its subscriber PC.
    downtracks_by_ssrc: HashMap<u32, usize>,
    joined_at: Instant,
}

struct ReceiverEntry {
    receiver: Receiver,
    publisher: usize,
    downtracks: Vec<usize>,
    /// When its last packet arrived: a publisher whose tracks all fall silent is a ghost.
    last_packet: Instant,
    /// Video: the recent packets, for every subscriber's retransmissions.
    history: Option<PacketHistory>,
}

struct DownTrackEntry {
    downtrack: DownTrack,
    /// What its subscriber's NACKs may still cost (see `--max-retransmits-per-sec`).
    retransmit_budget: TokenBucket,
    subscriber: usize,
    /// The subscriber PC it sends on.
    peer: usize,
    receiver: usize,
}

struct Worker {
    index: usize,
    udp: Udp,
    inbox: mpsc::UnboundedReceiver<Inbox>,
    others: Vec<mpsc::UnboundedSender<Inbox>>,
    candidates: Vec<SocketAddr>,
    settings: Arc<PeerSettings>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    peers: Slab<Peer>,
    members: Slab<Member>,
    by_id: HashMap<String, usize>,
    /// Room name -> its members here (for chat).
    rooms: HashMap<String, Vec<usize>>,
    receivers: Slab<ReceiverEntry>,
    /// (publisher id, track id) -> Receiver.
    tracks: HashMap<(String, String), usize>,
    downtracks: Slab<DownTrackEntry>,
    demux: Demux<usize>,
    timers: Timers<TimerKey>,
    dirty: Vec<usize>,
    /// Some member may need a subscriber offer (checked once per batch).
    offers_due: bool,
    received: Vec<udp::Incoming>,
    /// Test-only: a lossy downlink (`fault_drop_sent_video_every`).
    send_fault: SendFault,
}

/// Test-only fault injection: every Nth video datagram to subscribers is lost after encryption.
struct SendFault {
    every: Option<u32>,
    count: u32,
}

impl SendFault {
    /// Counts a video datagram about to be sent; true if it is to be lost.
    fn drops(&mut self) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        self.count = self.count.wrapping_add(1);
        self.count.is_multiple_of(every.max(1))
    }
}

/// Sends one forwarded packet on subscriber connection `key`: protected by the worker straight
/// into the socket queue once it has the connection's keys, else through the stack (drained at
/// the end of the batch). True if it went.
#[allow(clippy::too_many_arguments)]
fn send_rtp(
    p: &mut Peer,
    key: usize,
    header: rtp::header::Header,
    payload: &bytes::Bytes,
    video: bool,
    udp: &mut Udp,
    send_fault: &mut SendFault,
    dirty: &mut Vec<usize>,
    metrics: &Metrics,
    now: Instant,
) -> bool {
    let Some((sender, to)) = p.srtp.direct() else {
        let written = p.pc.handle_write(TaggedRTCMessage {
            now,
            message: RTCMessage::RtpPacket(
                String::new(),
                rtp::Packet {
                    header,
                    payload: payload.clone(),
                },
            ),
        });
        if written.is_ok() {
            p.mark_dirty(key, dirty);
        }
        return written.is_ok();
    };
    let mut data = udp.buffer();
    let protected = sender.protect_packet(&header, payload, &mut data);
    queue_protected(protected, data, to, video, udp, send_fault, metrics, now)
}

/// Queues a datagram the worker protected (unless the test-only lossy downlink loses it).
/// True if it went; a protection error is counted and the packet not sent.
#[allow(clippy::too_many_arguments)]
fn queue_protected(
    protected: Result<(), SrtpError>,
    data: bytes::BytesMut,
    to: SocketAddr,
    video: bool,
    udp: &mut Udp,
    send_fault: &mut SendFault,
    metrics: &Metrics,
    now: Instant,
) -> bool {
    if let Err(e) = protected {
        debug!(%to, error = %e, "protecting a packet");
        Metrics::add(&metrics.srtp_protect_errors, 1);
        return false;
    }
    if !(video && send_fault.drops()) {
        udp.queue.push_back(udp::Outgoing {
            to,
            data,
            queued: now,
        });
    }
    true
}

impl Worker {
    fn new(setup: Setup) -> std::io::Result<Self> {
        let workers = setup.others.len();
        let mut timers = Timers::default();
        timers.set(
            TimerKey::Housekeeping,
            Some(Instant::now() + HOUSEKEEPING_EVERY),
        );
        timers.set(
            TimerKey::SenderReports,
            Some(Instant::now() + SENDER_REPORT_EVERY),
        );
        let send_fault = SendFault {
            every: setup.config.fault_drop_sent_video_every,
            count: 0,
        };
        Ok(Worker {
            index: setup.index,
            udp: Udp::new(setup.socket)?,
            inbox: setup.inbox,
            others: setup.others,
            candidates: setup.candidates,
            settings: setup.peers,
            config: setup.config,
            metrics: setup.metrics,
            peers: Slab::new(),
            members: Slab::new(),
            by_id: HashMap::new(),
            rooms: HashMap::new(),
            receivers: Slab::new(),
            tracks: HashMap::new(),
            downtracks: Slab::new(),
            demux: Demux::new(setup.index, workers),
            timers,
            dirty: Vec::new(),
            offers_due: false,
            received: Vec::with_capacity(quinn_udp::BATCH_SIZE),
            send_fault,
        })
    }

    async fn run(mut self) {
        info!(worker = self.index, "media worker started");
        loop {
            let deadline = self.timers.next_deadline();
            let blocked = !self.udp.queue.is_empty();
            let stop = tokio::select! {
                biased;
                message = self.inbox.recv() => match message {
                    Some(Inbox::Shutdown) | None => true,
                    Some(message) => {
                        let mut stop = self.on_inbox(message);
                        // Take whatever else is queued: one flush for the lot.
                        while !stop {
                            match self.inbox.try_recv() {
                                Ok(Inbox::Shutdown) => stop = true,
                                Ok(message) => stop = self.on_inbox(message),
                                Err(_) => break,
                            }
                        }
                        stop
                    }
                },
                ready = self.udp.readable() => {
                    if ready.is_ok() {
                        self.read_socket();
                    }
                    false
                },
                _ = self.udp.writable(), if blocked => false,
                _ = sleep_until(deadline) => false,
            };
            if stop {
                break;
            }
            self.run_timers(Instant::now());
            self.end_of_batch();
        }
        self.close_everything();
        info!(worker = self.index, "media worker stopped");
    }

    fn on_inbox(&mut self, message: Inbox) -> bool {
        match message {
            Inbox::Command(command) => self.on_command(command),
            Inbox::Datagram(datagram, at) => self.on_datagram(datagram, at),
            Inbox::Shutdown => return true,
        }
        false
    }

    fn read_socket(&mut self) {
        let mut read = 0;
        while read < MAX_READS_PER_BATCH {
            let mut batch = std::mem::take(&mut self.received);
            match self.udp.recv_batch(&mut batch) {
                Ok(0) => {
                    self.received = batch;
                    break;
                }
                Ok(n) => {
                    read += n;
                    let at = Instant::now();
                    for datagram in batch.drain(..) {
                        self.on_datagram(datagram, at);
                        // A publisher packet fanned out to many: send it now rather than after
                        // the rest of the batch (one system call either way).
                        if self.dirty.len() >= FLUSH_AFTER_DIRTY
                            || self.udp.queue.len() >= FLUSH_AFTER_QUEUED
                        {
                            self.end_of_batch();
                        }
                    }
                    self.received = batch;
                }
                Err(e) => {
                    self.received = batch;
                    debug!(error = %e, "reading the media socket");
                    break;
                }
            }
        }
    }

    fn on_datagram(&mut self, datagram: udp::Incoming, at: Instant) {
        match self.demux.route(datagram.from, &datagram.data, at) {
            Route::Peer { peer, learned } => {
                if learned {
                    debug!(peer, from = %datagram.from, "peer address learned");
                }
                self.feed(peer, datagram, at);
            }
            Route::Worker(w) => match self.others.get(w) {
                Some(tx) if w != self.index => {
                    Metrics::add(&self.metrics.datagrams_handed_over, 1);
                    let _ = tx.send(Inbox::Datagram(datagram, at));
                }
                _ => Metrics::add(&self.metrics.datagrams_unrouted, 1),
            },
            Route::Drop(_) => Metrics::add(&self.metrics.datagrams_unrouted, 1),
        }
    }

    fn feed(&mut self, peer: usize, datagram: udp::Incoming, at: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if p.pc.remote_description().is_none()
            && demux::binding_request_username(&datagram.data).is_some()
        {
            if p.early_checks.len() < MAX_EARLY_CHECKS {
                p.early_checks.push(datagram);
            }
            return;
        }
        let message = stack_input(&self.candidates, datagram, at);
        // Errors are the stack's own, per datagram, and already counted by it: no log flood.
        let _ = p.pc.handle_read(message);
        self.pump(peer, at);
    }

    /// After anything touched a peer connection: its events, then what it read.
    fn pump(&mut self, peer: usize, now: Instant) {
        self.mark_dirty(peer);
        loop {
            let Some(p) = self.peers.get_mut(peer) else {
                return;
            };
            let Some(event) = p.pc.poll_event() else {
                break;
            };
            self.on_event(peer, event, now);
        }
        loop {
            let Some(p) = self.peers.get_mut(peer) else {
                return;
            };
            let Some(message) = p.pc.poll_read() else {
                break;
            };
            self.on_message(peer, message, now);
        }
    }

    fn mark_dirty(&mut self, peer: usize) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.mark_dirty(peer, &mut self.dirty);
        }
    }

    /// Moves a peer connection's datagrams to the socket queue and reschedules its timer.
    fn drain(&mut self, peer: usize, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        while let Some(out) = p.pc.poll_write() {
            match p.srtp.observe(&out.message, out.transport.peer_addr) {
                Observed::Nothing => {}
                Observed::Proven => {
                    debug!(peer, "media protected by the worker from now on");
                    Metrics::add(&self.metrics.srtp_sessions_in_worker, 1);
                }
                Observed::GaveUp => {
                    warn!(peer, "no tapped SRTP key authenticates the stack's packets: media stays on the stack's pipeline");
                    Metrics::add(&self.metrics.srtp_sessions_unproven, 1);
                }
            }
            if self.send_fault.every.is_some()
                && p.role == PcKind::Subscriber
                && is_rtp_of(&out.message, |ssrc| {
                    self.members.get(p.owner).is_some_and(|m| {
                        m.downtracks_by_ssrc
                            .get(&ssrc)
                            .and_then(|&dk| self.downtracks.get(dk))
                            .is_some_and(|d| d.downtrack.is_video())
                    })
                })
                && self.send_fault.drops()
            {
                continue;
            }
            self.udp.queue.push_back(udp::Outgoing {
                to: out.transport.peer_addr,
                data: out.message,
                queued: now,
            });
        }
        p.dirty = false;
        self.timers.set(TimerKey::Peer(peer), p.pc.poll_timeout());
    }

    fn run_timers(&mut self, now: Instant) {
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Peer(peer) => {
                    if let Some(p) = self.peers.get_mut(peer) {
                        if let Err(e) = p.pc.handle_timeout(now) {
                            debug!(peer, error = %e, "peer connection timer");
                        }
                        self.pump(peer, now);
                    }
                }
                TimerKey::Keyframe(rk) => {
                    if self
                        .receivers
                        .get_mut(rk)
                        .is_some_and(|r| r.receiver.keyframe_due(now))
                    {
                        self.send_pli(rk, now);
                    }
                }
                TimerKey::SenderReports => {
                    self.send_sender_reports(now);
                    self.timers
                        .set(TimerKey::SenderReports, Some(now + SENDER_REPORT_EVERY));
                }
                TimerKey::Housekeeping => {
                    self.demux.expire(now);
                    self.find_ghosts(now);
                    self.timers
                        .set(TimerKey::Housekeeping, Some(now + HOUSEKEEPING_EVERY));
                }
            }
        }
    }

    /// Participants whose media path is dead while their signaling socket lives on (a frozen
    /// process, a network that changed): they answered the subscriber offer but its connection
    /// never came up, or every unmuted track they publish went silent. They are removed, and
    /// the others told. (A client that never answers only watches signaling: it is left be.)
    fn find_ghosts(&mut self, now: Instant) {
        let timeout = self.config.media_timeout;
        for (member, m) in self.members.iter() {
            let never_connected = m.answered
                && self.peers.get(m.subscriber).is_some_and(|p| !p.connected)
                && now.saturating_duration_since(m.joined_at) > timeout;
            let mut live = 0;
            let mut silent = 0;
            for r in self
                .receivers
                .iter()
                .map(|(_, r)| r)
                .filter(|r| r.publisher == member)
            {
                let meta = &r.receiver.meta;
                if m.room.is_muted(&meta.publisher_id, &meta.track_id) {
                    continue;
                }
                if now.saturating_duration_since(r.last_packet) > timeout {
                    silent += 1;
                } else {
                    live += 1;
                }
            }
            let reason = if never_connected {
                "media never connected"
            } else if silent > 0 && live == 0 {
                "media stopped"
            } else {
                continue;
            };
            if !m.participant.is_kicked() {
                warn!(participant = %m.participant.id, reason, "removing a participant whose media is gone");
                Metrics::add(&self.metrics.media_timeouts, 1);
                m.participant.kick(reason);
            }
        }
    }

    fn end_of_batch(&mut self) {
        let now = Instant::now();
        if std::mem::take(&mut self.offers_due) {
            let peers = &self.peers;
            let due: Vec<usize> = self
                .members
                .iter()
                .filter(|(_, m)| {
                    m.needs_offer
                        && !m.offer_outstanding
                        && (!m.answered || peers.get(m.subscriber).is_some_and(|p| p.connected))
                })
                .map(|(k, _)| k)
                .collect();
            for member in due {
                self.offer(member, now);
            }
        }
        while let Some(peer) = self.dirty.pop() {
            self.drain(peer, now);
        }
        let flushed = self.udp.flush(now, MAX_SEND_WAIT);
        Metrics::add(&self.metrics.datagrams_sent, flushed.datagrams);
        Metrics::add(&self.metrics.send_syscalls, flushed.syscalls);
        Metrics::add(&self.metrics.send_buffers, flushed.messages);
        Metrics::add(
            &self.metrics.datagrams_send_dropped,
            flushed.expired + flushed.failed,
        );
    }

    // ---- events and messages from peer connections ----

    fn on_event(&mut self, peer: usize, event: RTCPeerConnectionEvent, now: Instant) {
        match event {
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(
                RTCIceConnectionState::Connected,
            ) => {
                // The DTLS flight waits for the next timeout: send it now, after the STUN
                // response that completes the check (or the peer drops it).
                self.drain(peer, now);
                if let Some(p) = self.peers.get_mut(peer) {
                    let _ = p.pc.handle_timeout(now);
                }
                self.mark_dirty(peer);
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                self.on_connection_state(peer, state, now)
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track(peer, init.receiver_id, init.track_id, init.ssrc)
            }
            RTCPeerConnectionEvent::OnDataChannel(event) => self.on_data_channel(peer, event),
            _ => {}
        }
    }

    fn on_connection_state(&mut self, peer: usize, state: RTCPeerConnectionState, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let (owner, role) = (p.owner, p.role);
        debug!(peer, ?role, %state, "peer connection state");
        match state {
            RTCPeerConnectionState::Connected => {
                p.connected = true;
                if role == PcKind::Subscriber {
                    // Offers held back while it connected may go now.
                    self.offers_due = true;
                    let downtracks: Vec<usize> = self
                        .members
                        .get(owner)
                        .map(|m| m.forwarded.values().map(|f| f.downtrack).collect())
                        .unwrap_or_default();
                    for dk in downtracks {
                        let wants = self
                            .downtracks
                            .get_mut(dk)
                            .is_some_and(|d| d.downtrack.transport_up());
                        if wants {
                            self.downtrack_wants_keyframe(dk, now, true);
                        }
                    }
                }
            }
            RTCPeerConnectionState::Disconnected => {
                p.connected = false;
                if role == PcKind::Subscriber {
                    if let Some(m) = self.members.get(owner) {
                        for f in m.forwarded.values() {
                            if let Some(d) = self.downtracks.get_mut(f.downtrack) {
                                d.downtrack.transport_down();
                            }
                        }
                    }
                }
            }
            // Failed: no consent for too long. Closed: the client closed it (ours are removed
            // before they are closed). Either way its media path is dead: the participant goes,
            // and the others are told.
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                if let Some(m) = self.members.get(owner) {
                    if !m.participant.is_kicked() {
                        warn!(participant = %m.participant.id, ?role, %state, "media connection lost; removing the participant");
                        Metrics::add(&self.metrics.media_timeouts, 1);
                        m.participant.kick("media connection failed");
                    }
                }
            }
            _ => {}
        }
    }

    fn on_track(
        &mut self,
        peer: usize,
        receiver_id: RTCRtpReceiverId,
        msid_track_id: String,
        ssrc: u32,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let owner = p.owner;
        let Some(mut receiver) = p.pc.rtp_receiver(receiver_id) else {
            return;
        };
        let Some(codec) = receiver.track().codec(ssrc).cloned() else {
            return;
        };
        let extensions = ExtensionIds::from_negotiated(
            receiver
                .get_parameters()
                .rtp_parameters
                .header_extensions
                .iter()
                .map(|e| (e.uri.as_str(), e.id)),
        );
        let kind = if codec.mime_type.to_ascii_lowercase().starts_with("audio/") {
            TrackKind::Audio
        } else {
            TrackKind::Video
        };
        let Some(member) = self.members.get_mut(owner) else {
            return;
        };
        let publisher_id = member.participant.id.clone();
        let track_id = if msid_track_id.is_empty() {
            format!("{publisher_id}-{ssrc}")
        } else {
            msid_track_id
        };
        // A renegotiation announces the tracks it keeps again: they are published already.
        if let Some(&rk) = self.tracks.get(&(publisher_id.clone(), track_id.clone())) {
            member.receivers_by_ssrc.insert(ssrc, Some(rk));
            if let Some(entry) = self.receivers.get_mut(rk) {
                entry.receiver.media_ssrc = ssrc;
            }
            return;
        }
        let published = PublishedTrack::new(publisher_id.clone(), track_id.clone(), kind, false);
        if let Err(refusal) = member.room.publish(published) {
            member.participant.send(ServerMessage::Error {
                code: refusal.code,
                message: refusal.message,
                request_type: Some("offer".into()),
            });
            member.receivers_by_ssrc.insert(ssrc, None);
            return;
        }
        let meta = TrackMeta {
            publisher_id: publisher_id.clone(),
            track_id: track_id.clone(),
            kind,
            codec: Codec {
                mime_type: codec.mime_type.clone(),
                clock_rate: codec.clock_rate,
                channels: codec.channels,
                sdp_fmtp_line: codec.sdp_fmtp_line.clone(),
            },
            extensions,
        };
        let mut receiver = Receiver::new(meta, ssrc, self.config.pli_interval);
        receiver.set_fault_drop_every(self.config.fault_drop_every);
        let history = receiver
            .is_video()
            .then(|| PacketHistory::new(self.config.nack_window, self.config.nack_max_age));
        let rk = self.receivers.insert(ReceiverEntry {
            receiver,
            publisher: owner,
            downtracks: Vec::new(),
            last_packet: Instant::now(),
            history,
        });
        Metrics::inc(&self.metrics.receivers);
        member.receivers_by_ssrc.insert(ssrc, Some(rk));
        self.tracks.insert((publisher_id, track_id), rk);
    }

    fn on_data_channel(&mut self, peer: usize, event: RTCDataChannelEvent) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let owner = p.owner;
        match event {
            RTCDataChannelEvent::OnOpen(id) => {
                let is_chat =
                    p.pc.data_channel(id)
                        .is_some_and(|dc| dc.label() == chat::LABEL);
                let opened = match self.members.get_mut(owner) {
                    Some(m) if is_chat && m.chat == Some(id) => {
                        m.chat_open = true;
                        true
                    }
                    _ => false,
                };
                if opened {
                    self.flush_chat_backlog(owner, Instant::now());
                }
            }
            RTCDataChannelEvent::OnClose(id) => {
                if let Some(m) = self.members.get_mut(owner) {
                    if m.chat == Some(id) {
                        m.chat_open = false;
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, peer: usize, message: TaggedRTCMessage, now: Instant) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        let owner = p.owner;
        match message.message {
            RTCMessage::RtpPacket(_, packet) => {
                let rk = self
                    .members
                    .get(owner)
                    .and_then(|m| m.receivers_by_ssrc.get(&packet.header.ssrc).copied())
                    .flatten();
                if let Some(rk) = rk {
                    self.fan_out(rk, &packet, message.now, now);
                }
            }
            RTCMessage::RtcpPacket(_, packets) => {
                for nack in packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
                {
                    self.retransmit(owner, nack, now);
                }
                for packet in packets.iter().filter(|p| is_keyframe_request(p.as_ref())) {
                    Metrics::add(&self.metrics.keyframe_requests_received, 1);
                    for ssrc in packet.destination_ssrc() {
                        let dk = self
                            .members
                            .get(owner)
                            .and_then(|m| m.downtracks_by_ssrc.get(&ssrc).copied());
                        if let Some(dk) = dk {
                            if let Some(d) = self.downtracks.get_mut(dk) {
                                d.downtrack.resync();
                            }
                            self.downtrack_wants_keyframe(dk, now, false);
                        }
                    }
                }
            }
            RTCMessage::DataChannelMessage(id, data) => {
                self.on_chat(owner, id, data.is_string, &data.data, now)
            }
            _ => {}
        }
    }

    /// The hot path: one publisher packet to every DownTrack of its track, in a plain loop.
    fn fan_out(&mut self, rk: usize, packet: &rtp::Packet, arrived: Instant, now: Instant) {
        let Worker {
            receivers,
            downtracks,
            peers,
            dirty,
            metrics,
            udp,
            send_fault,
            ..
        } = self;
        let Some(entry) = receivers.get_mut(rk) else {
            return;
        };
        Metrics::add(&metrics.packets_in, 1);
        Metrics::add(&metrics.bytes_in, packet.payload.len() as u64);
        entry.last_packet = arrived;
        let Some(incoming) = entry.receiver.incoming(packet, arrived) else {
            return;
        };
        if let Some(history) = entry.history.as_mut() {
            history.insert(packet, &incoming.carried, arrived);
        }
        let ntp = extensions::ntp_now();
        let mut wants_keyframe = false;
        let payload = &incoming.packet.payload;
        for &dk in &entry.downtracks {
            let Some(d) = downtracks.get_mut(dk) else {
                continue;
            };
            let peer = d.peer;
            let Some(p) = peers.get_mut(peer) else {
                continue;
            };
            let video = d.downtrack.is_video();
            let outcome = match p.srtp.direct() {
                // Marshalled once into a reused buffer, protected in place, queued.
                Some((sender, to)) => {
                    let mut data = udp.buffer();
                    match d.downtrack.forward_into(&incoming, now, ntp, &mut data) {
                        Outcome::Send(header_len) => {
                            data.extend_from_slice(payload);
                            let protected = sender.protect(&mut data, header_len);
                            Outcome::Send(queue_protected(
                                protected, data, to, video, udp, send_fault, metrics, now,
                            ))
                        }
                        refused => {
                            udp.give_back(data);
                            refused.map(|_| false)
                        }
                    }
                }
                None => d.downtrack.forward(&incoming, now, ntp).map(|header| {
                    send_rtp(
                        p, peer, header, payload, video, udp, send_fault, dirty, metrics, now,
                    )
                }),
            };
            match outcome {
                Outcome::Send(false) => {}
                Outcome::Send(true) => {
                    Metrics::add(&metrics.packets_out, 1);
                    Metrics::add(&metrics.bytes_out, payload.len() as u64);
                }
                Outcome::Drop {
                    why,
                    wants_keyframe: wants,
                } => {
                    let counter = match why {
                        Dropped::NotNegotiated => &metrics.dropped.not_negotiated,
                        Dropped::Refused(why) => metrics.dropped.refused(why),
                    };
                    Metrics::add(counter, 1);
                    wants_keyframe |= wants;
                }
            }
        }
        if wants_keyframe {
            self.request_keyframe(rk, now, false);
        }
    }

    /// Answers a subscriber's NACK from the track's shared history.
    fn retransmit(&mut self, member: usize, nack: &TransportLayerNack, now: Instant) {
        let Some(&dk) = self
            .members
            .get(member)
            .and_then(|m| m.downtracks_by_ssrc.get(&nack.media_ssrc))
        else {
            return;
        };
        let Worker {
            receivers,
            downtracks,
            peers,
            dirty,
            metrics,
            udp,
            send_fault,
            ..
        } = self;
        let Some(d) = downtracks.get_mut(dk) else {
            return;
        };
        let Some(history) = receivers.get(d.receiver).and_then(|r| r.history.as_ref()) else {
            return;
        };
        let Some(p) = peers.get_mut(d.peer) else {
            return;
        };
        let ntp = extensions::ntp_now();
        let (mut sent, mut missed, mut limited) = (0, 0, 0);
        let wanted = nack.nacks.iter().flat_map(|pair| pair.into_iter());
        for seq in wanted.take(MAX_RETRANSMITS_PER_NACK) {
            let Some(packet) = d.downtrack.retransmit(seq, history, now, ntp) else {
                missed += 1;
                continue;
            };
            if !d.retransmit_budget.allow(now) {
                limited += 1;
                continue;
            }
            d.downtrack.count_retransmitted(&packet, now);
            let video = d.downtrack.is_video();
            let rtp::Packet { header, payload } = packet;
            if send_rtp(
                p, d.peer, header, &payload, video, udp, send_fault, dirty, metrics, now,
            ) {
                sent += 1;
            }
        }
        Metrics::add(&metrics.retransmissions, sent);
        Metrics::add(&metrics.retransmissions_missed, missed);
        Metrics::add(&metrics.retransmissions_limited, limited);
    }

    /// Every sending DownTrack's sender report, one compound packet per subscriber.
    fn send_sender_reports(&mut self, now: Instant) {
        let ntp = extensions::ntp_now();
        let mut reports = 0;
        for (_, m) in self.members.iter() {
            let batch: Vec<Box<dyn rtc::rtcp::Packet>> = m
                .downtracks_by_ssrc
                .values()
                .filter_map(|&dk| self.downtracks.get(dk))
                .filter_map(|d| d.downtrack.sender_report(now, ntp))
                .map(|sr| Box::new(sr) as Box<dyn rtc::rtcp::Packet>)
                .collect();
            if batch.is_empty() {
                continue;
            }
            let Some(p) = self.peers.get_mut(m.subscriber).filter(|p| p.connected) else {
                continue;
            };
            let n = batch.len() as u64;
            let written = p.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), batch),
            });
            if written.is_ok() {
                reports += n;
                p.mark_dirty(m.subscriber, &mut self.dirty);
            }
        }
        Metrics::add(&self.metrics.sender_reports, reports);
    }

    fn downtrack_wants_keyframe(&mut self, dk: usize, now: Instant, urgent: bool) {
        if let Some(rk) = self.downtracks.get(dk).map(|d| d.receiver) {
            self.request_keyframe(rk, now, urgent);
        }
    }

    fn request_keyframe(&mut self, rk: usize, now: Instant, urgent: bool) {
        let Some(entry) = self.receivers.get_mut(rk) else {
            return;
        };
        match entry.receiver.request_keyframe(now, urgent) {
            KeyframeRequest::SendNow => self.send_pli(rk, now),
            KeyframeRequest::At(at) => self.timers.set(TimerKey::Keyframe(rk), Some(at)),
            KeyframeRequest::Nothing => {}
        }
    }

    fn send_pli(&mut self, rk: usize, now: Instant) {
        let Some(entry) = self.receivers.get(rk) else {
            return;
        };
        let media_ssrc = entry.receiver.media_ssrc;
        let Some(peer) = self.members.get(entry.publisher).and_then(|m| m.publisher) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if let Some(p) = self.peers.get_mut(peer) {
            let sent = p.pc.handle_write(TaggedRTCMessage {
                now,
                message: RTCMessage::RtcpPacket(String::new(), vec![Box::new(pli)]),
            });
            if sent.is_ok() {
                Metrics::add(&self.metrics.plis_sent, 1);
                self.mark_dirty(peer);
            }
        }
    }

    fn on_chat(&mut self, from: usize, channel: usize, is_text: bool, data: &[u8], now: Instant) {
        let Some(member) = self.members.get_mut(from) else {
            return;
        };
        if member.chat != Some(channel) {
            return;
        }
        let reply = if !member.chat_bucket.allow(now) {
            Some(chat::error_json("rate_limited", "too many chat messages"))
        } else {
            match chat::parse_chat(is_text, data, self.config.max_chat_bytes) {
                Ok(text) => {
                    let json = chat::relay_json(&member.participant.info(), text);
                    let room = member.room.name.clone();
                    self.relay_chat(from, &room, &json, now);
                    None
                }
                Err(reason) => {
                    debug!(participant = %member.participant.id, %reason, "chat message refused");
                    Some(chat::error_json("bad_request", &reason))
                }
            }
        };
        if let Some(reply) = reply {
            self.send_chat(from, &reply, now);
        }
    }

    fn relay_chat(&mut self, from: usize, room: &str, json: &str, now: Instant) {
        let members: Vec<usize> = self
            .rooms
            .get(room)
            .map(|m| m.iter().copied().filter(|&k| k != from).collect())
            .unwrap_or_default();
        for member in members {
            self.send_chat(member, json, now);
        }
        Metrics::add(&self.metrics.chat_messages, 1);
    }

    /// Sends on a member's chat channel. Before the channel opens (a participant that joined a
    /// moment ago) a few recent messages wait for it; a channel that cannot take a message
    /// misses it rather than delay it for the others.
    fn send_chat(&mut self, member: usize, json: &str, now: Instant) {
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let Some(channel) = m.chat else {
            return;
        };
        if !m.chat_open {
            if m.chat_backlog.len() == CHAT_BACKLOG_MESSAGES {
                m.chat_backlog.pop_front();
            }
            m.chat_backlog.push_back((now, Arc::from(json)));
            return;
        }
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let sent =
            p.pc.data_channel(channel)
                .map(|mut dc| dc.send_text(now, json));
        if let Some(Err(e)) = sent {
            debug!(member, error = %e, "chat message not delivered");
        }
        self.mark_dirty(peer);
    }

    /// The member's chat channel opened: what was relayed to it meanwhile, if still fresh.
    fn flush_chat_backlog(&mut self, member: usize, now: Instant) {
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let backlog = std::mem::take(&mut m.chat_backlog);
        for (at, json) in backlog {
            if now.saturating_duration_since(at) <= CHAT_BACKLOG_AGE {
                self.send_chat(member, &json, now);
            }
        }
    }

    // ---- commands from the control plane ----

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::AddParticipant { participant, room } => {
                self.add_participant(participant, room, now)
            }
            Command::RemoveParticipant { participant_id } => {
                self.remove_participant(&participant_id, now)
            }
            Command::Subscribe {
                subscriber_id,
                publisher_id,
                track_id,
            } => self.subscribe(&subscriber_id, publisher_id, track_id),
            Command::RemoveTrack {
                publisher_id,
                track_id,
            } => {
                if let Some(rk) = self.tracks.remove(&(publisher_id, track_id)) {
                    self.remove_receiver(rk);
                }
            }
            Command::PublisherOffer {
                participant_id,
                sdp,
                sending,
            } => self.publisher_offer(&participant_id, sdp, sending, now),
            Command::SubscriberAnswer {
                participant_id,
                sdp,
            } => self.subscriber_answer(&participant_id, sdp, now),
            Command::Candidate {
                participant_id,
                pc,
                candidate,
            } => self.remote_candidate(&participant_id, pc, candidate),
        }
    }

    fn new_peer(&mut self, owner: usize, role: PcKind, now: Instant) -> Result<usize, String> {
        let ufrag = demux::new_ufrag(self.index);
        let tap = match (role, self.config.srtp_writer) {
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
        let key = self.peers.insert(Peer {
            pc,
            owner,
            role,
            ufrag: ufrag.clone(),
            connected: false,
            dirty: false,
            remote_candidates: 0,
            early_checks: Vec::new(),
            srtp: match tap {
                Some(tap) => Writer::Proving { tap, tries: 0 },
                None => Writer::Stack,
            },
        });
        self.demux.add_peer(&ufrag, key);
        Metrics::inc(&self.metrics.peer_connections);
        Ok(key)
    }

    fn close_peer(&mut self, peer: usize, now: Instant) {
        if !self.peers.contains(peer) {
            return;
        }
        let mut p = self.peers.remove(peer);
        // The close_notify and SCTP abort go out with this batch.
        let _ = p.pc.close();
        while let Some(out) = p.pc.poll_write() {
            self.udp.queue.push_back(udp::Outgoing {
                to: out.transport.peer_addr,
                data: out.message,
                queued: now,
            });
        }
        self.demux.remove_peer(&p.ufrag, peer);
        self.timers.cancel(TimerKey::Peer(peer));
        self.dirty.retain(|&d| d != peer);
        Metrics::dec(&self.metrics.peer_connections);
    }

    fn add_participant(&mut self, participant: Arc<Participant>, room: Arc<Room>, now: Instant) {
        let id = participant.id.clone();
        if self.by_id.contains_key(&id) {
            return;
        }
        let member = self.members.insert(Member {
            participant: participant.clone(),
            room: room.clone(),
            publisher: None,
            subscriber: usize::MAX,
            pending: Vec::new(),
            forwarded: HashMap::new(),
            negotiated_kinds: Vec::new(),
            offer_outstanding: false,
            needs_offer: true,
            answered: false,
            chat: None,
            chat_open: false,
            chat_bucket: TokenBucket::new(self.config.chat_rate_per_sec),
            chat_backlog: std::collections::VecDeque::new(),
            receivers_by_ssrc: HashMap::new(),
            downtracks_by_ssrc: HashMap::new(),
            joined_at: now,
        });
        let peer = match self.new_peer(member, PcKind::Subscriber, now) {
            Ok(peer) => peer,
            Err(e) => {
                warn!(participant = %id, error = %e, "cannot create the subscriber PC");
                self.members.remove(member);
                participant.send(ServerMessage::Error {
                    code: ErrorCode::Internal,
                    message: format!("cannot start media: {e}"),
                    request_type: Some("join".into()),
                });
                participant.kick("internal error");
                return;
            }
        };
        let chat = self.peers[peer]
            .pc
            .create_data_channel(chat::LABEL, None)
            .map(|dc| dc.id());
        let m = &mut self.members[member];
        m.subscriber = peer;
        match chat {
            Ok(id) => m.chat = Some(id),
            Err(e) => warn!(participant = %id, error = %e, "cannot create the chat channel"),
        }
        self.by_id.insert(id, member);
        self.rooms
            .entry(room.name.clone())
            .or_default()
            .push(member);
        self.offers_due = true;
    }

    fn remove_participant(&mut self, participant_id: &str, now: Instant) {
        let Some(member) = self.by_id.remove(participant_id) else {
            return;
        };
        // What it published, and what it received.
        let published: Vec<usize> = self
            .receivers
            .iter()
            .filter(|(_, r)| r.publisher == member)
            .map(|(k, _)| k)
            .collect();
        for rk in published {
            let key = {
                let meta = &self.receivers[rk].receiver.meta;
                (meta.publisher_id.clone(), meta.track_id.clone())
            };
            self.tracks.remove(&key);
            self.remove_receiver(rk);
        }
        let received: Vec<usize> = self.members[member]
            .forwarded
            .values()
            .map(|f| f.downtrack)
            .collect();
        for dk in received {
            self.remove_downtrack(dk);
        }
        let m = self.members.remove(member);
        if let Some(members) = self.rooms.get_mut(&m.room.name) {
            members.retain(|&k| k != member);
            if members.is_empty() {
                self.rooms.remove(&m.room.name);
            }
        }
        for peer in [m.publisher, Some(m.subscriber)].into_iter().flatten() {
            self.close_peer(peer, now);
        }
    }

    fn subscribe(&mut self, subscriber_id: &str, publisher_id: String, track_id: String) {
        let Some(&member) = self.by_id.get(subscriber_id) else {
            return;
        };
        let m = &mut self.members[member];
        let key = (publisher_id, track_id);
        if key.0 == m.participant.id || m.forwarded.contains_key(&key) || m.pending.contains(&key) {
            return;
        }
        m.pending.push(key);
        m.needs_offer = true;
        self.offers_due = true;
    }

    /// Removes a Receiver and every DownTrack of it (their subscribers renegotiate).
    fn remove_receiver(&mut self, rk: usize) {
        if !self.receivers.contains(rk) {
            return;
        }
        let entry = self.receivers.remove(rk);
        Metrics::dec(&self.metrics.receivers);
        self.timers.cancel(TimerKey::Keyframe(rk));
        for dk in entry.downtracks {
            self.remove_downtrack(dk);
        }
        let key = (
            entry.receiver.meta.publisher_id,
            entry.receiver.meta.track_id,
        );
        for (_, m) in self.members.iter_mut() {
            m.pending.retain(|k| *k != key);
        }
        if let Some(m) = self.members.get_mut(entry.publisher) {
            for v in m.receivers_by_ssrc.values_mut() {
                if *v == Some(rk) {
                    *v = None;
                }
            }
        }
    }

    fn remove_downtrack(&mut self, dk: usize) {
        if !self.downtracks.contains(dk) {
            return;
        }
        let d = self.downtracks.remove(dk);
        Metrics::dec(&self.metrics.downtracks);
        if let Some(r) = self.receivers.get_mut(d.receiver) {
            r.downtracks.retain(|&k| k != dk);
        }
        let Some(m) = self.members.get_mut(d.subscriber) else {
            return;
        };
        m.downtracks_by_ssrc.remove(&d.downtrack.ssrc);
        let Some(key) = m
            .forwarded
            .iter()
            .find(|(_, f)| f.downtrack == dk)
            .map(|(k, _)| k.clone())
        else {
            return;
        };
        let Some(f) = m.forwarded.remove(&key) else {
            return;
        };
        m.needs_offer = true;
        self.offers_due = true;
        let peer = m.subscriber;
        if let Some(p) = self.peers.get_mut(peer) {
            if let Err(e) = p.pc.remove_track(f.sender) {
                debug!(error = %e, "removing a forwarded track");
            }
        }
    }

    /// Puts a pending track on the subscriber PC: a send-only m-line with the DownTrack's own
    /// SSRC, announced as `msid:<publisher id> <track id>`.
    fn add_forwarded(&mut self, member: usize, key: (String, String)) {
        let Some(&rk) = self.tracks.get(&key) else {
            return;
        };
        let Some(m) = self.members.get(member) else {
            return;
        };
        let peer = m.subscriber;
        let meta = &self.receivers[rk].receiver.meta;
        let ssrc = rand::random::<u32>() | 1;
        let kind = match meta.kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        let track = MediaStreamTrack::new(
            meta.publisher_id.clone(),
            meta.track_id.clone(),
            meta.track_id.clone(),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: RTCRtpCodec {
                    mime_type: meta.codec.mime_type.clone(),
                    clock_rate: meta.codec.clock_rate,
                    channels: meta.codec.channels,
                    sdp_fmtp_line: meta.codec.sdp_fmtp_line.clone(),
                    rtcp_feedback: Vec::new(),
                },
                ..Default::default()
            }],
        );
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: Vec::new(),
            send_encodings: Vec::new(),
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let transceiver = match p.pc.add_transceiver_from_track(track, Some(init)) {
            Ok(t) => t,
            Err(e) => {
                warn!(track = %key.1, error = %e, "cannot forward a track");
                return;
            }
        };
        let (video, clock_rate) = (
            self.receivers[rk].receiver.is_video(),
            meta.codec.clock_rate,
        );
        let max_age = if video {
            self.config.queue.video_age
        } else {
            self.config.queue.audio_age
        };
        let mut downtrack = DownTrack::new(
            ssrc,
            video,
            clock_rate,
            max_age,
            rand::random(),
            rand::random(),
        );
        if video {
            downtrack = downtrack.with_retransmissions(self.config.nack_window);
        }
        if p.connected {
            downtrack.transport_up();
        }
        let dk = self.downtracks.insert(DownTrackEntry {
            downtrack,
            retransmit_budget: TokenBucket::new(self.config.max_retransmits_per_sec),
            subscriber: member,
            peer,
            receiver: rk,
        });
        Metrics::inc(&self.metrics.downtracks);
        self.receivers[rk].downtracks.push(dk);
        let m = &mut self.members[member];
        m.downtracks_by_ssrc.insert(ssrc, dk);
        m.forwarded.insert(
            key,
            Forwarded {
                downtrack: dk,
                sender: RTCRtpSenderId::from(transceiver),
                transceiver,
                offered: false,
            },
        );
    }

    /// A new subscriber offer: the pending tracks it may carry, then the SDP to the client.
    fn offer(&mut self, member: usize, now: Instant) {
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        // Of a kind with no m-line in an answered offer yet, one new m-line per offer; the
        // others follow in the next. aiortc (bundlePolicy "balanced") gives the second and
        // later new m-lines of a kind the first one's pre-BUNDLE transport and then closes it:
        // their receivers never start (aiortc#1414).
        let mut new_kinds: Vec<TrackKind> = Vec::new();
        let mut now_added = Vec::new();
        let pending = std::mem::take(&mut m.pending);
        for key in pending {
            let Some(kind) = self
                .tracks
                .get(&key)
                .and_then(|&rk| self.receivers.get(rk))
                .map(|r| r.receiver.meta.kind)
            else {
                continue;
            };
            if m.negotiated_kinds.contains(&kind) || !new_kinds.contains(&kind) {
                if !m.negotiated_kinds.contains(&kind) {
                    new_kinds.push(kind);
                }
                now_added.push(key);
            } else {
                m.pending.push(key);
            }
        }
        for key in now_added {
            self.add_forwarded(member, key);
        }
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let offer = match p.pc.create_offer(None) {
            Ok(offer) => offer,
            Err(e) => {
                warn!(participant = %m.participant.id, error = %e, "creating the subscriber offer");
                m.needs_offer = false;
                return;
            }
        };
        let sdp = offer.sdp.clone();
        if let Err(e) = p.pc.set_local_description(now, offer) {
            warn!(participant = %m.participant.id, error = %e, "setting the subscriber offer");
            m.needs_offer = false;
            return;
        }
        m.needs_offer = false;
        m.offer_outstanding = true;
        for f in m.forwarded.values_mut() {
            f.offered = true;
        }
        debug!(participant = %m.participant.id, tracks = m.forwarded.len(), "subscriber offer sent");
        m.participant.send(ServerMessage::Offer {
            pc: PcKind::Subscriber,
            sdp,
        });
        self.mark_dirty(peer);
    }

    fn subscriber_answer(&mut self, participant_id: &str, sdp: String, now: Instant) {
        let Some(&member) = self.by_id.get(participant_id) else {
            return;
        };
        let m = &mut self.members[member];
        let error = |code, message: String| ServerMessage::Error {
            code,
            message,
            request_type: Some("answer".into()),
        };
        if !m.offer_outstanding {
            m.participant.send(error(
                ErrorCode::BadRequest,
                "no subscriber offer is outstanding".into(),
            ));
            return;
        }
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let applied = RTCSessionDescription::answer(sdp)
            .and_then(|desc| p.pc.set_remote_description(now, desc));
        if let Err(e) = applied {
            // The offer stays outstanding; the client may send a corrected answer.
            m.participant.send(error(
                ErrorCode::InvalidSdp,
                format!("subscriber answer rejected: {e}"),
            ));
            return;
        }
        m.offer_outstanding = false;
        m.answered = true;
        Metrics::add(&self.metrics.ice_checks_early, p.early_checks.len() as u64);
        for datagram in std::mem::take(&mut p.early_checks) {
            let _ =
                p.pc.handle_read(stack_input(&self.candidates, datagram, now));
        }
        // Payload types and extension ids are final now; the m-lines this answer accepted
        // may carry media from here on.
        let mut started = Vec::new();
        for f in m.forwarded.values() {
            if !f.offered {
                continue;
            }
            let Some(d) = self.downtracks.get_mut(f.downtrack) else {
                continue;
            };
            let Some(negotiated) = negotiated_for(
                &mut p.pc,
                f,
                &self.receivers[d.receiver].receiver.meta.codec,
            ) else {
                continue;
            };
            let kind = self.receivers[d.receiver].receiver.meta.kind;
            if !m.negotiated_kinds.contains(&kind) {
                m.negotiated_kinds.push(kind);
            }
            if d.downtrack.set_negotiated(negotiated) {
                started.push(f.downtrack);
            }
        }
        if !m.pending.is_empty() {
            m.needs_offer = true;
            self.offers_due = true;
        }
        debug!(participant = %m.participant.id, tracks = m.forwarded.len(), "subscriber negotiated");
        self.pump(peer, now);
        for dk in started {
            self.downtrack_wants_keyframe(dk, now, true);
        }
    }

    fn publisher_offer(
        &mut self,
        participant_id: &str,
        sdp: String,
        sending: Vec<String>,
        now: Instant,
    ) {
        let Some(&member) = self.by_id.get(participant_id) else {
            return;
        };
        let peer = match self.members[member].publisher {
            Some(peer) => peer,
            None => match self.new_peer(member, PcKind::Publisher, now) {
                Ok(peer) => {
                    self.members[member].publisher = Some(peer);
                    peer
                }
                Err(e) => {
                    self.offer_error(
                        member,
                        ErrorCode::Internal,
                        format!("cannot create the publisher PC: {e}"),
                    );
                    return;
                }
            },
        };
        let p = &mut self.peers[peer];
        let answer = RTCSessionDescription::offer(sdp)
            .and_then(|offer| p.pc.set_remote_description(now, offer))
            .map_err(|e| (ErrorCode::InvalidSdp, format!("offer rejected: {e}")))
            .and_then(|()| {
                p.pc.create_answer(None).map_err(|e| {
                    (
                        ErrorCode::InvalidSdp,
                        format!("cannot answer this offer: {e}"),
                    )
                })
            })
            .and_then(|answer| {
                let sdp = answer.sdp.clone();
                p.pc.set_local_description(now, answer)
                    .map(|()| sdp)
                    .map_err(|e| (ErrorCode::Internal, format!("cannot apply the answer: {e}")))
            });
        if answer.is_err() {
            // A refused offer must not leave the connection waiting for an answer: every
            // later offer would then be refused too. Back to stable, as if it never came.
            let p = &mut self.peers[peer];
            if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                if let Err(e) = p.pc.set_remote_description(now, rollback) {
                    debug!(error = %e, "rolling back a refused publisher offer");
                }
            }
        }
        let m = &self.members[member];
        match answer {
            Ok(sdp) => {
                m.participant.send(ServerMessage::Answer {
                    pc: PcKind::Publisher,
                    sdp,
                });
                // A track the new offer no longer sends is unpublished at once, whatever the
                // transport does with it later.
                for track_id in m.room.tracks_of(participant_id) {
                    if !sending.contains(&track_id) {
                        m.room.unpublish(participant_id, &track_id);
                    }
                }
            }
            Err((code, message)) => self.offer_error(member, code, message),
        }
        self.pump(peer, now);
    }

    fn offer_error(&self, member: usize, code: ErrorCode, message: String) {
        if let Some(m) = self.members.get(member) {
            Metrics::add(&self.metrics.signaling_errors, 1);
            m.participant.send(ServerMessage::Error {
                code,
                message,
                request_type: Some("offer".into()),
            });
        }
    }

    fn remote_candidate(&mut self, participant_id: &str, pc: PcKind, candidate: Option<Candidate>) {
        let Some(&member) = self.by_id.get(participant_id) else {
            return;
        };
        let m = &self.members[member];
        let peer = match pc {
            PcKind::Publisher => m.publisher,
            PcKind::Subscriber => Some(m.subscriber),
        };
        let (Some(peer), Some(candidate)) = (peer, candidate) else {
            return;
        };
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        // ICE lite never checks towards the client: its candidates only help the stack pair
        // what arrives. A bounded number is kept.
        if p.remote_candidates >= self.config.max_candidates {
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

    fn close_everything(&mut self) {
        let now = Instant::now();
        let ids: Vec<String> = self.by_id.keys().cloned().collect();
        for id in ids {
            self.remove_participant(&id, now);
        }
        let _ = self.udp.flush(now, MAX_SEND_WAIT);
    }
}

/// What the subscriber's answer settled for one forwarded m-line.
fn negotiated_for(pc: &mut RTCPeerConnection, f: &Forwarded, codec: &Codec) -> Option<Negotiated> {
    let mid = pc
        .rtp_transceiver(f.transceiver)
        .and_then(|t| t.mid().clone())
        .unwrap_or_default();
    let mut sender = pc.rtp_sender(f.sender)?;
    let params = sender.get_parameters();
    let codecs = &params.rtp_parameters.codecs;
    let same_mime = |c: &&rtc::rtp_transceiver::rtp_sender::RTCRtpCodecParameters| {
        c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
    };
    let found = codecs
        .iter()
        .filter(same_mime)
        .find(|c| {
            codec.sdp_fmtp_line.is_empty() || c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line
        })
        .or_else(|| codecs.iter().find(same_mime))?;
    let extensions = &params.rtp_parameters.header_extensions;
    let mid_id = extensions
        .iter()
        .find(|e| e.uri == extensions::SDES_MID)
        .map(|e| e.id);
    Some(Negotiated {
        payload_type: found.payload_type,
        extensions: SubscriberExtensions::new(
            ExtensionIds::from_negotiated(extensions.iter().map(|e| (e.uri.as_str(), e.id))),
            mid_id,
            &mid,
        ),
    })
}

/// The peer connection knows its datagrams by the candidate they were sent to: the local IP
/// they arrived on when it is announced, else (NAT 1:1) the public one.
/// A received datagram as the stack takes it, arrived at `at`.
fn stack_input(candidates: &[SocketAddr], datagram: udp::Incoming, at: Instant) -> TaggedBytesMut {
    TaggedBytesMut {
        now: at,
        transport: TransportContext {
            local_addr: local_addr_for(candidates, &datagram),
            peer_addr: datagram.from,
            transport_protocol: TransportProtocol::UDP,
            ecn: None,
        },
        message: datagram.data,
    }
}

fn local_addr_for(candidates: &[SocketAddr], datagram: &udp::Incoming) -> SocketAddr {
    datagram
        .to
        .and_then(|ip| candidates.iter().find(|c| c.ip() == ip))
        .or(candidates.first())
        .copied()
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// True for an (S)RTP datagram, not RTCP (RFC 5761 §4), whose SSRC `wanted` picks.
fn is_rtp_of(datagram: &[u8], wanted: impl Fn(u32) -> bool) -> bool {
    datagram.len() >= 12
        && datagram[0] >> 6 == 2
        && !(192..=223).contains(&datagram[1])
        && wanted(u32::from_be_bytes([
            datagram[8],
            datagram[9],
            datagram[10],
            datagram[11],
        ]))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
