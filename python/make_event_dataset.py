#!/usr/bin/env python3
"""An N-MNIST-style event dataset made here, deterministically, from scikit-learn's digits.

Each 8x8 digit is upscaled to 28x28 (bilinear), put on a 34x34 sensor and moved along
three ~100 ms saccades (a triangle, N-MNIST style). The frames of every sample of a split
go, one after another, into one grayscale Y4M video at 500 fps; the project's own DVS
simulator (`splitstream events from-video`) turns it into events written as AEDAT 4, and
`splitstream events convert` (the project's reader) writes the same events as .npy for
the Python side. A CSV gives each sample's label and event window.

Timeline of one sample (a slot of 160 frames, 320 ms): 10 black frames (the digit's
appearance makes a burst of ON events before 20 ms), 150 frames of motion (three
saccades of 50 frames), then the next slot's black frames (the disappearance burst lands
after 318 ms). The sample's window is (20 ms, 318 ms] of its slot, so neither burst
is in it.

    python3 python/make_event_dataset.py --splitstream target/debug/splitstream --out data/digits-events

Same seed, same files (the simulator is seeded too).
"""

import argparse
import csv
import os
import subprocess
import sys

import numpy as np
from scipy import ndimage
from skimage.transform import resize
from sklearn.datasets import load_digits

SENSOR = 34
DIGIT = 28
FPS = 500
FRAME_US = 1_000_000 // FPS
BLANK_FRAMES = 10
SACCADE_FRAMES = 50
SLOT_FRAMES = BLANK_FRAMES + 3 * SACCADE_FRAMES
SLOT_US = SLOT_FRAMES * FRAME_US
WINDOW_START_US = BLANK_FRAMES * FRAME_US + 1  # first us after the appearance burst
WINDOW_END_US = (SLOT_FRAMES - 1) * FRAME_US  # last motion frame
# Saccade triangle (pixels, x then y), N-MNIST style.
PATH = np.array([[0.0, 0.0], [2.5, 2.5], [5.0, 0.0], [0.0, 0.0]])


def digit_image(img8: np.ndarray) -> np.ndarray:
    """An 8x8 sklearn digit (0..16) as a 28x28 float image in [0, 1]."""
    big = resize(img8 / 16.0, (DIGIT, DIGIT), order=1, anti_aliasing=False, mode="edge")
    return np.clip(big, 0.0, 1.0)


def sample_frames(img8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The SLOT_FRAMES uint8 frames of one sample."""
    digit = digit_image(img8) * rng.uniform(0.6, 1.0) * 255.0
    canvas = np.zeros((SENSOR, SENSOR))
    canvas[:DIGIT, :DIGIT] = digit
    base = np.array([0.5, 1.75]) + rng.uniform(-0.5, 0.5, size=2)
    frames = np.zeros((SLOT_FRAMES, SENSOR, SENSOR), dtype=np.uint8)
    for s in range(3):
        for f in range(SACCADE_FRAMES):
            a = f / SACCADE_FRAMES if s < 2 else f / (SACCADE_FRAMES - 1)
            xy = base + PATH[s] + a * (PATH[s + 1] - PATH[s])
            moved = ndimage.shift(canvas, (xy[1], xy[0]), order=1, mode="constant")
            frames[BLANK_FRAMES + s * SACCADE_FRAMES + f] = np.clip(np.rint(moved), 0, 255)
    return frames


def write_split(name, images, labels, args, rng):
    y4m = os.path.join(args.out, f"{name}.y4m")
    with open(y4m, "wb") as f:
        f.write(f"YUV4MPEG2 W{SENSOR} H{SENSOR} F{FPS}:1 Ip A1:1 Cmono\n".encode())
        for img in images:
            for frame in sample_frames(img, rng):
                f.write(b"FRAME\n")
                f.write(frame.tobytes())
        # The last sample's disappearance.
        for _ in range(BLANK_FRAMES):
            f.write(b"FRAME\n")
            f.write(bytes(SENSOR * SENSOR))
    aedat = os.path.join(args.out, f"{name}.aedat4")
    npy = os.path.join(args.out, f"{name}.npy")
    seed = str(args.seed * 1000 + (1 if name == "train" else 2))
    subprocess.run(
        [args.splitstream, "events", "from-video", y4m, aedat, "--threshold", str(args.threshold),
         "--threshold-sigma", "0.03", "--seed", seed], check=True)
    subprocess.run([args.splitstream, "events", "convert", aedat, npy], check=True)
    os.remove(y4m)
    with open(os.path.join(args.out, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "t_start_us", "t_end_us"])
        for i, label in enumerate(labels):
            slot = i * SLOT_US
            w.writerow([i, int(label), slot + WINDOW_START_US, slot + WINDOW_END_US])
    ev = np.load(npy)
    print(f"{name}: {len(labels)} samples, {len(ev)} events, "
          f"{os.path.getsize(aedat)} bytes AEDAT 4", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--splitstream", default="target/debug/splitstream")
    p.add_argument("--out", default="data/digits-events")
    p.add_argument("--seed", type=int, default=16)
    p.add_argument("--threshold", type=float, default=0.4, help="DVS contrast threshold")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--limit", type=int, default=0, help="use only this many digits (smoke)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(digits.target))
    if args.limit:
        order = order[: args.limit]
    n_test = int(round(len(order) * args.test_fraction))
    test, train = order[:n_test], order[n_test:]
    write_split("train", digits.images[train], digits.target[train], args, rng)
    write_split("test", digits.images[test], digits.target[test], args, rng)


if __name__ == "__main__":
    main()
