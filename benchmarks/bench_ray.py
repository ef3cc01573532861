"""Embed throughput: the local engine against the Ray engine with 1 and 2 workers (one machine).

All three embed the same real proteins with the same model, layers, token budget and shard plan
into fresh directories (the shards come out identical, see tests/test_engines_ray.py). The local
engine runs in this process with ``--threads`` torch threads. Ray runs in a local instance with
``--threads`` CPUs, started once before any timing: 1 worker gets all of them, 2 workers one
share each. Ray's figures include what each run pays on top of the compute: starting the actor
pool (each actor imports torch and fair-esm and receives the model) and streaming the shard
records back; the "compute" column is the seconds the shards' forward passes and writes took
summed over workers, which shows how far the wall time is from the work itself.

    PYTHONPATH=. python benchmarks/bench_ray.py --n-proteins 400 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from app.esm import load_esm
from app.settings import Settings
from trainer.embed import EmbedConfig, run_embed
from trainer.engines import Engine, RayConfig
from trainer.engines.local import LocalEngine
from trainer.engines.ray import RayEngine


def real_proteins(path: Path, n: int, seed: int, max_len: int) -> list[str]:
    """``n`` random proteins of at most ``max_len`` aa from a Swiss-Prot TSV."""
    with gzip.open(path, "rt", newline="") as handle:
        seqs = [r["sequence"] for r in csv.DictReader(handle, delimiter="\t")]
    seqs = [s for s in seqs if len(s) <= max_len]
    return random.Random(seed).sample(seqs, n)


def timed(engine: Engine, seqs: list[str], cfg: EmbedConfig, model: Any) -> tuple[float, float]:
    """(wall seconds, summed shard compute seconds) of one embed run into a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = run_embed(Path(tmp), seqs, cfg, model_override=model, engine=engine)
        wall = time.perf_counter() - start
    compute = sum(s.get("forward_s", 0.0) + s.get("write_s", 0.0) for s in manifest["shards"])
    return wall, compute


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-proteins", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=700)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard-residues", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared = Settings().shared_dir
    seqs = real_proteins(shared / "data/proteins/human_sprot2014.tsv.gz", args.n_proteins,
                         args.seed, args.max_length)  # fmt: skip
    cfg = EmbedConfig(model=str(shared / "models/esm2_t4_2M_sprot14mini.pt"), layers=[3, 4],
                      residue_layers=[3], shard_max_residues=args.shard_residues, device="cpu")  # fmt: skip
    torch.set_num_threads(args.threads)
    model = load_esm(cfg.model, "cpu")
    residues = sum(len(s) for s in seqs)
    print(f"{len(seqs)} proteins, {residues:,} residues, shards of ≤{args.shard_residues:,} aa, "
          f"{args.threads} CPU threads, ray {ray.__version__}")  # fmt: skip
    started = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False)
    print(f"ray.init (local instance, once): {time.perf_counter() - started:.1f} s")
    engines: dict[str, Engine] = {
        "local": LocalEngine(),
        "ray, 1 worker": RayEngine(RayConfig(num_workers=1, cpus_per_worker=args.threads)),
        "ray, 2 workers": RayEngine(
            RayConfig(num_workers=2, cpus_per_worker=max(1, args.threads // 2))
        ),
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(args.rounds):  # rounds alternate engines; the best wall time of each counts
        for name, engine in engines.items():
            wall, compute = timed(engine, seqs, cfg, model)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, compute)
    ray.shutdown()
    local_rate = residues / best["local"][0]
    print(f"{'engine':<16}{'wall s':>8}{'compute s':>11}{'residues/s':>12}{'× local':>9}")
    for name, (wall, compute) in best.items():
        rate = residues / wall
        print(f"{name:<16}{wall:>8.1f}{compute:>11.1f}{rate:>12,.0f}{rate / local_rate:>9.2f}")
    print("× local: throughput relative to the local engine (target for 1 Ray worker: ≥ 0.9)")


if __name__ == "__main__":
    main()
