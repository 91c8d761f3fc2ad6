#!/usr/bin/env python3
"""Trains the SpikePoint SNN (spikingjelly, surrogate gradient) and its ANN counterpart
(same shape, ReLU, one step on the analog features) on the event dataset of
make_event_dataset.py; exports both to safetensors (architecture in the metadata,
weights on the 2^-12 grid) and writes a JSON report: held-out accuracy of both, spike
rates, synaptic operations and the 45 nm energy estimate per window, and spikingjelly's
inference speed.

    python3 python/train_spikepoint.py --data data/digits-events --out data/spikepoint

Also writes <out>/test_points.safetensors (the held-out windows as [S, N, 4] point sets
and their labels) so that the Rust side evaluates on exactly the same input.
"""

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
import spikepoint as sp  # noqa: E402

W = H = 34
PJ_AC, PJ_MAC = 0.9, 4.6  # 45 nm figures (Horowitz 2014), as SNN papers use


def load_split(data, name):
    ev = np.load(os.path.join(data, f"{name}.npy"))
    t = ev["t"].astype(np.int64)
    points, labels = [], []
    with open(os.path.join(data, f"{name}.csv")) as f:
        for row in csv.DictReader(f):
            a, b = int(row["t_start_us"]), int(row["t_end_us"])
            lo, hi = np.searchsorted(t, a, "left"), np.searchsorted(t, b, "right")
            if hi <= lo:
                continue
            sl = slice(lo, hi)
            points.append(sp.sample_points(t[sl], ev["x"][sl], ev["y"][sl], ev["p"][sl], a))
            labels.append(int(row["label"]))
    return np.stack(points), np.array(labels)


def features(points, window_us):
    return np.stack([sp.group(p, W, H, window_us) for p in points])


def batches(n, bs, rng):
    idx = rng.permutation(n)
    for i in range(0, n, bs):
        yield idx[i:i + bs]


def make_input(feats, ann):
    f = torch.from_numpy(feats)
    return f[None] if ann else torch.from_numpy(sp.rate_code(feats))


def evaluate(model, feats, labels, ann, bs=64):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(labels), bs):
            logits = model(make_input(feats[i:i + bs], ann))
            correct += int((logits.argmax(1).numpy() == labels[i:i + bs]).sum())
    return correct / len(labels)


