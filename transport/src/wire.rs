//! The splitstream/1 wire format: control messages, frame headers, answers, error codes,
//! and the length-prefixed framing that carries them.
//!
//! Every message on a stream is a little-endian `u32` length followed by that many bytes
//! of postcard. Frame and result payloads follow their header as raw bytes whose length
//! the header declares. Every length is compared with a cap *before* anything is
//! allocated, so a peer can make us allocate at most the negotiated limits.

use std::fmt;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// TLS application protocol name; a peer that does not offer it fails the TLS handshake.
pub const ALPN: &[u8] = b"splitstream/1";
/// The protocol version this build speaks (sent in `Hello`). Version 2 added the
/// edge's [`EdgeTiming`] to every result; version 3 made results typed answers (the
/// models crate's `Answer`: logits, detections or a token) and split names the model's
/// own.
pub const PROTOCOL_VERSION: u16 = 3;
/// The oldest protocol version this build still accepts (a version-2 result is a bare
/// logits tensor that a version-3 device would misread as an answer).
pub const MIN_PROTOCOL_VERSION: u16 = 3;

/// Application error codes carried by QUIC `CONNECTION_CLOSE`, `RESET_STREAM` and
/// `STOP_SENDING`. They tell the peer (and its logs) why a stream or connection ended.
pub mod code {
    /// Normal end: the peer is done.
    pub const DONE: u32 = 0;
    /// A message could not be decoded (bad postcard, trailing bytes, wrong message kind).
    pub const MALFORMED: u32 = 1;
    /// A declared length exceeded the negotiated cap; nothing was allocated for it.
    pub const TOO_LARGE: u32 = 2;
    /// The `Hello` did not arrive within the handshake timeout.
    pub const HANDSHAKE_TIMEOUT: u32 = 3;
    /// The edge rejected the `Hello` (the reason travels in the `Reject` message).
    pub const REJECTED: u32 = 4;
    /// The device abandoned a frame because a newer one overtook it (latest frame wins).
    pub const OVERTAKEN: u32 = 5;
    /// The device abandoned a frame whose deadline passed.
    pub const DEADLINE: u32 = 6;
    /// The edge is shutting down.
    pub const SHUTDOWN: u32 = 7;
    /// A frame stream did not deliver its header and payload in time (slow peer).
    pub const STREAM_TIMEOUT: u32 = 8;
    /// The edge is at its connection limit.
    pub const SERVER_FULL: u32 = 9;
    /// The device closed the session (or is reconnecting on purpose).
    pub const CLIENT_CLOSED: u32 = 10;

    /// A short name for an error code, for logs and error messages.
    pub fn name(code: u64) -> &'static str {
        match code {
            0 => "done",
            1 => "malformed message",
            2 => "message too large",
            3 => "handshake timeout",
            4 => "rejected",
            5 => "overtaken",
            6 => "deadline passed",
            7 => "edge shutting down",
            8 => "stream timeout",
            9 => "edge full",
            10 => "device closed",
            _ => "unknown code",
        }
    }
}

/// Identity of a model: architecture name and SHA-256 of the weights file, so both
/// ends provably run halves of the same network.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelId {
    /// Architecture name, e.g. `vit_tiny_patch16_224`.
    pub arch: String,
    /// SHA-256 of the weights file's bytes.
    pub weights_sha256: [u8; 32],
}

impl ModelId {
    /// A model id from an architecture name and the weights file's bytes.
    pub fn from_weights_bytes(arch: impl Into<String>, weights: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, weights);
        let mut weights_sha256 = [0u8; 32];
        weights_sha256.copy_from_slice(digest.as_ref());
        Self {
            arch: arch.into(),
            weights_sha256,
        }
    }

    /// A model id from an architecture name and a weights file, hashed in 1 MiB chunks.
    pub fn from_weights_file(
        arch: impl Into<String>,
        path: &std::path::Path,
    ) -> std::io::Result<Self> {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            ctx.update(buf.get(..n).unwrap_or_default());
        }
        let mut weights_sha256 = [0u8; 32];
        weights_sha256.copy_from_slice(ctx.finish().as_ref());
        Ok(Self {
            arch: arch.into(),
            weights_sha256,
        })
    }

    /// The weights hash as lowercase hex.
    pub fn weights_hex(&self) -> String {
        hex(&self.weights_sha256)
    }
}

impl fmt::Display for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@sha256:{}", self.arch, self.weights_hex())
    }
}

impl fmt::Debug for ModelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Description of the bottleneck codec the device uses. Transport does not interpret
/// it: `scheme` names it for error messages and registries, `params` is the codec's own
/// serialized parameter block (opaque bytes, compared for equality only).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodecSpec {
    /// Scheme name, e.g. `affine-u8+zstd`.
    pub scheme: String,
    /// Codec-defined parameters, serialized by the codec crate.
    pub params: Vec<u8>,
}

