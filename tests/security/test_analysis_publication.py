"""Promise: no suppressed figure of an analysis's published tables (journeys, costs, segments)
can be worked out from all the figures shown together: the totals tables share, the PCN sums
of practices, and spend published beside counts (pipeline.analysis_tables)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from governance.suppression import Rule, exposed
from pipeline.analysis_tables import TOTAL, publication_system, publish_grids, spend_beside

RULE = Rule()


def grid(rows: str, cols: str, values: list[list[int]], row_labels: list[str],
         col_labels: list[str]) -> pd.DataFrame:
    table = pd.DataFrame(values, index=pd.Index(row_labels, name=rows),
                         columns=pd.Index(col_labels, name=cols))
    table.columns.name = cols
    return table


def tables(seed: int) -> dict[str, pd.DataFrame]:
    """Discharges by pathway against practices, PCNs and months: small counts everywhere,
    every table the same population."""
    rng = np.random.default_rng(seed)
    pathways = ["pathway_0", "pathway_1", "pathway_2", "pathway_3"]
    practices = ["A1", "A2", "B1", "B2"]
    cells = rng.integers(0, 14, (4, 4))
    cells[0] += 30
    by_practice = grid("pathway", "practice", cells.tolist(), pathways, practices)
    by_pcn = grid("pathway", "pcn", np.stack([cells[:, :2].sum(1), cells[:, 2:].sum(1)],
                                             axis=1).tolist(), pathways, ["A", "B"])
    months = np.zeros((4, 3), dtype=int)
    for r, total in enumerate(cells.sum(1)):
        split = rng.multinomial(total, [0.5, 0.3, 0.2])
        months[r] = split
    by_month = grid("pathway", "month", months.tolist(), pathways, ["m1", "m2", "m3"])
    return {"by_practice": by_practice, "by_pcn": by_pcn, "by_month": by_month}


PARENTS = {"practice": ("pcn", {"A1": "A", "A2": "A", "B1": "B", "B2": "B"})}


def hidden_keys(published: dict[str, pd.DataFrame], true_tables: dict[str, pd.DataFrame]
                ) -> set:
    """The published figures shown as the symbol, as keys of the publication system."""
    out = set()
    for name, frame in published.items():
        rd, cd = true_tables[name].index.name, true_tables[name].columns.name
        for r in frame.index:
            for c in frame.columns:
                if frame.at[r, c] != RULE.symbol:
                    continue
                if r == TOTAL and c == TOTAL:
                    out.add(("total",))
                elif r == TOTAL:
                    out.add(("margin", cd, c))
                elif c == TOTAL:
                    out.add(("margin", rd, r))
                else:
                    out.add(("cell", rd, r, cd, c))
    return out


def test_no_hidden_figure_is_fixed_by_everything_shown() -> None:
    for seed in range(6):
        true_tables = tables(seed)
        published = publish_grids(true_tables, RULE, PARENTS)
        true, groups = publication_system(true_tables, PARENTS)
        hidden = hidden_keys(published, true_tables)
        small = {k for k, v in true.items() if RULE.hides(v)}
        assert small <= hidden, seed                      # every count of 1-7 hidden
        assert not exposed(true, groups, hidden), seed    # and none solvable from the rest
        # a total shared by tables is one figure: shown, or hidden, in every table alike
        rows = {name: frame[TOTAL] for name, frame in published.items()}
        assert rows["by_practice"].equals(rows["by_pcn"])
        assert rows["by_practice"].equals(rows["by_month"])


def test_spend_is_shown_only_beside_a_shown_count() -> None:
    persons = pd.Series({"frailty": 3, "healthy": 40, "acutely_ill": 12})
    counts = grid("segment", "measure", [[3], [40], [12]], list(persons.index), ["persons"])
    shown = publish_grids({"persons": counts}, RULE)["persons"]["persons"]
    spend = pd.Series({"frailty": 90_000.0, "healthy": 20_000.0, "acutely_ill": 30_000.0})
    table = spend_beside(shown, spend, RULE).set_index("category")
    hidden = table["persons"] == RULE.symbol
    assert hidden["frailty"] and hidden.sum() >= 2        # secondary: one more hidden
    assert ((table["spend"] == RULE.symbol) == hidden).all()
    assert ((table["spend_per_person"] == RULE.symbol) == hidden).all()
    assert table.at[TOTAL, "spend"] == 140_000
