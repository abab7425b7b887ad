//! The VP8 payload descriptor (RFC 7741 §4.2), read and rewritten in place.
//!
//! A subscriber that is switched from one simulcast layer to another must see one stream: the
//! picture id and the TL0PICIDX continue where they were, whichever encoder made the frames.
//! The descriptor's fields keep their widths (a 7-bit picture id stays 7-bit), so a rewrite
//! never moves the payload.

/// What the descriptor of one packet says, and where its fields sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// The first packet of a frame (S bit set on partition 0).
    pub start_of_frame: bool,
    /// The picture id, its width in bits (7 or 15) and its offset in the payload.
    pub picture_id: Option<(u16, u8, usize)>,
    /// TL0PICIDX and its offset.
    pub tl0_pic_idx: Option<(u8, usize)>,
    /// Temporal layer index, and whether it is a layer sync point (Y bit).
    pub temporal: Option<(u8, bool)>,
    /// Bytes of descriptor before the VP8 payload header.
    pub len: usize,
}

impl Descriptor {
    /// Parses the descriptor at the start of `payload`; `None` if it is cut short.
    pub fn parse(payload: &[u8]) -> Option<Descriptor> {
        let first = *payload.first()?;
        let extended = first & 0x80 != 0;
        let start = first & 0x10 != 0;
        let partition = first & 0x0f;
        let mut d = Descriptor {
            start_of_frame: start && partition == 0,
            ..Descriptor::default()
        };
        let mut at = 1;
        if !extended {
            d.len = at;
            return Some(d);
        }
        let x = *payload.get(at)?;
        at += 1;
        let (has_i, has_l, has_t, has_k) =
            (x & 0x80 != 0, x & 0x40 != 0, x & 0x20 != 0, x & 0x10 != 0);
        if has_i {
            let b = *payload.get(at)?;
            if b & 0x80 != 0 {
                let lo = *payload.get(at + 1)?;
                d.picture_id = Some(((u16::from(b & 0x7f) << 8) | u16::from(lo), 15, at));
                at += 2;
            } else {
                d.picture_id = Some((u16::from(b & 0x7f), 7, at));
                at += 1;
            }
        }
        if has_l {
            d.tl0_pic_idx = Some((*payload.get(at)?, at));
            at += 1;
        }
        if has_t || has_k {
            let b = *payload.get(at)?;
            if has_t {
                d.temporal = Some((b >> 6, b & 0x20 != 0));
            }
            at += 1;
        }
        d.len = at;
        (at <= payload.len()).then_some(d)
    }
}

