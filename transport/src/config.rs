//! Configuration of edge and device, with defaults and the reasons for them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenStore;
use crate::tls::{ClientIdentity, ServerIdentity, ServerTrust};
use crate::wire::{Capabilities, Secret, SessionLimits, StreamConfig};

/// The QUIC congestion controller of a connection's sending side.
///
/// BBR is the default: it paces to the measured delivery rate and the minimum RTT and
/// does not read random packet loss as congestion. Cubic (quinn's default) halves its
/// window on every loss, which on a lossy radio path starves the frame rate: on the
/// emulated link (`splitstream-bench link`, 1% loss, 100 ms RTT, 10 Mbit/s, 30 fps of
/// 10 KiB) Cubic answered 139 of 300 frames and BBR all 300 (docs/transport.md).
/// quinn marks its BBR experimental; `cubic` is kept to choose where that matters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// BBR (quinn's port of quiche's BBRv1).
    #[default]
    Bbr,
    /// CUBIC, loss-based (RFC 9438).
    Cubic,
}

impl CongestionControl {
    /// The controller factory quinn's transport config takes.
    pub(crate) fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            Self::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Self::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
        }
    }
}

impl std::str::FromStr for CongestionControl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bbr" => Ok(Self::Bbr),
            "cubic" => Ok(Self::Cubic),
            other => Err(format!(
                "unknown congestion controller {other:?} (bbr, cubic)"
            )),
        }
    }
}

impl std::fmt::Display for CongestionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Bbr => "bbr",
            Self::Cubic => "cubic",
        })
    }
}

/// Per-connection limits the edge enforces. Everything a peer can make the edge hold is
/// bounded by one of these.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Frames one device may have in flight. Default 8: a pipelined device needs 2-3
    /// (one computing, one on the wire, one being answered); more only queues frames
    /// that latest-frame-wins would discard anyway.
    pub max_in_flight: u32,
    /// Largest frame payload. Default 4 MiB: a ViT-B/16 token tensor in f32 is 605 KB
    /// and a full-offload JPEG well under 1 MB; 4 MiB leaves room without letting one
    /// frame pin much memory.
    pub max_frame_payload: u32,
    /// Largest result payload. Default 1 MiB: results are logits, boxes or tokens.
    pub max_result_payload: u32,
    /// Largest control message. Default 64 KiB: a `Hello` is a few hundred bytes; codec
    /// parameter blocks are small.
    pub max_control_message: u32,
    /// Connection-level receive window (bytes in flight towards us). Default 16 MiB:
    /// enough for a few full-size frames at once, and the hard bound on what a device
    /// can make the edge buffer.
    pub connection_receive_window: u32,
    /// Per-stream receive window. Default max_frame_payload + 64 KiB, so one frame can
    /// arrive without waiting for a window update.
    pub stream_receive_window: u32,
    /// How long a new connection has to finish TLS and send `Hello`. Default 5 s: a
    /// handshake takes one or two round trips; a peer slower than that is broken or a
    /// slowloris.
    pub handshake_timeout: Duration,
    /// How long a frame stream may take to deliver header and payload. Default 5 s:
    /// frames have deadlines of tens of milliseconds, so a stream this slow is stalled.
    pub frame_read_timeout: Duration,
    /// How often the edge sends `Status`. Default 500 ms: fast enough for the device's
    /// policy to react to load within a second, cheap (a 20-byte message).
    pub status_interval: Duration,
    /// Shortest gap between two `Status` messages when the runtime pushes changes.
    /// Default 50 ms: changes reach devices quickly without flooding the link.
    pub status_min_gap: Duration,
    /// QUIC idle timeout. Default 5 s: a silently vanished peer is declared gone after
    /// it (an explicit close or reset is seen at once). With the 1 s keep-alive, about
    /// four lost keep-alives in a row.
    pub idle_timeout: Duration,
    /// QUIC keep-alive interval. Default 1 s: keeps NAT bindings and lets the idle timer
    /// detect loss even when no frames flow.
    pub keep_alive_interval: Duration,
    /// Congestion controller for what the edge sends (answers). Default BBR.
    pub congestion: CongestionControl,
}

impl Default for Limits {
    fn default() -> Self {
        let max_frame_payload = 4 << 20;
        Self {
            max_in_flight: 8,
            max_frame_payload,
            max_result_payload: 1 << 20,
            max_control_message: 64 << 10,
            connection_receive_window: 16 << 20,
            stream_receive_window: max_frame_payload + (64 << 10),
            handshake_timeout: Duration::from_secs(5),
            frame_read_timeout: Duration::from_secs(5),
            status_interval: Duration::from_millis(500),
            status_min_gap: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(1),
            congestion: CongestionControl::default(),
        }
    }
}

