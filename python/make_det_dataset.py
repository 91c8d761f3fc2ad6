#!/usr/bin/env python3
"""A seeded detection dataset made here: shapes with known boxes on real photographs.

Backgrounds are crops of the photographs that ship inside scikit-image
(`skimage.data`) and scikit-learn (`load_sample_images`); objects are five shape
classes (circle, rectangle, triangle, ellipse, star) drawn with `skimage.draw`, rotated,
filled either with a colour (with shading and noise) or with a texture cut from a
photograph, sometimes outlined. The photographs are split in two disjoint pools: the
training split takes backgrounds and textures only from the training pool, the test
split only from the test pool, so the held-out set shows photographs training never saw.

Each split is a folder of JPEGs (quality 85, each image at its own size, 320..640 px a
side) and `annotations.json` in COCO form:

    {"images": [{"id", "file_name", "width", "height"}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], "area", "iscrowd": 0}],
     "categories": [{"id", "name"}]}

`category_id` is the model's label (0-based, the order of `CLASSES`); `bbox` is in
pixels of the JPEG, `x2 = x + w` exclusive (a shape covering columns c0..c1 has
x = c0, w = c1 - c0 + 1). Boxes are the full shape's extent; objects overlap their
neighbours' boxes by IoU <= 0.15 and stay inside the image.

    python python/make_det_dataset.py --split test  --count 120  --seed 1015 --out assets/femtodet/test
    python python/make_det_dataset.py --split train --count 1600 --seed 15   --out assets/femtodet/train
"""

from __future__ import annotations

import argparse
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata
from skimage import draw
from sklearn.datasets import load_sample_images

CLASSES = ["circle", "rectangle", "triangle", "ellipse", "star"]

# Photographs per pool (names in skimage.data unless prefixed "sklearn:").
TRAIN_PHOTOS = [
    "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina",
    "stereo_motorcycle", "sklearn:flower.jpg", "brick", "grass", "moon", "clock", "page",
    "text", "cell",
]
TEST_PHOTOS = ["coffee", "rocket", "sklearn:china.jpg", "camera", "gravel", "coins"]


def load_photo(name: str) -> np.ndarray:
    if name.startswith("sklearn:"):
        imgs = load_sample_images()
        want = name.split(":", 1)[1]
        for fname, img in zip(imgs.filenames, imgs.images):
            if Path(fname).name == want:
                return np.ascontiguousarray(img)
        raise KeyError(name)
    img = getattr(skdata, name)()
    if isinstance(img, tuple):  # stereo_motorcycle: (left, right, disparity)
        img = img[0]
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def random_crop(rng, photo: np.ndarray, w: int, h: int) -> np.ndarray:
    """A random crop of `photo`, rescaled to (w, h); flipped half the time."""
    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.5, 1.0)
    cw = max(16, int(min(pw, ph * w / h) * scale))
    ch = max(16, int(cw * h / w))
    ch = min(ch, ph)
    cw = min(cw, pw)
    x0 = int(rng.integers(0, pw - cw + 1))
    y0 = int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw]).resize((w, h), Image.BILINEAR)
    out = np.asarray(crop)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def polygon_mask(shape_hw, pts) -> np.ndarray:
    rr, cc = draw.polygon(pts[:, 1], pts[:, 0], shape=shape_hw)
    m = np.zeros(shape_hw, dtype=bool)
    m[rr, cc] = True
    return m


def shape_mask(rng, cls: str, size: int) -> np.ndarray:
    """A boolean mask (size x size canvas) of one shape, randomly rotated and stretched."""
    s = size
    c = (s - 1) / 2
    r = s / 2 - 1
    ang = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    if cls == "circle":
        rr, cc = draw.disk((c, c), r, shape=(s, s))
        m = np.zeros((s, s), dtype=bool)
        m[rr, cc] = True
        return m
    if cls == "ellipse":
        ratio = rng.uniform(0.35, 0.65)
        rr, cc = draw.ellipse(c, c, r * ratio, r, shape=(s, s), rotation=ang)
        m = np.zeros((s, s), dtype=bool)
        m[rr, cc] = True
        return m
    if cls == "rectangle":
        ratio = rng.uniform(0.4, 1.0)
        pts = np.array([[-1, -ratio], [1, -ratio], [1, ratio], [-1, ratio]]) / math.hypot(1, ratio)
    elif cls == "triangle":
        a = np.array([90, 210, 330]) + rng.uniform(-15, 15, size=3)
        pts = np.stack([np.cos(np.radians(a)), np.sin(np.radians(a))], axis=1)
    elif cls == "star":
        k = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.5)
        t = np.arange(2 * k) * math.pi / k
        rad = np.where(np.arange(2 * k) % 2 == 0, 1.0, inner)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)
    else:
        raise ValueError(cls)
    pts = pts @ rot.T * r + c
    return polygon_mask((s, s), pts)


