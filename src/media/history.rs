//! Retransmission without a copy per subscriber.
//!
//! A subscriber that lost a packet sends a NACK naming the sequence number it saw, which is
//! its DownTrack's, not the publisher's. Rather than each subscriber's peer connection keeping
//! its own buffer of everything it sent (a header and a buffer slot per packet per subscriber),
//! the Receiver keeps the publisher's recent packets once ([`PacketHistory`]) and each video
//! DownTrack keeps only which publisher packet each of its sequence numbers carried
//! ([`SentLog`], 12 bytes a packet). The retransmission is rebuilt from both, the way mediasoup
//! and LiveKit share one packet store among their consumers.

use std::time::{Duration, Instant};

use crate::media::extensions::Carried;

/// One publisher packet kept for retransmission.
#[derive(Debug, Clone)]
pub struct Kept {
    pub packet: rtp::Packet,
    pub carried: Carried,
    pub arrived: Instant,
}

/// The publisher's last packets of one track, indexed by their sequence number.
#[derive(Debug)]
pub struct PacketHistory {
    slots: Box<[Option<Kept>]>,
    mask: u16,
    max_age: Duration,
}

impl PacketHistory {
    /// Keeps `capacity` packets (rounded up to a power of two, at most 32,768) for at most
    /// `max_age`: a retransmission later than that arrives after the frame was due.
    pub fn new(capacity: u16, max_age: Duration) -> Self {
        let capacity = capacity.clamp(1, 1 << 15).next_power_of_two();
        PacketHistory {
            slots: vec![None; usize::from(capacity)].into_boxed_slice(),
            mask: capacity - 1,
            max_age,
        }
    }

    pub fn insert(&mut self, packet: &rtp::Packet, carried: &Carried, arrived: Instant) {
        let slot = usize::from(packet.header.sequence_number & self.mask);
        self.slots[slot] = Some(Kept {
            packet: packet.clone(),
            carried: carried.clone(),
            arrived,
        });
    }

    /// The packet with this publisher sequence number and timestamp, if still kept and fresh.
    /// The timestamp tells a packet from one that had the same number before a restart.
    pub fn get(&self, sequence_number: u16, timestamp: u32, now: Instant) -> Option<&Kept> {
        self.slots[usize::from(sequence_number & self.mask)]
            .as_ref()
            .filter(|k| {
                k.packet.header.sequence_number == sequence_number
                    && k.packet.header.timestamp == timestamp
                    && now.saturating_duration_since(k.arrived) <= self.max_age
            })
    }
}

/// What one DownTrack sequence number carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub sequence_number: u16,
    pub timestamp: u32,
    /// The simulcast layer it came from, and its number and timestamp there.
    pub layer: u8,
    pub source_sequence_number: u16,
    pub source_timestamp: u32,
    /// The VP8 picture id and TL0PICIDX it was sent with, when rewritten.
    pub picture: Option<(u16, u8)>,
}

/// A DownTrack's last sequence numbers and the publisher packets they carried.
#[derive(Debug)]
pub struct SentLog {
    slots: Box<[Option<Sent>]>,
    mask: u16,
}

impl SentLog {
    pub fn new(capacity: u16) -> Self {
        let capacity = capacity.clamp(1, 1 << 15).next_power_of_two();
        SentLog {
            slots: vec![None; usize::from(capacity)].into_boxed_slice(),
            mask: capacity - 1,
        }
    }

    pub fn record(&mut self, sent: Sent) {
        self.slots[usize::from(sent.sequence_number & self.mask)] = Some(sent);
    }

    pub fn get(&self, sequence_number: u16) -> Option<Sent> {
        self.slots[usize::from(sequence_number & self.mask)]
            .filter(|s| s.sequence_number == sequence_number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32) -> rtp::Packet {
        let mut p = rtp::Packet::default();
        p.header.sequence_number = seq;
        p.header.timestamp = ts;
        p.payload = bytes::Bytes::from(vec![seq as u8; 4]);
        p
    }

    #[test]
    fn history_keeps_the_last_packets_across_a_wrap() {
        let t0 = Instant::now();
        let mut h = PacketHistory::new(100, Duration::from_secs(1));
        for i in 0..300u32 {
            let seq = 65_400u16.wrapping_add(i as u16);
            h.insert(&packet(seq, i), &Carried::default(), t0);
        }
        // 128 slots (100 rounded up): the last 128 are there, the one before is gone.
        let last = 65_400u16.wrapping_add(299);
        assert_eq!(h.get(last, 299, t0).unwrap().packet.payload[0], last as u8);
        let oldest = last.wrapping_sub(127);
        assert!(h.get(oldest, 299 - 127, t0).is_some());
        assert!(h.get(oldest.wrapping_sub(1), 299 - 128, t0).is_none());
        assert!(
            h.get(last.wrapping_add(1), 300, t0).is_none(),
            "not yet seen"
        );
    }

    #[test]
    fn history_refuses_a_stale_or_different_packet() {
        let t0 = Instant::now();
        let mut h = PacketHistory::new(16, Duration::from_millis(500));
        h.insert(&packet(7, 700), &Carried::default(), t0);
        assert!(h.get(7, 701, t0).is_none(), "same number, another packet");
        assert!(h.get(7, 700, t0 + Duration::from_millis(400)).is_some());
        assert!(h.get(7, 700, t0 + Duration::from_millis(600)).is_none());
    }

    #[test]
    fn the_sent_log_maps_back_and_forgets_what_it_overwrote() {
        let mut log = SentLog::new(8);
        for i in 0..20u16 {
            log.record(Sent {
                sequence_number: 65_530u16.wrapping_add(i),
                timestamp: u32::from(i) * 10,
                source_sequence_number: 100 + i,
                source_timestamp: u32::from(i),
                ..Sent::default()
            });
        }
        let newest = 65_530u16.wrapping_add(19);
        assert_eq!(log.get(newest).unwrap().source_sequence_number, 119);
        assert_eq!(log.get(newest.wrapping_sub(7)).unwrap().timestamp, 120);
        assert!(log.get(newest.wrapping_sub(8)).is_none());
    }
}
