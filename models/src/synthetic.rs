//! A deterministic, seeded, untrained ViT checkpoint with timm's tensor names, written
//! into a safetensors buffer: what the demo and the end-to-end tests run when no
//! trained model ships. Its outputs mean nothing; that both ends agree on them does.

/// The shape of a small timm `VisionTransformer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VitSpec {
    /// Input side.
    pub image_size: usize,
    /// Patch side.
    pub patch_size: usize,
    /// Channels per token.
    pub embed_dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Output classes.
    pub num_classes: usize,
}

/// The demo model's architecture (timm `VisionTransformer(img_size=224, patch_size=32,
/// embed_dim=96, depth=4, num_heads=3, num_classes=10)`), as trained under issue 7.
pub const DEMO_VIT: VitSpec = VitSpec {
    image_size: 224,
    patch_size: 32,
    embed_dim: 96,
    depth: 4,
    num_heads: 3,
    num_classes: 10,
};

/// SplitMix64: tiny, fast, and the same stream on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// The checkpoint as safetensors bytes (F32, timm names, `num_heads` in the metadata).
/// Linear and convolution weights are Xavier-uniform, tokens and position embeddings
/// uniform with std 0.02, layer norms identity, biases small: the logits of different
/// images then differ clearly, so agreement between two runs is a real check.
pub fn seeded_vit_safetensors(spec: &VitSpec, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let tensors = vit_tensors(spec, &mut rng);
    serialize(tensors, &[("num_heads", spec.num_heads.to_string())])
}

/// The seeded ViT with a learned-bottleneck-shaped pair at split point `point`: a
/// token encoder `nn.Linear(D, rank)` and a linear decoder `nn.Linear(rank, D)`
/// (`bottleneck.*` tensors; `split`, `rank`, `num_heads` in the metadata), seeded
/// like the rest. Untrained, so the code loses information; what matters to tests is
/// that device and edge compute the same function of it.
pub fn seeded_split_safetensors(spec: &VitSpec, seed: u64, point: usize, rank: usize) -> Vec<u8> {
    let mut rng = SplitMix(seed);
    let mut tensors = vit_tensors(spec, &mut rng);
    let d = spec.embed_dim;
    let bound = (6.0 / (d + rank) as f32).sqrt();
    let mut uniform = |name: &str, shape: Vec<usize>, bound: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| rng.symmetric() * bound).collect();
        tensors.push((format!("bottleneck.{name}"), shape, data));
    };
    uniform("encoder.weight", vec![rank, d], bound);
    uniform("encoder.bias", vec![rank], 0.01);
    uniform("decoder.weight", vec![d, rank], bound);
    uniform("decoder.bias", vec![d], 0.01);
    serialize(
        tensors,
        &[
            ("num_heads", spec.num_heads.to_string()),
            ("rank", rank.to_string()),
            ("split", point.to_string()),
        ],
    )
}

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn vit_tensors(spec: &VitSpec, rng: &mut SplitMix) -> Tensors {
    let d = spec.embed_dim;
    let p = spec.patch_size;
    let tokens = 1 + (spec.image_size / p) * (spec.image_size / p);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut uniform = |name: String, shape: Vec<usize>, bound: f32| {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| rng.symmetric() * bound).collect();
        tensors.push((name, shape, data));
    };
    let xavier = |fan_in: usize, fan_out: usize| (6.0 / (fan_in + fan_out) as f32).sqrt();
    // std 0.02 for a uniform distribution is a bound of 0.02 * sqrt(3).
    let small = 0.02 * 3f32.sqrt();
    uniform(
        "patch_embed.proj.weight".into(),
        vec![d, 3, p, p],
        xavier(3 * p * p, d),
    );
    uniform("patch_embed.proj.bias".into(), vec![d], small);
    uniform("cls_token".into(), vec![1, 1, d], small);
    uniform("pos_embed".into(), vec![1, tokens, d], small);
    let h = 4 * d;
    for i in 0..spec.depth {
        let b = format!("blocks.{i}");
        uniform(
            format!("{b}.attn.qkv.weight"),
            vec![3 * d, d],
            xavier(d, 3 * d),
        );
        uniform(format!("{b}.attn.qkv.bias"), vec![3 * d], small);
        uniform(format!("{b}.attn.proj.weight"), vec![d, d], xavier(d, d));
        uniform(format!("{b}.attn.proj.bias"), vec![d], small);
        uniform(format!("{b}.mlp.fc1.weight"), vec![h, d], xavier(d, h));
        uniform(format!("{b}.mlp.fc1.bias"), vec![h], small);
        uniform(format!("{b}.mlp.fc2.weight"), vec![d, h], xavier(h, d));
        uniform(format!("{b}.mlp.fc2.bias"), vec![d], small);
    }
    uniform(
        "head.weight".into(),
        vec![spec.num_classes, d],
        xavier(d, spec.num_classes),
    );
    uniform("head.bias".into(), vec![spec.num_classes], small);
    let mut norm = |name: String| {
        tensors.push((format!("{name}.weight"), vec![d], vec![1.0; d]));
        tensors.push((format!("{name}.bias"), vec![d], vec![0.0; d]));
    };
    for i in 0..spec.depth {
        norm(format!("blocks.{i}.norm1"));
        norm(format!("blocks.{i}.norm2"));
    }
    norm("norm".into());
    tensors
}

