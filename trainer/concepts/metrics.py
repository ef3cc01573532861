"""Concept alignment metrics for every feature at once (InterPLM's protocol, in bulk).

A feature "fires" on a residue when its activation, divided by the feature's max over the
corpus, is strictly above a threshold (InterPLM: 0, 0.15, 0.5, 0.6, 0.8). Against a concept's
0/1 residue labels, per threshold and feature:

- precision = fired ∧ labelled / fired, recall = fired ∧ labelled / labelled, F1 over residues;
- site recall = labelled sites (maximal runs of labelled residues inside one chain) with at
  least one fired residue / sites; ``f1_site`` combines it with precision (InterPLM's
  per-domain F1).

Counts are accumulated block by block (whole chains per block, so a site never straddles a
block) with matrix operations over all features; memory is one block × n_features.
The threshold of each (feature, concept) pair is chosen on TRAIN chains only and the pair is
then scored on TEST chains at that threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

INTERPLM_THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)
# Below this fraction of nonzero activations (SAEs: k of F), counting goes over the nonzero
# entries; above it (neurons: about half), the dense comparison is faster (bench_concept_counts).
SPARSE_BELOW = 0.1


class FeatureMax:
    """Running per-feature maximum of activations (the normaliser)."""

    def __init__(self, n_features: int) -> None:
        self.value = np.zeros(n_features, dtype=np.float32)

    def update(self, acts: np.ndarray) -> None:
        """``acts``: float [n_residues, n_features]."""
        if len(acts):
            np.maximum(self.value, acts.max(axis=0), out=self.value)


def normalise(acts: np.ndarray, feature_max: np.ndarray) -> np.ndarray:
    """Activations divided by each feature's max; a feature that never fired stays at 0."""
    scale = np.where(feature_max > 0, feature_max, np.inf).astype(np.float32)
    return np.asarray(acts, dtype=np.float32) / scale


def site_starts_in_positives(labels: np.ndarray, chain_starts: np.ndarray) -> np.ndarray:
    """Where each site begins, as indices into ``flatnonzero(labels)``.

    A site is a maximal run of labelled residues; runs are cut at chain boundaries.
    """
    pos = np.flatnonzero(labels)
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64)
    new_chain = np.zeros(len(labels), dtype=bool)
    new_chain[np.asarray(chain_starts, dtype=np.int64)] = True
    starts = np.ones(len(pos), dtype=bool)
    starts[1:] = (np.diff(pos) != 1) | new_chain[pos[1:]]
    return np.flatnonzero(starts)


