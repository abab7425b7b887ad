//! One worker: a thread that owns the peer connections of the rooms placed on it, its socket
//! of the shared port, its timers, and the Router between them.
//!
//! The loop: wait for a datagram, a command or a timer; handle a batch of them; then, once
//! per batch, send the subscriber offers that became due, drain every peer connection that
//! has output, and flush the datagrams in a few system calls. What the rest of the server must
//! hear goes out as events; the worker calls nobody.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use slab::Slab;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::engine::chat;
use crate::engine::demux::{self, Demux, Route};
use crate::engine::feedback::is_keyframe_request;
use crate::engine::negotiation::TrackKey;
use crate::engine::participant::{self, Forwarded, Participant};
use crate::engine::peer::Peer;
use crate::engine::router::{Router, RouterConfig};
use crate::engine::srtp::{KeyTap, Observed, Writer};
use crate::engine::timers::Timers;
use crate::engine::transmit::{SendFault, Transmit};
use crate::engine::udp::{self, Udp};
use crate::engine::{
    Command, EngineConfig, EngineEvent, EventSink, IceCandidate, Inbox, PcKind, PeerSettings,
    SdpRefusal, SrtpWriter,
};
use crate::media::extensions::{self, ExtensionIds};
use crate::media::kind::TrackKind;
use crate::media::receiver::{Codec, KeyframeRequest, TrackMeta};
use crate::metrics::Metrics;

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
    pub events: Arc<dyn EventSink>,
}

/// Datagrams read before the worker stops to flush what it owes.
const MAX_READS_PER_BATCH: usize = 64;
/// Peer connections with output pending, or datagrams queued, after which the worker sends
/// before reading on.
const FLUSH_AFTER_DIRTY: usize = 512;
const FLUSH_AFTER_QUEUED: usize = 512;
/// How long a datagram may wait for the socket before it is dropped.
const MAX_SEND_WAIT: Duration = Duration::from_millis(200);
/// How often ghosts are looked for and stale routes forgotten: bounds how late a ghost goes.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(2);
/// Connectivity checks held per peer connection until its remote description is known.
const MAX_EARLY_CHECKS: usize = 8;
/// How often each subscriber gets a sender report per stream (what browsers send too).
const SENDER_REPORT_EVERY: Duration = Duration::from_secs(1);

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

struct Worker {
    index: usize,
    udp: Udp,
    inbox: mpsc::UnboundedReceiver<Inbox>,
    others: Vec<mpsc::UnboundedSender<Inbox>>,
    candidates: Vec<SocketAddr>,
    settings: Arc<PeerSettings>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    events: Arc<dyn EventSink>,
    peers: Slab<Peer>,
    participants: Slab<Participant>,
    by_id: HashMap<String, usize>,
    router: Router,
    demux: Demux<usize>,
    timers: Timers<TimerKey>,
    dirty: Vec<usize>,
    /// Some participant may need a subscriber offer (checked once per batch).
    offers_due: bool,
    received: Vec<udp::Incoming>,
    send_fault: SendFault,
}

