#!/usr/bin/env python3
"""FemtoDet in plain PyTorch (no mmcv, no mmdet), with mmdet's state-dict names.

FemtoDet (Tu et al., ICCV 2023; repository yh-pengtu/FemtoDet on mmdet 2.23) is a
68.77k-parameter single-scale detector. Everything here was written from its configs
(`configs/femtoDet/femtodet_*stage.py`) and module code (backbone `FemtoNet`, the
`IBEConvModule`, neck `SharedNeck`, head `SharedDetHead`), read to understand; the code
is our own. A checkpoint saved by mmdet (`model.state_dict()` of the detector) loads
into `FemtoDet` with `load_state_dict(strict=True)` once its `ema_*` copies are dropped.

Layout and names (widen factor 0.25; `make_divisible(c * 0.25, 8)` channels):

  backbone.conv1.{conv,bn}             3x3 s2 conv (no bias) + BN + ReLU, 3 -> 8
  backbone.layer{1..7}.{m}.conv.{k}    MobileNetV2 inverted residuals, rows (t,c,n,s,g)
                                       (1,16,1,1,1) (4,24,2,2,1) (4,32,2,2,1) (4,64,3,2,1)
                                       (4,96,2,1,1) (4,160,2,2,2) (4,320,1,1,2)
      k = 0  1x1 expand conv + BN + ReLU                  (absent when t = 1)
      next   IBE depthwise 3x3: `theta` [1], `conv.weight` (no bias), `bn`, `bn2`, ReLU
      last   1x1 projection (groups g) + BN, no activation
      residual when stride 1 and in == out (layer1.0 included)
  neck.lateral_convs.{0,1,2}.{conv,bn}            1x1 to 64 + BN + ReLU per tap
  neck.stacked_convs.depthwise_conv.{conv,bn}     3x3 depthwise + BN + ReLU
  neck.stacked_convs.pointwise_conv.{conv,bn}     1x1 + BN + ReLU
  bbox_head.multi_level_conv_{cls,reg,obj}.0      1x1 convs with bias (C, 4, 1)

Taps are the outputs of layer3, layer5, layer7 (stride 8, 16, 32); the neck resizes them
(legacy nearest) to the stride-16 grid and sums them. All BNs use eps 1e-5.

IBE (training form): `relu(BN1(W*x) + BN2(W*x - sigmoid(theta) * (sum_hw W)*x))`, where
`(sum_hw W)*x` is a 1x1 depthwise conv with the same stride and no padding; it samples
the centre tap of the 3x3 window, so it folds exactly into one 3x3 depthwise conv with
bias (`fold_ibe`).

Preprocessing (`letterbox`): keep the ratio so that the long side is 416
(`new = int(side * 416 / long + 0.5)`), bilinear resize (half-pixel centres, no
antialiasing, as OpenCV's INTER_LINEAR; see `resize_bilinear_u8` for the exact
arithmetic), pad bottom-right to 416x416 with 114, then `(x - mean) / std` in f32 with
mean (123.675, 116.28, 103.53) and std 58.82 for all channels, RGB order.

Post-processing (`postprocess`): priors at (16 j, 16 i); `cx = p0 * 16 + 16 j`,
`w = exp(p2) * 16`; score `max_c sigmoid(cls_c) * sigmoid(obj)` kept when >= 0.01;
class-aware greedy NMS that suppresses when IoU > 0.65; boxes divided by the resize's
(w_scale, h_scale) to map back to the original image, not clipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Rows of FemtoNet: (expand ratio t, channels c, blocks n, stride s, projection groups g).
ARCH_SETTINGS = [
    (1, 16, 1, 1, 1),
    (4, 24, 2, 2, 1),
    (4, 32, 2, 2, 1),
    (4, 64, 3, 2, 1),
    (4, 96, 2, 1, 1),
    (4, 160, 2, 2, 2),
    (4, 320, 1, 1, 2),
]
OUT_INDICES = (2, 4, 6)  # layer3, layer5, layer7
STRIDE = 16
INPUT_SIZE = 416
PAD_VALUE = 114
MEAN = (123.675, 116.28, 103.53)
STD = (58.82, 58.82, 58.82)
SCORE_THR = 0.01
NMS_IOU = 0.65
BN_EPS = 1e-5
NECK_CHANNELS = 64
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


def make_divisible(value: float, divisor: int, min_value: int | None = None, min_ratio: float = 0.9) -> int:
    """mmdet's channel rounding: nearest multiple of `divisor`, never below 90% of `value`."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


