//! The WGSL kernels and the pipeline cache: each (kernel, specialisation) compiles once
//! per backend, on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::BackendError;

const ERF: &str = include_str!("erf.wgsl");
const ACTIVATION: &str = include_str!("activation.wgsl");
const PARAMS: &str = include_str!("params.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");
const MATMUL_A_VEC4: &str = include_str!("matmul_a_vec4.wgsl");
const MATMUL_A_SCALAR: &str = include_str!("matmul_a_scalar.wgsl");
const MATMUL_A_NCHW: &str = include_str!("matmul_a_nchw.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");
const ATTENTION_GQA: &str = include_str!("attention_gqa.wgsl");
const ROWS: &str = include_str!("rows.wgsl");
const ELEMENTWISE: &str = include_str!("elementwise.wgsl");
const BROADCAST: &str = include_str!("broadcast.wgsl");
const REDUCE: &str = include_str!("reduce.wgsl");
const SPATIAL: &str = include_str!("spatial.wgsl");
const COPY: &str = include_str!("copy.wgsl");
const CONV: &str = include_str!("conv.wgsl");
const ROPE: &str = include_str!("rope.wgsl");
const BMM: &str = include_str!("bmm.wgsl");
#[cfg(feature = "sparse")]
const SPARSE: &str = include_str!("sparse.wgsl");

/// Heads wider than this would not fit the attention kernel's registers and shared
/// memory budget.
pub(crate) const MAX_HEAD_DIM: usize = 256;

/// How the tiled matmul reads its activation `a`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ALoad {
    /// Row-major `[M, K]`, K a multiple of 4: aligned vec4 loads.
    Vec4,
    /// Row-major `[M, K]`, any K: scalar loads.
    Scalar,
    /// An NCHW image read as `[B * H * W, C]` (a 1x1 stride-1 convolution's input).
    Nchw,
}

/// A kernel, with what specialises its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// Tiled matmul against a prepared weight.
    Matmul {
        a: ALoad,
    },
    /// Fused attention for one head width.
    Attention {
        head_dim: u32,
    },
    /// Fused grouped-query attention for one head width; `decode`: the entry point
    /// for a few queries over a long cache (threads split the keys, not the queries).
    AttentionGqa {
        head_dim: u32,
        decode: bool,
    },
    /// Batched activation x activation product.
    Bmm,
    /// Block-sparse linear layer (`sparse.wgsl`).
    #[cfg(feature = "sparse")]
    BlockSparse,
    LayerNorm,
    RmsNorm,
    Softmax,
    Activation,
    Scale,
    Add,
    Permute,
    PlaceTokens,
    BroadcastToken,
    SelectToken,
    Binary,
    Compare,
    Where,
    Reduce,
    ReduceRows,
    Pool2d,
    Resize,
    CopyRuns,
    GatherRows,
    Im2col,
    ConvDirect,
    Rope,
}

