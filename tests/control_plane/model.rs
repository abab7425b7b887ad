//! A model of the control plane, checked against the real `room::Registry` step by step.
//!
//! Shared by the property test (`tests/control_plane.rs`, proptest) and the fuzz target
//! `fuzz/fuzz_targets/control_plane.rs` (libFuzzer): both feed it sequences of [`Op`]s.
//!
//! The rooms get a recording fake [`MediaLink`]. It receives the room's commands in the order
//! the room made them (under the room's lock) and checks each one as it comes: a `subscribe`
//! names a member of the room, never the track's own publisher, a publisher still in the room
//! and a track instance not yet removed; nothing is subscribed twice. After every operation the
//! harness compares, against its own model of the rooms:
//! - what the fake plane forwards: every member has exactly the tracks every other member
//!   published, nothing more;
//! - what every participant was told (`joined`, then events applied to a client's view of the
//!   room, each event consistent with that view: `track_published` before
//!   `track_unpublished`, `participant_left` after the participant's tracks are gone, nothing
//!   about a participant after it left, nothing at all to a participant that left);
//! - `Registry::snapshot`, the refusals, and the gauges (rooms, participants, tracks).
//!
//! [`Harness::finish`] makes everyone leave and checks that every gauge is back to zero.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use switchboard::media::kind::TrackKind;
use switchboard::metrics::Metrics;
use switchboard::room::{
    ChatMessage, Listener, MediaLink, MediaPlacer, Participant, ParticipantState, Placement,
    PublishedTrack, RefusalCode, Registry, Room, RoomEvent, TrackInfo,
};
use switchboard::signal::sdp::media_sections;

pub const MAX_ROOMS: usize = 2;
pub const MAX_PARTICIPANTS: usize = 4;
pub const MAX_TRACKS: usize = 3;

/// One step of a scenario. `who` picks one of the harness's people. Publish and unpublish come
/// from the media engine, which may act for a participant that has just left: a person not in
/// a room publishes and unpublishes as the participant it was last. Everything else comes from
/// the participant's own session, and is ignored for a person not in a room.
#[derive(Debug, Clone)]
pub enum Op {
    Join {
        who: usize,
        room: String,
    },
    /// The media engine saw the track's first packet and publishes it.
    Publish {
        who: usize,
        track: String,
        video: bool,
    },
    Unpublish {
        who: usize,
        track: String,
    },
    /// A publisher offer announcing these tracks (the session's `announce`).
    Announce {
        who: usize,
        tracks: Vec<String>,
    },
    Mute {
        who: usize,
        track: String,
        muted: bool,
    },
    /// A publisher offer as SDP text, handled as the session and the engine do: the tracks it
    /// sends are announced, those no longer sent are unpublished, new ones are published.
    Offer {
        who: usize,
        sdp: String,
    },
    Leave {
        who: usize,
    },
}

/// What the fake media plane was asked, checked as it comes.
#[derive(Default)]
struct PlaneState {
    members: Vec<String>,
    ever_added: HashSet<String>,
    /// subscriber -> (publisher, track id)
    subs: HashMap<String, Vec<(String, String)>>,
    /// (publisher, track id) -> the address of the `PublishedTrack` subscribed to.
    live: HashMap<(String, String), usize>,
    /// Track instances removed (by `remove_track` or with their publisher).
    dead: HashSet<usize>,
    commands: u64,
    violations: Vec<String>,
}

pub struct FakePlane {
    pub room: String,
    state: Mutex<PlaneState>,
}

impl FakePlane {
    fn state(&self) -> std::sync::MutexGuard<'_, PlaneState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the plane saw that breaks an invariant, so far.
    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// Nobody in the room and nothing forwarded.
    pub fn is_empty(&self) -> bool {
        let s = self.state();
        s.members.is_empty() && s.subs.is_empty() && s.live.is_empty()
    }

    pub fn commands(&self) -> u64 {
        self.state().commands
    }

    fn require_member(s: &mut PlaneState, who: &str, what: &str) {
        if !s.members.iter().any(|m| m == who) {
            s.violations
                .push(format!("{what} for {who}, who is not in the room"));
        }
    }
}

