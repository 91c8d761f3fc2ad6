#!/usr/bin/env python3
"""Convert a FemtoDet checkpoint saved by mmdet (`.pth`) to safetensors, names unchanged.

The tensors keep mmdet's names (`backbone.layer2.0.conv.1.theta`, `neck.lateral_convs.0.conv.weight`,
`bbox_head.multi_level_conv_cls.0.weight`, ...), so `splitstream` loads the result as is;
the architecture and the class names go in the metadata (the contract is in
models/tests/fixtures/femtodet/README.md). The EMA hook's `ema_*` copies are dropped (the
model keys already hold the EMA weights); floating tensors are written as f32.

Before writing, the state dict is loaded strictly into `python/femtodet.py`'s model, so
a missing, unexpected or mis-shaped tensor is reported here, with its name.

    python python/convert_mmdet.py femtodet_3stage_epoch_300.pth femtodet_voc.safetensors
    python python/convert_mmdet.py ckpt.pth out.safetensors --classes a,b,c   # no CLASSES in meta

Class names come from `--classes`, else the checkpoint's `meta["CLASSES"]` (mmdet saves
the dataset's), else VOC's 20 when the head has 20 outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import femtodet as fd


class ConvertError(Exception):
    pass


def read_checkpoint(path: Path, allow_pickle: bool) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # weights_only refuses mmcv's Config objects in "meta"
        if allow_pickle:
            raise ConvertError(f"cannot read {path}: {e}") from e
        raise ConvertError(
            f"cannot read {path} with weights_only=True ({type(e).__name__}); if you trust the "
            "file (mmdet checkpoints pickle their config in 'meta'), rerun with --allow-pickle"
        ) from e
    if not isinstance(ckpt, dict):
        raise ConvertError(f"{path} holds a {type(ckpt).__name__}, expected a dict")
    meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else {}
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvertError(f"{path} has no state_dict of tensors")
    return state, meta


def convert(state: dict[str, torch.Tensor], meta: dict, classes: list[str] | None, arch: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("ema_")}
    key = "bbox_head.multi_level_conv_cls.0.weight"
    if key not in state:
        raise ConvertError(f"checkpoint has no tensor {key}: is this a FemtoDet (SharedDetHead) checkpoint?")
    num_classes = int(state[key].shape[0])
    if classes is None:
        found = meta.get("CLASSES") if meta else None
        if found is not None:
            classes = [str(c) for c in found]
        elif num_classes == len(fd.VOC_CLASSES):
            classes = list(fd.VOC_CLASSES)
        else:
            raise ConvertError(f"the head has {num_classes} classes and the checkpoint names none; pass --classes")
    if len(classes) != num_classes:
        raise ConvertError(f"{len(classes)} class names for a head with {num_classes} outputs")
    model = fd.FemtoDet(num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConvertError(f"the state dict does not fit FemtoDet (widen 0.25, {num_classes} classes): {e}") from e
    out = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    metadata = {
        "family": "femtodet",
        "arch": arch,
        "format": "mmdet",
        "num_classes": str(num_classes),
        "class_names": json.dumps(classes),
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
    return out, metadata


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--classes", help="comma-separated class names (default: the checkpoint's meta, else VOC)")
    ap.add_argument("--arch", default="femtodet")
    ap.add_argument("--allow-pickle", action="store_true", help="torch.load with weights_only=False (trusted files only)")
    args = ap.parse_args()
    try:
        state, meta = read_checkpoint(args.checkpoint, args.allow_pickle)
        classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
        tensors, metadata = convert(state, meta, classes, args.arch)
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fd.save_safetensors(tensors, args.output, metadata)
    print(f"wrote {args.output}: {len(tensors)} tensors, {metadata['num_classes']} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
