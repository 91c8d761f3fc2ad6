//! Why the edge answers a frame `Dropped` instead of with a result.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why a frame got no result from the edge. Every dropped frame is answered with one
/// of these (nothing disappears silently), and counted under it in the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Its deadline passed before it could be computed.
    Deadline,
    /// The edge's queue (the device's share, or the whole) was full.
    QueueFull,
    /// A newer frame of the same device overtook it (latest frame wins).
    Overtaken,
    /// The power governor shed it.
    Shed,
    /// Its payload could not be decoded.
    BadFrame,
    /// Computing it failed.
    Error,
    /// The device's session closed first.
    SessionClosed,
    /// The edge is shutting down.
    Shutdown,
}

impl DropReason {
    /// The snake_case name used on the wire, in logs and as the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Deadline => "deadline",
            DropReason::QueueFull => "queue_full",
            DropReason::Overtaken => "overtaken",
            DropReason::Shed => "shed",
            DropReason::BadFrame => "bad_frame",
            DropReason::Error => "error",
            DropReason::SessionClosed => "session_closed",
            DropReason::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}
