#!/usr/bin/env python3
"""Seeded-random FemtoDet checkpoint (mmdet names) and its expected outputs, for Rust parity.

Writes `femtodet_seeded.safetensors` (training form: IBE theta/conv/bn/bn2, BN running
statistics, every tensor random) and `femtodet_seeded.expected.safetensors` (letterboxed
input, every stage, the neck, the head maps, the final boxes, the folded IBE convs and
two self-contained letterbox cases). The metadata contract is in the README beside them.

    python python/make_femtodet_fixture.py --image <astronaut.png> \
        --out models/tests/fixtures/femtodet --seed 15

Bit-exact for a given seed, torch build and image (CPU, one thread).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import femtodet as fd

CLASS_NAMES = ["circle", "rectangle", "triangle", "ellipse", "star"]
KEEP_CANDIDATES = 40  # cells above the score threshold before NMS


def checkpoint_metadata(num_classes: int, class_names: list[str]) -> dict[str, str]:
    return {
        "family": "femtodet",
        "arch": "femtodet",
        "format": "mmdet",
        "num_classes": str(num_classes),
        "class_names": json.dumps(class_names),
        "input_size": str(fd.INPUT_SIZE),
        "widen_factor": "0.25",
        "neck_channels": str(fd.NECK_CHANNELS),
        "strides": "16",
        "mean": json.dumps(list(fd.MEAN)),
        "std": json.dumps(list(fd.STD)),
        "pad_value": str(fd.PAD_VALUE),
        "score_thr": str(fd.SCORE_THR),
        "nms_iou": str(fd.NMS_IOU),
    }


@torch.no_grad()
def randomize(model: fd.FemtoDet, x: torch.Tensor, gen: torch.Generator) -> None:
    """Random weights, then BN statistics from one train-mode pass on `x`, then perturbed."""
    for name, p in model.named_parameters():
        if name.endswith("theta"):
            p.copy_(torch.randn(p.shape, generator=gen))
        elif p.dim() == 4:
            fan_in = p.shape[1] * p.shape[2] * p.shape[3]
            p.copy_(torch.randn(p.shape, generator=gen) * math.sqrt(2.0 / fan_in))
        elif ".bn" in name and name.endswith("weight"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        else:  # BN shifts, head biases (set again below)
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    head = model.bbox_head
    head.multi_level_conv_cls[0].weight.mul_(0.5)
    head.multi_level_conv_reg[0].weight.mul_(0.05)
    head.multi_level_conv_reg[0].bias.copy_(torch.randn(4, generator=gen) * 0.1 + torch.tensor([0.0, 0.0, 2.0, 2.0]))
    # BN statistics: one batch in train mode with a cumulative average = that batch's
    # statistics, so activations stay well scaled through 13 blocks; then perturbed.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    model(x)
    model.eval()
    for m in bns:
        m.momentum = 0.1
        std = m.running_var.sqrt()
        m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.1 * std)
        m.running_var.mul_(torch.exp(torch.randn(m.running_var.shape, generator=gen) * 0.2))
        m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))


def obj_bias_for(cls, reg, obj_wo_bias, keep: int) -> float:
    """The objectness bias that lets exactly `keep` cells pass the score threshold, with the
    threshold midway (in logit space) between the keep-th and (keep+1)-th cell."""
    max_cls = cls.sigmoid().amax(dim=0).reshape(-1).double()
    o = obj_wo_bias.reshape(-1).double()
    need = torch.logit(fd.SCORE_THR / max_cls) - o  # bias at which each cell reaches thr
    s = torch.sort(need).values
    return float((s[keep - 1] + s[keep]) / 2)


def nms_margin(boxes, labels) -> float:
    """Smallest |IoU - 0.65| over same-class pairs (how far NMS is from flipping)."""
    iou = fd.box_iou(boxes, boxes)
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(boxes), dtype=torch.bool)
    m = (iou - fd.NMS_IOU).abs()[same & off]
    return float(m.min()) if m.numel() else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="astronaut.png (scikit-image's astronaut, 512x512 RGB)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    img = np.asarray(Image.open(args.image).convert("RGB"))
    chw, lb = fd.letterbox_u8(img)
    x = fd.normalize(chw).unsqueeze(0)

    model = fd.FemtoDet(len(CLASS_NAMES)).eval()
    randomize(model, x, gen)
    with torch.no_grad():
        maps = model.stages(x)
        obj_b = model.bbox_head.multi_level_conv_obj[0].bias
        bias = obj_bias_for(maps["head.cls"][0], maps["head.reg"][0], maps["head.obj"][0] - obj_b, KEEP_CANDIDATES)
        obj_b.fill_(bias)
        maps = model.stages(x)
        cls, reg, obj = maps["head.cls"][0], maps["head.reg"][0], maps["head.obj"][0]
        boxes_in, scores, labels = fd.postprocess(cls, reg, obj, None)
        boxes, scores2, labels2 = fd.postprocess(cls, reg, obj, lb)
        assert torch.equal(scores, scores2) and torch.equal(labels, labels2)

        # every candidate above the threshold, for the NMS margin
        cand = fd.decode(reg)
        cp = cls.permute(1, 2, 0).reshape(-1, cls.shape[0]).sigmoid()
        mc, lab = cp.max(dim=1)
        sc = mc * obj.reshape(-1).sigmoid()
        valid = sc >= fd.SCORE_THR
        margin = nms_margin(cand[valid], lab[valid])
        score_gap = float((sc[valid].min() - fd.SCORE_THR) / fd.SCORE_THR)
        below = sc[~valid]
        gap_below = float((fd.SCORE_THR - below.max()) / fd.SCORE_THR)

        # IBE folds: the folded conv reproduces the training form
        folds = {}
        fold_err = 0.0
        for name, m in model.named_modules():
            if isinstance(m, fd.IBEConv):
                w, b = fd.fold_ibe(m)
                folds[f"fold.{name}.weight"] = w.contiguous()
                folds[f"fold.{name}.bias"] = b.contiguous()
                t = torch.randn((1, m.conv.in_channels, 9, 11), generator=gen)
                ref = m(t)
                got = torch.relu(torch.nn.functional.conv2d(t, w, b, m.conv.stride, 1, groups=m.conv.groups))
                fold_err = max(fold_err, float(((ref - got).abs().max() / ref.abs().max())))

    # self-contained letterbox cases (no image file needed): a downscale and an upscale
    # whose width rounds at .5
    lb_cases = {}
    for tag, (h, w) in (("down", (90, 150)), ("up", (64, 20))):
        src = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        canvas, l2 = fd.letterbox_u8(src)
        lb_cases[f"letterbox.{tag}.src_u8"] = torch.from_numpy(src.copy())
        lb_cases[f"letterbox.{tag}.resized_u8"] = torch.from_numpy(canvas[:, : l2.new_h, : l2.new_w].copy())
        assert (canvas[:, l2.new_h :, :] == fd.PAD_VALUE).all() and (canvas[:, :, l2.new_w :] == fd.PAD_VALUE).all()

    ckpt = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = checkpoint_metadata(len(CLASS_NAMES), CLASS_NAMES)
    fd.save_safetensors(ckpt, out / "femtodet_seeded.safetensors", meta)

    expected = {
        "input_u8": torch.from_numpy(chw.copy()).unsqueeze(0),
        "image_size": torch.tensor([lb.orig_h, lb.orig_w], dtype=torch.int64),
        "resized_size": torch.tensor([lb.new_h, lb.new_w], dtype=torch.int64),
        "scale": torch.tensor([lb.w_scale, lb.h_scale], dtype=torch.float32),
        "stem.sub4": maps["stem"][:, :, ::4, ::4].contiguous(),
        "stage1.sub4": maps["stage1"][:, :, ::4, ::4].contiguous(),
    }
    for i in range(2, 8):
        expected[f"stage{i}"] = maps[f"stage{i}"].contiguous()
    for k in ("neck", "head.cls", "head.reg", "head.obj"):
        expected[k] = maps[k].contiguous()
    expected.update(
        {
            "boxes": boxes.contiguous(),
            "boxes_input": boxes_in.contiguous(),
            "scores": scores.contiguous(),
            "labels": labels.contiguous(),
        }
    )
    expected.update(folds)
    expected.update(lb_cases)
    exp_meta = {
        "seed": str(args.seed),
        "image": "astronaut.png (scikit-image data.astronaut(), 512x512)",
        "candidates_above_thr": str(int(valid.sum())),
        "nms_iou_margin": f"{margin:.6f}",
        "score_margin_above": f"{score_gap:.6f}",
        "score_margin_below": f"{gap_below:.6f}",
        "ibe_fold_max_rel_err": f"{fold_err:.3e}",
    }
    fd.save_safetensors(expected, out / "femtodet_seeded.expected.safetensors", exp_meta)
    print(json.dumps(exp_meta, indent=1))
    print("N boxes", len(boxes), "labels", labels.tolist())
    print("scores", [round(float(s), 5) for s in scores])
    print("boxes", boxes.tolist())
    for k in ["stem", "stage1", "stage3", "stage5", "stage7", "neck", "head.cls", "head.reg", "head.obj"]:
        t = maps[k]
        print(k, tuple(t.shape), f"mean|x| {float(t.abs().mean()):.4f} max {float(t.abs().max()):.3f} zero-frac {float((t == 0).float().mean()):.2f}")
    for f in ("femtodet_seeded.safetensors", "femtodet_seeded.expected.safetensors"):
        print(f, (out / f).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
