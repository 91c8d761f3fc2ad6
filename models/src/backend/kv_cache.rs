//! A key/value cache for causal attention, preallocated to its capacity so that each
//! step writes its new rows in place ([`Backend::write_slice`]) instead of copying the
//! whole history, and bounded, so that a session's state has a size known in advance.

use super::{AttentionSpec, Backend, BackendError, DeviceTensor};
use crate::tensor::HostTensor;

/// Keys and values of one attention layer for `batch` sequences, `[B, capacity, Hkv,
/// hd]` each, of which the first [`KvCache::len`] positions are filled.
pub struct KvCache<B: Backend> {
    k: B::Tensor,
    v: B::Tensor,
    len: usize,
    capacity: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache of `capacity` positions for `batch` sequences of `kv_heads` heads
    /// of `head_dim` channels.
    pub fn new(
        be: &B,
        batch: usize,
        capacity: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, BackendError> {
        let zeros = HostTensor::zeros(vec![batch, capacity, kv_heads, head_dim])
            .map_err(|e| BackendError::shape("kv_cache", e.to_string()))?;
        Ok(Self {
            k: be.upload(&zeros)?,
            v: be.upload(&zeros)?,
            len: 0,
            capacity,
        })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes its two tensors occupy (what a session's state cap counts).
    pub fn bytes(&self) -> usize {
        2 * self.k.shape().iter().product::<usize>() * std::mem::size_of::<f32>()
    }

    /// Forgets every position (the memory stays).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Appends `k` and `v` `[B, n, Hkv, hd]`; refuses past the capacity.
    pub fn append(&mut self, be: &B, k: &B::Tensor, v: &B::Tensor) -> Result<(), BackendError> {
        let n = k.shape().get(1).copied().unwrap_or(0);
        if self.len + n > self.capacity {
            return Err(BackendError::shape(
                "kv_cache",
                format!(
                    "{} positions cached + {n} new exceed the capacity of {}",
                    self.len, self.capacity
                ),
            ));
        }
        be.write_slice(&mut self.k, 1, self.len, k)?;
        be.write_slice(&mut self.v, 1, self.len, v)?;
        self.len += n;
        Ok(())
    }

    /// Attention of `q` `[B, Nq, Hq, hd]` over every cached position, the queries
    /// being the last `Nq` positions appended (so causal at offset `len - Nq`).
    pub fn attend(&self, be: &B, q: &B::Tensor, scale: f32) -> Result<B::Tensor, BackendError> {
        let nq = q.shape().get(1).copied().unwrap_or(0);
        let offset = self.len.checked_sub(nq).ok_or_else(|| {
            BackendError::shape(
                "kv_cache",
                format!(
                    "{nq} queries but only {} positions cached: append first",
                    self.len
                ),
            )
        })?;
        be.attention_gqa(
            q,
            &self.k,
            &self.v,
            AttentionSpec {
                scale,
                kv_len: self.len,
                causal: Some(offset),
            },
        )
    }
}