impl MediaLink for FakePlane {
    fn add_participant(&self, participant_id: &str) {
        let mut s = self.state();
        s.commands += 1;
        if !s.ever_added.insert(participant_id.to_string()) {
            s.violations
                .push(format!("{participant_id} added to the plane twice"));
        }
        s.members.push(participant_id.to_string());
        s.subs.entry(participant_id.to_string()).or_default();
    }

    fn remove_participant(&self, participant_id: &str) {
        let mut s = self.state();
        s.commands += 1;
        Self::require_member(&mut s, participant_id, "remove_participant");
        s.members.retain(|m| m != participant_id);
        s.subs.remove(participant_id);
        for subs in s.subs.values_mut() {
            subs.retain(|(publisher, _)| publisher != participant_id);
        }
        let gone: Vec<(String, String)> = s
            .live
            .keys()
            .filter(|(publisher, _)| publisher == participant_id)
            .cloned()
            .collect();
        for key in gone {
            if let Some(ptr) = s.live.remove(&key) {
                s.dead.insert(ptr);
            }
        }
    }

    fn subscribe(&self, subscriber_id: &str, track: &PublishedTrack) {
        let mut s = self.state();
        s.commands += 1;
        let what = format!(
            "subscribe {subscriber_id} to {}/{}",
            track.publisher_id, track.track_id
        );
        Self::require_member(&mut s, subscriber_id, &what);
        Self::require_member(&mut s, &track.publisher_id, &format!("{what} (publisher)"));
        if subscriber_id == track.publisher_id {
            s.violations.push(format!("{what}: its own track"));
        }
        let ptr = track as *const PublishedTrack as usize;
        if s.dead.contains(&ptr) {
            s.violations
                .push(format!("{what}: the track was removed already"));
        }
        let key = (track.publisher_id.clone(), track.track_id.clone());
        match s.live.get(&key) {
            Some(&known) if known != ptr => s.violations.push(format!(
                "{what}: another instance of that track is still forwarded"
            )),
            _ => {
                s.live.insert(key.clone(), ptr);
            }
        }
        let subs = s.subs.entry(subscriber_id.to_string()).or_default();
        if subs.contains(&key) {
            s.violations.push(format!("{what}: subscribed twice"));
        } else {
            subs.push(key);
        }
    }

    fn remove_track(&self, publisher_id: &str, track_id: &str) {
        let mut s = self.state();
        s.commands += 1;
        let key = (publisher_id.to_string(), track_id.to_string());
        if let Some(ptr) = s.live.remove(&key) {
            s.dead.insert(ptr);
        }
        for subs in s.subs.values_mut() {
            subs.retain(|k| *k != key);
        }
    }

    fn set_muted(&self, publisher_id: &str, track_id: &str, _muted: bool) {
        let mut s = self.state();
        s.commands += 1;
        let key = (publisher_id.to_string(), track_id.to_string());
        if !s.live.contains_key(&key) && !s.members.iter().any(|m| m == publisher_id) {
            s.violations.push(format!(
                "set_muted for {publisher_id}/{track_id}, not in the room"
            ));
        }
    }

    fn deliver_chat(&self, to: &str, _message: &ChatMessage) {
        let mut s = self.state();
        s.commands += 1;
        Self::require_member(&mut s, to, "deliver_chat");
    }
}

#[derive(Default)]
pub struct FakePlacer {
    pub planes: Mutex<Vec<Arc<FakePlane>>>,
}

impl MediaPlacer for FakePlacer {
    fn place(&self, room_name: &str) -> Placement {
        let plane = Arc::new(FakePlane {
            room: room_name.to_string(),
            state: Mutex::new(PlaneState::default()),
        });
        self.planes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(plane.clone());
        Placement {
            link: plane,
            host: 0,
        }
    }
}

/// A published track as the model has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelTrack {
    publisher: String,
    id: String,
    kind: TrackKind,
    muted: bool,
}

#[derive(Debug, Default)]
struct ModelRoom {
    /// (person, participant id), in join order.
    participants: Vec<(usize, String)>,
    tracks: Vec<ModelTrack>,
    /// (publisher, track id) -> muted, announced and not yet published.
    announced: HashMap<(String, String), bool>,
}

