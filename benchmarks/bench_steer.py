"""Steering and variant-scoring latency against bare ESM2 forwards (prints its figures).

    PYTHONPATH=. python benchmarks/bench_steer.py [--model PATH] [--sae DIR] [--layer 3]

(1) One steering request (one feature clamped at every position; all positions' probabilities,
before and after) at 100/300/1,000 residues against one bare forward of the model on the same
sequence, fair-esm's ``model(tokens)`` (target: steer <= 3x). (2) Ten single-site variants of a
300-residue protein, scored and diffed as ``POST /api/v1/variants`` does (ten masked forwards in
one batch plus the wild type and ten mutants through the dictionary) against ten bare forwards
(target: <= 2x). ``--sae`` is a trained dictionary's directory (e.g. a run's
``saes/L3-residue-topk``); without it an untrained TopK SAE of the demo's shape stands in: the cost
of a forward does not depend on the weights' values. Medians of repeated runs, one thread pool.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from app.encoding.models import LoadedEsm
from app.encoding.service import DictionaryHandle, encode_with
from app.esm import load_esm, tokenize
from app.intervene.steer import Intervention, steer
from app.intervene.variants import masked_log_probs, mutant_sequence, parse_variant
from app.sae import TopKSAE, load_dictionary
from app.settings import Settings
from benchmarks.bench_encode import real_sequences


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--model", type=Path, default=settings.shared_dir / "models/esm2_t4_2M_sprot14mini.pt"
    )
    parser.add_argument("--sae", type=Path, default=None)
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(settings.torch_threads)
    loaded = load_esm(args.model, device="cpu")
    if args.sae:
        sae = load_dictionary(args.sae, device="cpu").eval()
        origin = f"trained SAE {args.sae}"
    else:
        sae = TopKSAE(loaded.embed_dim, 8 * loaded.embed_dim, 16).eval()
        origin = "untrained TopK SAE (8x, k=16)"
    print(f"model {loaded.name} ({loaded.num_layers} layers, d={loaded.embed_dim}); {origin}; "
          f"layer {args.layer}; {torch.get_num_threads()} threads; median of {args.repeat}")  # fmt: skip

    def bare(seqs: list[str]) -> None:
        with torch.inference_mode():
            loaded.model(tokenize(loaded, seqs))

    print("\nsteer: one clamp at every position vs one bare forward")
    print(f"{'length':>7} {'bare ms':>9} {'steer ms':>9} {'ratio':>6}")
    for length in (100, 300, 1000):
        (seq,) = real_sequences(settings.shared_dir, length, 1)
        t_bare = median_seconds(lambda seq=seq: bare([seq]), args.repeat)
        clamp = [Intervention(0, "clamp", 5.0)]
        t_steer = median_seconds(
            lambda seq=seq, clamp=clamp: steer(loaded, sae, "residue", args.layer, seq, clamp),
            args.repeat,
        )
        print(f"{length:>7} {1e3 * t_bare:>9.1f} {1e3 * t_steer:>9.1f} {t_steer / t_bare:>6.2f}")

    (wt,) = real_sequences(settings.shared_dir, 300, 1)
    picks = list(range(10, 300, 29))[:10]
    variants = [
        parse_variant(f"{wt[p - 1]}{p}{'A' if wt[p - 1] != 'A' else 'G'}", wt) for p in picks
    ]
    handle = DictionaryHandle(
        sae_id=0, sae_name="bench", kind="topk", level="residue", layer=args.layer,
        n_latents=sae.n_latents, esm=LoadedEsm(loaded), module=sae, provenance={},
        fve_median=None, fve_floor=None, density=torch.zeros(sae.n_latents).numpy(),
    )  # fmt: skip

    def score() -> None:
        masked_log_probs(loaded, wt, picks)
        encode_with(handle, [wt] + [mutant_sequence(wt, v)[0] for v in variants])

    def score_only() -> None:
        masked_log_probs(loaded, wt, picks)

    t_ten = median_seconds(lambda: [bare([wt]) for _ in range(10)], args.repeat)
    t_variants = median_seconds(score, args.repeat)
    t_masked = median_seconds(score_only, args.repeat)
    print("\nvariants: 10 single-site variants of a 300-aa protein vs 10 bare forwards")
    print(f"  10 bare forwards       {1e3 * t_ten:8.1f} ms")
    print(f"  masked marginals only  {1e3 * t_masked:8.1f} ms  ratio {t_masked / t_ten:.2f}")
    print(f"  scores + feature diffs {1e3 * t_variants:8.1f} ms  ratio {t_variants / t_ten:.2f}")


if __name__ == "__main__":
    main()
