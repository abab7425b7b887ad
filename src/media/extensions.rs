//! RTP header extensions on the way through the SFU.
//!
//! Extension ids are negotiated per peer connection, so the publisher's ids mean nothing to a
//! subscriber: extensions are read by the publisher's ids, kept by URI, and written with the
//! subscriber's ids. Each forwarded packet also carries the subscriber's own `sdes:mid`
//! (RFC 8843): some clients demultiplex a BUNDLE by MID, and two Opus streams with one payload
//! type are otherwise told apart only by SSRC.

use bytes::{Bytes, BytesMut};

use crate::media::kind::TrackKind;

pub const SDES_MID: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";
pub const AUDIO_LEVEL: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
pub const ABS_SEND_TIME: &str = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time";
pub const VIDEO_ORIENTATION: &str = "urn:3gpp:video-orientation";
pub const PLAYOUT_DELAY: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
pub const TRANSPORT_CC: &str =
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01";

/// What the server negotiates with every peer, and the test client too: `sdes:mid` on both
/// kinds (the stack's simulcast set has it for video only) and the forwarded extensions.
pub const NEGOTIATED: [(&str, TrackKind); 7] = [
    (SDES_MID, TrackKind::Audio),
    (SDES_MID, TrackKind::Video),
    (AUDIO_LEVEL, TrackKind::Audio),
    (ABS_SEND_TIME, TrackKind::Audio),
    (ABS_SEND_TIME, TrackKind::Video),
    (VIDEO_ORIENTATION, TrackKind::Video),
    (PLAYOUT_DELAY, TrackKind::Video),
];

/// The publisher's extensions a subscriber gets, when both negotiated them.
pub const FORWARDED: [&str; 4] = [AUDIO_LEVEL, ABS_SEND_TIME, VIDEO_ORIENTATION, PLAYOUT_DELAY];
const N: usize = FORWARDED.len();
const ABS_SEND_TIME_AT: usize = 1;
/// The length of each forwarded extension's value (RFC 6464, abs-send-time, 3GPP TS 26.114,
/// playout-delay): a value of another length from a publisher is not forwarded.
const LENGTHS: [usize; N] = [1, 3, 1, 3];

/// RFC 8285 header extension profiles.
const ONE_BYTE_PROFILE: u16 = 0xBEDE;
const TWO_BYTE_PROFILE: u16 = 0x1000;

/// One side's negotiated ids for the forwarded extensions (0: not negotiated).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtensionIds {
    ids: [u8; N],
}

impl ExtensionIds {
    /// From a peer connection's negotiated `(uri, id)` pairs.
    pub fn from_negotiated<'a>(negotiated: impl IntoIterator<Item = (&'a str, u16)>) -> Self {
        let mut ids = [0u8; N];
        for (uri, id) in negotiated {
            if let Some(at) = FORWARDED.iter().position(|u| *u == uri) {
                ids[at] = u8::try_from(id).unwrap_or(0);
            }
        }
        ExtensionIds { ids }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.iter().all(|&id| id == 0)
    }
}

/// The forwarded extensions one publisher packet carried, by URI.
#[derive(Debug, Clone, Default)]
pub struct Carried {
    values: [Option<Bytes>; N],
}

impl Carried {
    /// Reads what `header` carries under the publisher's ids. The values share the packet's
    /// buffer: nothing is copied.
    pub fn read(header: &rtp::header::Header, publisher: &ExtensionIds) -> Self {
        let mut carried = Carried::default();
        if !header.extension {
            return carried;
        }
        for ((slot, &id), &len) in carried.values.iter_mut().zip(&publisher.ids).zip(&LENGTHS) {
            if id != 0 {
                *slot = header.get_extension(id).filter(|v| v.len() == len);
            }
        }
        carried
    }

    pub fn get(&self, uri: &str) -> Option<&Bytes> {
        let at = FORWARDED.iter().position(|u| *u == uri)?;
        self.values[at].as_ref()
    }
}

