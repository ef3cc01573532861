"""An asyncio micro-batching queue: concurrent requests share forward passes, never hang.

Items are grouped by a key (the dictionary they need) and a length bucket, so one batch holds
sequences of similar length (little padding) for one model. The dispatcher takes the bucket whose
oldest item waited longest and sends it when it is full (``max_batch``) or its oldest item has
waited ``max_wait_ms``. A lone request on an idle server is sent at once (no other arrival in
the last ``max_wait_ms``): batching must not tax single users. The model runs in one worker
thread, so the event loop stays free; the queue is bounded and :meth:`MicroBatcher.submit`
raises :class:`QueueFull` at once when it is full (the route answers 503 with Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

LENGTH_BUCKETS = (64, 128, 256, 512, 1024, 2048)


class QueueFull(RuntimeError):
    """The queue holds ``queue_size`` items; ``retry_after`` is a suggested wait in seconds."""

    def __init__(self, size: int, retry_after: int = 1) -> None:
        super().__init__(f"the encoding queue is full ({size} requests waiting); retry shortly")
        self.retry_after = retry_after


def length_bucket(length: int) -> int:
    """The smallest bucket bound that holds ``length`` (longer ones share the last bucket)."""
    for bound in LENGTH_BUCKETS:
        if length <= bound:
            return bound
    return LENGTH_BUCKETS[-1] * 2


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[T, R]):
    """Batch ``submit(key, length, item)`` calls into ``run_batch(key, items) -> results``."""

    def __init__(
        self,
        run_batch: Callable[[Hashable, Sequence[T]], Sequence[R]],
        *,
        max_batch: int,
        max_wait_ms: float,
        queue_size: int,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self._buckets: OrderedDict[tuple[Hashable, int], deque[_Pending[T, R]]] = OrderedDict()
        self._count = 0
        self._last_arrival = 0.0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self.batches_run = 0
        self.items_run = 0

    @property
    def queued(self) -> int:
        """Items waiting or running (what counts against ``queue_size``)."""
        return self._count

    async def submit(self, key: Hashable, length: int, item: T) -> R:
        """Queue one item and wait for its result; :class:`QueueFull` at once when full."""
        if self._count >= self.queue_size:
            raise QueueFull(self._count, retry_after=max(1, round(self._count * self.max_wait)))
        self._ensure_started()
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        pending: _Pending[T, R] = _Pending(item, loop.create_future())
        now = pending.arrived
        # A request arriving on an idle server is sent at once; a burst waits for companions.
        if now - self._last_arrival > self.max_wait and self._count == 0:
            pending.arrived = now - self.max_wait
        self._last_arrival = now
        self._buckets.setdefault((key, length_bucket(length)), deque()).append(pending)
        self._count += 1
        self._wake.set()
        try:
            return await pending.future
        finally:
            self._count -= 1

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop  # a new event loop (e.g. a second test client) gets its own task
            self._buckets.clear()
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._dispatch_forever())

    def _next_bucket(self) -> tuple[tuple[Hashable, int], float] | None:
        """The bucket whose head waited longest, and how long until it must go (<= 0: now)."""
        best: tuple[tuple[Hashable, int], float] | None = None
        for key, queue in self._buckets.items():
            while queue and queue[0].future.done():  # the client went away
                queue.popleft()
            if not queue:
                continue
            due = 0.0 if len(queue) >= self.max_batch else queue[0].arrived + self.max_wait
            if best is None or due < best[1]:
                best = (key, due)
        for key in [k for k, q in self._buckets.items() if not q]:
            del self._buckets[key]
        if best is None:
            return None
        return best[0], (best[1] - time.monotonic()) if best[1] else 0.0

    async def _dispatch_forever(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            chosen = self._next_bucket()
            if chosen is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            bucket, delay = chosen
            if delay > 0:
                self._wake.clear()
                # A new arrival may fill the bucket before its deadline.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)
                continue
            queue = self._buckets[bucket]
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            batch = [p for p in batch if not p.future.done()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(
                    self._executor, self._run_batch, bucket[0], [p.item for p in batch]
                )
            except Exception as exc:  # every waiter gets the error, the loop lives on
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            self.batches_run += 1
            self.items_run += len(batch)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)

    async def close(self) -> None:
        """Stop the dispatcher and the worker thread (pending waiters are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for queue in self._buckets.values():
            for p in queue:
                p.future.cancel()
        self._buckets.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
