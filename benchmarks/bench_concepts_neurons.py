"""Concept alignment of the mini ESM2 model's neurons, every layer: results and throughput.

Runs the concepts stage with ReLU'd neurons of each layer as the dictionaries (one forward
pass per batch shared by all layers) and prints, per layer, the concepts whose best neuron
(chosen on train chains) has test F1 > 0.5, plus seconds per 100k residues. Usage:

    python benchmarks/bench_concepts_neurons.py [--max-chains 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from app.settings import PROJECT_ROOT
from app.stage_summaries import ConceptsManifest
from trainer.concepts import ConceptsConfig, run_concepts_stage
from trainer.concepts.neurons import EsmNeurons
from trainer.layout import RunLayout

SHARED = PROJECT_ROOT.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-chains", type=int, default=10, help="per concept and split")
    parser.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--concepts", nargs="*", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = args.shared / "models/esm2_t4_2M_sprot14mini.pt"
    neurons = EsmNeurons(model, args.layers)
    names = [f"neurons_L{layer}" for layer in args.layers]
    encoders = {n: neurons.encoder(layer) for n, layer in zip(names, args.layers, strict=True)}
    cfg = ConceptsConfig(
        label_dir=args.shared / "data/residue_annotations",
        concepts=args.concepts,
        max_chains_per_split=args.max_chains,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="concepts_bench_"))
    t0 = time.perf_counter()
    summaries = run_concepts_stage(workdir, cfg, encode_residues=encoders, dictionaries=names)
    wall = time.perf_counter() - t0
    manifest = ConceptsManifest.read(RunLayout(workdir).concepts_manifest)
    n_res = manifest.n_distinct_residues
    print(f"workdir {workdir}")
    print(
        f"{manifest.n_distinct_chains} distinct chains, {n_res} residues; "
        f"wall {wall:.1f} s for {len(names)} dictionaries x 2 passes"
    )
    forward = 0.0
    for name in names:
        s, t = summaries[name], manifest["timing"][name]
        forward += t["encode_s"]
        per100k = 1e5 / (n_res * t["passes"])
        print(
            f"{name}: {s['n_concepts_associated']}/{s['n_concepts_evaluated']} concepts with a "
            f"neuron of test F1 > 0.5; median best F1 {s['best_f1_distribution']['median']:.3f}; "
            f"metrics {t['count_s'] * 1e5 / n_res:.2f} s/100k res/pass, "
            f"max {t['max_s'] * per100k:.2f}, encode {t['encode_s'] * per100k:.2f}"
        )
        for a in s["concepts_associated"]:
            print(
                f"    {a['concept']}: neuron {a['feature']} t={a['threshold']} F1 {a['f1_test']:.3f}"
            )
    print(f"total wall per 100k residues (all layers, 2 passes): {wall * 1e5 / n_res:.1f} s")


if __name__ == "__main__":
    main()
