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

use crate::backend::{Activation, Backend, BackendError, Conv2dSpec, DeviceTensor};
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
    /// The `--arch` name is not in [`ARCHS`].
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

/// A place the model can be cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitPoint {
    /// Index for [`Vit::head`] and [`Vit::tail`].
    pub index: usize,
    /// `"embed"` or `"block{i}"` (the reference's `tokens.*` names).
    pub name: String,
    /// Activation shape per item: `[tokens, embed_dim]`.
    pub shape: [usize; 2],
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
    let w = vb.get("weight", &[outputs, inputs])?;
    let b = vb.get("bias", &[outputs])?;
    Ok(be.prepare_linear(&w, Some(&b))?)
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

    /// Where the model can be cut: `depth + 1` points (see the module docs).
    pub fn split_points(&self) -> Vec<SplitPoint> {
        let shape = [self.config.num_tokens(), self.config.embed_dim];
        (0..=self.config.depth)
            .map(|index| SplitPoint {
                index,
                name: match index {
                    0 => "embed".to_string(),
                    k => format!("block{}", k - 1),
                },
                shape,
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
    let fc1 = vb.pp("blocks").pp(0).pp("mlp").pp("fc1").shape("weight")?;
    let mlp_hidden = fc1.first().copied().unwrap_or(0);
    let head = vb.pp("head").shape("weight")?;
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
                 dim {}, depth {}{}; check --arch",
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
             (--heads) or the architecture (--arch)"
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
