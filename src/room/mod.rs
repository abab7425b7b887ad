//! The control plane: rooms, their participants and published tracks.
//!
//! A Room's state sits behind one lock, held only to read or change the state, never across
//! an `await` or I/O. Every change and everything it causes, the events told to participants
//! and the commands queued for the media engine, happen under that lock, so they happen in one
//! order: no interleaving of join, publish, unpublish and leave can subscribe anyone to a track
//! that is gone. The data plane never takes it.
//!
//! The room knows nothing of WebRTC or of the wire protocol: it tells each participant
//! [`RoomEvent`]s through its [`Listener`], and asks the engine for what media must do through
//! a [`MediaLink`]; the signaling layer implements both.

pub mod events;
pub mod participant;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tracing::info;

use crate::media::kind::TrackKind;
use crate::metrics::Metrics;
pub use events::{ChatMessage, Listener, ParticipantInfo, ParticipantState, RoomEvent, TrackInfo};
pub use participant::Participant;

/// What a room asks of the media engine that hosts it. Calls are queued, never awaited: the
/// room makes them under its lock, so the engine sees them in the order the room decided.
pub trait MediaLink: Send + Sync {
    /// A participant joined: it gets its subscriber peer connection and the chat channel.
    fn add_participant(&self, participant_id: &str);
    /// Tears down everything of a participant: its peer connections, the tracks it published
    /// and the tracks it received.
    fn remove_participant(&self, participant_id: &str);
    /// Forwards a published track to a subscriber.
    fn subscribe(&self, subscriber_id: &str, track: &PublishedTrack);
    /// A published track is gone: stop forwarding it to everyone.
    fn remove_track(&self, publisher_id: &str, track_id: &str);
    /// A published track's publisher muted or unmuted it (a muted track's silence is normal).
    fn set_muted(&self, publisher_id: &str, track_id: &str, muted: bool);
    /// A chat message for one participant.
    fn deliver_chat(&self, to: &str, message: &ChatMessage);
}

/// Where a new room lives: the link to its media engine, and which of the engine's hosts
/// (a worker) that is, for what the signaling layer sends the engine itself (SDP, candidates).
pub struct Placement {
    pub link: Arc<dyn MediaLink>,
    pub host: usize,
}

/// Places each new room on a host of the media engine.
pub trait MediaPlacer: Send + Sync {
    fn place(&self, room_name: &str) -> Placement;
}

/// A track published in a room.
pub struct PublishedTrack {
    pub publisher_id: String,
    pub track_id: String,
    pub kind: TrackKind,
    muted: AtomicBool,
}

impl PublishedTrack {
    pub fn new(publisher_id: String, track_id: String, kind: TrackKind, muted: bool) -> Arc<Self> {
        Arc::new(PublishedTrack {
            publisher_id,
            track_id,
            kind,
            muted: AtomicBool::new(muted),
        })
    }

    pub fn info(&self) -> TrackInfo {
        TrackInfo {
            id: self.track_id.clone(),
            kind: self.kind,
            muted: self.muted.load(Ordering::Relaxed),
        }
    }

    fn is(&self, publisher_id: &str, track_id: &str) -> bool {
        self.publisher_id == publisher_id && self.track_id == track_id
    }
}

/// What kind of refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// The room holds `--max-participants`, or the server `--max-rooms`.
    Full,
    /// The room is closing as the participant joins: retry.
    Closing,
    /// The participant is not (or no longer) in the room.
    NotJoined,
    /// The request itself is wrong (a track id taken, too many tracks).
    BadRequest,
}

/// Why a join or publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RefusalCode,
    pub message: String,
}

