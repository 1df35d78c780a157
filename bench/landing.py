"""Landing benchmark: rows per second, peak memory, and time relative to a plain pyarrow read.

Lands a 1,000,000-row `apc` extract and a 200,000-row `social_care` extract (with linkage
encodings), each in a fresh process so peak memory is its own, and reads the same files with
plain `pyarrow.csv.read_csv` (every column as text, as landing reads them) in the same run for
the ratio. A 500,000-row `apc` extract is landed too: peak memory for 500k and 1M rows shows
memory is bounded by a batch (a landing holds a few batches at once, each at one stage of its
pipeline: being read, checked and hashed, made into the landed form, written and sealed, plus
one waiting between stages; with the default 200,000-row batches an extract of fewer than
about 5 batches never fills the pipeline and peaks lower, so the 1M/500k ratio sits above 1
even when the bound holds: `--bound-rows N` lands an N-row extract too, to compare the peak
at 1M with a larger extract's). `land s` and `read s` time the work itself; `start s` is
the landing process's imports and set-up, and `ratio+st` the ratio with each side's start-up
included. `write s` writes the landed rows again as landing writes them (zstd Parquet, a
batch at a time) and nothing else, and `w ratio` is that to the read: a floor under the
landing's ratio that no checking or hashing can go below. Each measurement runs `--repeat`
times and the median is shown.

    .venv/bin/python bench/landing.py [--apc-rows N] [--social-rows N] [--keep DIR] [--repeat N]
        [--bound-rows N]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
FORENAMES = np.array(["Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Jack", "Mia",
                      "Jacob", "Ivy", "Noah", "Lily", "Charlie", "Grace", "Thomas", "Freya",
                      "Margaret", "William", "Elizabeth", "John", "Dorothy", "Peter", "Joan"])
SURNAMES = np.array(["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson",
                     "Davies", "Patel", "Robinson", "Wright", "Thompson", "Evans", "Walker",
                     "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke", "Khan"])


def nhs_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Valid 999-range NHS numbers, vectorised (check digit 10 redrawn)."""
    body = np.zeros((n, 9), dtype=np.int64)
    body[:, :3] = 9
    body[:, 3:] = rng.integers(0, 10, size=(n, 6))
    weights = np.arange(10, 1, -1)
    check = 11 - (body * weights).sum(axis=1) % 11
    check[check == 11] = 0
    bad = check == 10
    body[bad, 8] = (body[bad, 8] + 1) % 10
    check = 11 - (body * weights).sum(axis=1) % 11
    check[check == 11] = 0
    body[check == 10, 8] = (body[check == 10, 8] + 1) % 10
    check = 11 - (body * weights).sum(axis=1) % 11
    check[check == 11] = 0
    digits = np.concatenate([body, check[:, None]], axis=1)
    return _join_digits(digits)


def _join_digits(digits: np.ndarray) -> np.ndarray:
    as_bytes = (digits.astype(np.uint8) + ord("0")).tobytes()
    return np.frombuffer(as_bytes, dtype="S10").astype(str)


def dates(rng: np.random.Generator, n: int, start: str, days: int) -> np.ndarray:
    base = np.datetime64(start)
    return (base + rng.integers(0, days, n)).astype(str)


def postcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    letters = np.array(list("ABDEFGHJLNPQRSTUWXYZ"))
    district = np.char.add("LS", rng.integers(1, 30, n).astype(str))
    inward = np.char.add(rng.integers(0, 10, n).astype(str),
                         np.char.add(letters[rng.integers(0, 20, n)],
                                     letters[rng.integers(0, 20, n)]))
    return np.char.add(np.char.add(district, " "), inward)


def write(path: Path, source: str, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})
    pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest = {"source": source, "sender": "RR8" if source == "apc" else "E08000035",
                "period_start": "2022-04-01", "period_end": "2026-03-31", "sha256": digest,
                "rows": table.num_rows}
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest))


