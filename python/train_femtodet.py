#!/usr/bin/env python3
"""Train the demo FemtoDet (416x416, 5 classes) and a BottleFit conv bottleneck; export.

The FemtoDet recipe (yh-pengtu/FemtoDet, configs/femtoDet/femtodet_{0..3}stage.py) as far
as a shared 2-core CPU allows, on the dataset of python/make_det_dataset.py:

  loss      YOLOX: SimOTA assignment (centre radius 2.5, cost cls + 3 IoU, dynamic k from
            the top-10 IoUs), BCE classification against one-hot x IoU on positives, BCE
            objectness on every cell, IoU loss in "square" mode (1 - IoU^2) x 5, L1 on the
            raw offsets in the last phase only; every term divided by the positives.
  schedule  the four RecWR stages (4 x 300 epochs) shrink to two phases over `--iters`
            iterations: phase A (first `--phase-a` of them) with Mosaic (p 0.5), flip,
            brightness/saturation jitter and a multi-scale input drawn from 256..320
            every 10 iterations (upstream: 320..640); phase B at 416 with flip, resize
            and pad only (upstream's stage 3), L1 on in its last `--l1-iters`.
            No MixUp and no random affine; no pretrained backbone (upstream starts
            from an ImageNet FemtoNet) and so no 50-epoch backbone freeze.
  optimiser AdamW (lr `--lr`, weight decay 5e-4 on conv weights only), one-phase warmup
            then cosine to 0.05x, EMA of the weights (what is exported), batch 16. Upstream
            uses SGD-Nesterov at 0.01 for 300 epochs; AdamW converges in the few hundred
            steps a CPU affords.

Then BottleFit (as python/train_bottlefit.py does for the ViT) at split `stage3` (the
stride-8 tap; everything after it depends on it alone, so one tensor crosses):

  stage 1  the trained detector is frozen; a conv encoder (device) and decoder (edge)
           learn to reproduce its stage3 map (MSE) through the codec's quantizer.
  stage 2  head and encoder frozen; decoder and tail (layer4.., neck, head) fine-tuned
           on the detection loss through the quantizer (8/4/2 bits drawn per batch).

Exports (mmdet names + metadata, see models/tests/fixtures/femtodet/README.md):
  femtodet.safetensors             the detector
  femtodet_bottlefit.safetensors   the split model: the detector's weights with the
                                   fine-tuned tail, plus `bottleneck.encoder.{0,2}` and
                                   `bottleneck.decoder.{0,2,4}`; metadata `bottleneck=conv`,
                                   `split=3` (the point's depth: stem 0, stageK K, neck 8),
                                   `split_name=stage3`
  femtodet.onnx                    the detector in deploy form (IBE and BN folded),
                                   input `input` [B,3,416,416], outputs `head.cls`,
                                   `head.reg`, `head.obj`
  training.json                    arguments, times, losses, mAP on the held-out set

    python python/train_femtodet.py --data assets/femtodet --out assets/femtodet --seed 15
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import femtodet as fd
from make_det_dataset import CLASSES

# ----------------------------------------------------------------------------- data


def load_split(folder: Path):
    coco = json.loads((folder / "annotations.json").read_text())
    by_img: dict[int, list] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_img[a["image_id"]].append(a)
    items = []
    for im in coco["images"]:
        img = np.asarray(Image.open(folder / im["file_name"]).convert("RGB"))
        anns = by_img[im["id"]]
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([a["category_id"] for a in anns], dtype=np.int64)
        items.append((img, boxes, labels))
    return items


def resize_keep(img: np.ndarray, boxes: np.ndarray, long_side: int):
    h, w = img.shape[:2]
    r = long_side / max(h, w)
    nw, nh = max(1, int(w * r + 0.5)), max(1, int(h * r + 0.5))
    out = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    return out, boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)


def letterbox_train(item, size):
    img, boxes, labels = item
    img, boxes = resize_keep(img, boxes, size)
    canvas = np.full((size, size, 3), fd.PAD_VALUE, dtype=np.uint8)
    canvas[: img.shape[0], : img.shape[1]] = img
    return canvas, boxes, labels


def mosaic(items, size, rng):
    canvas = np.full((size, size, 3), fd.PAD_VALUE, dtype=np.uint8)
    xc, yc = int(rng.uniform(0.3, 0.7) * size), int(rng.uniform(0.3, 0.7) * size)
    all_b, all_l = [], []
    for q, item in enumerate(items):
        img, boxes, labels = item
        img, boxes = resize_keep(img, boxes, int(size * rng.uniform(0.45, 0.8)))
        h, w = img.shape[:2]
        x0 = xc - w if q in (0, 2) else xc
        y0 = yc - h if q in (0, 1) else yc
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, size), min(y0 + h, size)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        canvas[cy0:cy1, cx0:cx1] = img[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        b = boxes + np.array([x0, y0, x0, y0], dtype=np.float32)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        c = b.copy()
        c[:, [0, 2]] = c[:, [0, 2]].clip(cx0, cx1)
        c[:, [1, 3]] = c[:, [1, 3]].clip(cy0, cy1)
        carea = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
        keep = (carea >= 0.4 * area) & (c[:, 2] - c[:, 0] >= 4) & (c[:, 3] - c[:, 1] >= 4)
        all_b.append(c[keep])
        all_l.append(labels[keep])
    return canvas, np.concatenate(all_b).reshape(-1, 4), np.concatenate(all_l)


def photometric(img, rng):
    x = img.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    x = gray + (x - gray) * rng.uniform(0.4, 1.6)
    x = x * rng.uniform(0.65, 1.35)
    return np.clip(x, 0, 255).astype(np.uint8)


def make_batch(items, idx, size, phase, rng):
    imgs, targets = [], []
    for i in idx:
        if phase == "A" and rng.random() < 0.5:
            picks = [items[i]] + [items[int(j)] for j in rng.integers(0, len(items), 3)]
            img, b, l = mosaic(picks, size, rng)
        else:
            img, b, l = letterbox_train(items[i], size)
        if rng.random() < 0.5:
            img = np.ascontiguousarray(img[:, ::-1])
            b = b.copy()
            b[:, [0, 2]] = size - b[:, [2, 0]]
        if phase == "A":
            img = photometric(img, rng)
        imgs.append(img)
        targets.append((torch.from_numpy(b.astype(np.float32)), torch.from_numpy(l.astype(np.int64))))
    x = fd.normalize(np.stack(imgs).transpose(0, 3, 1, 2))
    return x.contiguous(memory_format=torch.channels_last), targets


# ----------------------------------------------------------------------------- loss


def priors_for(h, w):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.reshape(-1) * fd.STRIDE, ys.reshape(-1) * fd.STRIDE], dim=1)


def aligned_iou(a, b, eps=1e-16):
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / union.clamp(min=eps)


@torch.no_grad()
def simota(scores, boxes, priors, gt_boxes, gt_labels, num_classes, radius=2.5):
    """mmdet's SimOTAAssigner for one image. scores [P,C] (sigmoid cls * sigmoid obj), boxes
    [P,4] decoded, priors [P,2] (cell corners; centres are +stride/2). Returns (pos index
    [K], matched gt [K], IoU of the match [K])."""
    empty = torch.zeros(0, dtype=torch.int64)
    if len(gt_boxes) == 0:
        return empty, empty, torch.zeros(0)
    s = float(fd.STRIDE)
    cx = priors[:, 0] + s / 2
    cy = priors[:, 1] + s / 2
    in_gt = (cx[:, None] > gt_boxes[None, :, 0]) & (cx[:, None] < gt_boxes[None, :, 2]) & (cy[:, None] > gt_boxes[None, :, 1]) & (cy[:, None] < gt_boxes[None, :, 3])
    gcx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    gcy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    r = radius * s
    in_ct = ((cx[:, None] - gcx[None]).abs() < r) & ((cy[:, None] - gcy[None]).abs() < r)
    valid = in_gt.any(1) | in_ct.any(1)
    vidx = valid.nonzero().squeeze(1)
    if len(vidx) == 0:
        return empty, empty, torch.zeros(0)
    both = in_gt[vidx] & in_ct[vidx]
    ious = fd.box_iou(boxes[vidx], gt_boxes)
    iou_cost = -torch.log(ious + 1e-7)
    onehot = F.one_hot(gt_labels, num_classes).float()
    p = scores[vidx].sqrt()[:, None, :].expand(-1, len(gt_boxes), -1)
    cls_cost = F.binary_cross_entropy(p, onehot[None].expand(len(vidx), -1, -1), reduction="none").sum(-1)
    cost = cls_cost + 3.0 * iou_cost + (~both).float() * 1e8
    match = torch.zeros_like(cost)
    k = min(10, len(vidx))
    dyn = ious.topk(k, dim=0).values.sum(0).int().clamp(min=1)
    for g in range(len(gt_boxes)):
        idx = cost[:, g].topk(int(dyn[g]), largest=False).indices
        match[idx, g] = 1.0
    multi = match.sum(1) > 1
    if multi.any():
        best = cost[multi].argmin(1)
        match[multi] = 0.0
        match[multi, best] = 1.0
    fg = match.sum(1) > 0
    gt_idx = match[fg].argmax(1)
    return vidx[fg], gt_idx, (match * ious).sum(1)[fg]


def yolox_loss(cls, reg, obj, targets, use_l1: bool):
    """cls [B,C,H,W], reg [B,4,H,W], obj [B,1,H,W]; targets [(boxes [n,4], labels [n])]."""
    b, c, h, w = cls.shape
    priors = priors_for(h, w)
    cls_f = cls.permute(0, 2, 3, 1).reshape(b, -1, c)
    reg_f = reg.permute(0, 2, 3, 1).reshape(b, -1, 4)
    obj_f = obj.permute(0, 2, 3, 1).reshape(b, -1)
    s = float(fd.STRIDE)
    xy = reg_f[..., :2] * s + priors
    wh = reg_f[..., 2:].exp() * s
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
    obj_t = torch.zeros_like(obj_f)
    pos_cls, pos_cls_t, pos_box, pos_box_t, pos_reg, pos_l1_t = [], [], [], [], [], []
    n_pos = 0
    for i, (gb, gl) in enumerate(targets):
        scores = cls_f[i].detach().sigmoid() * obj_f[i].detach().sigmoid()[:, None]
        pidx, gidx, miou = simota(scores, boxes[i].detach(), priors, gb, gl, c)
        if len(pidx) == 0:
            continue
        n_pos += len(pidx)
        obj_t[i, pidx] = 1.0
        pos_cls.append(cls_f[i, pidx])
        pos_cls_t.append(F.one_hot(gl[gidx], c).float() * miou[:, None])
        pos_box.append(boxes[i, pidx])
        g = gb[gidx]
        pos_box_t.append(g)
        if use_l1:
            gc = (g[:, :2] + g[:, 2:]) / 2
            gw = g[:, 2:] - g[:, :2]
            pos_reg.append(reg_f[i, pidx])
            pos_l1_t.append(torch.cat([(gc - priors[pidx]) / s, torch.log(gw / s + 1e-8)], dim=1))
    norm = max(n_pos, 1)
    loss_obj = F.binary_cross_entropy_with_logits(obj_f, obj_t, reduction="sum") / norm
    out = {"obj": loss_obj}
    if n_pos:
        out["cls"] = F.binary_cross_entropy_with_logits(torch.cat(pos_cls), torch.cat(pos_cls_t), reduction="sum") / norm
        iou = aligned_iou(torch.cat(pos_box), torch.cat(pos_box_t))
        out["bbox"] = 5.0 * (1 - iou.pow(2)).sum() / norm
        if use_l1:
            out["l1"] = (torch.cat(pos_reg) - torch.cat(pos_l1_t)).abs().sum() / norm
    return out


# ----------------------------------------------------------------------------- eval


def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC all-point interpolated AP (the area under the precision envelope)."""
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def voc_map(dets, gts, num_classes: int, iou_thr: float) -> float:
    """mAP with VOC all-point AP per class, averaged over classes that have ground truth.

    dets: per image (boxes [N,4], scores [N], labels [N]); gts: per image (boxes, labels).
    Per class the detections of all images are sorted by score (descending, stable), each
    matched to the unmatched ground truth of its image with the highest IoU (first on
    ties) if that IoU >= iou_thr (true positive), else a false positive. IoU in f64.
    """
    aps = []
    for c in range(num_classes):
        n_gt = sum(int((gl == c).sum()) for _, gl in gts)
        if n_gt == 0:
            continue
        scores, img_of, row_of, ious = [], [], [], {}
        for i, (db, ds, dl) in enumerate(dets):
            m = dl == c
            gb = gts[i][0][gts[i][1] == c]
            if m.any() and len(gb):
                ious[i] = _iou_np(db[m].astype(np.float64), gb.astype(np.float64))
            scores.extend(ds[m].tolist())
            img_of.extend([i] * int(m.sum()))
            row_of.extend(range(int(m.sum())))
        order = sorted(range(len(scores)), key=lambda k: -scores[k])
        used = {i: np.zeros(int((gl == c).sum()), dtype=bool) for i, (_, gl) in enumerate(gts)}
        tp = np.zeros(len(order))
        for r, k in enumerate(order):
            i = img_of[k]
            if i not in ious:
                continue
            row = np.where(used[i], -1.0, ious[i][row_of[k]])
            j = int(np.argmax(row))
            if row[j] >= iou_thr:
                used[i][j] = True
                tp[r] = 1
        ctp = np.cumsum(tp)
        cfp = np.cumsum(1 - tp)
        rec = ctp / n_gt
        prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
        aps.append(voc_ap(rec, prec))
    return float(np.mean(aps)) if aps else 0.0


