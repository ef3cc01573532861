"""A 2-D map of a dictionary's features: UMAP of their decoder directions (cosine metric).

Features whose decoders point the same way sit together, so families of related features
(InterPLM's and Neuronpedia's feature maps) can be browsed as neighbourhoods. Dead latents are
left off (their decoders carry no learned direction; they get NaN), and so is the raw-neuron
baseline: its "decoder" is the standard basis, every direction orthogonal to every other, so a
map of it would be noise with a layout.
"""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

# Below this many live features UMAP's neighbour graph is degenerate; no map is drawn.
MIN_FEATURES = 8


class MapConfig(BaseModel):
    """UMAP's parameters for the feature map (umap-learn's own defaults, cosine metric)."""

    enabled: bool = True
    n_neighbors: int = Field(default=15, ge=2, description="UMAP n_neighbors")
    min_dist: float = Field(default=0.1, ge=0.0, le=1.0, description="UMAP min_dist")


def feature_map(
    directions: npt.NDArray[np.floating],
    live: npt.NDArray[np.bool_],
    cfg: MapConfig,
    seed: int,
) -> npt.NDArray[np.float32]:
    """``[n_latents, 2]`` map coordinates, scaled into [0, 1] on the longer axis (aspect kept);
    NaN rows for dead latents, and all NaN when fewer than MIN_FEATURES are live.

    ``directions``: each latent's decoder direction ``[n_latents, d]``. ``seed`` fixes UMAP's
    layout (umap-learn then runs single-threaded, so a rerun gives the same map)."""
    n = directions.shape[0]
    out = np.full((n, 2), np.nan, dtype=np.float32)
    rows = np.flatnonzero(live & (np.linalg.norm(directions, axis=1) > 0))
    if rows.size < MIN_FEATURES:
        return out
    import umap  # heavy import (numba, scikit-learn, pynndescent): only where a map is made

    reducer = umap.UMAP(
        n_neighbors=min(cfg.n_neighbors, rows.size - 1),
        min_dist=cfg.min_dist,
        metric="cosine",
        random_state=seed,
    )
    with warnings.catch_warnings():  # "n_jobs overridden by setting random_state": as intended
        warnings.filterwarnings("ignore", message=".*n_jobs value .* overridden.*")
        xy = np.asarray(reducer.fit_transform(directions[rows].astype(np.float32)), np.float64)
    xy -= xy.min(axis=0)
    xy /= max(float(xy.max()), 1e-12)
    out[rows] = xy.astype(np.float32)
    return out