impl CodecSpec {
    /// A codec spec with a scheme name and opaque parameters.
    pub fn new(scheme: impl Into<String>, params: Vec<u8>) -> Self {
        Self {
            scheme: scheme.into(),
            params,
        }
    }
}

/// What a session computes: model, split point and codec. The split and codec can be
/// changed during a session with `Reconfigure`; each accepted change gets a new epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// The model both halves come from.
    pub model: ModelId,
    /// Name of the split point (e.g. `blocks.3`), as the model crate names them.
    pub split: String,
    /// Codec of the bottleneck payloads.
    pub codec: CodecSpec,
}

/// What the device can do, told to the edge in `Hello`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Frames the device wants in flight at once (the edge may lower it).
    pub max_in_flight: u32,
    /// Whether the device can compute a frame locally when the edge cannot.
    pub local_fallback: bool,
    /// Free-form feature names for later protocol extensions.
    pub extensions: Vec<String>,
}

/// A secret that never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// First message on the control stream, device to edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the device speaks.
    pub version: u16,
    /// Device id, as listed in the edge's token file.
    pub device_id: String,
    /// The device's token.
    pub token: Secret,
    /// Model, split and codec the device wants to run.
    pub config: StreamConfig,
    /// Device capabilities.
    pub capabilities: Capabilities,
}

/// Limits of one session, chosen by the edge and sent in `Welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Frames the device may have in flight at once.
    pub max_in_flight: u32,
    /// Largest frame payload the edge reads, in bytes.
    pub max_frame_payload: u32,
    /// Largest result payload the edge sends, in bytes.
    pub max_result_payload: u32,
    /// Largest control message, in bytes.
    pub max_control_message: u32,
    /// How often the edge sends `Status`, in milliseconds.
    pub status_interval_ms: u32,
}

/// The edge accepted the session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the session runs.
    pub version: u16,
    /// Session id chosen by the edge (unique per edge process).
    pub session_id: u64,
    /// Configuration epoch of the initial stream config (frames carry it).
    pub epoch: u32,
    /// Limits for this session.
    pub limits: SessionLimits,
}

/// Why the edge refused a `Hello` or a `Reconfigure`. Its `Display` is the line the
/// device prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RejectReason {
    /// Unknown device id or wrong token (the edge does not say which).
    #[error("the edge did not accept this device id and token: check the device's entry in the edge's token file")]
    BadToken,
    /// The edge has no model of this architecture.
    #[error(
        "the edge has no model '{arch}': deploy it on the edge or pick a model the edge serves"
    )]
    UnknownModel {
        /// The architecture asked for.
        arch: String,
    },
    /// The edge has the architecture with different weights.
    #[error("the edge runs '{arch}' with weights sha256 {edge_sha256}, the device has {device_sha256}: both ends must load the same weights file")]
    WeightsMismatch {
        /// The architecture.
        arch: String,
        /// Hex SHA-256 of the device's weights.
        device_sha256: String,
        /// Hex SHA-256 of the edge's weights.
        edge_sha256: String,
    },
    /// The edge cannot run the tail from this split point.
    #[error("the edge cannot split at '{split}' (it supports: {})", supported.join(", "))]
    UnsupportedSplit {
        /// The split asked for.
        split: String,
        /// Splits the edge supports for this model.
        supported: Vec<String>,
    },
    /// The edge cannot decode this codec.
    #[error("the edge cannot decode codec '{scheme}' with these parameters (it supports: {})", supported.join(", "))]
    UnsupportedCodec {
        /// The scheme asked for.
        scheme: String,
        /// Schemes the edge supports.
        supported: Vec<String>,
    },
    /// The device speaks a newer protocol than the edge.
    #[error(
        "the device speaks protocol v{device}, newer than the edge's v{edge_max}: upgrade the edge"
    )]
    VersionTooNew {
        /// Device version.
        device: u16,
        /// Highest version the edge speaks.
        edge_max: u16,
    },
    /// The device speaks an older protocol than the edge still accepts.
    #[error("the device speaks protocol v{device}, older than the edge's minimum v{edge_min}: upgrade the device")]
    VersionTooOld {
        /// Device version.
        device: u16,
        /// Lowest version the edge accepts.
        edge_min: u16,
    },
    /// The edge has no room for another session now; retry later.
    #[error("the edge is at capacity: retry later or use another edge")]
    Overloaded,
    /// The edge's runtime refused for its own reason.
    #[error("the edge refused: {0}")]
    Policy(String),
}

/// Advice the edge gives with its status, for the device's offload policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Advice {
    /// Offload as usual.
    #[default]
    Normal,
    /// Send fewer frames (e.g. skip frames) or a smaller payload.
    ReduceRate,
    /// Compute locally when you can; the edge is loaded or power-capped.
    PreferLocal,
    /// The edge is going away soon; plan to run locally.
    Draining,
}

