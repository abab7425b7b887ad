//! The test and load clients' peer connections, on webrtc-rs's async layer (the `webrtc`
//! crate): one socket and one driver task per connection, which is fine for a client and
//! keeps the two sides of every test independent implementations.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rtc::ice::mdns::MulticastDnsMode;
use webrtc::peer_connection::{
    configure_nack, configure_rtcp_reports, configure_simulcast_extension_headers, configure_twcc,
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, Registry, SettingEngine, SettingEngineBuilder,
};

use crate::load::bottleneck::{Link, LinkConfig, ShapedSocket, SharedLink};
use crate::load::error::ClientError;
use crate::load::feedback::ClientFeedback;
use crate::load::wire::{Candidate, TrackKind};
use crate::metrics::Metrics;

/// The boxed peer connection type the rest of the code holds.
pub type Pc = Arc<PcHandle>;

/// Builds the clients' peer connections, each on its own ephemeral UDP port on `bind_ip`.
pub struct PcFactory {
    bind_ip: IpAddr,
    metrics: Arc<Metrics>,
    /// The emulated downlink in front of the subscriber PC's socket (transparent unless set).
    downlink: SharedLink,
}

impl PcFactory {
    /// Clients on loopback, as the tests and the load tester run them.
    pub fn loopback(metrics: Arc<Metrics>) -> Self {
        PcFactory {
            bind_ip: IpAddr::from([127, 0, 0, 1]),
            metrics,
            downlink: Arc::new(std::sync::Mutex::new(Link::new(LinkConfig::default(), 0))),
        }
    }

    /// The subscriber PC receives through `link`.
    pub fn with_downlink(mut self, link: Link) -> Self {
        self.downlink = Arc::new(std::sync::Mutex::new(link));
        self
    }

    /// The emulated downlink, to change or read while it runs.
    pub fn downlink(&self) -> &SharedLink {
        &self.downlink
    }

    fn setting_engine(&self) -> SettingEngine {
        SettingEngineBuilder::new()
            // mDNS would send multicast packets off the machine and hide our IPs: off.
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(self.bind_ip.is_loopback())
            // Retransmissions come on the media's own SSRC, a round trip or more behind the
            // newest packet: Chromium keeps 1,024 packets of SRTP replay window for that,
            // where the default 64 would refuse a repair of a fast stream as a replay.
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .build()
    }

    /// Builds one peer connection on an ephemeral port.
    pub async fn build(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Pc, ClientError> {
        let pc = self
            .build_on(SocketAddr::new(self.bind_ip, 0), handler, None)
            .await?;
        Ok(Arc::new(PcHandle::new(Box::new(pc), self.metrics.clone())))
    }

    /// Builds the subscriber's peer connection: what it receives comes through the emulated
    /// downlink.
    pub async fn build_subscriber(
        &self,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Pc, ClientError> {
        let addr = SocketAddr::new(self.bind_ip, 0);
        let pc = self
            .build_on(addr, handler, Some(self.downlink.clone()))
            .await?;
        Ok(Arc::new(PcHandle::new(Box::new(pc), self.metrics.clone())))
    }

    async fn build_on(
        &self,
        addr: SocketAddr,
        handler: Arc<dyn PeerConnectionEventHandler>,
        downlink: Option<SharedLink>,
    ) -> Result<impl PeerConnection, ClientError> {
        let mut media_engine = MediaEngine::default();
        media_engine
            .register_default_codecs()
            .map_err(|e| ClientError::Rtc(format!("registering codecs: {e}")))?;
        let registry = interceptors(&mut media_engine)
            .map_err(|e| ClientError::Rtc(format!("registering interceptors: {e}")))?
            // Last in the chain: it sees inbound feedback after the NACK responder and the
            // outbound NACKs the generator made.
            .with(
                interceptor::Slot::from(14_000usize),
                ClientFeedback::new(self.metrics.clone()),
            );
        let configuration = RTCConfigurationBuilder::new().build();
        PeerConnectionBuilder::new()
            .with_runtime(Arc::new(SizedSocketsRuntime {
                runtime: webrtc::runtime::TokioRuntime,
                downlink,
            }))
            .with_configuration(configuration)
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_setting_engine(self.setting_engine())
            .with_handler(handler)
            .with_udp_addrs(vec![addr])
            .build()
            .await
            .map_err(|e| ClientError::Rtc(format!("building a peer connection on {addr}: {e}")))
    }
}

const SRTP_REPLAY_WINDOW: usize = 1024;
/// Packets the NACK generator keeps track of per stream.
const NACK_LOG_PACKETS: u16 = 8192;

/// Receive buffer of each client socket. The kernel's default (about 208 KiB, some 160
/// datagrams) holds 30 ms of a fast stream: a client whose driver is kept off the CPU that long
/// on a busy machine loses what arrives meanwhile. Browsers size theirs up too.
const SOCKET_RECEIVE_BUFFER: usize = 4 << 20;

/// webrtc-rs's tokio runtime, with every UDP socket's receive buffer sized for the rate, and
/// what it receives put through an emulated downlink when there is one.
struct SizedSocketsRuntime {
    runtime: webrtc::runtime::TokioRuntime,
    downlink: Option<SharedLink>,
}

impl std::fmt::Debug for SizedSocketsRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizedSocketsRuntime")
            .field("runtime", &self.runtime)
            .field("shaped", &self.downlink.is_some())
            .finish()
    }
}

