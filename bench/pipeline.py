"""Pipeline benchmark: every stage as its own process through the public command line.

    .venv/bin/python bench/pipeline.py --persons 100000 [--work DIR] [--keep]

Runs `haven synth`, `haven land`, `haven link`, `haven score --at DATE` (the synthetic
population's own score date), `haven model report`, and `haven journeys --at DATE`,
`haven costs --year YEAR` (DATE's year) and `haven segments --at DATE` when the command line
has them, each as a fresh process on a fresh
HAVEN_HOME with generated keys, and prints one row per stage: wall time, the peak of the
whole process tree's resident memory (the stage and every child it starts, summed, sampled
every 0.1 s from /proc), and the largest single process's peak (`/usr/bin/time -v`, which
catches spikes shorter than a sample). The load average before and after is printed too:
other work on the machine slows every stage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HAVEN = ROOT / ".venv" / "bin" / "haven"
OPTIONAL = ("journeys", "costs", "segments")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Stage:
    """One stage's measurements."""

    name: str
    seconds: float
    tree_peak_mb: float
    process_peak_mb: float
    status: int
    last_line: str
    output: str = ""


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def _tree_rss_kb(root: int) -> int:
    """Resident memory of `root` and all its descendants, in KB."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_stage(name: str, argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> Stage:
    """Run one command under /usr/bin/time -v, sampling its process tree's memory."""
    with tempfile.NamedTemporaryFile(prefix="haven-time-", suffix=".txt") as report:
        start = time.perf_counter()
        process = subprocess.Popen(["/usr/bin/time", "-v", "-o", report.name, *argv], env=env,
                                   cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        peak = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss_kb(process.pid))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output, _ = process.communicate()
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        text = Path(report.name).read_text()
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return Stage(name, seconds, peak[0] / 1024, int(found.group(1)) / 1024 if found else 0.0,
                 process.returncode, lines[-1][:100] if lines else "", output)


def available_commands(env: dict[str, str]) -> set[str]:
    """The top-level commands `haven --help` lists."""
    result = subprocess.run([str(HAVEN), "--help"], env=env, capture_output=True, text=True,
                            check=False)
    return set(re.findall(r"^│ (\w[\w-]*)\s", result.stdout, flags=re.MULTILINE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None,
                        help="working folder (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the working folder (with the generated keys in keys.env, "
                             "mode 0600, so stages can be run again by hand)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--until", default=None,
                        help="stop after this stage (e.g. link: on a shared machine the "
                             "later stages may not fit beside other work)")
    parser.add_argument("--resume", default=None, metavar="STAGE",
                        help="land, link or score: go on from this stage on the home a run "
                             "with --work left (its keys.env); earlier stages are not run")
    parser.add_argument("--tree", type=Path, default=ROOT,
                        help="the source tree to run (e.g. a clean worktree of a commit; this "
                             "checkout's .venv runs it)")
    args = parser.parse_args()
    if args.resume and args.work is None:
        parser.error("--resume needs the --work folder of an earlier run")
    work = args.work or Path(tempfile.mkdtemp(prefix="haven-pipeline-"))
    inbound, home = work / "extracts", work / "home"
    if args.resume:  # the earlier run's home and keys
        env = {**os.environ, "HAVEN_HOME": str(home), **dict(
            line.removeprefix("export ").split("=", 1)
            for line in (work / "keys.env").read_text().splitlines() if "=" in line)}
    else:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(inbound, ignore_errors=True)
        env = {**os.environ, "HAVEN_HOME": str(home), **{
            f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
            for p in ("pseudonym", "linkage", "vault", "release")}}
    if not args.resume and (args.work is not None or args.keep):  # to run stages again by hand
        keys_file = work / "keys.env"
        keys_file.parent.mkdir(parents=True, exist_ok=True)
        keys_file.touch(mode=0o600)
        keys_file.write_text("".join(f"export {k}={v}\n" for k, v in env.items()
                                     if k.startswith("HAVEN_KEY_")))
    env.pop("HAVEN_DATABASE_URL", None)
    env.pop("HAVEN_SETTINGS", None)
    tree = args.tree.resolve()
    if tree != ROOT:
        env["PYTHONPATH"] = str(tree)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    stages: list[Stage] = []

    order = ["synth", "land", "link", "score"]  # later stages need the score run it names
    skipped = set(order[:order.index(args.resume)]) if args.resume in order else set()
    if args.resume and args.resume not in order:
        parser.error(f"--resume must be one of {', '.join(order)}")

    def stage(name: str, *argv: str) -> Stage:
        if args.until and any(s.name == args.until for s in stages):
            return Stage(name, 0.0, 0.0, 0.0, 0, "not run (--until)")
        if name in skipped:  # run before, by the run being resumed
            return Stage(name, 0.0, 0.0, 0.0, 0, "", "")
        result = run_stage(name, [str(HAVEN), *argv], env, tree)
        stages.append(result)
        print(f"  {name}: {result.seconds:.1f} s, {result.tree_peak_mb:,.0f} MB "
              f"(exit {result.status}) {result.last_line}", file=sys.stderr, flush=True)
        if result.status:
            print(result.output[-3000:], file=sys.stderr)
        return result

    synth = stage("synth", "synth", "--persons", str(args.persons), "--seed", str(args.seed),
                  "--out", str(inbound), "--quiet")
    if synth.status == 0 and (inbound / "truth" / "meta.json").exists():
        meta = json.loads((inbound / "truth" / "meta.json").read_text())
        stage("land", "land", str(inbound))
        stage("link", "link")
        scored = stage("score", "score", "--at", str(meta["score_date"]))
        # The run is a candidate's until someone approves the model: name it.
        run = re.search(r"score run (\S+):", scored.output)
        stage("model report", "model", "report", "--out", str(work / "report"),
              *(["--run", run.group(1)] if run else []))
        commands = available_commands(env)
        at = str(meta["score_date"])
        # Their options: the score date; costs take the financial year that starts in its year.
        options = {"journeys": ["--at", at], "costs": ["--year", at[:4]],
                   "segments": ["--at", at]}
        for name in OPTIONAL:
            if name in commands:
                stage(name, name, *options[name])
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\n{args.persons:,} persons ({tree}); load average before {' '.join(load_before)}, "
          f"after {' '.join(load_after)} (2 cores)")
    print("| stage | wall s | peak RSS, process tree (MB) | largest process (MB) | exit |")
    print("|---|---:|---:|---:|---:|")
    if args.until:
        print(f"(stages after {args.until} not run)")
    for s in stages:
        print(f"| {s.name} | {s.seconds:.1f} | {s.tree_peak_mb:,.0f} | "
              f"{s.process_peak_mb:,.0f} | {s.status} |")
    total = sum(s.seconds for s in stages)
    print(f"| all | {total:.1f} | {max(s.tree_peak_mb for s in stages):,.0f} | "
          f"{max(s.process_peak_mb for s in stages):,.0f} | |")
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in s.__dict__.items() if k != "output"}
                                         for s in stages], indent=1))
    if not args.keep and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    if any(s.status for s in stages):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
