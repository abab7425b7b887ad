//! The synthetic media the load tester and tests publish, and how a subscriber reads it back.
//!
//! Each RTP payload starts with what the codec's depacketizer and the SFU's keyframe detector
//! look at (a VP8 payload descriptor and frame header, or nothing for Opus), then a stamp:
//! a magic, the send time, the publisher's participant id and a per-track counter. A
//! subscriber reads the stamp to prove where a packet came from and to measure latency.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MAGIC: &[u8; 4] = b"SWB1";

/// Microseconds since the Unix epoch (the publisher and subscriber share a clock here).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What a packet's stamp says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub sent_at_micros: u64,
    pub publisher_id: String,
    pub counter: u32,
}

/// Writes a stamp, padded with zeros to `size` bytes (at least the stamp's own length).
pub fn write_stamp(out: &mut Vec<u8>, stamp: &Stamp, size: usize) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stamp.sent_at_micros.to_be_bytes());
    out.extend_from_slice(&stamp.counter.to_be_bytes());
    let id = stamp.publisher_id.as_bytes();
    let id_len = id.len().min(255);
    out.push(id_len as u8);
    out.extend_from_slice(&id[..id_len]);
    let written = out.len() - start;
    if written < size {
        out.resize(start + size, 0);
    }
}

/// Finds and reads a stamp in a payload (after whatever codec header precedes it).
pub fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    let at = payload.windows(4).take(16).position(|w| w == MAGIC)?;
    let rest = &payload[at + 4..];
    let sent_at_micros = u64::from_be_bytes(rest.get(0..8)?.try_into().ok()?);
    let counter = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    let id_len = *rest.get(12)? as usize;
    let id = rest.get(13..13 + id_len)?;
    Some(Stamp {
        sent_at_micros,
        publisher_id: String::from_utf8(id.to_vec()).ok()?,
        counter,
    })
}

/// The VP8 bytes in front of the stamp: payload descriptor (S bit on the first packet of a
/// frame) and, on that first packet, a 3-byte frame tag whose P bit marks a delta frame.
pub fn vp8_prefix(out: &mut Vec<u8>, first_of_frame: bool, keyframe: bool) {
    if first_of_frame {
        out.push(0x10);
        out.push(if keyframe { 0x00 } else { 0x01 });
        out.extend_from_slice(&[0x00, 0x00]);
    } else {
        out.push(0x00);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7741 as a receiver reads the simplest payload: a one-byte descriptor with the S bit
    /// and partition 0 starts a frame, and the frame tag's P bit is 0 on a key frame.
    /// (`tests/load.rs` also checks the prefix against the server's own reader.)
    fn vp8_is_keyframe(payload: &[u8]) -> bool {
        match payload {
            [descriptor, tag, ..] if descriptor & 0x80 == 0 => {
                descriptor & 0x10 != 0 && descriptor & 0x07 == 0 && tag & 0x01 == 0
            }
            _ => false,
        }
    }

    #[test]
    fn stamps_round_trip_behind_a_vp8_prefix() {
        let stamp = Stamp {
            sent_at_micros: 123_456_789,
            publisher_id: "p0123".into(),
            counter: 42,
        };
        let mut payload = Vec::new();
        vp8_prefix(&mut payload, true, true);
        write_stamp(&mut payload, &stamp, 200);
        assert!(payload.len() >= 200);
        assert!(vp8_is_keyframe(&payload));
        assert_eq!(read_stamp(&payload), Some(stamp.clone()));

        let mut delta = Vec::new();
        vp8_prefix(&mut delta, true, false);
        write_stamp(&mut delta, &stamp, 0);
        assert!(!vp8_is_keyframe(&delta));

        let mut middle = Vec::new();
        vp8_prefix(&mut middle, false, true);
        write_stamp(&mut middle, &stamp, 0);
        assert!(!vp8_is_keyframe(&middle));
        assert_eq!(read_stamp(&middle).unwrap().counter, 42);
        assert_eq!(read_stamp(b"nothing here"), None);
    }
}
