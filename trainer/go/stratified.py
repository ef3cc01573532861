"""GO over-representation within protein-length strata: the enrichment length cannot explain.

A residue-level feature's protein activation is its maximum over residues, so it fires
"somewhere" in most long proteins, and long proteins carry more GO annotations: Fisher's test
then finds hits that a length-shuffled control finds as often (docs/pipeline.md). This test
conditions on length. The population is cut into length strata s (the quantile bins of
``trainer.go.controls.length_bins``) and, under the null, the study set is drawn at random
*within each stratum*, so the number of study proteins carrying the term is

    S = Σ_s X_s,   X_s ~ Hypergeometric(N_s proteins, K_s carry the term, n_s drawn), independent

— the exact conditional null for a common odds ratio of 1 across the strata's 2×2 tables (Birch
1964; the null of R's ``mantelhaen.test(exact = TRUE)``). One-sided p = P(S ≥ k). With a single
stratum it is Fisher's exact test.

How p is computed, per test (``length_adjusted_pvalues``; ``feature_term_pvalues`` for a block
of features × terms, whose screen moments are two matrix products):
- ``normal_upper``: the Cochran–Mantel–Haenszel normal approximation (continuity-corrected),
  for every test, cheap. A test keeps that value when it is above ``SCREEN_P`` (above
  ``SCREEN_P_NARROW`` where the null's sd < 3; both scale with alpha from their values at
  0.05): it cannot be significant, and BH over the
  dictionary needs only the exact values of the p-values <= alpha plus the number of tests.
- ``exact_upper``: the others whose strata windows span at most ``EXACT_MAX_SUPPORT`` values
  (rare terms, small study sets), by convolving the strata's pmfs in a compiled (numba) loop
  over tests. Each stratum's pmf is kept on the window outside which Bernstein's inequality
  bounds its mass by 2·e^-60, so p is exact to an absolute ~1e-25; smaller p-values are
  reported as ``P_FLOOR``.
- ``saddlepoint_upper``: the rest (wide, smooth nulls), by the Lugannani–Rice saddlepoint
  approximation with the exact cumulant generating function of each stratum's windowed pmf
  (Daniels' continuity-corrected form for lattice variables). Against the exact convolution:
  within 2e-4 relative for null sd >= 7 out to 8 sd (p ~ 1e-16), within 6% at sd ~ 2 (tests).
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from scipy.stats import norm

# Normal-approximation p above which a test keeps that approximation, at alpha = 0.05 (both
# scale with alpha: 4 alpha, and 9 alpha where the null's sd < 3).
SCREEN_P = 0.2
SCREEN_P_NARROW = 0.45
_SCREEN_ALPHA = 0.05
P_FLOOR = 1e-20  # reported for p-values below what the windowed convolution resolves
EXACT_MAX_SUPPORT = 64  # convolve when the strata's windows span at most this many values
_WINDOW_LOG_MASS = 60.0  # Bernstein: mass outside a stratum's window <= 2·e^-60


def stratum_onehot(bins: np.ndarray, n_bins: int) -> np.ndarray:
    """[n_pop, n_bins] 0/1 int64 matrix: which stratum each population protein is in."""
    onehot = np.zeros((bins.size, n_bins), dtype=np.int64)
    onehot[np.arange(bins.size), bins] = 1
    return onehot


def null_moments(
    n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of S for tests × strata counts ``n``, ``big_k`` and stratum sizes."""
    nf, kf, nn = n.astype(np.float64), big_k.astype(np.float64), big_n.astype(np.float64)
    mean = (nf * kf / nn).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        var_s = nf * kf * (nn - kf) * (nn - nf) / (nn * nn * (nn - 1.0))
    var = np.where(nn > 1, var_s, 0.0).sum(axis=1)
    return mean, var


