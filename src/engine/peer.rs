//! The server's peer connections: what a worker keeps of each ([`Peer`]), and how each is
//! built ([`PeerSettings`]): codecs, header extensions, interceptors, ICE lite on the shared
//! address, SRTP profiles, one DTLS certificate for the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::crypto::RTCCryptoProvider;
use rtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{
    NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot, TwccReceiverBuilder,
};
use rtc::peer_connection::certificate::{CertificateParams, RTCCertificate};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::{
    SctpMaxMessageSize, SettingEngineBuilder,
};
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpHeaderExtensionCapability, RtpCodecKind, TYPE_RTCP_FB_GOOG_REMB,
    TYPE_RTCP_FB_NACK, TYPE_RTCP_FB_TRANSPORT_CC,
};

use crate::engine::congestion::{BweSettings, Congestion};
use crate::engine::feedback::{FeedbackInterceptor, UplinkReports};
use crate::engine::srtp::Writer;
use crate::engine::udp;
use crate::engine::EngineError;
use crate::engine::PcKind;
use crate::media::extensions::NEGOTIATED;
use crate::media::kind::TrackKind;
use crate::metrics::Metrics;

/// One of a worker's peer connections.
pub struct Peer {
    pub pc: RTCPeerConnection,
    /// The participant it belongs to (the worker's key for it).
    pub owner: usize,
    pub role: PcKind,
    pub ufrag: String,
    pub connected: bool,
    /// Has output to drain at the end of the batch.
    pub dirty: bool,
    pub remote_candidates: usize,
    /// Connectivity checks that arrived before the answer told us the client's credentials
    /// (the client starts checking as soon as it has our offer, and its answer may come later
    /// over the WebSocket): replayed once it is applied, rather than left to the client's
    /// retry ~200 ms later.
    pub early_checks: Vec<udp::Incoming>,
    /// Who protects the media it forwards (subscriber connections).
    pub srtp: Writer,
    /// Its downlink's estimate (subscriber connections, unless estimation is off).
    pub congestion: Option<Congestion>,
    /// When it was made, and whether it ever connected: one that never comes up is given up
    /// after a while.
    pub created: Instant,
    pub ever_connected: bool,
}

impl Peer {
    pub fn new(
        pc: RTCPeerConnection,
        owner: usize,
        role: PcKind,
        ufrag: String,
        srtp: Writer,
        congestion: Option<Congestion>,
        created: Instant,
    ) -> Self {
        Peer {
            pc,
            owner,
            role,
            ufrag,
            connected: false,
            dirty: false,
            remote_candidates: 0,
            early_checks: Vec::new(),
            srtp,
            congestion,
            created,
            ever_connected: false,
        }
    }

    /// Queues peer connection `key` (this one) to be drained at the end of the batch, once.
    pub fn mark_dirty(&mut self, key: usize, dirty: &mut Vec<usize>) {
        if !self.dirty {
            self.dirty = true;
            dirty.push(key);
        }
    }
}

/// The SRTP protection profiles the server accepts, by the names `--srtp` takes.
pub fn parse_srtp_profiles(names: &str) -> Result<Vec<SrtpProtectionProfile>, String> {
    let mut profiles = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let profile = match name.to_ascii_lowercase().as_str() {
            "aes128gcm" | "aead_aes_128_gcm" => SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
            "aes256gcm" | "aead_aes_256_gcm" => SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm,
            "aes128cm" | "aes128_cm_hmac_sha1_80" => {
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80
            }
            other => {
                return Err(format!(
                    "unknown SRTP profile {other:?}: use aes128gcm, aes256gcm or aes128cm"
                ))
            }
        };
        if !profiles.contains(&profile) {
            profiles.push(profile);
        }
    }
    if profiles.is_empty() {
        return Err("--srtp needs at least one profile".into());
    }
    Ok(profiles)
}