class ConvBN(nn.Module):
    """mmcv's ConvModule with a BN: `conv` (no bias), `bn`, then ReLU unless `act=False`."""

    def __init__(self, cin, cout, k, stride=1, padding=0, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


class IBEConv(nn.Module):
    """The IBE depthwise 3x3 conv in its training form (keys `theta`, `conv`, `bn`, `bn2`)."""

    def __init__(self, channels, stride):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(1))
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPS)

    def forward(self, x):
        out = self.conv(x)
        w_sum = self.conv.weight.sum(dim=(2, 3), keepdim=True)
        diff = F.conv2d(x, w_sum, stride=self.conv.stride, padding=0, groups=self.conv.groups)
        return F.relu(self.bn(out) + self.bn2(out - torch.sigmoid(self.theta) * diff))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_ibe(m: IBEConv) -> tuple[torch.Tensor, torch.Tensor]:
    """The IBE module (eval-mode BNs) as one depthwise 3x3 conv: `(weight [C,1,3,3], bias [C])`.

    `W_d = W - sigmoid(theta) * sum_hw(W)` placed on the centre tap; BN1 folds into W, BN2
    into W_d, and the two convs (same input, same geometry) add.
    """
    w = m.conv.weight
    w_diff = w.clone()
    w_diff[:, :, 1, 1] -= torch.sigmoid(m.theta) * w.sum(dim=(2, 3))[:, :]
    s1, b1 = _bn_scale_shift(m.bn)
    s2, b2 = _bn_scale_shift(m.bn2)
    weight = w * s1.view(-1, 1, 1, 1) + w_diff * s2.view(-1, 1, 1, 1)
    return weight, b1 + b2


def fold_conv_bn(m: ConvBN) -> tuple[torch.Tensor, torch.Tensor]:
    """A ConvBN (eval-mode BN) as one conv with bias."""
    s, b = _bn_scale_shift(m.bn)
    return m.conv.weight * s.view(-1, 1, 1, 1), b


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, groups):
        super().__init__()
        hidden = int(round(cin * expand))
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBN(cin, hidden, 1))
        layers.append(IBEConv(hidden, stride))
        layers.append(ConvBN(hidden, cout, 1, groups=groups, act=False))
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class FemtoNet(nn.Module):
    def __init__(self, widen_factor: float = 0.25):
        super().__init__()
        cin = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvBN(3, cin, 3, stride=2, padding=1)
        self.layer_names = []
        for i, (t, c, n, s, g) in enumerate(ARCH_SETTINGS):
            cout = make_divisible(c * widen_factor, 8)
            blocks = []
            for b in range(n):
                blocks.append(InvertedResidual(cin, cout, s if b == 0 else 1, t, g))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.layer_names.append(f"layer{i + 1}")

    def stage_channels(self) -> list[int]:
        return [getattr(self, n)[-1].conv[-1].conv.out_channels for n in self.layer_names]


class DepthwiseSeparable(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.depthwise_conv = ConvBN(c, c, 3, padding=1, groups=c)
        self.pointwise_conv = ConvBN(c, c, 1)

    def forward(self, x):
        return self.pointwise_conv(self.depthwise_conv(x))


class SharedNeck(nn.Module):
    def __init__(self, in_channels, out_channels=NECK_CHANNELS, fixed_size_idx=1):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvBN(c, out_channels, 1) for c in in_channels)
        self.stacked_convs = DepthwiseSeparable(out_channels)
        self.fixed_size_idx = fixed_size_idx

    def forward(self, taps):
        lat = [conv(x) for conv, x in zip(self.lateral_convs, taps)]
        size = lat[self.fixed_size_idx].shape[-2:]
        summed = sum(F.interpolate(x, size=size, mode="nearest") for x in lat)
        return self.stacked_convs(summed)


class SharedDetHead(nn.Module):
    def __init__(self, num_classes, channels=NECK_CHANNELS):
        super().__init__()
        self.multi_level_conv_cls = nn.ModuleList([nn.Conv2d(channels, num_classes, 1)])
        self.multi_level_conv_reg = nn.ModuleList([nn.Conv2d(channels, 4, 1)])
        self.multi_level_conv_obj = nn.ModuleList([nn.Conv2d(channels, 1, 1)])
        prior = -math.log((1 - 0.01) / 0.01)  # mmcv bias_init_with_prob(0.01)
        nn.init.constant_(self.multi_level_conv_cls[0].bias, prior)
        nn.init.constant_(self.multi_level_conv_obj[0].bias, prior)

    def forward(self, x):
        return self.multi_level_conv_cls[0](x), self.multi_level_conv_reg[0](x), self.multi_level_conv_obj[0](x)


