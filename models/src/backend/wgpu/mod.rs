//! The wgpu backend: the same ops as the CPU backend, as WGSL kernels on any GPU that
//! wgpu reaches (Vulkan, Metal, DX12).
//!
//! - **Residency.** A [`WgpuTensor`] is a storage buffer on the device. Ops record
//!   dispatches into a pending list (see `queue.rs`); nothing reaches the GPU until a
//!   [`Backend::readback`], which submits the whole chain (a forward pass of any batch)
//!   as one command buffer and copies the result out. Buffers come from a pool.
//! - **Kernels** (`*.wgsl` beside this file): tiled matmul with a fused bias and
//!   activation epilogue (linear layers, and convolutions after an im2col or straight
//!   from NCHW for 1x1), a direct depthwise convolution (`conv.rs`), fused
//!   flash-style attention (timm's, and grouped-query with a causal mask and a KV
//!   cache), layer norm, RMS norm and softmax per row, and one-thread-per-output
//!   kernels for the rest: activations, broadcasting arithmetic, reductions, pooling,
//!   resizing, data movement, rotary embeddings (the wider op set is in `ops.rs`).
//!   Pipelines are compiled on first use and cached.
//! - **Weights** are transposed and padded once at load; with `SHADER_F16` they are
//!   stored as f16 (half the memory traffic) and accumulated in f32; the direct
//!   convolution's small weights stay f32.
//! - **Choosing a device.** [`WgpuBackend::new`] takes the best adapter the options
//!   allow (a software one included: that is how the tests run on lavapipe);
//!   [`WgpuBackend::auto`] only a hardware GPU, or none, so the caller falls back to
//!   the CPU backend.
//!
//! ```no_run
//! use splitstream_models::backend::wgpu::{WgpuBackend, WgpuOptions};
//! use splitstream_models::backend::cpu::CpuBackend;
//!
//! match WgpuBackend::auto(&WgpuOptions::from_env())? {
//!     Some(gpu) => println!("running on {}", gpu.describe()),
//!     None => { let _cpu = CpuBackend::new(0)?; }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conv;
mod device;
mod kernels;
mod ops;
mod pool;
mod queue;

use std::sync::{Arc, Mutex};

pub use conv::WgpuConv2d;
pub use device::{WgpuInitError, WgpuOptions};
use kernels::{ALoad, Kernel, MAX_HEAD_DIM};
use pool::{size_class, Pool, PooledBuffer};
use queue::{device_error, Command, Dispatch, Pending, PARAM_WORDS};

use super::{
    attention_geometry, linear_geometry, Activation, AttentionSpec, Backend, BackendError,
    BinaryOp, CompareOp, Conv2dSpec, DeviceTensor, Pool2dSpec, ReduceOp, ResizeMode,
};
use crate::tensor::{checked_numel, HostTensor};

/// Matmul output tile (must match `matmul.wgsl`).
const TILE_M: usize = 64;
const TILE_N: usize = 64;
const TILE_K: usize = 16;
/// Threads per workgroup of the elementwise kernels (`elementwise.wgsl`).
const ELEMENTWISE_WG: usize = 256;
/// Query rows per attention workgroup (`attention.wgsl`).
const ATTENTION_QB: usize = 64;
/// Highest tensor rank `permute` takes.
const MAX_PERMUTE_RANK: usize = 6;

/// A tensor resident on the GPU: a storage buffer (from the pool) and its shape.
pub struct WgpuTensor {
    shape: Vec<usize>,
    buf: Arc<PooledBuffer>,
}

impl DeviceTensor for WgpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

impl std::fmt::Debug for WgpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuTensor")
            .field("shape", &self.shape)
            .finish()
    }
}

/// A dense layer on the GPU: the weight transposed to `[K_pad, N_pad]` (f16 or f32),
/// the bias padded to `N_pad` (zeros when absent).
pub struct WgpuLinear {
    /// The dense weight; for a block-sparse layer, its kept blocks (see `sparse`).
    weight_t: wgpu::Buffer,
    bias: wgpu::Buffer,
    has_bias: bool,
    inputs: usize,
    outputs: usize,
    n_pad: usize,
    /// A block-sparse layer: `weight_t` holds its kept blocks, run by
    /// `sparse.wgsl`, never by the dense matmul.
    #[cfg(feature = "sparse")]
    sparse: Option<SparseIndex>,
}

