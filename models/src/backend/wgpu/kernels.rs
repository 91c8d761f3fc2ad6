//! The WGSL kernels and the pipeline cache: each (kernel, specialisation) compiles once
//! per backend, on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::BackendError;

const ERF: &str = include_str!("erf.wgsl");
const MATMUL: &str = include_str!("matmul.wgsl");
const MATMUL_A_VEC4: &str = include_str!("matmul_a_vec4.wgsl");
const MATMUL_A_SCALAR: &str = include_str!("matmul_a_scalar.wgsl");
const ATTENTION: &str = include_str!("attention.wgsl");
const ROWS: &str = include_str!("rows.wgsl");
const ELEMENTWISE: &str = include_str!("elementwise.wgsl");

/// Heads wider than this would not fit the attention kernel's registers and shared
/// memory budget.
pub(crate) const MAX_HEAD_DIM: usize = 256;

/// A kernel, with what specialises its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// Tiled matmul; `a_vec4` when K is a multiple of 4 (aligned vec4 loads of `a`).
    Matmul {
        a_vec4: bool,
    },
    /// Fused attention for one head width.
    Attention {
        head_dim: u32,
    },
    LayerNorm,
    Softmax,
    Gelu,
    Scale,
    Add,
    Permute,
    PlaceTokens,
    BroadcastToken,
    SelectToken,
    Im2col,
}

impl Kernel {
    fn entry(self) -> &'static str {
        match self {
            Kernel::Matmul { .. } | Kernel::Attention { .. } => "main",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Softmax => "softmax",
            Kernel::Gelu => "gelu",
            Kernel::Scale => "scale",
            Kernel::Add => "add",
            Kernel::Permute => "permute",
            Kernel::PlaceTokens => "place_tokens",
            Kernel::BroadcastToken => "broadcast_token",
            Kernel::SelectToken => "select_token",
            Kernel::Im2col => "im2col",
        }
    }

    /// The module source; kernels sharing a module share its key.
    fn source(self, f16: bool) -> (String, String) {
        match self {
            Kernel::Matmul { a_vec4 } => {
                // `enable` must open the module.
                let weights = if f16 {
                    "enable f16;\nalias WVec4 = vec4<f16>;\n"
                } else {
                    "alias WVec4 = vec4<f32>;\n"
                };
                let loader = if a_vec4 {
                    MATMUL_A_VEC4
                } else {
                    MATMUL_A_SCALAR
                };
                (
                    format!("matmul/{a_vec4}/{f16}"),
                    format!("{weights}{ERF}{loader}{MATMUL}"),
                )
            }
            Kernel::Attention { head_dim } => (format!("attention/{head_dim}"), {
                let hd4 = head_dim.div_ceil(4);
                // K and V tiles: 2 x KB x HD4 x 16 bytes <= 16 KiB.
                let kb = (512 / hd4).clamp(4, 32);
                format!(
                    "const HEAD_DIM: u32 = {head_dim}u;\nconst HD4: u32 = {hd4}u;\n\
                         const KB: u32 = {kb}u;\n{ATTENTION}"
                )
            }),
            Kernel::LayerNorm | Kernel::Softmax => ("rows".into(), ROWS.into()),
            _ => ("elementwise".into(), format!("{ERF}{ELEMENTWISE}")),
        }
    }
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
