//! Vision Transformer and DeiT (classic and distilled), as timm builds them, from
//! safetensors checkpoints with timm's state-dict names.
//!
//! ```text
//! input [B,3,H,W] -> patch_embed.proj (conv p x p, stride p) -> [B,N,D]
//!   -> prepend cls_token (and dist_token) -> + pos_embed          split point 0
//!   -> blocks.0 -> ... -> blocks.{depth-1}                        split point k = after block k-1
//!   -> norm -> head(x[:,0]) (distilled: mean with head_dist(x[:,1])) -> logits [B, classes]
//! ```
//!
//! Each block is pre-norm: `x + proj(attn(norm1(x)))`, then `x + fc2(gelu(fc1(norm2(x))))`.
//! Split points: point 0 is the token sequence after the embedding (timm's
//! `tokens.embed` in the reference), point `k` for `1 <= k <= depth` is the sequence
//! after block `k - 1`. [`Vit::head`] runs up to a point and [`Vit::tail`] from it; both
//! run the same ops as [`Vit::forward`], so `tail(head(x, k), k)` equals it bit for bit.

use std::path::Path;
use std::sync::Arc;

use crate::backend::{Activation, Backend, BackendError, Conv2dSpec, DeviceTensor};
use crate::bottleneck::{Bottleneck, BottleneckLoadError, CodeError};
use crate::net::{Family, InputSpec, NetError, NetState, Output, OutputKind, SplitNet, SplitPoint};
use crate::preprocess::{EvalTransform, InvalidCropPct};
use crate::split::{has_bottleneck, MetadataError, SplitMetadata, BOTTLENECK_PREFIX};
use crate::tensor::HostTensor;
use crate::weights::{VarBuilder, Weights, WeightsError};

/// A known timm architecture: what the weights cannot tell (the number of heads) and
/// what they must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arch {
    /// timm's model name.
    pub name: &'static str,
    /// Channels per token.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Whether it has a distillation token and head (DeiT distilled).
    pub distilled: bool,
}

const fn arch(name: &'static str, d: usize, depth: usize, heads: usize, dist: bool) -> Arch {
    Arch {
        name,
        embed_dim: d,
        depth,
        num_heads: heads,
        distilled: dist,
    }
}

/// The timm ViT/DeiT architectures this crate knows by name.
pub const ARCHS: &[Arch] = &[
    arch("vit_tiny_patch16_224", 192, 12, 3, false),
    arch("vit_tiny_patch16_384", 192, 12, 3, false),
    arch("vit_small_patch16_224", 384, 12, 6, false),
    arch("vit_small_patch16_384", 384, 12, 6, false),
    arch("vit_small_patch32_224", 384, 12, 6, false),
    arch("vit_base_patch16_224", 768, 12, 12, false),
    arch("vit_base_patch16_384", 768, 12, 12, false),
    arch("vit_base_patch32_224", 768, 12, 12, false),
    arch("vit_large_patch16_224", 1024, 24, 16, false),
    arch("vit_large_patch16_384", 1024, 24, 16, false),
    arch("deit_tiny_patch16_224", 192, 12, 3, false),
    arch("deit_small_patch16_224", 384, 12, 6, false),
    arch("deit_base_patch16_224", 768, 12, 12, false),
    arch("deit_base_patch16_384", 768, 12, 12, false),
    arch("deit_tiny_distilled_patch16_224", 192, 12, 3, true),
    arch("deit_small_distilled_patch16_224", 384, 12, 6, true),
    arch("deit_base_distilled_patch16_224", 768, 12, 12, true),
    arch("deit_base_distilled_patch16_384", 768, 12, 12, true),
];

/// Head width timm uses for every standard ViT/DeiT size; the default when neither an
/// architecture nor a head count is given.
pub const DEFAULT_HEAD_DIM: usize = 64;
/// timm's LayerNorm epsilon for ViT/DeiT (`partial(nn.LayerNorm, eps=1e-6)`).
pub const TIMM_LAYER_NORM_EPS: f32 = 1e-6;

/// Looks up a timm name; a pretrained tag (`.fb_in1k`, `.augreg_in21k`) is ignored.
pub fn find_arch(name: &str) -> Option<&'static Arch> {
    let base = name.split('.').next().unwrap_or(name);
    ARCHS.iter().find(|a| a.name == base)
}

/// How to read a checkpoint: what the weights cannot say.
#[derive(Debug, Clone, Default)]
pub struct VitOptions {
    /// timm architecture name; checked against the weights, and gives the head count.
    pub arch: Option<String>,
    /// Head count, overriding the architecture's (or the `D / 64` default).
    pub num_heads: Option<usize>,
    /// LayerNorm epsilon (default [`TIMM_LAYER_NORM_EPS`]).
    pub eps: Option<f32>,
}

impl VitOptions {
    /// These options with the checkpoint's metadata `num_heads` where neither a head
    /// count nor an architecture was given.
    pub fn with_metadata(&self, metadata: &SplitMetadata) -> Self {
        let mut options = self.clone();
        if options.num_heads.is_none() && options.arch.is_none() {
            options.num_heads = metadata.num_heads;
        }
        options
    }
}

