"""Plaintext Splink as the benchmarks' reference: one training recipe and one decision rule.

`bench/linkage_1m.py` and `bench/linkage_literature.py` give Splink their own tables and
settings, then call `train_and_link`: probability two random records match, u by random
sampling, EM on two blocking rules, prediction at p >= `lower`, and one-to-one assignment by
match weight (Haven's own `one_to_one`), as Haven decides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def train_and_link(tables: list[Any], settings: Any, lower: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(left ids, right ids, match probabilities) of the one-to-one pairs at p >= `lower`, and
    how many predictions Splink made."""
    from splink import Linker, block_on

    from linkage.probabilistic import one_to_one

    linker = Linker(tables, settings, log_level=None)
    linker.training.estimate_probability_two_random_records_match(
        [block_on("forename", "surname", "date_of_birth")], recall=0.7)
    linker.training.estimate_u_using_random_sampling(max_pairs=1e7, seed=1)
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("forename", "surname"))
    linker.training.estimate_parameters_using_expectation_maximisation(
        block_on("date_of_birth"))
    pred = linker.inference.predict(threshold_match_probability=lower).as_pandas_dataframe()
    flip = (pred["source_dataset_l"] != "a_left").to_numpy()
    lid = np.where(flip, pred["person_id_r"], pred["person_id_l"])
    rid = np.where(flip, pred["person_id_l"], pred["person_id_r"])
    lcode, _ = pd.factorize(lid)
    rcode, _ = pd.factorize(rid)
    pick = one_to_one(lcode, rcode, pred["match_weight"].to_numpy())
    return lid[pick], rid[pick], pred["match_probability"].to_numpy()[pick], len(pred)
