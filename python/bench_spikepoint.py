#!/usr/bin/env python3
"""Rust against spikingjelly/PyTorch on the same checkpoint and held-out windows, in the
same run: accuracy of both, the largest logit difference, predictions that differ, and
CPU time per window (batch 1, same thread count, grouping + network in both).

    python3 python/bench_spikepoint.py --model snn.safetensors --points test_points.safetensors \
        --rust target/debug/examples/spikepoint_eval [--threads 1]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import spikepoint as sp  # noqa: E402


def load_model(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    sp.N_POINTS, sp.CENTROIDS = int(meta["points"]), int(meta["centroids"])
    sp.NEIGHBOURS, sp.STEPS = int(meta["neighbours"]), int(meta["steps"])
    ann = meta["neuron"] == "relu"
    state = load_file(path)
    model = sp.SpikePoint(c1=state["fc1.weight"].shape[0], c2=state["fc2.weight"].shape[0],
                          classes=state["fc5.weight"].shape[0], ann=ann)
    model.load_state_dict(state)
    model.eval()
    return model, meta, ann


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--points", required=True)
    p.add_argument("--rust", required=True, help="the spikepoint_eval example binary")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, meta, ann = load_model(args.model)
    data = load_file(args.points)
    points, labels = data["points"].numpy(), data["labels"].numpy().astype(int)
    w, h, win = int(meta["width"]), int(meta["height"]), int(meta["window_us"])
    up_before = os.popen("uptime").read().strip()
    logits, times = [], []
    with torch.no_grad():
        for i in range(len(labels)):
            t0 = time.perf_counter()
            logits.append(model(sp.prepare([points[i]], w, h, win, ann=ann))[0].numpy())
            times.append(time.perf_counter() - t0)
    py_s = float(np.median(times))
    logits = np.stack(logits)
    with tempfile.NamedTemporaryFile(suffix=".txt") as tmp:
        out = subprocess.run([args.rust, args.model, args.points, "--threads",
                              str(args.threads), "--logits", tmp.name],
                             check=True, capture_output=True, text=True).stdout
        rust = np.loadtxt(tmp.name, ndmin=2)
    up_after = os.popen("uptime").read().strip()
    rust_ms = float(out.split("median ")[1].split(" ms")[0])
    report = {
        "model": os.path.basename(args.model), "windows": len(labels),
        "pytorch_accuracy": float((logits.argmax(1) == labels).mean()),
        "rust_accuracy": float((rust.argmax(1) == labels).mean()),
        "predictions_differing": int((logits.argmax(1) != rust.argmax(1)).sum()),
        "max_logit_diff": float(np.abs(logits - rust).max()),
        "threads": args.threads,
        "pytorch_median_ms_per_window": py_s * 1e3, "rust_median_ms_per_window": rust_ms,
        "speedup": py_s * 1e3 / rust_ms,
        "rust_line": out.strip().splitlines()[0],
        "uptime_before": up_before, "uptime_after": up_after,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
