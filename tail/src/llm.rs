//! The edge's side of split LLM generation: a step frame (see
//! `splitstream_models::llm::split`) parsed and checked against the session's KV
//! cache, and the plan that runs many sessions' steps together.
//!
//! Continuous batching: frames of an LLM are batched across sessions (the batch key
//! has no session), and a batch runs in waves. A wave takes at most one step per
//! session, each session's steps in the order they came; its decode steps (one
//! position each) run through the tail layers as one batch, each with its own KV
//! cache at its own position ([`SplitNet::tail_batch`]); a prefill (many positions)
//! runs alone. A session that joins or leaves changes only the next wave.
//!
//! [`SplitNet::tail_batch`]: splitstream_models::SplitNet::tail_batch

use splitstream_codec::DecodeLimits;
use splitstream_models::llm::split::{StepHeader, StepReply};
use splitstream_models::net::{Answer, NetState, Output};
use splitstream_models::HostTensor;

use crate::batcher::SessionId;

/// One parsed step: its header and hidden states `[1, T, D]`.
#[derive(Debug)]
pub struct Step {
    /// Position and reply kind.
    pub header: StepHeader,
    /// The hidden states after the device's layers.
    pub hidden: HostTensor,
}

impl Step {
    /// Positions it carries.
    pub fn positions(&self) -> usize {
        self.hidden.shape().get(1).copied().unwrap_or(0)
    }
}

/// Parses a step frame for a model of width `d` and `context` positions; the codec
/// frame is capped at `context * d` values before anything is allocated.
pub fn parse_step(payload: &[u8], d: usize, context: usize) -> Result<Step, String> {
    let (header, frame) = StepHeader::parse(payload).map_err(|e| e.to_string())?;
    let max = context.saturating_mul(d);
    let limits = DecodeLimits {
        max_elements: max,
        max_bytes: max.saturating_mul(4),
    };
    let t = splitstream_codec::decode(frame, &limits).map_err(|e| e.to_string())?;
    let n: usize = t.shape.iter().product();
    if d == 0 || n == 0 || !n.is_multiple_of(d) || t.shape.last() != Some(&d) {
        return Err(format!(
            "hidden states {:?} are not [T, {d}] for this model",
            t.shape
        ));
    }
    let positions = n / d;
    let hidden = HostTensor::new([1, positions, d], t.to_f32()).map_err(|e| e.to_string())?;
    Ok(Step { header, hidden })
}

/// Checks a step against the session's state: the cache must hold exactly the step's
/// position; position 0 starts over (the state is reset). The error is the drop
/// reason the device reads.
pub fn check_position(state: &mut dyn NetState, step: &Step, context: usize) -> Result<(), String> {
    let held = state.positions().unwrap_or(0);
    let position = step.header.position as usize;
    if position == 0 && held > 0 {
        state.reset();
    } else if position != held {
        return Err(format!(
            "the edge's KV cache holds {held} positions, the step starts at {position}: \
             send the context from position 0"
        ));
    }
    if position + step.positions() > context {
        return Err(format!(
            "{position} positions + {} new exceed the edge's context of {context}",
            step.positions()
        ));
    }
    Ok(())
}

/// The answer to a step: the greedy token, or the last position's logits.
pub fn answer(out: Output, reply: StepReply) -> Option<Answer> {
    let Output::NextToken(logits) = out else {
        return None;
    };
    let v = logits.shape().last().copied()?;
    let row = logits.data().get(logits.data().len().checked_sub(v)?..)?;
    Some(match reply {
        StepReply::Token => Answer::next_token(row),
        StepReply::Logits => Answer::Logits(row.to_vec()),
    })
}

/// Splits items (by session, in arrival order) into waves: each wave holds at most
/// one item per session, and a session's items run in their order across waves.
pub fn waves(sessions: &[SessionId]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut next_wave: std::collections::HashMap<SessionId, usize> = Default::default();
    for (i, s) in sessions.iter().enumerate() {
        let w = next_wave.entry(*s).or_insert(0);
        if out.len() <= *w {
            out.push(Vec::new());
        }
        out[*w].push(i);
        *w += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitstream_codec::{CodecParams, TensorView};

    fn frame(position: u32, t: usize, d: usize) -> Vec<u8> {
        let data: Vec<f32> = (0..t * d).map(|i| i as f32).collect();
        let shape = [t, d];
        let view = TensorView::f32(&shape, &data).unwrap();
        let codec = splitstream_codec::encode(&view, &CodecParams::LOSSLESS).unwrap();
        StepHeader {
            reply: StepReply::Token,
            position,
        }
        .frame(&codec)
    }

    #[test]
    fn steps_parse_within_the_context_and_width() {
        let s = parse_step(&frame(3, 2, 4), 4, 8).unwrap();
        assert_eq!(s.hidden.shape(), [1, 2, 4]);
        assert_eq!(s.header.position, 3);
        assert!(parse_step(&frame(0, 2, 4), 8, 8)
            .unwrap_err()
            .contains("not [T, 8]"));
        // 9 positions of 4 are more than a context of 8 allows: refused by the codec's cap.
        assert!(parse_step(&frame(0, 9, 4), 4, 8).is_err());
        assert!(parse_step(&[1, 0, 0], 4, 8).is_err());
    }

    struct Held(usize, bool);
    impl NetState for Held {
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
        fn positions(&self) -> Option<usize> {
            Some(self.0)
        }
        fn reset(&mut self) {
            self.0 = 0;
            self.1 = true;
        }
    }

    #[test]
    fn positions_must_continue_the_cache_or_start_over() {
        let step = |p| parse_step(&frame(p, 1, 4), 4, 8).unwrap();
        let mut s = Held(5, false);
        assert!(check_position(&mut s, &step(5), 8).is_ok());
        let e = check_position(&mut s, &step(6), 8).unwrap_err();
        assert!(e.contains("holds 5 positions, the step starts at 6"), "{e}");
        assert!(check_position(&mut s, &step(4), 8).is_err());
        assert!(check_position(&mut s, &step(0), 8).is_ok());
        assert!(s.1, "position 0 reset the state");
        let mut full = Held(8, false);
        assert!(check_position(&mut full, &step(8), 8).is_err());
    }

    #[test]
    fn waves_take_one_step_per_session_in_order() {
        let s = |i| SessionId(i);
        assert_eq!(
            waves(&[s(1), s(2), s(1), s(3), s(1)]),
            vec![vec![0, 1, 3], vec![2], vec![4]]
        );
        assert!(waves(&[]).is_empty());
    }
}
