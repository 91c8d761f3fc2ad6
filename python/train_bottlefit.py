#!/usr/bin/env python3
"""Train the demo classifier and its BottleFit bottleneck; export safetensors.

Three steps, all on the CPU, all seeded:

  teacher  a small DeiT-style ViT (timm `VisionTransformer`) trained on the demo
           dataset (python/make_demo_dataset.py).
  stage 1  BottleFit head distillation: a copy of the teacher gets a token bottleneck
           after block K (encoder D->r on the device, decoder r->D on the edge). The
           head (patch embedding, blocks[..K]), the encoder and the decoder learn to
           reproduce the teacher's tokens at the split (MSE); the teacher is frozen.
  stage 2  the head and encoder are frozen; the decoder and the tail (blocks[K..],
           norm, head) are fine-tuned on the task (cross-entropy plus distillation from
           the teacher's logits).

During both stages the encoder's output goes through the same quantizer the codec
applies on the wire (affine, per channel, min/max per frame, 8/4/2 bits drawn per
batch), with a straight-through gradient, so the tail learns to read quantized
symbols.

Exports (timm names, so `splitstream` loads them as is):
  demo_vit.safetensors             the teacher (what runs locally)
  demo_vit_bottlefit.safetensors   the split model: all ViT weights of the student
                                   plus `bottleneck.encoder.*`, `bottleneck.decoder.fc1.*`,
                                   `bottleneck.decoder.fc2.*`; metadata names the split.

    python python/train_bottlefit.py --data assets/demo --out assets/demo --seed 7
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def model_config(args) -> dict:
    return dict(
        img_size=224,
        patch_size=args.patch,
        embed_dim=args.embed_dim,
        depth=args.depth,
        num_heads=args.heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=10,
    )


def init_from_checkpoint(model: VisionTransformer, path: Path, patch: int) -> None:
    """Start from a timm ViT/DeiT checkpoint: its patch embedding resampled to `patch`
    (FlexiViT's pseudo-inverse resize), its position embedding resampled to the new
    grid, its first `depth` blocks; the classifier is new. With a pretrained checkpoint
    this is fine-tuning. The demo model was made from ../shared/reference's DeiT-Tiny,
    whose weights are random from a fixed seed: there it is a seeded initialisation and
    the training is from scratch."""
    src = load_file(str(path))
    dst = model.state_dict()
    grid = 224 // patch
    out = {}
    for name, value in src.items():
        if name == "patch_embed.proj.weight":
            value = resample_patch_embed(value, [patch, patch])
        elif name == "pos_embed":
            value = resample_abs_pos_embed(value, [grid, grid], num_prefix_tokens=1)
        if name in dst and dst[name].shape == value.shape:
            out[name] = value
    missing = [k for k in dst if k not in out]
    unexpected_shape = [k for k in src if k in dst and k not in out and not k.startswith("head.")]
    if unexpected_shape:
        raise SystemExit(f"--init {path}: shapes differ for {unexpected_shape[:4]}; match --embed-dim/--heads to it")
    model.load_state_dict(out, strict=False)
    print(f"initialised from {path.name}; new: {missing}", flush=True)


def normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    """[B,224,224,3] uint8 -> [B,3,224,224] float, ImageNet mean/std (timm's eval transform
    on an image that is already 224x224)."""
    x = batch_uint8.permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Horizontal flips keep every class its class; brightness/contrast jitter.
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
    gain = 1.0 + 0.2 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5)
    bias = 0.2 * (torch.rand(x.shape[0], 1, 1, 1, generator=gen) - 0.5)
    return x * gain + bias


def fake_quantize(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-channel (last axis) affine quantization with min/max over each frame's tokens,
    as the codec does on the wire; straight-through gradient."""
    if bits >= 32:
        return z
    levels = (1 << bits) - 1
    lo = z.amin(dim=1, keepdim=True).detach()
    hi = z.amax(dim=1, keepdim=True).detach()
    scale = torch.clamp((hi - lo) / levels, min=1e-8)
    q = torch.clamp(torch.round((z - lo) / scale), 0, levels) * scale + lo
    return z + (q - z).detach()


class TokenBottleneck(nn.Module):
    """Per-token encoder D->r (device side) and decoder r->D (edge side)."""

    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.encoder = nn.Linear(dim, rank)
        self.decoder = nn.Sequential()
        self.decoder.fc1 = nn.Linear(rank, 2 * dim)
        self.decoder.act = nn.GELU()
        self.decoder.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, tokens: torch.Tensor, bits: int) -> torch.Tensor:
        return self.decoder(fake_quantize(self.encoder(tokens), bits))


