"""Our vectorised hypergeometric upper tail against scipy's (Boost) on every kind of table."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.stats import hypergeom

from trainer.go.enrichment import fisher_greater
from trainer.go.fisher import hypergeom_upper_tail


def _scipy(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int) -> np.ndarray:
    return np.asarray(hypergeom.sf(k - 1, big_n, big_k, n), dtype=np.float64)


def test_every_table_of_small_populations_exhaustively() -> None:
    rows: list[tuple[int, int, int, int]] = []
    for big_n in (1, 2, 5, 13, 40):
        for big_k, n in itertools.product(range(0, big_n + 1), repeat=2):
            lo, hi = max(0, n + big_k - big_n), min(n, big_k)
            rows.extend((k, n, big_k, big_n) for k in range(lo, hi + 1))
    table = np.array(rows)
    for big_n in np.unique(table[:, 3]):
        sub = table[table[:, 3] == big_n]
        got = hypergeom_upper_tail(sub[:, 0], sub[:, 1], sub[:, 2], int(big_n))
        want = _scipy(sub[:, 0], sub[:, 1], sub[:, 2], int(big_n))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_full_corpus_sized_tables_including_extreme_tails() -> None:
    """Population and study sizes of the full-corpus GO stage (72k proteins, study sets up to
    half of them), overlaps from far below to 40 standard deviations above the mean."""
    rng = np.random.default_rng(0)
    big_n, m = 71_647, 4000
    n = rng.integers(1, big_n // 2, m)
    big_k = np.where(rng.random(m) < 0.5, rng.integers(3, 200, m), rng.integers(3, big_n, m))
    mean = n * big_k / big_n
    sd = np.sqrt(mean * (1 - big_k / big_n) * (big_n - n) / (big_n - 1))
    spread = rng.choice([0.5, 2.0, 8.0, 40.0], m)
    k = np.round(mean + rng.normal(0, 1, m) * sd * spread).astype(np.int64)
    k = np.clip(k, np.maximum(0, n + big_k - big_n), np.minimum(n, big_k))
    got = hypergeom_upper_tail(k, n, big_k, big_n)
    want = _scipy(k, n, big_k, big_n)
    normal = want > 1e-300  # below that, float64 underflows for both
    assert normal.sum() > 0.9 * m and (want < 1e-100).any() and (want > 0.99).any()
    np.testing.assert_allclose(got[normal], want[normal], rtol=1e-11, atol=0)
    assert np.all(got[~normal] < 1e-280)


def test_fisher_greater_margins_and_support_edges() -> None:
    big_n = 1000
    k = np.array([0, 5, 5, 10, 0, 3])
    n = np.array([10, 5, 1000, 10, 10, 500])
    big_k = np.array([10, 1000, 5, 10, 990, 3])
    got = fisher_greater(k, n, big_k, big_n)
    want = _scipy(k, n, big_k, big_n)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    assert got[1] == 1.0 and got[2] == 1.0  # an empty margin: fisher_exact's p of 1
    assert hypergeom_upper_tail(np.array([], np.int64), np.array([]), np.array([]), 5).size == 0