impl webrtc::runtime::Runtime for SizedSocketsRuntime {
    fn spawn(
        &self,
        future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.runtime.spawn(future)
    }

    fn spawn_reactor(
        &self,
        pool_size: usize,
        future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.runtime.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn webrtc::runtime::AsyncUdpSocket>> {
        set_receive_buffer(&socket, SOCKET_RECEIVE_BUFFER);
        let socket = self.runtime.wrap_udp_socket(socket)?;
        Ok(match &self.downlink {
            Some(link) => Arc::new(ShapedSocket::new(socket, link.clone())),
            None => socket,
        })
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn webrtc::runtime::AsyncTcpListener>> {
        self.runtime.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::io::Result<Arc<dyn webrtc::runtime::AsyncTcpStream>>,
                > + Send
                + 'a,
        >,
    > {
        self.runtime.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>,
    > {
        self.runtime.resolve_host(host)
    }

    fn sleep(
        &self,
        duration: std::time::Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        self.runtime.sleep(duration)
    }

    fn interval(&self, period: std::time::Duration) -> Box<dyn webrtc::runtime::AsyncInterval> {
        self.runtime.interval(period)
    }

    fn block_on(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>) {
        self.runtime.block_on(future)
    }

    fn yield_now(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        self.runtime.yield_now()
    }

    fn name(&self) -> &'static str {
        self.runtime.name()
    }
}

/// Asks for `bytes` of receive buffer: past `net.core.rmem_max` when privileged
/// (SO_RCVBUFFORCE), else as much as that allows.
fn set_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt reads one c_int from the pointer it is given, for its size.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        let _ = socket2::SockRef::from(socket).set_recv_buffer_size(bytes);
    }
}

/// The interceptors an SFU leg needs, both ways: NACK generation (towards publishers) and
/// answering NACKs from a send buffer (towards subscribers), sender and receiver reports, and
/// transport-wide congestion control feedback in both directions.
fn interceptors(media_engine: &mut MediaEngine) -> webrtc::error::Result<Registry> {
    let registry = configure_nack(Registry::new(), media_engine);
    // configure_nack's generator remembers 512 packets: a tenth of a second of a fast stream,
    // after which a loss is forgotten unasked. Ours remembers 8,192, as a browser asks for
    // what it lost in the last second or so, whatever the rate.
    let registry = registry.with(
        interceptor::Slot::NackGenerator,
        interceptor::NackGeneratorBuilder::new()
            .with_size(NACK_LOG_PACKETS)
            .build(),
    );
    configure_simulcast_extension_headers(media_engine)?;
    register_header_extensions(media_engine)?;
    let registry = configure_twcc(registry, media_engine)?;
    Ok(configure_rtcp_reports(registry))
}

/// The header extensions this client offers and accepts, as a browser does: the stream's
/// `sdes:mid` on both kinds (RFC 8843; the stack's simulcast set has it for video only), the
/// audio level (RFC 6464), abs-send-time on both kinds, and on video the orientation
/// (3GPP TS 26.114) and playout delay. `docs/protocol.md` says the server forwards these when
/// both sides negotiated them.
pub const HEADER_EXTENSIONS: [(&str, TrackKind); 7] = [
    ("urn:ietf:params:rtp-hdrext:sdes:mid", TrackKind::Audio),
    ("urn:ietf:params:rtp-hdrext:sdes:mid", TrackKind::Video),
    (
        "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        TrackKind::Audio,
    ),
    (
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        TrackKind::Audio,
    ),
    (
        "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        TrackKind::Video,
    ),
    ("urn:3gpp:video-orientation", TrackKind::Video),
    (
        "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay",
        TrackKind::Video,
    ),
];

/// Registers [`HEADER_EXTENSIONS`].
fn register_header_extensions(media_engine: &mut MediaEngine) -> webrtc::error::Result<()> {
    use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
    for (uri, kind) in HEADER_EXTENSIONS {
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

/// The stack's candidate as the protocol carries it.
pub fn candidate_from_init(init: webrtc::peer_connection::RTCIceCandidateInit) -> Candidate {
    Candidate {
        candidate: init.candidate,
        sdp_mid: init.sdp_mid,
        sdp_mline_index: init.sdp_mline_index,
        username_fragment: init.username_fragment,
    }
}

/// A candidate from the protocol, for the stack.
pub fn candidate_to_init(c: Candidate) -> webrtc::peer_connection::RTCIceCandidateInit {
    webrtc::peer_connection::RTCIceCandidateInit {
        candidate: c.candidate,
        sdp_mid: c.sdp_mid,
        sdp_mline_index: c.sdp_mline_index,
        username_fragment: c.username_fragment,
        url: None,
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
