#!/usr/bin/env python3
"""Peer side of `splitstream-bench events`: decode the same files with expelliarmus
(C core) and print one JSON object per line.

    python3 python/bench_expelliarmus.py --runs 7 evt3:/path/a.raw evt2:/path/b.raw
    python3 python/bench_expelliarmus.py --rss evt3:/path/long.raw

Each file is read whole with `Wizard(encoding).read(path)` (expelliarmus's own
whole-file path, its fastest); a run repeats that until `--min-time` has passed, and
the median of the runs gives the rate. With
`--rss` the file is read once and the process's peak resident memory is reported.
Requires `pip install expelliarmus`.
"""

import argparse
import json
import resource
import statistics
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="ENCODING:PATH, encoding evt2, evt3 or dat")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds per run, at least: a run repeats the read (the samples decode in milliseconds)")
    parser.add_argument("--rss", action="store_true", help="read once, report peak RSS")
    parser.add_argument("--buff-size", type=int, default=65536,
                        help="expelliarmus read buffer in events (its default is 4096; 65536 was fastest here)")
    args = parser.parse_args()
    try:
        import expelliarmus  # noqa: F401
        from expelliarmus import Wizard
    except ImportError as err:
        print(json.dumps({"error": f"expelliarmus is not installed ({err}): pip install expelliarmus"}))
        return 2
    version = getattr(expelliarmus, "__version__", "unknown")
    for spec in args.files:
        encoding, _, path = spec.partition(":")
        wizard = Wizard(encoding=encoding, buff_size=args.buff_size)
        if args.rss:
            arr = wizard.read(path)
            peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(json.dumps({"file": path, "encoding": encoding, "events": int(len(arr)), "peak_rss_mib": peak_kib / 1024.0}))
            continue
        times = []
        events = 0
        wizard.read(path)  # warm the page cache and the library
        for _ in range(max(1, args.runs)):
            start = time.perf_counter()
            reps = 0
            while True:
                arr = wizard.read(path)
                events = int(len(arr))
                del arr
                reps += 1
                elapsed = time.perf_counter() - start
                if elapsed >= args.min_time:
                    break
            times.append(elapsed / reps)
        median = statistics.median(times)
        print(json.dumps({
            "file": path,
            "encoding": encoding,
            "events": events,
            "runs": len(times),
            "median_s": median,
            "mev_per_s": events / median / 1e6 if median > 0 else None,
            "buff_size": args.buff_size,
            "expelliarmus": version,
        }))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
