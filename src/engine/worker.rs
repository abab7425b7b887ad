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
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::sansio::Protocol;
use slab::Slab;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::engine::chat;
use crate::engine::demux::Route;
use crate::engine::feedback::is_keyframe_request;
use crate::engine::participant::Participant;
use crate::engine::peers::Peers;
use crate::engine::publisher;
use crate::engine::quality::QUALITY_EVERY;
use crate::engine::router::{Router, RouterConfig, SubscriberKeyframe};
use crate::engine::speakers::SPEAKERS_EVERY;
use crate::engine::srtp::Observed;
use crate::engine::timers::Timers;
use crate::engine::transmit::{SendFault, Transmit};
use crate::engine::udp::{self, Udp};
use crate::engine::{EngineConfig, EngineEvent, EventSink, Inbox, PcKind, PeerSettings};
use crate::media::extensions;
use crate::media::receiver::KeyframeRequest;
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
/// How often the worker looks for simulcast layers that stopped: bounds how long a subscriber
/// of one sees it frozen.
const LAYERS_EVERY: Duration = Duration::from_millis(250);
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
pub(super) enum TimerKey {
    Peer(usize),
    /// A deferred keyframe request for a layer of a track.
    Keyframe(usize, u8),
    Housekeeping,
    SenderReports,
    /// A look at which simulcast layers still arrive, and every subscriber's layers within
    /// its bandwidth.
    Layers,
    /// The next padding of a probe on a subscriber connection.
    Probe(usize),
    /// Who speaks in each room.
    Speakers,
    /// Every participant's connection quality.
    Quality,
}

pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) udp: Udp,
    pub(super) inbox: mpsc::UnboundedReceiver<Inbox>,
    pub(super) others: Vec<mpsc::UnboundedSender<Inbox>>,
    pub(super) config: EngineConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: Arc<dyn EventSink>,
    pub(super) peers: Peers,
    pub(super) participants: Slab<Participant>,
    pub(super) by_id: HashMap<String, usize>,
    pub(super) router: Router,
    pub(super) timers: Timers<TimerKey>,
    /// Some participant may need a subscriber offer (checked once per batch).
    pub(super) offers_due: bool,
    pub(super) received: Vec<udp::Incoming>,
    pub(super) send_fault: SendFault,
    /// When the layers' bitrates were last measured.
    pub(super) layers_measured_at: Instant,
    /// The speakers each room was last told, levels in tenths.
    pub(super) speakers_sent: HashMap<Arc<str>, Vec<(String, u8)>>,
}