/// The hyper-parameters of a loaded model.
#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    /// Architecture name when known.
    pub arch: Option<String>,
    /// Input side (square).
    pub image_size: usize,
    /// Patch side (square), also the stride of the patch convolution.
    pub patch_size: usize,
    /// Input channels.
    pub in_chans: usize,
    /// Channels per token.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Hidden width of each MLP.
    pub mlp_hidden: usize,
    /// Output classes.
    pub num_classes: usize,
    /// Distillation token and head present (DeiT distilled).
    pub distilled: bool,
    /// LayerNorm epsilon.
    pub eps: f32,
}

impl VitConfig {
    /// Tokens before the patches: class token, plus distillation token if distilled.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + usize::from(self.distilled)
    }

    /// Patches per image.
    pub fn num_patches(&self) -> usize {
        let g = self.image_size / self.patch_size;
        g * g
    }

    /// Tokens per image at every split point.
    pub fn num_tokens(&self) -> usize {
        self.num_prefix_tokens() + self.num_patches()
    }
}

/// Errors loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A tensor is missing, mis-shaped, unexpected or unreadable.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The backend refused a weight.
    #[error("preparing weights: {0}")]
    Backend(#[from] BackendError),
    /// The architecture name given is not in [`ARCHS`].
    #[error("unknown architecture {name:?}; known: {known}")]
    UnknownArch {
        /// The name given.
        name: String,
        /// The names known.
        known: String,
    },
    /// The weights contradict the architecture, or cannot form a ViT.
    #[error("{0}")]
    Config(String),
}

/// Errors running a model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The input has the wrong shape.
    #[error("input of shape {actual:?}: the model takes [B, {channels}, {size}, {size}]")]
    Input {
        /// The shape given.
        actual: Vec<usize>,
        /// Channels expected.
        channels: usize,
        /// Side expected.
        size: usize,
    },
    /// The activation given to [`Vit::tail`] has the wrong shape.
    #[error(
        "activation of shape {actual:?} at split point {point}: expected [B, {tokens}, {dim}]"
    )]
    Activation {
        /// The shape given.
        actual: Vec<usize>,
        /// The split point.
        point: usize,
        /// Tokens expected.
        tokens: usize,
        /// Channels expected.
        dim: usize,
    },
    /// The split point does not exist.
    #[error("split point {point} does not exist: this model has points 0..={max}")]
    SplitPoint {
        /// The point asked for.
        point: usize,
        /// The last point.
        max: usize,
    },
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

struct LayerNorm<B: Backend> {
    gamma: B::Tensor,
    beta: B::Tensor,
}

impl<B: Backend> LayerNorm<B> {
    fn load(be: &B, vb: &VarBuilder<'_>, d: usize) -> Result<Self, LoadError> {
        Ok(Self {
            gamma: be.upload(&vb.get("weight", &[d])?)?,
            beta: be.upload(&vb.get("bias", &[d])?)?,
        })
    }

    fn forward(&self, be: &B, x: &B::Tensor, eps: f32) -> Result<B::Tensor, BackendError> {
        be.layer_norm(x, &self.gamma, &self.beta, eps)
    }
}

fn linear<B: Backend>(
    be: &B,
    vb: &VarBuilder<'_>,
    inputs: usize,
    outputs: usize,
) -> Result<B::Linear, LoadError> {
    let b = vb.get("bias", &[outputs])?;
    if is_block_sparse(vb) {
        return block_sparse_linear(be, vb, inputs, outputs, &b);
    }
    let w = vb.get("weight", &[outputs, inputs])?;
    Ok(be.prepare_linear(&w, Some(&b))?)
}

/// Tensor names of a block-sparse layer's weight (see `backend::block_sparse`): the
/// block mask `[out / bo, in / bi]` and the kept blocks `[kept, bo, bi]`.
const BLOCK_MASK: &str = "weight_block_mask";
const BLOCKS: &str = "weight_blocks";

/// Whether the layer under `vb` is stored block-sparse (LPViT's pruned checkpoints).
fn is_block_sparse(vb: &VarBuilder<'_>) -> bool {
    !vb.contains("weight") && (vb.contains(BLOCK_MASK) || vb.contains(BLOCKS))
}

/// The `[out, in]` of the layer under `vb`, dense or block-sparse.
fn linear_shape(vb: &VarBuilder<'_>) -> Result<Vec<usize>, LoadError> {
    if !is_block_sparse(vb) {
        return Ok(vb.shape("weight")?);
    }
    match (
        vb.shape(BLOCK_MASK)?.as_slice(),
        vb.shape(BLOCKS)?.as_slice(),
    ) {
        (&[rows, cols], &[_, bo, bi]) => Ok(vec![rows * bo, cols * bi]),
        (mask, blocks) => Err(LoadError::Config(format!(
            "{}: block mask {mask:?} and blocks {blocks:?} are not [out / bo, in / bi] and \
             [kept, bo, bi]",
            vb.path(BLOCKS)
        ))),
    }
}