/// How one subscriber's m-line wants extensions written.
#[derive(Debug, Clone, Default)]
pub struct SubscriberExtensions {
    ids: ExtensionIds,
    mid: Option<(u8, Bytes)>,
    /// The transport-wide sequence number's id: written as a placeholder, which the sender
    /// fills as the packet leaves.
    transport_cc: Option<u8>,
}

/// What [`SubscriberExtensions::marshal`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// A header extension block: the caller sets the header's X bit.
    pub block: bool,
    /// Where in `out` the two bytes of the transport-wide sequence number go.
    pub transport_cc_at: Option<usize>,
}

impl SubscriberExtensions {
    pub fn new(ids: ExtensionIds, mid_id: Option<u16>, mid: &str) -> Self {
        let mid = mid_id
            .and_then(|id| u8::try_from(id).ok())
            .filter(|&id| id != 0 && !mid.is_empty())
            .map(|id| (id, Bytes::copy_from_slice(mid.as_bytes())));
        SubscriberExtensions {
            ids,
            mid,
            transport_cc: None,
        }
    }

    /// Every packet carries a transport-wide sequence number under `id` (when negotiated).
    pub fn with_transport_cc(mut self, id: Option<u16>) -> Self {
        self.transport_cc = id
            .and_then(|id| u8::try_from(id).ok())
            .filter(|&id| id != 0);
        self
    }

    /// Writes the subscriber's extensions into a packet being marshalled: its MID, then what
    /// the publisher carried, under the subscriber's ids. abs-send-time is the SFU's own send
    /// time, as the subscriber's bandwidth estimate is about the hop from here. Appends the
    /// header extension block (RFC 8285) to `out`, or nothing; true if it appended one (the
    /// caller sets the header's X bit). Nothing is allocated or reference-counted.
    ///
    /// The one-byte form carries ids 1–14 and values of 1–16 bytes; when an id or the MID does
    /// not fit it, every extension of the packet goes in the two-byte form.
    pub fn marshal(&self, out: &mut BytesMut, carried: &Carried, now_ntp: u64) -> Written {
        let abs = abs_send_time_bytes(now_ntp);
        let mut values: [(u8, &[u8]); N + 2] = [(0, &[]); N + 2];
        let mut count = 0;
        if let Some((id, mid)) = &self.mid {
            values[0] = (*id, &mid[..]);
            count = 1;
        }
        for (at, (&id, value)) in self.ids.ids.iter().zip(&carried.values).enumerate() {
            let Some(value) = value.as_ref().filter(|_| id != 0) else {
                continue;
            };
            values[count] = (id, if at == ABS_SEND_TIME_AT { &abs } else { value });
            count += 1;
        }
        // Last, so its place is easy to find: the sender writes the number there.
        if let Some(id) = self.transport_cc {
            values[count] = (id, &[0, 0]);
            count += 1;
        }
        let values = &values[..count];
        if values.is_empty() {
            return Written::default();
        }
        let one_byte = values
            .iter()
            .all(|(id, v)| (1..=14).contains(id) && (1..=16).contains(&v.len()));
        let start = out.len();
        let profile = if one_byte {
            ONE_BYTE_PROFILE
        } else {
            TWO_BYTE_PROFILE
        };
        out.extend_from_slice(&profile.to_be_bytes());
        out.extend_from_slice(&[0, 0]); // length in words, set below
        let mut transport_cc_at = None;
        for (id, value) in values {
            if one_byte {
                out.extend_from_slice(&[(id << 4) | (value.len() as u8 - 1)]);
            } else {
                out.extend_from_slice(&[*id, value.len() as u8]);
            }
            if Some(*id) == self.transport_cc {
                transport_cc_at = Some(out.len());
            }
            out.extend_from_slice(value);
        }
        let body = out.len() - start - 4;
        let padded = body.div_ceil(4) * 4;
        out.resize(start + 4 + padded, 0);
        let words = (padded / 4) as u16;
        out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
        Written {
            block: true,
            transport_cc_at,
        }
    }
}

