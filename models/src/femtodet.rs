//! FemtoDet (Tu et al., ICCV 2023): a 68.77k-parameter detector, from safetensors
//! checkpoints with the FemtoDet repository's (mmdet 2.23) state-dict names.
//!
//! ```text
//! input [B,3,416,416] -> backbone.conv1 (3x3 s2, BN, ReLU)                   point stem
//!   -> layer1 .. layer7 (inverted residuals, MobileNetV2 at width 0.25)     points stage1..stage7
//!      taps after layer3 / layer5 / layer7: stride 8 / 16 / 32
//!   -> neck (SharedNeck): lateral 1x1 to 64 per tap, nearest resize to the stride-16
//!      grid, sum, depthwise 3x3 + pointwise 1x1 (BN, ReLU)                  point neck
//!   -> bbox_head (SharedDetHead, YOLOX at stride 16): 1x1 cls / reg / obj
//!   -> decode, score max sigmoid(cls) * sigmoid(obj) >= 0.01, class-aware NMS at 0.65
//! ```
//!
//! Each block is `1x1 expand (BN, ReLU; absent when t = 1) -> 3x3 depthwise IBE conv
//! (ReLU) -> 1x1 projection (BN, no activation; groups 2 in layer6 and layer7)`, plus
//! the input when the stride is 1 and the channels match.
//!
//! **IBE conv.** The checkpoint holds its training form, `act(BN1(W*x) + BN2(W*x -
//! sigmoid(theta) * (sum W)*x))` with `sum W` the kernel summed spatially and applied as a
//! 1x1 convolution with the same stride. `(sum W)*x` is the centre tap of a 3x3 kernel,
//! so both branches are 3x3 depthwise convolutions (`W` and `W` less `sigmoid(theta) sum
//! W` at its centre); each BN folds into its branch and the two sum into one depthwise
//! 3x3 convolution with bias ([`fold_ibe`], in f64). Every other BN folds into its
//! convolution too: the model runs as plain convolutions, resizes and adds.
//!
//! **What crosses the link.** Up to `stage3` a split sends one map. From `stage4` on the
//! neck needs the taps already passed (stride 8 after layer3, stride 16 after layer5),
//! so the head sends them with the current map, each item's tensors flattened and
//! concatenated in that order: `[B, L]` (at `stage7`, the three taps, 51,376 values at
//! 416). At `neck` the neck's output `[B, 64, 26, 26]` crosses. A checkpoint with a
//! `bottleneck.*` convolutional bottleneck (BottleFit, [`crate::bottleneck`]) is cut
//! only where its metadata `split` says (a one-map point), through the bottleneck.
//!
//! Boxes are in the letterboxed input's pixels; [`EvalTransform::box_scale`] maps them
//! back to the image.

use crate::backend::{Activation, Backend, BackendError, Conv2dSpec, DeviceTensor, ResizeMode};
use crate::bottleneck::{Bottleneck, BottleneckLoadError, CodeError};
use crate::net::{
    Detection, Family, InputSpec, NetError, NetState, Output, OutputKind, SplitNet, SplitPoint,
};
use crate::preprocess::EvalTransform;
use crate::split::{has_bottleneck, SplitMetadata, BOTTLENECK_PREFIX};
use crate::tensor::HostTensor;
use crate::weights::{VarBuilder, Weights, WeightsError};

/// The architecture name the checkpoint's metadata `arch` may give.
pub const ARCH: &str = "femtodet";
/// Input side at test time.
pub const INPUT_SIDE: usize = 416;
/// mmdet's mean, RGB, in pixel units.
pub const MEAN: [f32; 3] = [123.675, 116.28, 103.53];
/// FemtoDet's std, in pixel units (one value for the three channels).
pub const STD: [f32; 3] = [58.82; 3];
/// The letterbox pad value.
pub const PAD_VALUE: u8 = 114;
/// Detections scoring below this are dropped.
pub const SCORE_THRESHOLD: f32 = 0.01;
/// Class-aware NMS suppresses a box overlapping a better one of its class by more.
pub const NMS_IOU: f32 = 0.65;
/// The head's stride (one level).
pub const HEAD_STRIDE: usize = 16;
/// Channels of the neck and the head's input.
pub const NECK_CHANNELS: usize = 64;
/// BatchNorm epsilon (PyTorch's default, which mmdet's `BN` keeps).
pub const BN_EPS: f64 = 1e-5;
/// Most classes a checkpoint may declare (caps the head before allocating).
pub const MAX_CLASSES: usize = 10_000;

/// The backbone rows: expand ratio, channels (before the width factor), blocks,
/// stride of the first block, groups of the projection.
const ROWS: [(usize, usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1, 1),
    (4, 24, 2, 2, 1),
    (4, 32, 2, 2, 1),
    (4, 64, 3, 2, 1),
    (4, 96, 2, 1, 1),
    (4, 160, 2, 2, 2),
    (4, 320, 1, 1, 2),
];
/// FemtoNet's width factor.
const WIDEN: f64 = 0.25;
/// Stages (1-based) after which the backbone taps the stride 8/16/32 maps.
const TAP_STAGES: [usize; 3] = [3, 5, 7];
/// Depth of the `neck` point (stem 0, stageK K).
const NECK_DEPTH: usize = 8;

/// mmdet's `make_divisible(value, 8)`.
fn make_divisible(value: f64) -> usize {
    let divisor = 8.0;
    let v = (((value + divisor / 2.0) / divisor).floor() * divisor).max(divisor);
    (if v < 0.9 * value { v + divisor } else { v }) as usize
}

/// Channels out of the stem.
pub fn stem_channels() -> usize {
    make_divisible(32.0 * WIDEN)
}

/// Channels out of each stage (8, 8, 8, 16, 24, 40, 80).
pub fn stage_channels() -> [usize; 7] {
    ROWS.map(|(_, c, ..)| make_divisible(c as f64 * WIDEN))
}

