"""On-demand encoding benchmark: latency vs the bare fair-esm forward, batching throughput, API reads.

    PYTHONPATH=. python benchmarks/bench_encode.py [--model PATH] [--layer 3] [--device auto]

Runs unchanged on CUDA (device from ``--device``/``PROTSAE_DEVICE``, ``auto`` = CUDA when present)
and prints the device first. (1) median latency of one encode (ESM2 + dictionary + sparse ranking,
through the batching queue, cache off) at 100/300/1000 residues against two bare forwards on the
same sequences, each with fair-esm's own batch converter: the full ``model(tokens,
repr_layers=[layer])`` (the issue's reference) and the same forward stopped at ``layer``
(:func:`app.esm.forward_representations`). Their difference is what truncation saves; the
encode's excess over the truncated one is our own cost (dictionary, FVE, sparse layout, ranking,
queue), less the lookup-table tokenizer's saving. The bare forwards run in a worker thread like
the encode (torch's thread pool and the allocator behave differently off the main thread), timed
inside it, so the encode alone pays the hops to and from its thread; (2) throughput with 8
and 64 concurrent clients with the batching queue vs one-at-a-time; (3) API latency over HTTP
(ASGI, in process) on a small real published run.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from app.encoding.batcher import MicroBatcher
from app.encoding.models import LoadedEsm
from app.encoding.ranking import rank_features
from app.encoding.service import DictionaryHandle, SequenceEncoding, encode_with
from app.esm import autocast_for, forward_representations, load_esm
from app.sae import NeuronBasis, TopKSAE
from app.settings import Settings


def real_sequences(shared: Path, length: int, n: int) -> list[str]:
    """``n`` real human Swiss-Prot sequences cropped to ``length`` residues."""
    out = []
    with gzip.open(shared / "data/proteins/human_sprot2014.tsv.gz", "rt", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["length"]) >= length:
                out.append(row["sequence"][:length])
                if len(out) == n:
                    break
    return out


def make_handle(model_path: Path, layer: int, device: str, sae: str) -> DictionaryHandle:
    esm = LoadedEsm(load_esm(model_path, device=device))
    d = esm.loaded.embed_dim
    module: torch.nn.Module = NeuronBasis(d)
    kind, n_latents = "neurons", d
    if sae == "topk":  # untrained weights: the cost of a forward does not depend on them
        module, kind, n_latents = TopKSAE(d, 16 * d, 32), "topk", 16 * d
    module = module.to(esm.device).eval()
    return DictionaryHandle(
        sae_id=1, sae_name=kind, kind=kind, level="residue", layer=layer, n_latents=n_latents,
        esm=esm, module=module, provenance={}, fve_median=None, fve_floor=None,
        density=np.zeros(n_latents, dtype=np.float32),
    )  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(handle: DictionaryHandle, sequence: str, truncated: bool = False) -> float:
    """fair-esm alone: its batch converter, then its full forward (or stopped at the layer)."""
    esm = handle.esm
    start = time.perf_counter()
    _, _, tokens = esm.alphabet.get_batch_converter()([("q", sequence)])
    with torch.inference_mode(), autocast_for(esm.device):
        tokens = tokens.to(esm.device)
        if truncated:
            reps = forward_representations(esm.model, tokens, [handle.layer])
        else:
            reps = esm.model(tokens, repr_layers=[handle.layer])["representations"]
        reps[handle.layer].float().cpu()
    sync(esm.device)
    return time.perf_counter() - start


def batcher_for(handle: DictionaryHandle, batching: bool) -> MicroBatcher[str, SequenceEncoding]:
    return MicroBatcher(
        lambda key, seqs: encode_with(handle, seqs),
        max_batch=16 if batching else 1,
        max_wait_ms=5 if batching else 0,
        queue_size=1024,
    )


async def ours(handle: DictionaryHandle, batcher: MicroBatcher, sequence: str) -> float:  # type: ignore[type-arg]
    start = time.perf_counter()
    enc = await batcher.submit(1, len(sequence), sequence)
    rank_features(handle, enc, top_n=20)
    sync(handle.esm.device)
    return time.perf_counter() - start


def latency(handle: DictionaryHandle, shared: Path, reps: int) -> None:
    print("\n(1) latency, median of", reps, "(one request at a time)")
    print(f"{'length':>7} {'bare full ms':>13} {'bare to-layer ms':>17} {'encode ms':>10} "
          f"{'vs full':>8} {'vs to-layer':>12}")  # fmt: skip
    for length in (100, 300, 1000):
        seqs = real_sequences(shared, length, reps + 2)

        async def run(seqs: list[str] = seqs) -> tuple[list[float], list[float], list[float]]:
            batcher = batcher_for(handle, batching=True)
            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=1) as pool:
                for s in seqs[:2]:  # warm-up (CUDA kernels, allocator, the worker threads)
                    await loop.run_in_executor(pool, bare_forward, handle, s)
                    await loop.run_in_executor(pool, bare_forward, handle, s, True)
                    await ours(handle, batcher, s)
                full, cut, enc = [], [], []
                for s in seqs[2:]:  # interleaved so drifting machine load hits all three alike
                    full.append(await loop.run_in_executor(pool, bare_forward, handle, s))
                    cut.append(await loop.run_in_executor(pool, bare_forward, handle, s, True))
                    enc.append(await ours(handle, batcher, s))
                    await asyncio.sleep(0.01)  # a lone request, as from one user
            await batcher.close()
            return full, cut, enc

        full, cut, enc = asyncio.run(run())
        f, c, e = (statistics.median(t) * 1e3 for t in (full, cut, enc))
        print(f"{length:>7} {f:>13.2f} {c:>17.2f} {e:>10.2f} {e / f:>7.2f}x {e / c:>11.2f}x")


def throughput(handle: DictionaryHandle, shared: Path, per_client: int) -> None:
    print("\n(2) throughput, 300-aa real sequences, closed-loop clients")
    pool = real_sequences(shared, 300, 256)

    async def run(clients: int, batching: bool) -> float:
        batcher = batcher_for(handle, batching)

        async def client(c: int) -> None:
            for r in range(per_client):
                s = pool[(c * per_client + r) % len(pool)]
                await batcher.submit(1, len(s), s)

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        elapsed = time.perf_counter() - start
        await batcher.close()
        return clients * per_client / elapsed

    print(f"{'clients':>8} {'one-at-a-time req/s':>20} {'batched req/s':>14} {'gain':>6}")
    for clients in (8, 64):
        single = asyncio.run(run(clients, batching=False))
        batched = asyncio.run(run(clients, batching=True))
        print(f"{clients:>8} {single:>20.1f} {batched:>14.1f} {batched / single:>5.2f}x")


def api_reads(shared: Path, n: int) -> None:
    import httpx

    from tests.store_fixture import build_store

    print("\n(3) API over HTTP (ASGI in process) on a small real published run")
    tmp = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    info = build_store(shared, tmp / "store.sqlite")
    print(f"   (store built in {time.perf_counter() - start:.0f} s)")
    from app.main import create_app

    app = create_app(Settings(database_url=info.url))
    seq = real_sequences(shared, 300, 1)[0]
    requests = [
        ("GET /api/v1/runs", "GET", "/api/v1/runs", None),
        ("GET export.json", "GET", f"/api/v1/saes/{info.sae_id}/export.json", None),
        ("POST encode 300 aa (cached)", "POST", "/api/v1/encode",
         {"sae_id": info.sae_id, "sequences": [seq]}),
    ]  # fmt: skip

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for label, method, url, body in requests:
                await client.request(method, url, json=body)
                times = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    response = await client.request(method, url, json=body)
                    times.append(time.perf_counter() - t0)
                    assert response.status_code == 200, response.text
                ms = statistics.median(times) * 1e3
                print(f"   {label:<30} median {ms:7.2f} ms  ({1e3 / ms:7.1f} req/s serial)")

    asyncio.run(run())


def main() -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path,
                        default=settings.shared_dir / "models/esm2_t4_2M_sprot14mini.pt")  # fmt: skip
    parser.add_argument("--layer", type=int, default=3)
    parser.add_argument("--device", default=settings.device)
    parser.add_argument("--sae", choices=["neurons", "topk"], default="topk")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="only section (1)")
    args = parser.parse_args()
    torch.set_num_threads(settings.torch_threads)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(
        f"device: {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    handle = make_handle(args.model, args.layer, device, args.sae)
    print(f"model: {handle.esm.name} (sha256 {handle.esm.sha256[:12]}), layer {args.layer}, "
          f"dictionary: {handle.kind} ({handle.n_latents} latents)")  # fmt: skip
    latency(handle, settings.shared_dir, args.reps)
    if args.latency_only:
        return
    throughput(handle, settings.shared_dir, args.per_client)
    if not args.skip_api:
        api_reads(settings.shared_dir, args.reps)


if __name__ == "__main__":
    main()