/// The 24-bit abs-send-time value (6.18 fixed-point seconds) of a 64-bit NTP time.
fn abs_send_time_bytes(ntp: u64) -> [u8; 3] {
    let v = (ntp >> 14) as u32;
    [(v >> 16) as u8, (v >> 8) as u8, v as u8]
}

/// The current time as 64-bit NTP (32.32 fixed-point seconds since 1900).
pub fn ntp_now() -> u64 {
    const UNIX_TO_NTP_SECS: u64 = 2_208_988_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() + UNIX_TO_NTP_SECS;
    let frac = (u64::from(now.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second way to the same header, through the `rtp` crate's own header type and
    /// marshalling: what the send path's bytes are checked against.
    impl SubscriberExtensions {
        /// Replaces `header`'s extensions with the subscriber's: its MID, then what the publisher
        /// carried, under the subscriber's ids. abs-send-time is the SFU's own send time, as the
        /// subscriber's bandwidth estimate is about the hop from here.
        ///
        /// The one-byte form (RFC 8285) carries ids 1–14 and values of 1–16 bytes; when an id or
        /// the MID does not fit it, every extension of the packet goes in the two-byte form.
        fn write(&self, header: &mut rtp::header::Header, carried: &Carried, now_ntp: u64) {
            header.extension = false;
            header.extension_profile = 0;
            header.extensions.clear();
            header.extensions_padding = 0;
            let mut values: [(u8, Option<Bytes>); N + 1] = Default::default();
            if let Some((id, mid)) = &self.mid {
                values[N] = (*id, Some(mid.clone()));
            }
            for (at, (&id, value)) in self.ids.ids.iter().zip(&carried.values).enumerate() {
                if id == 0 || value.is_none() {
                    continue;
                }
                let value = if at == ABS_SEND_TIME_AT {
                    Bytes::copy_from_slice(&abs_send_time_bytes(now_ntp))
                } else {
                    value.clone().unwrap_or_default()
                };
                values[at] = (id, Some(value));
            }
            let present = || {
                values
                    .iter()
                    .filter_map(|(id, v)| v.as_ref().map(|v| (*id, v)))
            };
            if present().next().is_none() {
                return;
            }
            let one_byte =
                present().all(|(id, v)| (1..=14).contains(&id) && (1..=16).contains(&v.len()));
            header.extension = true;
            header.extension_profile = if one_byte {
                ONE_BYTE_PROFILE
            } else {
                TWO_BYTE_PROFILE
            };
            // The MID first, as before: what a client that demultiplexes by it reads first.
            let Some((mid, rest)) = values.split_last() else {
                return;
            };
            for (id, value) in std::iter::once(mid).chain(rest) {
                if let Some(value) = value {
                    let _ = header.set_extension(*id, value.clone());
                }
            }
        }
    }

    fn header_with(exts: &[(u8, &'static [u8])]) -> rtp::header::Header {
        let mut h = rtp::header::Header::default();
        for (id, v) in exts {
            h.set_extension(*id, Bytes::from_static(v)).unwrap();
        }
        h
    }

    #[test]
    fn extensions_are_mapped_by_uri_and_the_subscribers_mid_is_written() {
        // The publisher negotiated audio level as 1 and playout delay as 7; something else on 3.
        let publisher = ExtensionIds::from_negotiated([
            (AUDIO_LEVEL, 1),
            (PLAYOUT_DELAY, 7),
            ("urn:example:other", 3),
        ]);
        let header = header_with(&[(1, &[0x85]), (3, &[9, 9]), (7, &[0, 1, 2])]);
        let carried = Carried::read(&header, &publisher);
        assert_eq!(carried.get(AUDIO_LEVEL).unwrap().as_ref(), &[0x85]);
        assert!(carried.get(VIDEO_ORIENTATION).is_none());

        // The subscriber has audio level on 4, no playout delay, MID on 9.
        let sub = SubscriberExtensions::new(
            ExtensionIds::from_negotiated([(AUDIO_LEVEL, 4), (SDES_MID, 9)]),
            Some(9),
            "2",
        );
        let mut out = header.clone();
        sub.write(&mut out, &carried, 0);
        assert_eq!(out.get_extension(9).unwrap().as_ref(), b"2");
        assert_eq!(out.get_extension(4).unwrap().as_ref(), &[0x85]);
        assert!(out.get_extension(1).is_none());
        assert!(out.get_extension(3).is_none());
        assert!(out.get_extension(7).is_none());
        assert_eq!(out.extensions.len(), 2);
    }

    /// Found by the `rtp_path` fuzz target: an id over 14 was written in the one-byte form,
    /// where 15 means "stop reading", so the subscriber never saw its MID.
    #[test]
    fn ids_over_14_go_in_the_two_byte_form_and_survive_the_wire() {
        use rtc::shared::marshal::{Marshal, Unmarshal};
        let publisher = ExtensionIds::from_negotiated([(AUDIO_LEVEL, 1)]);
        let header = header_with(&[(1, &[0x85])]);
        let carried = Carried::read(&header, &publisher);
        for (level_id, mid_id) in [(4, 9), (4, 15), (20, 3), (200, 255)] {
            let sub = SubscriberExtensions::new(
                ExtensionIds::from_negotiated([(AUDIO_LEVEL, level_id)]),
                Some(mid_id),
                "12",
            );
            let mut packet = rtp::Packet {
                payload: Bytes::from_static(b"x"),
                ..Default::default()
            };
            packet.header.version = 2;
            sub.write(&mut packet.header, &carried, 0);
            let wire = packet.marshal().unwrap();
            let back = rtp::Packet::unmarshal(&mut wire.freeze()).unwrap();
            let ids = (level_id as u8, mid_id as u8);
            assert_eq!(back.header.get_extension(ids.1).unwrap().as_ref(), b"12");
            assert_eq!(back.header.get_extension(ids.0).unwrap().as_ref(), &[0x85]);
            assert_eq!(back.payload.as_ref(), b"x");
        }
    }

    /// The worker marshals extensions itself on its send path: byte for byte what the stack
    /// would marshal from [`SubscriberExtensions::write`], in both forms.
    #[test]
    fn marshalled_directly_is_what_the_header_marshals_to() {
        use rtc::shared::marshal::Marshal;
        let publisher = ExtensionIds::from_negotiated([
            (AUDIO_LEVEL, 1),
            (ABS_SEND_TIME, 2),
            (VIDEO_ORIENTATION, 3),
            (PLAYOUT_DELAY, 4),
        ]);
        let header = header_with(&[(1, &[0x85]), (2, &[1, 2, 3]), (3, &[1]), (4, &[0, 1, 2])]);
        let carried = Carried::read(&header, &publisher);
        let ntp = 0x1234_5678_9abc_def0;
        type Case<'a> = (&'a [(&'a str, u16)], Option<u16>, &'a str);
        let cases: [Case; 6] = [
            (&[], None, ""),
            (&[(AUDIO_LEVEL, 4)], Some(9), "2"),
            (&[(ABS_SEND_TIME, 5), (PLAYOUT_DELAY, 6)], Some(1), "17"),
            (&[(AUDIO_LEVEL, 4), (VIDEO_ORIENTATION, 20)], Some(9), "a"),
            (
                &[(AUDIO_LEVEL, 4)],
                Some(200),
                "mid-longer-than-sixteen-bytes",
            ),
            (
                &[(ABS_SEND_TIME, 14), (AUDIO_LEVEL, 13), (PLAYOUT_DELAY, 12)],
                None,
                "",
            ),
        ];
        for (ids, mid_id, mid) in cases {
            let sub = SubscriberExtensions::new(
                ExtensionIds::from_negotiated(ids.iter().copied()),
                mid_id,
                mid,
            );
            let mut expected = header.clone();
            expected.version = 2;
            sub.write(&mut expected, &carried, ntp);
            let expected = expected.marshal().unwrap();
            let mut ours = BytesMut::from(&expected[..12]);
            ours[0] &= !0x10;
            if sub.marshal(&mut ours, &carried, ntp).block {
                ours[0] |= 0x10;
            }
            assert_eq!(&ours[..], &expected[..], "{ids:?} {mid_id:?}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_length_is_not_forwarded() {
        let publisher = ExtensionIds::from_negotiated([(AUDIO_LEVEL, 1), (PLAYOUT_DELAY, 2)]);
        let header = header_with(&[(1, &[0x85, 0x00]), (2, &[1, 2, 3])]);
        let carried = Carried::read(&header, &publisher);
        assert!(carried.get(AUDIO_LEVEL).is_none());
        assert_eq!(carried.get(PLAYOUT_DELAY).unwrap().as_ref(), &[1, 2, 3]);
    }

    #[test]
    fn nothing_negotiated_means_no_extensions() {
        let header = header_with(&[(1, &[0x85])]);
        let carried = Carried::read(&header, &ExtensionIds::default());
        let mut out = header.clone();
        SubscriberExtensions::default().write(&mut out, &carried, 0);
        assert!(!out.extension);
        assert!(out.extensions.is_empty());
    }

    #[test]
    fn abs_send_time_is_the_forwarders_own() {
        let publisher = ExtensionIds::from_negotiated([(ABS_SEND_TIME, 2)]);
        let header = header_with(&[(2, &[1, 2, 3])]);
        let carried = Carried::read(&header, &publisher);
        let sub = SubscriberExtensions::new(
            ExtensionIds::from_negotiated([(ABS_SEND_TIME, 5)]),
            None,
            "",
        );
        let mut out = header.clone();
        // 1.5 s in NTP: 6.18 fixed point is 1.5 * 2^18.
        sub.write(&mut out, &carried, 3 << 31);
        let v = out.get_extension(5).unwrap();
        let v = (u32::from(v[0]) << 16) | (u32::from(v[1]) << 8) | u32::from(v[2]);
        assert_eq!(v, 3 << 17);
    }

    #[test]
    fn the_transport_wide_number_has_a_place_the_sender_fills() {
        let publisher = ExtensionIds::from_negotiated([(AUDIO_LEVEL, 1)]);
        let header = header_with(&[(1, &[0x85])]);
        let carried = Carried::read(&header, &publisher);
        // One-byte form, and two-byte form (a MID longer than 16 bytes forces it).
        for (mid, mid_id) in [("0", Some(4)), ("a-mid-of-twenty-bytes", Some(4))] {
            let sub = SubscriberExtensions::new(
                ExtensionIds::from_negotiated([(AUDIO_LEVEL, 3)]),
                mid_id,
                mid,
            )
            .with_transport_cc(Some(5));
            let mut out = BytesMut::from(&header_bytes()[..]);
            let written = sub.marshal(&mut out, &carried, 0);
            assert!(written.block);
            let at = written.transport_cc_at.expect("a place for the number");
            out[0] |= 0x10;
            out[at..at + 2].copy_from_slice(&0xbeefu16.to_be_bytes());
            let packet =
                <rtp::Packet as rtc::shared::marshal::Unmarshal>::unmarshal(&mut out.freeze())
                    .unwrap();
            assert_eq!(
                packet.header.get_extension(5).unwrap().as_ref(),
                &[0xbe, 0xef]
            );
            assert_eq!(packet.header.get_extension(3).unwrap().as_ref(), &[0x85]);
            assert_eq!(
                packet.header.get_extension(4).unwrap().as_ref(),
                mid.as_bytes()
            );
        }
        // Not negotiated: no place.
        let sub =
            SubscriberExtensions::new(ExtensionIds::default(), None, "").with_transport_cc(None);
        let mut out = BytesMut::new();
        assert_eq!(sub.marshal(&mut out, &carried, 0), Written::default());
    }

    /// A bare 12-byte RTP header.
    fn header_bytes() -> [u8; 12] {
        [0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
    }
}