def embed(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    return model.norm_pre(x)


def tokens_at(model: VisionTransformer, x: torch.Tensor, split: int) -> torch.Tensor:
    x = embed(model, x)
    for block in model.blocks[:split]:
        x = block(x)
    return x


def tail_logits(model: VisionTransformer, tokens: torch.Tensor, split: int) -> torch.Tensor:
    for block in model.blocks[split:]:
        tokens = block(tokens)
    return model.forward_head(model.norm(tokens))


def batches(n: int, size: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n - size + 1, size):
        yield order[i : i + size]


def cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def run_epochs(params, epochs, n, batch, lr, gen, step_fn, label, after_epoch=None):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    total = epochs * (n // batch)
    step = 0
    for epoch in range(epochs):
        t0 = time.time()
        losses = []
        for idx in batches(n, batch, gen):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total, lr, warmup=min(200, total // 10))
            loss = step_fn(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
            step += 1
        extra = after_epoch() if after_epoch else ""
        print(f"{label} epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} ({time.time() - t0:.0f}s){extra}", flush=True)


def class_names(data: Path) -> list[str]:
    """The class names in index order, from test/labels.csv (file,label,class)."""
    names: dict[int, str] = {}
    with open(data / "test" / "labels.csv") as f:
        for row in csv.DictReader(f):
            names[int(row["label"])] = row["class"]
    return [names[i] for i in range(len(names))]


def load_test(data: Path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    with open(data / "test" / "labels.csv") as f:
        for row in csv.DictReader(f):
            images.append(np.asarray(Image.open(data / "test" / row["file"]).convert("RGB")))
            labels.append(int(row["label"]))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


@torch.no_grad()
def accuracy(fn, images: torch.Tensor, labels: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(labels), 100):
        logits = fn(normalise(images[i : i + 100]))
        correct += (logits.argmax(-1) == labels[i : i + 100]).sum().item()
    return 100.0 * correct / len(labels)


def export(state: dict, path: Path, metadata: dict, dtype: str) -> None:
    cast = torch.float16 if dtype == "f16" else torch.float32
    tensors = {k: v.detach().contiguous().to(cast) for k, v in state.items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("assets/demo"))
    parser.add_argument("--out", type=Path, default=Path("assets/demo"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--patch", type=int, default=32, help="patch size (32: 49 tokens, cheap to train on a CPU)")
    parser.add_argument("--embed-dim", type=int, default=96)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--split", type=int, default=1, help="bottleneck after this many blocks")
    parser.add_argument("--rank", type=int, default=16, help="bottleneck channels per token")
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--stage1-epochs", type=int, default=4)
    parser.add_argument("--stage2-epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4, help="AdamW peak learning rate (at 1e-3 the teacher stayed at chance loss for 2 epochs here)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this timm checkpoint (safetensors; pretrained to fine-tune); "
        "its first --depth blocks are kept and its patch embedding resampled to --patch",
    )
    parser.add_argument("--dtype", choices=["f32", "f16"], default="f16", help="weight type of the exported files")
    parser.add_argument("--limit", type=int, default=0, help="use only this many training images (smoke runs)")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)

    train = np.load(args.data / "train.npz")
    train_x = torch.from_numpy(train["images"])
    train_y = torch.from_numpy(train["labels"])
    if args.limit:
        train_x, train_y = train_x[: args.limit], train_y[: args.limit]
    test_x, test_y = load_test(args.data)
    n = len(train_y)
    print(f"{n} training images, {len(test_y)} test images", flush=True)

    cfg = model_config(args)
    teacher = VisionTransformer(**cfg)
    if args.init:
        init_from_checkpoint(teacher, args.init, args.patch)

    def teacher_eval():
        teacher.eval()
        acc = accuracy(teacher, test_x, test_y)
        teacher.train()
        return f", test accuracy {acc:.2f}%"

    def teacher_step(idx):
        x = augment(normalise(train_x[idx]), gen)
        return F.cross_entropy(teacher(x), train_y[idx], label_smoothing=0.1)

    teacher.train()
    run_epochs(
        list(teacher.parameters()), args.teacher_epochs, n, args.batch, args.lr, gen, teacher_step, "teacher", teacher_eval
    )
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher_acc = accuracy(teacher, test_x, test_y)
    print(f"teacher test accuracy {teacher_acc:.2f}%", flush=True)

    # Stage 1: head distillation with the bottleneck in place.
    k = args.split
    student = copy.deepcopy(teacher)
    for p in student.parameters():
        p.requires_grad_(True)
    bottleneck = TokenBottleneck(args.embed_dim, args.rank)
    bits_choices = [8, 4, 2]

    head_params = list(student.patch_embed.parameters()) + [student.cls_token, student.pos_embed]
    head_params += [p for b in student.blocks[:k] for p in b.parameters()]

    def stage1_step(idx):
        x = augment(normalise(train_x[idx]), gen)
        with torch.no_grad():
            target = tokens_at(teacher, x, k)
        bits = bits_choices[int(torch.randint(len(bits_choices), (1,), generator=gen))]
        out = bottleneck(tokens_at(student, x, k), bits)
        return F.mse_loss(out, target)

    student.train()
    run_epochs(head_params + list(bottleneck.parameters()), args.stage1_epochs, n, args.batch, args.lr, gen, stage1_step, "stage1")

    # Stage 2: encoder and head frozen; decoder and tail fine-tuned on the task.
    for p in head_params + list(bottleneck.encoder.parameters()):
        p.requires_grad_(False)
    tail_params = list(bottleneck.decoder.parameters())
    tail_params += [p for b in student.blocks[k:] for p in b.parameters()]
    tail_params += list(student.norm.parameters()) + list(student.head.parameters())

    def split_forward(x, bits):
        return tail_logits(student, bottleneck(tokens_at(student, x, k), bits), k)

    def stage2_step(idx):
        x = augment(normalise(train_x[idx]), gen)
        bits = bits_choices[int(torch.randint(len(bits_choices), (1,), generator=gen))]
        logits = split_forward(x, bits)
        with torch.no_grad():
            soft = F.softmax(teacher(x), dim=-1)
        ce = F.cross_entropy(logits, train_y[idx], label_smoothing=0.1)
        kd = F.kl_div(F.log_softmax(logits, dim=-1), soft, reduction="batchmean")
        return 0.5 * ce + 0.5 * kd

    def stage2_eval():
        student.eval()
        bottleneck.eval()
        acc = accuracy(lambda x: split_forward(x, 8), test_x, test_y)
        student.train()
        bottleneck.train()
        return f", split 8-bit test accuracy {acc:.2f}%"

    student.train()
    run_epochs(tail_params, args.stage2_epochs, n, args.batch, args.lr * 0.5, gen, stage2_step, "stage2", stage2_eval)
    student.eval()
    bottleneck.eval()

    # The files ship in f16 (two models within the 10 MB the repository allows); round
    # now so the accuracies below are those of the exported weights.
    if args.dtype == "f16":
        with torch.no_grad():
            for module in (teacher, student, bottleneck):
                for p in module.parameters():
                    p.copy_(p.half().float())
        teacher_acc = accuracy(teacher, test_x, test_y)

    results = {"teacher": teacher_acc}
    for bits in [32, 8, 4, 2]:
        results[f"bottlefit_{bits}bit"] = accuracy(lambda x: split_forward(x, bits), test_x, test_y)
    print(json.dumps(results), flush=True)

    # crop_pct 1.0: the images are already 224x224 and the model was trained on them
    # whole; an eval transform honouring it resizes nothing and crops nothing.
    meta = {
        "arch": "vit",
        "patch_size": args.patch,
        "num_heads": args.heads,
        "num_classes": 10,
        "crop_pct": "1.0",
        "seed": args.seed,
        # What splitstream prints beside class indices (docs/models.md).
        "class_names": json.dumps(class_names(args.data)),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    export(teacher.state_dict(), args.out / "demo_vit.safetensors", meta, args.dtype)
    state = dict(student.state_dict())
    state.update({f"bottleneck.{name}": v for name, v in bottleneck.state_dict().items()})
    export(
        state,
        args.out / "demo_vit_bottlefit.safetensors",
        {**meta, "bottleneck": "token", "split": k, "rank": args.rank, "decoder": "mlp_gelu"},
        args.dtype,
    )
    with open(args.out / "training.json", "w") as f:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "test_accuracy": results}, f, indent=2)


if __name__ == "__main__":
    main()
