"""SpikePoint-style point-based spiking network, the PyTorch twin of models/src/spikepoint.rs.

Everything before the first learned layer is plain float32 numpy, step for step as the
Rust code does it, so both sides see the same bits:

1. a window of events -> N points, sampled by stride in time order
   (`idx_i = floor(i * n / N)`; a window with fewer than N events repeats them
   cyclically), each `[x, y, t - t0, p]` as float32 (pixels, microseconds, 0/1);
2. normalisation `x / W`, `y / H`, `t / window_us` (float32 divisions);
3. farthest-point sampling of M centroids in (x, y, t) (start at point 0, squared
   distance `(dx*dx + dy*dy) + dt*dt`, first maximum wins) and, for each centroid, its K
   nearest points (stable sort by the same distance, ties by index);
4. per neighbour, C_IN = 11 features in [0, 1]: the offset to the centroid divided by
   the group's largest absolute offset, split into positive and negative parts (6),
   the centroid's coordinates (3), the polarity (1), the group's extent
   `min(1, 4 * scale)` (1);
5. deterministic rate coding over T steps: `s[t] = floor((t+1) * v) - floor(t * v)`
   (float32 products), `floor(T * v)` spikes in all.

The network (multi-step, time first):

    in [T, B, M, K, 11] spikes
    fc1 11->C1, LIF  -> s1        split point "lif1"   (spikes)
    fc2 C1->C2, LIF, max over K -> p   split point "pool"   (spikes)
    fc3 C2->C2                  -> h   (real-valued stream)
    h = h + fc4(LIF(h))                membrane shortcut; split point "res" (floats)
    max of h over M, fc5 C2->classes, mean over T -> logits   (membrane read-out)

LIF = spikingjelly `LIFNode(tau=2.0, v_reset=0.0, detach_reset=True, step_mode="m")`.
`--ann` builds the same shape with ReLU for LIF and T = 1 on the analog features.
"""

import numpy as np
import torch
from torch import nn

N_POINTS = 256
CENTROIDS = 32
NEIGHBOURS = 16
C_IN = 11
STEPS = 8
WEIGHT_GRID = 2.0**-12  # exported weights lie on this grid (see quantize())


def sample_points(t, x, y, p, t0, n_points=None):
    """Events of one window (numpy arrays, time order) -> [N, 4] float32."""
    n_points = n_points or N_POINTS
    n = len(t)
    if n == 0:
        raise ValueError("empty window")
    i = np.arange(n_points, dtype=np.int64)
    idx = (i * n) // n_points if n >= n_points else i % n
    return np.stack(
        [x[idx].astype(np.float32), y[idx].astype(np.float32),
         (t[idx] - t0).astype(np.float32), p[idx].astype(np.float32)], axis=1)


def _d2(a, c):
    d = a - c
    return (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) + d[..., 2] * d[..., 2]


def group(points, width, height, window_us, m=None, k=None):
    """[N, 4] points -> [M, K, C_IN] float32 features in [0, 1]."""
    m, k = m or CENTROIDS, k or NEIGHBOURS
    pts = np.asarray(points, dtype=np.float32)
    xyz = np.stack([pts[:, 0] / np.float32(width), pts[:, 1] / np.float32(height),
                    pts[:, 2] / np.float32(window_us)], axis=1).astype(np.float32)
    pol = pts[:, 3]
    n = len(pts)
    centres = np.zeros(m, dtype=np.int64)
    mind = np.full(n, np.inf, dtype=np.float32)
    cur = 0
    for j in range(m):
        centres[j] = cur
        mind = np.minimum(mind, _d2(xyz, xyz[cur]))
        cur = int(np.argmax(mind))
    feats = np.zeros((m, k, C_IN), dtype=np.float32)
    one = np.float32(1.0)
    for j, c in enumerate(centres):
        d2 = _d2(xyz, xyz[c])
        nb = np.argsort(d2, kind="stable")[:k]
        off = xyz[nb] - xyz[c]
        scale = np.abs(off).max()
        rel = off / scale if scale > 0 else np.zeros_like(off)
        feats[j, :, 0:3] = np.maximum(rel, np.float32(0.0))
        feats[j, :, 3:6] = np.maximum(-rel, np.float32(0.0))
        feats[j, :, 6:9] = xyz[c]
        feats[j, :, 9] = pol[nb]
        feats[j, :, 10] = np.minimum(one, np.float32(4.0) * scale)
    return feats


