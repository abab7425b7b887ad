//! webrtc-rs setup: codecs, interceptors, ICE settings and socket allocation.
//!
//! Everything that names webrtc-rs configuration types lives here, so that the next breaking
//! release of the stack touches few files.

mod feedback_interceptor;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use rtc::ice::mdns::MulticastDnsMode;
use webrtc::peer_connection::{
    configure_nack, configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc,
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateType, RTCIceServer, Registry, SettingEngine,
    SettingEngineBuilder,
};

use crate::config::{Config, PortRange};
use crate::metrics::Metrics;
use crate::Error;

pub use feedback_interceptor::{is_keyframe_request, FeedbackInterceptor};

/// The boxed peer connection type the rest of the code holds.
pub type Pc = Arc<PcHandle>;

/// How the ICE side of a peer connection is set up.
#[derive(Debug, Clone)]
pub struct IceSettings {
    /// IP to bind UDP sockets on.
    pub bind_ip: IpAddr,
    /// IPs announced instead of the bound ones (NAT 1:1).
    pub public_ips: Vec<IpAddr>,
    /// STUN/TURN servers the peer connection itself uses.
    pub ice_servers: Vec<RTCIceServer>,
    pub ports: Option<PortRange>,
}

impl IceSettings {
    pub fn from_config(config: &Config) -> Self {
        IceSettings {
            bind_ip: config.rtc_ip,
            public_ips: config.public_ip.clone(),
            // The server has a public address of its own or a NAT mapping: it needs no STUN.
            ice_servers: Vec::new(),
            ports: config.udp_ports,
        }
    }

    /// Loopback only, for clients in tests and the load tester.
    pub fn loopback() -> Self {
        IceSettings {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            public_ips: Vec::new(),
            ice_servers: Vec::new(),
            ports: None,
        }
    }
}

/// Builds peer connections with the project's media and ICE settings.
pub struct PcFactory {
    ice: IceSettings,
    next_port: AtomicU32,
    metrics: Arc<Metrics>,
}

impl PcFactory {
    pub fn new(ice: IceSettings, metrics: Arc<Metrics>) -> Self {
        PcFactory {
            next_port: AtomicU32::new(0),
            ice,
            metrics,
        }
    }

    fn setting_engine(&self) -> SettingEngine {
        let mut builder = SettingEngineBuilder::new()
            // mDNS would send multicast packets off the machine and hide our IPs: off.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(self.ice.bind_ip.is_loopback());
        if !self.ice.public_ips.is_empty() {
            builder = builder.with_nat_1to1_ips(
                self.ice
                    .public_ips
                    .iter()
                    .map(|ip| ip.to_string())
                    .collect(),
                RTCIceCandidateType::Host,
            );
        }
        builder.build()
    }

