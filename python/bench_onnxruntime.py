#!/usr/bin/env python3
"""Peer side of `splitstream-bench model`: times onnxruntime on an ONNX export.

Prints one JSON line: median/p90 latency in ms over --iters timed runs after --warmup
untimed ones, and the peak resident memory of this process (VmHWM from
/proc/self/status, and ru_maxrss), so the bench can put it beside splitstream's.
The input is deterministic noise of shape [batch, 3, size, size].
"""

import argparse
import json
import resource
import sys
import time


def vm_hwm_kib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(sorted_values, q):
    # Nearest rank on a sorted list, the same rule the Rust side uses.
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[idx]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True, help="ONNX file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()

    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        print(json.dumps({"error": f"onnxruntime not available: {e}; pip install onnxruntime numpy"}))
        return 2

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(a.model, sess_options=opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size), dtype=np.float32)

    for _ in range(a.warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({
        "peer": "onnxruntime",
        "version": ort.__version__,
        "batch": a.batch,
        "threads": a.threads,
        "iters": a.iters,
        "median_ms": percentile(times, 0.5),
        "p90_ms": percentile(times, 0.9),
        "min_ms": times[0],
        "peak_rss_kib": vm_hwm_kib(),
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
