"""The embed stage's host-side work per shard: pooling and writing, at full-corpus shard size.

On the H200 the full-corpus embed took 414 s for 31.7 M residues (four layers, plus the
random-init control's layer 3): the GPU waited on the host. Per 1 M-residue shard the host pools
every layer (mean of the float16 residues, accumulated in float32) and writes a safetensors file.
This times, on one shard's worth of real activations:

- pooling with numpy's ``np.add.reduceat(..., dtype=float32)`` (the old path) against
  ``trainer.embed_shards.pooled_sums`` (torch ``segment_reduce`` over float32 chunks), and checks they
  agree;
- ``safetensors.numpy.save_file`` of the shard's per-residue layers.

The rows are real mini-ESM2 activations of human Swiss-Prot proteins (layer 3), repeated with
their real lengths until the shard holds ``--residues`` rows: timing depends on sizes alone.

    PYTHONPATH=. python benchmarks/bench_shard_write.py [--residues 1000000] [--layers 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from app.esm import embed_concatenated, load_esm
from app.esm_window import MAX_RESIDUES
from app.settings import Settings
from benchmarks.bench_embed import real_proteins
from trainer.embed_shards import pooled_sums


def _best(fn: object, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--residues", type=int, default=1_000_000, help="rows per shard")
    ap.add_argument("--layers", type=int, default=4, help="layers pooled per shard")
    ap.add_argument("--residue-layers", type=int, default=2, help="layers written per residue")
    ap.add_argument("--proteins", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    shared = Settings().shared_dir
    loaded = load_esm(shared / "models" / "esm2_t4_2M_sprot14mini.pt", "cpu")
    seqs = real_proteins(
        shared / "data" / "proteins" / "human_sprot2014.tsv.gz", args.proteins, 0, MAX_RESIDUES
    )
    offsets, stacked = embed_concatenated(loaded, seqs, [3], dtype=np.float16)
    lengths = np.diff(offsets)
    repeats = -(-args.residues // int(offsets[-1]))
    residue = np.tile(stacked[3], (repeats, 1))[: args.residues]
    all_lengths = np.tile(lengths, repeats)
    ends = np.cumsum(all_lengths)
    keep = int(np.searchsorted(ends, args.residues, side="right"))
    shard_offsets = np.concatenate([[0], ends[:keep]]).astype(np.int64)
    residue = np.ascontiguousarray(residue[: shard_offsets[-1]])
    print(
        f"shard: {residue.shape[0]:,} residues x {residue.shape[1]} dims, "
        f"{len(shard_offsets) - 1:,} proteins; torch threads {torch.get_num_threads()}"
    )

    expected = np.add.reduceat(residue, shard_offsets[:-1], axis=0, dtype=np.float32)
    got = pooled_sums(residue, shard_offsets)
    diff = float(np.abs(got - expected).max() / np.abs(expected).max())
    t_numpy = _best(
        lambda: np.add.reduceat(residue, shard_offsets[:-1], axis=0, dtype=np.float32),
        args.rounds,
    )
    t_torch = _best(lambda: pooled_sums(residue, shard_offsets), args.rounds)
    print(f"pool one layer: numpy reduceat {t_numpy:.3f} s, pooled_sums {t_torch:.3f} s "
          f"({t_numpy / t_torch:.1f}x); max relative difference {diff:.1e}")  # fmt: skip
    print(f"pool {args.layers} layers per shard: {args.layers * t_numpy:.2f} s -> "
          f"{args.layers * t_torch:.2f} s")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.safetensors"
        tensors = {f"layer{k}.residue": residue for k in range(args.residue_layers)}
        t_save = _best(lambda: save_file(tensors, str(path)), args.rounds)
        size = path.stat().st_size
    print(f"save_file {args.residue_layers} per-residue layers: {t_save:.3f} s "
          f"({size / t_save / 1e6:,.0f} MB/s, {size / 1e6:,.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