@torch.no_grad()
def evaluate(run, test_items, num_classes, coco=True):
    """`run(x) -> (cls, reg, obj)` on [1,3,416,416]; mAP on the held-out set."""
    dets, gts = [], []
    for img, gb, gl in test_items:
        x, lb = fd.preprocess(img)
        cls, reg, obj = run(x)
        b, s, l = fd.postprocess(cls[0], reg[0], obj[0], lb)
        dets.append((b.numpy(), s.numpy(), l.numpy()))
        gts.append((gb, gl))
    out = {
        "map50_voc": voc_map(dets, gts, num_classes, 0.5),
        "map50_95_voc": float(np.mean([voc_map(dets, gts, num_classes, t) for t in np.arange(0.5, 0.951, 0.05)])),
        "detections": int(sum(len(d[1]) for d in dets)),
    }
    if coco:
        try:
            from torchmetrics.detection import MeanAveragePrecision

            m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", max_detection_thresholds=[1, 10, 1000])
            m.update(
                [{"boxes": torch.from_numpy(b), "scores": torch.from_numpy(s), "labels": torch.from_numpy(l)} for b, s, l in dets],
                [{"boxes": torch.from_numpy(b), "labels": torch.from_numpy(l)} for b, l in gts],
            )
            r = m.compute()
            out["coco_map50"] = float(r["map_50"])
            out["coco_map50_95"] = float(r["map"])
        except Exception as e:  # pycocotools missing: the VOC figures stand alone
            out["coco_error"] = repr(e)
    return out