def fill(rng, mask: np.ndarray, textures: list[np.ndarray]) -> np.ndarray:
    h, w = mask.shape
    if rng.random() < 0.5:
        col = rng.integers(0, 256, size=3).astype(np.float64)
        yy, xx = np.mgrid[0:h, 0:w]
        g = rng.uniform(-0.5, 0.5, size=2)
        shade = 1.0 + (g[0] * (yy / h - 0.5) + g[1] * (xx / w - 0.5))
        img = col[None, None, :] * shade[..., None] + rng.normal(0, 6, size=(h, w, 3))
    else:
        tex = textures[int(rng.integers(len(textures)))]
        img = random_crop(rng, tex, w, h).astype(np.float64)
        img = img * rng.uniform(0.7, 1.3, size=3) + rng.uniform(-30, 30)
    return np.clip(img, 0, 255)


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def make_image(rng, photos: list[np.ndarray]):
    """One image (HWC uint8) and its objects [(label, (x1, y1, x2, y2))]."""
    long_side = int(rng.integers(320, 641))
    aspect = rng.uniform(0.6, 1.0)
    w, h = (long_side, int(long_side * aspect)) if rng.random() < 0.6 else (int(long_side * aspect), long_side)
    bg_i = int(rng.integers(len(photos)))
    canvas = random_crop(rng, photos[bg_i], w, h).astype(np.float64)
    textures = [p for i, p in enumerate(photos) if i != bg_i]
    objects = []
    want = int(rng.integers(2, 7))
    tries = 0
    while len(objects) < want and tries < 60:
        tries += 1
        cls_i = int(rng.integers(len(CLASSES)))
        size = int(min(w, h) * rng.uniform(0.08, 0.4))
        size = max(size, 16)
        m = shape_mask(rng, CLASSES[cls_i], size)
        ys, xs = np.nonzero(m)
        if len(ys) == 0:
            continue
        x0 = int(rng.integers(0, w - size + 1))
        y0 = int(rng.integers(0, h - size + 1))
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        if any(iou(box, b) > 0.15 for _, b in objects):
            continue
        patch = fill(rng, m, textures)
        region = canvas[y0 : y0 + size, x0 : x0 + size]
        if rng.random() < 0.4:  # outline: a 1-3 px dark or light rim
            from scipy import ndimage

            rim = m & ~ndimage.binary_erosion(m, iterations=int(rng.integers(1, 4)))
            patch[rim] = 20.0 if rng.random() < 0.5 else 235.0
        alpha = m[..., None].astype(np.float64)
        region[:] = region * (1 - alpha) + patch * alpha
        objects.append((cls_i, box))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects


def jpeg_bytes(img: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=["train", "test"], required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quality", type=int, default=85)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    names = TRAIN_PHOTOS if args.split == "train" else TEST_PHOTOS
    photos = [load_photo(n) for n in names]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(args.count):
        img, objects = make_image(rng, photos)
        fname = f"{args.split}_{i:05d}.jpg"
        (out / fname).write_bytes(jpeg_bytes(img, args.quality))
        images.append({"id": i, "file_name": fname, "width": int(img.shape[1]), "height": int(img.shape[0])})
        for label, (x1, y1, x2, y2) in objects:
            anns.append(
                {
                    "id": len(anns),
                    "image_id": i,
                    "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"split": args.split, "seed": args.seed, "photographs": names, "generator": "python/make_det_dataset.py"},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": n} for i, n in enumerate(CLASSES)],
    }
    (out / "annotations.json").write_text(json.dumps(coco, indent=None, separators=(",", ":")))
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{args.split}: {len(images)} images, {len(anns)} objects, {size / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
