//! Who speaks in each room, every `SPEAKERS_EVERY`: each publisher's loudest audio track
//! ([`SpeechMeter`]), loudest first, told to everyone in the room when it changes (at most
//! five times a second, as the protocol allows).
//!
//! [`SpeechMeter`]: crate::media::speech::SpeechMeter

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::worker::Worker;
use crate::engine::{EngineEvent, Speaker};

/// How often speakers are looked at; changes go out at most this often.
pub const SPEAKERS_EVERY: Duration = Duration::from_millis(200);

/// Levels are compared in tenths: smaller wobbles are not news.
fn tenths(percent: u8) -> u8 {
    (percent + 5) / 10
}

impl Worker {
    pub(super) fn announce_speakers(&mut self, now: Instant) {
        let mut rooms: HashMap<Arc<str>, (Vec<usize>, Vec<Speaker>)> = HashMap::new();
        for (key, m) in self.participants.iter() {
            rooms.entry(m.room.clone()).or_default().0.push(key);
        }
        let keys: Vec<usize> = self.participants.iter().map(|(k, _)| k).collect();
        for key in keys {
            let mut loudest: Option<f32> = None;
            let tracks: Vec<usize> = self
                .router
                .published_by(key)
                .filter(|(_, r)| !r.is_video() && !r.muted)
                .map(|(rk, _)| rk)
                .collect();
            for rk in tracks {
                if let Some(level) = self
                    .router
                    .receiver_mut(rk)
                    .and_then(|r| r.speech.take(now))
                {
                    loudest = Some(loudest.map_or(level, |l: f32| l.max(level)));
                }
            }
            let (Some(level), Some(m)) = (loudest, self.participants.get(key)) else {
                continue;
            };
            if let Some((_, speakers)) = rooms.get_mut(&m.room) {
                speakers.push(Speaker {
                    participant_id: m.id.clone(),
                    level: (level.clamp(0.0, 1.0) * 100.0).round() as u8,
                });
            }
        }
        self.speakers_sent
            .retain(|room, _| rooms.contains_key(room));
        for (room, (members, mut speakers)) in rooms {
            speakers.sort_by_key(|s| std::cmp::Reverse(s.level));
            let signature: Vec<(String, u8)> = speakers
                .iter()
                .map(|s| (s.participant_id.clone(), tenths(s.level)))
                .collect();
            let previous = self.speakers_sent.get(&room);
            // A room that never had a speaker has nothing to announce.
            if previous.map_or(signature.is_empty(), |p| *p == signature) {
                continue;
            }
            self.speakers_sent.insert(room, signature);
            let speakers: Arc<[Speaker]> = speakers.into();
            for key in members {
                self.emit(
                    key,
                    EngineEvent::Speakers {
                        speakers: speakers.clone(),
                    },
                );
            }
        }
    }
}
