#!/usr/bin/env python3
"""LPViT block pruning of a timm ViT, fine-tuned by distillation; block-sparse export.

The criterion follows LPViT (Xu et al., ECCV 2024) as its repository implements it
(`--ranking taylor --second_order --lambda_power` with a FLOPs budget), written anew:

  signal     G_l = the gradient of mean(model(x)^2) w.r.t. each prunable weight,
             averaged over the calibration batches (label-free).
  curves     for each layer, 101 sparsity levels a = d / 100: keep the top
             int((1 - a) * blocks) blocks ranked by block-mean |W * G|; distortion
             mean((dW * G)^2) plus a second-order (rank-one Fisher) term accumulated
             level by level as the repository does (its increment is
             0.5 (g.ddW)(g.(ddW + 2 dW)), which also counts (g.ddW)^2 per level);
             the curve is smoothed (debiased EMA, weight --smooth).
  power      beta * a * blocks * floor(in / 16) (the repository's term; it counts
             the pruned blocks, although its variable is named after the survivors),
             beta = mean of the layers' largest distortion slope / mean of their
             largest power slope.
  allocation equal slope: each layer takes the level whose slope (five-point
             stencil, --h) is nearest to 2^s, at most 95% pruned; s is bisected so
             that the model's FLOPs (kept weights x tokens over every linear and conv
             layer, as the repository counts them) meet --flops.
  masks      the final masks rank blocks by block-mean |W| (the repository's calls pass
             `rank=` where its pruning function reads `ranking`, so l1 is what runs;
             --final-ranking taylor uses the curves' ranking instead).

Prunable here: every block's qkv, proj, fc1 and fc2 (the patch embedding and the
classifier stay dense: the runtime's block-sparse kernel is a linear layer, and a
10-class head does not split into 16-blocks). Then the pruned model is fine-tuned with
its masks fixed, by soft distillation from the dense model (KL at temperature --tau,
plus cross-entropy on the labels), and exported as block-sparse safetensors:
`X.weight_block_mask` [out/bo, in/bi] (1.0 = kept) and `X.weight_blocks` [kept, bo,
bi] in place of `X.weight`, metadata `block_sparse = "{bo}x{bi}"`.

    python python/prune_lpvit.py --weights assets/demo/demo_vit.safetensors \\
        --data DATA --flops 0.5 --block 16 --epochs 2 --out pruned50.safetensors
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
LEVELS = 101
MAX_PRUNED = 0.95


def normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    x = batch_uint8.permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


def load_model(path: Path, heads: int | None) -> tuple[VisionTransformer, dict]:
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    d, _, p, _ = state["patch_embed.proj.weight"].shape
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state:
        depth += 1
    tokens = state["pos_embed"].shape[1] - 1
    grid = int(round(math.sqrt(tokens)))
    heads = heads or int(metadata.get("num_heads", d // 64))
    model = VisionTransformer(
        img_size=grid * p,
        patch_size=p,
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / d,
        qkv_bias=True,
        num_classes=state["head.weight"].shape[0],
    )
    model.load_state_dict(state)
    return model, metadata


def prunable(model: VisionTransformer, block: int) -> list[tuple[str, torch.nn.Linear]]:
    layers = []
    for i, blk in enumerate(model.blocks):
        for name, lin in [("attn.qkv", blk.attn.qkv), ("attn.proj", blk.attn.proj), ("mlp.fc1", blk.mlp.fc1), ("mlp.fc2", blk.mlp.fc2)]:
            o, n = lin.weight.shape
            if o % block == 0 and n % block == 0:
                layers.append((f"blocks.{i}.{name}", lin))
    return layers


def block_scores(w: torch.Tensor, block: int) -> torch.Tensor:
    """Block means of a [out, in] matrix -> [out/b, in/b]."""
    o, n = w.shape
    return w.view(o // block, block, n // block, block).mean(dim=(1, 3))


def expand(mask: torch.Tensor, block: int) -> torch.Tensor:
    return mask.repeat_interleave(block, 0).repeat_interleave(block, 1)


def keep_top(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Block mask keeping the top int((1 - amount) * blocks) scores."""
    flat = scores.flatten()
    k = int((1.0 - amount) * flat.numel())
    mask = torch.zeros_like(flat)
    if k > 0:
        mask[torch.topk(flat, k, largest=True).indices] = 1.0
    return mask.view_as(scores)


