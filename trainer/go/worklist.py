"""Missing-annotation worklists from GO hits, and their prospective check against a later snapshot.

For every hit of a feature that survives the length control (significant by BH and within
length strata, and the most specific such term), the candidates are the human proteins the
feature is active on that lack the term in the earlier snapshot (after propagation), ranked by
activation: "this protein may be involved in X". Only the earlier annotations build a list.

The check: a candidate is confirmed when the later snapshot has the term or a descendant
(both snapshots propagated over the same ontology) and the earlier one had not. A confirmed
gain counts under the strongest evidence group that carries it (``later_snapshot.GROUP_ORDER``).
The baseline of each list is the gain rate of random human proteins lacking the term in the
earlier snapshot, matched by length: every human protein lacking the term, in the candidate's
protein-length bin (quantile bins over the human proteins); its expected precision is the mean
of those bin rates over the list's candidates, exact rather than sampled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from trainer.go.later_snapshot import GROUP_ORDER

# Candidate columns of ``worklist/{name}/candidates.npz`` (one row per listed protein).
CANDIDATE_COLUMNS = (
    "feature_index", "go_id", "rank", "protein_row", "activation", "confirmed", "baseline_rate",
)  # fmt: skip
# ``confirmed``: 0 = not gained by the later snapshot, else 1 + index in GROUP_ORDER.
NOT_CONFIRMED = 0
KS = (10, 50, 100)


@dataclass
class Snapshots:
    """Both snapshots on the human proteins, over the terms the lists ask about."""

    human_rows: np.ndarray  # int64: corpus rows of the proteins with a gene id (human)
    lengths: np.ndarray  # int64 [n_human]
    earlier: list[set[str]]  # [n_human] propagated earlier ids
    later: dict[str, list[set[str]]]  # group -> [n_human] propagated later ids
    n_length_bins: int
    _bins: np.ndarray = field(init=False, repr=False)
    _term_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        init=False, repr=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        self._bins = length_bins(self.lengths, self.n_length_bins)
        self.position = {int(r): i for i, r in enumerate(self.human_rows)}

    def term(self, go_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(lacks in earlier: bool [n_human], confirmed code: int8 [n_human], any-gain rate per
        length bin among the proteins lacking it: float [n_bins])."""
        if go_id not in self._term_cache:
            lacks = np.array([go_id not in ids for ids in self.earlier], dtype=bool)
            code = np.zeros(len(self.earlier), dtype=np.int8)
            for g, group in reversed(list(enumerate(GROUP_ORDER))):  # strongest group wins
                has = np.array([go_id in ids for ids in self.later[group]], dtype=bool)
                code[has & lacks] = g + 1
            n_bins = int(self._bins.max()) + 1 if self._bins.size else 0
            pool = np.bincount(self._bins[lacks], minlength=n_bins).astype(float)
            gained = np.bincount(self._bins[lacks & (code > 0)], minlength=n_bins).astype(float)
            rate = np.divide(gained, pool, out=np.zeros(n_bins), where=pool > 0)
            self._term_cache[go_id] = (lacks, code, rate)
        return self._term_cache[go_id]

    def bin_of(self, positions: np.ndarray) -> np.ndarray:
        return self._bins[positions]