#[cfg(feature = "sparse")]
fn block_sparse_linear<B: Backend>(
    be: &B,
    vb: &VarBuilder<'_>,
    inputs: usize,
    outputs: usize,
    bias: &crate::tensor::HostTensor,
) -> Result<B::Linear, LoadError> {
    let shape = linear_shape(vb)?;
    if shape != [outputs, inputs] {
        return Err(LoadError::Config(format!(
            "{}: a block-sparse [{}, {}] weight, the model needs [{outputs}, {inputs}]",
            vb.path(BLOCKS),
            shape[0],
            shape[1]
        )));
    }
    let mask = vb.get(BLOCK_MASK, &vb.shape(BLOCK_MASK)?)?;
    let blocks = vb.get(BLOCKS, &vb.shape(BLOCKS)?)?;
    let weight = crate::backend::block_sparse::BlockSparse::from_mask(&mask, &blocks)
        .map_err(|e| LoadError::Config(format!("{}: {e}", vb.path(BLOCKS))))?;
    Ok(be.prepare_block_sparse_linear(&weight, Some(bias))?)
}

#[cfg(not(feature = "sparse"))]
fn block_sparse_linear<B: Backend>(
    _be: &B,
    vb: &VarBuilder<'_>,
    _inputs: usize,
    _outputs: usize,
    _bias: &crate::tensor::HostTensor,
) -> Result<B::Linear, LoadError> {
    Err(LoadError::Config(format!(
        "{} is block-sparse (an LPViT-pruned checkpoint), and this build has no block-sparse \
         support: build splitstream-models with its `sparse` feature (on by default)",
        vb.path(BLOCKS)
    )))
}

struct Block<B: Backend> {
    norm1: LayerNorm<B>,
    qkv: B::Linear,
    proj: B::Linear,
    norm2: LayerNorm<B>,
    fc1: B::Linear,
    fc2: B::Linear,
}

impl<B: Backend> Block<B> {
    fn load(be: &B, vb: &VarBuilder<'_>, cfg: &VitConfig) -> Result<Self, LoadError> {
        let (d, h) = (cfg.embed_dim, cfg.mlp_hidden);
        Ok(Self {
            norm1: LayerNorm::load(be, &vb.pp("norm1"), d)?,
            qkv: linear(be, &vb.pp("attn").pp("qkv"), d, 3 * d)?,
            proj: linear(be, &vb.pp("attn").pp("proj"), d, d)?,
            norm2: LayerNorm::load(be, &vb.pp("norm2"), d)?,
            fc1: linear(be, &vb.pp("mlp").pp("fc1"), d, h)?,
            fc2: linear(be, &vb.pp("mlp").pp("fc2"), h, d)?,
        })
    }

    fn forward(&self, be: &B, x: &B::Tensor, cfg: &VitConfig) -> Result<B::Tensor, BackendError> {
        let scale = ((cfg.embed_dim / cfg.num_heads) as f32).powf(-0.5);
        let h = self.norm1.forward(be, x, cfg.eps)?;
        let qkv = be.linear(&h, &self.qkv, Activation::Identity)?;
        let a = be.attention(&qkv, cfg.num_heads, scale)?;
        let a = be.linear(&a, &self.proj, Activation::Identity)?;
        let x = be.add(x, &a)?;
        let h = self.norm2.forward(be, &x, cfg.eps)?;
        let h = be.linear(&h, &self.fc1, Activation::Gelu)?;
        let h = be.linear(&h, &self.fc2, Activation::Identity)?;
        be.add(&x, &h)
    }
}

/// A ViT/DeiT ready to run on backend `B`.
pub struct Vit<B: Backend> {
    backend: B,
    config: VitConfig,
    patch_embed: B::Conv2d,
    cls_token: B::Tensor,
    dist_token: Option<B::Tensor>,
    pos_embed: B::Tensor,
    blocks: Vec<Block<B>>,
    norm: LayerNorm<B>,
    head: B::Linear,
    head_dist: Option<B::Linear>,
}

