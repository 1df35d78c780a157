"""The generator's persistent person-level effect: its spread is an option with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from synth import population


def test_default_spread_is_the_standard_population() -> None:
    standard = population.build(3000, seed=7)
    same = population.build(3000, seed=7, s_u=population.S_U)
    np.testing.assert_array_equal(standard.u, same.u)
    np.testing.assert_array_equal(standard.true_risk, same.true_risk)
    assert standard.s_u == population.S_U


def test_a_stronger_effect_changes_only_u_and_what_it_drives() -> None:
    standard = population.build(3000, seed=7)
    strong = population.build(3000, seed=7, s_u=1.4)
    np.testing.assert_array_equal(standard.dob, strong.dob)
    np.testing.assert_array_equal(standard.sex, strong.sex)
    survivors = (standard.death_day == population.NEVER) & (strong.death_day == population.NEVER)
    np.testing.assert_array_equal(standard.onset[survivors], strong.onset[survivors])
    np.testing.assert_array_equal(standard.v, strong.v)
    assert strong.u.std() == pytest.approx(1.4, rel=0.05)
    assert strong.u.mean() == pytest.approx(-1.4 ** 2 / 2, abs=0.1)  # E[exp(u)] = 1
    alive = (strong.death_t > population.SCORE_DATE) & (standard.death_t > population.SCORE_DATE)
    # the observable risk averages over the wider prior: it separates less than the true risk
    corr_standard = np.corrcoef(standard.true_risk[alive], standard.observable_risk[alive])[0, 1]
    corr_strong = np.corrcoef(strong.true_risk[alive], strong.observable_risk[alive])[0, 1]
    assert corr_strong < corr_standard
    # with no persistent effect at all, u is 0 for everyone
    assert not population.build(500, seed=7, s_u=0.0).u.any()


def test_a_spread_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="s_u"):
        population.build(10, seed=1, s_u=-0.5)
