"""Rank a sequence's active features (by max or mean) and cut them to what a page can show."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.encoding.service import DictionaryHandle, SequenceEncoding


@dataclass(frozen=True)
class ActiveFeature:
    """One latent active on a sequence; ``values`` per residue (None when not asked for)."""

    index: int
    max: float
    mean: float
    n_active_residues: int
    max_position: int | None
    density: float
    values: list[float] | None


@dataclass(frozen=True)
class Ranking:
    features: list[ActiveFeature]
    n_active: int  # active latents before hiding dense ones and cutting to top_n
    n_hidden_dense: int


def rank_features(
    handle: DictionaryHandle,
    enc: SequenceEncoding,
    *,
    top_n: int,
    rank_by: str = "max",
    hide_dense: bool = False,
    dense_threshold: float = 0.5,
    include_residues: bool = True,
    decimals: int = 4,
) -> Ranking:
    """The ``top_n`` active latents of ``enc``, ranked by ``rank_by`` (``max`` or ``mean``).

    ``hide_dense`` drops latents whose corpus density (from the store) exceeds
    ``dense_threshold``: always-on features drown the specific ones.
    """
    active = np.flatnonzero(enc.pooled > 0)
    n_active = int(active.size)
    n_hidden = 0
    if hide_dense:
        keep = handle.density[active] <= dense_threshold
        n_hidden = int((~keep).sum())
        active = active[keep]
    score = (enc.pooled if rank_by == "max" else enc.mean)[active]
    order = active[np.argsort(-score, kind="stable")][:top_n]
    columns = enc.residue[:, order].toarray() if order.size else np.zeros((enc.length, 0))
    features = []
    for j, index in enumerate(order):
        col = columns[:, j]
        values = np.round(col, decimals).astype(float).tolist() if include_residues else None
        features.append(
            ActiveFeature(
                index=int(index),
                max=float(enc.pooled[index]),
                mean=float(enc.mean[index]),
                n_active_residues=int((col > 0).sum()),
                max_position=int(col.argmax()) if col.size else None,
                density=float(handle.density[index]),
                values=values,
            )
        )
    return Ranking(features, n_active, n_hidden)
