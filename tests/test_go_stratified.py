"""The length-stratified GO test against scipy (hypergeometric pmfs, brute-force convolution)
and statsmodels (the Cochran–Mantel–Haenszel statistic), on strata of real protein lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import hypergeom, norm
from statsmodels.stats.contingency_tables import StratifiedTable

from trainer.go.controls import length_bins
from trainer.go.protein_table import read_protein_table
from trainer.go.stratified import (
    EXACT,
    EXACT_MAX_SUPPORT,
    P_FLOOR,
    SADDLEPOINT,
    SCREEN_P,
    SCREEN_P_NARROW,
    SCREENED,
    exact_upper,
    feature_term_pvalues,
    length_adjusted_pvalues,
    normal_upper,
    null_moments,
    route,
    saddlepoint_upper,
    support_width,
    table_moments,
)


@pytest.fixture(scope="module")
def strata_sizes(shared_dir: Path) -> np.ndarray:
    """N_s of 10 length-quantile strata of 2,000 real human proteins."""
    table = read_protein_table(shared_dir / "data/proteins/human_sprot2014.tsv.gz", 2000)
    bins = length_bins(np.array([len(s) for s in table.sequences]), 10)
    return np.bincount(bins, minlength=10).astype(np.int64)


def brute_upper(k: int, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> float:
    """P(Σ X_s >= k) from scipy's full pmfs, convolved stratum by stratum."""
    dist = np.array([1.0])
    for n_s, k_s, big_n_s in zip(n, big_k, big_n, strict=True):
        support = np.arange(min(n_s, k_s) + 1)
        dist = np.convolve(dist, hypergeom.pmf(support, big_n_s, k_s, n_s))
    return float(dist[k:].sum())