/// What every server peer connection shares.
pub struct PeerSettings {
    /// The addresses announced as host candidates (the shared UDP port on each IP).
    pub candidates: Vec<SocketAddr>,
    pub srtp_profiles: Vec<SrtpProtectionProfile>,
    pub certificate: RTCCertificate,
    pub metrics: Arc<Metrics>,
    /// The data channel's largest message (SDP `max-message-size`): each subscriber PC keeps
    /// a reassembly buffer that large, so it is sized for chat, not the stack's 64 KiB.
    pub sctp_max_message_bytes: u32,
    /// A bandwidth estimate per subscriber connection (`None`: off).
    pub bwe: Option<BweSettings>,
}

/// The largest chat message on the data channel for texts of up to `max_chat_bytes`: JSON may
/// escape each byte as `\u00XX` (six), plus the sender's name and ids.
pub fn sctp_max_message_for_chat(max_chat_bytes: usize) -> u32 {
    u32::try_from(max_chat_bytes.saturating_mul(6).saturating_add(2048)).unwrap_or(u32::MAX)
}

/// With ICE lite the server never checks: a client's Binding requests are all it hears.
/// Browsers send one every ~2.5 s, aiortc every 4–6 s: give them room before "disconnected".
const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(12);
const ICE_FAILED_AFTER: Duration = Duration::from_secs(25);

impl PeerSettings {
    pub fn new(
        candidates: Vec<SocketAddr>,
        srtp_profiles: Vec<SrtpProtectionProfile>,
        metrics: Arc<Metrics>,
        sctp_max_message_bytes: u32,
        bwe: Option<BweSettings>,
    ) -> Result<Self, EngineError> {
        let provider = rtc::crypto::default_provider()
            .map_err(|e| EngineError::Rtc(format!("crypto provider: {e}")))?;
        let params = CertificateParams::new(vec!["switchboard".to_owned()])
            .map_err(|e| EngineError::Rtc(format!("certificate parameters: {e}")))?;
        let certificate = RTCCertificate::generate(
            provider.crypto(),
            rtc::crypto::SignatureScheme::EcdsaP256Sha256,
            params,
        )
        .map_err(|e| EngineError::Rtc(format!("generating the DTLS certificate: {e}")))?;
        Ok(PeerSettings {
            candidates,
            srtp_profiles,
            certificate,
            metrics,
            sctp_max_message_bytes,
            bwe,
        })
    }

