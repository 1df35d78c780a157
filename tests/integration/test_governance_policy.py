"""Policy tables an IG lead changes (checked, audited, in force at once) and suppression."""

from __future__ import annotations

import datetime as dt
import itertools
import random

import pandas as pd
import pytest
from sqlalchemy import func, select

from cli.main import main
from governance import optouts, policy_tables
from governance.audit import Actor
from governance.schema import audit_log, policy_overrides
from governance.suppression import Rule, suppress, suppress_grid, validate_rule
from policies import POLICIES_DIR

IG = Actor("ig.lead", "ig_lead", "X26", "governance")


def shipped(name: str) -> str:
    return (POLICIES_DIR / name).read_text(encoding="utf-8")


def environ(haven) -> dict[str, str]:
    return {"HAVEN_HOME": str(haven.settings.home),
            "HAVEN_DATABASE_URL": haven.settings.database_url, **haven.settings.key_env}


def test_a_changed_table_is_in_force_and_audited(haven):
    narrower = shipped("optout_purposes.csv").replace(
        "type1,case_finding,gp_patients;gp_events;gp_medications,all\n", "")
    changed = optouts.set_purposes(haven.engine, narrower, IG)
    assert changed["before"] != changed["after"]
    assert not any(r.optout_type == "type1" and r.purpose == "case_finding"
                   for r in optouts.coverage(haven.engine))
    assert policy_tables.reset_policy(haven.engine, "optout_purposes.csv", IG)
    assert not policy_tables.reset_policy(haven.engine, "optout_purposes.csv", IG)
    assert len(optouts.coverage(haven.engine)) == len(optouts.coverage())
    with haven.engine.connect() as connection:
        entries = connection.execute(select(audit_log.c.action, audit_log.c.actor,
                                            audit_log.c.detail)).all()
    assert [(a, u) for a, u, _ in entries] == [("policy_table.change", "ig.lead"),
                                               ("policy_table.reset", "ig.lead")]
    assert entries[0].detail == {"before": changed["before"], "after": changed["after"]}


@pytest.mark.parametrize("name, content, message", [
    ("nothing.csv", "a\n", "no policy table"),
    ("casbin_policy.csv", "p\n", "no policy table"),
    ("retention.csv", "source,months\napc,1\n", "header must be"),
    ("retention.csv", "source,retain_months,basis\napc,1,nhs 9434765919\n", "10-digit"),
    ("retention.csv", shipped("retention.csv").replace("apc,36", "apc,three"), "whole number"),
    ("retention.csv", "source,retain_months,basis\napc,1,x\n", "no row for"),
    # The national minimum stays, whoever edits the table (red team R7).
    ("optout_purposes.csv", shipped("optout_purposes.csv").replace(
        "ndoo,commissioning,*,all\n", ""), r"must keep ndoo over \* for commissioning"),
    ("optout_purposes.csv", shipped("optout_purposes.csv").replace(
        "type1,research,gp_patients;gp_events;gp_medications,all\n",
        "type1,research,gp_events,all\n"), "must keep type1 over gp_events;gp_medications"),
    ("optout_purposes.csv", shipped("optout_purposes.csv").replace(
        "consent_withdrawn,emergency_planning,social_care,sender\n", ""),
     "must keep consent_withdrawn over social_care for emergency_planning"),
    ("suppression.json", "{", "not valid JSON"),
    ("suppression.json", "[1]", "JSON object"),
    ("suppression.json", '{"suppress_from": 0}', "suppress_from"),
    ("suppression.json", '{"round_to": "five"}', "invalid literal"),
    ("geography.csv", "practice,pcn,locality\nB86001,P1,L1\nB86001,P2,L1\n", "twice"),
    ("release.json", shipped("release.json").replace('"k": 10', '"k": 1'), "at least 2"),
    ("optout_purposes.csv", "optout_type,purpose,sources,scope\ntype2,research,*,all\n",
     "unknown opt-out type"),
    ("optout_purposes.csv", "optout_type,purpose,sources,scope\nndoo,marketing,*,all\n",
     "unknown purpose"),
    ("optout_purposes.csv", "optout_type,purpose,sources,scope\nndoo,research,*,some\n",
     "scope must be"),
    ("optout_purposes.csv", "optout_type,purpose,sources,scope\nndoo,research,;,all\n",
     "name the sources"),
    ("optout_purposes.csv", "optout_type,purpose,sources,scope\nndoo,research,gp,all\n",
     "unknown source 'gp'"),
])
def test_a_table_that_would_not_work_is_refused(haven, name, content, message):
    with pytest.raises(ValueError, match=message):
        policy_tables.set_policy(haven.engine, name, content, IG)
    with haven.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(policy_overrides)) == 0