def length_bins(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """Quantile bin (0..n_bins-1) of each length; ties share a bin."""
    if lengths.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.unique(np.quantile(lengths, np.linspace(0, 1, n_bins + 1))[1:-1])
    return np.searchsorted(edges, lengths, side="right").astype(np.int64)


def qualifying_hits(hits: dict[str, np.ndarray], alpha: float) -> np.ndarray:
    """Indices of hits that survive the length control: q < alpha, length-adjusted q < alpha,
    and the feature's most specific such term."""
    if "q_length" not in hits or len(hits["feature_index"]) == 0:
        return np.zeros(0, dtype=np.int64)
    q_length = np.nan_to_num(hits["q_length"].astype(float), nan=1.0)
    keep = (hits["q_value"] < alpha) & (q_length < alpha) & hits["is_most_specific"].astype(bool)
    return np.flatnonzero(keep)


def build_worklists(
    activations: sp.csc_matrix,
    hits: dict[str, np.ndarray],
    snapshots: Snapshots,
    *,
    alpha: float,
    threshold: float,
    max_candidates: int,
) -> dict[str, np.ndarray]:
    """Every qualifying hit's list, as ``CANDIDATE_COLUMNS`` (ranks from 1, by activation)."""
    cols: dict[str, list[Any]] = {c: [] for c in CANDIDATE_COLUMNS}
    for i in qualifying_hits(hits, alpha):
        f, go_id = int(hits["feature_index"][i]), str(hits["go_id"][i])
        column = activations[:, f]
        rows, values = column.indices, column.data
        active = values > threshold
        rows, values = rows[active], values[active]
        positions = np.array([snapshots.position.get(int(r), -1) for r in rows], dtype=np.int64)
        is_human = positions >= 0
        rows, values, positions = rows[is_human], values[is_human], positions[is_human]
        lacks, code, rate = snapshots.term(go_id)
        take = lacks[positions]
        rows, values, positions = rows[take], values[take], positions[take]
        order = np.lexsort((rows, -values))[:max_candidates]  # ties: corpus order
        n = len(order)
        cols["feature_index"].extend([f] * n)
        cols["go_id"].extend([go_id] * n)
        cols["rank"].extend(range(1, n + 1))
        cols["protein_row"].extend(rows[order].tolist())
        cols["activation"].extend(values[order].tolist())
        cols["confirmed"].extend(code[positions[order]].tolist())
        cols["baseline_rate"].extend(rate[snapshots.bin_of(positions[order])].tolist())
    return {
        "feature_index": np.asarray(cols["feature_index"], dtype=np.int64),
        "go_id": np.asarray(cols["go_id"], dtype="U10"),
        "rank": np.asarray(cols["rank"], dtype=np.int64),
        "protein_row": np.asarray(cols["protein_row"], dtype=np.int64),
        "activation": np.asarray(cols["activation"], dtype=np.float32),
        "confirmed": np.asarray(cols["confirmed"], dtype=np.int8),
        "baseline_rate": np.asarray(cols["baseline_rate"], dtype=np.float64),
    }


def precision_at(candidates: dict[str, np.ndarray], ks: tuple[int, ...] = KS) -> dict[str, Any]:
    """Precision at the top k of each list, averaged over a feature's lists, then over features.

    A list shorter than k counts with all its candidates (precision at min(k, n)); ``lists``
    and ``lists_full`` say how many lists there are and how many reach k. Per evidence group
    (a gain under its strongest group, so the groups add up to ``any``) and for the
    length-matched random baseline (expected value).
    """
    out: dict[str, Any] = {}
    if len(candidates["rank"]) == 0:
        return {str(k): None for k in ks}
    feature, go_id = candidates["feature_index"], candidates["go_id"]
    key = np.char.add(np.char.add(feature.astype("U12"), "|"), go_id)
    for k in ks:
        top = candidates["rank"] <= k
        series: dict[str, np.ndarray] = {
            "any": (candidates["confirmed"] > 0).astype(float),
            **{
                g: (candidates["confirmed"] == i + 1).astype(float)
                for i, g in enumerate(GROUP_ORDER)
            },
            "baseline": candidates["baseline_rate"],
        }
        lists, inverse = np.unique(key[top], return_inverse=True)
        sizes = np.bincount(inverse)
        list_feature = np.zeros(len(lists), dtype=np.int64)
        list_feature[inverse] = feature[top]
        feats, feat_inverse = np.unique(list_feature, return_inverse=True)
        per_k: dict[str, Any] = {
            "features": len(feats),
            "lists": len(lists),
            "lists_full": int((sizes >= k).sum()),
            "candidates": int(top.sum()),
        }
        for name, values in series.items():
            per_list = np.bincount(inverse, weights=values[top]) / sizes
            per_feature = np.bincount(feat_inverse, weights=per_list) / np.bincount(feat_inverse)
            per_k[name] = round(float(per_feature.mean()), 4)
        out[str(k)] = per_k
    return out