class FemtoDet(nn.Module):
    """The detector; `forward(x)` returns `(cls, reg, obj)` maps at stride 16."""

    def __init__(self, num_classes: int = 20, widen_factor: float = 0.25):
        super().__init__()
        self.num_classes = num_classes
        self.widen_factor = widen_factor
        self.backbone = FemtoNet(widen_factor)
        chans = self.backbone.stage_channels()
        self.neck = SharedNeck([chans[i] for i in OUT_INDICES])
        self.bbox_head = SharedDetHead(num_classes)

    def stages(self, x) -> dict[str, torch.Tensor]:
        """Every named intermediate: `stem`, `stage1`..`stage7`, `neck`, `head.{cls,reg,obj}`."""
        out = {}
        x = self.backbone.conv1(x)
        out["stem"] = x
        for i, name in enumerate(self.backbone.layer_names):
            x = getattr(self.backbone, name)(x)
            out[f"stage{i + 1}"] = x
        taps = [out[f"stage{i + 1}"] for i in OUT_INDICES]
        out["neck"] = self.neck(taps)
        out["head.cls"], out["head.reg"], out["head.obj"] = self.bbox_head(out["neck"])
        return out

    def neck_features(self, x):
        x = self.backbone.conv1(x)
        taps = []
        for i, name in enumerate(self.backbone.layer_names):
            x = getattr(self.backbone, name)(x)
            if i in OUT_INDICES:
                taps.append(x)
        return self.neck(taps)

    def forward(self, x):
        return self.bbox_head(self.neck_features(x))


def load_mmdet_state(model: FemtoDet, state: dict[str, torch.Tensor]) -> None:
    """Loads an mmdet state dict (drops the EMA hook's `ema_*` copies), strictly."""
    state = {k: v for k, v in state.items() if not k.startswith("ema_")}
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------- input


@dataclass
class Letterbox:
    """Where the resized image sits in the 416x416 canvas and how to map boxes back."""

    orig_w: int
    orig_h: int
    new_w: int
    new_h: int

    @property
    def w_scale(self) -> float:
        return self.new_w / self.orig_w

    @property
    def h_scale(self) -> float:
        return self.new_h / self.orig_h


def _axis_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR source taps for one axis, in f64: (i0, i1, frac)."""
    scale = src / dst
    d = np.arange(dst, dtype=np.float64)
    f = (d + 0.5) * scale - 0.5
    i0 = np.floor(f)
    frac = f - i0
    i0 = i0.astype(np.int64)
    low = i0 < 0
    frac[low] = 0.0
    i0[low] = 0
    high = i0 >= src - 1
    frac[high] = 0.0
    i0[high] = src - 1
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, frac


def resize_bilinear_u8(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Bilinear resize of an HWC uint8 image, the exact arithmetic our Rust side repeats.

    Per axis, output index d samples source coordinate `f = (d + 0.5) * src / dst - 0.5`
    (f64), `i0 = floor(f)`, `a = f - i0`; `f < 0` clamps to (i0 = 0, a = 0) and
    `i0 >= src - 1` to (i0 = src - 1, a = 0); i1 = min(i0 + 1, src - 1). Horizontal pass
    first (f64, `(1 - a) * p0 + a * p1`), then vertical (same form, f64), then
    `floor(v + 0.5)` clamped to [0, 255]. Geometry as OpenCV INTER_LINEAR (no
    antialiasing); OpenCV's fixed point can differ by one grey level.
    """
    h, w, _ = img.shape
    src = img.astype(np.float64)
    x0, x1, ax = _axis_taps(w, new_w)
    y0, y1, ay = _axis_taps(h, new_h)
    ax = ax[None, :, None]
    rows = (1.0 - ax) * src[:, x0, :] + ax * src[:, x1, :]
    ay = ay[:, None, None]
    out = (1.0 - ay) * rows[y0] + ay * rows[y1]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def letterbox_u8(img: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """HWC uint8 RGB -> CHW uint8 [3, size, size] (resized, padded bottom-right with 114)."""
    h, w = img.shape[:2]
    ratio = size / max(h, w)
    new_w, new_h = int(w * ratio + 0.5), int(h * ratio + 0.5)
    resized = img if (new_w, new_h) == (w, h) else resize_bilinear_u8(img, new_w, new_h)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)), Letterbox(w, h, new_w, new_h)


