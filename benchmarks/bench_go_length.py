"""The length-stratified GO test on a finished run: its cost against Fisher's, how its tests are
routed, whether the normal screen ever decides a test that is close to significance, and the
hit rates it gives with real and length-shuffled annotations.

Reads a trainer run directory (after its analyze stage), e.g. the demo's or human-5k's:

    PYTHONPATH=. python benchmarks/bench_go_length.py data/runs/human-5k-mini-esm2 \\
        --dictionary L3-residue-topk [--sample 20000]

Prints, per dictionary: tests with at least one hit and their routing (screened / exact /
saddlepoint), seconds for ``enrich`` without and with the stratified test and their ratio, the
smallest exact p among a sample of the screened tests, and % of features with a BH hit (Fisher,
stratified) for the real annotations and one within-length-bin shuffle.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trainer.corpus import load_corpus
from trainer.go.annotations import NamespaceIncidence
from trainer.go.controls import permuted_incidences
from trainer.go.enrichment import Strata, active_matrix, enrich
from trainer.go.ontology import Ontology, load_ontology
from trainer.go.stage import GoConfig, build_incidences, load_activations
from trainer.go.stratified import (
    EXACT,
    SADDLEPOINT,
    SCREENED,
    exact_upper,
    route,
    saddlepoint_upper,
    support_width,
)
from trainer.go.summary import hit_rates
from trainer.layout import RunLayout


def screen_check(
    acts: sp.csr_matrix, incidences: dict[str, NamespaceIncidence], lengths: np.ndarray, cfg: GoConfig,
    sample: int, rng: np.random.Generator,
) -> tuple[dict[str, int], float]:  # fmt: skip
    """Routing counts over every test with a hit, and the smallest exact p of sampled screened
    tests (computed exactly where narrow enough, else by the saddlepoint)."""
    counts = {"tests": 0, "screened": 0, "exact": 0, "saddlepoint": 0}
    smallest = 1.0
    for inc in incidences.values():
        active_t = active_matrix(acts, inc.protein_rows, cfg.active_threshold)
        strata = Strata.of(inc, lengths[inc.protein_rows], cfg.length_bins)
        per_stratum = np.asarray(active_t @ strata.onehot).astype(np.int64)
        for start in range(0, active_t.shape[0], cfg.block_size):
            block = slice(start, min(active_t.shape[0], start + cfg.block_size))
            hits = (active_t[block] @ inc.matrix).tocoo()
            k = hits.data.astype(np.int64)
            n = per_stratum[block][hits.row]
            big_k = strata.term_counts[hits.col]
            _, method = route(k, n, big_k, strata.sizes, alpha=cfg.alpha)
            counts["tests"] += k.size
            counts["screened"] += int((method == SCREENED).sum())
            counts["exact"] += int((method == EXACT).sum())
            counts["saddlepoint"] += int((method == SADDLEPOINT).sum())
            left = np.flatnonzero(method == SCREENED)
            if left.size > sample:
                left = rng.choice(left, sample, replace=False)
            narrow = support_width(n[left], big_k[left], strata.sizes) <= 512
            for idx, fn in ((left[narrow], exact_upper), (left[~narrow], saddlepoint_upper)):
                if idx.size:
                    p = fn(k[idx], n[idx], big_k[idx], strata.sizes)
                    smallest = min(smallest, float(p.min()))
    return counts, smallest


def timed_enrich(
    acts: sp.csr_matrix, incidences: dict[str, NamespaceIncidence], ontology: Ontology,
    lengths: np.ndarray, cfg: GoConfig, length_adjusted: bool,
) -> tuple[float, dict[str, Any]]:  # fmt: skip
    started = time.perf_counter()
    result = enrich(
        acts, incidences, ontology, threshold=cfg.active_threshold, alpha=cfg.alpha,
        block_size=cfg.block_size, lengths=lengths, n_length_bins=cfg.length_bins,
        length_adjusted=length_adjusted,
    )  # fmt: skip
    return time.perf_counter() - started, hit_rates(result, cfg.alpha)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "workdir", type=Path, help="a trainer run directory, e.g. data/runs/demo-mini-esm2"
    )
    ap.add_argument("--dictionary", action="append", required=True)
    ap.add_argument("--obo", type=Path, default=Path("../shared/data/go/go-basic.obo.gz"))
    ap.add_argument("--min-term-size", type=int, default=3)
    ap.add_argument("--sample", type=int, default=20_000, help="screened tests checked per block")
    args = ap.parse_args()
    cfg = GoConfig(obo_path=args.obo, min_term_size=args.min_term_size)
    corpus = load_corpus(args.workdir)
    layout = RunLayout(args.workdir)
    ontology = load_ontology(cfg.obo_path, layout.go_cache)
    incidences, _ = build_incidences(ontology, corpus, cfg)
    lengths = np.array([len(s) for s in corpus.sequences])
    shuffled = permuted_incidences(incidences, lengths, cfg.length_bins, cfg.seed)
    rng = np.random.default_rng(0)
    print(f"{args.workdir}: {len(corpus.accessions):,} proteins, {cfg.length_bins} length strata")
    for name in args.dictionary:
        acts = load_activations(layout.analysis(name).protein_activations, len(corpus.accessions))
        fisher_s, _ = timed_enrich(acts, incidences, ontology, lengths, cfg, False)
        both_s, real = timed_enrich(acts, incidences, ontology, lengths, cfg, True)
        _, null = timed_enrich(acts, shuffled, ontology, lengths, cfg, True)
        counts, smallest = screen_check(acts, incidences, lengths, cfg, args.sample, rng)
        print(f"\n{name}: {counts['tests']:,} tests with a hit — screened {counts['screened']:,}, "
              f"exact {counts['exact']:,}, saddlepoint {counts['saddlepoint']:,}")  # fmt: skip
        print(f"  enrich: Fisher only {fisher_s:.1f} s, with the stratified test {both_s:.1f} s "
              f"({both_s / fisher_s:.1f}x)")  # fmt: skip
        print(f"  smallest exact p among sampled screened tests: {smallest:.3f}")
        for label, rates in (("real annotations", real), ("shuffled within length bins", null)):
            print(f"  {label}: % features with a BH hit — Fisher "
                  f"{rates['bh']['pct_features_with_hit']:.1f}, stratified "
                  f"{rates['length_bh']['pct_features_with_hit']:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
