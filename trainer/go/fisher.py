"""One-sided Fisher exact p-values (hypergeometric upper tails), vectorised over many tables.

``scipy.stats.hypergeom.cdf`` (Boost) costs about 40-150 µs per table at full-corpus sizes
(72k proteins, study sets of 10-40k): 13 s for 32 features on one namespace, which made GO
enrichment of a full-corpus run take an hour. Here every table is summed at once by the
pmf's ratio recurrence, relative to the pmf at the observed count ``k``:

    P(X = x + 1) / P(X = x) = (K − x)(n − x) / ((x + 1)(N − K − n + x + 1))

``up = Σ_{x ≥ k} P(x)/P(k)`` and ``down = Σ_{x < k} P(x)/P(k)`` give ``p = up / (up + down)``,
with no factorial or log-gamma (which would lose ~1e-10 of relative precision at N ~ 1e5).
Each sum stops where its terms fall below 1e-18 of it (past the mode, terms shrink
geometrically) or at the end of the support; running terms are rescaled to stay finite, so
extreme tails keep their precision down to float64's smallest normal numbers. Tested against
scipy on real and extreme tables (relative difference ≲ 1e-12).
"""

from __future__ import annotations

import numpy as np

_TINY = 1e-18  # a term this small relative to its running sum cannot change it in float64
_BIG = 1e200  # rescale running sums above this (and their terms with them)
_LOG_BIG = float(np.log(_BIG))


def _tail(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int, upward: bool) -> np.ndarray:
    """log of Σ P(x)/P(k) over x ≥ k (upward) or x < k (downward), per table."""
    n_tables = k.size
    total = np.ones(n_tables) if upward else np.zeros(n_tables)
    log_scale = np.zeros(n_tables)
    term = np.ones(n_tables)
    x = k.astype(np.float64)
    nf, kf = n.astype(np.float64), big_k.astype(np.float64)
    rest = float(big_n) - kf - nf  # N − K − n
    lo = np.maximum(0.0, -rest)
    hi = np.minimum(nf, kf)
    mode = np.floor((nf + 1) * (kf + 1) / (big_n + 2))
    active = np.flatnonzero(x < hi) if upward else np.flatnonzero(x > lo)
    while active.size:
        xa = x[active]
        if upward:  # term for x + 1 from the term for x
            ratio = (kf[active] - xa) * (nf[active] - xa) / ((xa + 1) * (rest[active] + xa + 1))
            x[active] = xa = xa + 1
        else:  # term for x − 1 from the term for x
            ratio = xa * (rest[active] + xa) / ((kf[active] - xa + 1) * (nf[active] - xa + 1))
            x[active] = xa = xa - 1
        t = term[active] * ratio
        s = total[active] + t
        big = s > _BIG
        if big.any():
            t[big] /= _BIG
            s[big] /= _BIG
            log_scale[active[big]] += _LOG_BIG
        term[active], total[active] = t, s
        # Past the mode the terms only shrink: stop once they are negligible; else at the edge.
        past_mode = (xa > mode[active]) if upward else (xa < mode[active])
        done = (past_mode & (t <= _TINY * s)) | (
            (xa >= hi[active]) if upward else (xa <= lo[active])
        )
        active = active[~done]
    with np.errstate(divide="ignore"):
        return np.log(total) + log_scale


def hypergeom_upper_tail(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int) -> np.ndarray:
    """P(X ≥ k) for X ~ Hypergeometric(population ``big_n``, ``big_k`` successes, ``n`` draws).

    Element-wise over int arrays; ``k`` must lie in the support (an observed count).
    """
    k, n, big_k = (np.asarray(a, dtype=np.int64) for a in (k, n, big_k))
    if k.size == 0:
        return np.empty(0, dtype=np.float64)
    log_up = _tail(k, n, big_k, big_n, upward=True)
    log_down = _tail(k, n, big_k, big_n, upward=False)
    p = np.exp(log_up - np.logaddexp(log_up, log_down))
    return np.asarray(np.minimum(p, 1.0), dtype=np.float64)
