"""Landing equivalence: the same extracts, keys and batch size through two trees, value for value.

Optimising landing must not change what it keeps. This lands one set of extracts (a small
`haven synth` population, the landing benchmark's apc and social care generators, and an apc
copy with broken rows) through the tree under test and through a reference tree (a git
worktree of an earlier commit), each in a fresh process with a fresh data directory and the
same generated keys, then compares every landed table value for value:

- the landed Parquet of every extract (schema and values; the random extract id is replaced
  by the source and its landing order on both sides);
- receipts (status, counts, rejected rows, retention date, ignored columns);
- the extracts table (minus arrival times), rejected rows, the opt-out register;
- vault entries, decrypted (the nonces are random), with their key ids;
- audit actions, outcomes, record counts and details.

    git worktree add --detach /tmp/haven-base <commit>
    .venv/bin/python bench/landing_equivalence.py --base /tmp/haven-base \
        [--overlay linkage/landing governance/vault.py governance/store.py]

With `--overlay`, the tree under test is a copy of the reference tree with only the named
paths taken from this tree: other work in progress in this checkout (say, a new linkage
encoding) is left out of the comparison.

Exit status 0 when everything is equal; otherwise the first differences are printed.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import json
import os
import pickle
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r"""
import json, pickle, sys
from pathlib import Path
import pyarrow.parquet as pq
from sqlalchemy import select
tree, home, out = sys.argv[1], sys.argv[2], sys.argv[3]
inputs = [Path(p) for p in sys.argv[4:]]
import linkage.landing.land as land_module
assert land_module.__file__.startswith(tree), (land_module.__file__, tree)
import os
from governance import vault
from governance.schema import audit_log, extracts, optouts, rejected_rows
from governance.schema import vault as vault_table
from governance.settings import Settings
from pipeline.context import Context
from pipeline.land import land
settings = Settings.from_environ({**os.environ, "HAVEN_HOME": home})
ctx = Context(settings)
names = {}
receipts = []
for path in inputs:
    for receipt in land(ctx, path):
        names[receipt.extract_id] = f"{receipt.source}#{len(names)}"
        receipts.append(receipt.to_json())

def rename(value):
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {rename(k): rename(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rename(v) for v in value]
    return value

tables = {}
for extract_id, name in names.items():
    folder = settings.layout.extract(extract_id)
    if folder.exists():
        for file in sorted(folder.rglob("*.parquet")):
            table = pq.read_table(file)
            if "extract_id" in table.column_names:
                at = table.column_names.index("extract_id")
                import pyarrow as pa
                table = table.set_column(at, "extract_id", pa.array(
                    [rename(v) for v in table.column("extract_id").to_pylist()], pa.string()))
            tables[f"{name}/{file.relative_to(folder)}"] = table
with ctx.engine.connect() as connection:
    rows = [dict(r._mapping) for r in connection.execute(select(extracts))]
    for r in rows:
        r.pop("received_at")
    extract_rows = sorted(rename(rows), key=lambda r: r["extract_id"])
    rejects = sorted(rename([dict(r._mapping) for r in connection.execute(select(rejected_rows))]),
                     key=lambda r: (r["extract_id"], r["row"]))
    register = sorted(rename([dict(r._mapping) for r in connection.execute(select(optouts))]),
                      key=lambda r: (r["extract_id"], r["row"]))
    entries = [(r.person_id, r.key_id, r.vault_key_id)
               for r in connection.execute(select(vault_table).order_by(vault_table.c.person_id))]
    plain = vault.reveal(connection, ctx.keys, [e[0] for e in entries])
    vault_rows = [e + (plain[e[0]],) for e in entries]
    audits = [rename({"action": r.action, "outcome": r.outcome, "n_records": r.n_records,
                      "resource": r.resource, "detail": r.detail})
              for r in connection.execute(select(audit_log).order_by(audit_log.c.seq))]
with open(out, "wb") as handle:
    pickle.dump({"receipts": rename(receipts), "tables": tables, "extracts": extract_rows,
                 "rejected_rows": rejects, "optouts": register, "vault": vault_rows,
                 "audit": audits}, handle)
"""


def _write_manifest(path: Path, source: str, sender: str, rows: int) -> None:
    manifest = {"source": source, "sender": sender, "period_start": "2022-04-01",
                "period_end": "2026-03-31",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "rows": rows}
    path.with_name(path.name + ".manifest.json").write_text(json.dumps(manifest))


def broken_apc(source: Path, target: Path) -> None:
    """A copy of an apc extract with broken rows of several kinds (each must be rejected alike)."""
    with source.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0])
    breakages = [("admission_date", "2023-02-30"), ("date_of_birth", "not a date"),
                 ("nhs_number", "9990000001"), ("primary_diagnosis", "??"),
                 ("admission_method", "zz"), ("spell_id", rows[0]["spell_id"]),
                 ("postcode", "x" * 40), ("sex", "7"), ("nhs_number", " 999 000 0000 ")]
    for i, (name, value) in enumerate(breakages):
        for row in rows[10 + i::97][:25]:
            row[name] = value
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fields)
        writer.writeheader()
        writer.writerows(rows)
    _write_manifest(target, "apc", "RR8", len(rows))


def make_inputs(work: Path, persons: int, rows: int) -> list[Path]:
    """The extracts both trees land, in landing order."""
    import landing as bench_landing  # bench/landing.py's generators

    synth = work / "synth"
    if not synth.exists():
        subprocess.run([str(ROOT / ".venv/bin/haven"), "synth", "--persons", str(persons),
                        "--out", str(synth), "--quiet"], check=True, cwd=ROOT)
    extra = work / "extra"
    extra.mkdir(exist_ok=True)
    apc, social = extra / "bench_apc.csv", extra / "bench_social_care.csv"
    if not apc.exists():
        bench_landing.make_apc(apc, rows)
        bench_landing.make_social(social, rows // 4)
    broken = work / "broken_apc.csv"
    if not broken.exists():
        broken_apc(synth / "apc.csv", broken)
    return [synth, apc, social, broken]


def land_through(tree: Path, home: Path, out: Path, inputs: list[Path],
                 env: dict[str, str]) -> dict[str, Any]:
    """Land `inputs` through `tree` in a fresh process; what it kept, normalised."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/python"), "-c", CHILD, str(tree), str(home), str(out),
         *map(str, inputs)],
        cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
        check=False)
    if result.returncode != 0:
        raise SystemExit(f"landing through {tree} failed:\n{result.stderr[-3000:]}")
    with out.open("rb") as handle:
        return pickle.load(handle)