def gradients(model, layers, calib: torch.Tensor, batch: int) -> list[torch.Tensor]:
    grads = [torch.zeros_like(lin.weight) for _, lin in layers]
    chunks = list(range(0, len(calib), batch))
    model.eval()
    for i in chunks:
        model.zero_grad(set_to_none=True)
        out = model(normalise(calib[i : i + batch]))
        (out**2).mean().backward()
        for g, (_, lin) in zip(grads, layers):
            g += lin.weight.grad.detach() / len(chunks)
    model.zero_grad(set_to_none=True)
    return grads


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    out = np.empty_like(values)
    last = 0.0
    for i, v in enumerate(values):
        last = last * weight + (1 - weight) * v
        out[i] = last / (1 - weight ** (i + 1)) if weight != 1 else last
    return out


def slopes(xs: np.ndarray, ys: np.ndarray, h: int) -> np.ndarray:
    """Slope at each level but the last: a five-point stencil of half-width h//2 where
    it fits, one-sided or central differences near the ends."""
    n = len(xs)
    out = np.empty(n - 1)
    for i in range(n - 1):
        hh = min(h, i, n - i - 1)
        if hh < 2 and i < 2:
            out[i] = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
        elif hh < 2:
            out[i] = (ys[i + 1] - ys[i - 1]) / (xs[i + 1] - xs[i - 1])
        else:
            half = hh // 2
            out[i] = (-ys[i + hh] + 8 * ys[i + half] - 8 * ys[i - half] + ys[i - hh]) / (6 * (xs[i + hh] - xs[i]))
    return out


