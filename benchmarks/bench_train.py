"""SAE training throughput (vectors/s) and peak memory, per dictionary kind and size.

Runs the real training loop (``trainer.train.train_dictionary``) for a fixed number of steps on
standard-normal vectors: the cost of a step does not depend on the vectors' content (TopK, the
L1 sum and the matmuls are dense), so no embedding run is needed. Each configuration runs in a
fresh process so its peak RSS (``resource.getrusage``) is its own; tracemalloc cannot see torch's
allocations. On CUDA the peak is ``torch.cuda.max_memory_allocated``.

    PYTHONPATH=. python benchmarks/bench_train.py [--steps 200] [--threads 1] [--device auto]
        [--batch 128] [--dims 192 480] [--expansions 4 8] [--kinds topk transcoder] [--half]

``--device auto`` is CUDA when available (``app.esm.resolve_device``). ``--half`` stores the
training vectors in float16 as the pipeline does for residue samples (cast per batch).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
from typing import Any

import torch

from app.esm import resolve_device
from trainer.train import SaeSpec, train_dictionary

KINDS: dict[str, dict[str, Any]] = {
    "topk": {"kind": "topk", "k": 64},
    "batchtopk": {"kind": "batchtopk", "k": 64},
    "relu_l1": {"kind": "relu_l1", "l1_coefficient": 1e-2},
    "transcoder": {"kind": "transcoder", "encoder_kind": "topk", "k": 64, "out_layer": 1},
}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _one(args: tuple[str, int, int, int, int, int, str, int, bool], out: Any) -> None:
    kind, d_in, expansion, batch, steps, threads, device, n_vectors, half = args
    torch.set_num_threads(threads)
    cuda = resolve_device(device).type == "cuda"
    gen = torch.Generator().manual_seed(0)
    dtype = torch.float16 if half else torch.float32
    x = torch.randn(n_vectors, d_in, generator=gen).to(dtype)
    val = torch.randn(1_024, d_in, generator=gen)
    is_tc = kind == "transcoder"
    y = torch.randn(n_vectors, d_in, generator=gen).to(dtype) if is_tc else None
    y_val = torch.randn(1_024, d_in, generator=gen) if is_tc else None
    spec = SaeSpec(name=f"{kind}_{d_in}x{expansion}", level="protein", layer=0, expansion=expansion,
                   batch_size=batch, steps=steps, eval_every=steps, checkpoint_every=10**9,
                   **KINDS[kind])  # fmt: skip
    warm = spec.model_copy(update={"steps": 5})
    train_dictionary(warm, x, y, val, y_val, progress=False, device=device)
    setup = _rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _, metrics = train_dictionary(spec, x, y, val, y_val, progress=False, device=device)
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    out.put((spec.name, batch, metrics["vectors_per_s"], setup, _rss_mib(), peak_gpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128, help="the seed paper's batch size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:n]")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--vectors", type=int, default=50_000, help="training set size")
    parser.add_argument("--half", action="store_true", help="float16 training vectors")
    parser.add_argument("--dims", type=int, nargs="+", default=[192, 480])
    parser.add_argument("--expansions", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), {args.threads} thread(s), batch {args.batch}, "
          f"{args.steps} steps, {args.vectors} {'float16' if args.half else 'float32'} vectors")  # fmt: skip
    print(
        f"{'dictionary':<22}{'vectors/s':>12}{'RSS setup MiB':>15}{'RSS peak MiB':>14}{'GPU peak MiB':>14}"
    )
    for d_in in args.dims:
        for expansion in args.expansions:
            for kind in args.kinds:
                queue = ctx.Queue()
                job = (kind, d_in, expansion, args.batch, args.steps, args.threads, str(device),
                       args.vectors, args.half)  # fmt: skip
                proc = ctx.Process(target=_one, args=(job, queue))
                proc.start()
                name, _, vps, setup, peak, gpu = queue.get()
                proc.join()
                gpu_s = f"{gpu:>14.1f}" if gpu is not None else f"{'-':>14}"
                print(f"{name:<22}{vps:>12.0f}{setup:>15.0f}{peak:>14.0f}{gpu_s}", flush=True)


if __name__ == "__main__":
    main()
