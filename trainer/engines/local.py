"""The local engine: this process, plus forked worker processes where a stage asks for them.

Behaves as the trainer did before engines existed: embed runs its shards here (the forward of
shard k+1 overlapping the write of shard k), analyze's per-shard passes run here in order, and
the GO stage's units run in ``processes`` forked workers that share the job copy-on-write.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import TYPE_CHECKING, Any, TypeVar

from trainer.engines import EngineName, ShardRecord

if TYPE_CHECKING:
    from trainer.embed_shards import ShardJob

C = TypeVar("C")
U = TypeVar("U")
R = TypeVar("R")

# Read by forked workers: (fn, context), shared copy-on-write, never pickled.
_FORKED: tuple[Callable[[Any, Any], Any], Any] | None = None


def _run_forked(unit: Any) -> Any:
    assert _FORKED is not None, "a forked worker started without its job (needs fork)"
    fn, context = _FORKED
    return fn(context, unit)


class LocalEngine:
    """Everything on this machine; no Ray import."""

    name: EngineName = "local"

    def embed_shards(
        self, job: ShardJob, todo: Sequence[int], progress: Callable[[int], None]
    ) -> Iterator[ShardRecord]:
        from trainer.embed_shards import embed_shards_locally

        for k, forward_s, write_s, wait_s in embed_shards_locally(job, todo, progress):
            yield ShardRecord(k, forward_s, write_s, wait_s)

    def map_units(
        self,
        fn: Callable[[C, U], R],
        context: C,
        units: Sequence[U],
        *,
        processes: int = 1,
        gpu: bool = False,
    ) -> Iterator[tuple[U, R | BaseException]]:
        """In order in this process, or in ``processes`` forked workers as they finish. A dead
        worker process raises ``BrokenProcessPool`` (the pool cannot go on without it)."""
        processes = min(processes, len(units))
        if processes <= 1 or "fork" not in mp.get_all_start_methods():
            for unit in units:
                try:
                    result: R | BaseException = fn(context, unit)
                except Exception as error:
                    result = error
                yield unit, result
            return
        global _FORKED
        _FORKED = (fn, context)
        try:
            with ProcessPoolExecutor(processes, mp_context=mp.get_context("fork")) as pool:
                futures = {pool.submit(_run_forked, unit): unit for unit in units}
                for future in as_completed(futures):
                    failure = future.exception()
                    yield futures[future], (failure if failure is not None else future.result())
        finally:
            _FORKED = None

    def close(self) -> None:
        """Nothing to release."""