impl ModelRoom {
    fn state_of(&self, id: &str, name: &str) -> ParticipantState {
        ParticipantState {
            id: id.to_string(),
            name: name.to_string(),
            tracks: self
                .tracks
                .iter()
                .filter(|t| t.publisher == id)
                .map(|t| TrackInfo {
                    id: t.id.clone(),
                    kind: t.kind,
                    muted: t.muted,
                })
                .collect(),
        }
    }
}

/// A participant's view of the room, built only from the messages it got.
#[derive(Debug, Default)]
pub struct ClientView {
    pub joined: bool,
    pub others: Vec<ParticipantState>,
    pub left: HashSet<String>,
}

struct Person {
    name: String,
    generation: u32,
    /// The participant it is now, with its room.
    current: Option<(Arc<Participant>, Arc<Room>)>,
    /// The participant it was last, after it left.
    stale: Option<(String, Arc<Room>)>,
    inbox: Option<Arc<Inbox>>,
    /// The inbox of the participant it was last: must stay silent.
    stale_inbox: Option<Arc<Inbox>>,
    view: ClientView,
}

pub struct Harness {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    placer: Arc<FakePlacer>,
    people: Vec<Person>,
    rooms: BTreeMap<String, ModelRoom>,
    /// Every track instance handed to a room, kept alive so that its address (the fake
    /// plane's identity for it) is never reused.
    instances: Vec<Arc<PublishedTrack>>,
    pub steps: u64,
    pub refusals: HashMap<&'static str, u64>,
}

impl Harness {
    pub fn new(people: usize) -> Harness {
        let metrics = Arc::new(Metrics::default());
        let placer = Arc::new(FakePlacer::default());
        let registry = Registry::new(
            MAX_ROOMS,
            MAX_PARTICIPANTS,
            MAX_TRACKS,
            placer.clone(),
            metrics.clone(),
        );
        Harness {
            registry,
            metrics,
            placer,
            people: (0..people.max(1))
                .map(|i| Person {
                    name: format!("n{i}"),
                    generation: 0,
                    current: None,
                    stale: None,
                    inbox: None,
                    stale_inbox: None,
                    view: ClientView::default(),
                })
                .collect(),
            rooms: BTreeMap::new(),
            instances: Vec::new(),
            steps: 0,
            refusals: HashMap::new(),
        }
    }

    pub fn people(&self) -> usize {
        self.people.len()
    }

    fn refused(&mut self, why: &'static str) {
        *self.refusals.entry(why).or_insert(0) += 1;
    }

