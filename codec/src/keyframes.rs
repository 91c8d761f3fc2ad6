//! The keyframes a sender or receiver remembers for temporal deltas.

use std::collections::VecDeque;

use crate::quant::Affine;
use crate::tensor::DType;

/// How many keyframes an [`crate::Encoder`] or [`crate::Decoder`] keeps unless told
/// otherwise: enough for a sender to switch to a new keyframe while deltas against
/// the previous one are still in flight.
pub const DEFAULT_MAX_KEYFRAMES: usize = 4;

/// One remembered keyframe: its quantized symbols and everything a delta must match.
#[derive(Clone, Debug)]
pub(crate) struct Keyframe {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) scheme: u8,
    pub(crate) bits: u8,
    pub(crate) per_channel: Option<usize>,
    pub(crate) params: Vec<Affine>,
    pub(crate) symbols: Vec<u8>,
}

/// Keyframes by id, oldest evicted first once `max` are held.
#[derive(Debug)]
pub(crate) struct KeyframeStore {
    max: usize,
    entries: VecDeque<(u32, Keyframe)>,
}

impl KeyframeStore {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            entries: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, id: u32) -> Option<&Keyframe> {
        self.entries.iter().find(|(k, _)| *k == id).map(|(_, f)| f)
    }

    /// Stores `frame` under `id`, replacing an older one with that id, reusing the
    /// buffers of the entry it evicts.
    pub(crate) fn insert(&mut self, id: u32, fill: impl FnOnce(&mut Keyframe)) {
        let mut slot = if let Some(pos) = self.entries.iter().position(|(k, _)| *k == id) {
            self.entries.remove(pos)
        } else if self.entries.len() >= self.max {
            self.entries.pop_front()
        } else {
            None
        }
        .map(|(_, f)| f)
        .unwrap_or_else(|| Keyframe {
            shape: Vec::new(),
            dtype: DType::F32,
            scheme: 0,
            bits: 0,
            per_channel: None,
            params: Vec::new(),
            symbols: Vec::new(),
        });
        fill(&mut slot);
        self.entries.push_back((id, slot));
    }

    pub(crate) fn remove(&mut self, id: u32) -> bool {
        match self.entries.iter().position(|(k, _)| *k == id) {
            Some(pos) => self.entries.remove(pos).is_some(),
            None => false,
        }
    }

    pub(crate) fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.iter().map(|(k, _)| *k)
    }
}
