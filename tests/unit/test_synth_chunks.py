"""The generator a chunk of persons at a time: memory bounded by the chunk, files still whole.

`generate(..., chunk=)` draws, renders and holds at most `chunk` persons at once and appends
their rows to the files. These tests hold what must survive the chunking: no step ever sees
more than a chunk of persons; NHS numbers, row ids and council client ids stay distinct across
chunks; manifests count and digest whole files; truth/ lines up with every row of every file;
the output is deterministic for a seed and chunk size; the population's statistics are those of
an unchunked run; and a population within one chunk gets exactly the files it always did.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from synth import extracts, generate, population
from synth.generator import chunk_sizes

PERSONS = 2500
CHUNK = 1000
LAST_CHUNK_FROM = PERSONS - chunk_sizes(PERSONS, CHUNK)[-1]     # the first id of the last chunk
ID_COLUMNS = {"apc.csv": "spell_id", "ae.csv": "attendance_id", "op.csv": "appointment_id",
              "community.csv": "contact_id"}


@pytest.fixture(scope="module")
def chunked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Three runs of one seed: in chunks of 1,000 (twice) and as a single chunk."""
    out = {}
    for name, chunk in (("chunked", CHUNK), ("again", CHUNK), ("whole", PERSONS)):
        folder = tmp_path_factory.mktemp(name)
        out[name] = (folder, generate(PERSONS, 4, folder, progress=False, chunk=chunk))
    return out


@pytest.fixture(scope="module")
def out(chunked: dict[str, tuple[Path, dict[str, Any]]]) -> Path:
    return chunked["chunked"][0]