def table_moments(
    study: np.ndarray, terms: np.ndarray, big_n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of S for every feature × term pair at once: [F, T] each, from the
    features' per-stratum study sizes ``study`` [F, B], the terms' ``terms`` [T, B] and the
    stratum sizes [B]. Both sums over strata factor into a feature part times a term part
    (mean: n_s/N_s · K_s; variance: n_s(N_s-n_s)/(N_s²(N_s-1)) · K_s(N_s-K_s)), so each is one
    matrix product instead of a [tests, strata] gather per test (``null_moments``)."""
    nn = big_n.astype(np.float64)
    nf, kf = study.astype(np.float64), terms.astype(np.float64)
    mean = (nf / nn) @ kf.T
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.where(nn > 1, nf * (nn - nf) / (nn * nn * (nn - 1.0)), 0.0)
    var = a @ (kf * (nn - kf)).T
    return mean, np.maximum(var, 0.0)


def normal_upper(k: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """P(S >= k) by the continuity-corrected normal approximation (the CMH statistic's)."""
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (k - 0.5 - mean) / sd
    degenerate = np.where(k <= mean + 1e-9, 1.0, 0.0)  # var == 0: S is its mean
    return np.where(sd > 0, norm.sf(z), degenerate)


def exact_upper(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """P(S >= k) by convolving the strata's windowed pmfs, one compiled loop over the tests.

    ``k`` [P]; ``n``, ``big_k`` [P, B]; ``big_n`` [B] or [P, B]. Cost grows with the square of
    the summed window widths: callers send tests whose windows are narrow (``EXACT_MAX_SUPPORT``).
    Each stratum's pmf: ``_trimmed_pmf`` on the window of ``_window``.
    """
    return _per_test(_exact_kernel, k, n, big_k, big_n)


def _per_test(
    kernel: Any, k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *extra: Any
) -> np.ndarray:
    """Run a compiled per-test kernel: int64 contiguous inputs (``big_n`` [B] broadcast to
    [P, B]), the window's log mass and the p floor, an output array, then ``extra``."""
    out = np.empty(k.size)
    if k.size:
        kernel(
            np.ascontiguousarray(k, dtype=np.int64), np.ascontiguousarray(n, dtype=np.int64),
            np.ascontiguousarray(big_k, dtype=np.int64),
            np.ascontiguousarray(np.broadcast_to(big_n, n.shape), dtype=np.int64),
            _WINDOW_LOG_MASS, P_FLOOR, out, *extra,
        )  # fmt: skip
    return out


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _exact_kernel(  # pragma: no cover - compiled; exercised through exact_upper
    k: np.ndarray,
    n: np.ndarray,
    big_k: np.ndarray,
    big_n: np.ndarray,
    log_mass: float,
    floor: float,
    out: np.ndarray,
) -> None:
    """Per test: each stratum's trimmed window pmf (``_trimmed_pmf``), convolved into the
    distribution of S (rescaled to its maximum as it grows); p = mass at or above k over the
    total. The windows are short (median 8 values on the demo), so numpy's per-pass overhead
    dominated the vectorised version this replaced: 9x slower (docs/pipeline.md)."""
    n_tests, n_strata = n.shape
    los = np.empty(n_strata, np.int64)
    his = np.empty(n_strata, np.int64)
    dist = np.empty(64)
    new = np.empty(64)
    pmf = np.empty(64)
    for i in range(n_tests):
        total = 1
        w_max = 0
        for s in range(n_strata):
            los[s], his[s] = _window(n[i, s], big_k[i, s], big_n[i, s], log_mass)
            total += his[s] - los[s]
            w_max = max(w_max, his[s] - los[s] + 1)
        if total > dist.size:
            dist = np.empty(total)
            new = np.empty(total)
        if w_max > pmf.size:
            pmf = np.empty(w_max)
        dist[0] = 1.0
        cur = 1
        offset = 0
        for s in range(n_strata):
            first, width = _trimmed_pmf(
                n[i, s], big_k[i, s], big_n[i, s], los[s], his[s], log_mass, pmf
            )
            offset += first
            if width == 1:
                continue  # one value: only shifts the offset
            for c in range(cur + width - 1):
                new[c] = 0.0
            for j in range(width):
                for c in range(cur):
                    new[j + c] += dist[c] * pmf[j]
            cur += width - 1
            biggest = 0.0
            for c in range(cur):
                biggest = max(biggest, new[c])
            for c in range(cur):
                dist[c] = new[c] / biggest
        col = k[i] - offset  # the column of dist that holds S = k
        if col <= 0:
            out[i] = 1.0
            continue
        upper = 0.0
        whole = 0.0
        for c in range(cur):
            whole += dist[c]
            if c >= col:
                upper += dist[c]
        p = upper / whole
        out[i] = floor if p < floor else min(p, 1.0)


def support_width(n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """Values S can take inside the strata's Bernstein windows: what convolving costs."""
    return _per_test(_width_kernel, np.zeros(n.shape[0], np.int64), n, big_k, big_n)


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _width_kernel(  # pragma: no cover - compiled; exercised through support_width
    k: np.ndarray,
    n: np.ndarray,
    big_k: np.ndarray,
    big_n: np.ndarray,
    log_mass: float,
    floor: float,
    out: np.ndarray,
) -> None:
    for i in range(n.shape[0]):
        total = 1
        for s in range(n.shape[1]):
            lo, hi = _window(n[i, s], big_k[i, s], big_n[i, s], log_mass)
            total += hi - lo
        out[i] = total


def saddlepoint_upper(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *, iterations: int = 60
) -> np.ndarray:
    """P(S >= k) by the Lugannani–Rice saddlepoint approximation (lattice, continuity-corrected).

    For k above the null mean (callers screen with ``normal_upper``). With y = k - 1/2 and the
    cumulant generating function K(θ) = Σ_s log E[e^{θ X_s}] of the windowed pmfs, θ̂ solves
    K'(θ̂) = y and p ≈ 1 - Φ(w) + φ(w)(1/u - 1/w), w = √(2(θ̂y - K(θ̂))), u = 2 sinh(θ̂/2)·√K''(θ̂).
    θ̂ by Newton's method inside a bisection bracket (K' increases), per test in a compiled loop.
    """
    return _per_test(_saddle_kernel, k, n, big_k, big_n, iterations)


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _window(nn: int, kk: int, pop: int, log_mass: float) -> tuple[int, int]:  # pragma: no cover
    """[lo, hi] of one stratum of one test: the support, cut where Bernstein bounds the rest.

    Sampling without replacement obeys the with-replacement bounds (Hoeffding 1963), so with
    v = n·p(1-p), p = K/N: P(|X - np| >= t) <= 2·exp(-t² / (2(v + t/3))), and
    t = L/3 + sqrt(L²/9 + 2Lv) makes the exponent L = log_mass (60).
    """
    prob = kk / pop
    v = nn * prob * (1.0 - prob)
    t = log_mass / 3.0 + np.sqrt(log_mass * log_mass / 9.0 + 2.0 * log_mass * v)
    centre = nn * prob
    lo = max(max(0, nn + kk - pop), int(np.floor(centre - t)))
    hi = min(min(nn, kk), int(np.ceil(centre + t)))
    return lo, hi


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _trimmed_pmf(  # pragma: no cover - compiled
    nn: int, kk: int, pop: int, lo: int, hi: int, log_mass: float, out: np.ndarray
) -> tuple[int, int]:
    """One stratum's pmf on its window [lo, hi], relative to its mode, trimmed to the values
    above e^-log_mass/w of the mode, into out[:width]; returns (first value, width). Built by
    the ratio recurrence P(x+1)/P(x) = (K-x)(n-x) / ((x+1)(N-K-n+x+1)) outwards from the mode:
    every value is <= ~1, so nothing overflows, and what underflows lies far below the cut."""
    w = hi - lo + 1
    rest = pop - kk - nn
    mode = min(max(int(((nn + 1.0) * (kk + 1.0)) // (pop + 2.0)), lo), hi)
    out[mode - lo] = 1.0
    for x in range(mode, hi):
        out[x + 1 - lo] = out[x - lo] * ((kk - x) * (nn - x) / ((x + 1.0) * (rest + x + 1.0)))
    for x in range(mode - 1, lo - 1, -1):
        out[x - lo] = out[x + 1 - lo] * ((x + 1.0) * (rest + x + 1.0) / ((kk - x) * (nn - x)))
    top = 0.0
    for j in range(w):
        top = max(top, out[j])
    cut = top * np.exp(-log_mass) / w
    first = 0
    while out[first] < cut:
        first += 1
    last = w - 1
    while out[last] < cut:
        last -= 1
    for j in range(last - first + 1):
        out[j] = out[first + j] / top
    return lo + first, last - first + 1


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _cumulants(  # pragma: no cover - compiled
    theta: float, logq: np.ndarray, starts: np.ndarray
) -> tuple[float, float, float]:
    """K(θ), K'(θ), K''(θ) of S: strata's normalised log pmfs packed in ``logq``, stratum s in
    logq[starts[s]:starts[s+1]] with values 0, 1, ... from its first."""
    cgf, d1, d2 = 0.0, 0.0, 0.0
    for s in range(starts.size - 1):
        a0, a1 = starts[s], starts[s + 1]
        amax = -np.inf
        for j in range(a1 - a0):
            amax = max(amax, logq[a0 + j] + theta * j)
        z, m1, m2 = 0.0, 0.0, 0.0
        for j in range(a1 - a0):
            e = np.exp(logq[a0 + j] + theta * j - amax)
            z += e
            m1 += e * j
            m2 += e * j * j
        m1 /= z
        m2 /= z
        cgf += amax + np.log(z)
        d1 += m1
        d2 += max(m2 - m1 * m1, 0.0)
    return cgf, d1, d2


@numba.njit(cache=True, nogil=True, error_model="numpy")  # type: ignore[misc]
def _saddle_kernel(  # pragma: no cover - compiled; exercised through saddlepoint_upper
    k: np.ndarray,
    n: np.ndarray,
    big_k: np.ndarray,
    big_n: np.ndarray,
    log_mass: float,
    floor: float,
    out: np.ndarray,
    iterations: int,
) -> None:
    n_tests, n_strata = n.shape
    los = np.empty(n_strata, np.int64)
    his = np.empty(n_strata, np.int64)
    starts = np.empty(n_strata + 1, np.int64)
    logq = np.empty(64)
    for i in range(n_tests):
        total = 0
        for s in range(n_strata):
            los[s], his[s] = _window(n[i, s], big_k[i, s], big_n[i, s], log_mass)
            total += his[s] - los[s] + 1
        if total > logq.size:
            logq = np.empty(total)
        # Each stratum's log pmf (normalised on its trimmed window), packed one after another.
        y = k[i] - 0.5
        top = 0
        starts[0] = 0
        for s in range(n_strata):
            seg = logq[starts[s] :]
            first, width = _trimmed_pmf(
                n[i, s], big_k[i, s], big_n[i, s], los[s], his[s], log_mass, seg
            )
            mass = 0.0
            for j in range(width):
                mass += seg[j]
            for j in range(width):
                seg[j] = np.log(seg[j] / mass)
            starts[s + 1] = starts[s] + width
            y -= first
            top += width - 1

        _, mean0, var0 = _cumulants(0.0, logq, starts)
        if y >= top:
            out[i] = floor  # beyond every window
            continue
        if not (y > mean0 and var0 > 0):
            out[i] = 1.0  # at or below the mean (callers screen these out)
            continue
        theta = (y - mean0) / var0
        lo_t, hi_t = 0.0, np.inf
        cgf, d1, d2 = _cumulants(theta, logq, starts)
        for _ in range(iterations):
            # |K'(θ) - y| <= 1e-7 sd leaves θ off by 1e-7/sd: w is stationary there and u moves
            # by a relative 1e-7/(sd θ), far below the approximation's own error.
            if abs(d1 - y) <= 1e-7 * np.sqrt(d2) + 1e-12:
                break
            if d1 > y:
                hi_t = min(hi_t, theta)
            else:
                lo_t = max(lo_t, theta)
            nxt = theta + (y - d1) / max(d2, 1e-300)
            if nxt <= lo_t or nxt >= hi_t or not np.isfinite(nxt):
                nxt = 0.5 * (lo_t + hi_t) if np.isfinite(hi_t) else 2 * theta + 1
            theta = nxt
            cgf, d1, d2 = _cumulants(theta, logq, starts)
        w = np.sqrt(max(2 * (theta * y - cgf), 0.0))
        u = 2 * np.sinh(theta / 2) * np.sqrt(d2)
        p = 0.5 * math.erfc(w / np.sqrt(2.0)) + np.exp(-0.5 * w * w) / np.sqrt(2 * np.pi) * (
            1 / u - 1 / w
        )
        out[i] = floor if p < floor else min(max(p, 0.0), 1.0)


def length_adjusted_pvalues(
    k: np.ndarray,
    n: np.ndarray,
    big_k: np.ndarray,
    big_n: np.ndarray,
    *,
    alpha: float = 0.05,
    chunk: int = 100_000,
) -> np.ndarray:
    """P(S >= k) for every test: k [P] study hits, n / big_k [P, B] per-stratum study and term
    sizes, big_n [B] stratum sizes. Screened by ``normal_upper`` (at the significance level
    ``alpha`` the results will be judged at), then exact or saddlepoint."""
    out = np.empty(k.size)
    for start in range(0, k.size, chunk):
        part = slice(start, min(k.size, start + chunk))
        out[part] = _adjusted_chunk(
            k[part].astype(np.int64), n[part], big_k[part], big_n, alpha=alpha
        )
    return out


SCREENED, EXACT, SADDLEPOINT = 0, 1, 2  # how ``route`` says a test's p is computed


def route(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(the normal approximation's p, the method for each test: SCREENED keeps that p).

    The normal approximation decides alone only where it is far from any significance: p above
    SCREEN_P, or above SCREEN_P_NARROW where the null is narrow (sd < 3) and lattice effects are
    larger. On the human-5k run's 6.5 M residue-SAE tests the smallest exact p among those it
    decided was 0.197 (``benchmarks/bench_go_length.py``, docs/pipeline.md).
    """
    mean, var = null_moments(n, big_k, big_n)
    p, refine = _screen(k, mean, var, alpha)
    method = np.full(k.size, SCREENED, dtype=np.int8)
    if refine.size:
        wide = support_width(n[refine], big_k[refine], big_n) > EXACT_MAX_SUPPORT
        method[refine] = np.where(wide, SADDLEPOINT, EXACT)
    return p, method


def _screen(
    k: np.ndarray, mean: np.ndarray, var: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """(normal p of every test, the tests the screen sends on to an exact or saddlepoint p)."""
    p = normal_upper(k, mean, var)
    scale = alpha / _SCREEN_ALPHA
    screen, screen_narrow = min(1.0, SCREEN_P * scale), min(1.0, SCREEN_P_NARROW * scale)
    return p, np.flatnonzero((p <= screen) | ((var < 9.0) & (p <= screen_narrow)))


def _refined(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """Exact or saddlepoint p-values of tests the screen sent on."""
    p = np.empty(k.size)
    wide = support_width(n, big_k, big_n) > EXACT_MAX_SUPPORT
    e, s = np.flatnonzero(~wide), np.flatnonzero(wide)
    p[e] = exact_upper(k[e], n[e], big_k[e], big_n)
    p[s] = saddlepoint_upper(k[s], n[s], big_k[s], big_n)
    return p


def _adjusted_chunk(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *, alpha: float
) -> np.ndarray:
    mean, var = null_moments(n, big_k, big_n)
    p, refine = _screen(k, mean, var, alpha)
    p[refine] = _refined(k[refine], n[refine], big_k[refine], big_n)
    return p


def feature_term_pvalues(
    k: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    study: np.ndarray,
    terms: np.ndarray,
    big_n: np.ndarray,
    *,
    alpha: float = 0.05,
) -> np.ndarray:
    """``length_adjusted_pvalues`` for tests given by index: test i pairs feature ``rows[i]``
    (per-stratum study sizes ``study`` [F, B]) with term ``cols[i]`` (``terms`` [T, B]) and has
    ``k[i]`` study hits. The screen's moments come from ``table_moments`` (two matrix products
    for the whole block) and only the tests it sends on gather their [strata] rows: the same
    p-values as ``length_adjusted_pvalues`` on the gathered arrays, at a fraction of the cost."""
    k = k.astype(np.int64)
    mean_ft, var_ft = table_moments(study, terms, big_n)
    p, refine = _screen(k, mean_ft[rows, cols], var_ft[rows, cols], alpha)
    p[refine] = _refined(k[refine], study[rows[refine]], terms[cols[refine]], big_n)
    return p