# ----------------------------------------------------------------------------- bottleneck


def fake_quantize(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-channel affine quantization with min/max over each frame's H x W (the codec's
    per-channel scheme on an NCHW map); straight-through gradient."""
    if bits >= 32:
        return z
    levels = (1 << bits) - 1
    lo = z.amin(dim=(2, 3), keepdim=True).detach()
    hi = z.amax(dim=(2, 3), keepdim=True).detach()
    scale = torch.clamp((hi - lo) / levels, min=1e-8)
    q = torch.clamp(torch.round((z - lo) / scale), 0, levels) * scale + lo
    return z + (q - z).detach()


class ConvBottleneck(nn.Module):
    """The layout models/src/bottleneck/conv.rs loads: encoder = Conv(s2), GELU, Conv(s2);
    decoder = ConvT(2, s2), GELU, ConvT(2, s2), GELU, Conv(3, same)."""

    def __init__(self, channels: int, hidden: int, code: int):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 2, 1), nn.GELU(), nn.Conv2d(hidden, code, 3, 2, 1)
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(code, hidden, 2, 2), nn.GELU(), nn.ConvTranspose2d(hidden, hidden, 2, 2), nn.GELU(), nn.Conv2d(hidden, channels, 3, 1, 1)
        )

    def forward(self, x, bits=32):
        return self.decoder(fake_quantize(self.encoder(x), bits))


def head_to_stage3(model: fd.FemtoDet, x):
    bb = model.backbone
    x = bb.conv1(x)
    for name in bb.layer_names[:3]:
        x = getattr(bb, name)(x)
    return x


def tail_from_stage3(model: fd.FemtoDet, s3):
    bb = model.backbone
    s4 = bb.layer4(s3)
    s5 = bb.layer5(s4)
    s6 = bb.layer6(s5)
    s7 = bb.layer7(s6)
    return model.bbox_head(model.neck([s3, s5, s7]))


# ----------------------------------------------------------------------------- export


class Deploy(nn.Module):
    """The detector with every IBE and BN folded into conv + bias (for ONNX)."""

    def __init__(self, model: fd.FemtoDet):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for mod in list(self.model.modules()):
            for name, child in list(mod.named_children()):
                if isinstance(child, fd.IBEConv):
                    w, b = fd.fold_ibe(child)
                    conv = nn.Conv2d(w.shape[0], w.shape[0], 3, child.conv.stride, 1, groups=w.shape[0])
                    conv.weight.data.copy_(w)
                    conv.bias.data.copy_(b)
                    setattr(mod, name, nn.Sequential(conv, nn.ReLU()))
                elif isinstance(child, fd.ConvBN):
                    w, b = fd.fold_conv_bn(child)
                    c0 = child.conv
                    conv = nn.Conv2d(c0.in_channels, c0.out_channels, c0.kernel_size, c0.stride, c0.padding, groups=c0.groups)
                    conv.weight.data.copy_(w)
                    conv.bias.data.copy_(b)
                    setattr(mod, name, nn.Sequential(conv, nn.ReLU()) if child.act else conv)

    def forward(self, x):
        return self.model(x)


def metadata(args, extra: dict | None = None) -> dict[str, str]:
    m = {
        "family": "femtodet",
        "arch": "femtodet",
        "format": "mmdet",
        "num_classes": str(len(CLASSES)),
        "class_names": json.dumps(CLASSES),
        "input_size": str(fd.INPUT_SIZE),
        "widen_factor": "0.25",
        "neck_channels": str(fd.NECK_CHANNELS),
        "strides": "16",
        "mean": json.dumps(list(fd.MEAN)),
        "std": json.dumps(list(fd.STD)),
        "pad_value": str(fd.PAD_VALUE),
        "score_thr": str(fd.SCORE_THR),
        "nms_iou": str(fd.NMS_IOU),
        "seed": str(args.seed),
        "trained_on": "python/make_det_dataset.py (train split, seed 15)",
    }
    m.update({k: str(v) for k, v in (extra or {}).items()})
    return m


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("assets/femtodet"))
    ap.add_argument("--out", type=Path, default=Path("assets/femtodet"))
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--iters", type=int, default=170)
    ap.add_argument("--phase-a", type=int, default=140)
    ap.add_argument("--l1-iters", type=int, default=15)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf-hidden", type=int, default=24)
    ap.add_argument("--bf-code", type=int, default=12)
    ap.add_argument("--bf-stage1", type=int, default=40, help="BottleFit stage-1 iterations")
    ap.add_argument("--bf-stage2", type=int, default=50, help="BottleFit stage-2 iterations")
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N training images (0: all)")
    ap.add_argument("--max-test", type=int, default=0, help="evaluate on the first N test images only (smoke runs)")
    ap.add_argument("--bf-bits", default="32,8,4,2", help="code widths at which the split model is evaluated")
    ap.add_argument("--skip-raw", action="store_true", help="skip the plain (no bottleneck) stage3 split evaluations")
    ap.add_argument("--init", type=Path, help="warm-start from a femtodet.safetensors (as RecWR's stages warm-start from the previous one)")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    train_items = load_split(args.data / "train")
    if args.max_train:
        train_items = train_items[: args.max_train]
    test_items = load_split(args.data / "test")
    if args.max_test:
        test_items = test_items[: args.max_test]
    print(f"train {len(train_items)} images, test {len(test_items)} images ({time.time() - t_start:.0f}s)", flush=True)

    model = fd.FemtoDet(len(CLASSES)).to(memory_format=torch.channels_last)
    for m in model.modules():  # mmdet's ConvModule init: Kaiming normal convs, BN (1, 0)
        if isinstance(m, nn.Conv2d) and m not in list(model.bbox_head.modules()):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if args.init:
        from safetensors.torch import load_file

        fd.load_mmdet_state(model, load_file(str(args.init)))
        print(f"warm start from {args.init}", flush=True)
    ema = copy.deepcopy(model).eval()
    decay_params = [p for n, p in model.named_parameters() if p.dim() == 4]
    other = [p for n, p in model.named_parameters() if p.dim() != 4]
    opt = torch.optim.AdamW([{"params": decay_params, "weight_decay": 5e-4}, {"params": other, "weight_decay": 0.0}], lr=args.lr)

    def lr_at(it):
        if it < args.warmup:
            return args.lr * ((it + 1) / args.warmup) ** 2
        t = (it - args.warmup) / max(1, args.iters - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    sizes = [256, 288, 320]
    order = rng.permutation(len(train_items))
    pos = 0
    log = []
    t0 = time.time()
    size = 416
    for it in range(args.iters):
        phase = "A" if it < args.phase_a else "B"
        if phase == "A" and it % 10 == 0:
            size = int(rng.choice(sizes))
        elif phase == "B":
            size = 416
        if pos + args.batch > len(order):
            order = rng.permutation(len(train_items))
            pos = 0
        idx = order[pos : pos + args.batch]
        pos += args.batch
        x, targets = make_batch(train_items, idx, size, phase, rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        model.train()
        cls, reg, obj = model(x)
        losses = yolox_loss(cls, reg, obj, targets, use_l1=it >= args.iters - args.l1_iters)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        with torch.no_grad():
            d = 0.998 * (1 - math.exp(-(it + 1) / 50))
            for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                if pe.dtype.is_floating_point:
                    pe.mul_(d).add_(pm.detach(), alpha=1 - d)
                else:
                    pe.copy_(pm)
        log.append({k: round(float(v.detach()), 4) for k, v in losses.items()})
        if it % 10 == 0 or it == args.iters - 1:
            el = time.time() - t0
            print(f"it {it} phase {phase} size {size} lr {lr_at(it):.5f} loss {float(loss):.3f} {log[-1]} ({el:.0f}s, {el / (it + 1):.1f}s/it)", flush=True)
    train_s = time.time() - t0
    ema = ema.to(memory_format=torch.contiguous_format).eval()

    t_eval = time.time()
    res_local = evaluate(lambda x: ema(x), test_items, len(CLASSES))
    print("local", res_local, f"({time.time() - t_eval:.0f}s)", flush=True)

    # raw stage3 through the quantizer, without a bottleneck (what a plain split sends)
    raw = {}
    for bits in () if args.skip_raw else (8, 4, 2):
        raw[f"stage3_{bits}bit"] = evaluate(lambda x: tail_from_stage3(ema, fake_quantize(head_to_stage3(ema, x), bits)), test_items, len(CLASSES), coco=False)
    print("raw stage3", raw, flush=True)

    # ------------------------------------------------------------- BottleFit at stage3
    t_bf = time.time()
    student = copy.deepcopy(ema).to(memory_format=torch.channels_last)
    c3 = student.backbone.stage_channels()[2]
    bottleneck = ConvBottleneck(c3, args.bf_hidden, args.bf_code)
    for p in student.parameters():
        p.requires_grad_(False)
    opt1 = torch.optim.AdamW(bottleneck.parameters(), lr=2e-3, weight_decay=0.0)
    for it in range(args.bf_stage1):
        idx = rng.integers(0, len(train_items), args.batch)
        x, _ = make_batch(train_items, idx, 416, "B", rng)
        with torch.no_grad():
            f = head_to_stage3(student.eval(), x)
        bits = int(rng.choice([32, 8, 4, 2]))
        loss = F.mse_loss(bottleneck(f, bits), f)
        opt1.zero_grad()
        loss.backward()
        opt1.step()
        if it % 10 == 0:
            print(f"bottlefit stage1 it {it} mse {float(loss):.4f} ({time.time() - t_bf:.0f}s)", flush=True)
    # stage 2: decoder + tail on the detection loss
    tail_params = list(bottleneck.decoder.parameters())
    for name in ("layer4", "layer5", "layer6", "layer7"):
        tail_params += list(getattr(student.backbone, name).parameters())
    tail_params += list(student.neck.parameters()) + list(student.bbox_head.parameters())
    for p in tail_params:
        p.requires_grad_(True)
    opt2 = torch.optim.AdamW(tail_params, lr=5e-4, weight_decay=0.0)
    for it in range(args.bf_stage2):
        idx = rng.integers(0, len(train_items), args.batch)
        x, targets = make_batch(train_items, idx, 416, "B", rng)
        with torch.no_grad():
            f = head_to_stage3(student.eval(), x)
            code = bottleneck.encoder(f)
        bits = int(rng.choice([8, 4, 2]))
        student.train()
        for name in ("conv1", "layer1", "layer2", "layer3"):
            getattr(student.backbone, name).eval()
        cls, reg, obj = tail_from_stage3(student, bottleneck.decoder(fake_quantize(code, bits)))
        losses = yolox_loss(cls, reg, obj, targets, use_l1=False)
        loss = sum(losses.values())
        opt2.zero_grad()
        loss.backward()
        opt2.step()
        if it % 10 == 0:
            print(f"bottlefit stage2 it {it} bits {bits} loss {float(loss):.3f} ({time.time() - t_bf:.0f}s)", flush=True)
    student = student.to(memory_format=torch.contiguous_format).eval()
    bottleneck.eval()
    bf_s = time.time() - t_bf
    res_bf = {}
    for bits in [int(b) for b in args.bf_bits.split(",")]:
        res_bf[f"bottlefit_{bits}bit"] = evaluate(lambda x: tail_from_stage3(student, bottleneck(head_to_stage3(student, x), bits)), test_items, len(CLASSES), coco=(bits in (32, 8)))
    print("bottlefit", res_bf, flush=True)

    # ------------------------------------------------------------- export
    args.out.mkdir(parents=True, exist_ok=True)
    fd.save_safetensors(dict(ema.state_dict()), args.out / "femtodet.safetensors", metadata(args))
    state = dict(student.state_dict())
    state.update({f"bottleneck.{k}": v for k, v in bottleneck.state_dict().items()})
    code_hw = fd.INPUT_SIZE // 8 // 4
    fd.save_safetensors(
        state,
        args.out / "femtodet_bottlefit.safetensors",
        metadata(args, {"bottleneck": "conv", "split": "3", "split_name": "stage3", "code_channels": args.bf_code, "code_shape": json.dumps([args.bf_code, code_hw, code_hw])}),
    )
    deploy = Deploy(ema).eval()
    x = torch.randn(2, 3, fd.INPUT_SIZE, fd.INPUT_SIZE)
    with torch.no_grad():
        ref = ema(x)
        got = deploy(x)
    fold_err = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref, got))
    onnx_path = args.out / "femtodet.onnx"
    torch.onnx.export(
        deploy, x, str(onnx_path), input_names=["input"], output_names=["head.cls", "head.reg", "head.obj"],
        dynamic_axes={"input": {0: "batch"}, "head.cls": {0: "batch"}, "head.reg": {0: "batch"}, "head.obj": {0: "batch"}},
        opset_version=17, dynamo=False,
    )
    onnx_err = None
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        outs = sess.run(None, {"input": x.numpy()})
        onnx_err = max(float(np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max()) for o, r in zip(outs, ref))
    except Exception as e:
        onnx_err = repr(e)
    sizes_b = {p.name: p.stat().st_size for p in (args.out / "femtodet.safetensors", args.out / "femtodet_bottlefit.safetensors", onnx_path)}
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "train_images": len(train_items),
        "test_images": len(test_items),
        "test_objects": int(sum(len(t[2]) for t in test_items)),
        "parameters": fd.count_parameters(ema),
        "bottleneck_parameters": fd.count_parameters(bottleneck),
        "train_seconds": round(train_s, 1),
        "bottlefit_seconds": round(bf_s, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "threads": args.threads,
        "local": res_local,
        "split_stage3_no_bottleneck": raw,
        "split_stage3_bottlefit": res_bf,
        "deploy_fold_max_rel_err": fold_err,
        "onnx_max_rel_err": onnx_err,
        "file_bytes": sizes_b,
        "loss_first": log[0],
        "loss_last": log[-1],
        "map_definition": "map50_voc: VOC all-point AP at IoU 0.5 averaged over classes with ground truth; map50_95_voc: its mean over IoU 0.50:0.05:0.95; coco_*: torchmetrics/pycocotools (101-point), for reference",
    }
    (args.out / "training.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)


if __name__ == "__main__":
    main()