def make_apc(path: Path, rows: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    persons = nhs_numbers(rng, max(rows // 3, 10))
    nhs = persons[rng.integers(0, len(persons), rows)]
    nhs[rng.random(rows) < 0.01] = ""
    admit = dates(rng, rows, "2022-04-01", 1400)
    methods = np.array(["21", "22", "11", "12", "2A", "31", "81"])
    diagnoses = np.array(["J44.1", "I500", "E119", "N390", "R069", "S720", "I48", "F03"])
    write(path, "apc", {
        "spell_id": np.char.add("S", np.arange(rows).astype(str)),
        "nhs_number": nhs,
        "date_of_birth": dates(rng, rows, "1930-01-01", 30000),
        "sex": rng.choice(np.array(["1", "2"]), rows),
        "postcode": postcodes(rng, rows),
        "gp_practice_code": np.char.add("B860", rng.integers(10, 40, rows).astype(str)),
        "provider_code": np.full(rows, "RR8"),
        "admission_date": admit,
        "discharge_date": admit,
        "admission_method": methods[rng.integers(0, len(methods), rows)],
        "discharge_destination": np.full(rows, "19"),
        "primary_diagnosis": diagnoses[rng.integers(0, len(diagnoses), rows)],
        "secondary_diagnoses": np.full(rows, "I10;E119"),
        "primary_procedure": np.full(rows, ""),
    })


def make_social(path: Path, rows: int, seed: int = 2) -> None:
    rng = np.random.default_rng(seed)
    nhs = nhs_numbers(rng, rows)
    nhs[rng.random(rows) < 0.35] = ""
    write(path, "social_care", {
        "client_id": np.char.add("C", rng.integers(0, rows, rows).astype(str)),
        "nhs_number": nhs,
        "forename": FORENAMES[rng.integers(0, len(FORENAMES), rows)],
        "surname": SURNAMES[rng.integers(0, len(SURNAMES), rows)],
        "date_of_birth": dates(rng, rows, "1925-01-01", 25000),
        "sex": rng.choice(np.array(["1", "2"]), rows),
        "postcode": postcodes(rng, rows),
        "service_type": rng.choice(np.array(["home_care", "residential", "reablement"]), rows),
        "start_date": dates(rng, rows, "2022-04-01", 1400),
        "end_date": np.full(rows, ""),
        "weekly_cost": np.round(rng.gamma(2, 200, rows), 2).astype(str),
        "consent": np.where(rng.random(rows) < 0.03, "N", "Y"),
    })


CHILD = """
import json, resource, sys, time
from pathlib import Path
mode, path, home = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
if mode == "read":
    import pyarrow as pa, pyarrow.csv as pacsv
    names = [n.strip().strip('"') for n in path.open().readline().strip().split(",")]
    ready = time.perf_counter()
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}))
    rows = table.num_rows
elif mode == "write":  # the landed rows written again, as landing writes them: its floor
    import pyarrow as pa, pyarrow.parquet as pq
    from linkage.landing.land import _parquet_options
    landed = pq.read_table(next(Path(home).glob("extracts/*/rows.parquet")))
    ready = time.perf_counter()
    out = Path(home) / "rewritten.parquet"
    with pq.ParquetWriter(out, landed.schema, compression="zstd",
                          **_parquet_options(landed)) as writer:
        for batch in landed.to_batches(max_chunksize=200_000):
            writer.write_table(pa.Table.from_batches([batch]))
    rows = landed.num_rows
    out.unlink()
else:
    import os
    from pipeline.context import Context as Haven
    from governance.settings import Settings
    from linkage.landing.land import LandingContext, land_file
    settings = Settings.from_environ({**os.environ, "HAVEN_HOME": home})
    haven = Haven(settings)
    ready = time.perf_counter()
    receipt = land_file(LandingContext(settings, haven.engine, haven.keys), path)
    assert receipt.status == "landed", receipt.reason
    rows = receipt.counts["received"]
end = time.perf_counter()
# VmHWM belongs to this program alone; ru_maxrss can carry the parent's peak across fork/exec.
status = Path("/proc/self/status")
hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")] \
    if status.exists() else []
peak = (int(hwm[0].split()[1]) if hwm
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024
print(json.dumps({"rows": rows, "seconds": end - ready, "startup": ready - start,
                  "peak_mb": peak}))
"""


def measure(mode: str, path: Path, home: Path, env: dict[str, str]) -> dict:
    if mode != "write":
        shutil.rmtree(home, ignore_errors=True)  # every landing is a first landing
    result = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(home)],
                            env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} {path.name} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The run with the median time (times vary with the page cache and other load)."""
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apc-rows", type=int, default=1_000_000)
    parser.add_argument("--social-rows", type=int, default=200_000)
    parser.add_argument("--keep", type=Path, default=None)
    parser.add_argument("--bound-rows", type=int, default=0,
                        help="also land an apc extract of this many rows (say 2000000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each measurement; the median is shown")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="haven-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **{
        f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        for p in ("pseudonym", "linkage", "vault", "release")}}
    files = {
        "apc": (work / "apc.csv", make_apc, args.apc_rows),
        "apc_half": (work / "apc_half.csv", make_apc, args.apc_rows // 2),
        "social_care": (work / "social_care.csv", make_social, args.social_rows),
    }
    if args.bound_rows:
        files["apc_bound"] = (work / f"apc_{args.bound_rows}.csv", make_apc, args.bound_rows)
    for path, maker, rows in files.values():
        if not path.exists():
            maker(path, rows)
    print(f"{'extract':<14}{'rows':>10}{'land s':>9}{'rows/s':>11}{'read s':>9}"
          f"{'ratio':>8}{'start s':>9}{'ratio+st':>9}{'peak MB':>9}{'write s':>9}{'w ratio':>9}")
    results = {}
    for name, (path, _maker, _rows) in files.items():
        reads = [measure("read", path, work / f"home-{name}", env) for _ in range(args.repeat)]
        lands = [measure("land", path, work / f"home-{name}-{i}", env)
                 for i in range(args.repeat)]
        read = _median(reads)
        land = _median(lands)
        writes = [measure("write", path, work / f"home-{name}-{args.repeat - 1}", env)
                  for _ in range(args.repeat)]
        written = _median(writes)["seconds"]
        ratio = land["seconds"] / read["seconds"]
        with_start = ((land["seconds"] + land["startup"])
                      / (read["seconds"] + read["startup"]))
        results[name] = {"land": land, "read": read, "ratio": ratio}
        print(f"{name:<14}{land['rows']:>10,}{land['seconds']:>9.2f}"
              f"{land['rows'] / land['seconds']:>11,.0f}{read['seconds']:>9.2f}{ratio:>8.1f}"
              f"{land['startup']:>9.2f}{with_start:>9.1f}{land['peak_mb']:>9.0f}"
              f"{written:>9.2f}{written / read['seconds']:>9.1f}")
    half, full = results["apc_half"]["land"], results["apc"]["land"]
    print(f"peak memory {args.apc_rows:,} rows / {args.apc_rows // 2:,} rows: "
          f"{full['peak_mb'] / half['peak_mb']:.2f} (about 1 means bounded by a batch)")
    if args.bound_rows:
        bound = results["apc_bound"]["land"]
        print(f"peak memory {args.bound_rows:,} rows / {args.apc_rows:,} rows: "
              f"{bound['peak_mb'] / full['peak_mb']:.2f}")
    social = results["social_care"]["land"]
    print(f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])} (2 cores)")
    print("write s: the landed rows written again as landing writes them (zstd Parquet, "
          "batch by batch), alone; w ratio: that to the read (a floor of the landing's ratio)")
    print(f"targets: apc ratio <= 5 ({results['apc']['ratio']:.1f}); social_care >= 50,000 "
          f"rows/s ({social['rows'] / social['seconds']:,.0f})")


if __name__ == "__main__":
    main()