    /// Applies one operation, then checks everything.
    pub fn apply(&mut self, op: &Op) {
        self.steps += 1;
        match op {
            Op::Join { who, room } => self.join(who % self.people.len(), room),
            Op::Publish { who, track, video } => {
                let kind = if *video {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                self.publish(who % self.people.len(), track, kind)
            }
            Op::Unpublish { who, track } => self.unpublish(who % self.people.len(), track),
            Op::Announce { who, tracks } => self.announce(who % self.people.len(), tracks),
            Op::Mute { who, track, muted } => self.mute(who % self.people.len(), track, *muted),
            Op::Offer { who, sdp } => self.offer(who % self.people.len(), sdp),
            Op::Leave { who } => self.leave(who % self.people.len()),
        }
        self.check(&format!("after step {} ({op:?})", self.steps));
    }

    /// The participant a person is now, with its room.
    fn current(&self, who: usize) -> Option<(String, Arc<Room>)> {
        self.people[who]
            .current
            .as_ref()
            .map(|(participant, room)| (participant.id.clone(), room.clone()))
    }

    /// The acting participant: the current one, else the stale one (the media engine may
    /// publish or unpublish for a participant that has just left).
    fn actor(&self, who: usize) -> Option<(String, Arc<Room>)> {
        let p = &self.people[who];
        match (&p.current, &p.stale) {
            (Some((participant, room)), _) => Some((participant.id.clone(), room.clone())),
            (None, Some((id, room))) => Some((id.clone(), room.clone())),
            (None, None) => None,
        }
    }

    fn model_room_of(&mut self, id: &str) -> Option<&mut ModelRoom> {
        self.rooms
            .values_mut()
            .find(|r| r.participants.iter().any(|(_, p)| p == id))
    }

    fn join(&mut self, who: usize, room_name: &str) {
        if self.people[who].current.is_some() {
            // The session answers `already_joined`; the room never hears of it.
            return;
        }
        let person = &mut self.people[who];
        person.generation += 1;
        let id = format!("p{who}g{}", person.generation);
        let name = person.name.clone();
        let rx = Arc::new(Inbox::default());
        let participant = Arc::new(Participant::new(id.clone(), name.clone(), rx.clone()));
        // What the model expects.
        let expected_refusal = match self.rooms.get(room_name) {
            Some(r) if r.participants.len() >= MAX_PARTICIPANTS => Some(RefusalCode::Full),
            Some(_) => None,
            None if self.rooms.len() >= MAX_ROOMS => Some(RefusalCode::Full),
            None => None,
        };
        let expected_others: Vec<ParticipantState> = self
            .rooms
            .get(room_name)
            .map(|r| {
                r.participants
                    .iter()
                    .map(|(w, pid)| r.state_of(pid, &self.people[*w].name))
                    .collect()
            })
            .unwrap_or_default();
        let result = self.registry.join(room_name, &participant);
        match (result, expected_refusal) {
            (Ok(room), None) => {
                assert_eq!(room.name, room_name);
                match rx.recv() {
                    Some(RoomEvent::Joined { others }) => {
                        assert_eq!(
                            others, expected_others,
                            "{id}'s joined lists the others as they are"
                        );
                    }
                    other => panic!("{id}'s first message is not joined: {other:?}"),
                }
                let person = &mut self.people[who];
                person.view = ClientView {
                    joined: true,
                    others: expected_others,
                    left: HashSet::new(),
                };
                person.inbox = Some(rx);
                person.current = Some((participant, room));
                self.rooms
                    .entry(room_name.to_string())
                    .or_default()
                    .participants
                    .push((who, id));
            }
            (Err(refusal), Some(code)) => {
                assert_eq!(refusal.code, code, "{refusal:?}");
                assert!(rx.recv().is_none(), "a refused join is told nothing");
                self.refused("join");
            }
            (Ok(_), Some(code)) => panic!("{id} joined {room_name}; the model expected {code:?}"),
            (Err(refusal), None) => panic!("{id} refused from {room_name}: {refusal:?}"),
        }
    }

    fn publish(&mut self, who: usize, track_id: &str, kind: TrackKind) {
        let Some((id, room)) = self.actor(who) else {
            return;
        };
        let track = PublishedTrack::new(id.clone(), track_id.to_string(), kind, false);
        self.instances.push(track.clone());
        let expected = match self.model_room_of(&id) {
            None => Err(RefusalCode::NotJoined),
            Some(r) if r.tracks.iter().any(|t| t.id == track_id) => Err(RefusalCode::BadRequest),
            Some(r) if r.tracks.iter().filter(|t| t.publisher == id).count() >= MAX_TRACKS => {
                Err(RefusalCode::BadRequest)
            }
            Some(r) => {
                let muted = r
                    .announced
                    .remove(&(id.clone(), track_id.to_string()))
                    .unwrap_or(false);
                r.tracks.push(ModelTrack {
                    publisher: id.clone(),
                    id: track_id.to_string(),
                    kind,
                    muted,
                });
                Ok(())
            }
        };
        match (room.publish(track), expected) {
            (Ok(()), Ok(())) => {}
            (Err(refusal), Err(code)) => {
                assert_eq!(refusal.code, code, "{refusal:?}");
                self.refused(if code == RefusalCode::NotJoined {
                    "publish (publisher gone)"
                } else {
                    "publish"
                });
            }
            (got, expected) => {
                panic!("{id} publishing {track_id}: got {got:?}, the model expected {expected:?}")
            }
        }
    }

    fn unpublish(&mut self, who: usize, track_id: &str) {
        let Some((id, room)) = self.actor(who) else {
            return;
        };
        if let Some(r) = self.model_room_of(&id) {
            r.tracks
                .retain(|t| !(t.publisher == id && t.id == track_id));
        }
        room.unpublish(&id, track_id);
        // The tracks the room reports for this publisher are the model's.
        let model: Vec<String> = self
            .model_room_of(&id)
            .map(|r| {
                r.tracks
                    .iter()
                    .filter(|t| t.publisher == id)
                    .map(|t| t.id.clone())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(room.tracks_of(&id), model, "tracks_of({id})");
    }

    fn announce(&mut self, who: usize, tracks: &[String]) {
        let Some((id, room)) = self.current(who) else {
            return;
        };
        if let Some(r) = self.model_room_of(&id) {
            r.announced
                .retain(|(p, t), _| *p != id || tracks.contains(t));
            for t in tracks {
                let published = r.tracks.iter().any(|m| m.publisher == id && m.id == *t);
                if !published {
                    r.announced.entry((id.clone(), t.clone())).or_insert(false);
                }
            }
        }
        room.announce(&id, tracks);
    }

    fn mute(&mut self, who: usize, track_id: &str, muted: bool) {
        let Some((id, room)) = self.current(who) else {
            return;
        };
        let expected = match self.model_room_of(&id) {
            None => false,
            Some(r) => {
                if let Some(pending) = r.announced.get_mut(&(id.clone(), track_id.to_string())) {
                    *pending = muted;
                    true
                } else if let Some(t) = r
                    .tracks
                    .iter_mut()
                    .find(|t| t.publisher == id && t.id == track_id)
                {
                    t.muted = muted;
                    true
                } else {
                    false
                }
            }
        };
        assert_eq!(
            room.set_muted(&id, track_id, muted),
            expected,
            "{id} muting {track_id}"
        );
        if !expected {
            self.refused("mute");
        }
    }

    /// The session's `publisher_offer` and the engine's answer to it, without a PC: the tracks
    /// the offer sends are announced and published (as if their media arrived), those it no
    /// longer sends are unpublished.
    fn offer(&mut self, who: usize, sdp: &str) {
        let Some((id, room)) = self.current(who) else {
            return;
        };
        let sections = media_sections(sdp);
        let sending: Vec<(String, bool)> = sections
            .iter()
            .filter(|s| s.sending)
            .filter_map(|s| s.track_id.clone().map(|t| (t, s.kind == "video")))
            .collect();
        if sending.len() > MAX_TRACKS {
            // The session refuses it with bad_request; nothing changes.
            self.refused("offer");
            return;
        }
        let ids: Vec<String> = sending.iter().map(|(t, _)| t.clone()).collect();
        self.announce(who, &ids);
        for track in room.tracks_of(&id) {
            if !ids.contains(&track) {
                self.unpublish(who, &track);
            }
        }
        for (track, video) in sending {
            if !room.tracks_of(&id).contains(&track) {
                let kind = if video {
                    TrackKind::Video
                } else {
                    TrackKind::Audio
                };
                self.publish(who, &track, kind);
            }
        }
    }

    fn leave(&mut self, who: usize) {
        let person = &mut self.people[who];
        let Some((participant, room)) = person.current.take() else {
            return;
        };
        let id = participant.id.clone();
        person.stale_inbox = person.inbox.take();
        person.stale = Some((id.clone(), room.clone()));
        person.view = ClientView::default();
        drop(participant);
        if let Some(r) = self.model_room_of(&id) {
            r.participants.retain(|(_, p)| *p != id);
            r.tracks.retain(|t| t.publisher != id);
            r.announced.retain(|(p, _), _| *p != id);
        }
        self.rooms.retain(|_, r| !r.participants.is_empty());
        self.registry.leave(&room, &id);
        // A second leave (a session and a kick racing) changes nothing.
        self.registry.leave(&room, &id);
    }

    /// Drains every inbox into its client's view and compares everything with the model.
    pub fn check(&mut self, when: &str) {
        // Messages, applied to each client's view.
        for who in 0..self.people.len() {
            let person = &mut self.people[who];
            if let Some(stale) = person.stale_inbox.as_ref() {
                if let Some(m) = stale.recv() {
                    panic!("{when}: person {who} got {m:?} after it left");
                }
            }
            let Some(inbox) = person.inbox.as_ref() else {
                continue;
            };
            let me = person
                .current
                .as_ref()
                .map(|(p, _)| p.id.clone())
                .unwrap_or_default();
            while let Some(m) = inbox.recv() {
                if let Err(e) = apply_message(&mut person.view, &m) {
                    panic!("{when}: {me} got {m:?}: {e}\nits view: {:?}", person.view);
                }
            }
        }
        // Each client's view is the model's room without itself.
        for who in 0..self.people.len() {
            let Some((participant, _)) = &self.people[who].current else {
                continue;
            };
            let id = participant.id.clone();
            let r = self
                .rooms
                .values()
                .find(|r| r.participants.iter().any(|(_, p)| *p == id))
                .expect("a current participant is in a model room");
            let expected: Vec<ParticipantState> = r
                .participants
                .iter()
                .filter(|(_, p)| *p != id)
                .map(|(w, p)| r.state_of(p, &self.people[*w].name))
                .collect();
            assert_eq!(
                self.people[who].view.others, expected,
                "{when}: what {id} was told is not the room"
            );
        }
        // The registry's rooms are the model's.
        let snapshot = self.registry.snapshot();
        let model: Vec<(String, Vec<ParticipantState>)> = self
            .rooms
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    r.participants
                        .iter()
                        .map(|(w, p)| r.state_of(p, &self.people[*w].name))
                        .collect(),
                )
            })
            .collect();
        let got: Vec<(String, Vec<ParticipantState>)> = snapshot
            .into_iter()
            .map(|r| (r.name, r.participants))
            .collect();
        assert_eq!(got, model, "{when}: registry snapshot");
        // The media planes: checked command by command, and now exactly the model's
        // subscriptions.
        let planes = self
            .placer
            .planes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut open_planes = 0;
        for plane in &planes {
            let s = plane.state();
            assert!(
                s.violations.is_empty(),
                "{when}: room {}'s media plane: {:#?}",
                plane.room,
                s.violations
            );
            if s.members.is_empty() {
                assert!(s.subs.is_empty(), "{when}: subscriptions in an empty room");
                continue;
            }
            open_planes += 1;
            let r = self
                .rooms
                .get(&plane.room)
                .unwrap_or_else(|| panic!("{when}: plane {} has members", plane.room));
            let members: Vec<String> = r.participants.iter().map(|(_, p)| p.clone()).collect();
            assert_eq!(s.members, members, "{when}: members of {}", plane.room);
            for m in &members {
                let mut got = s.subs.get(m).cloned().unwrap_or_default();
                got.sort();
                let mut expected: Vec<(String, String)> = r
                    .tracks
                    .iter()
                    .filter(|t| t.publisher != *m)
                    .map(|t| (t.publisher.clone(), t.id.clone()))
                    .collect();
                expected.sort();
                assert_eq!(
                    got, expected,
                    "{when}: {m} forwarded tracks in {}",
                    plane.room
                );
            }
            assert_eq!(
                s.subs.len(),
                members.len(),
                "{when}: subscriptions of non-members in {}",
                plane.room
            );
        }
        assert_eq!(open_planes, self.rooms.len(), "{when}: open media planes");
        // Gauges.
        let m = self.metrics.snapshot();
        let joined = self
            .rooms
            .values()
            .map(|r| r.participants.len())
            .sum::<usize>();
        let tracks = self.rooms.values().map(|r| r.tracks.len()).sum::<usize>();
        let mut held: HashSet<usize> = HashSet::new();
        for p in &self.people {
            if let Some((_, room)) = &p.current {
                held.insert(Arc::as_ptr(room) as usize);
            }
            if let Some((_, room)) = &p.stale {
                held.insert(Arc::as_ptr(room) as usize);
            }
        }
        assert_eq!(m.participants, joined as i64, "{when}: participants gauge");
        assert_eq!(m.published_tracks, tracks as i64, "{when}: tracks gauge");
        assert_eq!(m.rooms, held.len() as i64, "{when}: rooms gauge");
    }

