"""Peak memory and time of `haven synth` at several population sizes (issue #12: bounded memory).

    .venv/bin/python bench/synth_memory.py --persons 100000 300000 1000000 [--chunk 200000]

Runs `haven synth` once per size, one at a time, in a scratch directory that is removed
afterwards, and prints each run's wall time, peak resident memory (the child's own maximum RSS,
from wait4) and rows, with the load average before it (others may share the machine). With
chunked generation the peak should follow `--chunk`, not `--persons`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HAVEN = Path(sys.executable).with_name("haven")


def measure(persons: int, seed: int, chunk: int | None) -> dict[str, object]:
    """One `haven synth` run: seconds, peak RSS (MB) and rows written."""
    scratch = Path(tempfile.mkdtemp(prefix="synth-memory-"))
    command = [str(HAVEN), "synth", "--persons", str(persons), "--seed", str(seed),
               "--out", str(scratch / "out"), "--quiet"]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    load = os.getloadavg()[0]
    started = time.perf_counter()
    try:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        output = child.stdout.read().decode() if child.stdout else ""
        if status != 0:
            raise SystemExit(f"haven synth --persons {persons} failed:\n{output}")
        manifests = (scratch / "out").glob("*.manifest.json")
        rows = sum(json.loads(m.read_text())["rows"] for m in manifests)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"persons": persons, "chunk": chunk, "seconds": round(seconds, 1),
            "peak_rss_mb": usage.ru_maxrss // 1024, "rows": rows, "load_before": load}


def main(argv: list[str] | None = None) -> int:
    """Measure each size in turn and print one line per run (JSON with --json)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--persons", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--chunk", type=int, default=None,
                        help="persons per chunk (default: haven synth's own)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    for persons in args.persons:
        result = measure(persons, args.seed, args.chunk)
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(f"{persons:>10,} persons: {result['seconds']:>7} s, peak "
                  f"{result['peak_rss_mb']:>6,} MB, {result['rows']:,} rows "
                  f"(load {result['load_before']:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
