//! The worker's side of the control plane: each command a room (through the signaling layer)
//! sends, acted on in the order it was sent. Participants come and go, tracks are forwarded and
//! removed, offers and answers are applied, chat is delivered on the data channel.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use crate::engine::chat;
use crate::engine::negotiation::TrackKey;
use crate::engine::participant::Participant;
use crate::engine::subscriber;
use crate::engine::worker::{TimerKey, Worker};
use crate::engine::{Command, EngineEvent, PcKind, SdpRefusal};

impl Worker {
    pub(super) fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        let key = |worker: &Self, id: &str| worker.by_id.get(id).copied();
        match command {
            Command::AddParticipant {
                participant_id,
                room,
            } => self.add_participant(participant_id, room, now),
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
            Command::Subscription {
                participant_id,
                track_id,
                view,
            } => {
                let dk = key(self, &participant_id)
                    .and_then(|k| self.participants.get(k))
                    .and_then(|m| {
                        let track = m.negotiation.find_key(|key| key.1 == track_id)?;
                        m.negotiation.get(&track).map(|f| f.downtrack)
                    });
                if let Some(dk) = dk {
                    if let Some(layer) = self.router.set_view(dk, view) {
                        if let Some(rk) = self.router.downtrack(dk).map(|d| d.receiver) {
                            self.request_keyframes(rk, 1 << layer, now, true);
                        }
                    }
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
                let m = key(self, &participant_id).and_then(|k| self.participants.get(k));
                let peer = m.and_then(|m| match pc {
                    PcKind::Publisher => m.publisher,
                    PcKind::Subscriber => Some(m.subscriber),
                });
                if let (Some(peer), Some(candidate)) = (peer, candidate) {
                    self.peers.add_candidate(peer, candidate);
                }
            }
        }
    }

    fn close_peer(&mut self, peer: usize, now: Instant) {
        self.peers.close(peer, now, &mut self.udp.queue);
        self.timers.cancel(TimerKey::Peer(peer));
    }

    fn add_participant(&mut self, id: String, room: Arc<str>, now: Instant) {
        if self.by_id.contains_key(&id) {
            return;
        }
        let key = self
            .participants
            .insert(Participant::new(id.clone(), room, usize::MAX, now));
        let peer = match self.peers.create(key, PcKind::Subscriber, now) {
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
        let chat = self.peers.get_mut(peer).map(|p| {
            p.pc.create_data_channel(chat::LABEL, None)
                .map(|dc| dc.id())
        });
        let m = &mut self.participants[key];
        m.subscriber = peer;
        match chat {
            Some(Ok(channel)) => m.chat.id = Some(channel),
            Some(Err(e)) => warn!(participant = %id, error = %e, "cannot create the chat channel"),
            None => {}
        }
        self.by_id.insert(id, key);
        self.offers_due = true;
    }

    pub(super) fn remove_participant(&mut self, participant_id: &str, now: Instant) {
        let Some(key) = self.by_id.remove(participant_id) else {
            return;
        };
        // What it published, and what it received.
        let published: Vec<TrackKey> = self
            .router
            .published_by(key)
            .map(|(_, r)| (r.meta.publisher_id.clone(), r.meta.track_id.clone()))
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
            .map(|r| r.meta.kind)
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
        for layer in 0..3 {
            self.timers.cancel(TimerKey::Keyframe(rk, layer));
        }
        for d in self.router.remove_receiver(rk) {
            self.forget_downtrack(d.subscriber, d.downtrack.ssrc, d.peer);
        }
        for (_, m) in self.participants.iter_mut() {
            m.negotiation.unwant(track);
        }
        if let Some(m) = publisher.and_then(|p| self.participants.get_mut(p)) {
            for v in m.receivers_by_ssrc.values_mut() {
                if v.is_some_and(|(k, _)| k == rk) {
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
        if let Some(m) = self.participants.get_mut(subscriber) {
            if subscriber::unforward(m, self.peers.get_mut(peer), ssrc) {
                self.offers_due = true;
            }
        }
    }

    /// A new subscriber offer: the wanted tracks it may carry, then the SDP to the client.
    pub(super) fn offer(&mut self, participant: usize, now: Instant) {
        let Some(m) = self.participants.get_mut(participant) else {
            return;
        };
        let peer = m.subscriber;
        let Some(p) = self.peers.get_mut(peer) else {
            return;
        };
        if let Some(sdp) = subscriber::offer(m, participant, p, peer, &mut self.router, now) {
            self.emit(participant, EngineEvent::SubscriberOffer { sdp });
            self.mark_dirty(peer);
        }
    }

    fn subscriber_answer(&mut self, participant: usize, sdp: String, now: Instant) {
        let refused = |reason, message: String| EngineEvent::SdpRefused {
            pc: PcKind::Subscriber,
            reason,
            message,
        };
        let m = &self.participants[participant];
        if !m.negotiation.offer_outstanding() {
            let event = refused(
                SdpRefusal::Unexpected,
                "no subscriber offer is outstanding".into(),
            );
            self.emit(participant, event);
            return;
        }
        let peer = m.subscriber;
        if let Err(e) = self.peers.apply_answer(peer, sdp, now) {
            // The offer stays outstanding; the client may send a corrected answer.
            let event = refused(
                SdpRefusal::Invalid,
                format!("subscriber answer rejected: {e}"),
            );
            self.emit(participant, event);
            return;
        }
        let (m, Some(p)) = (
            &mut self.participants[participant],
            self.peers.get_mut(peer),
        ) else {
            return;
        };
        let started = subscriber::answered(m, p, &mut self.router);
        if m.negotiation.offer_due(p.connected) {
            self.offers_due = true;
        }
        self.pump(peer, now);
        for dk in started {
            self.downtrack_wants_keyframe(dk, now, true);
        }
    }

    fn publisher_offer(&mut self, participant: usize, sdp: String, now: Instant) {
        let peer = match self.participants[participant].publisher {
            Some(peer) => Ok(peer),
            None => self
                .peers
                .create(participant, PcKind::Publisher, now)
                .inspect(|&peer| self.participants[participant].publisher = Some(peer))
                .map_err(|e| {
                    (
                        SdpRefusal::Internal,
                        format!("cannot create the publisher PC: {e}"),
                    )
                }),
        };
        let answer = peer.and_then(|peer| {
            self.peers
                .answer_offer(peer, sdp, now)
                .map(|sdp| (peer, sdp))
        });
        match answer {
            Ok((peer, sdp)) => {
                self.emit(participant, EngineEvent::PublisherAnswer { sdp });
                self.pump(peer, now);
            }
            Err((reason, message)) => {
                let event = EngineEvent::SdpRefused {
                    pc: PcKind::Publisher,
                    reason,
                    message,
                };
                self.emit(participant, event);
            }
        }
    }
}
