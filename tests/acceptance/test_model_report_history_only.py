"""#17 part 1 as a new user meets it: extracts that end at the reference date, `haven score`
there, `haven model report`. The report says the outcome year has not happened, shows the
back-test with figures, and its counts are the measured ones (not "0 events", not "0 opt-outs")."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from governance.keyed_hash import nhs_pseudonym
from governance.reidentify import normalise
from linkage.person_index import read_link_map
from pipeline.land import land
from pipeline.link import link
from pipeline.report import model_report, what_was_judged
from pipeline.score import score
from synth import generate


@pytest.mark.parametrize("backend", [""])  # one full pipeline run, on SQLite
def test_a_run_scored_where_the_data_end_reports_truthfully(haven, tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate(800, 5, out, progress=False)
    meta = json.loads((out / "truth" / "meta.json").read_text())
    end = dt.date.fromisoformat(meta["period_end"]) + dt.timedelta(days=1)  # 2026-04-01
    assert all(r.status == "landed" for r in land(haven, out))
    link(haven)
    with threadpool_limits(1):  # boosting's threads only spin on a shared machine
        run_id = score(haven, end).run_id
        path = model_report(haven, run_id, tmp_path / "report")
    text = path.read_text()
    assert "has not happened yet" in text[:text.index("## Model card")]
    assert f"{end.isoformat()} to {end.replace(year=end.year + 1).isoformat()}" in text
    assert "## Back-test evaluation: the year from" in text
    assert what_was_judged(path).startswith("back-test: the outcome year after the run has not")
    assert not re.search(r"\b0 events among", text)
    events = re.search(r"([\d,]+) events among ([\d,]+) persons", text)
    assert events and int(events.group(1).replace(",", "")) > 0
    assert re.search(r"- AUROC: 0\.\d{3} \(0\.\d{3} to 0\.\d{3}\)", text)
    # the counts, measured independently here
    links = read_link_map(haven.settings)
    people = links[links["source"] != "optouts"]
    scored = set(pd.read_parquet(haven.settings.layout.run(run_id).scores)["person_key"])
    assert f"Persons in the run's linked extracts: {people['person_key'].nunique():,}" in text
    unregistered = set(people["person_key"]) - set(
        people.loc[people["source"] == "gp_patients", "person_key"])
    assert f"(never scored): {len(unregistered):,}" in text
    assert f"- Scored: {len(scored):,}" in text
    probabilistic = people[(people["method"] == "probabilistic")
                           & people["person_key"].isin(scored)]
    assert (f"(no NHS number on it): {probabilistic['person_key'].nunique():,} "
            f"({len(probabilistic):,} records)") in text
    register = pd.read_csv(out / "optouts.csv", dtype=str)
    # in force: per person and type, the latest row dated by today, if it is an objection
    latest = register[register["effective_date"] <= dt.date.today().isoformat()].sort_values(
        "effective_date").drop_duplicates(["nhs_number", "optout_type"], keep="last")
    ndoo = latest[(latest["optout_type"] == "ndoo") & (latest["withdrawn"] == "N")]
    key = haven.keys.current("pseudonym")
    objecting = {nhs_pseudonym(key, normalise(n)) for n in ndoo["nhs_number"]}
    assert objecting  # the generator sends national opt-outs
    in_data = set(people.loc[people["person_id"].isin(objecting), "person_key"])
    assert re.search(rf"\| ndoo \| {len(objecting):,} \| {len(in_data):,} \| 0 \|", text)
    assert not in_data & scored