impl Worker {
    fn new(setup: Setup) -> std::io::Result<Self> {
        let workers = setup.others.len();
        let mut timers = Timers::default();
        let now = Instant::now();
        timers.set(TimerKey::Housekeeping, Some(now + HOUSEKEEPING_EVERY));
        timers.set(TimerKey::SenderReports, Some(now + SENDER_REPORT_EVERY));
        timers.set(TimerKey::Layers, Some(now + LAYERS_EVERY));
        timers.set(TimerKey::Speakers, Some(now + SPEAKERS_EVERY));
        timers.set(TimerKey::Quality, Some(now + QUALITY_EVERY));
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
        let peers = Peers::new(
            setup.index,
            workers,
            setup.peers,
            setup.candidates,
            config.srtp_writer,
            config.max_candidates,
            setup.metrics.clone(),
        );
        Ok(Worker {
            index: setup.index,
            udp: Udp::new(setup.socket)?,
            inbox: setup.inbox,
            others: setup.others,
            send_fault: SendFault::new(config.fault_drop_sent_video_every),
            layers_measured_at: now,
            speakers_sent: HashMap::new(),
            config,
            metrics: setup.metrics,
            events: setup.events,
            peers,
            participants: Slab::new(),
            by_id: HashMap::new(),
            router,
            timers,
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

    pub(super) fn emit(&self, participant: usize, event: EngineEvent) {
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
                        if self.peers.dirty.len() >= FLUSH_AFTER_DIRTY
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
        match self.peers.route(datagram.from, &datagram.data, at) {
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
        if self.peers.feed(peer, datagram, at) {
            self.pump(peer, at);
        }
    }

    /// After anything touched a peer connection: its events, then what it read.
    pub(super) fn pump(&mut self, peer: usize, now: Instant) {
        self.mark_dirty(peer);
        while let Some(event) = self.peers.get_mut(peer).and_then(|p| p.pc.poll_event()) {
            self.on_event(peer, event, now);
        }
        while let Some(message) = self.peers.get_mut(peer).and_then(|p| p.pc.poll_read()) {
            self.on_message(peer, message, now);
        }
    }

    pub(super) fn mark_dirty(&mut self, peer: usize) {
        self.peers.mark_dirty(peer);
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
                TimerKey::Keyframe(rk, layer) => {
                    if self
                        .router
                        .receiver_mut(rk)
                        .and_then(|r| r.layer_mut(layer))
                        .is_some_and(|l| l.receiver.keyframe_due(now))
                    {
                        self.send_pli(rk, layer, now);
                    }
                }
                TimerKey::SenderReports => {
                    self.send_sender_reports(now);
                    self.timers
                        .set(TimerKey::SenderReports, Some(now + SENDER_REPORT_EVERY));
                }
                TimerKey::Layers => {
                    for rk in self.router.stalled_layers(now) {
                        let switches = self.router.reallocate(rk);
                        self.request_keyframes(rk, switches, now, true);
                    }
                    self.allocate_bandwidth(now);
                    self.timers.set(TimerKey::Layers, Some(now + LAYERS_EVERY));
                }
                TimerKey::Quality => {
                    self.assess_quality();
                    self.timers
                        .set(TimerKey::Quality, Some(now + QUALITY_EVERY));
                }
                TimerKey::Speakers => {
                    self.announce_speakers(now);
                    self.timers
                        .set(TimerKey::Speakers, Some(now + SPEAKERS_EVERY));
                }
                TimerKey::Probe(peer) => {
                    self.probe_step(peer, now);
                }
                TimerKey::Housekeeping => {
                    self.peers.expire_routes(now);
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
        let lost: Vec<(usize, &'static str)> = self
            .participants
            .iter()
            .filter_map(|(key, m)| {
                let connected = self.peers.get(m.subscriber).is_some_and(|p| p.connected);
                let publisher_unconnected_since = m
                    .publisher
                    .and_then(|k| self.peers.get(k))
                    .filter(|p| !p.ever_connected)
                    .map(|p| p.created);
                m.ghost(
                    key,
                    connected,
                    publisher_unconnected_since,
                    &self.router,
                    now,
                    timeout,
                )
                .map(|reason| (key, reason))
            })
            .collect();
        for (key, reason) in lost {
            self.media_lost(key, reason);
        }
    }

    /// Reports a participant's media path dead, once.
    pub(super) fn media_lost(&mut self, participant: usize, reason: &'static str) {
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
        while let Some(peer) = self.peers.dirty.pop() {
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
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => self.on_track(
                peer,
                init.receiver_id,
                init.track_id,
                init.rid,
                init.ssrc,
                now,
            ),
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
                p.ever_connected = true;
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
    /// A publisher's stream began: a track (or a layer of one) for the Router, and the news
    /// of a new track for the room.
    fn on_track(
        &mut self,
        peer: usize,
        receiver_id: RTCRtpReceiverId,
        msid_track_id: String,
        rid: Option<String>,
        ssrc: u32,
        now: Instant,
    ) {
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        let owner = p.owner;
        let Some(m) = self.participants.get_mut(owner) else {
            return;
        };
        let Some((meta, layer)) = publisher::track_meta(
            &mut p.pc,
            receiver_id,
            ssrc,
            rid.as_deref(),
            msid_track_id,
            &m.id,
        ) else {
            return;
        };
        let (track_id, kind) = (meta.track_id.clone(), meta.kind);
        debug!(participant = %m.id, track = %track_id, ?rid, layer, ssrc, "stream began");
        // A renegotiation announces the streams it keeps again: the track is published
        // already, and the stream may come with a new SSRC.
        let (rk, created) = self.router.add_receiver(owner, meta, layer, ssrc, now);
        self.router.set_rid(rk, layer, rid);
        m.receivers_by_ssrc.retain(|_, v| *v != Some((rk, layer)));
        m.receivers_by_ssrc.insert(ssrc, Some((rk, layer)));
        if created {
            self.emit(owner, EngineEvent::TrackOpened { track_id, kind });
        } else {
            // Another layer of a track: its subscribers may want it.
            let wanted = self.router.reallocate(rk);
            self.request_keyframes(rk, wanted, now, true);
        }
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
                let stream = self
                    .participants
                    .get(owner)
                    .and_then(|m| m.receivers_by_ssrc.get(&packet.header.ssrc).copied())
                    .flatten();
                if let Some((rk, layer)) = stream {
                    let mut out = Transmit {
                        peers: &mut self.peers,
                        udp: &mut self.udp,
                        fault: &mut self.send_fault,
                        metrics: &self.metrics,
                    };
                    let wanted =
                        self.router
                            .fan_out(rk, layer, &packet, message.now, now, &mut out);
                    self.request_keyframes(rk, wanted, now, false);
                    if self.router.resized(rk) {
                        let switches = self.router.reallocate(rk);
                        self.request_keyframes(rk, switches, now, true);
                    }
                }
            }
            RTCMessage::RtcpPacket(_, packets) => {
                self.on_bandwidth_feedback(peer, &packets, now);
                for nack in packets
                    .iter()
                    .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
                {
                    self.retransmit(owner, nack, now);
                }
                let constrained = self
                    .peers
                    .get(peer)
                    .and_then(|p| p.congestion.as_ref())
                    .is_some_and(|c| c.budget().is_some());
                for packet in packets.iter().filter(|p| is_keyframe_request(p.as_ref())) {
                    Metrics::add(&self.metrics.keyframe_requests_received, 1);
                    for ssrc in packet.destination_ssrc() {
                        let dk = self
                            .participants
                            .get(owner)
                            .and_then(|m| m.downtracks_by_ssrc.get(&ssrc).copied());
                        // What is forwarded meanwhile goes on: the subscriber may still
                        // decode some of it, and its decoder knows what it can use.
                        if let Some(dk) = dk {
                            self.subscriber_wants_keyframe(dk, constrained, now);
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
                self.peers.mark_dirty(m.subscriber);
            }
        }
        Metrics::add(&self.metrics.sender_reports, reports);
    }

    /// A subscriber's own keyframe request on DownTrack `dk` (see
    /// [`Router::subscriber_wants_keyframe`]).
    fn subscriber_wants_keyframe(&mut self, dk: usize, constrained: bool, now: Instant) {
        let Some(rk) = self.router.downtrack(dk).map(|d| d.receiver) else {
            return;
        };
        match self.router.subscriber_wants_keyframe(dk, constrained, now) {
            SubscriberKeyframe::Ask(layer) => self.request_keyframe(rk, layer, now, false),
            SubscriberKeyframe::StepDown(layer) => {
                Metrics::add(&self.metrics.layer_switches, 1);
                self.request_keyframe(rk, layer, now, true);
            }
            SubscriberKeyframe::Ignore => {
                Metrics::add(&self.metrics.keyframe_requests_held, 1);
            }
        }
    }

    pub(super) fn downtrack_wants_keyframe(&mut self, dk: usize, now: Instant, urgent: bool) {
        let Some(d) = self.router.downtrack(dk) else {
            return;
        };
        if let Some(layer) = d.downtrack.keyframe_layer() {
            self.request_keyframe(d.receiver, layer, now, urgent);
        }
    }

    /// Keyframes of the layers of track `rk` whose bits are set in `layers`.
    pub(super) fn request_keyframes(&mut self, rk: usize, layers: u8, now: Instant, urgent: bool) {
        for layer in (0..8).filter(|l| layers & (1 << l) != 0) {
            self.request_keyframe(rk, layer, now, urgent);
        }
    }

    fn request_keyframe(&mut self, rk: usize, layer: u8, now: Instant, urgent: bool) {
        match self.router.request_keyframe(rk, layer, now, urgent) {
            KeyframeRequest::SendNow => self.send_pli(rk, layer, now),
            KeyframeRequest::At(at) => self.timers.set(TimerKey::Keyframe(rk, layer), Some(at)),
            KeyframeRequest::Nothing => {}
        }
    }

    fn send_pli(&mut self, rk: usize, layer: u8, now: Instant) {
        let Some(entry) = self.router.receiver(rk) else {
            return;
        };
        let Some(media_ssrc) = entry.layer(layer).map(|l| l.receiver.media_ssrc) else {
            return;
        };
        let Some(peer) = self
            .participants
            .get(entry.publisher)
            .and_then(|m| m.publisher)
        else {
            return;
        };
        let sent = self
            .peers
            .get_mut(peer)
            .is_some_and(|p| publisher::send_pli(&mut p.pc, media_ssrc, now));
        if sent {
            Metrics::add(&self.metrics.plis_sent, 1);
            self.mark_dirty(peer);
        }
    }

    /// A text message on a participant's chat channel. Before the channel opens (it joined a
    /// moment ago) a few recent messages wait for it; a channel that cannot take a message
    /// misses it rather than delay it for the others.
    pub(super) fn send_on_channel(&mut self, participant: usize, text: Arc<str>, now: Instant) {
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

    fn close_everything(&mut self) {
        let now = Instant::now();
        let ids: Vec<String> = self.by_id.keys().cloned().collect();
        for id in ids {
            self.remove_participant(&id, now);
        }
        let _ = self.udp.flush(now, MAX_SEND_WAIT);
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