impl Worker {
    fn new(setup: Setup) -> std::io::Result<Self> {
        let workers = setup.others.len();
        let mut timers = Timers::default();
        let now = Instant::now();
        timers.set(TimerKey::Housekeeping, Some(now + HOUSEKEEPING_EVERY));
        timers.set(TimerKey::SenderReports, Some(now + SENDER_REPORT_EVERY));
        let config = setup.config;
        let router = Router::new(
            RouterConfig {
                pli_interval: config.pli_interval,
                nack_window: config.nack_window,
                nack_max_age: config.nack_max_age,
                max_retransmits_per_sec: config.max_retransmits_per_sec,
                queue: config.queue,
                fault_drop_every: config.fault_drop_every,
            },
            setup.metrics.clone(),
        );
        Ok(Worker {
            index: setup.index,
            udp: Udp::new(setup.socket)?,
            inbox: setup.inbox,
            others: setup.others,
            candidates: setup.candidates,
            settings: setup.peers,
            send_fault: SendFault::new(config.fault_drop_sent_video_every),
            config,
            metrics: setup.metrics,
            events: setup.events,
            peers: Slab::new(),
            participants: Slab::new(),
            by_id: HashMap::new(),
            router,
            demux: Demux::new(setup.index, workers),
            timers,
            dirty: Vec::new(),
            offers_due: false,
            received: Vec::with_capacity(quinn_udp::BATCH_SIZE),
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

    fn emit(&self, participant: usize, event: EngineEvent) {
        if let Some(p) = self.participants.get(participant) {
            self.events.emit(&p.id, event);
        }
    }

    // ---- I/O ----

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
        while let Some(event) = self.peers.get_mut(peer).and_then(|p| p.pc.poll_event()) {
            self.on_event(peer, event, now);
        }
        while let Some(message) = self.peers.get_mut(peer).and_then(|p| p.pc.poll_read()) {
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
            if self.send_fault.is_on()
                && p.role == PcKind::Subscriber
                && is_rtp_of(&out.message, |ssrc| {
                    self.participants.get(p.owner).is_some_and(|m| {
                        m.downtracks_by_ssrc
                            .get(&ssrc)
                            .and_then(|&dk| self.router.downtrack(dk))
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
                        .router
                        .receiver_mut(rk)
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
    /// never came up, or every unmuted track they publish went silent. They are reported lost.
    /// (A client that never answers only watches signaling: it is left be.)
    fn find_ghosts(&mut self, now: Instant) {
        let timeout = self.config.media_timeout;
        let mut lost = Vec::new();
        for (key, m) in self.participants.iter() {
            if m.lost {
                continue;
            }
            let never_connected = m.negotiation.was_answered()
                && self.peers.get(m.subscriber).is_some_and(|p| !p.connected)
                && now.saturating_duration_since(m.joined_at) > timeout;
            let (mut live, mut silent) = (0, 0);
            for (_, r) in self.router.published_by(key).filter(|(_, r)| !r.muted) {
                if now.saturating_duration_since(r.last_packet) > timeout {
                    silent += 1;
                } else {
                    live += 1;
                }
            }
            if never_connected {
                lost.push((key, "media never connected"));
            } else if silent > 0 && live == 0 {
                lost.push((key, "media stopped"));
            }
        }
        for (key, reason) in lost {
            self.media_lost(key, reason);
        }
    }

    /// Reports a participant's media path dead, once.
    fn media_lost(&mut self, participant: usize, reason: &'static str) {
        let Some(m) = self.participants.get_mut(participant) else {
            return;
        };
        if std::mem::replace(&mut m.lost, true) {
            return;
        }
        warn!(participant = %m.id, reason, "media lost");
        Metrics::add(&self.metrics.media_timeouts, 1);
        self.emit(participant, EngineEvent::MediaLost { reason });
    }

    fn end_of_batch(&mut self) {
        let now = Instant::now();
        if std::mem::take(&mut self.offers_due) {
            let peers = &self.peers;
            let due: Vec<usize> = self
                .participants
                .iter()
                .filter(|(_, m)| {
                    let up = peers.get(m.subscriber).is_some_and(|p| p.connected);
                    m.negotiation.offer_due(up)
                })
                .map(|(k, _)| k)
                .collect();
            for participant in due {
                self.offer(participant, now);
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
                self.on_track(peer, init.receiver_id, init.track_id, init.ssrc, now)
            }
            RTCPeerConnectionEvent::OnDataChannel(event) => self.on_data_channel(peer, event, now),
            _ => {}
        }
    }

    fn on_connection_state(&mut self, peer: usize, state: RTCPeerConnectionState, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let (owner, role) = (p.owner, p.role);
        debug!(peer, ?role, %state, "peer connection state");
        let subscriber_downtracks = |worker: &Self| -> Vec<usize> {
            worker
                .participants
                .get(owner)
                .map(|m| m.negotiation.values().map(|f| f.downtrack).collect())
                .unwrap_or_default()
        };
        match state {
            RTCPeerConnectionState::Connected => {
                p.connected = true;
                if role == PcKind::Subscriber {
                    // Offers held back while it connected may go now.
                    self.offers_due = true;
                    for dk in subscriber_downtracks(self) {
                        let wants = self
                            .router
                            .downtrack_mut(dk)
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
                    for dk in subscriber_downtracks(self) {
                        if let Some(d) = self.router.downtrack_mut(dk) {
                            d.downtrack.transport_down();
                        }
                    }
                }
            }
            // Failed: no consent for too long. Closed: the client closed it (ours are removed
            // before they are closed). Either way its media path is dead.
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                self.media_lost(owner, "media connection failed");
            }
            _ => {}
        }
    }

    /// A publisher's track began: a Receiver for it, and the news for the room.
    fn on_track(
        &mut self,
        peer: usize,
        receiver_id: RTCRtpReceiverId,
        msid_track_id: String,
        ssrc: u32,
        now: Instant,
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
        let Some(m) = self.participants.get_mut(owner) else {
            return;
        };
        let publisher_id = m.id.clone();
        let track_id = if msid_track_id.is_empty() {
            format!("{publisher_id}-{ssrc}")
        } else {
            msid_track_id
        };
        let key = (publisher_id.clone(), track_id.clone());
        // A renegotiation announces the tracks it keeps again: they are published already.
        if let Some(rk) = self.router.track(&key) {
            m.receivers_by_ssrc.insert(ssrc, Some(rk));
            if let Some(entry) = self.router.receiver_mut(rk) {
                entry.receiver.media_ssrc = ssrc;
            }
            return;
        }
        let meta = TrackMeta {
            publisher_id,
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
        let rk = self.router.add_receiver(owner, meta, ssrc, now);
        m.receivers_by_ssrc.insert(ssrc, Some(rk));
        self.emit(owner, EngineEvent::TrackOpened { track_id, kind });
    }

    fn on_data_channel(&mut self, peer: usize, event: RTCDataChannelEvent, now: Instant) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let owner = p.owner;
        match event {
            RTCDataChannelEvent::OnOpen(id) => {
                let is_chat =
                    p.pc.data_channel(id)
                        .is_some_and(|dc| dc.label() == chat::LABEL);
                let held = match self.participants.get_mut(owner) {
                    Some(m) if is_chat && m.chat.is(id) => m.chat.opened(now),
                    _ => return,
                };
                for text in held {
                    self.send_on_channel(owner, text, now);
                }
            }
            RTCDataChannelEvent::OnClose(id) => {
                if let Some(m) = self.participants.get_mut(owner) {
                    if m.chat.is(id) {
                        m.chat.closed();
                    }
                }
            }
            _ => {}
        }
    }

    fn on_message(&mut self, peer: usize, message: TaggedRTCMessage, now: Instant) {
        let Some(owner) = self.peers.get(peer).map(|p| p.owner) else {
            return;
        };
        match message.message {
            RTCMessage::RtpPacket(_, packet) => {
                let rk = self
                    .participants
                    .get(owner)
                    .and_then(|m| m.receivers_by_ssrc.get(&packet.header.ssrc).copied())
                    .flatten();
                if let Some(rk) = rk {
                    let mut out = Transmit {
                        peers: &mut self.peers,
                        udp: &mut self.udp,
                        fault: &mut self.send_fault,
                        dirty: &mut self.dirty,
                        metrics: &self.metrics,
                    };
                    if self.router.fan_out(rk, &packet, message.now, now, &mut out) {
                        self.request_keyframe(rk, now, false);
                    }
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
                            .participants
                            .get(owner)
                            .and_then(|m| m.downtracks_by_ssrc.get(&ssrc).copied());
                        if let Some(dk) = dk {
                            if let Some(d) = self.router.downtrack_mut(dk) {
                                d.downtrack.resync();
                            }
                            self.downtrack_wants_keyframe(dk, now, false);
                        }
                    }
                }
            }
            RTCMessage::DataChannelMessage(id, data)
                if self.participants.get(owner).is_some_and(|m| m.chat.is(id)) =>
            {
                self.emit(
                    owner,
                    EngineEvent::ChannelMessage {
                        text: data.is_string,
                        data: data.data.freeze(),
                    },
                );
            }
            _ => {}
        }
    }

    /// Answers a subscriber's NACK from the track's shared history.
    fn retransmit(&mut self, participant: usize, nack: &TransportLayerNack, now: Instant) {
        let Some(&dk) = self
            .participants
            .get(participant)
            .and_then(|m| m.downtracks_by_ssrc.get(&nack.media_ssrc))
        else {
            return;
        };
        let mut out = Transmit {
            peers: &mut self.peers,
            udp: &mut self.udp,
            fault: &mut self.send_fault,
            dirty: &mut self.dirty,
            metrics: &self.metrics,
        };
        self.router.retransmit(dk, nack, now, &mut out);
    }

    /// Every sending DownTrack's sender report, one compound packet per subscriber.
    fn send_sender_reports(&mut self, now: Instant) {
        let ntp = extensions::ntp_now();
        let mut reports = 0;
        for (_, m) in self.participants.iter() {
            let batch =
                self.router
                    .sender_reports(m.downtracks_by_ssrc.values().copied(), now, ntp);
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
        if let Some(rk) = self.router.downtrack(dk).map(|d| d.receiver) {
            self.request_keyframe(rk, now, urgent);
        }
    }

    fn request_keyframe(&mut self, rk: usize, now: Instant, urgent: bool) {
        match self.router.request_keyframe(rk, now, urgent) {
            KeyframeRequest::SendNow => self.send_pli(rk, now),
            KeyframeRequest::At(at) => self.timers.set(TimerKey::Keyframe(rk), Some(at)),
            KeyframeRequest::Nothing => {}
        }
    }

    fn send_pli(&mut self, rk: usize, now: Instant) {
        let Some(entry) = self.router.receiver(rk) else {
            return;
        };
        let media_ssrc = entry.receiver.media_ssrc;
        let Some(peer) = self
            .participants
            .get(entry.publisher)
            .and_then(|m| m.publisher)
        else {
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

    /// A text message on a participant's chat channel. Before the channel opens (it joined a
    /// moment ago) a few recent messages wait for it; a channel that cannot take a message
    /// misses it rather than delay it for the others.
    fn send_on_channel(&mut self, participant: usize, text: Arc<str>, now: Instant) {
        let Some(m) = self.participants.get_mut(participant) else {
            return;
        };
        let Some(channel) = m.chat.id else {
            return;
        };
        if !m.chat.is_open() {
            m.chat.hold(text, now);
            return;
        }
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let sent =
            p.pc.data_channel(channel)
                .map(|mut dc| dc.send_text(now, &*text));
        if let Some(Err(e)) = sent {
            debug!(participant, error = %e, "chat message not delivered");
        }
        self.mark_dirty(peer);
    }

    // ---- commands from the control plane ----

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        let key = |worker: &Self, id: &str| worker.by_id.get(id).copied();
        match command {
            Command::AddParticipant { participant_id } => self.add_participant(participant_id, now),
            Command::RemoveParticipant { participant_id } => {
                self.remove_participant(&participant_id, now)
            }
            Command::Subscribe {
                subscriber_id,
                publisher_id,
                track_id,
            } => {
                if let Some(participant) = key(self, &subscriber_id) {
                    self.subscribe(participant, (publisher_id, track_id));
                }
            }
            Command::RemoveTrack {
                publisher_id,
                track_id,
            } => self.remove_track(&(publisher_id, track_id)),
            Command::SetMuted {
                publisher_id,
                track_id,
                muted,
            } => {
                if let Some(r) = self
                    .router
                    .track(&(publisher_id, track_id))
                    .and_then(|rk| self.router.receiver_mut(rk))
                {
                    r.muted = muted;
                }
            }
            Command::SendChannelMessage {
                participant_id,
                text,
            } => {
                if let Some(participant) = key(self, &participant_id) {
                    self.send_on_channel(participant, text, now);
                }
            }
            Command::PublisherOffer {
                participant_id,
                sdp,
            } => {
                if let Some(participant) = key(self, &participant_id) {
                    self.publisher_offer(participant, sdp, now);
                }
            }
            Command::SubscriberAnswer {
                participant_id,
                sdp,
            } => {
                if let Some(participant) = key(self, &participant_id) {
                    self.subscriber_answer(participant, sdp, now);
                }
            }
            Command::Candidate {
                participant_id,
                pc,
                candidate,
            } => {
                if let (Some(participant), Some(candidate)) =
                    (key(self, &participant_id), candidate)
                {
                    self.remote_candidate(participant, pc, candidate);
                }
            }
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
        let srtp = match tap {
            Some(tap) => Writer::Proving { tap, tries: 0 },
            None => Writer::Stack,
        };
        let key = self
            .peers
            .insert(Peer::new(pc, owner, role, ufrag.clone(), srtp));
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

    fn add_participant(&mut self, id: String, now: Instant) {
        if self.by_id.contains_key(&id) {
            return;
        }
        let key = self
            .participants
            .insert(Participant::new(id.clone(), usize::MAX, now));
        let peer = match self.new_peer(key, PcKind::Subscriber, now) {
            Ok(peer) => peer,
            Err(e) => {
                warn!(participant = %id, error = %e, "cannot create the subscriber PC");
                self.events.emit(
                    &id,
                    EngineEvent::Failed {
                        message: format!("cannot start media: {e}"),
                    },
                );
                self.participants.remove(key);
                return;
            }
        };
        let chat = self.peers[peer]
            .pc
            .create_data_channel(chat::LABEL, None)
            .map(|dc| dc.id());
        let m = &mut self.participants[key];
        m.subscriber = peer;
        match chat {
            Ok(channel) => m.chat.id = Some(channel),
            Err(e) => warn!(participant = %id, error = %e, "cannot create the chat channel"),
        }
        self.by_id.insert(id, key);
        self.offers_due = true;
    }

    fn remove_participant(&mut self, participant_id: &str, now: Instant) {
        let Some(key) = self.by_id.remove(participant_id) else {
            return;
        };
        // What it published, and what it received.
        let published: Vec<TrackKey> = self
            .router
            .published_by(key)
            .map(|(_, r)| {
                (
                    r.receiver.meta.publisher_id.clone(),
                    r.receiver.meta.track_id.clone(),
                )
            })
            .collect();
        for track in published {
            self.remove_track(&track);
        }
        let received: Vec<usize> = self.participants[key]
            .negotiation
            .values()
            .map(|f| f.downtrack)
            .collect();
        for dk in received {
            self.remove_downtrack(dk);
        }
        let m = self.participants.remove(key);
        for peer in [m.publisher, Some(m.subscriber)].into_iter().flatten() {
            self.close_peer(peer, now);
        }
    }

    fn subscribe(&mut self, participant: usize, track: TrackKey) {
        let Some(kind) = self
            .router
            .track(&track)
            .and_then(|rk| self.router.receiver(rk))
            .map(|r| r.receiver.meta.kind)
        else {
            return;
        };
        let m = &mut self.participants[participant];
        if track.0 != m.id && m.negotiation.want(track, kind) {
            self.offers_due = true;
        }
    }

    /// A published track goes: its Receiver, every DownTrack of it (their subscribers
    /// renegotiate), and what was waiting to be offered.
    fn remove_track(&mut self, track: &TrackKey) {
        let Some(rk) = self.router.track(track) else {
            return;
        };
        let publisher = self.router.receiver(rk).map(|r| r.publisher);
        self.timers.cancel(TimerKey::Keyframe(rk));
        for d in self.router.remove_receiver(rk) {
            self.forget_downtrack(d.subscriber, d.downtrack.ssrc, d.peer);
        }
        for (_, m) in self.participants.iter_mut() {
            m.negotiation.unwant(track);
        }
        if let Some(m) = publisher.and_then(|p| self.participants.get_mut(p)) {
            for v in m.receivers_by_ssrc.values_mut() {
                if *v == Some(rk) {
                    *v = None;
                }
            }
        }
    }

    fn remove_downtrack(&mut self, dk: usize) {
        if let Some(d) = self.router.remove_downtrack(dk) {
            self.forget_downtrack(d.subscriber, d.downtrack.ssrc, d.peer);
        }
    }

    /// A subscriber's DownTrack is gone: its m-line comes off the subscriber PC.
    fn forget_downtrack(&mut self, subscriber: usize, ssrc: u32, peer: usize) {
        let Some(m) = self.participants.get_mut(subscriber) else {
            return;
        };
        let Some(&dk) = m.downtracks_by_ssrc.get(&ssrc) else {
            return;
        };
        m.downtracks_by_ssrc.remove(&ssrc);
        let Some(f) = m
            .negotiation
            .find(|f| f.downtrack == dk)
            .and_then(|key| m.negotiation.remove(&key))
        else {
            return;
        };
        self.offers_due = true;
        if let Some(p) = self.peers.get_mut(peer) {
            if let Err(e) = p.pc.remove_track(f.sender) {
                debug!(error = %e, "removing a forwarded track");
            }
        }
    }

    /// A new subscriber offer: the wanted tracks it may carry, then the SDP to the client.
    fn offer(&mut self, participant: usize, now: Instant) {
        let Some(m) = self.participants.get_mut(participant) else {
            return;
        };
        let peer = m.subscriber;
        for (track, _) in m.negotiation.take_for_offer() {
            self.add_forwarded(participant, track);
        }
        let (Some(m), Some(p)) = (
            self.participants.get_mut(participant),
            self.peers.get_mut(peer),
        ) else {
            return;
        };
        let sdp = p.pc.create_offer(None).and_then(|offer| {
            let sdp = offer.sdp.clone();
            p.pc.set_local_description(now, offer).map(|()| sdp)
        });
        let sdp = match sdp {
            Ok(sdp) => sdp,
            Err(e) => {
                warn!(participant = %m.id, error = %e, "making the subscriber offer");
                m.negotiation.offer_failed();
                return;
            }
        };
        m.negotiation.offered();
        debug!(participant = %m.id, tracks = m.negotiation.len(), "subscriber offer sent");
        self.emit(participant, EngineEvent::SubscriberOffer { sdp });
        self.mark_dirty(peer);
    }

    /// Puts a wanted track on the subscriber PC with a DownTrack of its own.
    fn add_forwarded(&mut self, participant: usize, track: TrackKey) {
        let Some(rk) = self.router.track(&track) else {
            return;
        };
        let Some(m) = self.participants.get(participant) else {
            return;
        };
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(meta) = self.router.receiver(rk).map(|r| &r.receiver.meta) else {
            return;
        };
        let kind = meta.kind;
        let ssrc = rand::random::<u32>() | 1;
        let transceiver = match participant::add_transceiver(&mut p.pc, meta, ssrc) {
            Ok(t) => t,
            Err(e) => {
                warn!(track = %track.1, error = %e, "cannot forward a track");
                return;
            }
        };
        let connected = p.connected;
        let Some(dk) = self
            .router
            .add_downtrack(rk, participant, peer, ssrc, connected)
        else {
            return;
        };
        let m = &mut self.participants[participant];
        m.downtracks_by_ssrc.insert(ssrc, dk);
        m.negotiation.forwarding(
            track,
            kind,
            Forwarded {
                downtrack: dk,
                sender: RTCRtpSenderId::from(transceiver),
                transceiver,
            },
        );
    }

    fn subscriber_answer(&mut self, participant: usize, sdp: String, now: Instant) {
        let m = &mut self.participants[participant];
        let refused = |reason, message: String| EngineEvent::SdpRefused {
            pc: PcKind::Subscriber,
            reason,
            message,
        };
        if !m.negotiation.offer_outstanding() {
            let event = refused(
                SdpRefusal::Unexpected,
                "no subscriber offer is outstanding".into(),
            );
            self.emit(participant, event);
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
            let event = refused(
                SdpRefusal::Invalid,
                format!("subscriber answer rejected: {e}"),
            );
            self.emit(participant, event);
            return;
        }
        Metrics::add(&self.metrics.ice_checks_early, p.early_checks.len() as u64);
        for datagram in std::mem::take(&mut p.early_checks) {
            let _ =
                p.pc.handle_read(stack_input(&self.candidates, datagram, now));
        }
        // Payload types and extension ids are final now; the m-lines this answer accepted
        // may carry media from here on.
        let mut started = Vec::new();
        let mut kinds = Vec::new();
        for (_, f, kind) in m.negotiation.answered() {
            let Some(d) = self.router.downtrack_mut(f.downtrack) else {
                continue;
            };
            let receiver = d.receiver;
            let Some(codec) = self
                .router
                .receiver(receiver)
                .map(|r| r.receiver.meta.codec.clone())
            else {
                continue;
            };
            let Some(negotiated) = participant::negotiated_for(&mut p.pc, f, &codec) else {
                continue;
            };
            kinds.push(kind);
            if self
                .router
                .downtrack_mut(f.downtrack)
                .is_some_and(|d| d.downtrack.set_negotiated(negotiated))
            {
                started.push(f.downtrack);
            }
        }
        for kind in kinds {
            m.negotiation.kind_negotiated(kind);
        }
        if m.negotiation.offer_due(p.connected) {
            self.offers_due = true;
        }
        debug!(participant = %m.id, tracks = m.negotiation.len(), "subscriber negotiated");
        self.pump(peer, now);
        for dk in started {
            self.downtrack_wants_keyframe(dk, now, true);
        }
    }

    fn publisher_offer(&mut self, participant: usize, sdp: String, now: Instant) {
        let peer = match self.participants[participant].publisher {
            Some(peer) => peer,
            None => match self.new_peer(participant, PcKind::Publisher, now) {
                Ok(peer) => {
                    self.participants[participant].publisher = Some(peer);
                    peer
                }
                Err(e) => {
                    let event = EngineEvent::SdpRefused {
                        pc: PcKind::Publisher,
                        reason: SdpRefusal::Internal,
                        message: format!("cannot create the publisher PC: {e}"),
                    };
                    self.emit(participant, event);
                    return;
                }
            },
        };
        let p = &mut self.peers[peer];
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
        let event = match answer {
            Ok(sdp) => EngineEvent::PublisherAnswer { sdp },
            Err((reason, message)) => {
                // A refused offer must not leave the connection waiting for an answer: every
                // later offer would then be refused too. Back to stable, as if it never came.
                if let Ok(rollback) = RTCSessionDescription::rollback(None) {
                    if let Err(e) = p.pc.set_remote_description(now, rollback) {
                        debug!(error = %e, "rolling back a refused publisher offer");
                    }
                }
                EngineEvent::SdpRefused {
                    pc: PcKind::Publisher,
                    reason,
                    message,
                }
            }
        };
        self.emit(participant, event);
        self.pump(peer, now);
    }

    fn remote_candidate(&mut self, participant: usize, pc: PcKind, candidate: IceCandidate) {
        let m = &self.participants[participant];
        let peer = match pc {
            PcKind::Publisher => m.publisher,
            PcKind::Subscriber => Some(m.subscriber),
        };
        let Some(p) = peer.and_then(|peer| self.peers.get_mut(peer)) else {
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