    /// Builds one peer connection, binding its UDP socket in the configured port range.
    pub async fn build(&self, handler: Arc<dyn PeerConnectionEventHandler>) -> Result<Pc, Error> {
        let attempts = self
            .ice
            .ports
            .map(|r| u32::from(r.max - r.min) + 1)
            .unwrap_or(1);
        let mut last_err = None;
        for _ in 0..attempts {
            let port = self.pick_port();
            let addr = SocketAddr::new(self.ice.bind_ip, port);
            match self.build_on(addr, handler.clone()).await {
                Ok(pc) => {
                    return Ok(Arc::new(PcHandle::new(Box::new(pc), self.metrics.clone())));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Rtc("no UDP port available".into())))
    }

    fn pick_port(&self) -> u16 {
        match self.ice.ports {
            None => 0,
            Some(range) => {
                let span = u32::from(range.max - range.min) + 1;
                let n = self.next_port.fetch_add(1, Ordering::Relaxed) % span;
                range.min + n as u16
            }
        }
    }

    async fn build_on(
        &self,
        addr: SocketAddr,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<impl PeerConnection, Error> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .map_err(|e| Error::Rtc(format!("registering codecs: {e}")))?;
        let registry = interceptors(&mut media_engine)
            .map_err(|e| Error::Rtc(format!("registering interceptors: {e}")))?
            // Last in the chain: it sees inbound feedback after the NACK responder and the
            // outbound NACKs the generator made.
            .with(
                interceptor::Slot::from(14_000usize),
                FeedbackInterceptor::new(self.metrics.clone()),
            );
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(self.ice.ice_servers.clone())
            .build();
        PeerConnectionBuilder::new()
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(self.setting_engine())
            .with_handler(handler)
            .with_udp_addrs(vec![addr])
            .build()
            .await
            .map_err(|e| Error::Rtc(format!("building a peer connection on {addr}: {e}")))
    }
}

/// The interceptors an SFU leg needs, both ways: NACK generation (towards publishers) and
/// answering NACKs from a send buffer (towards subscribers), sender and receiver reports, and
/// transport-wide congestion control feedback in both directions.
fn interceptors(media_engine: &mut MediaEngine) -> webrtc::error::Result<Registry> {
    let registry = configure_nack(Registry::new(), media_engine);
    configure_simulcast_extension_headers(media_engine)?;
    register_forwarded_extensions(media_engine)?;
    let registry = configure_twcc(registry, media_engine)?;
    Ok(configure_rtcp_reports(registry))
}

/// The header extensions forwarded from publishers to subscribers, and `sdes:mid` on audio
/// too (the simulcast set registers it for video only).
fn register_forwarded_extensions(media_engine: &mut MediaEngine) -> webrtc::error::Result<()> {
    use crate::media::extensions::{
        ABS_SEND_TIME, AUDIO_LEVEL, PLAYOUT_DELAY, SDES_MID, VIDEO_ORIENTATION,
    };
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
    let wanted = [
        (SDES_MID, RtpCodecKind::Audio),
        (AUDIO_LEVEL, RtpCodecKind::Audio),
        (ABS_SEND_TIME, RtpCodecKind::Audio),
        (ABS_SEND_TIME, RtpCodecKind::Video),
        (VIDEO_ORIENTATION, RtpCodecKind::Video),
        (PLAYOUT_DELAY, RtpCodecKind::Video),
    ];
    for (uri, kind) in wanted {
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

pub fn candidate_from_init(
    init: webrtc::peer_connection::RTCIceCandidateInit,
) -> crate::signal::protocol::Candidate {
    crate::signal::protocol::Candidate {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_mline_index: init.sdp_mline_index,
        username_fragment: init.username_fragment,
    }
}

pub fn candidate_to_init(
    c: crate::signal::protocol::Candidate,
) -> webrtc::peer_connection::RTCIceCandidateInit {
    webrtc::peer_connection::RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        url: None,
    }
}

/// Sends a locally gathered candidate to the participant (trickle ICE).
pub fn relay_candidate(
    participant: &crate::room::Participant,
    pc: crate::signal::protocol::PcKind,
    event: &webrtc::peer_connection::RTCPeerConnectionIceEvent,
) {
    if let Ok(init) = event.candidate.to_json() {
        participant.send(crate::signal::protocol::ServerMessage::Candidate {
            pc,
            candidate: Some(candidate_from_init(init)),
        });
    }
}

/// A peer connection that counts itself in the `peer_connections` gauge while alive.
pub struct PcHandle {
    inner: Box<dyn PeerConnection>,
    metrics: Arc<Metrics>,
}

impl PcHandle {
    fn new(inner: Box<dyn PeerConnection>, metrics: Arc<Metrics>) -> Self {
        Metrics::inc(&metrics.peer_connections);
        PcHandle { inner, metrics }
    }
}

impl Drop for PcHandle {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.peer_connections);
    }
}

impl std::ops::Deref for PcHandle {
    type Target = dyn PeerConnection;
    fn deref(&self) -> &Self::Target {
        &*self.inner
    }
}

pub mod publisher;
pub mod subscriber;
