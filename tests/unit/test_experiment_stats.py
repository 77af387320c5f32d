"""The intervals of the experiment report against published values (Newcombe 1998)."""

from __future__ import annotations

import math

import pytest

from matchmaking.experiments.stats import bookings_needed, newcombe, wilson


def test_wilson_matches_newcombe_1998_table_i() -> None:
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I: 81/263 -> 0.2553, 0.3662.
    low, high = wilson(81, 263, 0.95)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10, 0.95)[0] == 0.0 and wilson(10, 10, 0.95)[1] == pytest.approx(1.0)


def test_newcombe_hybrid_score_matches_newcombe_1998_table_ii() -> None:
    # Table II, example (a): 56/70 - 48/80, method 10: 0.0524 to 0.3339.
    d, low, high = newcombe(56, 70, 48, 80, 0.95)
    assert d == pytest.approx(0.2)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    # Example (d): 5/56 - 0/29 (a zero cell, where the Wald interval collapses): -0.0381, 0.1926.
    _, low, high = newcombe(5, 56, 0, 29, 0.95)
    assert (round(low, 4), round(high, 4)) == (-0.0381, 0.1926)


def test_a_higher_confidence_widens_and_no_trials_is_nan() -> None:
    _, low95, high95 = newcombe(560, 700, 480, 800, 0.95)
    _, low99, high99 = newcombe(560, 700, 480, 800, 0.99)
    assert low99 < low95 < high95 < high99
    assert all(math.isnan(v) for v in newcombe(1, 0, 1, 2, 0.95))
    assert bookings_needed(0.8, 0.7, 0.0, 0.95) is None
    # Half-width 0.05 of 0.8 vs 0.7 at 95%: 1.96^2 x (0.16 + 0.21) / 0.05^2 = 569.
    assert bookings_needed(0.8, 0.7, 0.05, 0.95) == 569