impl Refusal {
    fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

#[derive(Default)]
struct RoomState {
    /// In join order.
    participants: Vec<Arc<Participant>>,
    tracks: Vec<Arc<PublishedTrack>>,
    /// Tracks a publisher's offer announced whose media has not arrived yet, with the mute
    /// state the publisher set meanwhile: (publisher id, track id) -> muted.
    announced: HashMap<(String, String), bool>,
    /// Set when the last participant left: a closed room takes no joins.
    closed: bool,
}

impl RoomState {
    fn snapshot_of(&self, p: &Participant) -> ParticipantState {
        ParticipantState {
            id: p.id.clone(),
            name: p.name.clone(),
            tracks: self
                .tracks
                .iter()
                .filter(|t| t.publisher_id == p.id)
                .map(|t| t.info())
                .collect(),
        }
    }

    fn others<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Arc<Participant>> + 'a {
        self.participants.iter().filter(move |p| p.id != id)
    }
}

pub struct Room {
    pub name: String,
    state: Mutex<RoomState>,
    max_participants: usize,
    max_tracks_per_participant: usize,
    media: Arc<dyn MediaLink>,
    host: usize,
    metrics: Arc<Metrics>,
}

impl Room {
    fn new(
        name: String,
        max_participants: usize,
        max_tracks_per_participant: usize,
        placement: Placement,
        metrics: Arc<Metrics>,
    ) -> Self {
        Metrics::inc(&metrics.rooms);
        Room {
            name,
            state: Mutex::new(RoomState::default()),
            max_participants,
            max_tracks_per_participant,
            media: placement.link,
            host: placement.host,
            metrics,
        }
    }

    /// Which host of the media engine holds this room's peer connections.
    pub fn host(&self) -> usize {
        self.host
    }

    fn state(&self) -> MutexGuard<'_, RoomState> {
        // A panic while holding the lock leaves plain data, still consistent per field.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a participant. It is told `Joined` with the others as they are now, under the
    /// lock, so no event about the room can overtake it.
    fn join(self: &Arc<Self>, participant: &Arc<Participant>) -> Result<(), Refusal> {
        let mut state = self.state();
        if state.closed {
            return Err(Refusal::new(RefusalCode::Closing, "room is closing; retry"));
        }
        if state.participants.len() >= self.max_participants {
            return Err(Refusal::new(
                RefusalCode::Full,
                format!(
                    "room {} is full ({} participants)",
                    self.name, self.max_participants
                ),
            ));
        }
        let snapshot = state
            .participants
            .iter()
            .map(|p| state.snapshot_of(p))
            .collect();
        // Counted before it is told: whoever reads the gauge after `joined` sees it.
        Metrics::inc(&self.metrics.participants);
        participant.tell(RoomEvent::Joined { others: snapshot });
        for other in &state.participants {
            other.tell(RoomEvent::ParticipantJoined {
                participant: participant.info(),
            });
        }
        state.participants.push(participant.clone());
        self.media.add_participant(&participant.id);
        for track in &state.tracks {
            self.media.subscribe(&participant.id, track);
        }
        Ok(())
    }

    /// Removes a participant and everything it published; returns true when the room is
    /// now empty (and closed).
    fn leave(&self, participant_id: &str) -> bool {
        let mut state = self.state();
        let before = state.participants.len();
        state.participants.retain(|p| p.id != participant_id);
        let removed = state.participants.len() != before;
        let (gone, kept): (Vec<_>, Vec<_>) = state
            .tracks
            .drain(..)
            .partition(|t| t.publisher_id == participant_id);
        state.tracks = kept;
        state
            .announced
            .retain(|(publisher, _), _| publisher != participant_id);
        let empty = state.participants.is_empty();
        if empty {
            state.closed = true;
        }
        if !removed {
            return empty;
        }
        // Its tracks go with its peer connections.
        self.media.remove_participant(participant_id);
        Metrics::dec(&self.metrics.participants);
        for track in &gone {
            Metrics::dec(&self.metrics.published_tracks);
            tell_unpublished(&state, track);
        }
        for other in &state.participants {
            other.tell(RoomEvent::ParticipantLeft {
                participant_id: participant_id.to_string(),
            });
        }
        empty
    }