/// The block index of a block-sparse [`WgpuLinear`].
#[cfg(feature = "sparse")]
struct SparseIndex {
    /// Block-row starts, then every kept block's column-block (u32).
    index: wgpu::Buffer,
    block: [usize; 2],
    block_rows: usize,
}

impl std::fmt::Debug for WgpuLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuLinear")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Where the tiled matmul reads its activation and writes its output.
#[derive(Debug, Clone, Copy)]
enum GemmLayout {
    /// `a` row-major `[rows, K]`, the output row-major `[rows, N]`.
    Rows,
    /// The output of a convolution: rows are `item * positions + position`, stored
    /// channel-major (NCHW) into channels `channel_offset..` of `out_channels`; with
    /// `nchw_input`, `a` is those channels of the NCHW image itself (a 1x1 stride-1
    /// convolution, or one group of it).
    Image {
        positions: usize,
        channel_offset: usize,
        out_channels: usize,
        nchw_input: Option<NchwChannels>,
    },
}

/// The channels of an NCHW image that the matmul reads as its `[B * H * W, K]`
/// operand: `offset..offset + K` of `total`.
#[derive(Debug, Clone, Copy)]
struct NchwChannels {
    offset: usize,
    total: usize,
}

/// The code of an activation in the kernels (`activation.wgsl`).
fn act_code(act: Activation) -> u32 {
    match act {
        Activation::Identity => 0,
        Activation::Gelu => 1,
        Activation::Relu => 2,
        Activation::Relu6 => 3,
        Activation::Silu => 4,
        Activation::Sigmoid => 5,
        Activation::HardSwish => 6,
    }
}

struct Inner {
    gpu: device::Gpu,
    pool: Arc<Mutex<Pool>>,
    pending: Mutex<Pending>,
    kernels: Mutex<kernels::Cache>,
}

/// The wgpu backend. Cheap to clone (one device, shared).
#[derive(Clone)]
pub struct WgpuBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.inner.gpu.info.name)
            .field("f16_weights", &self.inner.gpu.f16)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, BackendError> {
    m.lock()
        .map_err(|_| device_error("backend state poisoned by an earlier panic"))
}

fn as_u32(op: &'static str, what: &str, v: usize) -> Result<u32, BackendError> {
    u32::try_from(v).map_err(|_| BackendError::shape(op, format!("{what} {v} exceeds 2^32")))
}

fn last_dim(op: &'static str, x: &WgpuTensor) -> Result<usize, BackendError> {
    x.shape
        .last()
        .copied()
        .ok_or_else(|| BackendError::shape(op, "needs a tensor of rank >= 1, got a scalar"))
}

impl WgpuBackend {
    /// Opens the best adapter `options` allow, software rasterisers included unless
    /// [`WgpuOptions::hardware_only`].
    pub fn new(options: &WgpuOptions) -> Result<Self, WgpuInitError> {
        let gpu = device::open(options)?;
        Ok(Self {
            inner: Arc::new(Inner {
                gpu,
                pool: Arc::new(Mutex::new(Pool::default())),
                pending: Mutex::new(Pending::default()),
                kernels: Mutex::new(kernels::Cache::default()),
            }),
        })
    }

