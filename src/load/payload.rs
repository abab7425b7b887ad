//! The synthetic media the load tester and tests publish, and how a subscriber reads it back.
//!
//! Each RTP payload starts with what the codec's depacketizer and the SFU's keyframe detector
//! look at (a VP8 payload descriptor and frame header, or nothing for Opus), then a stamp:
//! a magic, the send time, a per-stream counter, the simulcast layer (if any) and the
//! publisher's participant id. A subscriber reads the stamp to prove where a packet came from,
//! which layer it belongs to, and to measure latency.

use std::time::{SystemTime, UNIX_EPOCH};

pub const MAGIC: &[u8; 4] = b"SWB2";

/// The layer byte of a stamp on a stream that is not simulcast.
const NO_LAYER: u8 = 0xff;

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
    /// Counts the packets of one stream: a track, or one simulcast layer of it.
    pub counter: u32,
    /// The simulcast layer (0 lowest); `None` on a stream that is not simulcast.
    pub layer: Option<u8>,
}

/// Writes a stamp, padded with zeros to `size` bytes (at least the stamp's own length).
pub fn write_stamp(out: &mut Vec<u8>, stamp: &Stamp, size: usize) {
    let start = out.len();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&stamp.sent_at_micros.to_be_bytes());
    out.extend_from_slice(&stamp.counter.to_be_bytes());
    out.push(stamp.layer.map_or(NO_LAYER, |l| l.min(NO_LAYER - 1)));
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
    let at = payload.windows(4).take(24).position(|w| w == MAGIC)?;
    let rest = &payload[at + 4..];
    let sent_at_micros = u64::from_be_bytes(rest.get(0..8)?.try_into().ok()?);
    let counter = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
    let layer = match *rest.get(12)? {
        NO_LAYER => None,
        l => Some(l),
    };
    let id_len = *rest.get(13)? as usize;
    let id = rest.get(14..14 + id_len)?;
    Some(Stamp {
        sent_at_micros,
        publisher_id: String::from_utf8(id.to_vec()).ok()?,
        counter,
        layer,
    })
}

/// The VP8 bytes in front of the stamp: payload descriptor (S bit on the first packet of a
/// frame) and, on that first packet, a 3-byte frame tag whose P bit marks a delta frame.
pub fn vp8_prefix(out: &mut Vec<u8>, first_of_frame: bool, keyframe: bool) {
    vp8_prefix_with(out, first_of_frame, keyframe, None, None);
}

/// [`vp8_prefix`] as a simulcast encoder writes it: with a 15-bit picture id in the payload
/// descriptor (RFC 7741 §4.2), and on a keyframe the start code and picture size after the
/// frame tag (RFC 6386 §9.1), which is how the server learns each layer's size.
pub fn vp8_prefix_with(
    out: &mut Vec<u8>,
    first_of_frame: bool,
    keyframe: bool,
    picture_id: Option<u16>,
    size: Option<(u16, u16)>,
) {
    let start = if first_of_frame { 0x10 } else { 0x00 };
    match picture_id {
        Some(id) => {
            // X (extensions follow), then I (picture id), then the id with its M bit.
            out.push(0x80 | start);
            out.push(0x80);
            out.push(0x80 | ((id >> 8) as u8 & 0x7f));
            out.push(id as u8);
        }
        None => out.push(start),
    }
    if !first_of_frame {
        return;
    }
    // Frame tag: the P bit (0 on a keyframe); version, show_frame and the first partition's
    // size left at zero, as nothing decodes these frames.
    out.push(if keyframe { 0x00 } else { 0x01 });
    out.extend_from_slice(&[0x00, 0x00]);
    if let (true, Some((width, height))) = (keyframe, size) {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        out.extend_from_slice(&(height & 0x3fff).to_le_bytes());
    }
}

/// What a receiver reads of a VP8 packet's first bytes (RFC 7741 §4.2, RFC 6386 §9.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Vp8Info {
    /// The first packet of a frame (S bit with partition 0).
    pub start_of_frame: bool,
    /// The first packet of a keyframe.
    pub keyframe: bool,
    pub picture_id: Option<u16>,
    /// The picture size, on a keyframe's first packet that carries it.
    pub size: Option<(u16, u16)>,
}