    /// A server peer connection with local credentials `ufrag`/`pwd`, its host candidates
    /// already added (they go into every SDP it writes, followed by end-of-candidates).
    ///
    /// Each role gets only the interceptors it uses: every packet walks the whole chain, so
    /// one that does nothing still costs a copy per packet per subscriber.
    /// - publisher (receives): NACKs for uplink loss, receiver reports, TWCC feedback (the
    ///   publisher's own bandwidth estimate runs on it);
    /// - subscriber (sends): none of the stack's. The worker answers NACKs from one history
    ///   per published track and writes the sender reports itself: a send buffer per
    ///   subscriber would copy every header and hold ~45 KiB per video stream. With a
    ///   bandwidth estimate it offers transport-wide feedback (and REMB, for clients without
    ///   it); the worker numbers what it sends and reads the feedback ([`Congestion`]).
    ///
    /// `crypto` replaces the default crypto provider (a subscriber's [`KeyTap`]).
    ///
    /// [`KeyTap`]: crate::engine::srtp::KeyTap
    pub fn build(
        &self,
        role: PcKind,
        ufrag: &str,
        pwd: &str,
        now: Instant,
        crypto: Option<Arc<dyn RTCCryptoProvider>>,
    ) -> Result<RTCPeerConnection, EngineError> {
        let rtc_err =
            |what: &str, e: rtc::shared::error::Error| EngineError::Rtc(format!("{what}: {e}"));
        let mut media_engine = MediaEngine::default();
        match role {
            PcKind::Publisher => register_publisher_codecs(&mut media_engine),
            PcKind::Subscriber => media_engine.register_default_codecs(),
        }
        .map_err(|e| rtc_err("registering codecs", e))?;
        register_extensions(&mut media_engine).map_err(|e| rtc_err("registering extensions", e))?;
        for parameter in ["", "pli"] {
            media_engine.register_feedback(
                RTCPFeedback {
                    typ: TYPE_RTCP_FB_NACK.to_owned(),
                    parameter: parameter.to_owned(),
                },
                RtpCodecKind::Video,
            );
        }
        let registry = match role {
            PcKind::Publisher => {
                register_twcc(&mut media_engine).map_err(|e| rtc_err("registering TWCC", e))?;
                register_simulcast(&mut media_engine)
                    .map_err(|e| rtc_err("registering simulcast", e))?;
                Registry::new()
                    // First in, last out: it sees what the others generate.
                    .with(
                        Slot::from(500usize),
                        UplinkReports::new(self.metrics.clone()),
                    )
                    .with(
                        Slot::NackGenerator,
                        NackGeneratorBuilder::new()
                            .with_max_nacks_per_packet(MAX_NACKS_PER_PACKET)
                            .build(),
                    )
                    .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build())
                    .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            }
            PcKind::Subscriber => {
                if self.bwe.is_some() {
                    register_twcc(&mut media_engine).map_err(|e| rtc_err("registering TWCC", e))?;
                    media_engine.register_feedback(
                        RTCPFeedback {
                            typ: TYPE_RTCP_FB_GOOG_REMB.to_owned(),
                            parameter: String::new(),
                        },
                        RtpCodecKind::Video,
                    );
                }
                Registry::new()
            }
        };
        // Last in the chain inbound: it lets keyframe requests and NACKs through to the worker.
        let registry = registry.with(
            Slot::from(14_000usize),
            FeedbackInterceptor::new(self.metrics.clone()),
        );
        let mut settings = SettingEngineBuilder::new();
        if let Some(crypto) = crypto {
            settings = settings.with_crypto_provider(crypto);
        }
        let settings = settings
            // mDNS would send multicast off the machine and hide our addresses: off.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_lite(true)
            .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), None)
            .with_srtp_protection_profiles(self.srtp_profiles.clone())
            .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(self.sctp_max_message_bytes))
            .build();
        let configuration = RTCConfigurationBuilder::new()
            .with_certificates(vec![self.certificate.clone()])
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(|e| rtc_err("building a peer connection", e))?;
        for &addr in &self.candidates {
            pc.add_local_candidate(host_candidate(addr)?)
                .map_err(|e| rtc_err("adding a candidate", e))?;
        }
        // End of candidates: there will be no others.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(|e| rtc_err("ending candidates", e))?;
        Ok(pc)
    }
}

/// Most times one packet lost on a publisher's uplink is asked for again (every 100 ms): a
/// packet that does not come after that is past its frame's use.
const MAX_NACKS_PER_PACKET: u16 = 2;

/// What publishers may send: the stack's default codecs without RTX (RFC 4588). Browsers then
/// retransmit a NACKed packet as it was, on its own SSRC, with its own sequence number and RID:
/// the NACK generator sees the loss repaired and stops asking (it never sees into an RTX
/// packet, and kept asking 8–9 times for each), and a simulcast layer's repairs reach its
/// subscribers (the stack unwraps RTX only for streams signalled with `ssrc-group:FID`, which
/// RID-based simulcast does not use).
fn register_publisher_codecs(media_engine: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    use rtc::peer_connection::configuration::media_engine::{
        MIME_TYPE_AV1, MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MIME_TYPE_VP9,
    };
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};
    // NACK and PLI are registered for every video codec with the rest of the feedback.
    let video_feedback = vec![RTCPFeedback {
        typ: "ccm".to_owned(),
        parameter: "fir".to_owned(),
    }];
    media_engine.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: RTCRtpCodec {
                mime_type: MIME_TYPE_OPUS.to_owned(),
                clock_rate: 48_000,
                channels: 2,
                sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                rtcp_feedback: Vec::new(),
            },
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )?;
    let h264 = |mode: u8, profile: &str| {
        format!("level-asymmetry-allowed=1;packetization-mode={mode};profile-level-id={profile}")
    };
    for (payload_type, mime_type, fmtp) in [
        (96, MIME_TYPE_VP8, String::new()),
        (98, MIME_TYPE_VP9, "profile-id=0".to_owned()),
        (100, MIME_TYPE_VP9, "profile-id=1".to_owned()),
        (102, MIME_TYPE_H264, h264(1, "42001f")),
        (127, MIME_TYPE_H264, h264(0, "42001f")),
        (125, MIME_TYPE_H264, h264(1, "42e01f")),
        (108, MIME_TYPE_H264, h264(0, "42e01f")),
        (123, MIME_TYPE_H264, h264(1, "640032")),
        (41, MIME_TYPE_AV1, "profile-id=0".to_owned()),
    ] {
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime_type.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp,
                    rtcp_feedback: video_feedback.clone(),
                },
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    Ok(())
}