def normalize(chw_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> f32 `(x - mean) / std` (f32 subtraction then f32 division)."""
    x = torch.as_tensor(np.asarray(chw_u8)).to(torch.float32)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def preprocess(img: np.ndarray, size: int = INPUT_SIZE) -> tuple[torch.Tensor, Letterbox]:
    """HWC uint8 RGB -> `input` [1, 3, size, size] f32 and the letterbox."""
    chw, lb = letterbox_u8(img, size)
    return normalize(chw).unsqueeze(0), lb


# ----------------------------------------------------------------------------- output


def decode(reg: torch.Tensor) -> torch.Tensor:
    """reg [4, H, W] -> boxes [H*W, 4] (x1 y1 x2 y2) in input pixels, row-major cells."""
    _, h, w = reg.shape
    p = reg.permute(1, 2, 0).reshape(-1, 4)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    px = (xs * STRIDE).reshape(-1)
    py = (ys * STRIDE).reshape(-1)
    cx = p[:, 0] * STRIDE + px
    cy = p[:, 1] * STRIDE + py
    bw = p[:, 2].exp() * STRIDE
    bh = p[:, 3].exp() * STRIDE
    return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix [len(a), len(b)] without mmdet's old +1 pixel offset."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def nms_class_aware(boxes, scores, labels, iou_thr: float = NMS_IOU) -> torch.Tensor:
    """Greedy NMS per class; returns kept indices ordered by score (descending, stable).

    A candidate is suppressed by an already-kept box of its own class when IoU > iou_thr.
    """
    order = torch.sort(scores, descending=True, stable=True).indices
    if len(order) == 0:
        return torch.zeros(0, dtype=torch.int64)
    b = boxes[order]
    lab = labels[order]
    suppress = (box_iou(b, b) > iou_thr) & (lab[:, None] == lab[None, :])
    suppress = suppress.numpy()
    alive = np.ones(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(i)
        alive &= ~suppress[i]
        alive[i] = False
    return order[torch.tensor(keep, dtype=torch.int64)]


def postprocess(cls, reg, obj, lb: Letterbox | None = None, score_thr: float = SCORE_THR, iou_thr: float = NMS_IOU):
    """Head maps of one image ([C,H,W], [4,H,W], [1,H,W]) -> boxes [N,4], scores [N], labels [N].

    Boxes are in the original image when `lb` is given (divided by the resize scales), in
    the 416 input otherwise.
    """
    boxes = decode(reg)
    cls_p = cls.permute(1, 2, 0).reshape(-1, cls.shape[0]).sigmoid()
    obj_p = obj.reshape(-1).sigmoid()
    max_cls, labels = cls_p.max(dim=1)
    scores = max_cls * obj_p
    valid = scores >= score_thr
    boxes, scores, labels = boxes[valid], scores[valid], labels[valid]
    keep = nms_class_aware(boxes, scores, labels, iou_thr)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    if lb is not None:
        s = torch.tensor([lb.w_scale, lb.h_scale, lb.w_scale, lb.h_scale], dtype=torch.float32)
        boxes = boxes / s
    return boxes.reshape(-1, 4), scores, labels.to(torch.int64)


@torch.no_grad()
def detect(model: FemtoDet, img: np.ndarray, score_thr: float = SCORE_THR, iou_thr: float = NMS_IOU):
    """End to end on one HWC uint8 RGB image; boxes in the original image."""
    x, lb = preprocess(img)
    cls, reg, obj = model(x)
    return postprocess(cls[0], reg[0], obj[0], lb, score_thr, iou_thr)


def save_safetensors(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> None:
    """`safetensors.torch.save_file` with a canonical header (keys sorted, metadata sorted),
    so that the same tensors give the same bytes (the library's metadata order varies)."""
    import json
    import struct

    from safetensors.torch import save

    raw = save({k: v.detach().contiguous() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    canon = {}
    if meta is not None:
        canon["__metadata__"] = dict(sorted(meta.items()))
    canon.update(sorted(header.items()))
    text = json.dumps(canon, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + raw[8 + n :])


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    m = FemtoDet(20).eval()
    n = count_parameters(m)
    print("parameters", n, "backbone", count_parameters(m.backbone), "neck", count_parameters(m.neck), "head", count_parameters(m.bbox_head))
    assert n == 68774, n
    y = m(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
    print([t.shape for t in y])
