#!/usr/bin/env python3
"""AEDAT 4 peer of `splitstream-bench events`: decode the same files with iniVation's
own reader, dv-processing (C++ core), and print one JSON object per line.

    python3 python/bench_dv_processing.py --runs 7 /path/a.aedat4 /path/b.aedat4

Each run opens the file with `dv.io.MonoCameraRecording` and pulls every event batch
with `getNextEventBatch()` until it returns None, as a dv-processing user reads a
recording; a run repeats that until `--min-time` has passed (small files decode in a
few milliseconds), and the median of the runs gives the rate. Timing includes the open
(header and description parsing), as ours does. Requires `pip install dv-processing`.
"""

import argparse
import json
import statistics
import sys
import time


def decode(dv, path):
    reader = dv.io.MonoCameraRecording(path)
    events = 0
    while True:
        batch = reader.getNextEventBatch()
        if batch is None:
            break
        events += len(batch)
    return events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="AEDAT 4 files")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per run, at least")
    args = parser.parse_args()
    try:
        import dv_processing as dv
    except ImportError as err:
        print(json.dumps({"error": f"dv-processing is not installed ({err}): pip install dv-processing"}))
        return 2
    try:
        from importlib.metadata import version

        peer_version = version("dv-processing")
    except Exception:  # the version is a label only
        peer_version = "unknown"
    for path in args.files:
        try:
            decode(dv, path)  # warm the page cache and the library
            times = []
            events = 0
            for _ in range(max(1, args.runs)):
                start = time.perf_counter()
                reps = 0
                while True:
                    events = decode(dv, path)
                    reps += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= args.min_time:
                        break
                times.append(elapsed / reps)
        except Exception as err:  # one unreadable file must not hide the others
            print(json.dumps({"file": path, "error": f"dv-processing cannot read it: {err}"}))
            continue
        median = statistics.median(times)
        print(json.dumps({
            "file": path,
            "events": events,
            "runs": len(times),
            "median_s": median,
            "mev_per_s": events / median / 1e6 if median > 0 else None,
            "dv_processing": peer_version,
        }))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
