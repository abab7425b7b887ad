//! The client's side of negotiation: the reader of the signaling socket answers the server's
//! subscriber offers, applies the answers to its publisher offers and the candidates, and
//! hands every other message to the application; the peer connections' events send the
//! client's candidates, open the received tracks' counters, and read the chat channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio_tungstenite::tungstenite::Message;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnectionEventHandler, RTCPeerConnectionIceEvent, RTCPeerConnectionState,
    RTCSessionDescription,
};

use crate::load::client::Shared;
use crate::load::peer::{candidate_from_init, candidate_to_init, Pc, PcFactory};
use crate::load::received::RemoteTrackStats;
use crate::load::wire::{ChatRelay, ClientMessage, PcKind, ServerMessage, CHAT_LABEL};

/// The events of one of the client's peer connections.
pub(crate) struct PcEvents {
    pub(crate) outgoing: mpsc::UnboundedSender<String>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) pc: PcKind,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PcEvents {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let message = ClientMessage::Candidate {
                pc: self.pc,
                candidate: Some(candidate_from_init(init)),
            };
            let _ = self.outgoing.send(message.encode());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if self.pc == PcKind::Publisher && state == RTCPeerConnectionState::Connected {
            self.shared
                .publisher_connected
                .store(true, Ordering::Release);
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let stream_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let kind = track.kind().await;
        let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
        let clock_rate = track.codec(ssrc).await.map(|c| c.clock_rate).unwrap_or(0);
        let key = (stream_id.clone(), track_id.clone());
        {
            let Ok(mut tracks) = self.shared.tracks.lock() else {
                return;
            };
            let mut stats = RemoteTrackStats::new(
                stream_id,
                track_id,
                kind.to_string().to_lowercase(),
                clock_rate,
            );
            stats.freeze_threshold =
                Duration::from_micros(self.shared.freeze_threshold_us.load(Ordering::Relaxed));
            if self.shared.record_arrivals.load(Ordering::Relaxed) {
                stats.arrivals = Some(Vec::new());
            }
            tracks.insert(key.clone(), stats);
        }
        if let Ok(mut remotes) = self.shared.remotes.lock() {
            remotes.insert(key.clone(), track.clone());
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => {
                        if let Ok(mut tracks) = shared.tracks.lock() {
                            if let Some(stats) = tracks.get_mut(&key) {
                                stats.record(&packet, Instant::now());
                            }
                        }
                    }
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
        });
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if channel.label().await.ok().as_deref() != Some(CHAT_LABEL) {
            return;
        }
        if let Ok(mut slot) = self.shared.chat_channel.lock() {
            *slot = Some(channel.clone());
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(event) = channel.poll().await {
                if let DataChannelEvent::OnMessage(message) = event {
                    let Ok(text) = std::str::from_utf8(&message.data) else {
                        continue;
                    };
                    if let Some(relay) = ChatRelay::decode(text) {
                        if let Ok(mut chat) = shared.chat.lock() {
                            chat.push(relay);
                        }
                    } else if let Ok(mut errors) = shared.chat_errors.lock() {
                        errors.push(text.to_string());
                    }
                }
            }
        });
    }
}

type WsStream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Reads the socket: negotiation is handled here; everything else goes to `events`.
pub(crate) async fn read_loop(
    mut stream: WsStream,
    outgoing: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedSender<ServerMessage>,
    factory: Arc<PcFactory>,
    shared: Arc<Shared>,
    subscriber: Arc<AsyncMutex<Option<Pc>>>,
    publisher: Arc<AsyncMutex<Option<Pc>>>,
) {
    while let Some(frame) = stream.next().await {
        let Ok(Message::Text(text)) = frame else {
            if matches!(frame, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
            continue;
        };
        let Some(message) = ServerMessage::decode(&text) else {
            continue;
        };
        match message {
            ServerMessage::Offer {
                pc: PcKind::Subscriber,
                sdp,
            } => {
                let mut slot = subscriber.lock().await;
                if slot.is_none() {
                    let handler = Arc::new(PcEvents {
                        outgoing: outgoing.clone(),
                        shared: shared.clone(),
                        pc: PcKind::Subscriber,
                    });
                    match factory.build_subscriber(handler).await {
                        Ok(pc) => *slot = Some(pc),
                        Err(_) => continue,
                    }
                }
                let Some(pc) = slot.clone() else { continue };
                drop(slot);
                if let Ok(mut last) = shared.last_subscriber_offer.lock() {
                    *last = Some(sdp.clone());
                }
                let Ok(offer) = RTCSessionDescription::offer(sdp) else {
                    continue;
                };
                if pc.set_remote_description(offer).await.is_err() {
                    continue;
                }
                let Ok(answer) = pc.create_answer(None).await else {
                    continue;
                };
                let sdp = answer.sdp.clone();
                if pc.set_local_description(answer).await.is_err() {
                    continue;
                }
                if !shared.answer_delay.is_zero() {
                    tokio::time::sleep(shared.answer_delay).await;
                }
                let answer = ClientMessage::Answer {
                    pc: PcKind::Subscriber,
                    sdp: &sdp,
                };
                let _ = outgoing.send(answer.encode());
            }
            ServerMessage::Answer {
                pc: PcKind::Publisher,
                sdp,
            } => {
                if let Ok(mut last) = shared.last_publisher_answer.lock() {
                    *last = Some(sdp.clone());
                }
                let pc = publisher.lock().await.clone();
                if let (Some(pc), Ok(answer)) = (pc, RTCSessionDescription::answer(sdp)) {
                    let _ = pc.set_remote_description(answer).await;
                }
            }
            ServerMessage::Candidate {
                pc: kind,
                candidate: Some(candidate),
            } => {
                let slot = match kind {
                    PcKind::Subscriber => &subscriber,
                    PcKind::Publisher => &publisher,
                };
                if let Some(pc) = slot.lock().await.clone() {
                    let _ = pc.add_ice_candidate(candidate_to_init(candidate)).await;
                }
            }
            other => {
                let _ = events.send(other);
            }
        }
    }
    shared.signaling_closed.store(true, Ordering::Release);
}
