#!/usr/bin/env python3
"""Write the PyTorch parity fixture for the Rust bottlenecks and split model.

One small safetensors file (models/tests/data/bottleneck_fixture.safetensors) holding,
all from seeded random weights:

  ViT        a tiny timm VisionTransformer (img 32, patch 8, dim 32, depth 2, heads 2,
             10 classes), timm state-dict names;
  bottleneck the token bottleneck of python/train_bottlefit.py (the very class, so the
             names are the training script's) after block 1 (split point 1), rank 8,
             MLP decoder with exact GELU;
  linear_bottleneck.*   a token bottleneck with a linear decoder (the PCA form), rank 6;
  conv_bottleneck.*     BottleFit-style conv bottleneck on a [2, 16, 8, 8] feature map:
             encoder Conv2d(16,12,3,s2,p1), GELU, Conv2d(12,4,3,s2,p1); decoder
             ConvTranspose2d(4,12,2,s2), GELU, ConvTranspose2d(12,16,2,s2), GELU,
             Conv2d(16,16,3,p1);
  fixture.*  inputs and PyTorch's outputs: tokens at the split, code, decoded tokens,
             logits of the split model, and the same for the other two bottlenecks.

Metadata: split=1, rank=8, num_heads=2. Every parameter is perturbed (no zero biases,
no unit norms) so that no wrong mapping hides behind a default value.

    python python/export_bottleneck_fixture.py
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models.vision_transformer import VisionTransformer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bottlefit import TokenBottleneck, tail_logits, tokens_at  # noqa: E402

SPLIT = 1
RANK = 8
LINEAR_RANK = 6


def save_deterministic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors with a sorted header: `save_file` writes the metadata map in hash
    order, so its bytes differ from run to run; this writes the same format (8-byte
    little-endian header length, JSON header padded with spaces to 8 bytes, F32 data in
    header order) byte-identically every time."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        data = tensors[name].detach().contiguous().float().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def perturb(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("weight") and p.dim() == 1:  # LayerNorm scales
                p.copy_(1.0 + 0.2 * noise)
            elif p.dim() == 1 or name in ("cls_token", "pos_embed"):
                p.copy_(0.2 * noise)
            else:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5)


class LinearTokenBottleneck(nn.Module):
    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.encoder = nn.Linear(dim, rank)
        self.decoder = nn.Linear(rank, dim)


def conv_bottleneck() -> nn.Module:
    m = nn.Module()
    m.encoder = nn.Sequential(
        nn.Conv2d(16, 12, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(12, 4, 3, stride=2, padding=1),
    )
    m.decoder = nn.Sequential(
        nn.ConvTranspose2d(4, 12, 2, stride=2),
        nn.GELU(),
        nn.ConvTranspose2d(12, 16, 2, stride=2),
        nn.GELU(),
        nn.Conv2d(16, 16, 3, padding=1),
    )
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "models/tests/data/bottleneck_fixture.safetensors")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0, qkv_bias=True, num_classes=10)
    token = TokenBottleneck(32, RANK)
    linear = LinearTokenBottleneck(32, LINEAR_RANK)
    conv = conv_bottleneck()
    for m in (vit, token, linear, conv):
        perturb(m, gen)
        m.eval()

    x = torch.randn(2, 3, 32, 32, generator=gen)
    fmap = torch.randn(2, 16, 8, 8, generator=gen)
    with torch.no_grad():
        tokens = tokens_at(vit, x, SPLIT)
        code = token.encoder(tokens)
        decoded = token.decoder(code)
        logits = tail_logits(vit, decoded, SPLIT)
        lin_code = linear.encoder(tokens)
        lin_decoded = linear.decoder(lin_code)
        conv_code = conv.encoder(fmap)
        conv_decoded = conv.decoder(conv_code)
        # The unsplit path must agree with timm's own forward (a check on this script).
        assert torch.allclose(tail_logits(vit, tokens, SPLIT), vit(x), atol=1e-5)

    state = {k: v for k, v in vit.state_dict().items()}
    for prefix, module in (("bottleneck", token), ("linear_bottleneck", linear), ("conv_bottleneck", conv)):
        state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    state.update(
        {
            "fixture.input": x,
            "fixture.tokens": tokens,
            "fixture.code": code,
            "fixture.decoded": decoded,
            "fixture.logits": logits,
            "fixture.linear.code": lin_code,
            "fixture.linear.decoded": lin_decoded,
            "fixture.conv.input": fmap,
            "fixture.conv.code": conv_code,
            "fixture.conv.decoded": conv_decoded,
        }
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_deterministic(state, args.out, {"split": str(SPLIT), "rank": str(RANK), "num_heads": "2"})
    back = load_file(str(args.out))
    assert all(torch.equal(back[k], v.float()) for k, v in state.items())
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(state)} tensors)")


if __name__ == "__main__":
    main()