/// Errors loading FemtoDet.
#[derive(Debug, thiserror::Error)]
pub enum FemtoLoadError {
    /// A tensor is missing, mis-shaped, unexpected or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The backend refused a weight.
    #[error("preparing weights: {0}")]
    Backend(#[from] BackendError),
    /// The metadata names another architecture.
    #[error("unknown architecture {name:?}: this loader builds {ARCH:?} only")]
    UnknownArch {
        /// The name given.
        name: String,
    },
    /// The checkpoint's values or metadata cannot form the model.
    #[error("{0}")]
    Config(String),
    /// The bottleneck's tensors are wrong.
    #[error(transparent)]
    Bottleneck(#[from] BottleneckLoadError),
    /// The bottleneck cannot encode the map at its point.
    #[error("the bottleneck does not fit its split point: {0}")]
    Code(#[from] CodeError),
}

/// Errors running FemtoDet.
#[derive(Debug, thiserror::Error)]
pub enum FemtoRunError {
    /// The input or the received activation has the wrong shape.
    #[error("{what} of shape {actual:?}: expected [B, {expected}]")]
    Shape {
        /// What was given.
        what: &'static str,
        /// The shape given.
        actual: Vec<usize>,
        /// The item shape expected, in words.
        expected: String,
    },
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The bottleneck refused the activation or the code.
    #[error(transparent)]
    Code(#[from] CodeError),
}

/// A BatchNorm's parameters (inference form).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// `weight` (gamma).
    pub weight: Vec<f32>,
    /// `bias` (beta).
    pub bias: Vec<f32>,
    /// `running_mean`.
    pub mean: Vec<f32>,
    /// `running_var`.
    pub var: Vec<f32>,
}

impl BatchNorm {
    fn load(vb: &VarBuilder<'_>, c: usize) -> Result<Self, WeightsError> {
        Ok(Self {
            weight: vb.get("weight", &[c])?.into_data(),
            bias: vb.get("bias", &[c])?.into_data(),
            mean: vb.get("running_mean", &[c])?.into_data(),
            var: vb.get("running_var", &[c])?.into_data(),
        })
    }

    /// Per channel `(scale, shift)` with `bn(y) = scale * y + shift`.
    pub fn affine(&self) -> Vec<(f64, f64)> {
        (0..self.weight.len())
            .map(|i| {
                let scale = self.weight[i] as f64 / (self.var[i] as f64 + BN_EPS).sqrt();
                (scale, self.bias[i] as f64 - scale * self.mean[i] as f64)
            })
            .collect()
    }
}

/// Folds a BN into a convolution `weight` `[O, I, kh, kw]` with optional `bias`:
/// returns the weight and bias of `bn(conv(x))`.
pub fn fold_bn(
    weight: &HostTensor,
    bias: Option<&HostTensor>,
    bn: &BatchNorm,
) -> Result<(HostTensor, HostTensor), crate::tensor::ShapeError> {
    let o = bn.weight.len();
    let per = weight.numel() / o.max(1);
    let affine = bn.affine();
    let w: Vec<f32> = weight
        .data()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f64 * affine[i / per].0) as f32)
        .collect();
    let b: Vec<f32> = (0..o)
        .map(|c| {
            let b0 = bias.map_or(0.0, |b| b.data()[c] as f64);
            (affine[c].0 * b0 + affine[c].1) as f32
        })
        .collect();
    Ok((
        HostTensor::new(weight.shape().to_vec(), w)?,
        HostTensor::new([o], b)?,
    ))
}

/// Folds an IBE conv's training form (depthwise `weight` `[C, 1, 3, 3]`, the scalar
/// `theta`, `bn1` on the plain branch, `bn2` on the difference branch) into one
/// depthwise 3x3 convolution's weight and bias (see the module docs).
pub fn fold_ibe(
    weight: &HostTensor,
    theta: f32,
    bn1: &BatchNorm,
    bn2: &BatchNorm,
) -> Result<(HostTensor, HostTensor), crate::tensor::ShapeError> {
    let c = bn1.weight.len();
    let s = 1.0 / (1.0 + (-(theta as f64)).exp());
    let (a1, a2) = (bn1.affine(), bn2.affine());
    let mut w = vec![0.0f32; c * 9];
    let mut b = vec![0.0f32; c];
    for ch in 0..c {
        let k = &weight.data()[ch * 9..ch * 9 + 9];
        let sum: f64 = k.iter().map(|&v| v as f64).sum();
        for (t, &v) in k.iter().enumerate() {
            let plain = v as f64;
            let diff = if t == 4 { plain - s * sum } else { plain };
            w[ch * 9 + t] = (a1[ch].0 * plain + a2[ch].0 * diff) as f32;
        }
        b[ch] = (a1[ch].1 + a2[ch].1) as f32;
    }
    Ok((HostTensor::new([c, 1, 3, 3], w)?, HostTensor::new([c], b)?))
}

fn shape_err(e: crate::tensor::ShapeError) -> FemtoLoadError {
    FemtoLoadError::Config(e.to_string())
}

/// A ConvModule (`conv` without bias, `bn`) folded into one convolution.
fn conv_bn<B: Backend>(
    be: &B,
    vb: &VarBuilder<'_>,
    [out, inp, k]: [usize; 3],
    spec: Conv2dSpec,
) -> Result<B::Conv2d, FemtoLoadError> {
    let w = vb
        .pp("conv")
        .get("weight", &[out, inp / spec.groups, k, k])?;
    let bias = match vb.pp("conv").contains("bias") {
        true => Some(vb.pp("conv").get("bias", &[out])?),
        false => None,
    };
    let bn = BatchNorm::load(&vb.pp("bn"), out)?;
    let (w, b) = fold_bn(&w, bias.as_ref(), &bn).map_err(shape_err)?;
    Ok(be.prepare_conv2d(&w, Some(&b), spec)?)
}

/// An IBE conv (`conv`, `bn`, `bn2`, `theta`) folded into one depthwise convolution.
fn ibe<B: Backend>(
    be: &B,
    vb: &VarBuilder<'_>,
    c: usize,
    stride: usize,
) -> Result<B::Conv2d, FemtoLoadError> {
    let w = vb.pp("conv").get("weight", &[c, 1, 3, 3])?;
    let theta = vb.get("theta", &[1])?.data()[0];
    let bn1 = BatchNorm::load(&vb.pp("bn"), c)?;
    let bn2 = BatchNorm::load(&vb.pp("bn2"), c)?;
    let (w, b) = fold_ibe(&w, theta, &bn1, &bn2).map_err(shape_err)?;
    let spec = Conv2dSpec::new([stride, stride], [1, 1])
        .groups(c)
        .activation(Activation::Relu);
    Ok(be.prepare_conv2d(&w, Some(&b), spec)?)
}

struct Block<B: Backend> {
    expand: Option<B::Conv2d>,
    depthwise: B::Conv2d,
    project: B::Conv2d,
    residual: bool,
}

impl<B: Backend> Block<B> {
    fn forward(&self, be: &B, x: &B::Tensor) -> Result<B::Tensor, BackendError> {
        let h = match &self.expand {
            Some(e) => be.conv2d(x, e)?,
            None => be.conv2d(x, &self.depthwise)?,
        };
        let h = match &self.expand {
            Some(_) => be.conv2d(&h, &self.depthwise)?,
            None => h,
        };
        let y = be.conv2d(&h, &self.project)?;
        match self.residual {
            true => be.add(x, &y),
            false => Ok(y),
        }
    }
}

/// The hyper-parameters of a loaded FemtoDet.
#[derive(Debug, Clone, PartialEq)]
pub struct FemtoConfig {
    /// Classes the head scores.
    pub num_classes: usize,
    /// Class names from the metadata `classes` (empty when absent).
    pub classes: Vec<String>,
    /// Input side (square, letterboxed).
    pub input_size: usize,
    /// Detections scoring below this are dropped (metadata `score_thr`).
    pub score_threshold: f32,
    /// NMS IoU threshold (metadata `nms_iou`).
    pub nms_iou: f32,
}

impl FemtoConfig {
    /// Side of the map at `stride`.
    fn side(&self, stride: usize) -> usize {
        self.input_size.div_ceil(stride)
    }