    /// `--backend auto`: a hardware GPU if there is one (`Ok(None)` otherwise, and the
    /// caller runs on the CPU backend). Software adapters such as lavapipe are never
    /// chosen, whatever `options` say.
    pub fn auto(options: &WgpuOptions) -> Result<Option<Self>, WgpuInitError> {
        let options = WgpuOptions {
            hardware_only: true,
            ..options.clone()
        };
        match Self::new(&options) {
            Ok(b) => Ok(Some(b)),
            Err(WgpuInitError::NoAdapter { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The adapter in use.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.inner.gpu.info
    }

    /// Whether the adapter is a software rasteriser (a CPU pretending to be a GPU).
    pub fn is_software(&self) -> bool {
        device::is_software(&self.inner.gpu.info)
    }

    /// Whether weights are stored as f16.
    pub fn f16_weights(&self) -> bool {
        self.inner.gpu.f16
    }

    /// One line for logs: adapter, type, API, weight precision.
    pub fn describe(&self) -> String {
        let i = &self.inner.gpu.info;
        format!(
            "{} ({:?}, {:?}, {} weights)",
            i.name,
            i.device_type,
            i.backend,
            if self.f16_weights() { "f16" } else { "f32" }
        )
    }

    /// Submits everything recorded and waits for the GPU to finish it (for timing).
    pub fn synchronize(&self) -> Result<(), BackendError> {
        self.submit()?;
        self.inner
            .gpu
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| device_error(format!("waiting for the GPU: {e}")))?;
        self.check_error()
    }

    fn check_error(&self) -> Result<(), BackendError> {
        match lock(&self.inner.gpu.error)?.take() {
            Some(e) => Err(device_error(e)),
            None => Ok(()),
        }
    }

    fn submit(&self) -> Result<(), BackendError> {
        let gpu = &self.inner.gpu;
        lock(&self.inner.pending)?.submit(
            &gpu.device,
            &gpu.queue,
            u64::from(gpu.limits.min_uniform_buffer_offset_alignment),
        )
    }

    fn record(&self, c: Command) -> Result<(), BackendError> {
        let full = lock(&self.inner.pending)?.push(c);
        if full {
            self.submit()?;
        }
        Ok(())
    }

    /// The pool size class for `elems` f32s, refused beyond the adapter's limits.
    fn check_size(&self, op: &'static str, elems: usize) -> Result<u64, BackendError> {
        let class = size_class((elems as u64) * 4);
        let limits = &self.inner.gpu.limits;
        if class > limits.max_buffer_size || class > limits.max_storage_buffer_binding_size {
            return Err(BackendError::shape(
                op,
                format!(
                    "a tensor of {elems} values exceeds this adapter's buffer limit ({} bytes); \
                     use a smaller batch",
                    limits
                        .max_storage_buffer_binding_size
                        .min(limits.max_buffer_size)
                ),
            ));
        }
        Ok(class)
    }

    /// A buffer of at least `elems` f32s, from the pool when one is free.
    fn alloc(&self, op: &'static str, elems: usize) -> Result<Arc<PooledBuffer>, BackendError> {
        let class = self.check_size(op, elems)?;
        let reused = lock(&self.inner.pool)?.take(class);
        let buffer = match reused {
            Some(b) => b,
            None => self
                .inner
                .gpu
                .device
                .create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: class,
                    usage: pool::USAGE,
                    mapped_at_creation: false,
                }),
        };
        Ok(Arc::new(PooledBuffer::new(
            buffer,
            Arc::clone(&self.inner.pool),
        )))
    }

