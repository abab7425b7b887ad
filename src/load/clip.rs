//! A VP8 clip in an IVF file, for publishers that send real video.
//!
//! The project's clip (`assets/testsrc-vp8.ivf`) is made by `scripts/make-clip.sh` with
//! ffmpeg from its `testsrc` pattern.

use bytes::Bytes;

/// The clip the repository ships, embedded so `switchboard load --clip builtin` works anywhere.
pub const BUILTIN: &[u8] = include_bytes!("../../assets/testsrc-vp8.ivf");

#[derive(Debug, Clone)]
pub struct Frame {
    pub data: Bytes,
    pub keyframe: bool,
}

#[derive(Debug, Clone)]
pub struct Clip {
    pub frames: Vec<Frame>,
    pub frame_rate: u32,
    pub width: u16,
    pub height: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClipError {
    #[error("not an IVF file (no DKIF signature)")]
    NotIvf,
    #[error("the IVF file holds {0}, not VP8")]
    NotVp8(String),
    #[error("the IVF file is cut short at byte {0}")]
    Truncated(usize),
    #[error("the clip has no keyframe")]
    NoKeyframe,
}

impl Clip {
    /// Parses an IVF file: a 32-byte header, then frames each behind a 12-byte header.
    pub fn from_ivf(data: &[u8]) -> Result<Clip, ClipError> {
        if data.len() < 32 || &data[0..4] != b"DKIF" {
            return Err(ClipError::NotIvf);
        }
        let fourcc = &data[8..12];
        if fourcc != b"VP80" {
            return Err(ClipError::NotVp8(
                String::from_utf8_lossy(fourcc).into_owned(),
            ));
        }
        let width = u16::from_le_bytes([data[12], data[13]]);
        let height = u16::from_le_bytes([data[14], data[15]]);
        let rate = u32::from_le_bytes([data[16], data[17], data[18], data[19]]);
        let scale = u32::from_le_bytes([data[20], data[21], data[22], data[23]]).max(1);
        let header_len = u16::from_le_bytes([data[6], data[7]]) as usize;
        let mut offset = header_len.max(32);
        let mut frames = Vec::new();
        while offset < data.len() {
            let header = data
                .get(offset..offset + 12)
                .ok_or(ClipError::Truncated(offset))?;
            let size = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let body = data
                .get(offset + 12..offset + 12 + size)
                .ok_or(ClipError::Truncated(offset))?;
            // A VP8 frame tag's lowest bit is 0 on a key frame.
            let keyframe = body.first().is_some_and(|b| b & 0x01 == 0);
            frames.push(Frame {
                data: Bytes::copy_from_slice(body),
                keyframe,
            });
            offset += 12 + size;
        }
        if !frames.iter().any(|f| f.keyframe) {
            return Err(ClipError::NoKeyframe);
        }
        // IVF's time base is scale/rate seconds per tick; ffmpeg writes 1/fps.
        let frame_rate = (rate / scale).clamp(1, 120);
        Ok(Clip {
            frames,
            frame_rate,
            width,
            height,
        })
    }

    pub fn builtin() -> Result<Clip, ClipError> {
        Clip::from_ivf(BUILTIN)
    }

    /// The index of the first keyframe at or after `from`, wrapping around.
    pub fn next_keyframe(&self, from: usize) -> usize {
        let n = self.frames.len();
        (0..n)
            .map(|i| (from + i) % n)
            .find(|&i| self.frames[i].keyframe)
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_builtin_clip() {
        let clip = Clip::builtin().expect("the shipped clip parses");
        assert!(clip.frames.len() >= 30);
        assert!(clip.frames[0].keyframe, "a clip starts on a keyframe");
        assert_eq!(clip.frame_rate, 30);
        assert!(clip.width > 0 && clip.height > 0);
        let second_key = clip.next_keyframe(1);
        assert!(second_key == 0 || clip.frames[second_key].keyframe);
    }

    #[test]
    fn refuses_what_is_not_a_vp8_ivf() {
        assert_eq!(Clip::from_ivf(b"nope").unwrap_err(), ClipError::NotIvf);
        let mut header = vec![0u8; 32];
        header[0..4].copy_from_slice(b"DKIF");
        header[8..12].copy_from_slice(b"AV01");
        assert!(matches!(Clip::from_ivf(&header), Err(ClipError::NotVp8(_))));
        header[8..12].copy_from_slice(b"VP80");
        header.extend_from_slice(&[100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(
            Clip::from_ivf(&header).unwrap_err(),
            ClipError::Truncated(32)
        );
    }
}
