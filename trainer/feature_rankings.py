"""The two top-k tables of an analysis: per feature its nearest decoder directions, per
protein its most active features (the feature and protein pages list them).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from app.sae import Dictionary


def decoder_neighbors(
    module: Dictionary, n_neighbors: int, block: int = 4096
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """For every feature, the ``n_neighbors`` features with the most similar decoder direction."""
    with torch.inference_mode():
        directions = module.decoder_directions().float()
        directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12)
    n = directions.shape[0]
    k = min(n_neighbors, n - 1)
    indices = np.zeros((n, max(k, 0)), dtype=np.int64)
    cosines = np.zeros((n, max(k, 0)), dtype=np.float32)
    if k <= 0:
        return indices, cosines
    for start in range(0, n, block):
        sims = directions[start : start + block] @ directions.T
        rows = torch.arange(sims.shape[0], device=sims.device)
        sims[rows, rows + start] = -2.0  # never your own neighbour
        top = torch.topk(sims, k, dim=1)
        indices[start : start + block] = top.indices.cpu().numpy()
        cosines[start : start + block] = top.values.cpu().numpy()
    return indices, cosines


def protein_top_features(acts: sp.csr_matrix, k: int) -> list[tuple[int, int, int, float]]:
    """(protein, feature, rank, activation): each protein's ``k`` most active features, ties in
    feature order, for all proteins at once (one sort of the stored values)."""
    csr = acts.tocsr()
    csr.sort_indices()
    row = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
    order = np.lexsort((-csr.data, row))  # by protein, then activation descending (stable)
    rank = np.arange(len(order)) - csr.indptr[row[order]]
    keep = order[rank < k]
    return list(zip(row[keep].tolist(), csr.indices[keep].tolist(),
                    rank[rank < k].tolist(), csr.data[keep].astype(float).tolist(), strict=True))  # fmt: skip