def tables(
    strata_sizes: np.ndarray, rng: np.random.Generator, count: int, term_share: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Study sets that grow with length (as a residue-level feature's do) and terms of a size."""
    b = strata_sizes.size
    frac = np.sort(rng.uniform(0.02, 1.0, (count, b)), axis=1)
    n = np.maximum(1, (frac * strata_sizes).astype(np.int64))
    share = rng.uniform(*term_share, (count, 1)) * rng.uniform(0.5, 1.5, (count, b))
    big_k = np.minimum(strata_sizes, np.maximum(0, (share * strata_sizes).astype(np.int64)))
    return n, big_k


def test_one_stratum_is_fishers_exact_test() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        big_n = int(rng.integers(50, 20_000))
        big_k, n = (int(v) for v in rng.integers(1, big_n, 2))
        lo, hi = max(0, n + big_k - big_n), min(n, big_k)
        k = int(rng.integers(lo, hi + 1))
        args = np.array([k]), np.array([[n]]), np.array([[big_k]]), np.array([big_n])
        want = hypergeom.sf(k - 1, big_n, big_k, n)
        if want > 1e-18:
            assert exact_upper(*args)[0] == pytest.approx(want, rel=1e-9)


def test_exact_equals_brute_force_convolution(strata_sizes: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    n, big_k = tables(strata_sizes, rng, 300, (0.0, 0.05))
    mean, var = null_moments(n, big_k, strata_sizes)
    k = np.maximum(1, np.ceil(mean + rng.uniform(-1, 6, mean.size) * np.sqrt(var))).astype(int)
    got = exact_upper(k, n, big_k, strata_sizes)
    want = np.array([brute_upper(int(k[i]), n[i], big_k[i], strata_sizes) for i in range(k.size)])
    big = want > 1e-15
    np.testing.assert_allclose(got[big], want[big], rtol=1e-8)
    assert big.sum() > 250 and (want < 0.05).sum() > 50  # tails were exercised


@pytest.mark.parametrize(
    ("term_share", "min_sd", "rtol"), [((0.1, 0.4), 7.0, 2e-4), ((0.005, 0.02), 2.0, 6e-2)]
)
def test_saddlepoint_against_the_exact_tail(
    strata_sizes: np.ndarray, term_share: tuple[float, float], min_sd: float, rtol: float
) -> None:
    rng = np.random.default_rng(2)
    n, big_k = tables(strata_sizes, rng, 60, term_share)
    mean, var = null_moments(n, big_k, strata_sizes)
    keep = np.sqrt(var) >= min_sd
    n, big_k, mean, sd = n[keep], big_k[keep], mean[keep], np.sqrt(var[keep])
    for z in (1.0, 3.0, 5.0, 8.0):
        k = np.ceil(mean + z * sd).astype(np.int64)
        exact = exact_upper(k, n, big_k, strata_sizes)
        approx = saddlepoint_upper(k, n, big_k, strata_sizes)
        np.testing.assert_allclose(approx, exact, rtol=rtol)
    assert keep.sum() >= 20


def test_normal_approximation_is_the_cmh_statistic(strata_sizes: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    n, big_k = tables(strata_sizes, rng, 40, (0.02, 0.3))
    mean, var = null_moments(n, big_k, strata_sizes)
    k = np.ceil(mean + 2.5 * np.sqrt(var)).astype(np.int64)
    p = normal_upper(k, mean, var)
    for i in range(k.size):
        # One 2x2 table per stratum: rows study / rest, columns with / without the term,
        # with the study hits split over strata in proportion to the term's expected share.
        share = n[i] * big_k[i] / strata_sizes
        a = np.minimum(np.minimum(n[i], big_k[i]), np.floor(share / share.sum() * k[i]))
        a[np.argmax(np.minimum(n[i], big_k[i]) - a)] += k[i] - a.sum()
        t = np.stack([
            np.stack([a, n[i] - a]), np.stack([big_k[i] - a, strata_sizes - n[i] - big_k[i] + a])
        ]).transpose(1, 0, 2).astype(float)  # fmt: skip
        stat = StratifiedTable(t.transpose(1, 0, 2)).test_null_odds(correction=True).statistic
        z = (k[i] - 0.5 - mean[i]) / np.sqrt(var[i])
        assert stat == pytest.approx(z * z, rel=1e-9)
        assert p[i] == pytest.approx(norm.sf(z), rel=1e-12)


def test_hybrid_routes_every_test_and_misses_no_small_p(strata_sizes: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    parts = [tables(strata_sizes, rng, 150, share) for share in ((0.0, 0.01), (0.05, 0.3))]
    n = np.concatenate([p[0] for p in parts])
    big_k = np.concatenate([p[1] for p in parts])
    mean, var = null_moments(n, big_k, strata_sizes)
    k = np.maximum(1, np.ceil(mean + rng.uniform(-2, 5, mean.size) * np.sqrt(var))).astype(int)
    got = length_adjusted_pvalues(k, n, big_k, strata_sizes, chunk=97)
    want = np.array([brute_upper(int(k[i]), n[i], big_k[i], strata_sizes) for i in range(k.size)])
    normal, method = route(k, n, big_k, strata_sizes)
    np.testing.assert_array_equal(normal, normal_upper(k, mean, var))
    screened = method == SCREENED
    assert np.all(normal[screened] > SCREEN_P)
    assert np.all(normal[screened & (var < 9.0)] > SCREEN_P_NARROW)
    np.testing.assert_array_equal(got[screened], normal[screened])
    assert not np.any(want[screened] <= 0.1)  # the screen left out nothing near significance
    refined = ~screened & (want > 1e-15)
    np.testing.assert_allclose(got[refined], want[refined], rtol=1e-2)
    exact, saddle = method == EXACT, method == SADDLEPOINT
    assert np.all(support_width(n[exact], big_k[exact], strata_sizes) <= EXACT_MAX_SUPPORT)
    np.testing.assert_allclose(got[exact & refined], want[exact & refined], rtol=1e-8)
    assert exact.sum() > 20 and saddle.sum() > 20  # both paths ran


def test_the_screen_follows_the_significance_level(strata_sizes: np.ndarray) -> None:
    """At alpha = 0.2 the screen leaves nothing under 4 alpha to the normal approximation."""
    rng = np.random.default_rng(5)
    n, big_k = tables(strata_sizes, rng, 400, (0.0, 0.3))
    mean, var = null_moments(n, big_k, strata_sizes)
    k = np.maximum(1, np.ceil(mean + rng.uniform(-2, 3, mean.size) * np.sqrt(var))).astype(int)
    normal, default = route(k, n, big_k, strata_sizes)
    _, lenient = route(k, n, big_k, strata_sizes, alpha=0.2)
    assert np.any((default == SCREENED) & (normal <= 0.8))  # decided alone at alpha = 0.05
    assert not np.any((lenient == SCREENED) & (normal <= 0.8))
    assert not np.any((lenient == SCREENED) & (var < 9.0))
    got = length_adjusted_pvalues(k, n, big_k, strata_sizes, alpha=0.2)
    refined = lenient != SCREENED
    np.testing.assert_allclose(
        got[refined & (lenient == EXACT)],
        exact_upper(k, n, big_k, strata_sizes)[refined & (lenient == EXACT)],
    )


def test_beyond_every_window_is_the_floor(strata_sizes: np.ndarray) -> None:
    n = np.full((1, strata_sizes.size), 50)
    big_k = np.full((1, strata_sizes.size), 50)
    k = np.array([n.sum()])  # every study protein carries the term: p is astronomically small
    assert exact_upper(k, n, big_k, strata_sizes)[0] == P_FLOOR
    assert saddlepoint_upper(k, n, big_k, strata_sizes)[0] == P_FLOOR
    assert length_adjusted_pvalues(k, n, big_k, strata_sizes)[0] == P_FLOOR


def test_feature_term_tables_give_the_gathered_tests_pvalues(strata_sizes: np.ndarray) -> None:
    """The GO stage's per-block entry (moments by two matrix products over feature and term
    tables, gathers only for refined tests) gives the p-values of the per-test entry."""
    rng = np.random.default_rng(6)
    study, _ = tables(strata_sizes, rng, 40, (0.0, 0.3))
    _, terms = tables(strata_sizes, rng, 60, (0.0, 0.3))
    rows, cols = (a.ravel() for a in np.meshgrid(np.arange(40), np.arange(60), indexing="ij"))
    n, big_k = study[rows], terms[cols]
    mean, var = null_moments(n, big_k, strata_sizes)
    mean_ft, var_ft = table_moments(study, terms, strata_sizes)
    np.testing.assert_allclose(mean_ft[rows, cols], mean, rtol=1e-12)
    np.testing.assert_allclose(var_ft[rows, cols], var, rtol=1e-10, atol=1e-12)
    k = np.maximum(1, np.ceil(mean + rng.uniform(-2, 5, mean.size) * np.sqrt(var))).astype(int)
    got = feature_term_pvalues(k, rows, cols, study, terms, strata_sizes)
    want = length_adjusted_pvalues(k, n, big_k, strata_sizes)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    _, method = route(k, n, big_k, strata_sizes)
    assert (method == EXACT).sum() > 100 and (method == SADDLEPOINT).sum() > 10
