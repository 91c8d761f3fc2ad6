//! The CPU backend: tensors in host memory, GEMM from the `gemm` crate, row kernels in
//! `avx512.rs`/`avx2.rs`/`portable.rs` picked at run time, and work split across cores
//! with a rayon pool owned by the backend.
//!
//! Threading uses one level at a time: a GEMM splits itself across the pool, while
//! row-wise ops (layer norm, softmax, activations, broadcasting, reductions, pooling)
//! and attention split rows or planes across the pool and run single-threaded GEMMs
//! inside. Nothing nests, so the pool is never oversubscribed.
//!
//! Where the ops live: this file holds the trait impl, the ViT's original ops and the
//! pool; `conv.rs` the convolutions (im2col, depthwise, pointwise), `elementwise.rs`
//! activations and broadcasting, `reduce.rs` reductions and RMS norm, `spatial.rs`
//! pooling and resizing, `layout.rs` concat/slice/write_slice/embedding,
//! `attention_gqa.rs` grouped-query attention and rope, `matmul.rs` the GEMM wrapper
//! and batched matmul, `tmac.rs` the T-MAC low-bit lookup-table GEMV/GEMM.

#[cfg(target_arch = "x86_64")]
mod attention512;
mod attention_gqa;
mod avx2;
mod avx512;
mod avx512_gemm;
mod conv;
mod elementwise;
mod kernels;
mod layout;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod packed;
mod portable;
mod reduce;
#[cfg(feature = "sparse")]
mod sparse;
mod spatial;
pub mod tmac;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rayon::prelude::*;

pub use conv::CpuConv2d;
pub use kernels::Isa;
use matmul::{gemm, View};

use super::{
    attention_geometry, linear_geometry, Activation, AttentionSpec, Backend, BackendError,
    BinaryOp, CompareOp, Conv2dSpec, DeviceTensor, Pool2dSpec, ReduceOp, ResizeMode,
};
use crate::tensor::{checked_numel, HostTensor};

/// Below this many elements an elementwise op runs on one thread (the fork-join costs
/// more than it saves).
pub const PARALLEL_MIN_ELEMS: usize = 16 * 1024;
/// Fewest query rows per attention task (below, GEMM call overhead dominates).
const ATTENTION_MIN_ROWS: usize = 8;

/// A tensor in host memory, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl CpuTensor {
    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(checked_numel(&shape), Some(data.len()));
        Self { shape, data }
    }
}

impl DeviceTensor for CpuTensor {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// A dense layer ready for GEMM, in the layout of the kernel that will run it (chosen
/// once at load by the backend's instruction set).
#[derive(Debug)]
pub struct CpuLinear {
    form: LinearForm,
    inputs: usize,
    outputs: usize,
}

#[derive(Debug)]
enum LinearForm {
    /// AVX-512: panels for our micro-kernel, bias and GELU in its epilogue.
    #[cfg(target_arch = "x86_64")]
    Packed(packed::PackedLinear),
    /// Elsewhere: the weight transposed to `[in, out]` row-major for the `gemm` crate,
    /// so the product streams it row by row, and the bias.
    Plain {
        weight_t: Vec<f32>,
        bias: Option<Vec<f32>>,
    },
    /// Block-sparse: the kept blocks in panels for the sparse tile (any instruction set).
    #[cfg(feature = "sparse")]
    Sparse(sparse::SparseLinear),
}

/// The CPU backend. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct CpuBackend {
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    isa: Isa,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads)
            .field("isa", &self.isa)
            .finish()
    }
}

impl CpuBackend {
    /// A backend with its own pool of `threads` workers (0: one per available core),
    /// using the best instruction set this CPU has.
    pub fn new(threads: usize) -> Result<Self, BackendError> {
        Self::with_isa(threads, Isa::detect())
    }