def test_policy_commands(haven, tmp_path, capsys):
    env = environ(haven)
    assert main(["policy", "list"], env) == 0
    assert capsys.readouterr().out.split() == ["drift.json", "geography.csv",
                                               "incidents.json", "optout_purposes.csv",
                                               "optout_senders.csv",
                                               "release.json", "retention.csv",
                                               "segments.csv", "suppression.json",
                                               "unit_costs.csv"]
    stricter = tmp_path / "suppression.json"
    stricter.write_text('{"suppress_from": 1, "suppress_to": 9, "round_to": 10}')
    assert main(["policy", "set", "suppression.json", str(stricter)], env) == 0
    assert "change audited" in capsys.readouterr().out
    assert main(["policy", "show", "suppression.json"], env) == 0
    assert '"suppress_to": 9' in capsys.readouterr().out
    assert Rule.load(engine=haven.engine) == Rule(1, 9, 10, "*")
    assert main(["policy", "reset", "suppression.json"], env) == 0
    assert "shipped table restored" in capsys.readouterr().out
    assert main(["policy", "reset", "suppression.json"], env) == 0
    assert "already the shipped table" in capsys.readouterr().out
    assert Rule.load(engine=haven.engine) == Rule()
    assert main(["policy", "set", "suppression.json", str(tmp_path / "missing")], env) == 2
    assert main(["policy", "show", "keys.json"], env) == 2
    assert main(["policy", "reset", "keys.json"], env) == 2


def test_the_suppression_rule():
    rule = Rule.load()
    assert rule == Rule(1, 7, 5, "*")
    assert [rule.show(n) for n in (0, 1, 7, 8, 12, 13, 22, 23)] == [
        0, "*", "*", 10, 10, 15, 20, 25]
    assert Rule(1, 7, 10).show(15) == 20 and Rule(1, 7, 10).show(25) == 30  # halves up
    assert rule.show(12, national=True) == 12
    assert Rule.from_json({"suppress_min": 1, "suppress_max": 9}) == Rule(1, 9, 5)
    assert Rule.load('{"suppress_to": 9, "symbol": "~"}') == Rule(1, 9, 5, "~")
    validate_rule(shipped("suppression.json"))
    with pytest.raises(ValueError, match="not valid JSON"):
        validate_rule("{")


def test_a_table_without_a_check_of_its_own_passes_the_common_ones(haven, monkeypatch):
    monkeypatch.delitem(policy_tables.VALIDATORS, "retention.csv")
    policy_tables.set_policy(haven.engine, "retention.csv", "source,retain_months,basis\n", IG)
    assert policy_tables.read_table("retention.csv", haven.engine) == []


def solvable(true: dict, shown: dict, groups: list) -> list:
    """Equations total = sum(parts) with exactly one hidden figure: each could be solved."""
    return [(total, parts) for total, parts in groups
            if sum(shown[k] == "*" for k in (*parts, total)) == 1]


def grid_equations(table: pd.DataFrame, grid) -> tuple[dict, list]:
    shown = {("cell", r, c): grid.cells.loc[r, c] for r in table.index for c in table.columns}
    shown.update({("row", r): grid.rows[r] for r in table.index})
    shown.update({("col", c): grid.columns[c] for c in table.columns})
    shown[("total",)] = grid.total
    groups = [(("row", r), [("cell", r, c) for c in table.columns]) for r in table.index]
    groups += [(("col", c), [("cell", r, c) for r in table.index]) for c in table.columns]
    groups += [(("total",), [("row", r) for r in table.index]),
               (("total",), [("col", c) for c in table.columns])]
    return shown, groups


def test_no_hidden_figure_can_be_solved_for_from_the_totals():
    rng = random.Random(7)
    rule = Rule()
    for trial in range(200):
        rows, cols = rng.randint(1, 5), rng.randint(1, 5)
        table = pd.DataFrame([[rng.choice([0, 0, 1, 3, 6, 8, 12, 40, 200]) for _ in range(cols)]
                              for _ in range(rows)], index=[f"r{i}" for i in range(rows)],
                             columns=[f"c{j}" for j in range(cols)])
        grid = suppress_grid(table, rule)
        shown, groups = grid_equations(table, grid)
        assert solvable({}, shown, groups) == [], (trial, table)
        for (r, c) in itertools.product(table.index, table.columns):
            if 1 <= table.loc[r, c] <= 7:
                assert grid.cells.loc[r, c] == "*"
            elif grid.cells.loc[r, c] != "*":
                assert abs(grid.cells.loc[r, c] - table.loc[r, c]) <= 2
    shown = suppress({"a": 3, "b": 120, "c": 41})
    assert shown == {"a": "*", "b": 120, "c": "*", "total": 165}
    assert suppress({"a": 3, "b": 0}) == {"a": "*", "b": 0, "total": "*"}
    assert suppress({"only": 40}) == {"only": 40, "total": 40}


def test_a_stricter_override_changes_the_opt_out_report(haven):
    policy_tables.set_policy(haven.engine, "suppression.json",
                             '{"suppress_from": 1, "suppress_to": 30, "round_to": 5}', IG)
    report = optouts.optouts_report(haven.engine, dt.date(2024, 1, 1))
    assert report["rule"]["suppressed"] == "1-30"
    assert set(report["by_type"].values()) == {0}