    /// Publishes a track and subscribes everyone else to it.
    pub fn publish(&self, track: Arc<PublishedTrack>) -> Result<(), Refusal> {
        let publisher_id = track.publisher_id.as_str();
        let mut state = self.state();
        if !state.participants.iter().any(|p| p.id == publisher_id) {
            return Err(Refusal::new(
                RefusalCode::NotJoined,
                "publisher left the room",
            ));
        }
        if state.tracks.iter().any(|t| t.track_id == track.track_id) {
            return Err(Refusal::new(
                RefusalCode::BadRequest,
                format!(
                    "track id {:?} is already published in this room",
                    track.track_id
                ),
            ));
        }
        let own = state
            .tracks
            .iter()
            .filter(|t| t.publisher_id == publisher_id)
            .count();
        if own >= self.max_tracks_per_participant {
            return Err(Refusal::new(
                RefusalCode::BadRequest,
                format!(
                    "a participant may publish at most {} tracks",
                    self.max_tracks_per_participant
                ),
            ));
        }
        let key = (publisher_id.to_string(), track.track_id.clone());
        if let Some(muted) = state.announced.remove(&key) {
            track.muted.store(muted, Ordering::Relaxed);
        }
        state.tracks.push(track.clone());
        Metrics::inc(&self.metrics.published_tracks);
        info!(room = %self.name, participant = %publisher_id, track = %track.track_id, kind = ?track.kind, "track published");
        if track.muted.load(Ordering::Relaxed) {
            self.media.set_muted(publisher_id, &track.track_id, true);
        }
        for other in state.others(publisher_id) {
            other.tell(RoomEvent::TrackPublished {
                participant_id: publisher_id.to_string(),
                track: track.info(),
            });
            self.media.subscribe(&other.id, &track);
        }
        Ok(())
    }

    /// Removes one published track, if it is still there.
    pub fn unpublish(&self, publisher_id: &str, track_id: &str) {
        let mut state = self.state();
        let Some(pos) = state
            .tracks
            .iter()
            .position(|t| t.is(publisher_id, track_id))
        else {
            return;
        };
        let track = state.tracks.remove(pos);
        Metrics::dec(&self.metrics.published_tracks);
        info!(room = %self.name, participant = %publisher_id, track = %track_id, "track unpublished");
        self.media.remove_track(publisher_id, track_id);
        tell_unpublished(&state, &track);
    }

    /// Track ids a participant has published.
    pub fn tracks_of(&self, publisher_id: &str) -> Vec<String> {
        self.state()
            .tracks
            .iter()
            .filter(|t| t.publisher_id == publisher_id)
            .map(|t| t.track_id.clone())
            .collect()
    }

    /// Records the tracks a publisher's latest offer sends, before their media arrives: they
    /// may be muted from now on. Announcements the offer no longer makes are forgotten.
    pub fn announce(&self, publisher_id: &str, track_ids: &[String]) {
        let mut state = self.state();
        state
            .announced
            .retain(|(p, t), _| p != publisher_id || track_ids.contains(t));
        for track_id in track_ids {
            let published = state.tracks.iter().any(|t| t.is(publisher_id, track_id));
            if !published {
                state
                    .announced
                    .entry((publisher_id.to_string(), track_id.clone()))
                    .or_insert(false);
            }
        }
    }

    /// Sets a track's muted flag and tells the others; false when the track is neither
    /// published nor announced. A track announced but not yet published keeps the state
    /// until it is, and is published with it.
    pub fn set_muted(&self, publisher_id: &str, track_id: &str, muted: bool) -> bool {
        let mut state = self.state();
        let key = (publisher_id.to_string(), track_id.to_string());
        if let Some(pending) = state.announced.get_mut(&key) {
            *pending = muted;
            return true;
        }
        let Some(track) = state.tracks.iter().find(|t| t.is(publisher_id, track_id)) else {
            return false;
        };
        track.muted.store(muted, Ordering::Relaxed);
        self.media.set_muted(publisher_id, track_id, muted);
        for other in state.others(publisher_id) {
            other.tell(RoomEvent::TrackMuted {
                participant_id: publisher_id.to_string(),
                track_id: track_id.to_string(),
                muted,
            });
        }
        true
    }

