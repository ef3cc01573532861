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

How p is computed, per test (``length_adjusted_pvalues``):
- ``normal_upper``: the Cochran–Mantel–Haenszel normal approximation (continuity-corrected),
  for every test, cheap. A test keeps that value when it is above ``SCREEN_P`` (above
  ``SCREEN_P_NARROW`` where the null's sd < 3; both scale with alpha from their values at
  0.05): it cannot be significant, and BH over the
  dictionary needs only the exact values of the p-values <= alpha plus the number of tests.
- ``exact_upper``: the others whose strata windows span at most ``EXACT_MAX_SUPPORT`` values
  (rare terms, small study sets), by convolving the strata's pmfs, vectorised over tests. Each
  stratum's pmf is kept on the window outside which Bernstein's inequality bounds its mass by
  2·e^-60, so p is exact to an absolute ~1e-25; smaller p-values are reported as ``P_FLOOR``.
- ``saddlepoint_upper``: the rest (wide, smooth nulls), by the Lugannani–Rice saddlepoint
  approximation with the exact cumulant generating function of each stratum's windowed pmf
  (Daniels' continuity-corrected form for lattice variables). Against the exact convolution:
  within 2e-4 relative for null sd >= 7 out to 8 sd (p ~ 1e-16), within 6% at sd ~ 2 (tests).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln
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


def normal_upper(k: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """P(S >= k) by the continuity-corrected normal approximation (the CMH statistic's)."""
    sd = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (k - 0.5 - mean) / sd
    degenerate = np.where(k <= mean + 1e-9, 1.0, 0.0)  # var == 0: S is its mean
    return np.where(sd > 0, norm.sf(z), degenerate)


_LOG_FACTORIAL = np.zeros(1)  # log(i!) for i < size, grown on demand


def _log_factorial(upto: int) -> np.ndarray:
    """log(i!) for i = 0..upto: a table lookup is ~10x cheaper than gammaln per term."""
    global _LOG_FACTORIAL
    if _LOG_FACTORIAL.size <= upto:
        _LOG_FACTORIAL = gammaln(np.arange(max(upto + 1, 2 * _LOG_FACTORIAL.size)) + 1.0)
    return _LOG_FACTORIAL


def _log_pmf(x: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """log P(X = x) of Hypergeometric(N, K, n), broadcast; -inf outside the support."""
    lo = np.maximum(0, n + big_k - big_n)
    hi = np.minimum(n, big_k)
    inside = (x >= lo) & (x <= hi)
    xs = np.clip(x, lo, hi)
    lf = _log_factorial(int(np.max(big_n)))
    out = (
        lf[big_k] - lf[xs] - lf[big_k - xs]
        + lf[big_n - big_k] - lf[n - xs] - lf[big_n - big_k - n + xs]
        - lf[big_n] + lf[n] + lf[big_n - n]
    )  # fmt: skip
    return np.where(inside, out, -np.inf)


def _window_log_pmf(
    lo: np.ndarray, w: int, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray
) -> np.ndarray:
    """log P(X = lo + j), j < w, per row ([P, 1] inputs): the pmf at ``lo`` from the log-factorial
    table, then the ratio recurrence P(x+1)/P(x) = (K-x)(n-x) / ((x+1)(N-K-n+x+1)) summed in
    log space (one log per value instead of nine table reads). Values past the support are
    garbage: callers mask them."""
    out = np.empty((lo.shape[0], w))
    out[:, :1] = _log_pmf(lo, n, big_k, big_n)
    if w > 1:
        x = (lo + np.arange(w - 1)[None, :]).astype(np.float64)
        kf, nf = big_k.astype(np.float64), n.astype(np.float64)
        rest = (big_n - big_k - n).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.log((kf - x) * (nf - x) / ((x + 1) * (rest + x + 1)))
        np.cumsum(ratio, axis=1, out=ratio)
        out[:, 1:] = out[:, :1] + ratio
    return out


def windows(n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] per test × stratum: the support, cut where Bernstein bounds the rest by e^-60.

    Sampling without replacement obeys the with-replacement bounds (Hoeffding 1963), so with
    v = n·p(1-p), p = K/N: P(|X - np| >= t) <= 2·exp(-t² / (2(v + t/3))), and
    t = L/3 + sqrt(L²/9 + 2Lv) makes the exponent L = 60.
    """
    nf, kf = n.astype(np.float64), big_k.astype(np.float64)
    nn = np.broadcast_to(big_n, n.shape).astype(np.float64)
    p = kf / nn
    v = nf * p * (1 - p)
    big_l = _WINDOW_LOG_MASS
    t = big_l / 3 + np.sqrt(big_l * big_l / 9 + 2 * big_l * v)
    centre = nf * p
    lo = np.maximum(np.maximum(0, n + big_k - big_n), np.floor(centre - t)).astype(np.int64)
    hi = np.minimum(np.minimum(n, big_k), np.ceil(centre + t)).astype(np.int64)
    return lo, hi


def strata_log_pmfs(
    n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per stratum: (first value [P], log pmf [P, w] padded with -inf), on the Bernstein window
    trimmed further to the terms above e^-60/w of the mode (the pmf is unimodal, so what is cut
    off is two end runs holding under e^-60 of mass). ``big_n`` is [B] or, per test, [P, B]."""
    big_n = np.broadcast_to(big_n, n.shape)
    lo, hi = windows(n, big_k, big_n)
    out = []
    for s in range(n.shape[1]):
        width = hi[:, s] - lo[:, s] + 1
        w = int(width.max())
        offs = np.arange(w)[None, :]
        col = slice(s, s + 1)
        lp = _window_log_pmf(lo[:, col], w, n[:, col], big_k[:, col], big_n[:, col])
        lp = np.where(offs < width[:, None], lp, -np.inf)
        keep = lp >= lp.max(axis=1, keepdims=True) - (_WINDOW_LOG_MASS + np.log(width[:, None]))
        first = keep.argmax(axis=1)
        last = w - 1 - keep[:, ::-1].argmax(axis=1)
        new_w = int((last - first).max()) + 1
        idx = first[:, None] + np.arange(new_w)[None, :]
        trimmed = np.take_along_axis(lp, np.minimum(idx, w - 1), axis=1)
        trimmed = np.where(idx <= last[:, None], trimmed, -np.inf)
        out.append((lo[:, s] + first, trimmed))
    return out


def exact_upper(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """P(S >= k) by convolving the strata's windowed pmfs, vectorised over tests.

    ``k`` [P]; ``n``, ``big_k`` [P, B]; ``big_n`` [B]. Cost grows with the square of the
    summed window widths: callers send tests whose windows are narrow (``EXACT_MAX_SUPPORT``).
    """
    out = np.empty(k.size)
    if k.size == 0:
        return out
    # Widest strata first, per test: rare terms then leave the later strata one value wide
    # (nothing to convolve) for every test of a bucket.
    big_n = np.broadcast_to(big_n, n.shape)
    lo, hi = windows(n, big_k, big_n)
    order = np.argsort(lo - hi, axis=1, kind="stable")
    n, big_k, big_n = (np.take_along_axis(a, order, axis=1) for a in (n, big_k, big_n))
    total = (hi - lo).sum(axis=1) + 1
    buckets = np.ceil(np.log2(np.maximum(total, 1))).astype(np.int64)  # little padding
    for b in np.unique(buckets):
        idx = np.flatnonzero(buckets == b)
        out[idx] = _convolve_tail(k[idx], strata_log_pmfs(n[idx], big_k[idx], big_n[idx]))
    return out


def support_width(n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray) -> np.ndarray:
    """Values S can take inside the strata's Bernstein windows: what convolving costs."""
    lo, hi = windows(n, big_k, big_n)
    return np.asarray((hi - lo).sum(axis=1) + 1)


def _convolve_tail(k: np.ndarray, strata: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    n_tests = k.size
    total_w = sum(lp.shape[1] - 1 for _, lp in strata) + 1  # padded to each widest window
    dist = np.zeros((n_tests, total_w))
    dist[:, 0] = 1.0
    cur = 1  # columns of dist in use
    for _, lp in strata:
        w = lp.shape[1]
        if w == 1:
            continue  # deterministic stratum: only shifts the offset
        pmf = np.exp(lp - lp.max(axis=1, keepdims=True))  # scales cancel in the ratio
        new = np.zeros_like(dist)
        term = np.empty((n_tests, cur))
        for j in range(w):
            np.multiply(dist[:, :cur], pmf[:, j : j + 1], out=term)
            new[:, j : j + cur] += term
        cur += w - 1
        dist = new / new.max(axis=1, keepdims=True)
    first = k - sum(lo for lo, _ in strata)  # column of dist that holds S = k
    cols = np.arange(total_w)[None, :]
    upper = np.where(cols >= first[:, None], dist, 0.0).sum(axis=1)
    p = np.where(first <= 0, 1.0, upper / dist.sum(axis=1))
    return np.clip(np.where(p < P_FLOOR, P_FLOOR, p), 0.0, 1.0)


def saddlepoint_upper(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *, iterations: int = 60
) -> np.ndarray:
    """P(S >= k) by the Lugannani–Rice saddlepoint approximation (lattice, continuity-corrected).

    For k above the null mean (callers screen with ``normal_upper``). With y = k - 1/2 and the
    cumulant generating function K(θ) = Σ_s log E[e^{θ X_s}] of the windowed pmfs, θ̂ solves
    K'(θ̂) = y and p ≈ 1 - Φ(w) + φ(w)(1/u - 1/w), w = √(2(θ̂y - K(θ̂))), u = 2 sinh(θ̂/2)·√K''(θ̂).
    """
    n_tests = k.size
    if n_tests == 0:
        return np.empty(0)
    strata = strata_log_pmfs(n, big_k, big_n)
    xs = [np.arange(lp.shape[1], dtype=np.float64)[None, :] for _, lp in strata]
    logq = [lp - np.logaddexp.reduce(lp, axis=1, keepdims=True) for _, lp in strata]
    # In the shifted variable Σ (X_s - first_s): y and the largest value it reaches.
    y = k - 0.5 - sum(first for first, _ in strata)
    top = sum((np.isfinite(lp).sum(axis=1) - 1) for _, lp in strata)

    def cumulants(theta: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cgf, d1, d2 = (np.zeros(rows.size) for _ in range(3))
        for x, lq in zip(xs, logq, strict=True):
            a = lq[rows] + theta[:, None] * x
            amax = a.max(axis=1, keepdims=True)
            e = np.exp(a - amax)
            z = e.sum(axis=1)
            m1 = (e * x).sum(axis=1) / z
            m2 = (e * x * x).sum(axis=1) / z
            cgf += amax[:, 0] + np.log(z)
            d1 += m1
            d2 += np.maximum(m2 - m1 * m1, 0.0)
        return cgf, d1, d2

    everyone = np.arange(n_tests)
    _, mean0, var0 = cumulants(np.zeros(n_tests), everyone)
    tail = (y > mean0) & (y < top) & (var0 > 0)
    theta = np.where(tail, (y - mean0) / np.where(var0 > 0, var0, 1.0), 0.0)
    # Newton on θ inside a bisection bracket (K' increases), on the tests not yet converged.
    lo_t, hi_t = np.zeros(n_tests), np.full(n_tests, np.inf)
    cgf_at, d2_at = np.zeros(n_tests), np.zeros(n_tests)  # at the converged θ
    todo = np.flatnonzero(tail)
    for _ in range(iterations):
        if todo.size == 0:
            break
        th = theta[todo]
        cgf, d1, d2 = cumulants(th, todo)
        # |K'(θ) - y| <= 1e-7 sd leaves θ off by 1e-7/sd: w is stationary there and u moves by
        # a relative 1e-7/(sd θ), far below the approximation's own error.
        converged = np.abs(d1 - y[todo]) <= 1e-7 * np.sqrt(d2) + 1e-12
        cgf_at[todo[converged]], d2_at[todo[converged]] = cgf[converged], d2[converged]
        above = d1 > y[todo]
        hi_t[todo] = np.where(above, np.minimum(hi_t[todo], th), hi_t[todo])
        lo_t[todo] = np.where(~above, np.maximum(lo_t[todo], th), lo_t[todo])
        nxt = th + (y[todo] - d1) / np.maximum(d2, 1e-300)
        bad = (nxt <= lo_t[todo]) | (nxt >= hi_t[todo]) | ~np.isfinite(nxt)
        bisect = np.where(np.isfinite(hi_t[todo]), 0.5 * (lo_t[todo] + hi_t[todo]), 2 * th + 1)
        theta[todo] = np.where(converged, th, np.where(bad, bisect, nxt))
        todo = todo[~converged]
    p = np.where(y >= top, 0.0, 1.0)  # beyond every window / below the mean (never asked)
    if todo.size:  # out of iterations: take the cumulants where they stopped
        cgf_at[todo], _, d2_at[todo] = cumulants(theta[todo], todo)
    rows = np.flatnonzero(tail)
    cgf, d2 = cgf_at[rows], d2_at[rows]
    th, yr = theta[rows], y[rows]
    w = np.sqrt(np.maximum(2 * (th * yr - cgf), 0.0))
    u = 2 * np.sinh(th / 2) * np.sqrt(d2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p[rows] = norm.sf(w) + norm.pdf(w) * (1 / u - 1 / w)
    return np.clip(np.where(p < P_FLOOR, P_FLOOR, p), 0.0, 1.0)


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
    p = normal_upper(k, mean, var)
    method = np.full(k.size, SCREENED, dtype=np.int8)
    scale = alpha / _SCREEN_ALPHA
    screen, screen_narrow = min(1.0, SCREEN_P * scale), min(1.0, SCREEN_P_NARROW * scale)
    refine = np.flatnonzero((p <= screen) | ((var < 9.0) & (p <= screen_narrow)))
    if refine.size:
        wide = support_width(n[refine], big_k[refine], big_n) > EXACT_MAX_SUPPORT
        method[refine] = np.where(wide, SADDLEPOINT, EXACT)
    return p, method


def _adjusted_chunk(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray, *, alpha: float
) -> np.ndarray:
    p, method = route(k, n, big_k, big_n, alpha=alpha)
    e, s = np.flatnonzero(method == EXACT), np.flatnonzero(method == SADDLEPOINT)
    p[e] = exact_upper(k[e], n[e], big_k[e], big_n)
    p[s] = saddlepoint_upper(k[s], n[s], big_k[s], big_n)
    return p