/// Periodic state of the edge, sent on the control stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Busy fraction of the edge's compute, 0..=1.
    pub load: f32,
    /// Current queueing delay before a frame's tail starts, in microseconds.
    pub queue_delay_us: u64,
    /// Fraction of the power budget still free, 0..=1 (negative when over budget).
    pub power_headroom: f32,
    /// What the edge suggests the device do.
    pub advice: Advice,
}

/// Messages from device to edge on the control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToEdge {
    /// Opens the session; must be the first message.
    Hello(Hello),
    /// Changes split and codec without reconnecting.
    Reconfigure {
        /// Echoed in the answer.
        request_id: u32,
        /// New split point.
        split: String,
        /// New codec.
        codec: CodecSpec,
    },
}

/// Messages from edge to device on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ToDevice {
    /// Session accepted.
    Welcome(Welcome),
    /// Session refused; the edge closes the connection after it.
    Reject(RejectReason),
    /// Periodic edge status.
    Status(Status),
    /// Answer to `Reconfigure`: the new epoch, or why not.
    ReconfigureResult {
        /// The request's id.
        request_id: u32,
        /// New configuration epoch, or the reason it was refused.
        result: Result<u32, RejectReason>,
    },
}

/// Header of a frame, first on its stream; `payload_len` raw bytes follow.
///
/// Times are microseconds on the *device's* clock (any origin). The edge never compares
/// them with its own clock: it uses `deadline_us - sent_us` as the remaining budget from
/// the moment the frame arrived, which is immune to clock skew and errs by the one-way
/// delay in the device's favour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// Sequence number, increasing per session.
    pub seq: u64,
    /// Configuration epoch the payload was encoded with.
    pub epoch: u32,
    /// When the input was captured.
    pub capture_us: u64,
    /// When the frame was sent.
    pub sent_us: u64,
    /// When the result stops being useful.
    pub deadline_us: u64,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

/// Why a frame was not answered with a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum DropReason {
    /// The frame's deadline passed at the edge before its tail ran.
    #[error("deadline passed at the edge")]
    DeadlineExpired,
    /// The edge is overloaded and shed the frame.
    #[error("edge overloaded")]
    Overloaded,
    /// The frame was encoded with a configuration epoch the edge no longer knows.
    #[error("frame used a stale configuration")]
    StaleConfig,
    /// A frame with this sequence number is already in flight.
    #[error("duplicate sequence number")]
    DuplicateSeq,
    /// The edge is shutting down.
    #[error("edge shutting down")]
    ShuttingDown,
    /// The payload could not be decoded by the edge's codec.
    #[error("payload could not be decoded")]
    Undecodable,
    /// The result would exceed the session's result size limit.
    #[error("result larger than the session limit")]
    ResultTooLarge,
    /// The edge runtime dropped the frame without answering.
    #[error("edge runtime abandoned the frame")]
    Abandoned,
    /// Another reason given by the edge runtime.
    #[error("{0}")]
    Other(String),
}

/// The edge's account of the time it spent on a frame, so that the device can tell the
/// link's share of a round trip from the edge's (and so learn the uplink's bandwidth).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeTiming {
    /// From the frame's stream opening at the edge to its last payload byte, in
    /// microseconds: the upload as the edge saw it, less its first packet.
    pub receive_us: u32,
    /// From the last payload byte to the answer being written, in microseconds:
    /// queueing, decoding and the tail.
    pub serve_us: u32,
}

impl EdgeTiming {
    /// Microseconds of `d`, saturating at `u32::MAX` (71 minutes).
    pub fn micros(d: std::time::Duration) -> u32 {
        u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
    }
}

/// First thing on a frame stream's answer; for `Result`, `payload_len` raw bytes follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnswerHeader {
    /// The tail's result follows.
    Result {
        /// Length of the result payload.
        payload_len: u32,
        /// How long the edge took to receive and to serve the frame.
        timing: EdgeTiming,
    },
    /// No result for this frame.
    Dropped(DropReason),
}

/// Why a length-prefixed message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadMessageError {
    /// The stream ended cleanly before the message began.
    #[error("stream ended before a message")]
    End,
    /// The stream or connection failed.
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
    /// The declared length is over the cap; nothing was allocated.
    #[error("message declares {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Declared length.
        len: u32,
        /// Cap.
        max: u32,
    },
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
}

impl ReadMessageError {
    /// The application error code to close a stream or connection with.
    pub fn code(&self) -> u32 {
        match self {
            Self::TooLarge { .. } => code::TOO_LARGE,
            _ => code::MALFORMED,
        }
    }
}

