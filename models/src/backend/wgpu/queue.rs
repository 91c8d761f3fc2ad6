//! Recording and submission: ops append commands to a pending list, and the list goes
//! to the GPU as one command buffer, in one submit, when a result is read back (or when
//! the list grows long). A whole forward pass, whatever the batch, is therefore one
//! dispatch chain and one submit.
//!
//! Each dispatch's parameters take a 256-byte slot of one uniform "arena" buffer that
//! is written just before the submit (queue writes are ordered before the commands of
//! the submit that follows them, and after the previous one's).

use std::num::NonZeroU64;
use std::sync::{mpsc, Arc};

use super::kernels::Pipeline;
use super::BackendError;

/// Words (u32) of parameters a dispatch may carry: 256 bytes, the usual uniform
/// offset alignment, so a slot costs no more than the alignment already does.
pub(crate) const PARAM_WORDS: usize = 64;
/// Pending commands that force a submit (bounds the host memory of the list).
const MAX_PENDING: usize = 4096;

pub(crate) struct Dispatch {
    pub(crate) pipeline: Arc<Pipeline>,
    // Boxed: 256 bytes would bloat every command of the pending list.
    pub(crate) params: Box<[u32; PARAM_WORDS]>,
    /// (binding, buffer) for bindings 1..; binding 0 is the parameters.
    pub(crate) buffers: Vec<(u32, wgpu::Buffer)>,
    pub(crate) groups: [u32; 2],
}

pub(crate) enum Command {
    Dispatch(Dispatch),
    Copy {
        src: wgpu::Buffer,
        dst: wgpu::Buffer,
        bytes: u64,
    },
}

#[derive(Default)]
pub(crate) struct Pending {
    commands: Vec<Command>,
    dispatches: usize,
    arena: Option<wgpu::Buffer>,
}

pub(crate) fn device_error(detail: impl Into<String>) -> BackendError {
    BackendError::Device {
        backend: "wgpu",
        detail: detail.into(),
    }
}

impl Pending {
    /// Appends a command; returns whether the list is long enough to submit now.
    pub(crate) fn push(&mut self, c: Command) -> bool {
        if matches!(c, Command::Dispatch(_)) {
            self.dispatches += 1;
        }
        self.commands.push(c);
        self.commands.len() >= MAX_PENDING
    }

    /// Encodes and submits everything pending, as one command buffer.
    pub(crate) fn submit(
        &mut self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        align: u64,
    ) -> Result<(), BackendError> {
        if self.commands.is_empty() {
            return Ok(());
        }
        let slot = (PARAM_WORDS as u64 * 4).next_multiple_of(align);
        let needed = (self.dispatches as u64).max(1) * slot;
        if self.arena.as_ref().is_none_or(|a| a.size() < needed) {
            self.arena = Some(device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("splitstream params"),
                size: needed.next_power_of_two(),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let Some(arena) = self.arena.clone() else {
            return Err(device_error("parameter buffer missing"));
        };
        let commands = std::mem::take(&mut self.commands);
        self.dispatches = 0;

        let mut bytes = vec![0u8; needed as usize];
        let mut groups = Vec::new();
        let mut i = 0u64;
        for c in &commands {
            if let Command::Dispatch(d) = c {
                let at = (i * slot) as usize;
                bytes[at..at + PARAM_WORDS * 4]
                    .copy_from_slice(bytemuck::cast_slice(&d.params[..]));
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &arena,
                        offset: i * slot,
                        size: NonZeroU64::new(PARAM_WORDS as u64 * 4),
                    }),
                }];
                entries.extend(d.buffers.iter().map(|(b, buf)| wgpu::BindGroupEntry {
                    binding: *b,
                    resource: buf.as_entire_binding(),
                }));
                groups.push(device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: None,
                    layout: &d.pipeline.layout,
                    entries: &entries,
                }));
                i += 1;
            }
        }
        queue.write_buffer(&arena, 0, &bytes);

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("splitstream forward"),
        });
        let mut groups = groups.iter();
        let mut rest = commands.as_slice();
        while !rest.is_empty() {
            // A run of dispatches shares one compute pass; a copy ends it.
            let run = rest
                .iter()
                .take_while(|c| matches!(c, Command::Dispatch(_)))
                .count();
            if run > 0 {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                });
                for c in &rest[..run] {
                    if let (Command::Dispatch(d), Some(bg)) = (c, groups.next()) {
                        pass.set_pipeline(&d.pipeline.pipeline);
                        pass.set_bind_group(0, bg, &[]);
                        pass.dispatch_workgroups(d.groups[0], d.groups[1], 1);
                    }
                }
                rest = &rest[run..];
            } else if let Some((Command::Copy { src, dst, bytes }, tail)) = rest.split_first() {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, *bytes);
                rest = tail;
            }
        }
        queue.submit([encoder.finish()]);
        Ok(())
    }
}

/// Maps `staging` (already filled by a submitted copy), waits for it, and returns its
/// first `len` f32 values.
pub(crate) fn read_staging(
    device: &wgpu::Device,
    staging: &wgpu::Buffer,
    len: usize,
) -> Result<Vec<f32>, BackendError> {
    let bytes = (len * 4) as u64;
    let (tx, rx) = mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, 0..bytes, move |r| {
        let _ = tx.send(r);
    });
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
    rx.recv()
        .map_err(|_| device_error("readback was never mapped"))?
        .map_err(|e| device_error(format!("mapping the readback buffer: {e}")))?;
    let view = staging
        .get_mapped_range(0..bytes)
        .map_err(|e| device_error(format!("reading the readback buffer: {e}")))?;
    let out: Vec<f32> = bytemuck::pod_collect_to_vec::<u8, f32>(&view);
    drop(view);
    staging.unmap();
    Ok(out)
}
