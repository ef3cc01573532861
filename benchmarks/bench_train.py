"""SAE training throughput (vectors/s) and peak memory, per dictionary kind and size.

Runs the real training loop (``trainer.train.train_dictionary``) for a fixed number of steps on
standard-normal vectors: the cost of a step does not depend on the vectors' content (TopK, the
L1 sum and the matmuls are dense), so no embedding run is needed. Each configuration runs in a
fresh process so its peak RSS (``resource.getrusage``) is its own; tracemalloc cannot see torch's
allocations. On CUDA the peak is ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=. python benchmarks/bench_train.py [--steps 200] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
from typing import Any

import torch

from trainer.train import SaeSpec, train_dictionary

KINDS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk", "k": 64},
    "batchtopk": {"kind": "batchtopk", "k": 64},
    "relu_l1": {"kind": "relu_l1", "l1_coefficient": 1e-2},
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _one(args: tuple[str, int, int, int, int, int, str], out: Any) -> None:
    kind, d_in, expansion, batch, steps, threads, device = args
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50_000, d_in, generator=gen)
    val = torch.randn(1_024, d_in, generator=gen)
    spec = SaeSpec(name=f"{kind}_{d_in}x{expansion}", level="protein", layer=0, expansion=expansion,
                   batch_size=batch, steps=steps, eval_every=steps, checkpoint_every=10**9,
                   **KINDS[kind])  # fmt: skip
    train_dictionary(
        spec.model_copy(update={"steps": 5}), x, None, val, None, progress=False, device=device
    )
    setup = _rss_mib()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _, metrics = train_dictionary(spec, x, None, val, None, progress=False, device=device)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    out.put((spec.name, batch, metrics["vectors_per_s"], setup, _rss_mib(), peak_gpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128, help="the seed paper's batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 480])
    parser.add_argument("--expansions", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    print(f"device {args.device}, {args.threads} thread(s), batch {args.batch}, {args.steps} steps")
    print(
        f"{'dictionary':<22}{'vectors/s':>12}{'RSS setup MiB':>15}{'RSS peak MiB':>14}{'GPU peak MiB':>14}"
    )
    for d_in in args.dims:
        for expansion in args.expansions:
            for kind in KINDS:
                queue = ctx.Queue()
                job = (kind, d_in, expansion, args.batch, args.steps, args.threads, args.device)
                proc = ctx.Process(target=_one, args=(job, queue))
                proc.start()
                name, _, vps, setup, peak, gpu = queue.get()
                proc.join()
                gpu_s = f"{gpu:>14.1f}" if gpu is not None else f"{'-':>14}"
                print(f"{name:<22}{vps:>12.0f}{setup:>15.0f}{peak:>14.0f}{gpu_s}", flush=True)


if __name__ == "__main__":
    main()
