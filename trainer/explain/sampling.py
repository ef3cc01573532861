"""Which proteins a feature's explanation is written from and scored on (the seed paper's protocol).

Per feature: activations are divided by the feature's maximum over the corpus (so they lie in
[0, 1]; negatives, e.g. raw neurons, are clipped at 0 first, as the seed's ``embedding_relu``),
active proteins are drawn across five equal-width bins — 6 from [0.8, 1], 3 from each middle bin,
2 from (0, 0.2) — with the seed's spill-over (a short bin borrows from its nearest bins, lower
first), plus 15 inactive proteins (activation exactly 0). A random half of the actives and of the
inactives (8 + 7 by the seed's ``int(n * 0.5)``) explain; the other 17, shuffled, are the test set.

One deliberate fix: the seed's top bin is half-open ``[0.8, 1.0)``, so the protein at the maximum
(activation exactly 1) could never be drawn; here the top bin is closed, ``[0.8, 1.0]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field
from scipy import sparse

BIN_EDGES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class BinSpec(BaseModel):
    """How many proteins to draw per bin, low to high, and the inactive count (seed defaults)."""

    per_bin: list[int] = Field(default_factory=lambda: [2, 3, 3, 3, 6])
    n_inactive: int = 15
    explain_fraction: float = 0.5
    # The seed skips a feature unless it has at least twice the active sample size.
    min_active_factor: float = 2.0

    @property
    def n_active(self) -> int:
        return sum(self.per_bin)

    @property
    def min_active(self) -> int:
        return int(np.ceil(self.min_active_factor * self.n_active))


@dataclass
class FeatureSample:
    """The proteins (corpus rows) chosen for one feature and how they split."""

    feature: int
    explain_rows: list[int] = field(default_factory=list)
    explain_acts: list[float] = field(default_factory=list)
    test_rows: list[int] = field(default_factory=list)
    test_acts: list[float] = field(default_factory=list)
    skip_reason: str | None = None
    n_active: int = 0
    n_inactive: int = 0


def normalise(column: np.ndarray) -> np.ndarray:
    """Clip at 0 and divide by the maximum; an all-zero column stays all zero."""
    col = np.clip(np.asarray(column, dtype=np.float64), 0.0, None)
    top = float(col.max()) if col.size else 0.0
    return col / top if top > 0 else col


def _bin_members(acts: np.ndarray, active: np.ndarray, b: int) -> np.ndarray:
    lo, hi = BIN_EDGES[b], BIN_EDGES[b + 1]
    vals = acts[active]
    last = b == len(BIN_EDGES) - 2
    mask = (vals >= lo) & ((vals <= hi) if last else (vals < hi))
    return active[mask]


def _draw_with_spillover(
    acts: np.ndarray,
    active: np.ndarray,
    b: int,
    want: int,
    used: set[int],
    rng: np.random.Generator,
) -> list[int]:
    """Draw ``want`` unused rows from bin ``b``, then from bins b-1, b+1, b-2, b+2, ... (seed order)."""
    picked: list[int] = []
    n_bins = len(BIN_EDGES) - 1
    order = [b]
    for d in range(1, n_bins):
        order += [x for x in (b - d, b + d) if 0 <= x < n_bins]
    for x in order:
        if len(picked) >= want:
            break
        pool = sorted(set(_bin_members(acts, active, x).tolist()) - used)
        if not pool:
            continue
        take = rng.choice(pool, size=min(want - len(picked), len(pool)), replace=False)
        for row in take.tolist():
            used.add(int(row))
            picked.append(int(row))
    return picked


def sample_feature(
    feature: int, acts: np.ndarray, spec: BinSpec, rng: np.random.Generator
) -> FeatureSample:
    """Sample one feature's explain and test proteins from its normalised activations ``acts``."""
    active = np.flatnonzero(acts > 0)
    inactive = np.flatnonzero(acts == 0)
    out = FeatureSample(feature=feature, n_active=len(active), n_inactive=len(inactive))
    if len(active) < spec.min_active:
        out.skip_reason = f"too few active proteins: {len(active)} < {spec.min_active}"
        return out
    if len(inactive) < spec.n_inactive:
        out.skip_reason = f"too few inactive proteins: {len(inactive)} < {spec.n_inactive}"
        return out
    used: set[int] = set()
    n_bins = len(BIN_EDGES) - 1
    rows: list[int] = []
    # The seed draws the top bin first, then the others from low to high.
    for b in [n_bins - 1, *range(n_bins - 1)]:
        rows += _draw_with_spillover(acts, active, b, spec.per_bin[b], used, rng)
    if len(rows) < spec.n_active:  # cannot happen after the min_active check; kept as a guard
        out.skip_reason = f"sampled only {len(rows)} active proteins"
        return out
    off = rng.choice(inactive, size=spec.n_inactive, replace=False).astype(int).tolist()
    act_perm = rng.permutation(len(rows))
    off_perm = rng.permutation(len(off))
    n_exp_a = int(len(rows) * spec.explain_fraction)
    n_exp_i = int(len(off) * spec.explain_fraction)
    exp = [rows[i] for i in act_perm[:n_exp_a]] + [off[i] for i in off_perm[:n_exp_i]]
    test = [rows[i] for i in act_perm[n_exp_a:]] + [off[i] for i in off_perm[n_exp_i:]]
    test = [test[i] for i in rng.permutation(len(test))]
    out.explain_rows, out.test_rows = exp, test
    out.explain_acts = [float(acts[r]) for r in exp]
    out.test_acts = [float(acts[r]) for r in test]
    return out


def sample_features(
    matrix: sparse.spmatrix | sparse.sparray, n_features: int, spec: BinSpec, seed: int
) -> list[FeatureSample]:
    """Walk the latents in a seeded random order until ``n_features`` are sampled.

    Skipped latents met on the way are returned too (with their reason), so the record says why
    each one was passed over. Each feature draws from its own generator seeded by (seed, index),
    so its sample does not depend on which other features were chosen.
    """
    csc = sparse.csc_matrix(matrix)
    order = np.random.default_rng(seed).permutation(csc.shape[1])
    out: list[FeatureSample] = []
    n_ok = 0
    for j in order.tolist():
        if n_ok >= n_features:
            break
        column = csc[:, j].toarray().ravel()
        sample = sample_feature(j, normalise(column), spec, np.random.default_rng([seed, j]))
        out.append(sample)
        n_ok += sample.skip_reason is None
    return out