    /// `(channels, side)` of the map after stage `k` (0: the stem).
    fn stage_map(&self, k: usize) -> (usize, usize) {
        let strides = [2, 2, 4, 8, 16, 16, 32, 32];
        let channels = match k {
            0 => stem_channels(),
            k => stage_channels()[k - 1],
        };
        (channels, self.side(strides[k]))
    }

    /// The maps that cross the link at depth `d` (see the module docs), as
    /// `(channels, side)`.
    fn crossing(&self, d: usize) -> Vec<(usize, usize)> {
        match d {
            0..=3 => vec![self.stage_map(d)],
            4 => vec![self.stage_map(3), self.stage_map(4)],
            5 => vec![self.stage_map(3), self.stage_map(5)],
            6 => vec![self.stage_map(3), self.stage_map(5), self.stage_map(6)],
            7 => vec![self.stage_map(3), self.stage_map(5), self.stage_map(7)],
            _ => vec![(NECK_CHANNELS, self.side(HEAD_STRIDE))],
        }
    }
}

/// The name of the split point at depth `d`: `stem`, `stage1`..`stage7`, `neck`.
pub fn point_name(depth: usize) -> String {
    match depth {
        0 => "stem".to_owned(),
        NECK_DEPTH => "neck".to_owned(),
        k => format!("stage{k}"),
    }
}

/// The head's raw maps for a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMaps {
    /// `[B, classes, H, W]` logits.
    pub cls: HostTensor,
    /// `[B, 4, H, W]` box regression.
    pub reg: HostTensor,
    /// `[B, 1, H, W]` objectness logits.
    pub obj: HostTensor,
}

/// Every intermediate map of one forward pass (host copies), for parity checks.
#[derive(Debug, Clone)]
pub struct Trace {
    /// After the stem.
    pub stem: HostTensor,
    /// After each of the seven stages.
    pub stages: Vec<HostTensor>,
    /// The neck's output.
    pub neck: HostTensor,
    /// The head's maps.
    pub head: HeadMaps,
}

/// A FemtoDet on backend `B`, behind [`SplitNet`].
pub struct FemtoDet<B: Backend> {
    backend: B,
    config: FemtoConfig,
    stem: B::Conv2d,
    stages: Vec<Vec<Block<B>>>,
    laterals: Vec<B::Conv2d>,
    neck_dw: B::Conv2d,
    neck_pw: B::Conv2d,
    cls: B::Conv2d,
    reg: B::Conv2d,
    obj: B::Conv2d,
    bottleneck: Option<(usize, Bottleneck<B>)>,
    input: InputSpec,
    points: Vec<SplitPoint>,
}

/// Suffix of a split point that ends in the learned bottleneck's encoder.
pub const BOTTLENECK_SUFFIX: &str = "-bottleneck";

