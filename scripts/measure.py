#!/usr/bin/env python
"""Run a command; then print its wall time and peak memory (largest RSS among its processes).

Usage: python scripts/measure.py -- COMMAND [ARGS...]
"""
import resource
import subprocess
import sys
import time


def main(argv):
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    start = time.time()
    rc = subprocess.call(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"[measure] exit {rc}, wall time {time.time() - start:.1f} s, "
          f"peak memory {peak_kib / 1024:.0f} MiB (largest process)", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
