//! Every participant's connection quality, every `QUALITY_EVERY`: loss on its uplink (its
//! streams' sequence numbers) and downlink (its transport-wide feedback), its round trip,
//! and whether its bandwidth holds its video back ([`score`]); told to everyone in its room
//! when it changes ([`QualityMeter`]), and to a newcomer what was told before it came.
//!
//! [`score`]: crate::media::quality::score
//! [`QualityMeter`]: crate::media::quality::QualityMeter

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::worker::Worker;
use crate::engine::EngineEvent;
use crate::media::quality::{score, Observed, Quality};

/// How often qualities are looked at.
pub const QUALITY_EVERY: Duration = Duration::from_secs(1);

impl Worker {
    pub(super) fn assess_quality(&mut self) {
        let keys: Vec<usize> = self.participants.iter().map(|(k, _)| k).collect();
        let mut changed: Vec<(usize, Quality)> = Vec::new();
        for key in keys {
            let (up_expected, up_arrived) = self.router.take_uplink_loss(key);
            let Some(m) = self.participants.get(key) else {
                continue;
            };
            let dks: Vec<usize> = m.downtracks_by_ssrc.values().copied().collect();
            let (held_back, paused) = self.router.held_back(&dks);
            let publisher_up = m
                .publisher
                .and_then(|p| self.peers.get(p))
                .is_none_or(|p| p.connected || !p.ever_connected);
            let Some(sub) = self.peers.get_mut(m.subscriber) else {
                continue;
            };
            // Nothing to say before it first connected.
            if !sub.ever_connected {
                continue;
            }
            let connected = sub.connected && publisher_up && !m.lost;
            let (down_loss, rtt) = match sub.congestion.as_mut() {
                Some(c) => (c.take_loss().unwrap_or(0.0), c.rtt()),
                None => (0.0, None),
            };
            let up_loss = if up_expected > 0 {
                up_expected.saturating_sub(up_arrived) as f64 / up_expected as f64
            } else {
                0.0
            };
            let quality = score(&Observed {
                connected,
                loss: up_loss.max(down_loss),
                rtt,
                held_back,
                paused,
            });
            if let Some(m) = self.participants.get_mut(key) {
                if let Some(q) = m.quality.update(quality) {
                    changed.push((key, q));
                }
            }
        }

        let mut rooms: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (key, m) in self.participants.iter() {
            rooms.entry(m.room.clone()).or_default().push(key);
        }
        for (key, quality) in changed {
            let Some(m) = self.participants.get(key) else {
                continue;
            };
            let (id, room) = (m.id.clone(), m.room.clone());
            // A newcomer hears it below, with the rest.
            let told = rooms[&room]
                .iter()
                .copied()
                .filter(|&k| self.participants.get(k).is_some_and(|m| m.quality_told))
                .collect::<Vec<_>>();
            for k in told {
                self.emit(
                    k,
                    EngineEvent::Quality {
                        participant_id: id.clone(),
                        quality,
                    },
                );
            }
        }
        let newcomers: Vec<usize> = self
            .participants
            .iter()
            .filter(|(_, m)| !m.quality_told)
            .map(|(k, _)| k)
            .collect();
        for key in newcomers {
            let Some(room) = self.participants.get(key).map(|m| m.room.clone()) else {
                continue;
            };
            let known: Vec<(String, Quality)> = rooms[&room]
                .iter()
                .filter_map(|&k| self.participants.get(k))
                .filter_map(|m| m.quality.announced().map(|q| (m.id.clone(), q)))
                .collect();
            if known.is_empty() {
                continue;
            }
            for (participant_id, quality) in known {
                self.emit(
                    key,
                    EngineEvent::Quality {
                        participant_id,
                        quality,
                    },
                );
            }
            if let Some(m) = self.participants.get_mut(key) {
                m.quality_told = true;
            }
        }
    }
}