    /// A fresh buffer holding `bytes` (never a pooled one: see `pool.rs`).
    fn create_with(
        &self,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer, BackendError> {
        let size = size_class(bytes.len() as u64);
        let buffer = self
            .inner
            .gpu
            .device
            .create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage,
                mapped_at_creation: true,
            });
        if !bytes.is_empty() {
            buffer
                .get_mapped_range_mut(0..bytes.len() as u64)
                .map_err(|e| device_error(format!("writing a new buffer: {e}")))?
                .copy_from_slice(bytes);
        }
        buffer.unmap();
        Ok(buffer)
    }

    fn output(&self, op: &'static str, shape: Vec<usize>) -> Result<WgpuTensor, BackendError> {
        let n = checked_numel(&shape)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| BackendError::shape(op, format!("output {shape:?} too large")))?;
        Ok(WgpuTensor {
            buf: self.alloc(op, n)?,
            shape,
        })
    }

    /// A 2-D grid of `groups` workgroups within the per-dimension limit; kernels
    /// rebuild the flat index from the grid width and skip the surplus.
    fn grid(&self, op: &'static str, groups: usize) -> Result<[u32; 2], BackendError> {
        let max = self.inner.gpu.limits.max_compute_workgroups_per_dimension as usize;
        let x = groups.clamp(1, max.max(1));
        let y = groups.div_ceil(x);
        if y > max {
            return Err(BackendError::shape(
                op,
                format!("{groups} workgroups exceed this adapter's dispatch limit"),
            ));
        }
        Ok([x as u32, y as u32])
    }

    fn dispatch(
        &self,
        kernel: Kernel,
        params: &[u32],
        buffers: Vec<(u32, wgpu::Buffer)>,
        groups: [u32; 2],
    ) -> Result<(), BackendError> {
        if groups[0] == 0 || groups[1] == 0 {
            return Ok(());
        }
        let gpu = &self.inner.gpu;
        let pipeline = kernels::pipeline(&self.inner.kernels, &gpu.device, gpu.f16, kernel)?;
        let mut p = Box::new([0u32; PARAM_WORDS]);
        p[..params.len()].copy_from_slice(params);
        self.record(Command::Dispatch(Dispatch {
            pipeline,
            params: p,
            buffers,
            groups,
        }))
    }

    /// An elementwise-family kernel over `n` outputs; `words` are its parameters after
    /// the element count and grid width.
    fn elementwise(
        &self,
        op: &'static str,
        kernel: Kernel,
        n: usize,
        words: &[u32],
        buffers: Vec<(u32, wgpu::Buffer)>,
    ) -> Result<(), BackendError> {
        let grid = self.grid(op, n.div_ceil(ELEMENTWISE_WG))?;
        let mut params = vec![as_u32(op, "element count", n)?, grid[0]];
        params.extend_from_slice(words);
        self.dispatch(kernel, &params, buffers, grid)
    }

    /// The tiled matmul of `rows` rows of `a` with a prepared layer, bias and
    /// activation fused, stored as `layout` says.
    fn gemm(
        &self,
        op: &'static str,
        (a, rows): (&wgpu::Buffer, usize),
        layer: &WgpuLinear,
        activation: Activation,
        out: &wgpu::Buffer,
        layout: GemmLayout,
    ) -> Result<(), BackendError> {
        let k = layer.inputs;
        let mut flags = u32::from(layer.has_bias) | act_code(activation) << 8;
        let (positions, channel_offset, out_channels, input) = match layout {
            GemmLayout::Rows => (1, 0, layer.outputs, None),
            GemmLayout::Image {
                positions,
                channel_offset,
                out_channels,
                nchw_input,
            } => {
                flags |= 4;
                (positions, channel_offset, out_channels, nchw_input)
            }
        };
        let loader = match input {
            Some(_) => ALoad::Nchw,
            None if k.is_multiple_of(4) => ALoad::Vec4,
            None => ALoad::Scalar,
        };
        let input = input.unwrap_or(NchwChannels {
            offset: 0,
            total: k,
        });
        let groups_y = rows.div_ceil(TILE_M);
        if groups_y > self.inner.gpu.limits.max_compute_workgroups_per_dimension as usize {
            return Err(BackendError::shape(
                op,
                format!("{rows} rows exceed this adapter's dispatch limit"),
            ));
        }
        let params = [
            as_u32(op, "rows", rows)?,
            layer.outputs as u32,
            k as u32,
            (layer.n_pad / 4) as u32,
            flags,
            as_u32(op, "positions", positions)?,
            as_u32(op, "channels", channel_offset)?,
            as_u32(op, "channels", out_channels)?,
            as_u32(op, "channels", input.offset)?,
            as_u32(op, "channels", input.total)?,
        ];
        self.dispatch(
            Kernel::Matmul { a: loader },
            &params,
            vec![
                (1, a.clone()),
                (2, layer.weight_t.clone()),
                (3, layer.bias.clone()),
                (4, out.clone()),
            ],
            [(layer.n_pad / TILE_N) as u32, groups_y as u32],
        )
    }

    /// `sparse.wgsl` over `rows` rows of `a`: one thread per output element.
    #[cfg(feature = "sparse")]
    fn block_sparse_gemm(
        &self,
        (a, rows): (&wgpu::Buffer, usize),
        layer: &WgpuLinear,
        sparse: &SparseIndex,
        activation: Activation,
        out: &WgpuTensor,
    ) -> Result<(), BackendError> {
        let op = "linear";
        let max = self.inner.gpu.limits.max_compute_workgroups_per_dimension as usize;
        let (gx, gy) = (layer.outputs.div_ceil(16), rows.div_ceil(16));
        if gx > max || gy > max {
            return Err(BackendError::shape(
                op,
                format!(
                    "{rows} x {} outputs exceed this adapter's dispatch limit",
                    layer.outputs
                ),
            ));
        }
        let flags = u32::from(layer.has_bias) | act_code(activation) << 8;
        let params = [
            as_u32(op, "rows", rows)?,
            as_u32(op, "outputs", layer.outputs)?,
            as_u32(op, "inputs", layer.inputs)?,
            as_u32(op, "block", sparse.block[0])?,
            as_u32(op, "block", sparse.block[1])?,
            flags,
            as_u32(op, "block rows", sparse.block_rows + 1)?,
        ];
        self.dispatch(
            Kernel::BlockSparse,
            &params,
            vec![
                (1, a.clone()),
                (2, layer.weight_t.clone()),
                (3, sparse.index.clone()),
                (4, layer.bias.clone()),
                (5, out.buf.buffer().clone()),
            ],
            [gx as u32, gy as u32],
        )
    }

    fn row_kernel(
        &self,
        op: &'static str,
        kernel: Kernel,
        x: &WgpuTensor,
        eps: f32,
        extra: Vec<(u32, wgpu::Buffer)>,
    ) -> Result<WgpuTensor, BackendError> {
        let cols = last_dim(op, x)?;
        let out = self.output(op, x.shape.clone())?;
        let rows = numel(x).checked_div(cols).unwrap_or(0);
        let grid = self.grid(op, rows)?;
        let mut buffers = vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())];
        buffers.extend(extra);
        let params = [rows as u32, cols as u32, eps.to_bits(), grid[0]];
        if rows > 0 && cols > 0 {
            self.dispatch(kernel, &params, buffers, grid)?;
        }
        Ok(out)
    }
}

