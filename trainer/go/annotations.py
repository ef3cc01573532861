"""Protein × GO term incidence matrices (scipy.sparse), one per namespace, after propagation.

The population of a namespace is every encoded protein with at least one (resolved) annotation
in that namespace; its rows keep corpus order, so ``protein_rows[i]`` is the corpus row of row i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from trainer.go.ontology import Ontology, ResolveCounts


@dataclass
class NamespaceIncidence:
    """Propagated annotations of one namespace's population."""

    namespace: str  # BP | MF | CC
    protein_rows: np.ndarray  # int64 [n_pop]: corpus rows of the population, ascending
    term_ids: list[str]  # [n_terms]: every term annotated to >= 1 population protein, sorted
    matrix: sp.csr_matrix  # int32 0/1 [n_pop, n_terms]

    @property
    def pop_size(self) -> int:
        return int(self.matrix.shape[0])

    def term_sizes(self) -> np.ndarray:
        """Population hits per term: int64 [n_terms]."""
        return np.asarray(self.matrix.sum(axis=0)).ravel().astype(np.int64)

    def restrict_terms(self, keep: np.ndarray) -> NamespaceIncidence:
        """The same population with only the terms where ``keep`` (bool [n_terms]) is true."""
        cols = np.flatnonzero(keep)
        return NamespaceIncidence(
            self.namespace,
            self.protein_rows,
            [self.term_ids[c] for c in cols],
            sp.csr_matrix(self.matrix[:, cols]),
        )


def split_by_namespace(
    ontology: Ontology, per_protein: Sequence[set[str]]
) -> dict[str, list[set[str]]]:
    """Each protein's live ids grouped by their namespace in the DAG (not by source column)."""
    out: dict[str, list[set[str]]] = {ns: [set() for _ in per_protein] for ns in ("BP", "MF", "CC")}
    for row, ids in enumerate(per_protein):
        for go_id in ids:
            out[ontology.namespace(go_id)][row].add(go_id)
    return out


def resolve_corpus_annotations(
    ontology: Ontology,
    go_bp: Sequence[set[str]],
    go_mf: Sequence[set[str]],
    go_cc: Sequence[set[str]],
) -> tuple[dict[str, list[set[str]]], ResolveCounts]:
    """Resolve alt/obsolete ids of all three columns, then split by the DAG's namespace."""
    if not len(go_bp) == len(go_mf) == len(go_cc):
        raise ValueError("go_bp, go_mf and go_cc must have one entry per protein")
    union = [set(b) | set(m) | set(c) for b, m, c in zip(go_bp, go_mf, go_cc, strict=True)]
    resolved, counts = ontology.resolve_sets(union)
    return split_by_namespace(ontology, resolved), counts


def build_incidence(
    ontology: Ontology, namespace: str, per_protein: Sequence[set[str]], n_encoded: int
) -> NamespaceIncidence:
    """Propagate each protein's ids to all ancestors and build the 0/1 incidence matrix.

    Only proteins ``< n_encoded`` (those with activations) with >= 1 annotation are kept.
    """
    rows: list[int] = []
    closed: list[set[str]] = []
    for row, ids in enumerate(per_protein[:n_encoded]):
        if ids:
            rows.append(row)
            closed.append(
                {t for t in ontology.propagate(ids) if ontology.namespace(t) == namespace}
            )
    term_ids = sorted(set().union(*closed)) if closed else []
    col = {t: j for j, t in enumerate(term_ids)}
    indptr = np.zeros(len(closed) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(c) for c in closed])
    indices = np.fromiter((col[t] for c in closed for t in sorted(c)), np.int64, int(indptr[-1]))
    data = np.ones(len(indices), dtype=np.int32)
    matrix = sp.csr_matrix((data, indices, indptr), shape=(len(closed), len(term_ids)))
    return NamespaceIncidence(namespace, np.asarray(rows, dtype=np.int64), term_ids, matrix)
