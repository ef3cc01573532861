"""Null control: proteins' annotations permuted within length bins (seeded).

A feature that only tracks length still "hits" GO terms, because annotation counts depend on
length. Shuffling whole annotation sets among proteins of similar length keeps each term's count
in every length bin (and so its population size) but breaks any link to the sequence beyond
length. The other control — a dictionary trained on a randomly initialised model — is just
another dictionary given to the stage (``control_of``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer.go.annotations import NamespaceIncidence


def length_bins(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index (0..n_bins-1) of each length, by quantiles; ties share a bin."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    lengths = np.asarray(lengths, dtype=np.float64)
    edges = np.quantile(lengths, np.linspace(0, 1, n_bins + 1)[1:-1])
    return np.searchsorted(edges, lengths, side="right").astype(np.int64)


def permute_within_bins(
    inc: NamespaceIncidence, bins: np.ndarray, rng: np.random.Generator
) -> NamespaceIncidence:
    """The incidence with rows (annotation sets) shuffled among proteins of the same bin.

    ``bins`` gives the bin of each population row (aligned with ``inc.protein_rows``).
    """
    if bins.shape[0] != inc.pop_size:
        raise ValueError("one bin per population protein expected")
    source = np.arange(inc.pop_size)
    for b in np.unique(bins):
        members = np.flatnonzero(bins == b)
        source[members] = rng.permutation(members)
    matrix = sp.csr_matrix(inc.matrix[source])
    return NamespaceIncidence(inc.namespace, inc.protein_rows, inc.term_ids, matrix)


def permuted_incidences(
    incidences: dict[str, NamespaceIncidence],
    lengths: np.ndarray,
    n_bins: int,
    seed: int,
) -> dict[str, NamespaceIncidence]:
    """One permutation of every namespace; ``lengths`` is per corpus row."""
    rng = np.random.default_rng(seed)
    out = {}
    for ns, inc in incidences.items():
        bins = length_bins(lengths[inc.protein_rows], n_bins)
        out[ns] = permute_within_bins(inc, bins, rng)
    return out