    /// As [`CpuBackend::new`] but capped at instruction set `isa` (for tests and
    /// comparisons; a level the CPU lacks falls back to the best it has).
    pub fn with_isa(threads: usize, isa: Isa) -> Result<Self, BackendError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("splitstream-cpu-{i}"))
            .build()
            .map_err(|e| BackendError::Device {
                backend: "cpu",
                detail: format!("cannot start {threads} worker threads: {e}"),
            })?;
        Ok(Self {
            pool: Arc::new(pool),
            threads,
            isa: isa.or_supported(),
        })
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Instruction set the kernels run at.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Runs `f` on a worker of this backend's pool: directly when already on one (inside
    /// [`Backend::scope`]), else by entering the pool (a thread hop, ~10 us).
    fn in_pool<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.pool.current_thread_index().is_some() {
            f()
        } else {
            self.pool.install(f)
        }
    }

    /// Runs `f` on each chunk of `rows_per_chunk * row_len` elements of `out`, in
    /// parallel when the tensor is large enough.
    fn for_row_chunks(
        &self,
        out: &mut [f32],
        row_len: usize,
        f: impl Fn(usize, &mut [f32]) + Send + Sync,
    ) {
        if row_len == 0 || out.is_empty() {
            return;
        }
        let rows = out.len() / row_len;
        if out.len() < PARALLEL_MIN_ELEMS || self.threads == 1 || rows < 2 {
            f(0, out);
            return;
        }
        // A few chunks per thread to even out the load.
        let chunk_rows = rows.div_ceil(self.threads * 4).max(1);
        self.in_pool(|| {
            out.par_chunks_mut(chunk_rows * row_len)
                .enumerate()
                .for_each(|(i, chunk)| f(i * chunk_rows, chunk));
        });
    }
}

/// Runs pool work (steals jobs) until `done`, yielding the core in between.
fn stay_awake(done: &AtomicBool) {
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            // Yield rather than spin: should the scheduler have put this worker on the
            // caller's core (a busy machine), the caller gets the core back at once.
            std::thread::yield_now();
        }
    }
}