def count_dense(
    acts: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """[n_thresholds, F] residues above each threshold, and labelled ones: whole-block compares."""
    on_labelled = acts[labels]
    fired = np.stack([(acts > t).sum(axis=0) for t in thresholds])
    true_pos = np.stack([(on_labelled > t).sum(axis=0) for t in thresholds])
    return fired, true_pos


def count_sparse(
    acts: np.ndarray, labels: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The same counts from the nonzero entries only (thresholds ascending and >= 0).

    Each entry's level (how many thresholds it exceeds) goes into a level × feature histogram;
    a reverse cumulative sum over levels gives the count above each threshold.
    """
    n_features = acts.shape[1]
    flat = np.ascontiguousarray(acts).reshape(-1)
    where = torch.nonzero(torch.from_numpy(flat)).numpy().ravel()  # 3x numpy's nonzero here
    rows, cols = np.divmod(where, n_features)
    levels = np.searchsorted(thresholds, flat[where], side="left")

    def above(lv: np.ndarray, c: np.ndarray) -> np.ndarray:
        n_thr = len(thresholds)
        hist = np.bincount(lv * n_features + c, minlength=(n_thr + 1) * n_features)
        at_least = np.cumsum(hist.reshape(n_thr + 1, n_features)[::-1], axis=0)[::-1]
        return at_least[1:]

    labelled = labels[rows]
    return above(levels, cols), above(levels[labelled], cols[labelled])


@dataclass
class Metrics:
    """Per threshold × feature metrics, each float64 [n_thresholds, n_features]."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    site_recall: np.ndarray
    f1_site: np.ndarray


def _f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    denom = p + r
    return np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)


class ConceptCounts:
    """Running counts for one (concept, split) over every threshold × feature."""

    def __init__(self, n_features: int, thresholds: tuple[float, ...]) -> None:
        if any(t < 0 for t in thresholds) or list(thresholds) != sorted(set(thresholds)):
            raise ValueError(f"thresholds must be distinct, ascending and >= 0: {thresholds}")
        shape = (len(thresholds), n_features)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.fired = np.zeros(shape, dtype=np.int64)
        self.true_pos = np.zeros(shape, dtype=np.int64)
        self.sites_hit = np.zeros(shape, dtype=np.int64)
        self.n_residues = 0
        self.n_positive = 0
        self.n_sites = 0

    def add(self, acts: np.ndarray, labels: np.ndarray, chain_starts: np.ndarray) -> None:
        """Add whole chains: ``acts`` normalised float [n, F], ``labels`` bool [n],
        ``chain_starts`` the row where each chain begins.

        Dictionary activations are sparse (TopK: k of F per residue), so for them residue
        counts are taken over the nonzero entries only: each entry's level (how many
        thresholds it exceeds) goes into a level × feature histogram, which a reverse
        cumulative sum turns into per-threshold counts. Dense activations (neurons) are
        compared with each threshold directly, which is faster for them.
        """
        labels = np.asarray(labels, dtype=bool)
        if acts.shape[0] != labels.shape[0]:
            raise ValueError(f"{acts.shape[0]} activation rows for {labels.shape[0]} labels")
        n_features = self.fired.shape[1]
        if acts.ndim != 2 or acts.shape[1] != n_features:
            raise ValueError(f"activations of shape {acts.shape}; expected (n, {n_features})")
        # Compared in the activations' own precision, exactly as ``acts > t`` would be.
        thresholds = np.asarray(self.thresholds, dtype=acts.dtype)
        sample = acts[:: max(1, acts.shape[0] // 512)]
        sparse = np.count_nonzero(sample) <= SPARSE_BELOW * max(sample.size, 1)
        fired, true_pos = (count_sparse if sparse else count_dense)(acts, labels, thresholds)
        self.fired += fired
        self.true_pos += true_pos

        pos = np.flatnonzero(labels)
        starts = site_starts_in_positives(labels, chain_starts)
        if len(starts):
            site_max = np.maximum.reduceat(acts[pos], starts, axis=0)
            for i, t in enumerate(thresholds):
                self.sites_hit[i] += (site_max > t).sum(axis=0)
        self.n_residues += int(labels.shape[0])
        self.n_positive += len(pos)
        self.n_sites += len(starts)

    def metrics(self) -> Metrics:
        fired = self.fired.astype(np.float64)
        tp = self.true_pos.astype(np.float64)
        precision = np.divide(tp, fired, out=np.zeros_like(tp), where=fired > 0)
        recall = tp / self.n_positive if self.n_positive else np.zeros_like(tp)
        site_recall = self.sites_hit / self.n_sites if self.n_sites else np.zeros_like(tp)
        return Metrics(
            precision, recall, _f1(precision, recall), site_recall, _f1(precision, site_recall)
        )


@dataclass
class PairMetrics:
    """One concept's metrics per feature at the threshold chosen on train; arrays [F]."""

    threshold_index: np.ndarray
    threshold: np.ndarray
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]


METRIC_NAMES = ("precision", "recall", "f1", "site_recall", "f1_site")


def choose_thresholds(train: Metrics, test: Metrics, thresholds: tuple[float, ...]) -> PairMetrics:
    """Per feature, the threshold with the best train F1 (ties: the lowest), scored on both."""
    best = np.argmax(train.f1, axis=0)
    cols = np.arange(train.f1.shape[1])

    def pick(m: Metrics) -> dict[str, np.ndarray]:
        return {name: getattr(m, name)[best, cols] for name in METRIC_NAMES}

    return PairMetrics(
        best, np.asarray(thresholds, dtype=np.float64)[best], pick(train), pick(test)
    )