def differences(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two landings (empty when they are equal)."""
    found = []
    for part in ("receipts", "extracts", "rejected_rows", "optouts", "vault", "audit"):
        if base[part] != new[part]:
            count = f"{len(base[part])} vs {len(new[part])}"
            first = next((i for i, (a, b) in enumerate(zip(base[part], new[part], strict=False))
                          if a != b), min(len(base[part]), len(new[part])))
            found.append(f"{part}: differ ({count} entries; first at {first})")
    if sorted(base["tables"]) != sorted(new["tables"]):
        found.append(f"landed files differ: {sorted(base['tables'])} vs {sorted(new['tables'])}")
    for name in sorted(set(base["tables"]) & set(new["tables"])):
        a, b = base["tables"][name], new["tables"][name]
        if a.schema != b.schema:
            found.append(f"{name}: schema differs:\n{a.schema}\nvs\n{b.schema}")
        elif not a.equals(b):
            columns = [c for c in a.column_names if not a.column(c).equals(b.column(c))]
            found.append(f"{name}: values differ in {columns}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("/tmp/haven-base"),
                        help="the reference tree (a git worktree)")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the tree under test")
    parser.add_argument("--persons", type=int, default=3000)
    parser.add_argument("--rows", type=int, default=40_000,
                        help="rows of the benchmark's apc extract")
    parser.add_argument("--batch-rows", type=int, default=7_000,
                        help="landing batch size (small: many batches)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the inputs (kept and reused)")
    parser.add_argument("--overlay", nargs="*", default=None,
                        help="test a copy of --base with only these paths from --tree")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="haven-equivalence-"))
    work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(work, args.persons, args.rows)
    env = {**os.environ, "HAVEN_BATCH_ROWS": str(args.batch_rows), **{
        f"HAVEN_KEY_{p.upper()}": f"b1:{base64.b64encode(secrets.token_bytes(32)).decode()}"
        for p in ("pseudonym", "linkage", "vault", "release")}}
    env.pop("HAVEN_DATABASE_URL", None)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="haven-equivalence-homes-") as homes:
        tree_under_test = args.tree
        if args.overlay:
            tree_under_test = Path(homes) / "overlaid"
            shutil.copytree(args.base, tree_under_test, ignore=shutil.ignore_patterns(".git"))
            for name in args.overlay:
                source, target = args.tree / name, tree_under_test / name
                if source.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.copytree(source, target,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(source, target)
        for label, tree in (("base", args.base), ("new", tree_under_test)):
            runs[label] = land_through(tree.resolve(), Path(homes) / label,
                                       Path(homes) / f"{label}.pickle", inputs, env)
    base, new = runs["base"], runs["new"]
    rows = sum(t.num_rows for t in new["tables"].values())
    print(f"landed {len(new['receipts'])} extracts ({rows:,} rows, "
          f"{len(new['rejected_rows']):,} rejected, {len(new['vault']):,} vault entries, "
          f"{len(new['optouts'])} opt-outs) through {args.base} and {args.tree}"
          + (f" (only {', '.join(args.overlay)})" if args.overlay else ""))
    found = differences(base, new)
    for line in found:
        print("DIFFERENT", line)
    if found:
        raise SystemExit(1)
    print("equal: every landed table, receipt, reject, opt-out, vault entry (decrypted) and "
          "audit entry")


if __name__ == "__main__":
    main()
