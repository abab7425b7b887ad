//! The subscriber PC: the server offers it, and it carries everything a participant receives
//! plus the `chat` data channel.
//!
//! One task owns it and takes commands from a channel, which serializes negotiation: at most
//! one server offer is outstanding, and changes made while it is (tracks added or removed)
//! go into the next offer, sent when the answer arrives.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription,
};
use webrtc::rtp_transceiver::{
    RTCRtpTransceiverDirection, RTCRtpTransceiverInit, RtpSender, RtpTransceiver,
};

use crate::chat;
use crate::media::downtrack::{DownTrack, QueueLimits};
use crate::metrics::Metrics;
use crate::room::{Participant, PublishedTrack, Room};
use crate::rtc::{candidate_to_init, relay_candidate, Pc, PcFactory};
use crate::signal::protocol::{Candidate, ErrorCode, PcKind, ServerMessage, TrackKind};

pub enum SubscriberCommand {
    Subscribe(Arc<PublishedTrack>),
    Unsubscribe {
        publisher_id: String,
        track_id: String,
    },
    Answer(String),
    Candidate(Option<Candidate>),
    /// The transport came up (again): restart every DownTrack on a keyframe.
    Connected,
    Close,
}

/// Sends the PC's events to the participant's socket and to the actor.
struct Events {
    participant: Arc<Participant>,
    commands: mpsc::UnboundedSender<SubscriberCommand>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        relay_candidate(&self.participant, PcKind::Subscriber, &event);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        debug!(participant = %self.participant.id, pc = "subscriber", %state, "connection state");
        if state == RTCPeerConnectionState::Connected {
            let _ = self.commands.send(SubscriberCommand::Connected);
        }
    }
}

struct Forwarded {
    downtrack: Arc<DownTrack>,
    transceiver: Arc<dyn RtpTransceiver>,
    sender: Arc<dyn RtpSender>,
    /// Its m-line is in the offer now outstanding; the answer to it starts the DownTrack.
    offered: bool,
}

/// State of one subscriber PC, owned by its task.
pub struct SubscriberPc {
    pc: Pc,
    participant: Arc<Participant>,
    forwarded: HashMap<(String, String), Forwarded>,
    /// Tracks to forward that are not on the PC yet (see `offer`).
    pending: Vec<Arc<PublishedTrack>>,
    /// Kinds with at least one m-line in an answered offer.
    negotiated_kinds: Vec<TrackKind>,
    offer_outstanding: bool,
    needs_offer: bool,
    connected: bool,
    queue: QueueLimits,
    metrics: Arc<Metrics>,
}

pub struct SubscriberSettings {
    pub queue: QueueLimits,
    pub max_chat_bytes: usize,
    pub message_rate_per_sec: u32,
}

