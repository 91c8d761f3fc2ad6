#!/usr/bin/env python3
"""Export a timm ViT/DeiT to the safetensors file splitstream loads.

    python python/export_timm.py MODEL_NAME OUT.safetensors [--pretrained-file F]

MODEL_NAME is timm's (``deit_tiny_patch16_224``, ``vit_small_patch16_224.augreg_in21k_ft_in1k``).
The weights are

  * pretrained, from a checkpoint file you already have (``--pretrained-file``: the
    ``.pth``/``.bin``/``.safetensors`` timm or the model's authors publish; timm's own
    filter converts it to timm's names, as ``timm.create_model(..., pretrained=True)``
    would after a download), or
  * random from ``--seed`` (default 0) without it: for tests and trying the pipeline.

The file holds the state dict in timm's tensor names and, in its ``__metadata__``,
what the tensor shapes cannot tell (every value a string; splitstream reads the keys
marked *):

  family *       ``vit`` (the loader's family; see models/src/net/load.rs)
  arch           timm's architecture name, e.g. ``deit_tiny_patch16_224``
  timm_model     the name as given (with its pretrained tag, if any)
  num_heads *    attention heads (shapes cannot tell them)
  crop_pct *     the eval transform's crop fraction (timm's pretrained_cfg)
  mean, std      the normalisation, JSON lists of three numbers (pretrained_cfg);
                 splitstream normalises with ImageNet's (the script warns otherwise)
  interpolation  the resize filter of the eval transform (splitstream resizes bicubic)
  num_classes, image_size
  class_names *  a JSON list of strings, one per class in index order: ImageNet's
                 (timm ships them: ``timm.data.ImageNetInfo``) when the model's
                 pretrained_cfg says it was trained on an ImageNet subset, or the lines
                 of ``--labels-file``
  weights        ``pretrained:<file name>`` or ``random:seed=<n>``
  timm_version

Then, for example:

    splitstream infer --weights OUT.safetensors --input cat.jpg
    splitstream-edge --weights OUT.safetensors --tokens tokens.txt
    splitstream-device --weights OUT.safetensors --edge HOST:4433 --fingerprint ... \\
        --token-file cam-1.token --device-id cam-1 --input cat.jpg --at 4

``--model-args depth=1,embed_dim=16,num_heads=2,img_size=32`` passes keyword arguments
to ``timm.create_model`` (a tiny model for fixtures). Needs torch, timm, safetensors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_model_args(text: str | None) -> dict:
    """``k=v,k=v`` into create_model keyword arguments (ints, floats, bools, strings)."""
    out: dict = {}
    if not text:
        return out
    for item in text.split(","):
        if "=" not in item:
            raise SystemExit(f"--model-args: {item!r} is not key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def class_names(model, labels_file: str | None, style: str) -> list[str] | None:
    """The class names to store: the file's lines, else ImageNet's for a model trained
    on an ImageNet subset, else None (indices only)."""
    if labels_file:
        with open(labels_file, encoding="utf-8") as f:
            names = [line.strip() for line in f.read().splitlines()]
        while names and not names[-1]:
            names.pop()
        if any(not n for n in names):
            raise SystemExit(f"{labels_file}: blank line among the names")
        return names
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(model)
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    names = []
    for i in range(info.num_classes()):
        if style == "synset":
            names.append(info.index_to_label_name(i))
        else:
            description = info.index_to_description(i)
            # "tench, Tinca tinca": the first lemma is what people call it.
            names.append(description if style == "full" else description.split(",")[0].strip())
    return names


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Export a timm ViT/DeiT (pretrained from your file, or random) to "
        "safetensors with the metadata splitstream reads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Then, for example:")[1] if "Then, for example:" in __doc__ else None,
    )
    ap.add_argument("model_name", help="timm model name, e.g. deit_tiny_patch16_224")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--pretrained-file", metavar="F",
                    help="checkpoint file with the pretrained weights (no download)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the random weights without --pretrained-file (default 0)")
    ap.add_argument("--labels-file", metavar="F",
                    help="class names, one per line (default: ImageNet's for ImageNet models)")
    ap.add_argument("--label-style", choices=["short", "full", "synset"], default="short",
                    help="ImageNet names: short ('tench'), full ('tench, Tinca tinca') or "
                    "synset ('n01440764'); default short")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                    help="tensor type in the file (default f32)")
    ap.add_argument("--num-classes", type=int,
                    help="replace the classifier with one of this many classes")
    ap.add_argument("--model-args", metavar="K=V,..",
                    help="more keyword arguments for timm.create_model")
    args = ap.parse_args()

    import timm
    import torch
    from safetensors.torch import save_file

    kwargs = parse_model_args(args.model_args)
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.pretrained_file:
        if not os.path.isfile(args.pretrained_file):
            raise SystemExit(f"--pretrained-file {args.pretrained_file}: no such file")
        model = timm.create_model(
            args.model_name,
            pretrained=True,
            pretrained_cfg_overlay={"file": os.path.abspath(args.pretrained_file)},
            **kwargs,
        )
        source = f"pretrained:{os.path.basename(args.pretrained_file)}"
    else:
        torch.manual_seed(args.seed)
        model = timm.create_model(args.model_name, pretrained=False, **kwargs)
        source = f"random:seed={args.seed}"
    model.eval()

    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise SystemExit(
            f"{args.model_name} is a {type(model).__name__}; splitstream runs timm's "
            "VisionTransformer (ViT/DeiT) family"
        )
    if getattr(model, "num_reg_tokens", 0) or model.global_pool != "token" or not model.has_class_token:
        raise SystemExit(
            f"{args.model_name}: register tokens, no class token or global pooling "
            f"{model.global_pool!r}; splitstream's ViT reads the class token"
        )

    cfg = model.pretrained_cfg or {}
    size = model.patch_embed.img_size
    image_size = size[0] if isinstance(size, (tuple, list)) else int(size)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if any(abs(a - b) > 1e-6 for a, b in zip(mean + std, IMAGENET_MEAN + IMAGENET_STD)):
        print(f"warning: {args.model_name} expects mean {list(mean)} and std {list(std)}; "
              "splitstream normalises with ImageNet's (0.485,0.456,0.406 / 0.229,0.224,0.225), "
              "so its predictions will be off: prefer a checkpoint trained with ImageNet's "
              "(e.g. the deit_* models)", file=sys.stderr)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation != "bicubic":
        print(f"note: {args.model_name} was evaluated with {interpolation} resizing; "
              "splitstream resizes bicubic", file=sys.stderr)
    num_classes = model.num_classes
    names = class_names(model, args.labels_file, args.label_style)
    if names is not None and len(names) != num_classes:
        if args.labels_file:
            raise SystemExit(f"--labels-file has {len(names)} names, the model {num_classes} classes")
        names = None
        print("note: the ImageNet names do not match the classifier; none stored", file=sys.stderr)

    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    arch = args.model_name.split(".")[0]
    metadata = {
        "family": "vit",
        "arch": arch,
        "timm_model": args.model_name,
        "num_heads": str(model.blocks[0].attn.num_heads),
        "crop_pct": repr(float(cfg.get("crop_pct", 0.875))),
        "mean": json.dumps(list(mean)),
        "std": json.dumps(list(std)),
        "interpolation": str(interpolation),
        "num_classes": str(num_classes),
        "image_size": str(image_size),
        "weights": source,
        "timm_version": timm.__version__,
    }
    if names is not None:
        metadata["class_names"] = json.dumps(names, ensure_ascii=False)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    save_file(state, args.out, metadata=metadata)
    n_params = sum(v.numel() for v in state.values())
    print(
        f"{args.out}: {arch} ({source}), {n_params / 1e6:.2f} M parameters as {args.dtype}, "
        f"{len(state)} tensors, {num_classes} classes"
        + (f" named ({names[0]!r}, {names[1]!r}, ...)" if names and len(names) > 1 else "")
        + f", heads {metadata['num_heads']}, crop_pct {metadata['crop_pct']}, "
        f"{os.path.getsize(args.out) / 1e6:.1f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