/// The picture size a VP8 keyframe announces (RFC 6386 §9.1), from the first packet of the
/// frame: `None` for anything else.
pub fn keyframe_size(payload: &[u8]) -> Option<(u32, u32)> {
    let d = Descriptor::parse(payload)?;
    if !d.start_of_frame {
        return None;
    }
    let frame = payload.get(d.len..)?;
    // The frame tag's first bit is 0 on a keyframe, which carries the start code and the size.
    if frame.len() < 10 || frame[0] & 0x01 != 0 || frame[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u32::from(u16::from_le_bytes([frame[6], frame[7]]) & 0x3fff);
    let height = u32::from(u16::from_le_bytes([frame[8], frame[9]]) & 0x3fff);
    (width > 0 && height > 0).then_some((width, height))
}

/// Writes `picture_id` (in the field's own width) and `tl0_pic_idx` into a descriptor that
/// `d` describes, at the start of `payload`.
pub fn rewrite(payload: &mut [u8], d: &Descriptor, picture_id: u16, tl0_pic_idx: u8) {
    if let Some((_, width, at)) = d.picture_id {
        if width == 15 && at + 1 < payload.len() {
            payload[at] = 0x80 | ((picture_id >> 8) as u8 & 0x7f);
            payload[at + 1] = picture_id as u8;
        } else if at < payload.len() {
            payload[at] = picture_id as u8 & 0x7f;
        }
    }
    if let Some((_, at)) = d.tl0_pic_idx {
        if at < payload.len() {
            payload[at] = tl0_pic_idx;
        }
    }
}

/// Keeps one subscriber's picture ids and TL0PICIDX continuous across the streams it is
/// switched between: within a stream they follow the source; a switch continues from the last
/// values sent.
#[derive(Debug, Clone, Default)]
pub struct PictureIds {
    /// Added to the source's picture id (mod its width) and TL0PICIDX (mod 256).
    picture_offset: u16,
    tl0_offset: u8,
    /// The last values written, to continue from at a switch.
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
    /// The next packet starts a new stream.
    switching: bool,
}

impl PictureIds {
    /// The next packet comes from another stream (a layer switch, a restart).
    pub fn switch(&mut self) {
        self.switching = true;
    }

    /// The values to write for a packet whose descriptor is `d`.
    pub fn map(&mut self, d: &Descriptor) -> (u16, u8) {
        let mask = |width: u8| if width == 15 { 0x7fff } else { 0x7f };
        if self.switching {
            self.switching = false;
            if let (Some((src, width, _)), Some(last)) = (d.picture_id, self.last_picture) {
                self.picture_offset = last.wrapping_add(1).wrapping_sub(src) & mask(width);
            }
            if let (Some((src, _)), Some(last)) = (d.tl0_pic_idx, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(src);
            }
        }
        let picture = d
            .picture_id
            .map(|(src, width, _)| src.wrapping_add(self.picture_offset) & mask(width))
            .unwrap_or(0);
        let tl0 = d
            .tl0_pic_idx
            .map(|(src, _)| src.wrapping_add(self.tl0_offset))
            .unwrap_or(0);
        if d.picture_id.is_some() {
            self.last_picture = Some(picture);
        }
        if d.tl0_pic_idx.is_some() {
            self.last_tl0 = Some(tl0);
        }
        (picture, tl0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A descriptor with a 15-bit picture id, TL0PICIDX and TID.
    fn descriptor(picture: u16, tl0: u8, tid: u8, start: bool) -> Vec<u8> {
        vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            tid << 6 | 0x20,
            0x9d, // the VP8 payload header follows
        ]
    }

    #[test]
    fn parses_every_field_and_its_place() {
        let d = Descriptor::parse(&descriptor(0x1234, 7, 2, true)).unwrap();
        assert_eq!(d.picture_id, Some((0x1234, 15, 2)));
        assert_eq!(d.tl0_pic_idx, Some((7, 4)));
        assert_eq!(d.temporal, Some((2, true)));
        assert!(d.start_of_frame);
        assert_eq!(d.len, 6);
        let short = Descriptor::parse(&[0x90, 0x80, 0x05, 0x9d]).unwrap();
        assert_eq!(short.picture_id, Some((5, 7, 2)));
        assert_eq!(short.len, 3);
        assert_eq!(Descriptor::parse(&[0x10]).unwrap().len, 1);
        for cut in 1..6 {
            assert!(
                Descriptor::parse(&descriptor(0x1234, 7, 2, true)[..cut]).is_none(),
                "{cut}"
            );
        }
        assert!(Descriptor::parse(&[]).is_none());
    }

    #[test]
    fn a_keyframe_says_its_size() {
        let mut p = descriptor(1, 1, 0, true);
        p.pop();
        // Frame tag (keyframe, shown), start code, 640 x 360 with no scaling.
        p.extend_from_slice(&[0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x80, 0x02, 0x68, 0x01]);
        assert_eq!(keyframe_size(&p), Some((640, 360)));
        let mut delta = p.clone();
        delta[6] |= 0x01;
        assert_eq!(keyframe_size(&delta), None);
        let mut later = p.clone();
        later[0] &= !0x10;
        assert_eq!(keyframe_size(&later), None, "not the frame's first packet");
        assert_eq!(keyframe_size(&p[..p.len() - 1]), None);
    }

    #[test]
    fn a_rewrite_keeps_the_widths_and_the_rest() {
        let mut p = descriptor(0x1234, 7, 2, true);
        let d = Descriptor::parse(&p).unwrap();
        rewrite(&mut p, &d, 0x7ffe, 200);
        let again = Descriptor::parse(&p).unwrap();
        assert_eq!(again.picture_id, Some((0x7ffe, 15, 2)));
        assert_eq!(again.tl0_pic_idx, Some((200, 4)));
        assert_eq!(again.temporal, d.temporal);
        assert_eq!(p[6], 0x9d);
        let mut seven = vec![0x90, 0x80, 0x05, 0x9d];
        let d = Descriptor::parse(&seven).unwrap();
        rewrite(&mut seven, &d, 300, 0);
        assert_eq!(
            Descriptor::parse(&seven).unwrap().picture_id,
            Some((300 & 0x7f, 7, 2))
        );
    }

    /// Three encoders with their own picture ids, switched between 1,000 times: the subscriber
    /// sees each frame's id one more than the last, through the 15-bit wrap.
    #[test]
    fn picture_ids_stay_continuous_across_a_thousand_switches() {
        let mut ids = PictureIds::default();
        let mut source = [100u16, 20_000, 32_700];
        let mut tl0 = [3u8, 90, 250];
        let mut last: Option<(u16, u8)> = None;
        let mut layer = 0;
        for frame in 0..10_000u32 {
            if frame % 10 == 0 {
                layer = (layer + 1 + (frame as usize / 10) % 2) % 3;
                ids.switch();
            }
            for l in 0..3 {
                source[l] = source[l].wrapping_add(1) & 0x7fff;
                tl0[l] = tl0[l].wrapping_add(1);
            }
            let d = Descriptor::parse(&descriptor(source[layer], tl0[layer], 0, true)).unwrap();
            let (p, t) = ids.map(&d);
            if let Some((lp, lt)) = last {
                assert_eq!(
                    p,
                    lp.wrapping_add(1) & 0x7fff,
                    "picture id at frame {frame}"
                );
                assert_eq!(t, lt.wrapping_add(1), "TL0PICIDX at frame {frame}");
            }
            last = Some((p, t));
        }
    }
}