impl Limits {
    /// The limits as told to a device in `Welcome`, lowering `max_in_flight` to what
    /// the device asked for (when it asked).
    pub fn session_limits(&self, device_wants_in_flight: u32) -> SessionLimits {
        let max_in_flight = match device_wants_in_flight {
            0 => self.max_in_flight,
            n => n.min(self.max_in_flight),
        };
        SessionLimits {
            max_in_flight,
            max_frame_payload: self.max_frame_payload,
            max_result_payload: self.max_result_payload,
            max_control_message: self.max_control_message,
            status_interval_ms: u32::try_from(self.status_interval.as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// Whether the edge asks devices for client certificates (mTLS).
#[derive(Clone, Debug, Default)]
pub enum ClientAuth {
    /// Tokens only (default): devices are provisioned with a token, not a certificate.
    #[default]
    TokenOnly,
    /// Also require a client certificate signed by one of the CA certificates in this
    /// PEM file; the token is still checked.
    RequireCertificate {
        /// PEM file of CA certificates.
        ca_file: PathBuf,
    },
}

/// Configuration of the edge's [`Server`](crate::Server).
#[derive(Debug)]
pub struct ServerConfig {
    /// Address to listen on (UDP).
    pub bind: SocketAddr,
    /// The edge's certificate and key.
    pub identity: ServerIdentity,
    /// Device ids and tokens.
    pub tokens: TokenStore,
    /// Client certificates (mTLS) or tokens only.
    pub client_auth: ClientAuth,
    /// Per-connection limits.
    pub limits: Limits,
    /// Most connections at once, handshaking or established. Default 1024: each costs
    /// at most the receive window; above this new connections are refused at once.
    pub max_connections: usize,
    /// UDP socket send and receive buffer size to ask the kernel for (it caps the
    /// request at `net.core.rmem_max`/`wmem_max`). Default 4 MiB: the usual ~208 KiB
    /// default overflows when many devices send large frames at once, and each dropped
    /// datagram costs a retransmission and a congestion-window cut. 0 keeps the default.
    pub udp_buffer_bytes: usize,
    /// Oldest protocol version accepted; default [`crate::wire::MIN_PROTOCOL_VERSION`].
    pub min_version: u16,
    /// Newest protocol version accepted; default [`crate::wire::PROTOCOL_VERSION`].
    pub max_version: u16,
}

impl ServerConfig {
    /// A config with default limits.
    pub fn new(bind: SocketAddr, identity: ServerIdentity, tokens: TokenStore) -> Self {
        Self {
            bind,
            identity,
            tokens,
            client_auth: ClientAuth::TokenOnly,
            limits: Limits::default(),
            max_connections: 1024,
            udp_buffer_bytes: 4 << 20,
            min_version: crate::wire::MIN_PROTOCOL_VERSION,
            max_version: crate::wire::PROTOCOL_VERSION,
        }
    }
}

/// How the device reconnects after losing the edge.
#[derive(Clone, Debug)]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all. Default true.
    pub enabled: bool,
    /// First delay. Default 100 ms: a restarting edge is often back within a second.
    pub initial_delay: Duration,
    /// Delay cap. Default 10 s: bounds the time a device runs locally after the edge
    /// returns, while a fleet of devices does not hammer a recovering edge.
    pub max_delay: Duration,
    /// Give up after this many failed attempts in a row; `None` (default) never gives up
    /// (a device can always run locally meanwhile).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

/// Configuration of the device's [`Client`](crate::Client).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The edge's address.
    pub server_addr: SocketAddr,
    /// Name the edge's certificate must carry (SNI; checked with [`ServerTrust::CaFile`]).
    pub server_name: String,
    /// How to trust the edge's certificate.
    pub trust: ServerTrust,
    /// Client certificate for mTLS, when the edge requires one.
    pub client_identity: Option<ClientIdentity>,
    /// Device id, as in the edge's token file.
    pub device_id: String,
    /// The device's token.
    pub token: Secret,
    /// Model, split and codec.
    pub stream: StreamConfig,
    /// Capabilities told to the edge.
    pub capabilities: Capabilities,
    /// Local address to bind the UDP socket to. Default `[::]:0` or `0.0.0.0:0`,
    /// matching the edge's address family.
    pub bind: SocketAddr,
    /// Timeout for TLS plus `Hello`/`Welcome`. Default 5 s, like the edge's.
    pub connect_timeout: Duration,
    /// Largest result the device reads. Default 1 MiB (the edge's default too).
    pub max_result_payload: u32,
    /// Largest control message the device reads. Default 64 KiB.
    pub max_control_message: u32,
    /// QUIC idle timeout. Default 5 s (see [`Limits::idle_timeout`]).
    pub idle_timeout: Duration,
    /// QUIC keep-alive. Default 1 s (see [`Limits::keep_alive_interval`]).
    pub keep_alive_interval: Duration,
    /// Congestion controller for the frames the device sends. Default BBR (see
    /// [`CongestionControl`]).
    pub congestion: CongestionControl,
    /// Reconnection after loss.
    pub reconnect: ReconnectPolicy,
    /// Protocol version to announce. Default [`crate::wire::PROTOCOL_VERSION`]; only
    /// tests and compatibility checks change it.
    pub protocol_version: u16,
}

impl ClientConfig {
    /// A config with defaults for everything but the essentials.
    pub fn new(
        server_addr: SocketAddr,
        trust: ServerTrust,
        device_id: impl Into<String>,
        token: impl Into<String>,
        stream: StreamConfig,
    ) -> Self {
        let bind = if server_addr.is_ipv6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        };
        Self {
            server_addr,
            server_name: "localhost".into(),
            trust,
            client_identity: None,
            device_id: device_id.into(),
            token: Secret(token.into()),
            stream,
            capabilities: Capabilities {
                max_in_flight: 0,
                local_fallback: true,
                extensions: Vec::new(),
            },
            bind,
            connect_timeout: Duration::from_secs(5),
            max_result_payload: 1 << 20,
            max_control_message: 64 << 10,
            idle_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(1),
            congestion: CongestionControl::default(),
            reconnect: ReconnectPolicy::default(),
            protocol_version: crate::wire::PROTOCOL_VERSION,
        }
    }
}