/// Sets its flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn last_dim(op: &'static str, x: &CpuTensor) -> Result<usize, BackendError> {
    x.shape
        .last()
        .copied()
        .ok_or_else(|| BackendError::shape(op, "needs a tensor of rank >= 1, got a scalar"))
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Linear = CpuLinear;
    type Conv2d = CpuConv2d;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn scope<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        if self.threads == 1 || self.pool.current_thread_index().is_some() {
            return self.in_pool(f);
        }
        // The other workers stay awake for the whole pass, polling for work, instead of
        // sleeping between ops: an op at batch 1 lasts 10-300 us, about what waking a
        // parked thread can take (longer in a VM or on a busy machine), so with sleeping
        // workers the small ops ran on one core. (onnxruntime's pool spins likewise.)
        let done = AtomicBool::new(false);
        self.pool.install(|| {
            let caller = rayon::current_thread_index();
            rayon::scope(|s| {
                // One job per worker, each run only by its own worker; the caller's
                // returns at once (it would otherwise wait on `f`, which runs below it).
                s.spawn_broadcast(|_, ctx| {
                    if Some(ctx.index()) != caller {
                        stay_awake(&done);
                    }
                });
                // Set `done` even if `f` panics, so the scope can end and re-raise it.
                let _stop = SetOnDrop(&done);
                f()
            })
        })
    }

    fn upload(&self, host: &HostTensor) -> Result<CpuTensor, BackendError> {
        Ok(CpuTensor::new(host.shape().to_vec(), host.data().to_vec()))
    }

    fn readback(&self, x: &CpuTensor) -> Result<HostTensor, BackendError> {
        HostTensor::new(x.shape.clone(), x.data.clone())
            .map_err(|e| BackendError::shape("readback", e.to_string()))
    }

    fn prepare_linear(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
    ) -> Result<CpuLinear, BackendError> {
        let [outputs, inputs] = linear_geometry(weight, bias)?;
        let w = weight.data();
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx512 {
            return Ok(CpuLinear {
                form: LinearForm::Packed(packed::PackedLinear::pack(
                    w,
                    bias.map(|b| b.data()),
                    outputs,
                    inputs,
                )),
                inputs,
                outputs,
            });
        }
        let mut weight_t = vec![0.0; w.len()];
        for (o, row) in w.chunks_exact(inputs.max(1)).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                weight_t[i * outputs + o] = v;
            }
        }
        Ok(CpuLinear {
            form: LinearForm::Plain {
                weight_t,
                bias: bias.map(|b| b.data().to_vec()),
            },
            inputs,
            outputs,
        })
    }

    #[cfg(feature = "sparse")]
    fn prepare_block_sparse_linear(
        &self,
        weight: &super::block_sparse::BlockSparse,
        bias: Option<&HostTensor>,
    ) -> Result<CpuLinear, BackendError> {
        let (outputs, inputs) = (weight.outputs(), weight.inputs());
        if let Some(b) = bias {
            if b.shape() != [outputs] {
                return Err(BackendError::shape(
                    "prepare_block_sparse_linear",
                    format!("bias must be [{outputs}], got {:?}", b.shape()),
                ));
            }
        }
        Ok(CpuLinear {
            form: LinearForm::Sparse(sparse::SparseLinear::pack(
                self.isa,
                weight,
                bias.map(|b| b.data()),
            )),
            inputs,
            outputs,
        })
    }

    fn prepare_conv2d(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<CpuConv2d, BackendError> {
        CpuConv2d::prepare(weight, bias, spec)
    }

    fn linear(
        &self,
        x: &CpuTensor,
        layer: &CpuLinear,
        activation: Activation,
    ) -> Result<CpuTensor, BackendError> {
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
        let n = layer.outputs;
        let mut shape = x.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        let numel = checked_numel(&shape)
            .ok_or_else(|| BackendError::shape("linear", format!("output {shape:?} too large")))?;
        // Rows from the output, not `x.data.len() / inputs`: a layer of no inputs
        // (PyTorch allows one) still has rows, each its bias.
        let rows = numel.checked_div(n).unwrap_or(0);
        let (weight_t, bias) = match &layer.form {
            #[cfg(target_arch = "x86_64")]
            LinearForm::Packed(packed) => {
                // GELU runs in the micro-kernel's epilogue, on registers; any other
                // activation in one pass over the output after it.
                let gelu = activation == Activation::Gelu;
                let mut out = self.in_pool(|| {
                    // SAFETY: `Packed` layers are only made when `self.isa` is Avx512,
                    // which `Isa::or_supported` grants only when the CPU has avx512f.
                    unsafe { packed::linear_avx512(&x.data, rows, packed, gelu, self.threads) }
                });
                if !gelu {
                    self.activate_in_place(activation, &mut out, n);
                }
                return Ok(CpuTensor::new(shape, out));
            }
            #[cfg(feature = "sparse")]
            LinearForm::Sparse(layer) => {
                let gelu = activation == Activation::Gelu;
                let mut out = self
                    .in_pool(|| sparse::linear_sparse(&x.data, rows, layer, gelu, self.threads));
                if !gelu {
                    self.activate_in_place(activation, &mut out, n);
                }
                return Ok(CpuTensor::new(shape, out));
            }
            LinearForm::Plain { weight_t, bias } => (weight_t, bias),
        };
        // Bias fused by pre-filling the destination and accumulating into it.
        let mut out = match bias {
            Some(b) => {
                let mut v = Vec::with_capacity(numel);
                for _ in 0..rows {
                    v.extend_from_slice(b);
                }
                v
            }
            None => vec![0.0; numel],
        };
        self.in_pool(|| {
            gemm(
                rows,
                n,
                inputs,
                &mut out,
                View::row_major(0, n),
                bias.is_some(),
                &x.data,
                View::row_major(0, inputs),
                weight_t,
                View::row_major(0, n),
                1.0,
                self.threads,
            )
        });
        self.activate_in_place(activation, &mut out, n);
        Ok(CpuTensor::new(shape, out))
    }

    fn conv2d(&self, x: &CpuTensor, layer: &CpuConv2d) -> Result<CpuTensor, BackendError> {
        self.conv2d_impl(x, layer)
    }

    fn layer_norm(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        beta: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor, BackendError> {
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
        let mut out = vec![0.0; x.data.len()];
        let isa = self.isa;
        self.for_row_chunks(&mut out, d, |row0, chunk| {
            let src = &x.data[row0 * d..row0 * d + chunk.len()];
            kernels::layer_norm_rows(isa, src, &gamma.data, &beta.data, eps, chunk);
        });
        Ok(CpuTensor::new(x.shape.clone(), out))
    }

    fn softmax(&self, x: &CpuTensor) -> Result<CpuTensor, BackendError> {
        let d = last_dim("softmax", x)?;
        let mut out = x.data.clone();
        let isa = self.isa;
        self.for_row_chunks(&mut out, d, |_, chunk| {
            for row in chunk.chunks_exact_mut(d) {
                kernels::softmax_row(isa, row);
            }
        });
        Ok(CpuTensor::new(x.shape.clone(), out))
    }

    fn activate(&self, x: &CpuTensor, act: Activation) -> Result<CpuTensor, BackendError> {
        let d = last_dim("activate", x).unwrap_or(1);
        let mut out = x.data.clone();
        self.activate_in_place(act, &mut out, d);
        Ok(CpuTensor::new(x.shape.clone(), out))
    }

    fn attention(
        &self,
        qkv: &CpuTensor,
        num_heads: usize,
        scale: f32,
    ) -> Result<CpuTensor, BackendError> {
        let [batch, tokens, d, hd] = attention_geometry(&qkv.shape, num_heads)?;
        let three_d = 3 * d;
        let isa = self.isa;
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx512 && hd.is_multiple_of(packed::NR) {
            let shape = attention512::AttentionShape {
                batch,
                tokens,
                heads: num_heads,
                head_dim: hd,
            };
            let out = self.in_pool(|| {
                // SAFETY: `isa` is only Avx512 when the CPU reported avx512f.
                unsafe { attention512::attention_avx512(&qkv.data, shape, scale, self.threads) }
            });
            return Ok(CpuTensor::new(vec![batch, tokens, d], out));
        }
        let mut out = vec![0.0f32; batch * tokens * d];
        if out.is_empty() {
            return Ok(CpuTensor::new(vec![batch, tokens, d], out));
        }
        // About four tasks per thread overall, so a batch of 1 still keeps every core
        // busy and the last task is short.
        let tasks_per_item = (self.threads * 4).div_ceil(batch).max(1);
        let rows_per_task = tokens.div_ceil(tasks_per_item).max(ATTENTION_MIN_ROWS);
        let chunks_per_item = tokens.div_ceil(rows_per_task);
        // One task per (item, block of query rows); it owns those output rows whole
        // (all heads), so tasks write disjoint contiguous slices.
        let task = |(t, dst): (usize, &mut [f32])| {
            let b = t / chunks_per_item;
            let q0 = (t % chunks_per_item) * rows_per_task;
            let rows = dst.len() / d;
            let base = b * tokens * three_d;
            let mut scores = vec![0.0f32; rows * tokens];
            for h in 0..num_heads {
                // scores = scale * Q[q0..q0+rows] K^T
                gemm(
                    rows,
                    tokens,
                    hd,
                    &mut scores,
                    View::row_major(0, tokens),
                    false,
                    &qkv.data,
                    View {
                        offset: base + q0 * three_d + h * hd,
                        rs: three_d,
                        cs: 1,
                    },
                    &qkv.data,
                    View {
                        offset: base + d + h * hd,
                        rs: 1,
                        cs: three_d,
                    },
                    scale,
                    1,
                );
                for row in scores.chunks_exact_mut(tokens) {
                    kernels::softmax_row(isa, row);
                }
                // out[rows, h*hd..] = P V
                gemm(
                    rows,
                    hd,
                    tokens,
                    dst,
                    View {
                        offset: h * hd,
                        rs: d,
                        cs: 1,
                    },
                    false,
                    &scores,
                    View::row_major(0, tokens),
                    &qkv.data,
                    View {
                        offset: base + 2 * d + h * hd,
                        rs: three_d,
                        cs: 1,
                    },
                    1.0,
                    1,
                );
            }
        };
        // Chunks never straddle items: split each item's rows separately.
        let item_chunks = out
            .chunks_mut(tokens * d)
            .flat_map(|item| item.chunks_mut(rows_per_task * d))
            .enumerate();
        if self.threads == 1 {
            item_chunks.for_each(task);
        } else {
            let work: Vec<(usize, &mut [f32])> = item_chunks.collect();
            self.in_pool(|| work.into_par_iter().for_each(task));
        }
        Ok(CpuTensor::new(vec![batch, tokens, d], out))
    }

    fn add(&self, a: &CpuTensor, b: &CpuTensor) -> Result<CpuTensor, BackendError> {
        let broadcast = b.shape.first() == Some(&1)
            && a.shape.len() == b.shape.len()
            && a.shape[1..] == b.shape[1..];
        if a.shape != b.shape && !broadcast {
            return Err(BackendError::shape(
                "add",
                format!("cannot add {:?} and {:?}", a.shape, b.shape),
            ));
        }
        // Collected straight into the new buffer (no zero-fill pass first).
        let same = b.data.len() == a.data.len();
        let out: Vec<f32> = if same && a.data.len() >= PARALLEL_MIN_ELEMS && self.threads > 1 {
            self.in_pool(|| {
                a.data
                    .par_iter()
                    .zip(&b.data)
                    .with_min_len(PARALLEL_MIN_ELEMS / 2)
                    .map(|(x, y)| x + y)
                    .collect()
            })
        } else {
            let mut out = Vec::with_capacity(a.data.len());
            for x in a.data.chunks(b.data.len().max(1)) {
                out.extend(x.iter().zip(&b.data).map(|(x, y)| x + y));
            }
            out
        };
        Ok(CpuTensor::new(a.shape.clone(), out))
    }

    fn scale(&self, x: &CpuTensor, s: f32) -> Result<CpuTensor, BackendError> {
        Ok(CpuTensor::new(
            x.shape.clone(),
            x.data.iter().map(|v| v * s).collect(),
        ))
    }

    fn reshape(&self, x: CpuTensor, shape: &[usize]) -> Result<CpuTensor, BackendError> {
        if checked_numel(shape) != Some(x.data.len()) {
            return Err(BackendError::shape(
                "reshape",
                format!("cannot view {:?} as {shape:?}", x.shape),
            ));
        }
        Ok(CpuTensor::new(shape.to_vec(), x.data))
    }

    fn permute(&self, x: &CpuTensor, dims: &[usize]) -> Result<CpuTensor, BackendError> {
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
        let mut in_strides = vec![1usize; rank];
        for i in (0..rank.saturating_sub(1)).rev() {
            in_strides[i] = in_strides[i + 1] * x.shape[i + 1];
        }
        let out_shape: Vec<usize> = dims.iter().map(|&d| x.shape[d]).collect();
        let strides: Vec<usize> = dims.iter().map(|&d| in_strides[d]).collect();
        let mut out = Vec::with_capacity(x.data.len());
        if !x.data.is_empty() {
            // Odometer over the output index; the innermost dim copies a strided run.
            let inner = rank.saturating_sub(1);
            let mut idx = vec![0usize; rank];
            loop {
                let base: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
                if rank == 0 {
                    out.push(x.data[0]);
                    break;
                }
                let (n, s) = (out_shape[inner], strides[inner]);
                out.extend((0..n).map(|j| x.data[base + j * s]));
                let mut dim = inner;
                loop {
                    if dim == 0 {
                        return Ok(CpuTensor::new(out_shape, out));
                    }
                    dim -= 1;
                    idx[dim] += 1;
                    if idx[dim] < out_shape[dim] {
                        break;
                    }
                    idx[dim] = 0;
                }
            }
        }
        Ok(CpuTensor::new(out_shape, out))
    }

    fn prepend_tokens(
        &self,
        tokens: &[&CpuTensor],
        x: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
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
        let total = tokens.len() + n;
        let mut out = Vec::with_capacity(batch * total * d);
        for item in x.data.chunks_exact((n * d).max(1)).take(batch) {
            for t in tokens {
                out.extend_from_slice(&t.data);
            }
            out.extend_from_slice(item);
        }
        out.resize(batch * total * d, 0.0);
        Ok(CpuTensor::new(vec![batch, total, d], out))
    }

    fn select_token(&self, x: &CpuTensor, index: usize) -> Result<CpuTensor, BackendError> {
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
        let mut out = Vec::with_capacity(batch * d);
        for b in 0..batch {
            out.extend_from_slice(&x.data[(b * n + index) * d..(b * n + index + 1) * d]);
        }
        Ok(CpuTensor::new(vec![batch, d], out))
    }

    fn binary(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        op: BinaryOp,
    ) -> Result<CpuTensor, BackendError> {
        self.binary_impl(a, b, op)
    }

    fn compare(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        op: CompareOp,
    ) -> Result<CpuTensor, BackendError> {
        self.compare_impl(a, b, op)
    }

    fn select(
        &self,
        mask: &CpuTensor,
        a: &CpuTensor,
        b: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
        self.select_impl(mask, a, b)
    }

    fn reduce(&self, x: &CpuTensor, axis: usize, op: ReduceOp) -> Result<CpuTensor, BackendError> {
        self.reduce_impl(x, axis, op)
    }

    fn pool2d(&self, x: &CpuTensor, spec: Pool2dSpec) -> Result<CpuTensor, BackendError> {
        self.pool2d_impl(x, spec)
    }

    fn resize(
        &self,
        x: &CpuTensor,
        size: [usize; 2],
        mode: ResizeMode,
    ) -> Result<CpuTensor, BackendError> {
        self.resize_impl(x, size, mode)
    }

    fn concat(&self, xs: &[&CpuTensor], axis: usize) -> Result<CpuTensor, BackendError> {
        self.concat_impl(xs, axis)
    }

    fn slice(
        &self,
        x: &CpuTensor,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<CpuTensor, BackendError> {
        self.slice_impl(x, axis, start, len)
    }

    fn write_slice(
        &self,
        dst: &mut CpuTensor,
        axis: usize,
        start: usize,
        src: &CpuTensor,
    ) -> Result<(), BackendError> {
        self.write_slice_impl(dst, axis, start, src)
    }

    fn matmul(
        &self,
        a: &CpuTensor,
        b: &CpuTensor,
        transpose_b: bool,
    ) -> Result<CpuTensor, BackendError> {
        self.matmul_impl(a, b, transpose_b)
    }

    fn embedding(&self, table: &CpuTensor, ids: &[u32]) -> Result<CpuTensor, BackendError> {
        self.embedding_impl(table, ids)
    }

    fn rms_norm(
        &self,
        x: &CpuTensor,
        gamma: &CpuTensor,
        eps: f32,
    ) -> Result<CpuTensor, BackendError> {
        self.rms_norm_impl(x, gamma, eps)
    }

    fn rope(
        &self,
        x: &CpuTensor,
        cos: &CpuTensor,
        sin: &CpuTensor,
    ) -> Result<CpuTensor, BackendError> {
        self.rope_impl(x, cos, sin)
    }

    fn attention_gqa(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        spec: AttentionSpec,
    ) -> Result<CpuTensor, BackendError> {
        self.attention_gqa_impl(q, k, v, spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], f: impl Fn(usize) -> f32) -> HostTensor {
        let n = shape.iter().product();
        HostTensor::new(shape.to_vec(), (0..n).map(f).collect()).unwrap()
    }

    #[test]
    fn attention_matches_naive_per_head_softmax() {
        // hd 4 takes the generic path; 32 and 64 the AVX-512 kernel where the CPU has it.
        for (threads, b, n, heads, hd) in [(2, 2, 37, 3, 4), (2, 2, 37, 2, 32), (1, 1, 29, 3, 64)] {
            attention_matches_naive(threads, b, n, heads, hd);
        }
    }

    fn attention_matches_naive(threads: usize, b: usize, n: usize, heads: usize, hd: usize) {
        let be = CpuBackend::new(threads).unwrap();
        let d = heads * hd;
        let qkv = t(&[b, n, 3 * d], |i| ((i * 37) % 23) as f32 * 0.1 - 1.1);
        let got = be
            .readback(&be.attention(&be.upload(&qkv).unwrap(), heads, 0.5).unwrap())
            .unwrap();
        let q = qkv.data();
        for bi in 0..b {
            for h in 0..heads {
                for i in 0..n {
                    let at = |tok: usize, part: usize, c: usize| {
                        q[(bi * n + tok) * 3 * d + part * d + h * hd + c] as f64
                    };
                    let s: Vec<f64> = (0..n)
                        .map(|j| 0.5 * (0..hd).map(|c| at(i, 0, c) * at(j, 1, c)).sum::<f64>())
                        .collect();
                    let m = s.iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                    for c in 0..hd {
                        let want: f64 = (0..n).map(|j| (s[j] - m).exp() / z * at(j, 2, c)).sum();
                        let g = got.data()[(bi * n + i) * d + h * hd + c] as f64;
                        assert!(
                            (g - want).abs() < 1e-5,
                            "b{bi} h{h} i{i} c{c}: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn conv2d_with_padding_and_stride_matches_naive() {
        let be = CpuBackend::new(1).unwrap();
        let x = t(&[2, 3, 7, 6], |i| (i % 11) as f32 - 5.0);
        let w = t(&[4, 3, 3, 2], |i| (i % 7) as f32 * 0.25 - 0.5);
        let bias = t(&[4], |i| i as f32);
        let conv = be
            .prepare_conv2d(&w, Some(&bias), Conv2dSpec::new([2, 1], [1, 1]))
            .unwrap();
        let y = be
            .readback(&be.conv2d(&be.upload(&x).unwrap(), &conv).unwrap())
            .unwrap();
        let (ho, wo) = ((7 + 2 - 3) / 2 + 1, (6 + 2 - 2) + 1);
        assert_eq!(y.shape(), [2, 4, ho, wo]);
        for b in 0..2 {
            for o in 0..4 {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = o as f32;
                        for c in 0..3 {
                            for ky in 0..3 {
                                for kx in 0..2 {
                                    let iy = (oy * 2 + ky) as isize - 1;
                                    let ix = (ox + kx) as isize - 1;
                                    if (0..7).contains(&iy) && (0..6).contains(&ix) {
                                        s += x.data()
                                            [((b * 3 + c) * 7 + iy as usize) * 6 + ix as usize]
                                            * w.data()[((o * 3 + c) * 3 + ky) * 2 + kx];
                                    }
                                }
                            }
                        }
                        let g = y.data()[((b * 4 + o) * ho + oy) * wo + ox];
                        assert!((g - s).abs() < 1e-4, "{g} vs {s}");
                    }
                }
            }
        }
    }

    #[test]
    fn permute_moves_axes_like_torch() {
        let be = CpuBackend::new(1).unwrap();
        let x = t(&[2, 3, 4], |i| i as f32);
        let y = be
            .readback(&be.permute(&be.upload(&x).unwrap(), &[2, 0, 1]).unwrap())
            .unwrap();
        assert_eq!(y.shape(), [4, 2, 3]);
        // y[k, i, j] = x[i, j, k]
        assert_eq!(y.data()[(3 * 2 + 1) * 3 + 2], x.data()[(3 + 2) * 4 + 3]);
        assert!(be.permute(&be.upload(&x).unwrap(), &[0, 0, 1]).is_err());
    }

    #[test]
    fn linear_with_gelu_matches_naive() {
        let be = CpuBackend::new(2).unwrap();
        let x = t(&[3, 5, 8], |i| (i % 13) as f32 * 0.2 - 1.2);
        let w = t(&[6, 8], |i| (i % 5) as f32 * 0.1 - 0.2);
        let bias = t(&[6], |i| i as f32 * 0.1);
        let layer = be.prepare_linear(&w, Some(&bias)).unwrap();
        let y = be
            .readback(
                &be.linear(&be.upload(&x).unwrap(), &layer, Activation::Gelu)
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(y.shape(), [3, 5, 6]);
        for r in 0..15 {
            for o in 0..6 {
                let z: f64 = bias.data()[o] as f64
                    + (0..8)
                        .map(|i| x.data()[r * 8 + i] as f64 * w.data()[o * 8 + i] as f64)
                        .sum::<f64>();
                let want = 0.5 * z * (1.0 + libm::erf(z / std::f64::consts::SQRT_2));
                assert!((y.data()[r * 6 + o] as f64 - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors_not_panics() {
        let be = CpuBackend::new(1).unwrap();
        let a = be.upload(&t(&[2, 3], |_| 1.0)).unwrap();
        let b = be.upload(&t(&[3, 2], |_| 1.0)).unwrap();
        assert!(be.add(&a, &b).is_err());
        assert!(be.attention(&a, 2, 1.0).is_err());
        let layer = be.prepare_linear(&t(&[4, 5], |_| 0.0), None).unwrap();
        assert!(be.linear(&a, &layer, Activation::Identity).is_err());
    }
}
