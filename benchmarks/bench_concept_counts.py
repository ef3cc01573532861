"""Concept counting: over the nonzero entries (``count_sparse``) against dense compares.

The concept stage counts, per threshold and feature, residues that fire and labelled residues
that fire. The dense way compares the whole ``[n, F]`` block with each threshold; the sparse
way bins only the nonzero entries (TopK: k of F per residue). ``ConceptCounts.add`` picks one
by the block's density (``SPARSE_BELOW``); this measures where each wins. Both see the same real activations: a trained
dictionary of a finished run (``--run-dir``; by default the demo run) on real labelled chains.
Prints seconds per million residues for each and checks they count the same.

    PYTHONPATH=. python benchmarks/bench_concept_counts.py [--run-dir data/runs/demo-mini-esm2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from app.esm import embed_concatenated, load_esm
from app.sae import load_dictionary
from app.sae.io import read_config
from app.settings import Settings
from trainer.concepts.labels import read_concept, subsample
from trainer.concepts.metrics import (
    INTERPLM_THRESHOLDS,
    SPARSE_BELOW,
    count_dense,
    count_sparse,
    normalise,
)


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=settings.data_dir / "runs/demo-mini-esm2")
    parser.add_argument(
        "--model", type=Path, default=settings.shared_dir / "models/esm2_t4_2M_sprot14mini.pt"
    )
    parser.add_argument("--dictionary", default="L3-residue-topk")
    parser.add_argument("--concept", default="gpsite_ZN")
    parser.add_argument("--chains", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    directory = args.run_dir / "saes" / args.dictionary
    module = load_dictionary(directory)
    provenance = read_config(directory)["provenance"]
    loaded = load_esm(args.model, "cpu")
    if loaded.sha256 != provenance["checkpoint_sha256"]:
        raise SystemExit(f"{directory} was trained on another checkpoint than {args.model}")
    chains = subsample(read_concept(settings.shared_dir / f"data/residue_annotations/"
                                    f"{args.concept}.tsv.gz"), args.chains, 0).train  # fmt: skip
    layer = int(provenance["layer"])
    _, reps = embed_concatenated(loaded, [c.sequence for c in chains], [layer])
    with torch.inference_mode():
        acts = module.encode(torch.from_numpy(reps[layer])).numpy()
    acts = normalise(acts, acts.max(axis=0))
    labels = np.concatenate([c.labels for c in chains]).astype(bool)
    n, f = acts.shape
    density = np.count_nonzero(acts) / acts.size
    print(f"{args.dictionary}: {n:,} residues of {len(chains)} {args.concept} chains, "
          f"{f} features, {density:.2%} nonzero")  # fmt: skip

    thresholds = np.asarray(INTERPLM_THRESHOLDS, dtype=acts.dtype)
    best: dict[str, float] = {}
    results = {}
    for _ in range(args.rounds):
        for name, count in (("sparse", count_sparse), ("dense", count_dense)):
            t = time.perf_counter()
            results[name] = count(acts, labels, thresholds)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t)
    for a, b in zip(results["sparse"], results["dense"], strict=True):
        assert np.array_equal(a, b), "the two ways must count the same"
    for name, seconds in best.items():
        print(f"  {name:6s} {seconds:7.3f} s  ({seconds / n * 1e6:7.2f} s per million residues)")
    chosen = "sparse" if density <= SPARSE_BELOW else "dense"
    print(f"  sparse/dense speed: {best['dense'] / best['sparse']:.2f}x (same counts); "
          f"the stage picks {chosen} at this density (switch at {SPARSE_BELOW:.0%})")  # fmt: skip


if __name__ == "__main__":
    main()