impl Kernel {
    fn entry(self) -> &'static str {
        match self {
            Kernel::AttentionGqa { decode: true, .. } => "decode",
            Kernel::Matmul { .. }
            | Kernel::Attention { .. }
            | Kernel::AttentionGqa { .. }
            | Kernel::Bmm => "main",
            #[cfg(feature = "sparse")]
            Kernel::BlockSparse => "main",
            Kernel::LayerNorm => "layer_norm",
            Kernel::RmsNorm => "rms_norm",
            Kernel::Softmax => "softmax",
            Kernel::Activation => "activation",
            Kernel::Scale => "scale",
            Kernel::Add => "add",
            Kernel::Permute => "permute",
            Kernel::PlaceTokens => "place_tokens",
            Kernel::BroadcastToken => "broadcast_token",
            Kernel::SelectToken => "select_token",
            Kernel::Binary => "binary",
            Kernel::Compare => "compare",
            Kernel::Where => "where_mask",
            Kernel::Reduce => "reduce",
            Kernel::ReduceRows => "reduce_rows",
            Kernel::Pool2d => "pool2d",
            Kernel::Resize => "resize",
            Kernel::CopyRuns => "copy_runs",
            Kernel::GatherRows => "gather_rows",
            Kernel::Im2col => "im2col",
            Kernel::ConvDirect => "conv_direct",
            Kernel::Rope => "rope",
        }
    }

    /// The module source; kernels sharing a module share its key.
    fn source(self, f16: bool) -> (String, String) {
        match self {
            Kernel::Matmul { a } => {
                // `enable` must open the module.
                let weights = if f16 {
                    "enable f16;\nalias WVec4 = vec4<f16>;\n"
                } else {
                    "alias WVec4 = vec4<f32>;\n"
                };
                let loader = match a {
                    ALoad::Vec4 => MATMUL_A_VEC4,
                    ALoad::Scalar => MATMUL_A_SCALAR,
                    ALoad::Nchw => MATMUL_A_NCHW,
                };
                (
                    format!("matmul/{a:?}/{f16}"),
                    format!("{weights}{ERF}{ACTIVATION}{loader}{MATMUL}"),
                )
            }
            Kernel::Attention { head_dim } => (
                format!("attention/{head_dim}"),
                format!("{}{ATTENTION}", attention_consts(head_dim)),
            ),
            Kernel::AttentionGqa { head_dim, .. } => (
                format!("attention_gqa/{head_dim}"),
                format!("{}{ATTENTION_GQA}", attention_consts(head_dim)),
            ),
            Kernel::Bmm => ("bmm".into(), BMM.into()),
            #[cfg(feature = "sparse")]
            Kernel::BlockSparse => ("sparse".into(), format!("{ERF}{ACTIVATION}{SPARSE}")),
            Kernel::LayerNorm | Kernel::RmsNorm | Kernel::Softmax => ("rows".into(), ROWS.into()),
            Kernel::Activation
            | Kernel::Scale
            | Kernel::Add
            | Kernel::Permute
            | Kernel::PlaceTokens
            | Kernel::BroadcastToken
            | Kernel::SelectToken => (
                "elementwise".into(),
                format!("{ERF}{ACTIVATION}{ELEMENTWISE}"),
            ),
            Kernel::Binary | Kernel::Compare | Kernel::Where => {
                ("broadcast".into(), format!("{PARAMS}{BROADCAST}"))
            }
            Kernel::Reduce | Kernel::ReduceRows => ("reduce".into(), format!("{PARAMS}{REDUCE}")),
            Kernel::Pool2d | Kernel::Resize => ("spatial".into(), format!("{PARAMS}{SPATIAL}")),
            Kernel::CopyRuns | Kernel::GatherRows => ("copy".into(), format!("{PARAMS}{COPY}")),
            Kernel::Im2col | Kernel::ConvDirect => {
                ("conv".into(), format!("{PARAMS}{ERF}{ACTIVATION}{CONV}"))
            }
            Kernel::Rope => ("rope".into(), format!("{PARAMS}{ROPE}")),
        }
    }
}

/// The constants an attention kernel is specialised on: the head width, in vec4s, and
/// the keys per shared-memory block (K and V tiles: 2 x KB x HD4 x 16 bytes <= 16 KiB).
fn attention_consts(head_dim: u32) -> String {
    let hd4 = head_dim.div_ceil(4);
    let kb = (512 / hd4).clamp(4, 32);
    format!(
        "const HEAD_DIM: u32 = {head_dim}u;\nconst HD4: u32 = {hd4}u;\nconst KB: u32 = {kb}u;\n"
    )
}

/// A compiled kernel.
pub(crate) struct Pipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
}

#[derive(Default)]
pub(crate) struct Cache {
    modules: HashMap<String, wgpu::ShaderModule>,
    pipelines: HashMap<Kernel, Arc<Pipeline>>,
}

/// Returns the pipeline for `kernel`, compiling it the first time.
pub(crate) fn pipeline(
    cache: &Mutex<Cache>,
    device: &wgpu::Device,
    f16: bool,
    kernel: Kernel,
) -> Result<Arc<Pipeline>, BackendError> {
    let mut cache = cache.lock().map_err(|_| BackendError::Device {
        backend: "wgpu",
        detail: "pipeline cache poisoned by an earlier panic".into(),
    })?;
    if let Some(p) = cache.pipelines.get(&kernel) {
        return Ok(Arc::clone(p));
    }
    // Compilation errors are captured here and returned, not left to the device's
    // uncaptured-error handler.
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let (key, source) = kernel.source(f16);
    let module = cache
        .modules
        .entry(key.clone())
        .or_insert_with(|| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(&key),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
        })
        .clone();
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(kernel.entry()),
        layout: None,
        module: &module,
        entry_point: Some(kernel.entry()),
        compilation_options: wgpu::PipelineCompilationOptions::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        cache.modules.remove(&key);
        return Err(BackendError::Device {
            backend: "wgpu",
            detail: format!("compiling kernel {kernel:?}: {e}"),
        });
    }
    let layout = pipeline.get_bind_group_layout(0);
    let p = Arc::new(Pipeline { pipeline, layout });
    cache.pipelines.insert(kernel, Arc::clone(&p));
    Ok(p)
}