impl SubscriberPc {
    /// Builds the PC and its chat channel, then runs the task until `Close` or the
    /// participant's command channel closes.
    pub async fn spawn(
        factory: &PcFactory,
        participant: Arc<Participant>,
        room: Arc<Room>,
        commands_tx: mpsc::UnboundedSender<SubscriberCommand>,
        commands: mpsc::UnboundedReceiver<SubscriberCommand>,
        settings: SubscriberSettings,
        metrics: Arc<Metrics>,
    ) -> Result<(), crate::Error> {
        let handler = Arc::new(Events {
            participant: participant.clone(),
            commands: commands_tx,
        });
        let pc = factory.build(handler).await?;
        let chat_channel = pc
            .create_data_channel(chat::LABEL, None)
            .await
            .map_err(|e| crate::Error::Rtc(format!("creating the chat channel: {e}")))?;
        participant.set_chat_channel(Some(chat_channel.clone()));
        let span =
            tracing::info_span!("subscriber", room = %room.name, participant = %participant.id);
        tokio::spawn(
            chat::serve(
                chat_channel,
                participant.clone(),
                room,
                settings.max_chat_bytes,
                settings.message_rate_per_sec,
                metrics.clone(),
            )
            .instrument(span.clone()),
        );
        let actor = SubscriberPc {
            pc,
            participant,
            forwarded: HashMap::new(),
            pending: Vec::new(),
            negotiated_kinds: Vec::new(),
            offer_outstanding: false,
            needs_offer: true,
            connected: false,
            queue: settings.queue,
            metrics,
        };
        tokio::spawn(actor.run(commands).instrument(span));
        Ok(())
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<SubscriberCommand>) {
        // The first offer goes out at once: it carries the chat channel and whatever the room
        // already publishes (queued before this task started).
        'outer: loop {
            // Apply everything queued before offering, so one offer covers a burst of changes.
            while let Ok(command) = commands.try_recv() {
                if !self.apply(command).await {
                    break 'outer;
                }
            }
            if self.needs_offer && !self.offer_outstanding {
                self.offer().await;
            }
            match commands.recv().await {
                Some(command) => {
                    if !self.apply(command).await {
                        break;
                    }
                }
                None => break,
            }
        }
        self.close().await;
    }

    /// Applies one command; false means stop. A panic in the WebRTC stack stops this PC
    /// cleanly (its DownTracks and chat go with it) instead of leaking them.
    async fn apply(&mut self, command: SubscriberCommand) -> bool {
        match AssertUnwindSafe(self.apply_inner(command))
            .catch_unwind()
            .await
        {
            Ok(go_on) => go_on,
            Err(_) => {
                tracing::error!("the subscriber PC panicked; closing it");
                self.participant.kick();
                false
            }
        }
    }

    async fn apply_inner(&mut self, command: SubscriberCommand) -> bool {
        match command {
            SubscriberCommand::Subscribe(track) => self.subscribe(track).await,
            SubscriberCommand::Unsubscribe {
                publisher_id,
                track_id,
            } => self.unsubscribe(publisher_id, track_id).await,
            SubscriberCommand::Answer(sdp) => self.answer(sdp).await,
            SubscriberCommand::Candidate(candidate) => {
                if let Some(candidate) = candidate {
                    if let Err(e) = self
                        .pc
                        .add_ice_candidate(candidate_to_init(candidate))
                        .await
                    {
                        debug!(error = %e, "ignoring a subscriber candidate");
                    }
                }
            }
            SubscriberCommand::Connected => {
                self.connected = true;
                for f in self.forwarded.values() {
                    f.downtrack.resync();
                }
            }
            SubscriberCommand::Close => return false,
        }
        true
    }

    async fn subscribe(&mut self, track: Arc<PublishedTrack>) {
        let key = (
            track.publisher_id().to_string(),
            track.track_id().to_string(),
        );
        let pending = self
            .pending
            .iter()
            .any(|t| t.publisher_id() == key.0 && t.track_id() == key.1);
        if self.forwarded.contains_key(&key) || pending || key.0 == self.participant.id {
            return;
        }
        self.pending.push(track);
        self.needs_offer = true;
    }

    async fn add_forwarded(&mut self, track: Arc<PublishedTrack>) {
        let key = (
            track.publisher_id().to_string(),
            track.track_id().to_string(),
        );
        let (downtrack, rx) = DownTrack::new(
            track.receiver.clone(),
            &self.participant.id,
            self.queue,
            self.metrics.clone(),
        );
        // Send-only: the server never receives on a subscriber m-line.
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![track.publisher_id().to_string()],
            send_encodings: Vec::new(),
        };
        let added = self
            .pc
            .add_transceiver_from_track(downtrack.local.clone() as Arc<dyn TrackLocal>, Some(init))
            .await;
        let transceiver = match added {
            Ok(transceiver) => transceiver,
            Err(e) => {
                warn!(error = %e, track = %key.1, "cannot forward track");
                return;
            }
        };
        let sender = match transceiver.sender().await {
            Ok(Some(sender)) => sender,
            _ => {
                warn!(track = %key.1, "forwarded track has no sender");
                return;
            }
        };
        downtrack.start(rx);
        if self.connected {
            downtrack.resync();
        }
        self.forwarded.insert(
            key,
            Forwarded {
                downtrack,
                transceiver,
                sender,
                offered: false,
            },
        );
        self.needs_offer = true;
    }

    async fn unsubscribe(&mut self, publisher_id: String, track_id: String) {
        self.pending
            .retain(|t| !(t.publisher_id() == publisher_id && t.track_id() == track_id));
        if let Some(f) = self.forwarded.remove(&(publisher_id, track_id)) {
            f.downtrack.stop();
            if let Err(e) = self.pc.remove_track(&f.sender).await {
                debug!(error = %e, "removing a forwarded track");
            }
            self.needs_offer = true;
        }
    }

    async fn offer(&mut self) {
        // Of a kind that has no m-line in an answered offer yet, one new m-line per offer; the
        // others follow in the next offer. aiortc (default bundlePolicy "balanced") gives the
        // second and later new m-lines of a kind the first one's pre-BUNDLE transport and then
        // closes it: their receivers never start (aiortc#1414).
        let mut new_kinds: Vec<TrackKind> = Vec::new();
        let mut now = Vec::new();
        let negotiated = &self.negotiated_kinds;
        self.pending.retain(|t| {
            let kind = t.receiver.meta.kind;
            if negotiated.contains(&kind) {
                now.push(t.clone());
                false
            } else if !new_kinds.contains(&kind) {
                new_kinds.push(kind);
                now.push(t.clone());
                false
            } else {
                true
            }
        });
        for track in now {
            self.add_forwarded(track).await;
        }
        let offer = match self.pc.create_offer(None).await {
            Ok(offer) => offer,
            Err(e) => {
                warn!(error = %e, "creating the subscriber offer");
                return;
            }
        };
        let sdp = offer.sdp.clone();
        if let Err(e) = self.pc.set_local_description(offer).await {
            warn!(error = %e, "setting the subscriber offer");
            return;
        }
        self.needs_offer = false;
        self.offer_outstanding = true;
        for f in self.forwarded.values_mut() {
            f.offered = true;
        }
        self.participant.send(ServerMessage::Offer {
            pc: PcKind::Subscriber,
            sdp,
        });
    }

    async fn answer(&mut self, sdp: String) {
        if !self.offer_outstanding {
            self.participant.send(error(
                ErrorCode::BadRequest,
                "no subscriber offer is outstanding".into(),
            ));
            return;
        }
        let result = match RTCSessionDescription::answer(sdp) {
            Ok(desc) => self.pc.set_remote_description(desc).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                self.offer_outstanding = false;
                // Payload types and extension ids are final once the answer is applied; the
                // m-lines it accepted may carry media from now on.
                for f in self.forwarded.values() {
                    if !f.offered {
                        continue;
                    }
                    let mid = f.transceiver.mid().await.ok().flatten().unwrap_or_default();
                    f.downtrack.negotiated(&f.sender, &mid).await;
                    let kind = f.downtrack.receiver.meta.kind;
                    if !self.negotiated_kinds.contains(&kind) {
                        self.negotiated_kinds.push(kind);
                    }
                }
                if !self.pending.is_empty() {
                    self.needs_offer = true;
                }
                info!(tracks = self.forwarded.len(), "subscriber negotiated");
            }
            Err(e) => {
                self.participant.send(error(
                    ErrorCode::InvalidSdp,
                    format!("subscriber answer rejected: {e}"),
                ));
                // The offer stays outstanding; the client may send a corrected answer.
            }
        }
    }

    async fn close(mut self) {
        for (_, f) in self.forwarded.drain() {
            f.downtrack.stop();
        }
        self.participant.set_chat_channel(None);
        if let Err(e) = self.pc.close().await {
            debug!(error = %e, "closing the subscriber PC");
        }
    }
}

fn error(code: ErrorCode, message: String) -> ServerMessage {
    ServerMessage::Error {
        code,
        message,
        request_type: Some("answer".into()),
    }
}