def train(model, feats, labels, ann, seconds, lr, rng, bs):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    start, epoch = time.time(), 0
    while time.time() - start < seconds:
        model.train()
        total, n = 0.0, 0
        for idx in batches(len(labels), bs, rng):
            logits = model(make_input(feats[idx], ann))
            loss = F.cross_entropy(logits, torch.from_numpy(labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
            if n % (8 * bs) == 0:
                print(f"  {n} windows, loss {total / n:.3f} ({time.time() - start:.0f} s)", flush=True)
            if time.time() - start > seconds:
                break
        epoch += 1
        print(f"{'ann' if ann else 'snn'} epoch {epoch} loss {total / max(n, 1):.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    return epoch


def operations(model, feats, labels, ann):
    """Synaptic operations per window (mean over the held-out set)."""
    m, k = sp.CENTROIDS, sp.NEIGHBOURS
    c1, c2, classes = model.fc1.out_features, model.fc2.out_features, model.fc5.out_features
    if ann:
        macs = m * k * sp.C_IN * c1 + m * k * c1 * c2 + 2 * m * c2 * c2 + c2 * classes
        return {"macs": macs, "acs": 0}
    model.record = {}
    acs, rates = 0.0, {}
    with torch.no_grad():
        for i in range(0, len(labels), 64):
            model(make_input(feats[i:i + 64], ann))
            r = model.record
            acs += float(r["input"].sum()) * c1 + float(r["lif1"].sum()) * c2
            acs += float(r["pool"].sum()) * c2 + float(r["res_in"].sum()) * c2
            for key in ["input", "lif1", "lif2", "pool", "res_in"]:
                rates[key] = rates.get(key, 0.0) + float(r[key].sum())
    model.record = None
    sizes = {"input": sp.C_IN * m * k, "lif1": c1 * m * k, "lif2": c2 * m * k,
             "pool": c2 * m, "res_in": c2 * m}
    n = len(labels)
    return {
        "acs": acs / n,
        # The read-out multiplies the membrane means: T x C2 x classes MACs.
        "macs": sp.STEPS * c2 * classes,
        "spike_rate": {key: v / n / (sizes[key] * sp.STEPS) for key, v in rates.items()},
    }


def speed(model, points, ann, threads, window_us, n=100):
    """Windows per second of spikingjelly/PyTorch, batch 1, with and without grouping."""
    torch.set_num_threads(threads)
    model.eval()
    feats = features(points[:n], window_us)
    with torch.no_grad():
        model(make_input(feats[:1], ann))
        t0 = time.perf_counter()
        for i in range(n):
            model(make_input(feats[i:i + 1], ann))
        net = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(n):
            model(make_input(features(points[i:i + 1], window_us), ann))
        full = (time.perf_counter() - t0) / n
    return {"threads": threads, "ms_per_window_net": net * 1e3,
            "ms_per_window_with_grouping": full * 1e3}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="data/digits-events")
    p.add_argument("--out", default="data/spikepoint")
    p.add_argument("--seconds", type=float, default=360.0, help="training time per model")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--steps", type=int, default=sp.STEPS, help="timesteps T")
    p.add_argument("--centroids", type=int, default=sp.CENTROIDS, help="M")
    p.add_argument("--neighbours", type=int, default=sp.NEIGHBOURS, help="K")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--only", choices=["snn", "ann"], help="train one of the two")
    p.add_argument("--init", help="continue from this checkpoint (same architecture)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    args = p.parse_args()
    sp.STEPS, sp.CENTROIDS, sp.NEIGHBOURS = args.steps, args.centroids, args.neighbours
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(2)
    window_us = 300_000
    t0 = time.time()
    tr_pts, tr_y = load_split(args.data, "train")
    te_pts, te_y = load_split(args.data, "test")
    tr_f, te_f = features(tr_pts, window_us), features(te_pts, window_us)
    print(f"{len(tr_y)} train / {len(te_y)} test windows, grouped in {time.time() - t0:.0f} s",
          flush=True)
    save_file({"points": torch.from_numpy(te_pts),
               "labels": torch.from_numpy(te_y.astype(np.float32))},
              os.path.join(args.out, "test_points.safetensors"))
    report = {"train_windows": len(tr_y), "test_windows": len(te_y)}
    for name, ann in [("snn", False), ("ann", True)]:
        if args.only and args.only != name:
            continue
        torch.manual_seed(args.seed)
        rng = np.random.default_rng(args.seed)
        model = sp.SpikePoint(ann=ann)
        if args.init:
            from safetensors.torch import load_file
            model.load_state_dict(load_file(args.init))
        else:
            sp.calibrate(model, make_input(tr_f[rng.permutation(len(tr_y))[:64]], ann))
        t1 = time.time()
        epochs = train(model, tr_f, tr_y, ann, args.seconds, args.lr, rng, args.batch)
        acc_float = evaluate(model, te_f, te_y, ann)
        sp.quantize(model)
        acc = evaluate(model, te_f, te_y, ann)
        ops = operations(model, te_f, te_y, ann)
        energy_nj = (ops["acs"] * PJ_AC + ops["macs"] * PJ_MAC) / 1e3
        sp.save(model, os.path.join(args.out, f"{name}.safetensors"), W, H, window_us, 10)
        report[name] = {"epochs": epochs, "train_s": round(time.time() - t1, 1),
                        "test_accuracy": acc, "test_accuracy_before_grid": acc_float,
                        "params": sum(q.numel() for q in model.parameters()),
                        "ops_per_window": ops, "energy_nj_per_window": energy_nj,
                        "initialised_from": args.init}
        if not args.no_speed:
            report[name]["speed_1_thread"] = speed(model, te_pts, ann, 1, window_us)
            report[name]["speed_2_threads"] = speed(model, te_pts, ann, 2, window_us)
        torch.set_num_threads(2)
        print(json.dumps(report[name]), flush=True)
    if "snn" in report and "ann" in report:
        report["energy_ratio_snn_over_ann"] = (report["snn"]["energy_nj_per_window"]
                                               / report["ann"]["energy_nj_per_window"])
    report["uptime"] = os.popen("uptime").read().strip()
    with open(os.path.join(args.out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
