"""Embed throughput: the local engine against the Ray engine with 1 and 2 workers (one machine).

All three embed the same real proteins with the same model, layers, token budget and shard plan
into fresh directories (the shards come out identical, see tests/test_engines_ray.py). The local
engine runs in this process with ``--threads`` torch threads. Ray runs in a local instance with
``--threads`` CPUs, started once before any timing: 1 worker gets all of them, 2 workers one
share each. Ray's figures include what each run pays on top of the compute: starting the actor
pool (each actor imports torch and fair-esm and receives the model) and streaming the shard
records back; the "compute" column is the seconds the shards' forward passes and writes took
summed over workers, which shows how far the wall time is from the work itself. "CPU s" is the
CPU time every process of the benchmark spent during the run (this process, and Ray's GCS,
raylet and workers, all its descendants): on a machine shared with other work, wall time follows
the others' load, while CPU seconds per residue are what each engine itself costs, overhead
(actor start-up, Ray's own processes, streaming) included.

    PYTHONPATH=. python benchmarks/bench_ray.py --n-proteins 400 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import ray
import torch

from app.esm import load_esm
from app.settings import get_settings
from trainer.embed import EmbedConfig, run_embed
from trainer.engines import Engine, RayConfig
from trainer.engines.local import LocalEngine
from trainer.engines.ray import RayEngine, start_local_instance


def real_proteins(path: Path, n: int, seed: int, max_len: int) -> list[str]:
    """``n`` random proteins of at most ``max_len`` aa from a Swiss-Prot TSV."""
    with gzip.open(path, "rt", newline="") as handle:
        seqs = [r["sequence"] for r in csv.DictReader(handle, delimiter="\t")]
    seqs = [s for s in seqs if len(s) <= max_len]
    return random.Random(seed).sample(seqs, n)


class TreeCpu:
    """User + system CPU seconds of this process and all its descendants (Ray's GCS, raylet and
    workers), sampled every ``period`` seconds in a thread: a worker that exits keeps the CPU
    it had at its last sample, so at most one period of its time is missed."""

    def __init__(self, period: float = 0.2) -> None:
        self.period = period
        self.seen: dict[tuple[int, float], float] = {}  # (pid, create time) -> CPU seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                self.seen[(proc.pid, proc.create_time())] = times.user + times.system
            except psutil.NoSuchProcess:
                continue

    def _poll(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def __enter__(self) -> TreeCpu:
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(cpu - self.start.get(key, 0.0) for key, cpu in self.seen.items())


def timed(
    engine: Engine, seqs: list[str], cfg: EmbedConfig, model: Any
) -> tuple[float, float, float]:
    """(wall seconds, summed shard compute seconds, CPU seconds of the process tree) of one
    embed run into a fresh directory."""
    with tempfile.TemporaryDirectory() as tmp, TreeCpu() as cpu:
        start = time.perf_counter()
        manifest = run_embed(Path(tmp), seqs, cfg, model_override=model, engine=engine)
        wall = time.perf_counter() - start
    compute = sum(s.get("forward_s", 0.0) + s.get("write_s", 0.0) for s in manifest["shards"])
    return wall, compute, cpu.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-proteins", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=700)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard-residues", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared = get_settings().shared_dir
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
    start_local_instance(args.threads)  # as the engine starts one: workers at normal priority
    print(f"ray.init (local instance, once): {time.perf_counter() - started:.1f} s")
    engines: dict[str, Engine] = {
        "local": LocalEngine(),
        "ray, 1 worker": RayEngine(RayConfig(num_workers=1, cpus_per_worker=args.threads)),
        "ray, 2 workers": RayEngine(
            RayConfig(num_workers=2, cpus_per_worker=max(1, args.threads // 2))
        ),
    }
    best: dict[str, tuple[float, float, float]] = {}
    for _ in range(args.rounds):  # rounds alternate engines; the best wall time of each counts
        for name, engine in engines.items():
            wall, compute, cpu = timed(engine, seqs, cfg, model)
            if name not in best or wall < best[name][0]:
                best[name] = (wall, compute, cpu)
    ray.shutdown()
    local_wall, _, local_cpu = best["local"]
    print(f"{'engine':<16}{'wall s':>8}{'compute s':>11}{'CPU s':>8}{'residues/s':>12}"
          f"{'× local (wall)':>16}{'× local (CPU)':>15}")  # fmt: skip
    for name, (wall, compute, cpu) in best.items():
        print(f"{name:<16}{wall:>8.1f}{compute:>11.1f}{cpu:>8.1f}{residues / wall:>12,.0f}"
              f"{local_wall / wall:>16.2f}{local_cpu / cpu:>15.2f}")  # fmt: skip
    print("× local: throughput relative to the local engine, by wall time and by CPU seconds "
          "(target for 1 Ray worker: ≥ 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