    /// Whether a published track is muted (false for one not published).
    pub fn is_muted(&self, publisher_id: &str, track_id: &str) -> bool {
        self.state()
            .tracks
            .iter()
            .find(|t| t.is(publisher_id, track_id))
            .is_some_and(|t| t.muted.load(Ordering::Relaxed))
    }

    /// Relays a chat message from a participant to everyone else in the room, with `from`
    /// and the time set here; false when the sender is not in the room.
    pub fn chat(&self, from_id: &str, text: String) -> bool {
        let state = self.state();
        let Some(from) = state.participants.iter().find(|p| p.id == from_id) else {
            return false;
        };
        let message = ChatMessage {
            from: from.info(),
            text,
            ts: unix_millis(),
        };
        for other in state.others(from_id) {
            self.media.deliver_chat(&other.id, &message);
        }
        true
    }

    /// Everyone in the room but `participant_id`.
    pub fn others(&self, participant_id: &str) -> Vec<Arc<Participant>> {
        self.state().others(participant_id).cloned().collect()
    }

    pub fn snapshot(&self) -> RoomSnapshot {
        let state = self.state();
        RoomSnapshot {
            name: self.name.clone(),
            participants: state
                .participants
                .iter()
                .map(|p| state.snapshot_of(p))
                .collect(),
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Tells everyone but its publisher that a track is gone.
fn tell_unpublished(state: &RoomState, track: &PublishedTrack) {
    for other in state.others(&track.publisher_id) {
        other.tell(RoomEvent::TrackUnpublished {
            participant_id: track.publisher_id.clone(),
            track_id: track.track_id.clone(),
        });
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.rooms);
    }
}

/// A room as `/api/rooms` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct RoomSnapshot {
    pub name: String,
    pub participants: Vec<ParticipantState>,
}

/// Every room of the server, by name.
pub struct Registry {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    max_rooms: usize,
    max_participants: usize,
    max_tracks_per_participant: usize,
    placer: Arc<dyn MediaPlacer>,
    metrics: Arc<Metrics>,
}

impl Registry {
    pub fn new(
        max_rooms: usize,
        max_participants: usize,
        max_tracks_per_participant: usize,
        placer: Arc<dyn MediaPlacer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Registry {
            rooms: Mutex::new(HashMap::new()),
            max_rooms,
            max_participants,
            max_tracks_per_participant,
            placer,
            metrics,
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Arc<Room>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins a room, creating it on first join.
    pub fn join(
        &self,
        room_name: &str,
        participant: &Arc<Participant>,
    ) -> Result<Arc<Room>, Refusal> {
        // Held across the room's own short lock, so that a room emptied and dropped by a
        // concurrent leave is never joined.
        let mut rooms = self.rooms();
        let room = match rooms.get(room_name) {
            Some(room) => room.clone(),
            None => {
                if rooms.len() >= self.max_rooms {
                    return Err(Refusal::new(
                        RefusalCode::Full,
                        format!("the server holds its maximum of {} rooms", self.max_rooms),
                    ));
                }
                let room = Arc::new(Room::new(
                    room_name.to_string(),
                    self.max_participants,
                    self.max_tracks_per_participant,
                    self.placer.place(room_name),
                    self.metrics.clone(),
                ));
                rooms.insert(room_name.to_string(), room.clone());
                room
            }
        };
        match room.join(participant) {
            Ok(()) => Ok(room),
            Err(refusal) => {
                if room.state().participants.is_empty() {
                    rooms.remove(room_name);
                }
                Err(refusal)
            }
        }
    }

    /// Leaves a room, dropping it when empty.
    pub fn leave(&self, room: &Arc<Room>, participant_id: &str) {
        let mut rooms = self.rooms();
        if room.leave(participant_id) {
            if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
                rooms.remove(&room.name);
            }
            info!(room = %room.name, "room closed");
        }
    }

    pub fn snapshot(&self) -> Vec<RoomSnapshot> {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        let mut out: Vec<RoomSnapshot> = rooms.iter().map(|r| r.snapshot()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}
