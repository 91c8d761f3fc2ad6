//! One item's result as it crosses the link: the edge encodes it, the device decodes
//! it, and both print it the same way. The encoding is postcard (the control
//! messages' encoding): compact, self-describing in its variant, and decoded without
//! allocating anything not capped first.

use serde::{Deserialize, Serialize};

/// Most values an answer may carry when decoded (a million logits, 4 MB): larger ones
/// are refused before allocating.
pub const MAX_ANSWER_VALUES: usize = 1 << 20;
/// Most detections per item an answer may carry.
pub const MAX_DETECTIONS: usize = 10_000;

/// An object found in an image, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// `[x0, y0, x1, y1]`, corners, in the model input's pixels.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// Class index.
    pub label: u32,
}

/// One item's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Answer {
    /// Class logits.
    Logits(Vec<f32>),
    /// Objects found.
    Detections(Vec<Detection>),
    /// The next token, greedily chosen, with its log-probability.
    NextToken {
        /// Token id.
        token: u32,
        /// `log softmax` of its logit.
        logprob: f32,
    },
}

/// Why an answer did not decode.
#[derive(Debug, thiserror::Error)]
pub enum AnswerDecodeError {
    /// The bytes are not an answer.
    #[error("not an answer: {0}")]
    Format(#[from] postcard::Error),
    /// It declares more values than [`MAX_ANSWER_VALUES`] / [`MAX_DETECTIONS`].
    #[error("answer declares {count} {what}, more than the {max} allowed")]
    TooLarge {
        /// What was counted.
        what: &'static str,
        /// How many it declares.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// Bytes follow the answer.
    #[error("{0} bytes after the answer")]
    Trailing(usize),
}

impl Answer {
    /// The greedy next token of `logits` (first on ties) and its log-probability.
    pub fn next_token(logits: &[f32]) -> Self {
        let (token, best) =
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        let sum: f32 = logits.iter().map(|&v| (v - best).exp()).sum();
        Self::NextToken {
            token: token as u32,
            logprob: -sum.ln(),
        }
    }

    /// The kind, as device records print it: `logits`, `detections`, `token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Logits(_) => "logits",
            Self::Detections(_) => "detections",
            Self::NextToken { .. } => "token",
        }
    }

    /// The wire bytes.
    pub fn encode(&self) -> Vec<u8> {
        // postcard serialises these plain types into a Vec without failing.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Reads wire bytes, refusing oversized or trailing content.
    pub fn decode(bytes: &[u8]) -> Result<Self, AnswerDecodeError> {
        // The variant tag and the sequence length come first: check the length before
        // postcard allocates the vector.
        if let Some((&tag, rest)) = bytes.split_first() {
            let cap = match tag {
                0 => Some(("values", MAX_ANSWER_VALUES)),
                1 => Some(("detections", MAX_DETECTIONS)),
                _ => None,
            };
            if let Some((what, max)) = cap {
                let (count, _) = postcard::take_from_bytes::<u32>(rest)?;
                let count = count as usize;
                if count > max {
                    return Err(AnswerDecodeError::TooLarge { what, count, max });
                }
            }
        }
        let (answer, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(AnswerDecodeError::Trailing(rest.len()));
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        for a in [
            Answer::Logits(vec![1.0, -2.5, 3.25]),
            Answer::Detections(vec![Detection {
                bbox: [1.0, 2.0, 30.0, 40.0],
                score: 0.9,
                label: 7,
            }]),
            Answer::next_token(&[0.0, 2.0, 1.0]),
        ] {
            assert_eq!(Answer::decode(&a.encode()).unwrap(), a);
        }
        // First of the tied best; log-softmax of 2 among [0, 2, 2].
        let Answer::NextToken { token, logprob } = Answer::next_token(&[0.0, 2.0, 2.0]) else {
            panic!("a token");
        };
        assert_eq!(token, 1);
        assert!(
            (logprob + (2.0 + (-2.0f32).exp()).ln()).abs() < 1e-6,
            "{logprob}"
        );
    }

    #[test]
    fn oversized_and_trailing_answers_are_refused() {
        let mut huge = vec![0u8];
        huge.extend(postcard::to_stdvec(&(u32::MAX)).unwrap());
        assert!(matches!(
            Answer::decode(&huge),
            Err(AnswerDecodeError::TooLarge { .. })
        ));
        let mut trailing = Answer::Logits(vec![1.0]).encode();
        trailing.push(0);
        assert!(matches!(
            Answer::decode(&trailing),
            Err(AnswerDecodeError::Trailing(1))
        ));
        assert!(Answer::decode(&[9, 9, 9]).is_err());
        assert!(Answer::decode(&[]).is_err());
    }
}