impl<B: Backend> Vit<B> {
    /// Builds the model from timm-named weights, preparing them on `backend`. Fails on a
    /// missing, mis-shaped or unexpected tensor, naming it.
    pub fn load(backend: B, weights: &Weights, options: &VitOptions) -> Result<Self, LoadError> {
        let config = infer_config(weights, options)?;
        let be = &backend;
        let vb = weights.root();
        let (d, p, c) = (config.embed_dim, config.patch_size, config.in_chans);
        let pe = vb.pp("patch_embed").pp("proj");
        let patch_embed = be.prepare_conv2d(
            &pe.get("weight", &[d, c, p, p])?,
            Some(&pe.get("bias", &[d])?),
            Conv2dSpec::new([p, p], [0, 0]),
        )?;
        let cls_token = be.upload(&vb.get("cls_token", &[1, 1, d])?)?;
        let dist_token = match config.distilled {
            true => Some(be.upload(&vb.get("dist_token", &[1, 1, d])?)?),
            false => None,
        };
        let pos_embed = be.upload(&vb.get("pos_embed", &[1, config.num_tokens(), d])?)?;
        let blocks = (0..config.depth)
            .map(|i| Block::load(be, &vb.pp("blocks").pp(i), &config))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = LayerNorm::load(be, &vb.pp("norm"), d)?;
        let head = linear(be, &vb.pp("head"), d, config.num_classes)?;
        let head_dist = match config.distilled {
            true => Some(linear(be, &vb.pp("head_dist"), d, config.num_classes)?),
            false => None,
        };
        weights.check_all_used()?;
        Ok(Self {
            backend,
            config,
            patch_embed,
            cls_token,
            dist_token,
            pos_embed,
            blocks,
            norm,
            head,
            head_dist,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &VitConfig {
        &self.config
    }

    /// The backend the model runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Where the model can be cut: `depth + 1` points (see the module docs), named
    /// `embed` (depth 0) and `block{i}` (after block `i`, depth `i + 1`), the
    /// reference's `tokens.*` names.
    pub fn split_points(&self) -> Vec<SplitPoint> {
        let shape = vec![self.config.num_tokens(), self.config.embed_dim];
        (0..=self.config.depth)
            .map(|depth| SplitPoint {
                name: point_name(depth),
                depth,
                shape: shape.clone(),
                bottleneck: None,
            })
            .collect()
    }

    /// Runs the model up to split point `point`: `[B, C, H, W]` -> `[B, N, D]`.
    pub fn head(&self, input: &B::Tensor, point: usize) -> Result<B::Tensor, RunError> {
        self.backend.scope(|| self.head_inner(input, point))
    }

    fn head_inner(&self, input: &B::Tensor, point: usize) -> Result<B::Tensor, RunError> {
        self.check_point(point)?;
        let mut x = self.embed(input)?;
        for block in &self.blocks[..point] {
            x = block.forward(&self.backend, &x, &self.config)?;
        }
        Ok(x)
    }

    /// Runs the model from split point `point` to the logits: `[B, N, D]` ->
    /// `[B, classes]`.
    pub fn tail(&self, activation: &B::Tensor, point: usize) -> Result<B::Tensor, RunError> {
        self.backend.scope(|| self.tail_inner(activation, point))
    }

    fn tail_inner(&self, activation: &B::Tensor, point: usize) -> Result<B::Tensor, RunError> {
        self.check_point(point)?;
        let shape = activation.shape();
        let (n, d) = (self.config.num_tokens(), self.config.embed_dim);
        if shape.len() != 3 || shape[1] != n || shape[2] != d {
            return Err(RunError::Activation {
                actual: shape.to_vec(),
                point,
                tokens: n,
                dim: d,
            });
        }
        let mut rest = self.blocks[point..].iter();
        let mut x = match rest.next() {
            Some(block) => block.forward(&self.backend, activation, &self.config)?,
            None => return self.classify(activation),
        };
        for block in rest {
            x = block.forward(&self.backend, &x, &self.config)?;
        }
        self.classify(&x)
    }

    /// The full forward pass: `[B, C, H, W]` -> `[B, classes]`.
    pub fn forward(&self, input: &B::Tensor) -> Result<B::Tensor, RunError> {
        self.backend.scope(|| {
            let x = self.head_inner(input, self.config.depth)?;
            self.tail_inner(&x, self.config.depth)
        })
    }

    /// The full forward pass, keeping the activation at every split point (index =
    /// split point) as well as the final normed tokens and the logits.
    pub fn forward_traced(&self, input: &B::Tensor) -> Result<Trace<B>, RunError> {
        self.backend.scope(|| self.forward_traced_inner(input))
    }

    fn forward_traced_inner(&self, input: &B::Tensor) -> Result<Trace<B>, RunError> {
        let be = &self.backend;
        let mut points = Vec::with_capacity(self.blocks.len() + 1);
        let mut x = self.embed(input)?;
        for block in &self.blocks {
            let next = block.forward(be, &x, &self.config)?;
            points.push(std::mem::replace(&mut x, next));
        }
        let normed = self.norm.forward(be, &x, self.config.eps)?;
        let logits = self.classify(&x)?;
        points.push(x);
        Ok(Trace {
            points,
            normed,
            logits,
        })
    }

    /// Host in, host out: uploads `input` `[B, C, H, W]`, runs [`Vit::forward`], reads the
    /// logits back.
    pub fn run(&self, input: &HostTensor) -> Result<HostTensor, RunError> {
        let x = self.backend.upload(input)?;
        let logits = self.forward(&x)?;
        Ok(self.backend.readback(&logits)?)
    }

    fn check_point(&self, point: usize) -> Result<(), RunError> {
        if point > self.config.depth {
            return Err(RunError::SplitPoint {
                point,
                max: self.config.depth,
            });
        }
        Ok(())
    }

    fn embed(&self, input: &B::Tensor) -> Result<B::Tensor, RunError> {
        let cfg = &self.config;
        let be = &self.backend;
        let shape = input.shape();
        if shape.len() != 4
            || shape[1] != cfg.in_chans
            || shape[2] != cfg.image_size
            || shape[3] != cfg.image_size
        {
            return Err(RunError::Input {
                actual: shape.to_vec(),
                channels: cfg.in_chans,
                size: cfg.image_size,
            });
        }
        let batch = shape[0];
        // [B, D, gh, gw] -> [B, D, N] -> [B, N, D] (timm: flatten(2).transpose(1, 2))
        let x = be.conv2d(input, &self.patch_embed)?;
        let x = be.reshape(x, &[batch, cfg.embed_dim, cfg.num_patches()])?;
        let x = be.permute(&x, &[0, 2, 1])?;
        let x = match &self.dist_token {
            Some(dist) => be.prepend_tokens(&[&self.cls_token, dist], &x)?,
            None => be.prepend_tokens(&[&self.cls_token], &x)?,
        };
        Ok(be.add(&x, &self.pos_embed)?)
    }

    fn classify(&self, x: &B::Tensor) -> Result<B::Tensor, RunError> {
        let be = &self.backend;
        let x = self.norm.forward(be, x, self.config.eps)?;
        let logits = be.linear(&be.select_token(&x, 0)?, &self.head, Activation::Identity)?;
        Ok(match &self.head_dist {
            // timm's DeiT distilled in eval: the mean of both heads.
            Some(head_dist) => {
                let dist = be.linear(&be.select_token(&x, 1)?, head_dist, Activation::Identity)?;
                be.scale(&be.add(&logits, &dist)?, 0.5)?
            }
            None => logits,
        })
    }
}

/// The name of split point `depth`: `embed` for 0, `block{depth-1}` after a block.
pub fn point_name(depth: usize) -> String {
    match depth {
        0 => "embed".to_owned(),
        k => format!("block{}", k - 1),
    }
}

/// Suffix of a split point whose head ends in the learned bottleneck's encoder.
pub const BOTTLENECK_SUFFIX: &str = "-bottleneck";

/// Activations of a traced forward pass.
pub struct Trace<B: Backend> {
    /// Activation at each split point, `[B, N, D]`, index = split point.
    pub points: Vec<B::Tensor>,
    /// The tokens after the final norm (timm's `tokens.norm`).
    pub normed: B::Tensor,
    /// The logits.
    pub logits: B::Tensor,
}

/// Reads the hyper-parameters off the weight shapes, checked against the architecture.
pub fn infer_config(weights: &Weights, options: &VitOptions) -> Result<VitConfig, LoadError> {
    let arch = match &options.arch {
        Some(name) => Some(find_arch(name).ok_or_else(|| LoadError::UnknownArch {
            name: name.clone(),
            known: ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        })?),
        None => None,
    };
    let vb = weights.root();
    let pe = vb.pp("patch_embed").pp("proj").shape("weight")?;
    let &[embed_dim, in_chans, ph, pw] = pe.as_slice() else {
        return Err(LoadError::Config(format!(
            "patch_embed.proj.weight has shape {pe:?}; expected [D, C, p, p]"
        )));
    };
    if ph != pw || ph == 0 || embed_dim == 0 {
        return Err(LoadError::Config(format!(
            "patch_embed.proj.weight has shape {pe:?}; only square, non-empty patches are supported"
        )));
    }
    let distilled = vb.contains("dist_token") || vb.contains("head_dist.weight");
    let prefix = 1 + usize::from(distilled);
    let pos = vb.shape("pos_embed")?;
    let tokens = match pos.as_slice() {
        &[1, n, dd] if dd == embed_dim && n > prefix => n - prefix,
        _ => {
            return Err(LoadError::Config(format!(
                "pos_embed has shape {pos:?}; expected [1, {prefix} + patches, {embed_dim}]"
            )))
        }
    };
    let grid = (tokens as f64).sqrt().round() as usize;
    if grid * grid != tokens {
        return Err(LoadError::Config(format!(
            "pos_embed holds {tokens} patch positions, not a square grid"
        )));
    }
    let mut depth = 0;
    while vb.pp("blocks").pp(depth).contains("norm1.weight") {
        depth += 1;
    }
    if depth == 0 {
        return Err(vb
            .pp("blocks")
            .pp(0)
            .shape("norm1.weight")
            .err()
            .map_or_else(
                || LoadError::Config("no transformer blocks".into()),
                LoadError::from,
            ));
    }
    let fc1 = linear_shape(&vb.pp("blocks").pp(0).pp("mlp").pp("fc1"))?;
    let mlp_hidden = fc1.first().copied().unwrap_or(0);
    let head = linear_shape(&vb.pp("head"))?;
    let num_classes = head.first().copied().unwrap_or(0);
    let num_heads = match (options.num_heads, arch) {
        (Some(h), _) => h,
        (None, Some(a)) => a.num_heads,
        (None, None) => embed_dim / DEFAULT_HEAD_DIM,
    };
    if let Some(a) = arch {
        if a.embed_dim != embed_dim || a.depth != depth || a.distilled != distilled {
            return Err(LoadError::Config(format!(
                "weights are a ViT with embed dim {embed_dim}, depth {depth}{}, but {} has embed \
                 dim {}, depth {}{}: the architecture name does not fit these weights",
                if distilled { ", distilled" } else { "" },
                a.name,
                a.embed_dim,
                a.depth,
                if a.distilled { ", distilled" } else { "" },
            )));
        }
    }
    if num_heads == 0 || embed_dim % num_heads != 0 {
        return Err(LoadError::Config(format!(
            "embed dim {embed_dim} does not split into {num_heads} heads; give the head count \
             or the architecture"
        )));
    }
    Ok(VitConfig {
        arch: arch.map(|a| a.name.to_string()),
        image_size: grid * ph,
        patch_size: ph,
        in_chans,
        embed_dim,
        depth,
        num_heads,
        mlp_hidden,
        num_classes,
        distilled,
        eps: options.eps.unwrap_or(TIMM_LAYER_NORM_EPS),
    })
}

// ---------------------------------------------------------------------------------
// The split model: a ViT cut at one point, with the learned bottleneck at the cut.

/// Errors loading a split model.
#[derive(Debug, thiserror::Error)]
pub enum SplitLoadError {
    /// The bottleneck tensors are wrong.
    #[error(transparent)]
    Bottleneck(#[from] BottleneckLoadError),
    /// The ViT tensors are wrong.
    #[error(transparent)]
    Vit(#[from] LoadError),
    /// The file could not be read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The metadata is unreadable.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// No split point was given and the checkpoint names none.
    #[error("no split point: give one (--split), or use a checkpoint whose metadata has `split`")]
    NoSplitPoint,
    /// The split point does not exist in this model.
    #[error("split point {point} does not exist: this model has points 0..={max}")]
    PointOutOfRange {
        /// The point asked for.
        point: usize,
        /// The last point.
        max: usize,
    },
    /// The split point asked for is not the one the bottleneck was made for.
    #[error(
        "the bottleneck was made for split point {metadata} (metadata `split`), not {asked}; \
         drop the split argument or use a bottleneck made for {asked}"
    )]
    PointMismatch {
        /// The point asked for.
        asked: usize,
        /// The point in the metadata.
        metadata: usize,
    },
    /// The bottleneck does not fit the model at the split.
    #[error("the bottleneck does not fit this model: {0}")]
    Mismatch(String),
}

/// Errors running a split model.
#[derive(Debug, thiserror::Error)]
pub enum SplitRunError {
    /// The ViT refused the input or activation.
    #[error(transparent)]
    Vit(#[from] RunError),
    /// The bottleneck refused the activation or code.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// A backend op failed.
    #[error(transparent)]
    Backend(#[from] crate::BackendError),
}

/// A ViT cut at one split point, with an optional bottleneck at the cut.
pub struct SplitModel<B: Backend> {
    vit: Arc<Vit<B>>,
    point: usize,
    bottleneck: Option<Bottleneck<B>>,
}

impl<B: Backend> SplitModel<B> {
    /// Puts a loaded model and bottleneck together, checking that the point exists and
    /// that the bottleneck is a token bottleneck of the model's width.
    pub fn new(
        vit: Arc<Vit<B>>,
        point: usize,
        bottleneck: Option<Bottleneck<B>>,
    ) -> Result<Self, SplitLoadError> {
        let cfg = vit.config();
        if point > cfg.depth {
            return Err(SplitLoadError::PointOutOfRange {
                point,
                max: cfg.depth,
            });
        }
        if let Some(b) = &bottleneck {
            if !matches!(b, Bottleneck::Token(_)) {
                return Err(SplitLoadError::Mismatch(format!(
                    "a ViT split carries tokens; this is a {} bottleneck",
                    b.kind()
                )));
            }
            if b.input_channels() != cfg.embed_dim {
                return Err(SplitLoadError::Mismatch(format!(
                    "its encoder takes {} channels, the ViT's tokens have {}",
                    b.input_channels(),
                    cfg.embed_dim
                )));
            }
        }
        Ok(Self {
            vit,
            point,
            bottleneck,
        })
    }

    /// Loads the ViT and its `bottleneck.*` tensors (if any) from `weights`, with the
    /// split point `point` or else the weights' metadata `split` (see
    /// [`SplitModel::load_with_metadata`] for the checks).
    pub fn load(
        backend: B,
        weights: &Weights,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let metadata = SplitMetadata::from_weights(weights)?;
        Self::load_with_metadata(backend, weights, options, point, &metadata)
    }

    /// Loads as [`SplitModel::load`], with the checkpoint's metadata: the split point
    /// defaults to its `split` (and must equal it when both are given and there is a
    /// bottleneck), its `rank` must equal the bottleneck's, and its `num_heads` is
    /// used when `options` give none.
    pub fn load_with_metadata(
        backend: B,
        weights: &Weights,
        options: &VitOptions,
        point: Option<usize>,
        metadata: &SplitMetadata,
    ) -> Result<Self, SplitLoadError> {
        // The bottleneck first: Vit::load refuses tensors nobody has taken.
        let bottleneck = Bottleneck::load(&backend, weights, BOTTLENECK_PREFIX)?;
        let point = match (point, metadata.split) {
            (Some(asked), Some(meta)) if asked != meta && bottleneck.is_some() => {
                return Err(SplitLoadError::PointMismatch {
                    asked,
                    metadata: meta,
                })
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err(SplitLoadError::NoSplitPoint),
        };
        if let (Some(rank), Some(b)) = (metadata.rank, &bottleneck) {
            if rank != b.code_channels() {
                return Err(SplitLoadError::Mismatch(format!(
                    "metadata says rank {rank}, the encoder has {} outputs",
                    b.code_channels()
                )));
            }
        }
        let vit = Vit::load(backend, weights, &options.with_metadata(metadata))?;
        Self::new(Arc::new(vit), point, bottleneck)
    }

    /// Loads from safetensors bytes, taking the split point (when `point` is `None`),
    /// rank and head count from the metadata.
    pub fn from_bytes(
        backend: B,
        bytes: Vec<u8>,
        source_name: &str,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let weights = Weights::from_bytes(bytes, source_name)?;
        Self::load(backend, &weights, options, point)
    }

    /// [`SplitModel::from_bytes`] on a file.
    pub fn from_file(
        backend: B,
        path: impl AsRef<Path>,
        options: &VitOptions,
        point: Option<usize>,
    ) -> Result<Self, SplitLoadError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|source| WeightsError::Io {
                path: shown.clone(),
                source,
            })?
            .len();
        if size > crate::weights::MAX_WEIGHTS_BYTES {
            return Err(WeightsError::TooLarge { path: shown, size }.into());
        }
        let bytes = std::fs::read(path).map_err(|source| WeightsError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_bytes(backend, bytes, &shown, options, point)
    }

    /// The split point (blocks on the device).
    pub fn point(&self) -> usize {
        self.point
    }

    /// Whether a bottleneck sits at the cut.
    pub fn has_bottleneck(&self) -> bool {
        self.bottleneck.is_some()
    }

    /// The bottleneck, if any.
    pub fn bottleneck(&self) -> Option<&Bottleneck<B>> {
        self.bottleneck.as_ref()
    }

    /// The whole model.
    pub fn vit(&self) -> &Arc<Vit<B>> {
        &self.vit
    }

    /// The shape of what [`SplitModel::head`] returns for `batch` images: `[batch, N,
    /// r]` with a bottleneck, `[batch, N, D]` without.
    pub fn code_shape(&self, batch: usize) -> Vec<usize> {
        let cfg = self.vit.config();
        let channels = self
            .bottleneck
            .as_ref()
            .map_or(cfg.embed_dim, Bottleneck::code_channels);
        vec![batch, cfg.num_tokens(), channels]
    }

    /// The device side: `[B, C, H, W]` images -> the code that crosses the link.
    pub fn head(&self, input: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| {
            let act = self.vit.head(input, self.point)?;
            Ok(match &self.bottleneck {
                Some(b) => b.encode(&act)?,
                None => act,
            })
        })
    }

    /// The edge side: the code -> logits `[B, classes]`.
    pub fn tail(&self, code: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| {
            Ok(match &self.bottleneck {
                Some(b) => self.vit.tail(&b.decode(code)?, self.point)?,
                None => self.vit.tail(code, self.point)?,
            })
        })
    }

    /// `tail(head(x))`.
    pub fn forward(&self, input: &B::Tensor) -> Result<B::Tensor, SplitRunError> {
        self.vit.backend().scope(|| self.tail(&self.head(input)?))
    }

    /// Host in, host out: uploads `input`, runs [`SplitModel::forward`], reads the
    /// logits back.
    pub fn run(&self, input: &HostTensor) -> Result<HostTensor, SplitRunError> {
        let be = self.vit.backend();
        let logits = self.forward(&be.upload(input)?)?;
        Ok(be.readback(&logits)?)
    }

    /// Checks a code's shape before [`SplitModel::tail`] (for a receiver that wants
    /// to refuse a frame before running anything).
    pub fn check_code(&self, code: &B::Tensor) -> Result<(), SplitRunError> {
        let shape = code.shape();
        let expected = self.code_shape(shape.first().copied().unwrap_or(0));
        if shape != expected.as_slice() {
            return Err(CodeError::Shape {
                stage: "decoder",
                actual: shape.to_vec(),
                expected: format!("{expected:?}"),
            }
            .into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The family's face to the runtime: a ViT (or its split model) behind `SplitNet`.

/// Errors loading a ViT as a [`SplitNet`].
#[derive(Debug, thiserror::Error)]
pub enum VitNetLoadError {
    /// The split model or the ViT refused the weights.
    #[error(transparent)]
    Split(#[from] SplitLoadError),
    /// The checkpoint's `crop_pct` is not a valid crop fraction.
    #[error(transparent)]
    Transform(#[from] InvalidCropPct),
}

/// A ViT/DeiT as a [`SplitNet`]: cut at any block, or, when the checkpoint carries a
/// learned bottleneck, only at the bottleneck (its layers were trained around it).
pub struct VitNet<B: Backend> {
    vit: Arc<Vit<B>>,
    split: Option<SplitModel<B>>,
    input: InputSpec,
    points: Vec<SplitPoint>,
}

impl<B: Backend> VitNet<B> {
    /// Loads a checkpoint: with `bottleneck.*` tensors the split model (at `point`, or
    /// the metadata's `split`), else the plain ViT; the eval transform from the
    /// metadata's `crop_pct` (timm's default without one).
    pub fn load(
        backend: B,
        weights: &Weights,
        options: &VitOptions,
        point: Option<usize>,
        metadata: &SplitMetadata,
    ) -> Result<Self, VitNetLoadError> {
        let crop_pct = weights.metadata_value("crop_pct");
        if has_bottleneck(weights) {
            let split = SplitModel::load_with_metadata(backend, weights, options, point, metadata)?;
            let size = split.vit().config().image_size as u32;
            let transform = EvalTransform::for_checkpoint(size, crop_pct)?;
            Ok(Self::with_bottleneck(split, transform))
        } else {
            let vit = Vit::load(backend, weights, &options.with_metadata(metadata))
                .map_err(SplitLoadError::from)?;
            let transform =
                EvalTransform::for_checkpoint(vit.config().image_size as u32, crop_pct)?;
            Ok(Self::plain(Arc::new(vit), transform))
        }
    }

    /// A plain ViT, cut at any of its `depth + 1` points.
    pub fn plain(vit: Arc<Vit<B>>, transform: EvalTransform) -> Self {
        let points = vit.split_points();
        Self {
            input: image_input(vit.config(), transform),
            vit,
            split: None,
            points,
        }
    }

    /// A split model; with a bottleneck it is cut only there (`block{k-1}-bottleneck`),
    /// without one at its point (a plain name).
    pub fn with_bottleneck(split: SplitModel<B>, transform: EvalTransform) -> Self {
        let vit = split.vit().clone();
        let code = split.code_shape(1).split_off(1);
        let rank = split.bottleneck().map(Bottleneck::code_channels);
        let suffix = if rank.is_some() {
            BOTTLENECK_SUFFIX
        } else {
            ""
        };
        let points = vec![SplitPoint {
            name: format!("{}{suffix}", point_name(split.point())),
            depth: split.point(),
            shape: code,
            bottleneck: rank,
        }];
        Self {
            input: image_input(vit.config(), transform),
            vit,
            split: Some(split),
            points,
        }
    }

    /// The ViT.
    pub fn vit(&self) -> &Arc<Vit<B>> {
        &self.vit
    }

    /// The split model, when the checkpoint carried a bottleneck.
    pub fn split_model(&self) -> Option<&SplitModel<B>> {
        self.split.as_ref()
    }

    fn host<F>(&self, x: &HostTensor, f: F) -> Result<HostTensor, NetError>
    where
        F: FnOnce(&B::Tensor) -> Result<B::Tensor, NetError>,
    {
        let be = self.vit.backend();
        let y = f(&be.upload(x).map_err(NetError::run)?)?;
        be.readback(&y).map_err(NetError::run)
    }
}

fn image_input(cfg: &VitConfig, transform: EvalTransform) -> InputSpec {
    InputSpec::Image {
        channels: cfg.in_chans,
        size: cfg.image_size,
        transform,
    }
}

impl<B: Backend> SplitNet for VitNet<B> {
    fn family(&self) -> Family {
        Family::Vit
    }

    fn describe(&self) -> String {
        let c = self.vit.config();
        let arch = c
            .arch
            .clone()
            .unwrap_or_else(|| format!("vit d{}", c.embed_dim));
        let bottleneck = match self.points.first() {
            Some(SplitPoint {
                depth,
                bottleneck: Some(rank),
                ..
            }) if self.split.is_some() => {
                format!(", bottleneck after point {depth} (rank {rank})")
            }
            _ => String::new(),
        };
        format!(
            "{arch} ({} blocks, {} classes, backend {}{bottleneck})",
            c.depth,
            c.num_classes,
            self.vit.backend().name()
        )
    }

    fn backend_name(&self) -> &'static str {
        self.vit.backend().name()
    }

    fn input(&self) -> &InputSpec {
        &self.input
    }

    fn output(&self) -> OutputKind {
        OutputKind::ClassLogits {
            classes: self.vit.config().num_classes,
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
        let depth = self.split_point(at)?.depth;
        self.host(x, |x| match &self.split {
            Some(split) => split.head(x).map_err(NetError::run),
            None => self.vit.head(x, depth).map_err(NetError::run),
        })
    }

    fn tail(
        &self,
        h: &HostTensor,
        at: &str,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let depth = self.split_point(at)?.depth;
        let logits = self.host(h, |h| match &self.split {
            Some(split) => split.tail(h).map_err(NetError::run),
            None => self.vit.tail(h, depth).map_err(NetError::run),
        })?;
        Ok(Output::Logits(logits))
    }

    fn forward(
        &self,
        x: &HostTensor,
        _state: Option<&mut dyn NetState>,
    ) -> Result<Output, NetError> {
        let logits = self.host(x, |x| match &self.split {
            Some(split) => split.forward(x).map_err(NetError::run),
            None => self.vit.forward(x).map_err(NetError::run),
        })?;
        Ok(Output::Logits(logits))
    }
}
