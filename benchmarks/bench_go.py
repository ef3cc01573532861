"""GO enrichment: our vectorised stage against goatools' GOEnrichmentStudy on the same real input.

Features: the 768 ReLU'd mean-pooled neurons of layers 1–4 of the mini ESM2 model (the paper's
neuron baseline) on the first ``--proteins`` human Swiss-Prot proteins; full go-basic ontology,
BP (the paper's namespace). goatools runs on ``--goatools-features`` of them (time per study set);
ours on all. Checks identical p / Bonferroni / within-feature BH on the overlap, prints the speed
ratio, peak memory (tracemalloc) for growing feature counts, hit rates and the permutation control.

    PYTHONPATH=. python benchmarks/bench_go.py [--proteins 5000] [--goatools-features 8]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from goatools.go_enrichment import GOEnrichmentStudy
from scipy.stats import false_discovery_control

from benchmarks.esm_neurons import cached_pooled_neurons
from trainer.go.annotations import build_incidence, resolve_corpus_annotations
from trainer.go.controls import permuted_incidences
from trainer.go.enrichment import enrich
from trainer.go.ontology import load_ontology
from trainer.go.protein_table import read_protein_table
from trainer.go.summary import hit_rates

SHARED = Path("../shared/data")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proteins", type=int, default=5000)
    ap.add_argument("--goatools-features", type=int, default=8)
    ap.add_argument("--cache", type=Path, default=Path("data/bench"))
    ap.add_argument("--random-control", action="store_true", help="also a random-init model")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    table = read_protein_table(SHARED / "proteins/human_sprot2014.tsv.gz", args.proteins)
    x = cached_pooled_neurons(table.sequences, args.cache / f"neurons_human{args.proteins}.npz")
    ontology = load_ontology(SHARED / "go/go-basic.obo.gz", args.cache / "obo")
    per_ns, counts = resolve_corpus_annotations(ontology, table.go_bp, table.go_mf, table.go_cc)
    print(f"{x.shape[0]} proteins × {x.shape[1]} features; annotations: {counts.as_dict()}")
    incs = {ns: build_incidence(ontology, ns, per_ns[ns], x.shape[0]) for ns in ("BP", "MF", "CC")}
    bp = {"BP": incs["BP"]}
    inc = incs["BP"]
    print(f"BP population {inc.pop_size}, {len(inc.term_ids)} terms")

    # ours, all features, BP
    t0 = time.perf_counter()
    ours = enrich(x, bp, ontology)
    t_ours = time.perf_counter() - t0
    print(f"ours: {x.shape[1]} features in {t_ours:.2f} s ({ours.n_tests:,} tests)")

    # goatools on a subset (evenly spread over the 4 layers)
    t0 = time.perf_counter()
    pop = [table.accessions[r] for r in inc.protein_rows]
    assoc = {table.accessions[r]: set(per_ns["BP"][r]) for r in inc.protein_rows}
    goea = GOEnrichmentStudy(pop, assoc, ontology.dag, propagate_counts=True,
                             methods=["bonferroni", "fdr_bh"], alternative="greater",
                             relationships={"part_of"}, log=None)  # fmt: skip
    t_setup = time.perf_counter() - t0
    dense = x[inc.protein_rows].toarray()
    live = np.flatnonzero((dense > 0).any(axis=0))  # features active on >= 1 population protein
    subset = live[np.linspace(0, live.size - 1, args.goatools_features).astype(int)]
    full = enrich(x[:, subset], bp, ontology, keep_p=1.0, store_all=True).columns
    t_studies, worst = [], 0.0
    for j, f in enumerate(subset):
        study = [pop[i] for i in np.flatnonzero(dense[:, f] > 0)]
        t0 = time.perf_counter()
        ref = {r.GO: r for r in goea.run_study(study, prt=None)}
        t_studies.append(time.perf_counter() - t0)
        mine = full["feature_index"] == j
        ids = full["go_id"][mine]
        assert set(ids) == set(ref), f"feature {f}: tested terms differ"
        want = np.array(
            [[ref[t].p_uncorrected, min(ref[t].p_bonferroni, 1), ref[t].p_fdr_bh] for t in ids]
        )
        got = np.c_[full["p_value"][mine], full["p_bonferroni"][mine],
                    false_discovery_control(full["p_value"][mine])]  # fmt: skip
        worst = max(worst, float(np.max(np.abs(got - want) / np.maximum(want, 1e-300))))
        # the stored hits of the all-feature run: exactly goatools' Bonferroni-significant terms
        stored = ours.columns
        sig = set(stored["go_id"][(stored["feature_index"] == f) & (stored["p_bonferroni"] < 0.05)])
        assert sig == {t for t, r in ref.items() if r.p_bonferroni < 0.05}, f"feature {f}"
    per_study = float(np.mean(t_studies))
    print(f"goatools: setup {t_setup:.1f} s, {per_study:.3f} s per study set "
          f"({len(subset)} features, {len(study)} proteins in the last study)")  # fmt: skip
    print(f"max relative error on the overlap (p, Bonferroni, within-feature BH): {worst:.2e}")
    projected = per_study * x.shape[1]
    print(f"speed ratio: goatools {projected:.0f} s projected for {x.shape[1]} features "
          f"/ ours {t_ours:.2f} s = {projected / t_ours:.0f}×")  # fmt: skip

    for n in (192, 384, 768, 1536):
        cols = np.arange(n) % x.shape[1]  # 1536: the 768 neurons twice, to extend the curve
        tracemalloc.start()
        t0 = time.perf_counter()
        enrich(sp.csr_matrix(x[:, cols]), bp, ontology, block_size=128)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"peak memory, {n:5d} features: {peak / 2**20:7.1f} MiB ({time.perf_counter() - t0:.1f} s, traced)"
        )

    t0 = time.perf_counter()
    every = enrich(x, incs, ontology)
    print(f"all namespaces: {time.perf_counter() - t0:.2f} s")
    for label, res in (("BP", ours), ("BP+MF+CC", every)):
        r = hit_rates(res, 0.05)
        print(f"neurons {label}: {r['bh']['pct_features_with_hit']:.1f}% features with a BH hit, "
              f"{r['bonferroni']['pct_features_with_hit']:.1f}% paper protocol")  # fmt: skip
    lengths = np.array([len(s) for s in table.sequences])
    for seed in (0, 1):
        perm = permuted_incidences(bp, lengths, n_bins=10, seed=seed)
        r = hit_rates(enrich(x, perm, ontology), 0.05)
        print(f"permutation control (BP, 10 length bins, seed {seed}): "
              f"{r['bh']['pct_features_with_hit']:.1f}% BH, {r['bonferroni']['pct_features_with_hit']:.1f}% paper")  # fmt: skip
    if args.random_control:
        xr = cached_pooled_neurons(
            table.sequences, args.cache / f"neurons_random_init_human{args.proteins}.npz",
            random_init_seed=0,
        )  # fmt: skip
        r = hit_rates(enrich(xr, bp, ontology), 0.05)
        print(f"random-init model neurons (BP): {r['bh']['pct_features_with_hit']:.1f}% BH, "
              f"{r['bonferroni']['pct_features_with_hit']:.1f}% paper")  # fmt: skip


if __name__ == "__main__":
    main()