@pytest.fixture(scope="module")
def frames(out: Path) -> dict[str, pd.DataFrame]:
    """Every extract as text with its truth row facts (person, NHS status) attached."""
    rows = pq.read_table(out / "truth" / "rows.parquet").to_pandas()
    result = {}
    for path in sorted(out.glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        truth = rows[rows["file"] == path.name].sort_values("row")
        assert truth["row"].tolist() == list(range(1, len(frame) + 1)), path.name
        frame["_person"] = truth["person"].to_numpy()
        frame["_nhs_status"] = truth["nhs_status"].astype(str).to_numpy()
        result[path.name] = frame
    return result


@pytest.fixture(scope="module")
def persons(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "truth" / "persons.parquet").to_pandas()


def test_no_step_holds_more_than_a_chunk_of_persons(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The population is built a chunk at a time, never whole; every person once."""
    built: list[int] = []
    real = population.build

    def spy(n: int, *args: Any, **kwargs: Any) -> population.Population:
        built.append(n)
        return real(n, *args, **kwargs)

    monkeypatch.setattr(population, "build", spy)
    summary = generate(PERSONS, 4, tmp_path, progress=False, chunk=CHUNK)
    assert summary["chunks"] == len(built) == 3
    assert max(built) <= CHUNK and sum(built) == PERSONS


def test_a_run_that_fails_part_way_leaves_no_manifest(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Files cut short by a failure in a later chunk carry no manifest to vouch for them."""
    real = population.build

    def fail_second(n: int, *args: Any, **kwargs: Any) -> population.Population:
        if kwargs.get("part", 0) == 1:
            raise MemoryError("chunk 1")
        return real(n, *args, **kwargs)

    monkeypatch.setattr(population, "build", fail_second)
    with pytest.raises(MemoryError):
        generate(PERSONS, 4, tmp_path, progress=False, chunk=CHUNK)
    assert (tmp_path / "apc.csv").stat().st_size > 0          # chunk 0 was written
    assert not list(tmp_path.glob("*.manifest.json"))
    assert not (tmp_path / "truth" / "meta.json").exists()


def test_chunk_sizes_are_even_and_never_over_the_chunk() -> None:
    assert chunk_sizes(2500, 1000) == [834, 833, 833]
    assert chunk_sizes(1_000_001, 200_000) == [166_667] * 5 + [166_666]
    assert chunk_sizes(10, 200_000) == [10]
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        chunk_sizes(10, 0)


def test_same_seed_and_chunk_give_identical_bytes(
        chunked: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    first, again = chunked["chunked"][0], chunked["again"][0]
    names = sorted(p.name for p in first.glob("*.csv*"))
    assert names == sorted(p.name for p in again.glob("*.csv*")) and len(names) >= 22
    for name in [*names, "truth/rows.parquet", "truth/persons.parquet", "truth/meta.json"]:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name


def test_one_chunk_is_the_unchunked_generator(tmp_path: Path) -> None:
    """A population within one chunk gets the files it always did: the first chunk draws on
    the streams an unchunked run always used (population.stream_rng)."""
    generate(300, 5, tmp_path / "one", progress=False, chunk=300)
    generate(300, 5, tmp_path / "default", progress=False)
    generate(300, 5, tmp_path / "split", progress=False, chunk=150)
    for name in ("apc.csv", "gp_patients.csv", "truth/persons.parquet"):
        assert (tmp_path / "one" / name).read_bytes() == \
            (tmp_path / "default" / name).read_bytes(), name
    assert (tmp_path / "split" / "apc.csv").read_bytes() != \
        (tmp_path / "one" / "apc.csv").read_bytes()
    first = np.random.default_rng([5, 11]).random(3)
    assert np.array_equal(population.stream_rng(5, 11).random(3), first)
    assert not np.array_equal(population.stream_rng(5, 11, 1).random(3), first)
    with pytest.raises(ValueError, match="part"):
        population.stream_rng(5, 11, -1)


def test_manifests_count_and_digest_whole_files(
        out: Path, chunked: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    summary = chunked["chunked"][1]
    assert {f["file"] for f in summary["files"]} == {p.name for p in out.glob("*.csv")}
    for path in out.glob("*.csv"):
        manifest = json.loads((out / f"{path.name}.manifest.json").read_text())
        data = path.read_bytes()
        header = data.split(b"\n", 1)[0] + b"\n"
        assert data.count(header) == 1, path.name          # one header, whatever the chunks
        assert manifest["sha256"] == hashlib.sha256(data).hexdigest(), path.name
        assert manifest["rows"] == data.count(b"\n") - 1 > 0, path.name
    meta = json.loads((out / "truth" / "meta.json").read_text())
    assert meta["persons"] == PERSONS
    assert meta["files"] == [f["file"] for f in summary["files"]]


def test_everyone_once_with_distinct_nhs_numbers(frames: dict[str, pd.DataFrame],
                                                 persons: pd.DataFrame) -> None:
    assert persons["person"].tolist() == list(range(PERSONS))
    assert persons["nhs_number"].nunique() == PERSONS
    gp = frames["gp_patients.csv"]
    assert sorted(gp["_person"]) == list(range(PERSONS))
    truth_nhs = persons.set_index("person")["nhs_number"]
    assert (gp["nhs_number"].to_numpy() == truth_nhs.loc[gp["_person"]].to_numpy()).all()


def test_truth_lines_up_with_every_row_of_every_chunk(frames: dict[str, pd.DataFrame],
                                                      persons: pd.DataFrame) -> None:
    """Each row's true person (truth/rows) carries the NHS number the row shows when valid:
    person ids of later chunks are offset, not restarted."""
    truth_nhs = persons.set_index("person")["nhs_number"]
    for name, frame in frames.items():
        valid = frame[frame["_nhs_status"] == "valid"]
        shown = valid["nhs_number"].str.replace(r"[ -]", "", regex=True).to_numpy()
        assert (shown == truth_nhs.loc[valid["_person"]].to_numpy()).all(), name
        assert frame["_person"].max() >= LAST_CHUNK_FROM or len(frame) < 50, name


def test_row_and_client_ids_distinct_across_chunks(frames: dict[str, pd.DataFrame]) -> None:
    for name, column in ID_COLUMNS.items():
        ids = frames[name][column]
        assert ids.is_unique, name
        assert ids.str.len().nunique() == 1, name
    for name in ("social_care_E08000035.csv", "social_care_E08000036.csv"):
        frame = frames[name]
        owners = frame.groupby("client_id")["_person"].nunique()
        assert (owners == 1).all(), f"{name}: a client id shared by two persons"
        assert frame["_person"].min() < CHUNK < LAST_CHUNK_FROM <= frame["_person"].max()


def test_chunked_population_keeps_the_statistics(
        chunked: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    """Rows per person in each source, deaths and the mean true risk match an unchunked run
    of the same size (they are different draws of the same population model)."""
    rows = {name: {f["file"]: f["rows"] for f in chunked[name][1]["files"]}
            for name in ("chunked", "whole")}
    for file in ("apc.csv", "ae.csv", "op.csv", "community.csv", "gp_events.csv",
                 "gp_medications.csv"):
        a, b = rows["chunked"][file], rows["whole"][file]
        assert abs(a - b) / b < 0.15, (file, a, b)
    assert rows["chunked"]["gp_patients.csv"] == rows["whole"]["gp_patients.csv"] == PERSONS
    truth = {name: pq.read_table(chunked[name][0] / "truth" / "persons.parquet").to_pandas()
             for name in ("chunked", "whole")}
    assert abs(truth["chunked"]["true_risk"].mean() - truth["whole"]["true_risk"].mean()) < 0.02
    assert abs(truth["chunked"]["died"].mean() - truth["whole"]["died"].mean()) < 0.02


def test_client_ids_run_out_with_a_clear_error() -> None:
    across = extracts.Across()
    rng = np.random.default_rng(1)
    first = across.client_ids("E08000035", 10, 6, rng)
    second = across.client_ids("E08000035", 10, 4, rng)
    assert sorted([*first, *second]) == list(range(10))
    with pytest.raises(ValueError, match="E08000035: 1 more client ids needed, only 0 of 10"):
        across.client_ids("E08000035", 10, 1, rng)


def test_numbers_must_match_the_chunk() -> None:
    with pytest.raises(ValueError, match="3 NHS numbers for 4 persons"):
        population.build(4, 1, numbers=np.array([9990000000, 9990000001, 9990000002]))


def test_chunked_files_land(landing: Any, out: Path) -> None:
    """Appended files land whole, and landing's rejections are exactly the truth's."""
    from linkage.landing.land import land_path

    rows = pq.read_table(out / "truth" / "rows.parquet").to_pandas()
    receipts = land_path(landing, out)
    assert len(receipts) == len(list(out.glob("*.csv")))
    for receipt in receipts:
        assert receipt.status == "landed", (receipt.file, receipt.reason)
        truth = rows[rows["file"] == receipt.file]
        assert receipt.counts["rejected"] == int(truth["required_blank"].sum()), receipt.file


def test_cli_takes_a_chunk_and_says_how_many(tmp_path: Path) -> None:
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from cli.synth_cmd import synth_command

    app = typer.Typer()
    app.command("synth")(synth_command)

    @app.callback()
    def _root() -> None:
        """Group so that `synth` is a subcommand, as under `haven`."""

    result = CliRunner().invoke(app, ["synth", "--persons", "250", "--chunk", "100", "--out",
                                      str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "in 3 chunk(s) of at most 100 persons" in result.output
    gp = pd.read_csv(tmp_path / "gp_patients.csv", dtype=str)
    assert len(gp) == 250 and gp["nhs_number"].is_unique
    result = CliRunner().invoke(app, ["synth", "--persons", "250", "--chunk", "0", "--out",
                                      str(tmp_path / "none")])
    assert result.exit_code != 0 and "--chunk" in result.output
