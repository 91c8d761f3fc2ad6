#!/usr/bin/env python3
"""Write class names into a safetensors file's metadata, leaving its tensors untouched.

    python python/set_class_names.py MODEL.safetensors --labels-file classes.txt
    python python/set_class_names.py MODEL.safetensors --from-csv test/labels.csv

The names go under the metadata key ``class_names`` as a JSON list of strings, index
``i`` naming class ``i`` (docs/models.md), which ``splitstream infer``, ``evaluate``, the
demo and ``splitstream-device`` print beside class indices. Only the JSON header is
re-written: the tensor bytes that follow it are copied as they are, so the model's
outputs do not change (its SHA-256, the model id devices and the edge compare, does:
give both the new file). ``--from-csv`` reads a ``file,label,class`` CSV (as
assets/demo/test/labels.csv). Needs only the standard library.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import struct
import sys

MAX_HEADER = 100 << 20


def read(path: str) -> tuple[dict, bytes]:
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise SystemExit(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or 8 + n > len(blob):
        raise SystemExit(f"{path}: header length {n} does not fit the file")
    header = json.loads(blob[8 : 8 + n].decode("utf-8"))
    return header, blob[8 + n :]


def names_from_csv(path: str) -> list[str]:
    by_index: dict[int, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            i, name = int(row["label"]), row["class"].strip()
            if by_index.setdefault(i, name) != name:
                raise SystemExit(f"{path}: label {i} is both {by_index[i]!r} and {name!r}")
    if sorted(by_index) != list(range(len(by_index))):
        raise SystemExit(f"{path}: labels are not 0..{len(by_index) - 1}")
    return [by_index[i] for i in range(len(by_index))]


def names_from_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f.read().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise SystemExit(f"{path}: one non-blank class name per line expected")
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="the .safetensors file, re-written in place")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--labels-file", metavar="F", help="one class name per line")
    src.add_argument("--from-csv", metavar="F", help="a file,label,class CSV")
    ap.add_argument("-o", "--output", metavar="F", help="write here instead of in place")
    args = ap.parse_args()

    names = names_from_csv(args.from_csv) if args.from_csv else names_from_lines(args.labels_file)
    header, data = read(args.model)
    metadata = header.get("__metadata__") or {}
    classes = metadata.get("num_classes")
    if classes is not None and int(classes) != len(names):
        raise SystemExit(f"{len(names)} names, but the metadata says num_classes {classes}")
    metadata["class_names"] = json.dumps(names, ensure_ascii=False)
    # __metadata__ first, the tensors in their order: only the new key differs.
    out = {"__metadata__": metadata, **{k: v for k, v in header.items() if k != "__metadata__"}}
    text = json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned
    target = args.output or args.model
    tmp = target + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)
    os.replace(tmp, target)
    print(f"{target}: {len(names)} class names ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