fn numel(x: &WgpuTensor) -> usize {
    x.shape.iter().product()
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;
    type Linear = WgpuLinear;
    type Conv2d = WgpuConv2d;

    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn upload(&self, host: &HostTensor) -> Result<WgpuTensor, BackendError> {
        let n = host.numel();
        if n > u32::MAX as usize {
            return Err(BackendError::shape(
                "upload",
                format!("{:?} too large", host.shape()),
            ));
        }
        self.check_size("upload", n)?;
        let buffer = self.create_with(bytemuck::cast_slice(host.data()), pool::USAGE)?;
        Ok(WgpuTensor {
            shape: host.shape().to_vec(),
            buf: Arc::new(PooledBuffer::new(buffer, Arc::clone(&self.inner.pool))),
        })
    }

    fn readback(&self, x: &WgpuTensor) -> Result<HostTensor, BackendError> {
        let n = numel(x);
        let data = if n == 0 {
            Vec::new()
        } else {
            let bytes = (n * 4) as u64;
            let staging = self
                .inner
                .gpu
                .device
                .create_buffer(&wgpu::BufferDescriptor {
                    label: Some("splitstream readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
            self.record(Command::Copy {
                src: x.buf.buffer().clone(),
                dst: staging.clone(),
                bytes,
            })?;
            self.submit()?;
            let data = queue::read_staging(&self.inner.gpu.device, &staging, n);
            self.check_error()?;
            data?
        };
        HostTensor::new(x.shape.clone(), data)
            .map_err(|e| BackendError::shape("readback", e.to_string()))
    }

    fn prepare_linear(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
    ) -> Result<WgpuLinear, BackendError> {
        let [outputs, inputs] = linear_geometry(weight, bias)?;
        let n_pad = outputs.max(1).next_multiple_of(TILE_N);
        let k_pad = inputs.max(1).next_multiple_of(TILE_K);
        let len = checked_numel(&[k_pad, n_pad])
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| BackendError::shape("prepare_linear", "weight too large"))?;
        // Transposed and zero-padded: w_t[k, n] = weight[n, k].
        let mut w_t = vec![0.0f32; len];
        if inputs > 0 {
            for (o, row) in weight.data().chunks_exact(inputs).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    w_t[i * n_pad + o] = v;
                }
            }
        }
        let usage = wgpu::BufferUsages::STORAGE;
        let weight_t = if self.inner.gpu.f16 {
            let half: Vec<u16> = w_t
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            self.create_with(bytemuck::cast_slice(&half), usage)?
        } else {
            self.create_with(bytemuck::cast_slice(&w_t), usage)?
        };
        let mut b = vec![0.0f32; n_pad];
        if let Some(bias) = bias {
            b[..outputs].copy_from_slice(bias.data());
        }
        Ok(WgpuLinear {
            weight_t,
            bias: self.create_with(bytemuck::cast_slice(&b), usage)?,
            has_bias: bias.is_some(),
            inputs,
            outputs,
            n_pad,
            #[cfg(feature = "sparse")]
            sparse: None,
        })
    }

    #[cfg(feature = "sparse")]
    fn prepare_block_sparse_linear(
        &self,
        weight: &super::block_sparse::BlockSparse,
        bias: Option<&HostTensor>,
    ) -> Result<WgpuLinear, BackendError> {
        let (outputs, inputs) = (weight.outputs(), weight.inputs());
        if let Some(b) = bias {
            if b.shape() != [outputs] {
                return Err(BackendError::shape(
                    "prepare_block_sparse_linear",
                    format!("bias must be [{outputs}], got {:?}", b.shape()),
                ));
            }
        }
        let [bo, bi] = weight.block();
        let too_large = || BackendError::shape("prepare_block_sparse_linear", "weight too large");
        if weight.kept() * bo * bi > u32::MAX as usize || outputs > u32::MAX as usize {
            return Err(too_large());
        }
        // Each kept block transposed to [bi, bo]; at least one word per buffer.
        let mut blocks = Vec::with_capacity((weight.kept() * bo * bi).max(1));
        let mut starts = Vec::with_capacity(weight.block_rows() + 1);
        let mut cols = Vec::with_capacity(weight.kept());
        starts.push(0u32);
        for r in 0..weight.block_rows() {
            for (j, &c) in weight.row_cols(r).iter().enumerate() {
                let blk = &weight.row_values(r)[j * bo * bi..(j + 1) * bo * bi];
                for k in 0..bi {
                    blocks.extend((0..bo).map(|o| blk[o * bi + k]));
                }
                cols.push(c as u32);
            }
            starts.push(cols.len() as u32);
        }
        if blocks.is_empty() {
            blocks.push(0.0);
        }
        starts.extend(cols);
        let usage = wgpu::BufferUsages::STORAGE;
        let mut b = vec![0.0f32; outputs.max(1)];
        if let Some(bias) = bias {
            b[..outputs].copy_from_slice(bias.data());
        }
        Ok(WgpuLinear {
            weight_t: self.create_with(bytemuck::cast_slice(&blocks), usage)?,
            bias: self.create_with(bytemuck::cast_slice(&b), usage)?,
            has_bias: bias.is_some(),
            inputs,
            outputs,
            n_pad: outputs,
            sparse: Some(SparseIndex {
                index: self.create_with(bytemuck::cast_slice(&starts), usage)?,
                block: [bo, bi],
                block_rows: weight.block_rows(),
            }),
        })
    }

    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<WgpuConv2d, BackendError> {
        self.prepare_conv(weight, bias, spec)
    }

    fn linear(
        &self,
        x: &WgpuTensor,
        layer: &WgpuLinear,
        activation: Activation,
    ) -> Result<WgpuTensor, BackendError> {
        let inputs = last_dim("linear", x)?;
        if inputs != layer.inputs {
            return Err(BackendError::shape(
                "linear",
                format!(
                    "input {:?} has {inputs} features, the layer takes {}",
                    x.shape, layer.inputs
                ),
            ));
        }
        // The leading dims (not numel / inputs: with no inputs each row is its bias).
        let rows: usize = x.shape[..x.shape.len() - 1].iter().product();
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = layer.outputs;
        }
        let out = self.output("linear", shape)?;
        #[cfg(feature = "sparse")]
        if let Some(sparse) = &layer.sparse {
            if rows > 0 && layer.outputs > 0 {
                self.block_sparse_gemm((x.buf.buffer(), rows), layer, sparse, activation, &out)?;
            }
            return Ok(out);
        }
        if rows > 0 {
            self.gemm(
                "linear",
                (x.buf.buffer(), rows),
                layer,
                activation,
                out.buf.buffer(),
                GemmLayout::Rows,
            )?;
        }
        Ok(out)
    }

    fn conv2d(&self, x: &WgpuTensor, layer: &WgpuConv2d) -> Result<WgpuTensor, BackendError> {
        self.conv(x, layer)
    }

    fn layer_norm(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        beta: &WgpuTensor,
        eps: f32,
    ) -> Result<WgpuTensor, BackendError> {
        let d = last_dim("layer_norm", x)?;
        if gamma.shape != [d] || beta.shape != [d] {
            return Err(BackendError::shape(
                "layer_norm",
                format!(
                    "input {:?} needs gamma and beta of [{d}], got {:?} and {:?}",
                    x.shape, gamma.shape, beta.shape
                ),
            ));
        }
        self.row_kernel(
            "layer_norm",
            Kernel::LayerNorm,
            x,
            eps,
            vec![
                (3, gamma.buf.buffer().clone()),
                (4, beta.buf.buffer().clone()),
            ],
        )
    }

    fn softmax(&self, x: &WgpuTensor) -> Result<WgpuTensor, BackendError> {
        self.row_kernel("softmax", Kernel::Softmax, x, 0.0, Vec::new())
    }

    fn activate(&self, x: &WgpuTensor, act: Activation) -> Result<WgpuTensor, BackendError> {
        let out = self.output("activate", x.shape.clone())?;
        self.elementwise(
            "activate",
            Kernel::Activation,
            numel(x),
            &[act_code(act)],
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    fn attention(
        &self,
        qkv: &WgpuTensor,
        num_heads: usize,
        scale: f32,
    ) -> Result<WgpuTensor, BackendError> {
        let [batch, tokens, d, hd] = attention_geometry(&qkv.shape, num_heads)?;
        if hd > MAX_HEAD_DIM {
            return Err(BackendError::shape(
                "attention",
                format!("head width {hd} exceeds the wgpu kernel's {MAX_HEAD_DIM}"),
            ));
        }
        let out = self.output("attention", vec![batch, tokens, d])?;
        if batch * tokens * d == 0 {
            return Ok(out);
        }
        let q_blocks = tokens.div_ceil(ATTENTION_QB);
        let grid = self.grid("attention", batch * num_heads * q_blocks)?;
        let params = [
            batch as u32,
            tokens as u32,
            num_heads as u32,
            d as u32,
            scale.to_bits(),
            q_blocks as u32,
            grid[0],
        ];
        self.dispatch(
            Kernel::Attention {
                head_dim: hd as u32,
            },
            &params,
            vec![(1, qkv.buf.buffer().clone()), (2, out.buf.buffer().clone())],
            grid,
        )?;
        Ok(out)
    }

    fn add(&self, a: &WgpuTensor, b: &WgpuTensor) -> Result<WgpuTensor, BackendError> {
        let broadcast = b.shape.first() == Some(&1)
            && a.shape.len() == b.shape.len()
            && a.shape[1..] == b.shape[1..];
        if a.shape != b.shape && !broadcast {
            return Err(BackendError::shape(
                "add",
                format!("cannot add {:?} and {:?}", a.shape, b.shape),
            ));
        }
        let out = self.output("add", a.shape.clone())?;
        let period = numel(b).max(1) as u32;
        self.elementwise(
            "add",
            Kernel::Add,
            numel(a),
            &[period],
            vec![
                (1, a.buf.buffer().clone()),
                (2, out.buf.buffer().clone()),
                (3, b.buf.buffer().clone()),
            ],
        )?;
        Ok(out)
    }

    fn scale(&self, x: &WgpuTensor, s: f32) -> Result<WgpuTensor, BackendError> {
        let out = self.output("scale", x.shape.clone())?;
        self.elementwise(
            "scale",
            Kernel::Scale,
            numel(x),
            &[s.to_bits()],
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    fn reshape(&self, x: WgpuTensor, shape: &[usize]) -> Result<WgpuTensor, BackendError> {
        if checked_numel(shape) != Some(numel(&x)) {
            return Err(BackendError::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", x.shape),
            ));
        }
        Ok(WgpuTensor {
            shape: shape.to_vec(),
            buf: x.buf,
        })
    }

    fn permute(&self, x: &WgpuTensor, dims: &[usize]) -> Result<WgpuTensor, BackendError> {
        let rank = x.shape.len();
        let mut seen = vec![false; rank];
        if dims.len() != rank
            || dims
                .iter()
                .any(|&d| d >= rank || std::mem::replace(&mut seen[d], true))
        {
            return Err(BackendError::shape(
                "permute",
                format!(
                    "{dims:?} is not a permutation of the {rank} dims of {:?}",
                    x.shape
                ),
            ));
        }
        if rank > MAX_PERMUTE_RANK {
            return Err(BackendError::shape(
                "permute",
                format!("rank {rank} exceeds the wgpu kernel's {MAX_PERMUTE_RANK}"),
            ));
        }
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * x.shape[i + 1];
        }
        let out_shape: Vec<usize> = dims.iter().map(|&d| x.shape[d]).collect();
        // Padded at the front to rank 6 with extent-1 dims.
        let pad = MAX_PERMUTE_RANK - rank;
        let mut words = vec![1u32; MAX_PERMUTE_RANK];
        words.extend(std::iter::repeat_n(0u32, MAX_PERMUTE_RANK));
        for (j, &d) in dims.iter().enumerate() {
            words[pad + j] = out_shape[j] as u32;
            words[MAX_PERMUTE_RANK + pad + j] = in_strides[d] as u32;
        }
        let out = self.output("permute", out_shape)?;
        self.elementwise(
            "permute",
            Kernel::Permute,
            numel(x),
            &words,
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    fn prepend_tokens(
        &self,
        tokens: &[&WgpuTensor],
        x: &WgpuTensor,
    ) -> Result<WgpuTensor, BackendError> {
        let &[batch, n, d] = x.shape.as_slice() else {
            return Err(BackendError::shape(
                "prepend_tokens",
                format!("x must be [B, N, D], got {:?}", x.shape),
            ));
        };
        if let Some(t) = tokens.iter().find(|t| t.shape != [1, 1, d]) {
            return Err(BackendError::shape(
                "prepend_tokens",
                format!("tokens must be [1, 1, {d}], got {:?}", t.shape),
            ));
        }
        let t = tokens.len();
        let out = self.output("prepend_tokens", vec![batch, t + n, d])?;
        for (slot, token) in tokens.iter().enumerate() {
            self.elementwise(
                "prepend_tokens",
                Kernel::BroadcastToken,
                batch * d,
                &[(t + n) as u32, d as u32, slot as u32],
                vec![
                    (1, token.buf.buffer().clone()),
                    (2, out.buf.buffer().clone()),
                ],
            )?;
        }
        self.elementwise(
            "prepend_tokens",
            Kernel::PlaceTokens,
            batch * n * d,
            &[n as u32, d as u32, t as u32],
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    fn select_token(&self, x: &WgpuTensor, index: usize) -> Result<WgpuTensor, BackendError> {
        let &[batch, n, d] = x.shape.as_slice() else {
            return Err(BackendError::shape(
                "select_token",
                format!("x must be [B, N, D], got {:?}", x.shape),
            ));
        };
        if index >= n {
            return Err(BackendError::shape(
                "select_token",
                format!("token {index} of a sequence of {n}"),
            ));
        }
        let out = self.output("select_token", vec![batch, d])?;
        self.elementwise(
            "select_token",
            Kernel::SelectToken,
            batch * d,
            &[n as u32, d as u32, index as u32],
            vec![(1, x.buf.buffer().clone()), (2, out.buf.buffer().clone())],
        )?;
        Ok(out)
    }

    fn binary(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        op: BinaryOp,
    ) -> Result<WgpuTensor, BackendError> {
        self.binary_op(a, b, op)
    }

    fn compare(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        op: CompareOp,
    ) -> Result<WgpuTensor, BackendError> {
        self.compare_op(a, b, op)
    }

    fn select(
        &self,
        mask: &WgpuTensor,
        a: &WgpuTensor,
        b: &WgpuTensor,
    ) -> Result<WgpuTensor, BackendError> {
        self.select_op(mask, a, b)
    }

    fn reduce(
        &self,
        x: &WgpuTensor,
        axis: usize,
        op: ReduceOp,
    ) -> Result<WgpuTensor, BackendError> {
        self.reduce_op(x, axis, op)
    }

    fn pool2d(&self, x: &WgpuTensor, spec: Pool2dSpec) -> Result<WgpuTensor, BackendError> {
        self.pool2d_op(x, spec)
    }

    fn resize(
        &self,
        x: &WgpuTensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<WgpuTensor, BackendError> {
        self.resize_op(x, size, mode)
    }

    fn concat(&self, xs: &[&WgpuTensor], axis: usize) -> Result<WgpuTensor, BackendError> {
        self.concat_op(xs, axis)
    }

    fn slice(
        &self,
        x: &WgpuTensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<WgpuTensor, BackendError> {
        self.slice_op(x, axis, start, len)
    }

    fn write_slice(
        &self,
        dst: &mut WgpuTensor,
        axis: usize,
        start: usize,
        src: &WgpuTensor,
    ) -> Result<(), BackendError> {
        self.write_slice_op(dst, axis, start, src)
    }

    fn matmul(
        &self,
        a: &WgpuTensor,
        b: &WgpuTensor,
        transpose_b: bool,
    ) -> Result<WgpuTensor, BackendError> {
        self.bmm(a, b, transpose_b)
    }

    fn embedding(&self, table: &WgpuTensor, ids: &[u32]) -> Result<WgpuTensor, BackendError> {
        self.embedding_op(table, ids)
    }

    fn rms_norm(
        &self,
        x: &WgpuTensor,
        gamma: &WgpuTensor,
        eps: f32,
    ) -> Result<WgpuTensor, BackendError> {
        self.rms_norm_op(x, gamma, eps)
    }

    fn rope(
        &self,
        x: &WgpuTensor,
        cos: &WgpuTensor,
        sin: &WgpuTensor,
    ) -> Result<WgpuTensor, BackendError> {
        self.rope_op(x, cos, sin)
    }

    fn attention_gqa(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        spec: AttentionSpec,
    ) -> Result<WgpuTensor, BackendError> {
        self.attention_gqa_op(q, k, v, spec)
    }
}