def rate_code(feats, steps=None):
    """[..., C] values in [0, 1] -> [T, ..., C] spikes (float32 0/1), deterministic."""
    steps = steps or STEPS
    v = np.asarray(feats, dtype=np.float32)
    out = np.zeros((steps,) + v.shape, dtype=np.float32)
    for t in range(steps):
        out[t] = np.floor(np.float32(t + 1) * v) - np.floor(np.float32(t) * v)
    return out


def lif(surrogate=True):
    from spikingjelly.activation_based import neuron
    return neuron.LIFNode(tau=2.0, v_reset=0.0, detach_reset=True, step_mode="m")


class SpikePoint(nn.Module):
    """The network above; `ann=True`: ReLU instead of LIF (T = 1, analog input)."""

    def __init__(self, c1=32, c2=64, classes=10, ann=False):
        super().__init__()
        self.ann = ann
        self.fc1 = nn.Linear(C_IN, c1)
        self.fc2 = nn.Linear(c1, c2)
        self.fc3 = nn.Linear(c2, c2)
        self.fc4 = nn.Linear(c2, c2)
        self.fc5 = nn.Linear(c2, classes)
        act = (lambda: nn.ReLU()) if ann else lif
        self.n1, self.n2, self.n4 = act(), act(), act()
        self.record = None  # a dict to fill with every layer's spikes

    def reset_state(self):
        if not self.ann:
            for n in (self.n1, self.n2, self.n4):
                n.reset()

    def forward(self, x):
        """x: [T, B, M, K, C_IN] -> logits [B, classes]."""
        self.reset_state()
        rec = self.record
        s1 = self.n1(self.fc1(x))
        s2 = self.n2(self.fc2(s1))
        pooled = s2.amax(dim=3)
        h = self.fc3(pooled)
        s4 = self.n4(h)
        h = h + self.fc4(s4)
        logits = self.fc5(h.amax(dim=2)).mean(dim=0)
        if rec is not None:
            rec.update(input=x, lif1=s1, lif2=s2, pool=pooled, res_in=s4, res=h)
        return logits


def calibrate(model, x, target_mean=0.3):
    """Data-driven init (LSUV-like): scale fc1..fc3 so that their pre-activations on
    the batch `x` have standard deviation 1 and mean `target_mean`; with tau = 2 and
    threshold 1 a steady input above ~1.07 fires within 4 steps, so about a fifth of
    the neurons spike at the start instead of none."""
    with torch.no_grad():
        for fc, src in [(model.fc1, "input"), (model.fc2, "lif1"), (model.fc3, "pool")]:
            model.record = {}
            model(x)
            pre = fc(model.record[src])
            std = pre.std().clamp_min(1e-6)
            fc.weight.div_(std)
            fc.bias.copy_((fc.bias - pre.mean()) / std + target_mean)
    model.record = None


def quantize(model):
    """Round every weight and bias onto WEIGHT_GRID (2^-12). Sums of such numbers below
    2^12 in magnitude are exact in float32, so a linear layer fed with binary spikes gives
    the same bits in any summation order (dense matmul here, gather-and-add in Rust)."""
    with torch.no_grad():
        for p_ in model.parameters():
            p_.copy_(torch.round(p_ / WEIGHT_GRID) * WEIGHT_GRID)


def metadata(model, width, height, window_us, classes):
    return {
        "family": "spikepoint",
        "arch": "spikepoint-ann" if model.ann else "spikepoint",
        "neuron": "relu" if model.ann else "lif-hard",
        "tau": "2.0", "v_threshold": "1.0", "v_reset": "0.0",
        "points": str(N_POINTS), "centroids": str(CENTROIDS), "neighbours": str(NEIGHBOURS),
        "steps": "1" if model.ann else str(STEPS),
        "width": str(width), "height": str(height), "window_us": str(window_us),
        "classes": str(classes), "coding": "ann-analog" if model.ann else "rate-floor",
    }


def save(model, path, width, height, window_us, classes):
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().float() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata=metadata(model, width, height, window_us, classes))


def prepare(points_list, width, height, window_us, ann=False):
    """[N, 4] point sets -> the network's input tensor (time first)."""
    feats = np.stack([group(p, width, height, window_us) for p in points_list])
    if ann:
        return torch.from_numpy(feats)[None]
    return torch.from_numpy(rate_code(feats))
