//! Split generation on the wire: what a device sends the edge for one step.
//!
//! A step frame is a 6-byte header, then a codec frame (the `splitstream-codec` tensor
//! format) of the hidden states after the device's `k` layers, `[T, D]`: every prompt
//! position in a prefill, one position in a decode step.
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       1     reply: 0 = the next token (greedy, `Answer::NextToken`),
//!                      1 = the last position's logits (`Answer::Logits`)
//! 2       4     position of the first hidden state, u32 little endian
//! 6       ..    codec frame [T, D]
//! ```
//!
//! The position is the edge's check that its KV cache and the device's agree: the
//! edge's cache for the session must hold exactly `position` positions, except that
//! position 0 starts a new conversation (the edge forgets what it held). Anything else
//! (a gap: the edge restarted, or another edge took over without the context) is
//! answered `Dropped` with the reason, and the device finishes locally.
//!
//! Why the reply is chosen per frame: a greedy device only needs the token (5 bytes
//! back instead of `4 V`); a sampling device asks for the logits and draws the token
//! itself with its own seeded sampler, so the draws are the same whether the edge or
//! the device computed the logits, and a fall-back mid-answer continues the same
//! random sequence.

/// The header's version.
pub const STEP_VERSION: u8 = 1;
/// Bytes of the header before the codec frame.
pub const STEP_HEADER_LEN: usize = 6;

/// What the edge answers a step with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepReply {
    /// The greedy next token and its log-probability.
    Token,
    /// The last position's logits, for the device to sample from.
    Logits,
}

/// A step frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepHeader {
    /// What to answer.
    pub reply: StepReply,
    /// Position of the frame's first hidden state.
    pub position: u32,
}

/// Why a step frame did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Fewer bytes than the header.
    #[error("a step frame of {0} bytes is shorter than its {STEP_HEADER_LEN}-byte header")]
    Short(usize),
    /// Another version.
    #[error("step frame version {0}, this edge reads {STEP_VERSION}")]
    Version(u8),
    /// An unknown reply kind.
    #[error("step frame reply kind {0} is not 0 (token) or 1 (logits)")]
    Reply(u8),
}

impl StepHeader {
    /// The header followed by `frame` (codec bytes).
    pub fn frame(&self, codec_frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(STEP_HEADER_LEN + codec_frame.len());
        out.push(STEP_VERSION);
        out.push(match self.reply {
            StepReply::Token => 0,
            StepReply::Logits => 1,
        });
        out.extend_from_slice(&self.position.to_le_bytes());
        out.extend_from_slice(codec_frame);
        out
    }

    /// The header of `bytes` and the codec frame after it.
    pub fn parse(bytes: &[u8]) -> Result<(Self, &[u8]), StepError> {
        let (head, rest) = bytes
            .split_at_checked(STEP_HEADER_LEN)
            .ok_or(StepError::Short(bytes.len()))?;
        if head[0] != STEP_VERSION {
            return Err(StepError::Version(head[0]));
        }
        let reply = match head[1] {
            0 => StepReply::Token,
            1 => StepReply::Logits,
            other => return Err(StepError::Reply(other)),
        };
        let position = u32::from_le_bytes([head[2], head[3], head[4], head[5]]);
        Ok((Self { reply, position }, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_refuses_bad_bytes() {
        let h = StepHeader {
            reply: StepReply::Logits,
            position: 70_000,
        };
        let bytes = h.frame(&[9, 8, 7]);
        assert_eq!(bytes.len(), STEP_HEADER_LEN + 3);
        let (back, rest) = StepHeader::parse(&bytes).unwrap();
        assert_eq!((back, rest), (h, &[9u8, 8, 7][..]));
        assert_eq!(StepHeader::parse(&bytes[..5]), Err(StepError::Short(5)));
        let mut bad = bytes.clone();
        bad[0] = 2;
        assert_eq!(StepHeader::parse(&bad), Err(StepError::Version(2)));
        bad[0] = STEP_VERSION;
        bad[1] = 7;
        assert_eq!(StepHeader::parse(&bad), Err(StepError::Reply(7)));
    }
}
