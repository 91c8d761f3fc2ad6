//! 2-D convolution on the GPU, by the cheapest path the layer allows:
//!
//! - **direct** (`conv.wgsl`'s `conv_direct`) when each group reads one input channel
//!   (depthwise convolutions, FemtoDet's staple): one thread per output, the bias and
//!   activation fused; no im2col, no matmul;
//! - **1x1, stride 1, no padding**: the tiled matmul reads the NCHW input (each
//!   group's channels) as its `[B * H * W, C / groups]` operand directly (no im2col);
//! - otherwise **im2col + matmul per group**: each group's windows are laid out as rows
//!   and multiplied by that group's flattened weight, stored channel-major into the
//!   group's slice of the output channels, with the bias and activation fused.

use super::{
    act_code, as_u32, numel, GemmLayout, Kernel, NchwChannels, WgpuBackend, WgpuLinear, WgpuTensor,
};
use crate::backend::{
    conv2d_geometry, Activation, Backend, BackendError, Conv2dGeometry, Conv2dSpec,
};
use crate::tensor::HostTensor;

/// A convolution prepared for one of the paths above.
#[derive(Debug)]
pub struct WgpuConv2d {
    path: Path,
    in_channels: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    activation: Activation,
}

enum Path {
    /// The weight as PyTorch lays it out, `[O, C / groups, kh, kw]`, and the bias
    /// (zeros when absent), both f32.
    Direct {
        weight: wgpu::Buffer,
        bias: wgpu::Buffer,
        has_bias: bool,
    },
    /// One prepared matmul per group (its weight `[O / groups, C / groups * kh * kw]`).
    Gemm { groups: Vec<WgpuLinear> },
}

impl std::fmt::Debug for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Direct { .. } => f.write_str("Direct"),
            Path::Gemm { groups } => write!(f, "Gemm({} groups)", groups.len()),
        }
    }
}

fn refuse(detail: String) -> BackendError {
    BackendError::shape("prepare_conv2d", detail)
}

impl WgpuBackend {
    pub(super) fn prepare_conv(
        &self,
        weight: &HostTensor,
        bias: Option<&HostTensor>,
        spec: Conv2dSpec,
    ) -> Result<WgpuConv2d, BackendError> {
        let Conv2dSpec {
            stride,
            padding,
            dilation,
            groups,
            activation,
        } = spec;
        let &[out_channels, per_group, kh, kw] = weight.shape() else {
            return Err(refuse(format!(
                "weight must be [out, in / groups, kh, kw], got {:?}",
                weight.shape()
            )));
        };
        if stride.contains(&0) || dilation.contains(&0) || groups == 0 {
            return Err(refuse(format!(
                "stride {stride:?}, dilation {dilation:?} and groups {groups} must be >= 1"
            )));
        }
        if kh == 0 || kw == 0 || per_group == 0 {
            return Err(refuse(format!("empty weight {:?}", weight.shape())));
        }
        if !out_channels.is_multiple_of(groups) {
            return Err(refuse(format!(
                "{out_channels} output channels do not split into {groups} groups"
            )));
        }
        if let Some(b) = bias {
            if b.shape() != [out_channels] {
                return Err(refuse(format!(
                    "bias must be [{out_channels}], got {:?}",
                    b.shape()
                )));
            }
        }
        let in_channels = per_group
            .checked_mul(groups)
            .ok_or_else(|| refuse(format!("{groups} groups of {per_group} channels")))?;
        let path = if per_group == 1 {
            let usage = wgpu::BufferUsages::STORAGE;
            let zeros;
            let b = match bias {
                Some(b) => b.data(),
                None => {
                    zeros = vec![0.0f32; out_channels];
                    &zeros
                }
            };
            Path::Direct {
                weight: self.create_with(bytemuck::cast_slice(weight.data()), usage)?,
                bias: self.create_with(bytemuck::cast_slice(b), usage)?,
                has_bias: bias.is_some(),
            }
        } else {
            let o_g = out_channels / groups;
            let patch = per_group * kh * kw;
            let mut layers = Vec::with_capacity(groups);
            for g in 0..groups {
                let rows = g * o_g..(g + 1) * o_g;
                let w = HostTensor::new(
                    [o_g, patch],
                    weight.data()[rows.start * patch..rows.end * patch].to_vec(),
                )
                .map_err(|e| refuse(e.to_string()))?;
                let b = bias
                    .map(|b| HostTensor::new([o_g], b.data()[rows].to_vec()))
                    .transpose()
                    .map_err(|e| refuse(e.to_string()))?;
                layers.push(self.prepare_linear(&w, b.as_ref()).map_err(|e| match e {
                    BackendError::Shape { detail, .. } => refuse(detail),
                    e => e,
                })?);
            }
            Path::Gemm { groups: layers }
        };
        Ok(WgpuConv2d {
            path,
            in_channels,
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            dilation,
            groups,
            activation,
        })
    }

