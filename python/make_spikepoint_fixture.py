#!/usr/bin/env python3
"""Seeded SpikePoint checkpoints and their expected outputs, for the Rust parity test
(models/tests/spikepoint_parity.rs).

Writes into models/tests/fixtures/spikepoint/:
  snn.safetensors, ann.safetensors          small seeded models (weights on the 2^-12 grid)
  snn_expected.safetensors, ann_expected... points [B, N, 4], every layer's output
                                            [B, T, ...] (spikes 0/1) and logits [B, classes]

    python3 python/make_spikepoint_fixture.py
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import spikepoint as sp  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "models", "tests", "fixtures", "spikepoint")
W = H = 34
WINDOW_US = 300_000


def windows(rng, count):
    """Random event windows of different sizes (one smaller than N: cyclic repeat)."""
    out = []
    for n in [700, sp.N_POINTS // 3, 2500][:count]:
        t = np.sort(rng.integers(0, WINDOW_US, n)).astype(np.int64) + 1_000
        x = rng.integers(0, W, n)
        y = rng.integers(0, H, n)
        p = rng.integers(0, 2, n)
        out.append(sp.sample_points(t, x, y, p, 1_000))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    # Small shapes keep the fixture small.
    sp.N_POINTS, sp.CENTROIDS, sp.NEIGHBOURS, sp.STEPS = 96, 8, 8, 4
    rng = np.random.default_rng(16)
    pts = windows(rng, 3)
    for name, ann in [("snn", False), ("ann", True)]:
        torch.manual_seed(16)
        model = sp.SpikePoint(c1=16, c2=24, classes=5, ann=ann)
        x = sp.prepare(pts, W, H, WINDOW_US, ann=ann)
        sp.calibrate(model, x)
        sp.quantize(model)
        model.record = {}
        x = sp.prepare(pts, W, H, WINDOW_US, ann=ann)
        with torch.no_grad():
            logits = model(x)
        expected = {"points": torch.from_numpy(np.stack(pts)), "logits": logits}
        for k, v in model.record.items():
            v = v.transpose(0, 1).contiguous().float()  # [B, T, ...]
            # Spikes (0/1) are exact in f16: half the bytes.
            expected[k] = v if (ann or k == "res") else v.half()
        sp.save(model, os.path.join(OUT, f"{name}.safetensors"), W, H, WINDOW_US, 5)
        save_file(expected, os.path.join(OUT, f"{name}_expected.safetensors"))
        rates = {k: round(float(v.mean()), 3) for k, v in model.record.items() if k != "res"}
        print(name, "logits", logits.shape, "rates", rates)
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")


if __name__ == "__main__":
    main()