impl Vp8Info {
    pub fn parse(payload: &[u8]) -> Option<Vp8Info> {
        let first = *payload.first()?;
        let mut info = Vp8Info {
            start_of_frame: first & 0x10 != 0 && first & 0x07 == 0,
            ..Vp8Info::default()
        };
        let mut at = 1;
        if first & 0x80 != 0 {
            let x = *payload.get(at)?;
            at += 1;
            if x & 0x80 != 0 {
                let b = *payload.get(at)?;
                if b & 0x80 != 0 {
                    info.picture_id =
                        Some((u16::from(b & 0x7f) << 8) | u16::from(*payload.get(at + 1)?));
                    at += 2;
                } else {
                    info.picture_id = Some(u16::from(b));
                    at += 1;
                }
            }
            if x & 0x40 != 0 {
                at += 1;
            }
            if x & 0x30 != 0 {
                at += 1;
            }
        }
        if !info.start_of_frame {
            return Some(info);
        }
        let frame = payload.get(at..)?;
        info.keyframe = frame.first().is_some_and(|t| t & 0x01 == 0);
        if info.keyframe && frame.len() >= 10 && frame[3..6] == [0x9d, 0x01, 0x2a] {
            let width = u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff;
            let height = u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff;
            info.size = Some((width, height));
        }
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(layer: Option<u8>) -> Stamp {
        Stamp {
            sent_at_micros: 123_456_789,
            publisher_id: "p0123".into(),
            counter: 42,
            layer,
        }
    }

    #[test]
    fn stamps_round_trip_behind_a_vp8_prefix() {
        let stamp = stamp(None);
        let mut payload = Vec::new();
        vp8_prefix(&mut payload, true, true);
        write_stamp(&mut payload, &stamp, 200);
        assert!(payload.len() >= 200);
        let info = Vp8Info::parse(&payload).unwrap();
        assert!(info.start_of_frame && info.keyframe);
        assert_eq!((info.picture_id, info.size), (None, None));
        assert_eq!(read_stamp(&payload), Some(stamp.clone()));

        let mut delta = Vec::new();
        vp8_prefix(&mut delta, true, false);
        write_stamp(&mut delta, &stamp, 0);
        assert!(!Vp8Info::parse(&delta).unwrap().keyframe);

        let mut middle = Vec::new();
        vp8_prefix(&mut middle, false, true);
        write_stamp(&mut middle, &stamp, 0);
        let info = Vp8Info::parse(&middle).unwrap();
        assert!(!info.start_of_frame && !info.keyframe);
        assert_eq!(read_stamp(&middle).unwrap().counter, 42);
        assert_eq!(read_stamp(b"nothing here"), None);
    }

    #[test]
    fn a_simulcast_keyframe_says_its_layer_picture_id_and_size() {
        for layer in 0..3u8 {
            let stamp = stamp(Some(layer));
            let mut key = Vec::new();
            vp8_prefix_with(&mut key, true, true, Some(0x1234), Some((1280, 720)));
            write_stamp(&mut key, &stamp, 300);
            let info = Vp8Info::parse(&key).unwrap();
            assert!(info.start_of_frame && info.keyframe);
            assert_eq!(info.picture_id, Some(0x1234));
            assert_eq!(info.size, Some((1280, 720)));
            assert_eq!(read_stamp(&key), Some(stamp.clone()));
            // RFC 6386 §9.1 as written: frame tag, start code, 14-bit sizes little-endian.
            assert_eq!(
                &key[4..14],
                &[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]
            );

            let mut rest = Vec::new();
            vp8_prefix_with(&mut rest, false, true, Some(0x1234), Some((1280, 720)));
            write_stamp(&mut rest, &stamp, 0);
            let info = Vp8Info::parse(&rest).unwrap();
            assert!(!info.start_of_frame && !info.keyframe);
            assert_eq!((info.picture_id, info.size), (Some(0x1234), None));
            assert_eq!(read_stamp(&rest).unwrap().layer, Some(layer));

            let mut delta = Vec::new();
            vp8_prefix_with(&mut delta, true, false, Some(7), Some((1280, 720)));
            write_stamp(&mut delta, &stamp, 0);
            let info = Vp8Info::parse(&delta).unwrap();
            assert!(info.start_of_frame && !info.keyframe);
            assert_eq!((info.picture_id, info.size), (Some(7), None));
        }
    }
}
