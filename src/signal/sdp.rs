//! What the server reads of a client's SDP before handing it to the media engine: which
//! media sections it sends and under which track ids.

/// A media section of an SDP, as far as publishing cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    pub kind: String,
    pub track_id: Option<String>,
    /// Sends media towards the answerer (sendrecv or sendonly, port not 0).
    pub sending: bool,
}

/// Reads the media sections of an offer without a full SDP parser: enough to count what a
/// publisher sends and to see which tracks it stopped sending.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut sections: Vec<MediaSection> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(m) = line.strip_prefix("m=") {
            let mut parts = m.split_whitespace();
            let kind = parts.next().unwrap_or_default().to_string();
            let port_open = parts.next().is_some_and(|p| p != "0");
            sections.push(MediaSection {
                kind,
                track_id: None,
                sending: port_open,
            });
            continue;
        }
        let Some(section) = sections.last_mut() else {
            continue;
        };
        if let Some(msid) = line.strip_prefix("a=msid:") {
            section.track_id = msid.split_whitespace().nth(1).map(str::to_string);
        } else if line == "a=recvonly" || line == "a=inactive" {
            section.sending = false;
        }
    }
    sections
        .into_iter()
        .map(|mut s| {
            s.sending &= s.kind == "audio" || s.kind == "video";
            s
        })
        .collect()
}

/// What makes an SDP expensive for the media engine, counted in one cheap pass so that
/// an offer over the limits is refused before anything parses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SdpCounts {
    /// `a=candidate` lines.
    pub candidates: usize,
    /// `m=` lines.
    pub media_sections: usize,
}

pub fn count(sdp: &str) -> SdpCounts {
    let mut counts = SdpCounts::default();
    for line in sdp.lines() {
        if line.starts_with("a=candidate") {
            counts.candidates += 1;
        } else if line.starts_with("m=") {
            counts.media_sections += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sending_media_sections_and_their_track_ids() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s1 a1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=msid:s1 v1\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\na=msid:s1 v2\r\n\
m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=msid:s1 v3\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n";
        let sending: Vec<_> = media_sections(sdp)
            .into_iter()
            .filter(|s| s.sending)
            .filter_map(|s| s.track_id)
            .collect();
        assert_eq!(sending, vec!["a1", "v1"]);
        assert_eq!(media_sections(sdp).len(), 5);
        assert!(media_sections("garbage").is_empty());
    }

    #[test]
    fn counts_candidates_and_media_sections() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 192.0.2.1 9 typ host\r\n\
a=candidate:2 1 udp 1 192.0.2.2 9 typ host\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=end-of-candidates\r\n";
        assert_eq!(
            count(sdp),
            SdpCounts {
                candidates: 2,
                media_sections: 2
            }
        );
        assert_eq!(count(""), SdpCounts::default());
    }
}
