"""Embedding throughput: the embed stage (run_embed) against a bare fair-esm forward loop.

Both see the same real proteins (≤1,022 aa, so no windowing: identical work), the same layers and
the same token budget with the same longest-first batching. The bare loop only runs the model and
copies each protein's per-residue rows to the CPU; run_embed also converts to float16, pools,
writes safetensors shards and the manifest. run_embed runs twice: with its default fused
attention and with ``attention = "fair-esm"`` (fair-esm's own modules, like the bare loop). Rounds
alternate and the best of each is reported.

    PYTHONPATH=. python benchmarks/bench_embed.py --n-proteins 300 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import tempfile
import time
from pathlib import Path

import torch

from app.esm import LoadedModel, autocast_for, load_esm, token_batches
from app.esm_window import MAX_RESIDUES
from app.settings import get_settings
from trainer.embed import EmbedConfig, run_embed


def real_proteins(path: Path, n: int, seed: int, max_len: int) -> list[str]:
    """``n`` random proteins of at most ``max_len`` aa from a Swiss-Prot TSV."""
    with gzip.open(path, "rt", newline="") as handle:
        seqs = [r["sequence"] for r in csv.DictReader(handle, delimiter="\t")]
    seqs = [s for s in seqs if len(s) <= max_len]
    return random.Random(seed).sample(seqs, n)


def bare_loop(loaded: LoadedModel, seqs: list[str], layers: list[int], budget: int) -> float:
    """Seconds for fair-esm alone: batch, forward, copy residue rows to the CPU."""
    start = time.perf_counter()
    kept: list[torch.Tensor] = []
    with torch.inference_mode(), autocast_for(loaded.device):
        for batch in token_batches([len(s) for s in seqs], budget):
            tokens = loaded.batch_converter([(str(i), seqs[i]) for i in batch])[2]
            reps = loaded.model(tokens.to(loaded.device), repr_layers=layers)["representations"]
            for layer in layers:
                rep = reps[layer].cpu()
                kept.extend(rep[row, 1 : len(seqs[i]) + 1] for row, i in enumerate(batch))
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def stage(loaded: LoadedModel, seqs: list[str], cfg: EmbedConfig) -> float:
    """Seconds for the embed stage, shards and manifest included, into a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_embed(Path(tmp), seqs, cfg, model_override=loaded)
        return time.perf_counter() - start


def main() -> None:
    shared = get_settings().shared_dir
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(shared / "models/esm2_t4_2M_sprot14mini.pt"))
    parser.add_argument("--proteins", default=str(shared / "data/proteins/human_sprot2014.tsv.gz"))
    parser.add_argument("--n-proteins", type=int, default=300)
    parser.add_argument("--max-len", type=int, default=MAX_RESIDUES)
    parser.add_argument("--tokens", type=int, default=8192, help="max tokens per batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    loaded = load_esm(args.model, device=args.device)
    seqs = real_proteins(Path(args.proteins), args.n_proteins, seed=0, max_len=args.max_len)
    layers = list(range(loaded.num_layers + 1))
    cfg = EmbedConfig(model=args.model, max_tokens_per_batch=args.tokens, device=args.device)
    exact = cfg.model_copy(update={"attention": "fair-esm"})
    residues = sum(len(s) for s in seqs)
    print(f"{loaded.name} on {loaded.device}, {args.threads} threads; {len(seqs)} proteins, "
          f"{residues} residues, layers {layers}, {args.tokens} tokens/batch")  # fmt: skip
    bare_loop(loaded, seqs[:8], layers, args.tokens)  # warm-up
    bare_s, stage_s, exact_s = float("inf"), float("inf"), float("inf")
    for k in range(args.rounds):
        bare_k = bare_loop(loaded, seqs, layers, args.tokens)
        stage_k, exact_k = stage(loaded, seqs, cfg), stage(loaded, seqs, exact)
        bare_s, stage_s, exact_s = min(bare_s, bare_k), min(stage_s, stage_k), min(exact_s, exact_k)
        print(f"round {k + 1}: bare {residues / bare_k:,.0f} aa/s, stage {residues / stage_k:,.0f} "
              f"aa/s, stage with fair-esm attention {residues / exact_k:,.0f} aa/s")  # fmt: skip
    print(f"best of {args.rounds} rounds:")
    print(f"bare fair-esm loop:              {residues / bare_s:,.0f} residues/s ({bare_s:.1f} s)")
    print(
        f"run_embed (fused attention):     {residues / stage_s:,.0f} residues/s ({stage_s:.1f} s)"
    )
    print(
        f"run_embed (fair-esm attention):  {residues / exact_s:,.0f} residues/s ({exact_s:.1f} s)"
    )
    print(f"ratio run_embed / bare: {bare_s / stage_s:.3f} fused, {bare_s / exact_s:.3f} fair-esm "
          "attention (target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