/// safetensors bytes with the metadata entries in the given order (safetensors
/// itself writes its metadata map in HashMap order, and the bytes must not vary
/// between runs: their SHA-256 is the model id the edge admits devices by).
fn serialize(tensors: Tensors, metadata: &[(&str, String)]) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .filter_map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .ok()
                .map(|v| (n.clone(), v))
        })
        .collect();
    // Shapes and byte lengths are consistent by construction, so this cannot fail.
    let plain = safetensors::serialize(views, None).unwrap_or_default();
    with_metadata(&plain, metadata).unwrap_or(plain)
}

/// Re-writes a safetensors header with `__metadata__` added (keys in the given
/// order; the tensor entries keep their order and offsets, which are relative to the
/// data section).
fn with_metadata(plain: &[u8], metadata: &[(&str, String)]) -> Option<Vec<u8>> {
    let len = usize::try_from(u64::from_le_bytes(plain.get(..8)?.try_into().ok()?)).ok()?;
    let header = std::str::from_utf8(plain.get(8..8 + len)?).ok()?.trim_end();
    let body = header.strip_prefix('{')?;
    let entries: Vec<String> = metadata
        .iter()
        .map(|(k, v)| format!("{}:{}", serde_json::json!(k), serde_json::json!(v)))
        .collect();
    let mut new = format!("{{\"__metadata__\":{{{}}}", entries.join(","));
    if body != "}" {
        new.push(',');
    }
    new.push_str(body);
    // The data section starts 8-aligned, as safetensors writes it.
    while new.len() % 8 != 0 {
        new.push(' ');
    }
    let mut out = (new.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new.as_bytes());
    out.extend_from_slice(plain.get(8 + len..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Weights;

    #[test]
    fn seeded_checkpoint_is_deterministic_and_says_its_heads() {
        let a = seeded_vit_safetensors(&DEMO_VIT, 7);
        assert_eq!(a, seeded_vit_safetensors(&DEMO_VIT, 7));
        assert_ne!(a, seeded_vit_safetensors(&DEMO_VIT, 8));
        let w = Weights::from_bytes(a, "seeded").unwrap();
        assert_eq!(w.metadata_value("num_heads"), Some("3"));
        assert_eq!(w.shape("pos_embed"), Some(&[1, 50, 96][..]));
        assert!(w.names().all(|n| !n.starts_with("bottleneck.")));
    }

    #[test]
    fn seeded_split_checkpoint_carries_its_bottleneck() {
        let a = seeded_split_safetensors(&DEMO_VIT, 7, 2, 16);
        assert_eq!(a, seeded_split_safetensors(&DEMO_VIT, 7, 2, 16));
        let w = Weights::from_bytes(a, "seeded split").unwrap();
        assert_eq!(w.metadata_value("split"), Some("2"));
        assert_eq!(w.metadata_value("rank"), Some("16"));
        assert!(w.names().any(|n| n.starts_with("bottleneck.")));
    }
}