/// Transport-wide congestion control feedback towards publishers.
fn register_twcc(media_engine: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        media_engine.register_feedback(
            RTCPFeedback {
                typ: TYPE_RTCP_FB_TRANSPORT_CC.to_owned(),
                parameter: String::new(),
            },
            kind,
        );
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: rtc::sdp::extmap::TRANSPORT_CC_URI.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(())
}

/// RID-based simulcast from publishers (RFC 8852): each stream names its layer.
fn register_simulcast(media_engine: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    for uri in [
        rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI,
        rtc::sdp::extmap::SDES_REPAIR_RTP_STREAM_ID_URI,
    ] {
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            RtpCodecKind::Video,
            None,
        )?;
    }
    Ok(())
}

/// The header extensions of [`NEGOTIATED`].
fn register_extensions(media_engine: &mut MediaEngine) -> rtc::shared::error::Result<()> {
    for (uri, kind) in NEGOTIATED {
        let kind = match kind {
            TrackKind::Audio => RtpCodecKind::Audio,
            TrackKind::Video => RtpCodecKind::Video,
        };
        media_engine.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: uri.to_owned(),
            },
            kind,
            None,
        )?;
    }
    Ok(())
}

fn host_candidate(addr: SocketAddr) -> Result<RTCIceCandidateInit, EngineError> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(|e| EngineError::Rtc(format!("host candidate {addr}: {e}")))?;
    RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(|e| EngineError::Rtc(format!("host candidate {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtp_profiles_parse_in_order_of_preference() {
        assert_eq!(
            parse_srtp_profiles("aes128gcm, aes128cm").unwrap(),
            vec![
                SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm,
                SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80
            ]
        );
        assert!(parse_srtp_profiles("rot13").is_err());
        assert!(parse_srtp_profiles("").is_err());
    }

    #[test]
    fn a_peer_connection_offers_our_candidate_ice_lite_and_fixed_credentials() {
        let settings = PeerSettings::new(
            vec!["192.0.2.7:7882".parse().unwrap()],
            parse_srtp_profiles("aes128gcm,aes128cm").unwrap(),
            Arc::new(Metrics::default()),
            sctp_max_message_for_chat(4096),
            None,
        )
        .unwrap();
        let mut pc = settings
            .build(
                PcKind::Subscriber,
                "00abcdefgh",
                "passwordpasswordpassword",
                Instant::now(),
                None,
            )
            .unwrap();
        pc.create_data_channel("chat", None).unwrap();
        let offer = pc.create_offer(None).unwrap();
        assert!(offer.sdp.contains("a=ice-lite"), "{}", offer.sdp);
        assert!(offer.sdp.contains("a=ice-ufrag:00abcdefgh"));
        assert!(
            offer.sdp.contains("192.0.2.7 7882 typ host"),
            "{}",
            offer.sdp
        );
        assert!(offer.sdp.contains("a=end-of-candidates"));
        assert!(
            offer.sdp.contains("a=max-message-size:26624"),
            "{}",
            offer.sdp
        );
    }
}
