"""The seed paper's GO protocol, exactly: goatools' ``GOEnrichmentStudy`` with its defaults.

Gujral et al. (``goe_analysis/evals_goe.py``) run, per feature,
``GOEnrichmentStudy(human_proteins, bp_annotations, GODag("go.obo"), methods=["bonferroni"])``
on the human proteins where the feature is non-zero, and keep every term with Bonferroni
p < 0.05. With goatools' defaults that means (read from goatools 1.6 source):
- population: the human proteins (``organism == "Homo sapiens"``), *all* of them: ``pop_n``
  counts proteins with no BP annotation too; study: the population proteins where the feature
  is non-zero (features with none are not tested);
- annotations: BP (the corpus's Swiss-Prot GO column, as the paper's ``namespace="bp"``),
  alt ids mapped to their term, obsolete ids dropped (``GODag`` skips obsolete terms by
  default, so ``replaced_by`` is not followed), propagated over **is_a only**
  (``relationships=None``);
- terms: every term annotated (after propagation) to at least one population protein,
  whatever its size; Bonferroni over that number, within the feature;
- p-value: scipy's ``fisher_exact`` with its default, **two-sided** (``FisherScipyStats``),
  here by ``trainer.go.fisher.fisher_two_sided`` (scipy's rule, vectorised); significant
  means p × terms < alpha in either direction: depletion counts too (fold < 1).

Only tests that can reach significance are computed exactly: the two-sided p is at least the
pmf at the observed count, so a table whose pmf is already above alpha / terms is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from trainer.go.enrichment import effect_sizes, most_specific
from trainer.go.fisher import fisher_two_sided
from trainer.go.ontology import Ontology

PAPER_ORGANISM = "Homo sapiens"
PAPER_ALPHA = 0.05

PAPER_SETTINGS: dict[str, Any] = {
    "test": "Fisher's exact test, two-sided (scipy fisher_exact default, as goatools calls it)",
    "propagation": "is_a only (goatools default)",
    "namespaces": ["BP"],
    "population": f"the corpus's {PAPER_ORGANISM} proteins, annotated or not",
    "study": "population proteins where the feature is non-zero",
    "terms": "every term annotated to >= 1 population protein (no size filter)",
    "correction": "Bonferroni within each feature",
    "alpha": PAPER_ALPHA,
    "direction": "either (depleted terms, fold < 1, count as hits)",
    "annotations": "the corpus's GO BP annotations (Swiss-Prot 2014); obsolete ids dropped",
}
PAPER_STATEMENT = (
    "Seed paper (goatools GOEnrichmentStudy defaults): two-sided Fisher, is_a propagation, "
    "BP only, population = human proteins, every term present, Bonferroni within the feature, "
    "alpha 0.05; depletion counts."
)

PAPER_COLUMNS = (
    "feature_index", "go_id", "namespace", "study_hits", "study_size", "pop_hits", "pop_size",
    "odds_ratio", "fold_enrichment", "p_value", "p_bonferroni", "is_most_specific",
)  # fmt: skip


@dataclass
class PaperPopulation:
    """The human proteins with their is_a-propagated BP terms (rows in corpus order)."""

    protein_rows: np.ndarray  # int64 [n_pop]: corpus rows, ascending
    term_ids: list[str]  # [n_terms]: every term of >= 1 population protein, sorted
    matrix: sp.csr_matrix  # int32 0/1 [n_pop, n_terms]
    resolve_counts: dict[str, int]

    @property
    def size(self) -> int:
        return int(self.protein_rows.size)

    def term_sizes(self) -> np.ndarray:
        return np.asarray(self.matrix.sum(axis=0)).ravel().astype(np.int64)


def paper_population(
    ontology: Ontology,
    go_bp: Sequence[set[str]],
    organisms: Sequence[str | None],
    n_encoded: int,
) -> PaperPopulation:
    """The population goatools sees in the paper: human proteins, their BP ids resolved as a
    default ``GODag`` does (alt ids to their term; obsolete and unknown ids dropped) and
    propagated over is_a."""
    rows = [r for r in range(min(n_encoded, len(organisms))) if organisms[r] == PAPER_ORGANISM]
    counts = {"kept": 0, "alt_id_mapped": 0, "dropped": 0}
    closed: list[set[str]] = []
    for r in rows:
        ids: set[str] = set()
        for go_id in go_bp[r]:
            if go_id in ontology.terms:
                ids.add(go_id)
                counts["kept"] += 1
            elif go_id in ontology.alt_to_main:
                ids.add(ontology.alt_to_main[go_id])
                counts["alt_id_mapped"] += 1
            else:
                counts["dropped"] += 1
        up = set(ids)
        for go_id in ids:
            up |= ontology.is_a_ancestors.get(go_id, frozenset())
        closed.append(up)
    term_ids = sorted(set().union(*closed)) if closed else []
    col = {t: j for j, t in enumerate(term_ids)}
    indptr = np.zeros(len(closed) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(c) for c in closed])
    indices = np.fromiter((col[t] for c in closed for t in sorted(c)), np.int64, int(indptr[-1]))
    matrix = sp.csr_matrix(
        (np.ones(indices.size, dtype=np.int32), indices, indptr), shape=(len(rows), len(term_ids))
    )
    return PaperPopulation(np.asarray(rows, dtype=np.int64), term_ids, matrix, counts)


def _log_pmf(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int) -> np.ndarray:
    def log_choose(a: np.ndarray | float, b: np.ndarray) -> np.ndarray:
        return np.asarray(gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0))

    kf, nf, kk = (np.asarray(a, dtype=np.float64) for a in (k, n, big_k))
    return log_choose(kk, kf) + log_choose(big_n - kk, nf - kf) - log_choose(float(big_n), nf)


def _two_sided(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int, cutoff: float | None
) -> np.ndarray:
    """Two-sided p per table, once per distinct (k, n, K); NaN where the table's own pmf
    already exceeds ``cutoff`` (its p cannot be below it). ``cutoff`` None: every table."""
    p = np.full(k.size, np.nan)
    if k.size == 0:
        return p
    base = np.int64(big_n + 1)
    key = (k.astype(np.int64) * base + n.astype(np.int64)) * base + big_k.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    uk, rest = np.divmod(uniq, base * base)
    un, u_big_k = np.divmod(rest, base)
    up = np.full(uniq.size, np.nan)
    todo = np.ones(uniq.size, dtype=bool)
    if cutoff is not None:  # 1e-6: log-gamma's error margin; a skipped table is far above
        todo = _log_pmf(uk, un, u_big_k, big_n) <= np.log(cutoff) + 1e-6
    up[todo] = fisher_two_sided(uk[todo], un[todo], u_big_k[todo], big_n)[0]
    return up[inverse.ravel()]


def paper_tests(
    activations: sp.spmatrix,
    pop: PaperPopulation,
    *,
    features: slice | None = None,
    alpha: float = PAPER_ALPHA,
    block_size: int = 256,
    keep_all: bool = False,
) -> dict[str, np.ndarray]:
    """The Bonferroni-significant tests (every test when ``keep_all``) of the ``features``
    (a column range of ``activations`` [n_corpus, n_features]) as columns ``feature_index``,
    ``term`` (index into ``pop.term_ids``), ``k``, ``n``, ``K``, ``p``. Ranges are independent."""
    features = features or slice(0, activations.shape[1])
    cols = sp.csc_matrix(activations)[:, features]
    sub = sp.csr_matrix(cols)[pop.protein_rows]
    active_t = sp.csr_matrix(sp.csr_matrix(sub != 0, dtype=np.int32).T)  # [features, n_pop]
    big_n, big_k = pop.size, pop.term_sizes()
    n_terms = big_k.size
    cutoff = None if keep_all else alpha / max(n_terms, 1)
    n_study = np.asarray(active_t.sum(axis=1)).ravel().astype(np.int64)
    uniq_k, k_of_term = np.unique(big_k, return_inverse=True)
    out: dict[str, list[np.ndarray]] = {
        c: [] for c in ("feature_index", "term", "k", "n", "K", "p")
    }
    offset = features.start or 0
    for start in range(0, active_t.shape[0], block_size):
        block = slice(start, min(active_t.shape[0], start + block_size))
        tested = np.flatnonzero(n_study[block] > 0)
        if tested.size == 0 or n_terms == 0:
            continue
        n_rows = n_study[block][tested]
        hits = sp.csr_matrix(active_t[block][tested] @ pop.matrix)  # k > 0 entries
        coo = hits.tocoo()
        p_hit = _two_sided(coo.data.astype(np.int64), n_rows[coo.row], big_k[coo.col], big_n,
                           cutoff)  # fmt: skip
        # k = 0 tests: p depends on (n, K) only, so on a grid of the block's distinct values.
        un, n_index = np.unique(n_rows, return_inverse=True)
        grid_n = np.repeat(un, uniq_k.size)
        grid_k = np.tile(uniq_k, un.size)
        possible = grid_n + grid_k <= big_n  # else every such term has k > 0
        p_flat = np.full(grid_n.size, np.nan)
        p_flat[possible] = _two_sided(np.zeros(int(possible.sum()), np.int64),
                                      grid_n[possible], grid_k[possible], big_n, cutoff)  # fmt: skip
        p_zero = p_flat.reshape(un.size, uniq_k.size)
        keep = np.ones(p_hit.size, bool) if keep_all else p_hit * n_terms < alpha
        rows, terms, ks, ps = [coo.row[keep]], [coo.col[keep]], [coo.data[keep]], [p_hit[keep]]
        zero_ok = np.ones(p_zero.shape, bool) if keep_all else p_zero * n_terms < alpha
        for r in np.flatnonzero(zero_ok[n_index.ravel()].any(axis=1)):
            p_row = p_zero[n_index.ravel()[r]][k_of_term.ravel()]
            mask = zero_ok[n_index.ravel()[r]][k_of_term.ravel()]
            mask[hits.indices[hits.indptr[r] : hits.indptr[r + 1]]] = False  # those have k > 0
            t = np.flatnonzero(mask)
            rows.append(np.full(t.size, r))
            terms.append(t)
            ks.append(np.zeros(t.size, np.int64))
            ps.append(p_row[t])
        row = np.concatenate(rows).astype(np.int64)
        out["feature_index"].append(tested[row] + block.start + offset)
        out["term"].append(np.concatenate(terms).astype(np.int64))
        out["k"].append(np.concatenate(ks).astype(np.int64))
        out["n"].append(n_rows[row])
        out["K"].append(big_k[out["term"][-1]])
        out["p"].append(np.concatenate(ps).astype(np.float64))
    return {
        c: np.concatenate(v) if v else np.empty(0, np.float64 if c == "p" else np.int64)
        for c, v in out.items()
    }


def finish_paper(
    parts: list[dict[str, np.ndarray]], pop: PaperPopulation, ontology: Ontology
) -> dict[str, np.ndarray]:
    """Merge the ranges' tests into ``PAPER_COLUMNS`` (sorted by feature, then p)."""
    c = {
        name: np.concatenate([part[name] for part in parts])
        if parts
        else np.empty(0, np.float64 if name == "p" else np.int64)
        for name in ("feature_index", "term", "k", "n", "K", "p")
    }
    n_terms = len(pop.term_ids)
    go_ids = np.asarray(pop.term_ids, dtype=str)[c["term"]] if n_terms else np.empty(0, str)
    namespace = np.asarray([ontology.namespace(str(t)) for t in go_ids], dtype=str)
    nn = np.full(c["k"].size, pop.size, np.int64)
    odds, fold = effect_sizes(c["k"], c["n"], c["K"], nn)
    bonf = np.minimum(c["p"] * n_terms, 1.0)
    enriched = (bonf < PAPER_ALPHA) & (fold > 1)  # a depleted term labels nothing
    cols = {
        "feature_index": c["feature_index"], "go_id": go_ids, "namespace": namespace,
        "study_hits": c["k"], "study_size": c["n"], "pop_hits": c["K"], "pop_size": nn,
        "odds_ratio": odds, "fold_enrichment": fold, "p_value": c["p"], "p_bonferroni": bonf,
        "is_most_specific": most_specific(ontology, c["feature_index"], go_ids, c["p"], enriched),
    }  # fmt: skip
    order = np.lexsort((cols["go_id"], cols["p_value"], cols["feature_index"]))
    return {name: arr[order] for name, arr in cols.items()}