    /// Everyone leaves; every gauge must be back to zero and every media plane empty.
    pub fn finish(mut self) {
        for who in 0..self.people.len() {
            self.leave(who);
            self.check(&format!("after person {who} left at the end"));
        }
        for p in &mut self.people {
            p.stale = None;
        }
        let m = self.metrics.snapshot();
        assert_eq!(
            (m.rooms, m.participants, m.published_tracks),
            (0, 0, 0),
            "gauges once everyone left: {m:?}"
        );
        assert!(self.registry.snapshot().is_empty());
        for plane in self
            .placer
            .planes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let s = plane.state();
            assert!(s.members.is_empty() && s.subs.is_empty() && s.live.is_empty());
        }
    }

    /// Commands the fake media planes received, in total.
    pub fn media_commands(&self) -> u64 {
        self.placer
            .planes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| p.state().commands)
            .sum()
    }
}

/// What a participant was told, in order, as its session would hear it.
#[derive(Default)]
pub struct Inbox {
    events: Mutex<std::collections::VecDeque<RoomEvent>>,
}

impl Inbox {
    pub fn recv(&self) -> Option<RoomEvent> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
    }
}

impl Listener for Inbox {
    fn event(&self, event: RoomEvent) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(event);
    }
}

/// Applies one message to a client's view; `Err` when it contradicts what the client knew.
pub fn apply_message(view: &mut ClientView, m: &RoomEvent) -> Result<(), String> {
    if !view.joined {
        return Err("a message before joined".into());
    }
    let find = |view: &mut ClientView, id: &str| -> Result<usize, String> {
        if view.left.contains(id) {
            return Err(format!("about {id}, who left"));
        }
        view.others
            .iter()
            .position(|p| p.id == id)
            .ok_or_else(|| format!("about {id}, who never joined"))
    };
    match m {
        RoomEvent::ParticipantJoined { participant } => {
            if view.left.contains(&participant.id)
                || view.others.iter().any(|p| p.id == participant.id)
            {
                return Err("joined twice".into());
            }
            view.others.push(ParticipantState {
                id: participant.id.clone(),
                name: participant.name.clone(),
                tracks: Vec::new(),
            });
        }
        RoomEvent::ParticipantLeft { participant_id } => {
            let at = find(view, participant_id)?;
            if !view.others[at].tracks.is_empty() {
                return Err("participant_left before its tracks were unpublished".into());
            }
            view.others.remove(at);
            view.left.insert(participant_id.clone());
        }
        RoomEvent::TrackPublished {
            participant_id,
            track,
        } => {
            let at = find(view, participant_id)?;
            let tracks = &mut view.others[at].tracks;
            if tracks.iter().any(|t| t.id == track.id) {
                return Err("published twice".into());
            }
            tracks.push(track.clone());
        }
        RoomEvent::TrackUnpublished {
            participant_id,
            track_id,
        } => {
            let at = find(view, participant_id)?;
            let tracks = &mut view.others[at].tracks;
            let t = tracks
                .iter()
                .position(|t| t.id == *track_id)
                .ok_or("track_unpublished for a track never published")?;
            tracks.remove(t);
        }
        RoomEvent::TrackMuted {
            participant_id,
            track_id,
            muted,
        } => {
            let at = find(view, participant_id)?;
            let t = view.others[at]
                .tracks
                .iter_mut()
                .find(|t| t.id == *track_id)
                .ok_or("track_muted for a track not published")?;
            t.muted = *muted;
        }
        RoomEvent::Joined { .. } => return Err("joined twice".into()),
    }
    Ok(())
}

/// A publisher offer with these (track id, video, sending) sections, as a browser writes it.
pub fn offer_sdp(sections: &[(String, bool, bool)]) -> String {
    let mut sdp = String::from(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE",
    );
    for i in 0..sections.len() {
        sdp.push_str(&format!(" {i}"));
    }
    sdp.push_str("\r\n");
    for (i, (track, video, sending)) in sections.iter().enumerate() {
        let (kind, pt) = if *video {
            ("video", 96)
        } else {
            ("audio", 111)
        };
        sdp.push_str(&format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=mid:{i}\r\na={}\r\na=msid:stream {track}\r\n",
            if *sending { "sendonly" } else { "inactive" }
        ));
    }
    sdp
}
