//! A pool of storage buffers, so a forward pass reuses the previous pass's memory
//! instead of allocating on the device for every op.
//!
//! Sizes are rounded up to classes (256-byte multiples, four classes per octave) so a
//! freed buffer fits the next request of about the same size. A buffer returns to the
//! pool when the last tensor holding it drops; commands already recorded may still
//! read it. That is sound because every later use is recorded, and so runs, after them
//! on the one queue, and nothing writes pooled buffers from the host (uploads go to
//! fresh buffers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Idle bytes the pool keeps; beyond this, freed buffers are released to the driver.
const MAX_IDLE_BYTES: u64 = 2 << 30;

pub(crate) const USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// The size class a request of `bytes` is served from.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let b = bytes.max(256).next_multiple_of(256);
    let top = 63 - b.leading_zeros();
    let step = (1u64 << top.saturating_sub(2)).max(256);
    b.next_multiple_of(step)
}

#[derive(Default)]
pub(crate) struct Pool {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    idle_bytes: u64,
}

impl Pool {
    pub(crate) fn take(&mut self, class: u64) -> Option<wgpu::Buffer> {
        let b = self.free.get_mut(&class)?.pop()?;
        self.idle_bytes -= class;
        Some(b)
    }

    fn give(&mut self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        if self.idle_bytes + class > MAX_IDLE_BYTES {
            return;
        }
        self.idle_bytes += class;
        self.free.entry(class).or_default().push(buffer);
    }
}

/// A device buffer that goes back to its pool when dropped.
pub(crate) struct PooledBuffer {
    buffer: wgpu::Buffer,
    pool: Arc<Mutex<Pool>>,
}

impl PooledBuffer {
    pub(crate) fn new(buffer: wgpu::Buffer, pool: Arc<Mutex<Pool>>) -> Self {
        Self { buffer, pool }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.give(self.buffer.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_cover_the_request_with_bounded_waste() {
        for bytes in [
            1u64,
            255,
            256,
            257,
            1000,
            4096,
            5000,
            77_777,
            1 << 20,
            3 << 27,
        ] {
            let c = size_class(bytes);
            assert!(c >= bytes && c.is_multiple_of(256), "{bytes} -> {c}");
            assert!(
                c <= (bytes.max(256) * 5).div_ceil(4) + 256,
                "{bytes} -> {c}"
            );
        }
        assert_eq!(size_class(1000), size_class(1024));
    }
}