def paper_summary(
    cols: dict[str, np.ndarray], pop: PaperPopulation, n_features: int, n_tested: int
) -> dict[str, Any]:
    """The protocol's statement, settings and figures (summary.json ``protocols.paper``)."""
    sig = cols["p_bonferroni"] < PAPER_ALPHA
    with_hit = np.unique(cols["feature_index"][sig]).size
    enriched = np.unique(cols["feature_index"][sig & (cols["fold_enrichment"] > 1)]).size
    return {
        "statement": PAPER_STATEMENT,
        "settings": PAPER_SETTINGS,
        "population_size": pop.size,
        "terms_tested": len(pop.term_ids),
        "annotation_resolution": pop.resolve_counts,
        "n_features": n_features,
        "n_features_tested": n_tested,  # non-zero on >= 1 human protein
        "features_with_hit": int(with_hit),
        "features_with_enriched_hit": int(enriched),
        "pct_features_with_hit": round(100.0 * with_hit / n_features, 3) if n_features else 0.0,
        "n_significant_tests": int(sig.sum()),
        "n_depleted_tests": int((sig & (cols["fold_enrichment"] < 1)).sum()),
    }


def features_tested(activations: sp.spmatrix, pop: PaperPopulation) -> int:
    """Features non-zero on at least one population protein (the paper tests only those)."""
    sub = sp.csr_matrix(activations)[pop.protein_rows]
    return int(np.unique(sub.nonzero()[1]).size)
