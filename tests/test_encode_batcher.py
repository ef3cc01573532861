"""The micro-batching queue with the real mini ESM2 forward: shared passes, buckets, 503 path."""

from __future__ import annotations

import argparse
import asyncio
import threading
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from app.encoding.batcher import MicroBatcher, QueueFull, length_bucket
from tests.encode_fixtures import human_proteins

LAYER = 3


class MiniEsm:
    """The real fair-esm mini model; records the batches it is given."""

    def __init__(self, shared: Path) -> None:
        import esm

        torch.set_num_threads(1)
        torch.serialization.add_safe_globals([argparse.Namespace])
        self.model, alphabet = esm.pretrained.load_model_and_alphabet_local(
            str(shared / "models/esm2_t4_2M_sprot14mini.pt")
        )
        self.model.eval()
        self.convert = alphabet.get_batch_converter()
        self.batches: list[list[int]] = []

    def __call__(self, key: Hashable, sequences: Sequence[str]) -> list[np.ndarray]:
        self.batches.append([len(s) for s in sequences])
        _, _, tokens = self.convert([(str(i), s) for i, s in enumerate(sequences)])
        with torch.inference_mode():
            reps = self.model(tokens, repr_layers=[LAYER])["representations"][LAYER]
        return [reps[i, 1 : len(s) + 1].numpy().copy() for i, s in enumerate(sequences)]


@pytest.fixture(scope="module")
def mini(shared_dir: Path) -> MiniEsm:
    return MiniEsm(shared_dir)


def test_length_buckets() -> None:
    assert length_bucket(50) == 64 and length_bucket(64) == 64 and length_bucket(65) == 128
    assert length_bucket(5000) == length_bucket(9000)


def test_concurrent_requests_share_forward_passes(mini: MiniEsm, shared_dir: Path) -> None:
    rows = human_proteins(shared_dir, 12, 60, 120)
    sequences = [r["sequence"] for r in rows]
    alone = [mini("k", [s])[0] for s in sequences]
    mini.batches.clear()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(mini, max_batch=8, max_wait_ms=20, queue_size=64)
        try:
            return await asyncio.gather(*(batcher.submit("k", len(s), s) for s in sequences))
        finally:
            await batcher.close()

    results = asyncio.run(main())
    assert len(mini.batches) < len(sequences)  # shared passes
    assert max(len(b) for b in mini.batches) <= 8
    for got, want in zip(results, alone, strict=True):  # padding does not change the answer
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_buckets_keep_lengths_apart(mini: MiniEsm, shared_dir: Path) -> None:
    short = [r["sequence"] for r in human_proteins(shared_dir, 3, 50, 60)]
    long = [r["sequence"] for r in human_proteins(shared_dir, 3, 300, 400)]
    mini.batches.clear()

    async def main() -> None:
        batcher = MicroBatcher(mini, max_batch=16, max_wait_ms=20, queue_size=64)
        await asyncio.gather(*(batcher.submit("k", len(s), s) for s in short + long))
        await batcher.close()

    asyncio.run(main())
    for batch in mini.batches:  # no batch mixes a 50-aa with a 300-aa sequence
        assert len({length_bucket(n) for n in batch}) == 1


def test_lone_request_goes_at_once_and_a_burst_waits_for_companions(mini: MiniEsm) -> None:
    """With a 30 s window: the first request on an idle batcher is sent without waiting for it
    (it returns well inside the window), and one arriving right after it is held for companions
    until a second fills the batch, so both share one forward pass. (Latency: bench_encode.py.)"""
    mini.batches.clear()

    async def main() -> None:
        batcher = MicroBatcher(mini, max_batch=2, max_wait_ms=30_000, queue_size=8)
        try:
            await asyncio.wait_for(batcher.submit("k", 3, "MKV"), timeout=15)  # not held 30 s
            held = asyncio.ensure_future(batcher.submit("k", 4, "MKVL"))
            await asyncio.sleep(0.2)
            assert not held.done() and mini.batches == [[3]]  # waits for a companion
            await asyncio.wait_for(asyncio.gather(held, batcher.submit("k", 4, "MKVA")), timeout=15)
        finally:
            await batcher.close()

    asyncio.run(main())
    assert mini.batches == [[3], [4, 4]]


def test_full_queue_refuses_at_once_and_recovers(mini: MiniEsm) -> None:
    """A full queue raises QueueFull from submit's first step, before it ever suspends."""
    gate = threading.Event()

    def slow(key: Hashable, sequences: Sequence[str]) -> list[np.ndarray]:
        gate.wait(10)
        return mini(key, sequences)

    async def main() -> list[object]:
        batcher = MicroBatcher(slow, max_batch=1, max_wait_ms=0, queue_size=2)
        held = [asyncio.ensure_future(batcher.submit("k", 4, s)) for s in ("MKVL", "MKVA")]
        await asyncio.sleep(0.05)
        refused = batcher.submit("k", 4, "MKVW")
        with pytest.raises(QueueFull) as err:
            refused.send(None)  # raises on the first step: no waiting in the queue at all
        assert err.value.retry_after >= 1
        gate.set()
        done = await asyncio.gather(*held)
        again = await batcher.submit("k", 4, "MKVW")  # room again
        await batcher.close()
        return [*done, again]

    assert len(asyncio.run(main())) == 3


def test_worker_errors_reach_every_waiter() -> None:
    def broken(key: Hashable, sequences: Sequence[str]) -> list[int]:
        raise RuntimeError("model exploded")

    async def main() -> None:
        batcher = MicroBatcher(broken, max_batch=4, max_wait_ms=5, queue_size=8)
        outcomes = await asyncio.gather(
            *(batcher.submit("k", 3, s) for s in ("MKV", "MKL")), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        await batcher.close()

    asyncio.run(main())
