"""Per-feature statistics and example proteins, read off the protein activation matrix.

Density, maximum, mean and a histogram of every feature, and the proteins each feature shows on
its page: the top ones, a seeded draw per activation-quantile bin and the best-shown among those
with a structure. All features at once from the sparse matrix, never a dense copy of it.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from trainer.structure_coverage import PairCoverage

if TYPE_CHECKING:
    from trainer.analyze import AnalyzeConfig


def feature_stats(
    acts: sp.csr_matrix,
    cfg: AnalyzeConfig,
    residue_active: npt.NDArray[np.int64],
    n_residues: float,
) -> dict[str, Any]:
    """Density, max, mean over active, histogram per feature (columns of ``acts``).

    All features at once: each stored value carries its column, and the histogram bins are
    those of ``np.histogram(values, n_hist_bins, range=(0, max))`` per feature.
    """
    csc = acts.tocsc()
    csc.sort_indices()
    n_proteins, n_latents = acts.shape
    n_bins = cfg.n_hist_bins
    n_active = np.diff(csc.indptr).astype(np.int64)
    column = np.repeat(np.arange(n_latents), n_active)
    positive = csc.data > 0
    values, column = csc.data[positive].astype(np.float32), column[positive]
    count = np.bincount(column, minlength=n_latents)
    max_act = np.zeros(n_latents, dtype=np.float32)
    np.maximum.at(max_act, column, values)
    total = np.bincount(column, weights=values.astype(np.float64), minlength=n_latents)
    mean_act = (total / np.maximum(count, 1)).astype(np.float32)
    # A zero stop anywhere would switch linspace to another rounding for every row: dead
    # features get stop 1 here and zero edges afterwards, as np.histogram is never run on them.
    stops = np.where(count > 0, max_act, 1.0).astype(np.float64)
    hist_edges = np.linspace(0.0, stops, n_bins + 1, axis=1).astype(np.float32)
    hist_edges[count == 0] = 0.0
    # np.histogram's uniform-bin rule: floor((v - lo) · n / (hi - lo)), the top edge in the last
    # bin, then one step down/up where the float32 edges disagree with the float64 estimate.
    per_unit = n_bins / stops
    bins = (values.astype(np.float64) * per_unit[column]).astype(np.intp)
    bins[bins == n_bins] -= 1
    bins[values < hist_edges[column, bins]] -= 1
    bins[(values >= hist_edges[column, bins + 1]) & (bins != n_bins - 1)] += 1
    hist_counts = np.bincount(column * n_bins + bins, minlength=n_latents * n_bins)
    hist_counts = hist_counts.reshape(n_latents, n_bins).astype(np.int64)
    density = n_active / max(n_proteins, 1)
    residue_density = residue_active / n_residues if n_residues > 0 else np.zeros(n_latents)
    return {
        "n_active": n_active,
        "density": density.astype(np.float64),
        "residue_density": residue_density.astype(np.float64),
        "max_activation": max_act,
        "mean_activation": mean_act,
        "hist_counts": hist_counts,
        "hist_edges": hist_edges,
        "is_dead": n_active == 0,
    }


def select_examples(
    acts: sp.csr_matrix, covered: PairCoverage, cfg: AnalyzeConfig
) -> list[tuple[int, int, str, int, float]]:
    """(feature, protein, bin, rank, activation) for the top, quantile-bin and structure groups.

    Bins are equal-width in max-normalised activation: q1 = (0, 1/n], ..., qn = ((n-1)/n, 1];
    proteins already in the top group are not sampled again in a quantile bin. The loop over
    features stays: each bin's draw comes from one seeded generator, in feature order.
    The structure group ranks the proteins with a chain by what their best chain shows
    (``covered``): the peak residue resolved first, then the activation mass on resolved
    residues, then the protein's activation.
    """
    rng = np.random.default_rng(cfg.seed)
    structure_rows = _structure_candidates(covered, acts.shape[1])
    csc = acts.tocsc()
    out: list[tuple[int, int, str, int, float]] = []
    for f in range(acts.shape[1]):
        proteins = csc.indices[csc.indptr[f] : csc.indptr[f + 1]]
        values = csc.data[csc.indptr[f] : csc.indptr[f + 1]]
        keep = values > 0
        proteins, values = proteins[keep], values[keep]
        if proteins.size == 0:
            continue
        order = np.argsort(-values, kind="stable")
        top = order[: cfg.n_top]
        out.extend((f, int(proteins[i]), "top", r, float(values[i])) for r, i in enumerate(top))
        taken = np.zeros(proteins.size, dtype=bool)
        taken[top] = True
        normalised = values / values.max()
        edges = np.linspace(0.0, 1.0, cfg.n_bins + 1)
        for b in range(cfg.n_bins):
            in_bin = np.flatnonzero((normalised > edges[b]) & (normalised <= edges[b + 1]) & ~taken)
            if in_bin.size == 0 or cfg.per_bin == 0:
                continue
            chosen = rng.choice(in_bin, size=min(cfg.per_bin, in_bin.size), replace=False)
            chosen = chosen[np.argsort(-values[chosen], kind="stable")]
            out.extend(
                (f, int(proteins[i]), f"q{b + 1}", r, float(values[i]))
                for r, i in enumerate(chosen)
            )
        rows = structure_rows[f]
        if rows.size == 0 or cfg.n_structure == 0:
            continue
        activation = dict(zip(proteins.tolist(), values.tolist(), strict=True))
        cand = covered.protein[rows].tolist()
        key = [(-int(covered.peak_covered[r]), -float(covered.covered_mass[r]), -activation[p], p)
               for r, p in zip(rows.tolist(), cand, strict=True)]  # fmt: skip
        ranked = [cand[i] for i in sorted(range(len(cand)), key=key.__getitem__)]
        out.extend(
            (f, p, "structure", r, float(activation[p]))
            for r, p in enumerate(ranked[: cfg.n_structure])
        )
    return out


def _structure_candidates(covered: PairCoverage, n_latents: int) -> list[npt.NDArray[np.int64]]:
    """Per feature, the rows of ``covered`` that are its (protein, best chain) pairs."""
    order = np.argsort(covered.feature, kind="stable")
    bounds = np.searchsorted(covered.feature[order], np.arange(n_latents + 1))
    return [order[a:b] for a, b in itertools.pairwise(bounds.tolist())]
