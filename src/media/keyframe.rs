//! Keyframe detection from RTP payloads, without decoding.
//!
//! A DownTrack starts (and restarts) only on a keyframe: a decoder that joins mid-GOP shows
//! garbage until the next one. Each function looks at the first packet of a frame.

/// The video codecs the SFU knows how to gate on keyframes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    Vp8,
    Vp9,
    H264,
    Av1,
    /// A codec the SFU cannot parse: every packet is treated as a possible start.
    Other,
}

impl VideoCodec {
    pub fn from_mime(mime: &str) -> VideoCodec {
        match mime.to_ascii_lowercase().as_str() {
            "video/vp8" => VideoCodec::Vp8,
            "video/vp9" => VideoCodec::Vp9,
            "video/h264" => VideoCodec::H264,
            "video/av1" => VideoCodec::Av1,
            _ => VideoCodec::Other,
        }
    }

    pub fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            VideoCodec::Vp8 => vp8_is_keyframe(payload),
            VideoCodec::Vp9 => vp9_is_keyframe(payload),
            VideoCodec::H264 => h264_is_keyframe(payload),
            VideoCodec::Av1 => av1_is_keyframe(payload),
            VideoCodec::Other => true,
        }
    }
}

/// RFC 7741: payload descriptor, then the VP8 frame header whose P bit is 0 on a key frame.
pub fn vp8_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let extended = first & 0x80 != 0;
    let start_of_partition = first & 0x10 != 0;
    let partition_id = first & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut offset = 1;
    if extended {
        let Some(&ext) = payload.get(offset) else {
            return false;
        };
        offset += 1;
        if ext & 0x80 != 0 {
            // PictureID: one or two bytes, by its M bit.
            let Some(&pid) = payload.get(offset) else {
                return false;
            };
            offset += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if ext & 0x40 != 0 {
            offset += 1; // TL0PICIDX
        }
        if ext & 0x30 != 0 {
            offset += 1; // TID/KEYIDX
        }
    }
    payload.get(offset).is_some_and(|&b| b & 0x01 == 0)
}

/// VP9 payload descriptor (RFC 9628): not inter-predicted (P=0) and beginning of a frame (B=1).
pub fn vp9_is_keyframe(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return false;
    };
    let inter_predicted = first & 0x40 != 0;
    let begins_frame = first & 0x08 != 0;
    !inter_predicted && begins_frame
}

/// RFC 6184: an IDR slice or SPS as a single NAL unit, inside a STAP-A, or starting a FU-A.
pub fn h264_is_keyframe(payload: &[u8]) -> bool {
    const IDR: u8 = 5;
    const SPS: u8 = 7;
    const STAP_A: u8 = 24;
    const FU_A: u8 = 28;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        IDR | SPS => true,
        STAP_A => {
            let mut offset = 1;
            while offset + 2 < payload.len() {
                let size = u16::from_be_bytes([payload[offset], payload[offset + 1]]) as usize;
                let nal_type = payload[offset + 2] & 0x1f;
                if nal_type == IDR || nal_type == SPS {
                    return true;
                }
                offset += 2 + size;
            }
            false
        }
        FU_A => payload.get(1).is_some_and(|&fu| {
            let start = fu & 0x80 != 0;
            let nal_type = fu & 0x1f;
            start && (nal_type == IDR || nal_type == SPS)
        }),
        _ => false,
    }
}

/// AV1 RTP aggregation header: N=1 marks the first packet of a coded video sequence.
pub fn av1_is_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|&b| b & 0x08 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_and_delta_frames() {
        // Minimal descriptor (S=1, PID=0), then a key frame header (P bit 0).
        assert!(vp8_is_keyframe(&[0x10, 0x00, 0x9d, 0x01, 0x2a]));
        // Same, delta frame (P bit 1).
        assert!(!vp8_is_keyframe(&[0x10, 0x01]));
        // Continuation packet of a key frame: S=0.
        assert!(!vp8_is_keyframe(&[0x00, 0x00]));
        // Extended descriptor with a 15-bit PictureID, as browsers send.
        assert!(vp8_is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x00]));
        assert!(!vp8_is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x01]));
        // With TL0PICIDX and TID too.
        assert!(vp8_is_keyframe(&[0x90, 0xe0, 0x05, 0x07, 0x20, 0x00]));
        assert!(!vp8_is_keyframe(&[]));
        assert!(!vp8_is_keyframe(&[0x90, 0x80]));
    }

    #[test]
    fn h264_keyframes() {
        assert!(h264_is_keyframe(&[0x65, 0x88])); // IDR
        assert!(h264_is_keyframe(&[0x67, 0x42])); // SPS
        assert!(!h264_is_keyframe(&[0x41, 0x9a])); // non-IDR slice
                                                   // STAP-A holding SPS then PPS.
        assert!(h264_is_keyframe(&[
            0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68
        ]));
        // FU-A starting an IDR, and a middle fragment of one.
        assert!(h264_is_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!h264_is_keyframe(&[0x7c, 0x05, 0x00]));
    }

    #[test]
    fn vp9_and_av1_keyframes() {
        assert!(vp9_is_keyframe(&[0x08]));
        assert!(!vp9_is_keyframe(&[0x48]));
        assert!(!vp9_is_keyframe(&[0x00]));
        assert!(av1_is_keyframe(&[0x08]));
        assert!(!av1_is_keyframe(&[0x10]));
    }

    #[test]
    fn codec_from_mime_is_case_insensitive() {
        assert_eq!(VideoCodec::from_mime("video/VP8"), VideoCodec::Vp8);
        assert_eq!(VideoCodec::from_mime("video/h264"), VideoCodec::H264);
        assert_eq!(VideoCodec::from_mime("video/H265"), VideoCodec::Other);
    }
}