/// Encodes a message with its length prefix.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // postcard's only failure modes are buffer exhaustion (not with a Vec) and types
    // serde cannot express; none of ours, so an empty body is unreachable in practice.
    let body = postcard::to_stdvec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a complete message body (without length prefix); trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ReadMessageError> {
    let (msg, rest) = postcard::take_from_bytes::<T>(body)
        .map_err(|e| ReadMessageError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ReadMessageError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Reads one length-prefixed message, refusing lengths over `max` before allocating.
pub async fn read_message<T: DeserializeOwned, R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<T, ReadMessageError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = reader.read(len.get_mut(got..).unwrap_or_default()).await?;
        if n == 0 {
            return Err(if got == 0 {
                ReadMessageError::End
            } else {
                ReadMessageError::Malformed("stream ended inside a length prefix".into())
            });
        }
        got += n;
    }
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(ReadMessageError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadMessageError::Malformed("stream ended inside a message".into())
        } else {
            ReadMessageError::Io(e)
        }
    })?;
    decode(&body)
}

/// Reads exactly `len` raw payload bytes (the caller has already capped `len`).
pub async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u32,
) -> Result<bytes::Bytes, ReadMessageError> {
    let mut buf = vec![0u8; len as usize];
    reader.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ReadMessageError::Malformed("stream ended inside a payload".into())
        } else {
            ReadMessageError::Io(e)
        }
    })?;
    Ok(buf.into())
}

/// Writes one length-prefixed message.
pub async fn write_message<T: Serialize, W: AsyncWrite + Unpin>(
    writer: &mut W,
    msg: &T,
) -> std::io::Result<()> {
    writer.write_all(&encode(msg)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_hello() -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            device_id: "cam-1".into(),
            token: Secret("s3cret-token-0123456789".into()),
            config: StreamConfig {
                model: ModelId::from_weights_bytes("vit_tiny", b"weights"),
                split: "blocks.3".into(),
                codec: CodecSpec::new("affine-u8", vec![1, 2, 3]),
            },
            capabilities: Capabilities::default(),
        }
    }

    #[tokio::test]
    async fn hello_round_trips_through_the_framing() {
        let msg = ToEdge::Hello(sample_hello());
        let bytes = encode(&msg);
        let back: ToEdge = read_message(&mut bytes.as_slice(), 4096).await.unwrap();
        assert_eq!(back, msg);
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocation() {
        let bytes = u32::MAX.to_le_bytes();
        let err = read_message::<ToEdge, _>(&mut bytes.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ReadMessageError::TooLarge {
                len: u32::MAX,
                max: 1024
            }
        ));
        assert_eq!(err.code(), code::TOO_LARGE);
    }

    #[tokio::test]
    async fn garbage_body_is_malformed() {
        let mut bytes = 4u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        let err = read_message::<ToEdge, _>(&mut bytes.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadMessageError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn trailing_bytes_are_malformed() {
        let mut body = postcard::to_stdvec(&AnswerHeader::Dropped(DropReason::Overloaded)).unwrap();
        body.push(0);
        let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let err = read_message::<AnswerHeader, _>(&mut bytes.as_slice(), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadMessageError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn truncated_message_is_malformed_and_clean_end_is_end() {
        let bytes = encode(&ToEdge::Hello(sample_hello()));
        let cut = &bytes[..bytes.len() - 3];
        let err = read_message::<ToEdge, _>(&mut &cut[..], 4096)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadMessageError::Malformed(_)), "{err:?}");
        let err = read_message::<ToEdge, _>(&mut &[][..], 4096)
            .await
            .unwrap_err();
        assert!(matches!(err, ReadMessageError::End), "{err:?}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_any_decoder(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode::<ToEdge>(&body);
            let _ = decode::<ToDevice>(&body);
            let _ = decode::<FrameHeader>(&body);
            let _ = decode::<AnswerHeader>(&body);
        }

        #[test]
        fn every_frame_header_round_trips(seq in 0u64.., epoch in 0u32.., t in 0u64.., len in 0u32..) {
            let h = FrameHeader { seq, epoch, capture_us: t, sent_us: t / 2, deadline_us: t / 3, payload_len: len };
            let bytes = encode(&h);
            proptest::prop_assert_eq!(decode::<FrameHeader>(&bytes[4..]).unwrap(), h);
        }
    }

    #[test]
    fn token_never_shows_in_debug_output() {
        let text = format!("{:?}", sample_hello());
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn reject_reasons_print_what_to_do() {
        let r = RejectReason::UnsupportedSplit {
            split: "blocks.9".into(),
            supported: vec!["blocks.3".into(), "blocks.6".into()],
        };
        assert_eq!(
            r.to_string(),
            "the edge cannot split at 'blocks.9' (it supports: blocks.3, blocks.6)"
        );
    }
}