impl<B: Backend> FemtoDet<B> {
    /// Builds the model from FemtoDet-named weights (the training form; IBE and BN
    /// folded here). The metadata may give `arch` (must be `femtodet`), `classes`
    /// (a JSON list or comma-separated names), `input_size` and, with a bottleneck,
    /// `split` (the point's depth or name). Fails on a missing, mis-shaped or
    /// unexpected tensor, naming it; `num_batches_tracked` and `ema_*` copies are
    /// ignored.
    pub fn load(
        backend: B,
        weights: &Weights,
        metadata: &SplitMetadata,
    ) -> Result<Self, FemtoLoadError> {
        if let Some(arch) = weights
            .metadata_value("arch")
            .or(weights.metadata_value("architecture"))
        {
            let base = arch.trim().split(['.', '_']).next().unwrap_or("");
            if !base.eq_ignore_ascii_case(ARCH) {
                return Err(FemtoLoadError::UnknownArch {
                    name: arch.to_owned(),
                });
            }
        }
        let be = &backend;
        let root = weights.root();
        let cls_name = "bbox_head.multi_level_conv_cls.0.weight";
        let num_classes = match weights.shape(cls_name) {
            Some(&[c, ch, 1, 1]) if ch == NECK_CHANNELS && (1..=MAX_CLASSES).contains(&c) => c,
            Some(s) => {
                return Err(FemtoLoadError::Config(format!(
                    "tensor {cls_name} has shape {s:?}: expected [classes, {NECK_CHANNELS}, 1, 1] \
                     with 1..={MAX_CLASSES} classes"
                )))
            }
            None => {
                return Err(WeightsError::Missing {
                    name: cls_name.to_owned(),
                    hint: "is this a FemtoDet checkpoint with the repository's (mmdet) names?"
                        .into(),
                }
                .into())
            }
        };
        let meta = MetaReader(weights);
        let classes = parse_classes(
            weights
                .metadata_value("class_names")
                .or(weights.metadata_value("classes")),
        );
        if !classes.is_empty() && classes.len() != num_classes {
            return Err(FemtoLoadError::Config(format!(
                "metadata names {} classes, the head scores {num_classes}",
                classes.len()
            )));
        }
        if let Some(n) = meta.number::<usize>("num_classes")? {
            if n != num_classes {
                return Err(FemtoLoadError::Config(format!(
                    "metadata num_classes is {n}, the head scores {num_classes}"
                )));
            }
        }
        let input_size = meta.number::<usize>("input_size")?.unwrap_or(INPUT_SIDE);
        if !(32..=4096).contains(&input_size) || input_size % 32 != 0 {
            return Err(FemtoLoadError::Config(format!(
                "metadata input_size {input_size}: expected a multiple of 32 in 32..=4096"
            )));
        }
        for (key, want) in [
            ("widen_factor", 0.25),
            ("neck_channels", 64.0),
            ("strides", 16.0),
        ] {
            if let Some(v) = meta.number::<f64>(key)? {
                if v != want {
                    return Err(FemtoLoadError::Config(format!(
                        "metadata {key} is {v}: this loader builds FemtoDet with {key} {want}"
                    )));
                }
            }
        }
        let score_threshold = meta.number::<f32>("score_thr")?.unwrap_or(SCORE_THRESHOLD);
        let nms_iou = meta.number::<f32>("nms_iou")?.unwrap_or(NMS_IOU);
        let mean = meta.triple("mean")?.unwrap_or(MEAN);
        let std = meta.triple("std")?.unwrap_or(STD);
        if !std.iter().all(|&v| v.is_finite() && v > 0.0) {
            return Err(FemtoLoadError::Config(format!(
                "metadata std {std:?} must be positive"
            )));
        }
        let pad = meta.number::<u8>("pad_value")?.unwrap_or(PAD_VALUE);
        let config = FemtoConfig {
            num_classes,
            classes,
            input_size,
            score_threshold,
            nms_iou,
        };

        let bb = root.pp("backbone");
        let relu = Activation::Relu;
        let mut cin = stem_channels();
        let stem = conv_bn(
            be,
            &bb.pp("conv1"),
            [cin, 3, 3],
            Conv2dSpec::new([2, 2], [1, 1]).activation(relu),
        )?;
        let mut stages = Vec::with_capacity(ROWS.len());
        for (i, &(t, _, n, s, groups)) in ROWS.iter().enumerate() {
            let cout = stage_channels()[i];
            let mut blocks = Vec::with_capacity(n);
            for j in 0..n {
                let vb = bb.pp(format!("layer{}", i + 1)).pp(j).pp("conv");
                let stride = if j == 0 { s } else { 1 };
                let hidden = (cin as f64 * t as f64).round() as usize;
                let mut k = 0;
                let expand = if t != 1 {
                    k += 1;
                    Some(conv_bn(
                        be,
                        &vb.pp(0),
                        [hidden, cin, 1],
                        Conv2dSpec::new([1, 1], [0, 0]).activation(relu),
                    )?)
                } else {
                    None
                };
                let depthwise = ibe(be, &vb.pp(k), hidden, stride)?;
                let project = conv_bn(
                    be,
                    &vb.pp(k + 1),
                    [cout, hidden, 1],
                    Conv2dSpec::new([1, 1], [0, 0]).groups(groups),
                )?;
                blocks.push(Block {
                    expand,
                    depthwise,
                    project,
                    residual: stride == 1 && cin == cout,
                });
                cin = cout;
            }
            stages.push(blocks);
        }
        let neck = root.pp("neck");
        let laterals = TAP_STAGES
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                conv_bn(
                    be,
                    &neck.pp("lateral_convs").pp(i),
                    [NECK_CHANNELS, stage_channels()[s - 1], 1],
                    Conv2dSpec::new([1, 1], [0, 0]).activation(relu),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stacked = neck.pp("stacked_convs");
        let neck_dw = conv_bn(
            be,
            &stacked.pp("depthwise_conv"),
            [NECK_CHANNELS, NECK_CHANNELS, 3],
            Conv2dSpec::new([1, 1], [1, 1])
                .groups(NECK_CHANNELS)
                .activation(relu),
        )?;
        let neck_pw = conv_bn(
            be,
            &stacked.pp("pointwise_conv"),
            [NECK_CHANNELS, NECK_CHANNELS, 1],
            Conv2dSpec::new([1, 1], [0, 0]).activation(relu),
        )?;
        let head = root.pp("bbox_head");
        let head_conv = |name: &str, out: usize| -> Result<B::Conv2d, FemtoLoadError> {
            let vb = head.pp(name).pp(0);
            let w = vb.get("weight", &[out, NECK_CHANNELS, 1, 1])?;
            let b = vb.get("bias", &[out])?;
            Ok(be.prepare_conv2d(&w, Some(&b), Conv2dSpec::new([1, 1], [0, 0]))?)
        };
        let cls = head_conv("multi_level_conv_cls", num_classes)?;
        let reg = head_conv("multi_level_conv_reg", 4)?;
        let obj = head_conv("multi_level_conv_obj", 1)?;

        let bottleneck = match has_bottleneck(weights) {
            false => None,
            true => Some(load_bottleneck(be, weights, metadata, &config)?),
        };
        let unexpected: Vec<String> = weights
            .unused()
            .into_iter()
            .filter(|n| !n.ends_with(".num_batches_tracked") && !n.starts_with("ema_"))
            .collect();
        if !unexpected.is_empty() {
            return Err(WeightsError::Unexpected { names: unexpected }.into());
        }
        let transform = EvalTransform::letterbox(input_size as u32, pad, mean, std);
        let input = InputSpec::Image {
            channels: 3,
            size: input_size,
            transform,
        };
        let points = match &bottleneck {
            None => (0..=NECK_DEPTH)
                .map(|d| SplitPoint {
                    name: point_name(d),
                    depth: d,
                    shape: item_shape(&config.crossing(d)),
                    bottleneck: None,
                })
                .collect(),
            Some((d, b)) => {
                let (c, side) = config.crossing(*d)[0];
                let code = b.code_shape(&[1, c, side, side])?;
                vec![SplitPoint {
                    name: format!("{}{BOTTLENECK_SUFFIX}", point_name(*d)),
                    depth: *d,
                    shape: code[1..].to_vec(),
                    bottleneck: Some(b.code_channels()),
                }]
            }
        };
        Ok(Self {
            backend,
            config,
            stem,
            stages,
            laterals,
            neck_dw,
            neck_pw,
            cls,
            reg,
            obj,
            bottleneck,
            input,
            points,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &FemtoConfig {
        &self.config
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn check_input(&self, x: &HostTensor) -> Result<(), FemtoRunError> {
        let s = self.config.input_size;
        match x.shape() {
            [_, 3, h, w] if *h == s && *w == s => Ok(()),
            other => Err(FemtoRunError::Shape {
                what: "input",
                actual: other.to_vec(),
                expected: format!("3, {s}, {s}"),
            }),
        }
    }

    fn stage(&self, k: usize, x: &B::Tensor) -> Result<B::Tensor, BackendError> {
        let be = &self.backend;
        if k == 0 {
            return be.conv2d(x, &self.stem);
        }
        let blocks = &self.stages[k - 1];
        let mut y = blocks[0].forward(be, x)?;
        for b in &blocks[1..] {
            y = b.forward(be, &y)?;
        }
        Ok(y)
    }

    /// Runs stages `from..=to` (0: the stem) on `x`: the taps passed on the way
    /// (`(stage, map)`, `stage < to`) and the last map.
    #[allow(clippy::type_complexity)]
    fn run_stages(
        &self,
        x: &B::Tensor,
        from: usize,
        to: usize,
        trace: &mut Option<Vec<HostTensor>>,
    ) -> Result<(Vec<(usize, B::Tensor)>, B::Tensor), BackendError> {
        let mut taps: Vec<(usize, B::Tensor)> = Vec::new();
        // `None`: the next stage reads `x` (first) or the tap just stored.
        let mut cur: Option<B::Tensor> = None;
        for k in from..=to {
            let y = {
                let input = match (&cur, taps.last()) {
                    (Some(t), _) => t,
                    (None, Some((_, t))) if k > from => t,
                    _ => x,
                };
                self.stage(k, input)?
            };
            if let Some(t) = trace {
                t.push(self.backend.readback(&y)?);
            }
            if TAP_STAGES.contains(&k) && k < to {
                taps.push((k, y));
                cur = None;
            } else {
                cur = Some(y);
            }
        }
        let last = cur.ok_or_else(|| BackendError::shape("femtodet", "empty stage range"))?;
        Ok((taps, last))
    }

    fn neck(&self, taps: [&B::Tensor; 3]) -> Result<B::Tensor, BackendError> {
        let be = &self.backend;
        let side = self.config.side(HEAD_STRIDE);
        let mut sum: Option<B::Tensor> = None;
        for (t, lat) in taps.into_iter().zip(&self.laterals) {
            let l = be.conv2d(t, lat)?;
            let l = match l.shape()[2..] == [side, side] {
                true => l,
                false => be.resize(&l, [side, side], ResizeMode::Nearest)?,
            };
            sum = Some(match sum {
                None => l,
                Some(s) => be.add(&s, &l)?,
            });
        }
        let sum = sum.ok_or_else(|| BackendError::shape("neck", "no taps"))?;
        let h = be.conv2d(&sum, &self.neck_dw)?;
        be.conv2d(&h, &self.neck_pw)
    }

    /// The neck on the taps among `have` (`(stage, map)`).
    fn neck_from(&self, have: &[(usize, &B::Tensor)]) -> Result<B::Tensor, BackendError> {
        let pick = |stage: usize| {
            have.iter()
                .find(|(s, _)| *s == stage)
                .map(|(_, t)| *t)
                .ok_or_else(|| BackendError::shape("neck", format!("no tap after stage{stage}")))
        };
        self.neck([
            pick(TAP_STAGES[0])?,
            pick(TAP_STAGES[1])?,
            pick(TAP_STAGES[2])?,
        ])
    }

    /// The device's part: `x` `[B, 3, S, S]` to what crosses at depth `depth` (no
    /// bottleneck).
    fn head_device(&self, x: &B::Tensor, depth: usize) -> Result<B::Tensor, FemtoRunError> {
        let be = &self.backend;
        let (taps, y) = self.run_stages(x, 0, depth.min(7), &mut None)?;
        if depth <= 3 {
            return Ok(y);
        }
        if depth == NECK_DEPTH {
            let mut have: Vec<(usize, &B::Tensor)> = taps.iter().map(|(s, t)| (*s, t)).collect();
            have.push((7, &y));
            return Ok(self.neck_from(&have)?);
        }
        let batch = x.shape()[0];
        let flat = taps
            .into_iter()
            .map(|(_, t)| t)
            .chain([y])
            .map(|t| {
                let n: usize = t.shape()[1..].iter().product();
                be.reshape(t, &[batch, n])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&B::Tensor> = flat.iter().collect();
        Ok(be.concat(&refs, 1)?)
    }

    /// The edge's part: what crossed at `depth` to the head's maps.
    fn tail_device(&self, h: &B::Tensor, depth: usize) -> Result<[B::Tensor; 3], FemtoRunError> {
        let be = &self.backend;
        let batch = h.shape().first().copied().unwrap_or(0);
        let expected = item_shape(&self.config.crossing(depth));
        if h.shape().len() != expected.len() + 1 || h.shape()[1..] != expected[..] {
            return Err(FemtoRunError::Shape {
                what: "activation",
                actual: h.shape().to_vec(),
                expected: format!("{expected:?} at {}", point_name(depth)),
            });
        }
        let neck_out;
        let neck = if depth == NECK_DEPTH {
            h
        } else {
            // The maps that crossed, by stage.
            let pieces: Vec<(usize, B::Tensor)> = if depth <= 3 {
                Vec::new()
            } else {
                let stages = crossing_stages(depth);
                let mut start = 0;
                let mut out = Vec::with_capacity(stages.len());
                for (&stage, &(c, side)) in stages.iter().zip(&self.config.crossing(depth)) {
                    let n = c * side * side;
                    let p = be.slice(h, 1, start, n)?;
                    out.push((stage, be.reshape(p, &[batch, c, side, side])?));
                    start += n;
                }
                out
            };
            let mut have: Vec<(usize, &B::Tensor)> = match depth {
                0..=3 => vec![(depth, h)],
                _ => pieces.iter().map(|(s, t)| (*s, t)).collect(),
            };
            let rest;
            let last;
            if depth < 7 {
                let current = have
                    .iter()
                    .find(|(s, _)| *s == depth)
                    .map(|(_, t)| *t)
                    .ok_or_else(|| BackendError::shape("tail", "no current map"))?;
                (rest, last) = self.run_stages(current, depth + 1, 7, &mut None)?;
                have.extend(rest.iter().map(|(s, t)| (*s, t)));
                have.push((7, &last));
            }
            neck_out = self.neck_from(&have)?;
            &neck_out
        };
        Ok([
            be.conv2d(neck, &self.cls)?,
            be.conv2d(neck, &self.reg)?,
            be.conv2d(neck, &self.obj)?,
        ])
    }

    fn read_maps(&self, maps: [B::Tensor; 3]) -> Result<HeadMaps, FemtoRunError> {
        let be = &self.backend;
        let [cls, reg, obj] = maps;
        Ok(HeadMaps {
            cls: be.readback(&cls)?,
            reg: be.readback(&reg)?,
            obj: be.readback(&obj)?,
        })
    }

    /// The whole model to the head's raw maps.
    pub fn head_maps(&self, x: &HostTensor) -> Result<HeadMaps, FemtoRunError> {
        self.check_input(x)?;
        self.backend.scope(|| {
            let x = self.backend.upload(x)?;
            let maps = match &self.bottleneck {
                None => {
                    let n = self.head_device(&x, NECK_DEPTH)?;
                    self.tail_device(&n, NECK_DEPTH)?
                }
                Some((d, b)) => {
                    let h = self.head_device(&x, *d)?;
                    let h = b.decode(&b.encode(&h)?)?;
                    self.tail_device(&h, *d)?
                }
            };
            self.read_maps(maps)
        })
    }

    /// The whole model (without a bottleneck), keeping every stage's output.
    pub fn forward_traced(&self, x: &HostTensor) -> Result<Trace, FemtoRunError> {
        self.check_input(x)?;
        self.backend.scope(|| {
            let be = &self.backend;
            let mut trace = Some(Vec::new());
            let (taps, y) = self.run_stages(&be.upload(x)?, 0, 7, &mut trace)?;
            let mut have: Vec<(usize, &B::Tensor)> = taps.iter().map(|(s, t)| (*s, t)).collect();
            have.push((7, &y));
            let neck = self.neck_from(&have)?;
            let maps = [
                be.conv2d(&neck, &self.cls)?,
                be.conv2d(&neck, &self.reg)?,
                be.conv2d(&neck, &self.obj)?,
            ];
            let mut stages = trace.unwrap_or_default();
            if stages.len() != 8 {
                return Err(BackendError::shape("trace", "missing stages").into());
            }
            let stem = stages.remove(0);
            Ok(Trace {
                stem,
                stages,
                neck: be.readback(&neck)?,
                head: self.read_maps(maps)?,
            })
        })
    }

    /// The head's maps to detections with the checkpoint's thresholds.
    pub fn decode(&self, maps: &HeadMaps) -> Vec<Vec<Detection>> {
        decode(maps, self.config.score_threshold, self.config.nms_iou)
    }

    fn depth_of(&self, at: &str) -> Result<usize, NetError> {
        Ok(self.split_point(at)?.depth)
    }
}

/// The stages whose maps cross at a packed depth (4..=7), in order.
fn crossing_stages(depth: usize) -> Vec<usize> {
    match depth {
        4 => vec![3, 4],
        5 => vec![3, 5],
        6 => vec![3, 5, 6],
        7 => vec![3, 5, 7],
        d => vec![d],
    }
}

fn item_shape(crossing: &[(usize, usize)]) -> Vec<usize> {
    match crossing {
        [(c, s)] => vec![*c, *s, *s],
        many => vec![many.iter().map(|(c, s)| c * s * s).sum()],
    }
}

/// Typed reads of the checkpoint's metadata strings.
struct MetaReader<'a>(&'a Weights);

impl MetaReader<'_> {
    fn number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, FemtoLoadError> {
        self.0
            .metadata_value(key)
            .map(|t| {
                t.trim().parse::<T>().map_err(|_| {
                    FemtoLoadError::Config(format!("metadata {key} = {t:?} is not a number"))
                })
            })
            .transpose()
    }

    fn triple(&self, key: &str) -> Result<Option<[f32; 3]>, FemtoLoadError> {
        self.0
            .metadata_value(key)
            .map(|t| {
                serde_json::from_str::<[f32; 3]>(t.trim()).map_err(|_| {
                    FemtoLoadError::Config(format!(
                        "metadata {key} = {t:?} is not a JSON list of three numbers"
                    ))
                })
            })
            .transpose()
    }
}

fn parse_classes(text: Option<&str>) -> Vec<String> {
    let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
        return Vec::new();
    };
    if text.starts_with('[') {
        if let Ok(names) = serde_json::from_str::<Vec<String>>(text) {
            return names;
        }
    }
    text.split(',').map(|s| s.trim().to_owned()).collect()
}

fn load_bottleneck<B: Backend>(
    be: &B,
    weights: &Weights,
    metadata: &SplitMetadata,
    config: &FemtoConfig,
) -> Result<(usize, Bottleneck<B>), FemtoLoadError> {
    let b = Bottleneck::load(be, weights, BOTTLENECK_PREFIX)?
        .ok_or_else(|| FemtoLoadError::Config("bottleneck tensors vanished".into()))?;
    let depth = match (metadata.split, weights.metadata_value("split_name")) {
        (Some(d), _) => d,
        (None, Some(name)) => (0..=NECK_DEPTH)
            .find(|&d| point_name(d) == name.trim())
            .ok_or_else(|| FemtoLoadError::Config(format!("metadata split_name {name:?}")))?,
        (None, None) => {
            return Err(FemtoLoadError::Config(
                "the checkpoint has a bottleneck but no metadata `split` (its depth: stem 0, \
                 stageK K, neck 8)"
                    .into(),
            ))
        }
    };
    let crossing = config.crossing(depth.min(NECK_DEPTH));
    let &[(c, side)] = crossing.as_slice() else {
        return Err(FemtoLoadError::Config(format!(
            "a bottleneck at {} would take several maps; put it at stem..stage3 or neck",
            point_name(depth)
        )));
    };
    if depth > NECK_DEPTH || !matches!(b, Bottleneck::Conv(_)) || b.input_channels() != c {
        return Err(FemtoLoadError::Config(format!(
            "the bottleneck ({} taking {} channels) does not fit point {depth} ({c} channels)",
            b.kind(),
            b.input_channels()
        )));
    }
    b.code_shape(&[1, c, side, side])?;
    Ok((depth, b))
}

impl From<crate::tensor::ShapeError> for FemtoRunError {
    fn from(e: crate::tensor::ShapeError) -> Self {
        Self::Backend(BackendError::shape("host", e.to_string()))
    }
}

/// Decodes the head's maps of every item into detections in input pixels: YOLOX's
/// priors at `(16 j, 16 i)`, `cx = p * 16 + prior`, `w = exp(p) * 16`; score `max
/// sigmoid(cls) * sigmoid(obj)` kept at `>= score_threshold`; class-aware NMS at
/// `iou` (suppressing only above it).
pub fn decode(maps: &HeadMaps, score_threshold: f32, iou: f32) -> Vec<Vec<Detection>> {
    let (&[b, c, h, w], &[_, _, _, _], &[_, _, _, _]) =
        (maps.cls.shape(), maps.reg.shape(), maps.obj.shape())
    else {
        return Vec::new();
    };
    let plane = h * w;
    let stride = HEAD_STRIDE as f32;
    let sigmoid = |v: f32| 1.0 / (1.0 + (-v).exp());
    (0..b)
        .map(|n| {
            let cls = &maps.cls.data()[n * c * plane..(n + 1) * c * plane];
            let reg = &maps.reg.data()[n * 4 * plane..(n + 1) * 4 * plane];
            let obj = &maps.obj.data()[n * plane..(n + 1) * plane];
            let mut found = Vec::new();
            for i in 0..h {
                for j in 0..w {
                    let p = i * w + j;
                    let (mut label, mut best) = (0usize, f32::NEG_INFINITY);
                    for k in 0..c {
                        let s = sigmoid(cls[k * plane + p]);
                        if s > best {
                            (label, best) = (k, s);
                        }
                    }
                    let score = best * sigmoid(obj[p]);
                    if score.is_nan() || score < score_threshold {
                        continue;
                    }
                    let cx = reg[p] * stride + j as f32 * stride;
                    let cy = reg[plane + p] * stride + i as f32 * stride;
                    let bw = reg[2 * plane + p].exp() * stride;
                    let bh = reg[3 * plane + p].exp() * stride;
                    found.push(Detection {
                        bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
                        score,
                        label: label as u32,
                    });
                }
            }
            nms(found, iou)
        })
        .collect()
}

/// Intersection over union of two corner boxes (no +1 pixel).
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Class-aware greedy NMS: by descending score, a box is dropped when it overlaps a
/// kept box of its class by more than `iou`. The survivors, best first.
pub fn nms(mut dets: Vec<Detection>, iou: f32) -> Vec<Detection> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::new();
    for d in dets {
        if kept
            .iter()
            .all(|k| k.label != d.label || box_iou(&k.bbox, &d.bbox) <= iou)
        {
            kept.push(d);
        }
    }
    kept
}

impl<B: Backend> SplitNet for FemtoDet<B> {
    fn family(&self) -> Family {
        Family::FemtoDet
    }

    fn describe(&self) -> String {
        let bottleneck = match (&self.bottleneck, self.points.first()) {
            (Some(_), Some(p)) => format!(", bottleneck at {}", p.name),
            _ => String::new(),
        };
        format!(
            "femtodet ({} classes, {}x{} letterbox, backend {}{bottleneck})",
            self.config.num_classes,
            self.config.input_size,
            self.config.input_size,
            self.backend.name()
        )
    }

    fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    fn input(&self) -> &InputSpec {
        &self.input
    }

    fn output(&self) -> OutputKind {
        OutputKind::Detections {
            classes: self.config.num_classes,
        }
    }

    fn split_points(&self) -> &[SplitPoint] {
        &self.points
    }

    fn head(
        &self,
        x: &HostTensor,
        at: &str,
        _state: Option<&mut dyn NetState>,
    ) -> Result<HostTensor, NetError> {
        let depth = self.depth_of(at)?;
        self.check_input(x).map_err(NetError::run)?;
        self.backend
            .scope(|| {
                let be = &self.backend;
                let h = self.head_device(&be.upload(x)?, depth)?;
                let h = match &self.bottleneck {
                    Some((_, b)) => b.encode(&h)?,
                    None => h,
                };
                Ok::<_, FemtoRunError>(be.readback(&h)?)
            })
            .map_err(NetError::run)
    }

    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let depth = self.depth_of(at)?;
        let maps = self
            .backend
            .scope(|| {
                let be = &self.backend;
                let h = be.upload(h)?;
                let h = match &self.bottleneck {
                    Some((_, b)) => b.decode(&h)?,
                    None => h,
                };
                let maps = self.tail_device(&h, depth)?;
                self.read_maps(maps)
            })
            .map_err(NetError::run)?;
        Ok(Output::Detections(self.decode(&maps)))
    }

    fn forward(
        &self,
        x: &HostTensor,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let maps = self.head_maps(x).map_err(NetError::run)?;
        Ok(Output::Detections(self.decode(&maps)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_follow_make_divisible_at_width_quarter() {
        assert_eq!(stem_channels(), 8);
        assert_eq!(stage_channels(), [8, 8, 8, 16, 24, 40, 80]);
        let cfg = FemtoConfig {
            num_classes: 5,
            classes: vec![],
            input_size: 416,
            score_threshold: SCORE_THRESHOLD,
            nms_iou: NMS_IOU,
        };
        assert_eq!(item_shape(&cfg.crossing(7)), [51_376]);
        assert_eq!(item_shape(&cfg.crossing(8)), [64, 26, 26]);
        assert_eq!(item_shape(&cfg.crossing(0)), [8, 208, 208]);
        assert_eq!(point_name(0), "stem");
        assert_eq!(point_name(5), "stage5");
        assert_eq!(point_name(8), "neck");
    }

    #[test]
    fn nms_is_class_aware_and_strict() {
        let d = |x0: f32, score: f32, label: u32| Detection {
            bbox: [x0, 0.0, x0 + 10.0, 10.0],
            score,
            label,
        };
        // Same class, IoU 9/11 > 0.65: the weaker goes; another class stays.
        let kept = nms(vec![d(1.0, 0.5, 0), d(0.0, 0.9, 0), d(0.0, 0.4, 1)], 0.65);
        assert_eq!(kept, vec![d(0.0, 0.9, 0), d(0.0, 0.4, 1)]);
        // Identical boxes at an IoU threshold of 1: kept (suppress only above).
        assert_eq!(nms(vec![d(0.0, 0.9, 0), d(0.0, 0.8, 0)], 1.0).len(), 2);
        assert!(
            (box_iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 1.0 / 3.0).abs() < 1e-6
        );
    }

    #[test]
    fn decode_places_boxes_on_the_stride_16_priors() {
        let (h, w) = (2, 3);
        let plane = h * w;
        let mut cls = vec![-20.0; 2 * plane];
        let mut reg = vec![0.0; 4 * plane];
        let obj = vec![20.0; plane];
        // Cell (1, 2): class 1, offset (0.5, -0.25), size exp(0)*16, exp(ln 2)*16.
        let p = w + 2;
        cls[plane + p] = 20.0;
        reg[p] = 0.5;
        reg[plane + p] = -0.25;
        reg[3 * plane + p] = 2f32.ln();
        let maps = HeadMaps {
            cls: HostTensor::new([1, 2, h, w], cls).unwrap(),
            reg: HostTensor::new([1, 4, h, w], reg).unwrap(),
            obj: HostTensor::new([1, 1, h, w], obj).unwrap(),
        };
        let dets = decode(&maps, 0.01, 0.65);
        assert_eq!(dets.len(), 1);
        assert_eq!(dets[0].len(), 1);
        let d = dets[0][0];
        assert_eq!(d.label, 1);
        let (cx, cy) = (0.5 * 16.0 + 32.0, -0.25 * 16.0 + 16.0);
        let want = [cx - 8.0, cy - 16.0, cx + 8.0, cy + 16.0];
        for (a, b) in d.bbox.iter().zip(want) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {want:?}", d.bbox);
        }
    }

    #[test]
    fn classes_parse_from_json_or_commas() {
        assert_eq!(parse_classes(Some(r#"["a", "b c"]"#)), ["a", "b c"]);
        assert_eq!(parse_classes(Some("x, y")), ["x", "y"]);
        assert!(parse_classes(None).is_empty());
    }
}