    pub(super) fn conv(
        &self,
        x: &WgpuTensor,
        layer: &WgpuConv2d,
    ) -> Result<WgpuTensor, BackendError> {
        let [kh, kw] = layer.kernel;
        let [dh, dw] = layer.dilation;
        // The geometry of the dilated window's extent is that of a dense kernel.
        let extent = [
            dh.saturating_mul(kh - 1).saturating_add(1),
            dw.saturating_mul(kw - 1).saturating_add(1),
        ];
        let Conv2dGeometry {
            batch,
            channels,
            h,
            w,
            ho,
            wo,
        } = conv2d_geometry(
            &x.shape,
            layer.in_channels,
            extent,
            layer.stride,
            layer.padding,
        )?;
        let out = self.output("conv2d", vec![batch, layer.out_channels, ho, wo])?;
        let total = numel(&out);
        if total == 0 {
            return Ok(out);
        }
        let [sh, sw] = layer.stride;
        let [ph, pw] = layer.padding;
        let geometry = [channels, h, w, kh, kw, sh, sw, ph, pw, ho, wo, dh, dw];
        let mut words = geometry
            .iter()
            .map(|&v| as_u32("conv2d", "dimension", v))
            .collect::<Result<Vec<_>, _>>()?;
        let per_group = channels / layer.groups;
        let o_g = layer.out_channels / layer.groups;
        match &layer.path {
            Path::Direct {
                weight,
                bias,
                has_bias,
            } => {
                words.extend([
                    layer.out_channels as u32,
                    per_group as u32,
                    o_g as u32,
                    u32::from(*has_bias),
                    act_code(layer.activation),
                ]);
                self.elementwise(
                    "conv2d",
                    Kernel::ConvDirect,
                    total,
                    &words,
                    vec![
                        (1, x.buf.buffer().clone()),
                        (2, out.buf.buffer().clone()),
                        (3, weight.clone()),
                        (4, bias.clone()),
                    ],
                )?;
            }
            Path::Gemm { groups } => {
                let positions = ho * wo;
                let rows = batch * positions;
                let pointwise =
                    layer.kernel == [1, 1] && layer.stride == [1, 1] && layer.padding == [0, 0];
                let layout = |g: usize| GemmLayout::Image {
                    positions,
                    channel_offset: g * o_g,
                    out_channels: layer.out_channels,
                    nchw_input: pointwise.then_some(NchwChannels {
                        offset: g * per_group,
                        total: channels,
                    }),
                };
                if pointwise {
                    for (g, linear) in groups.iter().enumerate() {
                        self.gemm(
                            "conv2d",
                            (x.buf.buffer(), rows),
                            linear,
                            layer.activation,
                            out.buf.buffer(),
                            layout(g),
                        )?;
                    }
                    return Ok(out);
                }
                let patch = per_group * kh * kw;
                let cols = self.output("conv2d", vec![rows, patch])?;
                words.extend([per_group as u32, 0]);
                for (g, linear) in groups.iter().enumerate() {
                    words[14] = as_u32("conv2d", "channel", g * per_group)?;
                    self.elementwise(
                        "conv2d",
                        Kernel::Im2col,
                        rows * patch,
                        &words,
                        vec![(1, x.buf.buffer().clone()), (2, cols.buf.buffer().clone())],
                    )?;
                    self.gemm(
                        "conv2d",
                        (cols.buf.buffer(), rows),
                        linear,
                        layer.activation,
                        out.buf.buffer(),
                        layout(g),
                    )?;
                }
            }
        }
        Ok(out)
    }
}
