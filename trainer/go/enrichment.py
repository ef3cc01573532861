"""Vectorised GO over-representation tests of every feature of a dictionary at once.

For feature f and term t of a namespace: the study set is the population proteins where f is
active (activation > threshold), ``k`` of its ``n`` proteins carry t, and t covers ``K`` of the
``N`` population proteins. The p-value is Fisher's exact test, one-sided "greater": the
hypergeometric upper tail that scipy's ``fisher_exact`` computes (``hypergeom.cdf(n-k, N, n,
N-K)``), here by ``trainer.go.fisher`` (vectorised, 28x faster than scipy's per-table Boost call
at full-corpus sizes, equal to it within 1e-11 relative), once per unique (k, n, K) tuple. It
equals goatools' ``GOEnrichmentStudy`` only with non-default settings: ``alternative="greater"``,
``relationships={"part_of"}`` and this module's population (tested at rtol 1e-9). This is our
"strict" protocol; the seed paper's, goatools with its defaults, is ``trainer.go.paper``.

Features stream through in blocks, so memory is flat in the number of features: only tests with
p <= ``keep_p`` (default alpha; every stored hit has p <= alpha because both corrections only
raise p) and a histogram of distinct p-values (for Benjamini–Hochberg over *all* tests of the
dictionary, exactly) are kept. Corrections:
- ``q_value``: BH over every feature × term test of the dictionary, all namespaces together;
- ``p_bonferroni``: min(1, p × number of terms tested in the namespace), within the feature
  (goatools' Bonferroni, which does not clip at 1). Not the paper's protocol: the test is
  one-sided and the terms are those this protocol tests (``trainer.go.paper`` is the paper's).
- ``q_length``: BH, as ``q_value``, over the length-stratified p-values ``p_length``
  (``trainer.go.stratified``: the same study set and term, tested within protein-length strata,
  so that a feature that only fires in long proteins gets no hit from their extra annotations).
Significant means corrected value < alpha.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from trainer.go.annotations import NamespaceIncidence
from trainer.go.controls import length_bins
from trainer.go.fisher import hypergeom_upper_tail
from trainer.go.ontology import Ontology
from trainer.go.stratified import feature_term_pvalues, stratum_onehot

HIT_COLUMNS = (
    "feature_index", "go_id", "namespace", "study_hits", "study_size", "pop_hits", "pop_size",
    "odds_ratio", "fold_enrichment", "p_value", "q_value", "p_bonferroni", "p_length", "q_length",
    "is_most_specific",
)  # fmt: skip


def fisher_greater(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int) -> np.ndarray:
    """One-sided Fisher p for over-representation, element-wise, as scipy.stats.fisher_exact.

    k study hits, n study size, big_k population hits, big_n population size (int arrays).
    """
    p = hypergeom_upper_tail(k, n, big_k, big_n)  # float64, clipped at 1
    # fisher_exact returns 1 when a margin of the table is empty.
    return np.where((n == big_n) | (big_k == big_n), 1.0, p)


def unique_tuple_pvalues(k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: int) -> np.ndarray:
    """``fisher_greater`` evaluated once per distinct (k, n, K) and scattered back."""
    if k.size == 0:
        return np.empty(0, dtype=np.float64)
    base = np.int64(big_n + 1)
    key = (k.astype(np.int64) * base + n.astype(np.int64)) * base + big_k.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    uk, rest = np.divmod(uniq, base * base)
    un, uK = np.divmod(rest, base)
    return fisher_greater(uk, un, uK, big_n)[inverse.ravel()]


@dataclass
class PValueHistogram:
    """Distinct p-values with their counts: enough for exact BH over millions of tests, and
    mergeable, so that features can be tested in separate processes (``update``).

    New p-values wait in a buffer and are merged (one np.unique) once it holds ``merge_at``
    values, not at every block: merging re-sorts everything counted so far.
    """

    values: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    counts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    merge_at: int = 4_000_000
    _pending: list[np.ndarray] = field(default_factory=list)
    _pending_counts: list[np.ndarray] = field(default_factory=list)
    _pending_size: int = 0
    _pending_ones: int = 0

    def add(self, p: np.ndarray, extra_ones: int = 0) -> None:
        """Count the p-values ``p`` plus ``extra_ones`` tests whose p is exactly 1."""
        self._pending.append(np.asarray(p, dtype=np.float64))
        self._pending_counts.append(np.ones(p.size, np.int64))
        self._pending_size += p.size
        self._pending_ones += extra_ones
        if self._pending_size >= self.merge_at:
            self._merge()

    def update(self, other: PValueHistogram) -> None:
        """Count every test that ``other`` counted (a partial histogram of other features)."""
        other._merge()
        self._pending.append(other.values)
        self._pending_counts.append(other.counts)
        self._pending_size += other.values.size
        if self._pending_size >= self.merge_at:
            self._merge()

    def _merge(self) -> None:
        if not self._pending and not self._pending_ones:
            return
        ones = self._pending_ones
        vals = np.concatenate([self.values, *self._pending, [1.0] if ones else []])
        cnts = np.concatenate([self.counts, *self._pending_counts, [ones] if ones else []]).astype(
            np.int64
        )
        self.values, inverse = np.unique(vals, return_inverse=True)
        self.counts = np.bincount(inverse.ravel(), weights=cnts, minlength=self.values.size).astype(
            np.int64
        )
        self._pending, self._pending_counts = [], []
        self._pending_size, self._pending_ones = 0, 0

    @property
    def n_tests(self) -> int:
        self._merge()
        return int(self.counts.sum())

    def bh(self, p: np.ndarray) -> np.ndarray:
        """BH-adjusted values of p-values that were counted (same maths as scipy's)."""
        if p.size == 0:
            return np.empty(0, dtype=np.float64)
        self._merge()
        rank = np.cumsum(self.counts).astype(np.float64)
        adjusted = self.values * (self.n_tests / rank)
        adjusted = np.minimum.accumulate(adjusted[::-1])[::-1]
        idx = np.searchsorted(self.values, p)
        if np.any(idx >= self.values.size) or np.any(self.values[idx] != p):
            raise ValueError("bh() called with a p-value that was never counted")
        return np.asarray(np.clip(adjusted[idx], 0.0, 1.0))


def active_matrix(
    activations: sp.spmatrix, protein_rows: np.ndarray, threshold: float
) -> sp.csr_matrix:
    """int32 0/1 [n_features, n_pop]: feature f is active on population protein i."""
    sub = sp.csr_matrix(activations)[protein_rows]
    active = sp.csr_matrix(sub > threshold, dtype=np.int32)
    return sp.csr_matrix(active.T)


CANDIDATE_COLUMNS = ("feature_index", "term", "k", "n", "K", "N", "p", "pl", "m")


@dataclass
class Candidates:
    """Tests kept from the streaming pass (p <= keep_p), one array per column. ``term`` indexes
    the terms of all namespaces in ``TermIndex`` order: integers, so that partial results are
    small and cheap to send between processes."""

    cols: dict[str, list[np.ndarray]] = field(
        default_factory=lambda: {c: [] for c in CANDIDATE_COLUMNS}
    )

    def append(self, **arrays: np.ndarray) -> None:
        for name, arr in arrays.items():
            self.cols[name].append(arr)

    def concat(self) -> dict[str, np.ndarray]:
        return {c: np.concatenate(v) if v else np.empty(0) for c, v in self.cols.items()}


@dataclass(frozen=True)
class TermIndex:
    """The tested terms of every namespace, in one numbering: namespace i's terms start at
    ``offsets[i]``."""

    go_ids: np.ndarray  # [terms] str
    namespaces: np.ndarray  # [terms] str
    offsets: dict[str, int]

    @classmethod
    def of(cls, incidences: Mapping[str, NamespaceIncidence]) -> TermIndex:
        offsets, start = {}, 0
        for ns, inc in incidences.items():
            offsets[ns] = start
            start += len(inc.term_ids)
        go_ids = [t for inc in incidences.values() for t in inc.term_ids]
        namespaces = [inc.namespace for inc in incidences.values() for _ in inc.term_ids]
        return cls(np.asarray(go_ids, dtype=str), np.asarray(namespaces, dtype=str), offsets)


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


@dataclass
class Strata:
    """Length strata of one namespace's population: the bin of each protein, and the counts."""

    onehot: np.ndarray  # [n_pop, n_bins] 0/1
    term_counts: np.ndarray  # [n_terms, n_bins]: K_s of every term
    sizes: np.ndarray  # [n_bins]: N_s

    @classmethod
    def of(cls, inc: NamespaceIncidence, lengths: np.ndarray | None, n_bins: int) -> Strata:
        """``lengths`` per population protein; None = one stratum (p_length is Fisher's p)."""
        if lengths is None:
            bins, n_bins = np.zeros(inc.pop_size, dtype=np.int64), 1
        else:
            bins = length_bins(lengths, n_bins)
        onehot = stratum_onehot(bins, n_bins)
        keep = onehot.sum(axis=0) > 0  # quantile ties can leave a bin empty
        onehot = onehot[:, keep]
        term_counts = np.asarray((sp.csr_matrix(onehot.T) @ inc.matrix).T.todense())
        return cls(onehot, term_counts.astype(np.int64), onehot.sum(axis=0).astype(np.int64))


def stream_namespace(
    active_t: sp.csr_matrix,
    inc: NamespaceIncidence,
    hist: PValueHistogram,
    keep: Candidates,
    *,
    keep_p: float,
    block_size: int,
    strata: Strata | None,
    alpha: float = 0.05,
    hist_length: PValueHistogram,
    term_offset: int = 0,
    feature_offset: int = 0,
) -> None:
    """Test every feature against every term of one namespace, block by block (and within
    length ``strata`` too, unless None)."""
    big_n = inc.pop_size
    big_k = inc.term_sizes()
    n_terms = big_k.size
    n_study = np.asarray(active_t.sum(axis=1)).ravel().astype(np.int64)
    if strata is not None:  # study proteins per length stratum: [features, bins]
        n_study_strata = np.asarray(active_t @ strata.onehot).astype(np.int64)
    for block in _blocks(active_t.shape[0], block_size):
        n_blk = n_study[block]
        tested = np.flatnonzero(n_blk > 0)
        if tested.size == 0 or n_terms == 0:
            continue
        hits = (active_t[block][tested] @ inc.matrix).tocoo()  # k > 0 entries only
        k = hits.data.astype(np.int64)
        n = n_blk[tested][hits.row]
        kk = big_k[hits.col]
        p = unique_tuple_pvalues(k, n, kk, big_n)
        zero_tests = tested.size * n_terms - k.size  # k == 0: both p are exactly 1
        hist.add(p, extra_ones=zero_tests)
        if strata is None:
            pl = np.full(k.size, np.nan)
        else:
            pl = feature_term_pvalues(
                k, hits.row, hits.col, n_study_strata[block][tested], strata.term_counts,
                strata.sizes, alpha=alpha,
            )  # fmt: skip
            hist_length.add(pl, extra_ones=zero_tests)
        sel = (p <= keep_p) | (pl <= keep_p)
        rows, cols = hits.row[sel], hits.col[sel]
        if keep_p >= 1.0 and zero_tests:  # keep the k == 0 tests too (used by tests/benchmark)
            dense = np.ones((tested.size, n_terms), dtype=bool)
            dense[hits.row, hits.col] = False
            zr, zc = np.nonzero(dense)
            rows, cols = np.concatenate([rows, zr]), np.concatenate([cols, zc])
            k = np.concatenate([k[sel], np.zeros(zr.size, np.int64)])
            p = np.concatenate([p[sel], np.ones(zr.size)])
            pl = np.concatenate([pl[sel], np.ones(zr.size)])
        else:
            k, p, pl = k[sel], p[sel], pl[sel]
        keep.append(
            feature_index=tested[rows] + block.start + feature_offset,
            term=cols.astype(np.int64) + term_offset,
            k=k,
            n=n_blk[tested][rows],
            K=big_k[cols],
            N=np.full(rows.size, big_n, np.int64),
            p=p,
            pl=pl,
            m=np.full(rows.size, n_terms, np.int64),
        )


def effect_sizes(
    k: np.ndarray, n: np.ndarray, big_k: np.ndarray, big_n: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(sample odds ratio as scipy's fisher_exact statistic — inf when b·c = 0 —, fold enrichment)."""
    a, b, c = k.astype(np.float64), (n - k).astype(np.float64), (big_k - k).astype(np.float64)
    d = (big_n - big_k - n + k).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        odds = np.where(b * c > 0, (a * d) / np.where(b * c > 0, b * c, 1.0), np.inf)
        odds = np.where((a * d == 0) & (b * c == 0), np.nan, odds)
        fold = (k / n) / (big_k / big_n)
    return odds, fold


def most_specific(
    ontology: Ontology | None,
    feature: np.ndarray,
    go_id: np.ndarray,
    p: np.ndarray,
    significant: np.ndarray,
) -> np.ndarray:
    """True for a significant term with no significant descendant (same feature) of p <= its p.

    ``ontology`` None: the terms have no hierarchy (domain families), so every significant
    term is most specific."""
    ancestors = ontology.ancestors if ontology is not None else {}
    flag = significant.copy()
    by_feature: dict[tuple[int, str], float] = {
        (int(f), str(t)): float(pv)
        for f, t, pv, s in zip(feature, go_id, p, significant, strict=True)
        if s
    }
    beaten: set[tuple[int, str]] = set()
    for (f, t), pv in by_feature.items():
        for anc in ancestors.get(t, frozenset()):
            pa = by_feature.get((f, anc))
            if pa is not None and pv <= pa:
                beaten.add((f, anc))
    for i, (f, t) in enumerate(zip(feature, go_id, strict=True)):
        if flag[i] and (int(f), str(t)) in beaten:
            flag[i] = False
    return flag


@dataclass
class EnrichmentResult:
    """Tests kept for one dictionary (columns of HIT_COLUMNS) and the totals behind them."""

    columns: dict[str, np.ndarray]
    n_tests: int
    n_features: int
    n_active_features: int  # active above the threshold on >= 1 protein: dead latents excluded


@dataclass
class PartialEnrichment:
    """What testing a range of a dictionary's features gives: enough, merged over all ranges,
    for every correction (``finish_enrichment``)."""

    hist: PValueHistogram
    hist_length: PValueHistogram
    candidates: dict[str, np.ndarray]
    n_active_features: int


def enrich_features(
    activations: sp.spmatrix,
    incidences: Mapping[str, NamespaceIncidence],
    *,
    features: slice | None = None,
    threshold: float = 0.0,
    alpha: float = 0.05,
    keep_p: float | None = None,
    block_size: int = 256,
    lengths: np.ndarray | None = None,
    n_length_bins: int = 10,
    length_adjusted: bool = True,
) -> PartialEnrichment:
    """Test the ``features`` (a column range of ``activations``; all by default) against every
    term of every namespace. Ranges are independent: the GO stage tests them in parallel."""
    keep_p = alpha if keep_p is None else keep_p
    features = features or slice(0, activations.shape[1])
    cols = sp.csc_matrix(activations)[:, features]
    hist, hist_length, keep = PValueHistogram(), PValueHistogram(), Candidates()
    index = TermIndex.of(incidences)
    for inc in incidences.values():
        active_t = active_matrix(cols, inc.protein_rows, threshold)
        pop_lengths = None if lengths is None else np.asarray(lengths)[inc.protein_rows]
        stream_namespace(
            active_t, inc, hist, keep, keep_p=keep_p, block_size=block_size,
            strata=Strata.of(inc, pop_lengths, n_length_bins) if length_adjusted else None,
            hist_length=hist_length, alpha=alpha, term_offset=index.offsets[inc.namespace],
            feature_offset=features.start or 0,
        )  # fmt: skip
    coo = sp.coo_matrix(cols)
    n_active = int(np.unique(coo.col[coo.data > threshold]).size)
    return PartialEnrichment(hist, hist_length, keep.concat(), n_active)


def finish_enrichment(
    partials: list[PartialEnrichment],
    incidences: Mapping[str, NamespaceIncidence],
    ontology: Ontology | None,
    *,
    n_features: int,
    alpha: float = 0.05,
    store_all: bool = False,
    methods: tuple[str, ...] = ("fdr_bh", "bonferroni", "length_bh"),
    length_adjusted: bool = True,
) -> EnrichmentResult:
    """Merge the partial results of disjoint feature ranges and apply the corrections: the same
    result, row for row, as testing every feature at once. ``ontology`` None: flat terms with
    no hierarchy (``trainer.domains``: Pfam / PROSITE families)."""
    hist, hist_length = PValueHistogram(), PValueHistogram()
    for part in partials:
        hist.update(part.hist)
        hist_length.update(part.hist_length)
    c = {
        name: np.concatenate([part.candidates[name] for part in partials])
        if partials
        else np.empty(0)
        for name in CANDIDATE_COLUMNS
    }
    q = hist.bh(c["p"].astype(np.float64))
    q_length = (
        hist_length.bh(c["pl"].astype(np.float64)) if length_adjusted else c["pl"].astype(float)
    )
    bonf = np.minimum(c["p"] * c["m"], 1.0)
    sel = np.zeros(q.size, bool)
    if "fdr_bh" in methods:
        sel |= q < alpha
    if "bonferroni" in methods:
        sel |= bonf < alpha
    if "length_bh" in methods and length_adjusted:
        sel |= q_length < alpha
    if store_all:
        sel[:] = True
    k, n, kk, nn = (c[x][sel].astype(np.int64) for x in ("k", "n", "K", "N"))
    odds, fold = effect_sizes(k, n, kk, nn)
    feature = c["feature_index"][sel].astype(np.int64)
    index = TermIndex.of(incidences)
    term = c["term"][sel].astype(np.int64)
    go_id, namespace = index.go_ids[term], index.namespaces[term]
    p = c["p"][sel].astype(np.float64)
    # "Most specific" among the hits a label may use: significant, and (where the length test
    # ran) not explained by protein length, so a length-driven child cannot hide its parent.
    labelled = q[sel] < alpha
    if length_adjusted:
        labelled &= q_length[sel] < alpha
    cols = {
        "feature_index": feature, "go_id": go_id, "namespace": namespace,
        "study_hits": k, "study_size": n, "pop_hits": kk, "pop_size": nn,
        "odds_ratio": odds, "fold_enrichment": fold, "p_value": p, "q_value": q[sel],
        "p_bonferroni": bonf[sel], "p_length": c["pl"][sel].astype(np.float64),
        "q_length": q_length[sel],
        "is_most_specific": most_specific(ontology, feature, go_id, p, labelled),
    }  # fmt: skip
    if not length_adjusted:
        del cols["p_length"], cols["q_length"]
    # go_id last: rows are in one order however the features were split into ranges.
    order = np.lexsort((cols["go_id"], cols["p_value"], cols["namespace"], cols["feature_index"]))
    cols = {name: arr[order] for name, arr in cols.items()}
    n_active = sum(part.n_active_features for part in partials)
    return EnrichmentResult(cols, hist.n_tests, n_features, n_active)


def enrich(
    activations: sp.spmatrix,
    incidences: Mapping[str, NamespaceIncidence],
    ontology: Ontology,
    *,
    threshold: float = 0.0,
    alpha: float = 0.05,
    keep_p: float | None = None,
    block_size: int = 256,
    store_all: bool = False,
    methods: tuple[str, ...] = ("fdr_bh", "bonferroni", "length_bh"),
    lengths: np.ndarray | None = None,
    n_length_bins: int = 10,
    length_adjusted: bool = True,
) -> EnrichmentResult:
    """Test all features of ``activations`` [n_proteins, n_features] in every namespace.

    Keeps the tests significant by any of ``methods`` ("fdr_bh": q < alpha, "bonferroni":
    p_bonferroni < alpha, "length_bh": q_length < alpha); ``store_all`` keeps every test with
    p <= keep_p (for comparisons). ``lengths`` (per corpus row) cuts each namespace's population
    into ``n_length_bins`` quantile strata for ``p_length``; None = one stratum.
    ``length_adjusted=False`` skips that test (no p_length / q_length columns).
    """
    part = enrich_features(
        activations, incidences, threshold=threshold, alpha=alpha, keep_p=keep_p,
        block_size=block_size, lengths=lengths, n_length_bins=n_length_bins,
        length_adjusted=length_adjusted,
    )  # fmt: skip
    return finish_enrichment(
        [part], incidences, ontology, n_features=int(activations.shape[1]), alpha=alpha,
        store_all=store_all, methods=methods, length_adjusted=length_adjusted,
    )  # fmt: skip
