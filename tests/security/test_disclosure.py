"""Disclosure: what each dissemination tier lets out, attacked the way a reader would.

Three tiers, each with its own promise: anonymous aggregates that may be published
(`GET /aggregates`); pseudonymised record-level data for analysts and named recipients
(`/risk/persons`, `/persons/{key}`, `POST /exports`); identifiable data only for a clinician
with a direct-care relationship (`/practices/{ods}/case-finding`, `/reidentify`). Each test
here attacks one promise on synthetic data and fails if the attack succeeds.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import math
import re
from collections import Counter

import numpy as np
import orjson
import pytest
from api_matrix import (
    OWN_PRACTICE,
    World,
    build_world,
    land_optout,
    score_rows,
    write_score_run,
)

from api.aggregates import publish, table
from api.scored_run import load_release
from governance.geography import Geography
from governance.suppression import Rule
from pipeline.serving import serving_run
from policies import POLICIES_DIR

TIERS = ("very_high", "high", "moderate", "low")
AGE_BANDS = ("0-17", "18-44", "45-64", "65-74", "75-84", "85+")
SEXES = ("1", "2")
CONDITIONS = ("COPD", "diabetes", "heart failure")
CONDITION_COUNTS = ("0", "1", "2", "3")  # up to the number of conditions
TIER_CHANGES = ("up", "same", "down", "new")


def tier_change(tier: str, previous: str | None) -> str:
    """Change of tier since the last run, as the aggregates count it."""
    if previous is None:
        return "new"
    now, before = TIERS.index(tier), TIERS.index(previous)  # higher tiers first
    return "up" if now < before else "same" if now == before else "down"


@pytest.fixture
def backend() -> str:
    """SQLite only: what is released does not depend on the database."""
    return ""


@pytest.fixture
def world(haven, tmp_path) -> World:
    return build_world(haven, tmp_path)


def geography_table() -> dict[str, tuple[str, str]]:
    """The published practice -> (PCN, locality) table, as a reader has it."""
    path = POLICIES_DIR / "geography.csv"
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {row["practice"]: (row["pcn"], row["locality"]) for row in csv.DictReader(lines)}


def six_practices() -> list[str]:
    """Six practices of two PCNs of the geography table (B86001-6 if there is none)."""
    table = geography_table()
    if not table:
        return [f"B8600{i}" for i in range(1, 7)]
    by_pcn: dict[str, list[str]] = {}
    for practice, (pcn, _) in sorted(table.items()):
        by_pcn.setdefault(pcn, []).append(practice)
    first, second = sorted(by_pcn)[:2]
    return by_pcn[first][:3] + by_pcn[second][:3]


def population(practices: list[str], seed: int = 11) -> list[dict]:
    """Synthetic persons: practice, tier, previous tier (None: new), age band, sex and
    conditions, drawn at random."""
    rng = np.random.default_rng(seed)
    people = []
    for practice in practices:
        for _ in range(int(rng.integers(40, 110))):
            people.append({
                "practice": practice,
                "tier": TIERS[rng.choice(4, p=[0.02, 0.06, 0.17, 0.75])],
                "previous_tier": None if rng.random() < 0.1
                else TIERS[rng.choice(4, p=[0.02, 0.06, 0.17, 0.75])],
                "age_band": AGE_BANDS[rng.choice(6, p=[0.2, 0.3, 0.25, 0.1, 0.1, 0.05])],
                "sex": SEXES[rng.integers(0, 2)],
                "conditions": [c for c, p in zip(CONDITIONS, (0.08, 0.12, 0.04), strict=True)
                               if rng.random() < p]})
    return people


def serve(world: World, people: list[dict], run_id: str = "score-disclosure") -> list[str]:
    """Make `people` the current run; returns their person keys."""
    keys = [f"P{n:020x}" for n in range(len(people))]
    rows = score_rows(keys, [p["practice"] for p in people])
    rng = np.random.default_rng(5)
    rows["probability"] = np.round(rng.uniform(0.001, 0.95, len(people)), 4)
    for column in ("tier", "previous_tier", "age_band", "sex"):
        rows[column] = [p[column] for p in people]
    rows["conditions"] = [";".join(p["conditions"]) for p in people]
    write_score_run(world.haven, rows, run_id=run_id,
                    when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    return keys


# -- the anonymous tier: published aggregates ------------------------------------------------
class Attacker:
    """Someone holding every answer the aggregate endpoint gave, who knows the practices, the
    geography table, the categories and the suppression rule, and solves for persons per
    (practice, tier, age band, sex, set of conditions, change of tier): non-negative integers
    that must fit every figure published (a shown count within its rounding, an omitted cell
    zero). The number of conditions follows from the set; a change of tier is one the tier
    allows (a very high person cannot have gone down, nor a low one up)."""

    def __init__(self, practices: list[str]) -> None:
        self.geography = geography_table()
        self.atoms = [atom for atom in itertools.product(
            practices, TIERS, AGE_BANDS, SEXES, range(1 << len(CONDITIONS)), TIER_CHANGES)
            if not (atom[1] == TIERS[0] and atom[5] == "down")
            and not (atom[1] == TIERS[-1] and atom[5] == "up")]
        self.rows: list[np.ndarray] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.targets: dict[bytes, tuple[np.ndarray, str]] = {}

    def unit(self, level: str, practice: str) -> str:
        if level == "practice":
            return practice
        pcn, locality = self.geography.get(practice, ("unknown", "unknown"))
        return pcn if level == "pcn" else locality

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Each atom's practice, PCN, locality, tier, age band and sex (and condition bits)."""
        if not hasattr(self, "_columns"):
            practices = [a[0] for a in self.atoms]
            self._columns = {
                "practice": np.array(practices),
                "pcn": np.array([self.unit("pcn", p) for p in practices]),
                "locality": np.array([self.unit("locality", p) for p in practices]),
                **{name: np.array([a[i] for a in self.atoms])
                   for i, name in ((1, "tier"), (2, "age_band"), (3, "sex"),
                                   (5, "tier_change"))},
                "condition_count": np.array([str(min(a[4].bit_count(), 4))
                                             for a in self.atoms]),
                "bits": np.array([a[4] for a in self.atoms])}
        return self._columns

    def has(self, condition: str) -> np.ndarray:
        return (self.columns["bits"] >> CONDITIONS.index(condition) & 1).astype(bool) \
            if condition in CONDITIONS else np.zeros(len(self.atoms), dtype=bool)

    def weights(self, labels: dict[str, str], filters: dict[str, list[str]],
                mentions: bool) -> np.ndarray:
        """How much each atom adds to a figure with these labels, under these filters."""
        columns = self.columns
        keep = np.ones(len(self.atoms), dtype=bool)
        for name, values in filters.items():
            if name == "condition":
                keep &= np.any([self.has(c) for c in values], axis=0)
            else:
                keep &= np.isin(columns[name], values)
        for name, value in labels.items():
            if name != "condition":
                keep &= columns[name] == value
        if "condition" in labels:
            return (keep & self.has(labels["condition"])).astype(float)
        if mentions:
            return keep * sum(self.has(c).astype(float) for c in CONDITIONS)
        return keep.astype(float)

    def read(self, answer: dict) -> None:
        by, filters = answer["by"], answer.get("filters", {})
        mentions = "condition" in by
        rounded = answer["rule"]["rounded_to"]
        low, high = (int(x) for x in answer["rule"]["suppressed"].split("-"))
        figures = [(cell, {d: cell[d] for d in by}) for cell in answer["cells"]]
        for name, entries in answer["margins"].items():
            figures += [(entry, {name: entry[name]}) for entry in entries]
        figures.append((answer["total"], {}))
        listed = {tuple(labels.get(d) for d in by) for _, labels in figures[:len(
            answer["cells"])]}
        vocabulary = {"tier": TIERS, "age_band": AGE_BANDS, "sex": SEXES,
                      "condition": CONDITIONS, "condition_count": CONDITION_COUNTS,
                      "tier_change": TIER_CHANGES}
        spaces = [vocabulary.get(d) or sorted({self.unit(d, a[0]) for a in self.atoms})
                  for d in by]
        for combination in itertools.product(*spaces):  # omitted cells are zero
            if combination not in listed:
                self.constrain(self.weights(dict(zip(by, combination, strict=True)),
                                            filters, mentions), 0, 0)
        for figure, labels in figures:
            weights = self.weights(labels, filters, mentions)
            if not weights.any():
                continue
            if figure["suppressed"]:
                self.targets.setdefault(weights.tobytes(), (weights, json.dumps(
                    {**labels, **{f"filter {k}": v for k, v in filters.items()}})))
                continue
            shown = figure["count"]
            values = [c for c in range(max(0, math.ceil(shown - rounded / 2)),
                                       math.ceil(shown + rounded / 2))
                      if not low <= c <= high]
            self.constrain(weights, min(values), max(values))

    def constrain(self, weights: np.ndarray, lower: float, upper: float) -> None:
        self.rows.append(weights)
        self.lower.append(lower)
        self.upper.append(upper)

    def solved(self, truth: np.ndarray, enough: int = 3) -> list[tuple[str, int]]:
        """Suppressed figures whose value every solution agrees on, up to `enough` of them
        (found exactly: integer programmes push the undecided figures up and down from the
        true persons, which fit)."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        matrix = np.array(self.rows)
        assert np.all(matrix @ truth >= np.array(self.lower))  # the true persons fit
        assert np.all(matrix @ truth <= np.array(self.upper))
        fits = LinearConstraint(matrix, self.lower, self.upper)
        n = len(self.atoms)
        box = Bounds(np.zeros(n), np.full(n, truth.sum()))
        targets = list(self.targets.values())
        forms = np.array([w for w, _ in targets])
        true_values = forms @ truth

        def moved(objective: np.ndarray, among: set[int]) -> set[int]:
            solution = milp(objective, constraints=fits, integrality=np.ones(n), bounds=box)
            assert solution.success
            values = forms @ solution.x
            return {t for t in among if abs(values[t] - true_values[t]) > 0.5}

        undecided = set(range(len(targets)))
        progress = True
        while undecided and progress:
            progress = False
            for sign in (-1.0, 1.0):
                free = moved(sign * forms[sorted(undecided)].sum(axis=0), undecided)
                undecided -= free
                progress = progress or bool(free)
        solved = []
        for t in sorted(undecided):
            if len(solved) < enough and not moved(forms[t], {t}) and not moved(-forms[t], {t}):
                solved.append((targets[t][1], int(true_values[t])))
        return solved


def test_suppressed_aggregates_cannot_be_solved_by_differencing(world: World) -> None:
    """Promise: no suppressed count of a published aggregate can be worked out from any
    number of aggregate answers (overlapping practice sets, filters, every table on every
    geography, conditions by name and by number, tiers with their change since the last run
    beside them)."""
    practices = six_practices()
    people = population(practices)
    serve(world, people)
    attacker = Attacker(practices)
    truth = np.zeros(len(attacker.atoms))
    position = {atom: i for i, atom in enumerate(attacker.atoms)}
    for p in people:
        bits = sum(1 << CONDITIONS.index(c) for c in p["conditions"])
        truth[position[(p["practice"], p["tier"], p["age_band"], p["sex"], bits,
                        tier_change(p["tier"], p["previous_tier"]))]] += 1
    queries = []
    for size in range(1, len(practices) + 1):  # every set of the six practices
        for chosen in itertools.combinations(practices, size):
            queries.append("by=tier&" + "&".join(f"practice={p}" for p in chosen))
    queries += ["by=practice&by=tier", "by=practice&by=age_band", "by=tier&by=sex",
                "by=tier&by=age_band", "by=tier&by=condition"]
    queries += [f"by=tier&practice={p}&sex={s}" for p in practices for s in SEXES]
    dimensions = ("tier", "age_band", "sex", "condition", "condition_count", "tier_change")
    queries += [f"by={d}&geography={g}" for d in dimensions
                for g in ("area", "locality", "pcn", "practice")]
    refused = 0
    for query in queries:
        response = world.call("analyst", "GET", f"/aggregates?{query}")
        if response.status_code != 200:
            refused += 1
            continue
        attacker.read(response.json())
    assert attacker.targets, "nothing was suppressed: the attack proves nothing"
    read = {json.dumps(sorted(set(json.loads(label)) - {"practice", "pcn", "locality"}))
            for _, label in attacker.targets.values()}
    for dimension in ("condition_count", "tier_change"):  # the new tables are attacked too
        assert json.dumps([dimension]) in read, f"nothing suppressed by {dimension}"
    solved = attacker.solved(truth)
    assert solved == [], f"suppressed figures solved (labels, true count): {solved}"
    assert refused >= 63 + 5 + 12  # practice sets, two dimensions and filters are refused


# -- the pseudonymised tier: exports for named recipients ------------------------------------
def release_policy() -> dict:
    """The shipped release rule (k, and the share of rows that may link one-to-one)."""
    path = POLICIES_DIR / "release.json"
    return json.loads(path.read_text()) if path.exists() else {"linkable_share": 0.0}


def export(world: World, recipient: str, **selection: object) -> list[dict]:
    made = world.call("super_user", "POST", "/exports",
                      json={"recipient": recipient, "format": "csv", **selection})
    assert made.status_code == 201, made.text
    got = world.call("super_user", "GET", f"/exports/{made.json()['export_id']}/file")
    return list(csv.DictReader(io.StringIO(got.text)))


def linked_one_to_one(a: list[dict], b: list[dict]) -> int:
    """Rows of `a` that join exactly one row of `b`, and it no other row of `a`, on every
    column the two files share (the recipient's pseudonym differs by design and is left out)."""
    shared = [c for c in a[0] if c in b[0] and c != "recipient_key"]
    left = Counter(tuple(row[c] for c in shared) for row in a)
    right = Counter(tuple(row[c] for c in shared) for row in b)
    return sum(1 for values, n in left.items() if n == 1 and right.get(values) == 1)


def test_two_recipients_exports_cannot_be_joined(world: World) -> None:
    """Promise: two recipients' exports of the same run do not link one-to-one on the
    columns they share beyond the share stated in policies/release.json (0)."""
    practice, other = six_practices()[:2]
    serve(world, population([practice] * 5 + [other] * 3, seed=3))
    policy = release_policy()
    pairs = [(export(world, "RR8", practice=practice), export(world, "RAJ", practice=practice)),
             (export(world, "RR8"), export(world, "RAJ", practice=practice)),
             (export(world, "RR8", tiers=["low", "moderate"]), export(world, "RAJ"))]
    for first, second in pairs:
        assert first and second, "an empty export proves nothing"
        share = linked_one_to_one(first, second) / len(first)
        shared = sorted(set(first[0]) & set(second[0]) - {"recipient_key"})
        assert share <= policy["linkable_share"], \
            f"{share:.0%} of rows link one-to-one on {shared}"
    for rows in (row for pair in pairs for row in pair):
        groups = Counter(tuple(v for c, v in row.items() if c != "recipient_key")
                         for row in rows)
        assert min(groups.values()) >= policy["k"]
        assert not {"reasons", "sources", "probability", "change"} & set(rows[0])


# -- small figures in other fields ------------------------------------------------------------
def test_one_late_opt_out_does_not_show_in_the_run_description(world: World) -> None:
    """Promise: one opt-out arriving after the run changes nothing `GET /runs/current` says to
    any role, so a single withdrawal (and, beside a list read before, whose) is not visible."""
    roles = ("analyst", "super_user", "mdt_clinician")
    before = {role: world.call(role, "GET", "/runs/current").json() for role in roles}
    land_optout(world, world.keys_in(OWN_PRACTICE)[0], "type1")  # every purpose but care
    after = {role: world.call(role, "GET", "/runs/current").json() for role in roles}
    assert after == before


EXACT_AGE = re.compile(r"\baged \d+\b(?![-+])")


def test_reasons_state_age_no_finer_than_the_age_band(world: World) -> None:
    """Promise: no role is shown a person's age finer than their age band, in a reason
    either: "aged 75-84", never "aged 84" (stored runs included)."""
    from stratify.catalogue import BY_NAME

    own = world.keys_in(OWN_PRACTICE)
    shown: list[str] = []
    for item in world.call("analyst", "GET", "/risk/persons?limit=500").json()["items"]:
        shown += item["reasons"]
    for item in world.call("mdt_clinician", "GET",
                           f"/practices/{OWN_PRACTICE}/case-finding?limit=500").json()["items"]:
        shown += item["reasons"]
    for key in own:
        for role in ("analyst", "mdt_clinician"):
            shown += world.call(role, "GET", f"/persons/{key}").json()["reasons"]
        fhir = world.call("mdt_clinician", "GET", f"/persons/{key}/fhir").json()
        shown += [note["text"] for note in fhir.get("note", [])]
    looked_up = world.call("mdt_clinician", "POST", "/reverse-lookup",
                           json={"nhs_numbers": [world.nhs[own[0]]], "reason": "mdt_review"})
    if looked_up.status_code == 200:
        shown += looked_up.json()["items"][0]["person"]["reasons"]
    for row in export(world, "RR8"):
        shown += list(row.values())
    assert any("aged" in reason for reason in shown), "no age was shown: nothing is tested"
    assert [r for r in shown if EXACT_AGE.search(r)] == []  # a run scored before: shown banded
    assert not EXACT_AGE.search(BY_NAME["age"].words(84.0))  # a run scored now: phrased banded


def test_one_recipient_s_own_exports_cannot_be_joined(world: World) -> None:
    """Promise: no two exports, of one recipient or two, share a recipient key, so a
    recipient cannot join its own exports (one per practice, one per tier, the whole run) to
    learn each row's practice and tier beside the coarsened columns; on the columns they
    share they link one-to-one on no more than the share stated in policies/release.json."""
    practice, other = six_practices()[:2]
    serve(world, population([practice] * 5 + [other] * 3, seed=3))
    policy = release_policy()
    files = [export(world, "RR8"), export(world, "RR8", practice=practice),
             export(world, "RR8", practice=other), export(world, "RR8", tiers=["low"]),
             export(world, "RR8", tiers=["moderate", "high", "very_high"])]
    files = [rows for rows in files if rows]
    assert len(files) >= 4, "too few non-empty exports: nothing is tested"
    for first, second in itertools.combinations(files, 2):
        keys = {row["recipient_key"] for row in first}
        joined = keys & {row["recipient_key"] for row in second}
        assert not joined, f"{len(joined)} recipient keys join two exports of one recipient"
        share = linked_one_to_one(first, second) / len(first)
        assert share <= policy["linkable_share"], f"{share:.0%} of rows link one-to-one"


# -- published tables over time: a late opt-out -----------------------------------------------
AGGREGATE_QUERIES = [f"by={by}&geography={level}" for by in (
    "tier", "age_band", "sex", "condition", "condition_count", "tier_change")
    for level in ("practice", "pcn", "locality", "area")]


def _all_tables(world: World) -> dict[str, bytes]:
    answers = {}
    for query in AGGREGATE_QUERIES:
        response = world.call("super_user", "GET", f"/aggregates?{query}")
        assert response.status_code == 200, (query, response.text)
        answers[query] = response.content
    return answers


def test_a_late_opt_out_changes_no_published_table_until_the_next_run(world: World) -> None:
    """Promise: published (anonymous) tables come from the run as it was scored, with the
    opt-outs in force then applied; one opt-out landing after it changes none of the 24 tables
    (so two answers read before and after it cannot single out who opted out), while the
    person leaves every record-level answer at once, and the next run's tables leave them
    out. (That a score run leaves out whoever an opt-out in force covers is held by
    test_optouts.py::test_scoring_applies_the_optouts_in_force_now_not_on_its_date.)"""
    haven = world.haven
    before = _all_tables(world)
    assert len(before) == 24
    # The attack: one person whose leaving moves some published figure (found the way the
    # tables were made before this promise: the run less whoever is withheld now).
    run = serving_run(haven.engine, "commissioning")
    assert run is not None and run.run_id == world.run_id
    base = load_release(haven.settings, run.run_id, run.summary)
    rule, places = Rule.load(engine=haven.engine), Geography.load(engine=haven.engine)

    def tables_without(keys: set[str]) -> dict[str, bytes]:
        published = publish(base.withholding("commissioning", keys), places, rule)
        out = {}
        for query in AGGREGATE_QUERIES:
            by, level = (part.split("=")[1] for part in query.split("&"))
            answer = {"run_id": run.run_id, **table(published, level, by)}
            out[query] = orjson.dumps(answer)
        return out

    assert tables_without(set()) == before  # the answers are these tables, byte for byte
    victim = next((k for k in sorted(world.practice) if tables_without({k}) != before), None)
    assert victim is not None, "no single person moves a table: the attack is not tried"
    assert world.call("super_user", "GET", f"/persons/{victim}").status_code == 200
    land_optout(world, victim, "ndoo")  # covers commissioning: analysts and super users
    assert world.call("super_user", "GET", f"/persons/{victim}").status_code == 404
    assert _all_tables(world) == before  # byte for byte, all 24
    # The next run (as `haven score` leaves it: without the person) is published without them.
    keys = sorted(k for k in world.practice if k != victim)
    # The first run's rows, rebuilt in its order (rank by row, not by the run's random keys).
    rows = score_rows(list(world.practice), list(world.practice.values()))
    rows = rows[rows["person_key"] != victim]
    newer = write_score_run(haven, rows, run_id="score-2025-04-01-next",
                            when=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    assert len(keys) == len(rows)
    after = _all_tables(world)
    assert after != before
    assert all(orjson.loads(a)["run_id"] == newer for a in after.values())
    expected = tables_without({victim})
    for query in AGGREGATE_QUERIES:
        if query.endswith("geography=area"):  # the same persons, counted from the new run
            shown = orjson.loads(after[query])
            assert {**shown, "run_id": run.run_id} == orjson.loads(expected[query]), query