def curves(layers, grads, block: int, smooth_weight: float):
    """Distortion and power curves of every layer. The masks of the levels are nested
    (the same ranking, fewer blocks kept), so the per-level sums are prefix sums over
    the blocks in the order they are dropped: mean((dW * G)^2) is the dropped blocks'
    sum of (W G)^2 over numel, and with p = the dropped blocks' sum of W G the
    repository's second-order increment 0.5 (g.ddW)(g.(ddW + 2 dW)) is
    0.5 q (q - 2 p) with q = -(p - p_prev)."""
    amounts = np.linspace(0.0, 1.0, LEVELS)
    dists, powers = [], []
    for (_, lin), g in zip(layers, grads):
        w = lin.weight.detach().double()
        wg = w * g.double()
        o, n = w.shape
        scores = block_scores(wg.abs(), block).flatten()
        sq = (wg**2).view(o // block, block, n // block, block).sum(dim=(1, 3)).flatten()
        lin_sum = wg.view(o // block, block, n // block, block).sum(dim=(1, 3)).flatten()
        nb = scores.numel()
        order = torch.argsort(scores, descending=True, stable=True)
        dropped_first = order.flip(0)  # lowest scores first
        csq = torch.cat([torch.zeros(1, dtype=torch.float64), sq[dropped_first].cumsum(0)])
        clin = torch.cat([torch.zeros(1, dtype=torch.float64), lin_sum[dropped_first].cumsum(0)])
        dist = np.zeros(LEVELS)
        second, p_prev = 0.0, 0.0
        for d, a in enumerate(amounts):
            drop = 0 if d == 0 else nb - int((1.0 - a) * nb)
            p = clin[drop].item()
            if d > 0:
                q = -(p - p_prev)
                second += 0.5 * q * (q - 2.0 * p)
            dist[d] = csq[drop].item() / (o * n) + second
            p_prev = p
        if smooth_weight > 0:
            dist = smooth(dist, smooth_weight)
        blocks = o * n / (block * block)
        dists.append(dist)
        powers.append(amounts * blocks * float(n // 16))
    return amounts, dists, powers


def flops_fraction(model, layers, amounts_l, block: int) -> float:
    """Kept weights x tokens over every linear/conv layer, over the dense count."""
    tokens = model.pos_embed.shape[1]
    pruned = {name: a for (name, _), a in zip(layers, amounts_l)}
    dense = kept = 0.0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            positions = tokens - 1
        elif isinstance(m, torch.nn.Linear):
            positions = 1 if name == "head" else tokens
        else:
            continue
        n = m.weight.numel()
        dense += n * positions
        if name in pruned:
            o, i = m.weight.shape
            blocks = (o // block) * (i // block)
            kept += int((1 - pruned[name]) * blocks) * block * block * positions
        else:
            kept += n * positions
    return kept / dense


def allocate(model, layers, amounts, rd, block: int, target: float, h: int):
    grads_of = [slopes(amounts, r, h) for r in rd]

    def at(s: float) -> list[float]:
        lam = 2.0**s
        return [min(MAX_PRUNED, amounts[int(np.argmin(np.abs(g - lam)))]) for g in grads_of]

    lo, hi = -100.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if flops_fraction(model, layers, at(mid), block) <= target:
            hi = mid
        else:
            lo = mid
    return hi, at(hi)


def lpvit_masks(model, layers, calib, block, target, args):
    grads = gradients(model, layers, calib, args.calib_batch)
    amounts, dists, powers = curves(layers, grads, block, args.smooth)
    if args.no_power:
        rd = dists
        beta = 0.0
    else:
        dmax = np.mean([slopes(amounts, d, 10).max() for d in dists])
        pmax = np.mean([slopes(amounts, p, 10).max() for p in powers])
        beta = dmax / pmax
        rd = [d + beta * p for d, p in zip(dists, powers)]
    slope, per_layer = allocate(model, layers, amounts, rd, block, target, args.h)
    masks = {}
    for (name, lin), g, a in zip(layers, grads, per_layer):
        w = lin.weight.detach()
        rank = (w * g).abs() if args.final_ranking == "taylor" else w.abs()
        masks[name] = keep_top(block_scores(rank, block), a)
    return masks, per_layer, beta, slope


def apply_masks(layers, masks, block):
    with torch.no_grad():
        for name, lin in layers:
            lin.weight.mul_(expand(masks[name], block))


def load_test(data: Path):
    images, labels = [], []
    with open(data / "labels.csv") as f:
        for row in csv.DictReader(f):
            images.append(np.asarray(Image.open(data / row["file"]).convert("RGB")))
            labels.append(int(row["label"]))
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


@torch.no_grad()
def accuracy(model, images, labels) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(labels), 100):
        correct += (model(normalise(images[i : i + 100])).argmax(-1) == labels[i : i + 100]).sum().item()
    return 100.0 * correct / len(labels)


def finetune(student, teacher, layers, masks, block, train_x, train_y, args, gen):
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    n = len(train_y)
    steps = args.epochs * (n // args.batch)
    full = {name: expand(masks[name], block) for name, _ in layers}
    step = 0
    teacher.eval()
    for epoch in range(args.epochs):
        t0 = time.time()
        student.train()
        losses = []
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - args.batch + 1, args.batch):
            idx = order[i : i + args.batch]
            x = normalise(train_x[idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            for g in opt.param_groups:
                g["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * step / max(1, steps)))
            with torch.no_grad():
                soft = F.log_softmax(teacher(x) / args.tau, -1)
            logits = student(x)
            kd = F.kl_div(F.log_softmax(logits / args.tau, -1), soft, log_target=True, reduction="batchmean") * args.tau**2
            loss = 0.5 * kd + 0.5 * F.cross_entropy(logits, train_y[idx].long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for name, lin in layers:
                    lin.weight.mul_(full[name])
            losses.append(loss.item())
            step += 1
        print(f"fine-tune epoch {epoch + 1}/{args.epochs}: loss {np.mean(losses):.4f} ({time.time() - t0:.0f}s)", flush=True)


def export(model, layers, masks, block, metadata, path: Path, dtype: str):
    cast = torch.float16 if dtype == "f16" else torch.float32
    state = {k: v.detach().to(cast).contiguous() for k, v in model.state_dict().items()}
    for name, _ in layers:
        w = state.pop(f"{name}.weight")
        m = masks[name]
        o, n = w.shape
        blocks = w.view(o // block, block, n // block, block).permute(0, 2, 1, 3)
        kept = blocks[m.bool()]  # row-major over the mask: [kept, bo, bi]
        state[f"{name}.weight_block_mask"] = m.to(cast).contiguous()
        state[f"{name}.weight_blocks"] = kept.contiguous()
    meta = {k: str(v) for k, v in metadata.items()}
    meta["block_sparse"] = f"{block}x{block}"
    save_file(state, str(path), metadata=meta)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="folder with train.npz (python/make_demo_dataset.py)")
    parser.add_argument("--test", type=Path, default=Path("assets/demo/test"))
    parser.add_argument("--flops", type=float, nargs="+", default=[0.5])
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--calib", type=int, default=512, help="calibration images (LPViT: 2000)")
    parser.add_argument("--calib-batch", type=int, default=64)
    parser.add_argument("--smooth", type=float, default=0.5)
    parser.add_argument("--h", type=int, default=4)
    parser.add_argument("--no-power", action="store_true")
    parser.add_argument("--final-ranking", choices=["l1", "taylor"], default="l1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--tau", type=float, default=2.0)
    parser.add_argument("--heads", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dtype", choices=["f32", "f16"], default="f16", help="weight type of the exported files")
    parser.add_argument("--out", type=Path, required=True, help="output prefix: OUT_f50.safetensors, ...; OUT.json")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    train = np.load(args.data / "train.npz")
    train_x, train_y = torch.from_numpy(train["images"]), torch.from_numpy(train["labels"])
    calib = train_x[torch.randperm(len(train_x), generator=gen)[: args.calib]]
    if args.train_limit:
        train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
    test_x, test_y = load_test(args.test)

    teacher, metadata = load_model(args.weights, args.heads)
    for p in teacher.parameters():
        p.requires_grad_(False)
    dense_acc = accuracy(teacher, test_x, test_y)
    print(f"dense: {dense_acc:.2f}% on {len(test_y)} test images", flush=True)
    report = {"weights": args.weights.name, "block": args.block, "dense_accuracy": dense_acc, "targets": []}
    for target in args.flops:
        t0 = time.time()
        student, _ = load_model(args.weights, args.heads)
        layers = prunable(student, args.block)
        masks, per_layer, beta, slope = lpvit_masks(student, layers, calib, args.block, target, args)
        apply_masks(layers, masks, args.block)
        flops = flops_fraction(student, layers, per_layer, args.block)
        criterion_s = time.time() - t0
        if flops > target + 1e-9:
            print(f"FLOPs {target}: unreachable by the equal-slope rule (at most {MAX_PRUNED:.0%} per layer, patch embedding and classifier dense); skipped", flush=True)
            report["targets"].append({"flops_target": target, "unreachable": True, "flops_reached": flops})
            continue
        zero_shot = accuracy(student, test_x, test_y)
        print(f"FLOPs {target}: reached {flops:.3f}, beta {beta:.3g}, slope 2^{slope:.2f}; layers {[round(float(a), 2) for a in per_layer]}", flush=True)
        print(f"  training-free: {zero_shot:.2f}% ({criterion_s:.0f}s)", flush=True)
        tag = f"f{round(target * 100)}"
        export(student, layers, masks, args.block, metadata, args.out.with_name(f"{args.out.name}_{tag}_trainfree.safetensors"), args.dtype)
        t1 = time.time()
        finetune(student, teacher, layers, masks, args.block, train_x, train_y, args, gen)
        tuned = accuracy(student, test_x, test_y)
        print(f"  fine-tuned: {tuned:.2f}% ({time.time() - t1:.0f}s)", flush=True)
        export(student, layers, masks, args.block, metadata, args.out.with_name(f"{args.out.name}_{tag}.safetensors"), args.dtype)
        report["targets"].append(
            {
                "flops_target": target,
                "flops_reached": flops,
                "beta": beta,
                "slope_log2": slope,
                "layer_sparsity": {n: float(a) for (n, _), a in zip(layers, per_layer)},
                "accuracy_training_free": zero_shot,
                "accuracy_fine_tuned": tuned,
                "epochs": args.epochs,
                "train_images": len(train_y),
                "seconds_criterion": criterion_s,
                "seconds_fine_tune": time.time() - t1,
            }
        )
    out = args.out.with_name(f"{args.out.name}.json")
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
