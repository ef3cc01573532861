"""Where the trainer's parallel work runs: one engine interface, two engines.

``local`` (the default) is this process, with forked processes for the GO stage: what the trainer
always did, and it never imports Ray. ``ray`` runs the same units on a Ray cluster (or a Ray
instance started in-process): the embed stage's shards on a Ray Data actor pool, one model per
actor, and the analyze and GO stages' independent units as Ray tasks. Both engines compute each
unit with the same function on the same files, so results do not depend on the engine.

Stages call two methods:

- :meth:`Engine.embed_shards`: embed and write the given shards of a
  :class:`~trainer.embed_shards.ShardJob`, yielding a :class:`ShardRecord` per shard once its file is in place (any order).
- :meth:`Engine.map_units`: ``fn(context, unit)`` for every unit, yielding ``(unit, result)`` as
  units finish, a unit's exception as its result (the caller decides what a failure means).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from trainer.embed_shards import ShardJob

EngineName = Literal["local", "ray"]
C = TypeVar("C")
U = TypeVar("U")
R = TypeVar("R")


class RayConfig(BaseModel):
    """The ``[ray]`` table: which cluster, and what each worker asks of it."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(
        default="",
        description="'' starts a Ray instance in this process; 'auto' joins the cluster named by "
        "RAY_ADDRESS (or the one started on this node with `ray start`); else a ray:// or "
        "host:port address",
    )
    cpus_per_worker: float = Field(
        default=1.0, gt=0, description="CPUs each embed actor and each task reserves (and the "
        "torch threads it uses, rounded down, at least 1)",
    )  # fmt: skip
    gpus_per_worker: float = Field(
        default=0.0, ge=0, description="GPUs each embed actor and each analyze task reserves "
        "(1 = one actor per GPU); GO tasks never ask for one",
    )  # fmt: skip
    num_workers: int | None = Field(
        default=None, ge=1, description="embed actors; None = as many as the cluster's CPUs (or "
        "GPUs, with gpus_per_worker > 0) allow",
    )  # fmt: skip
    local_cpus: int | None = Field(
        default=None, ge=1, description="CPUs of the in-process instance (address ''); None = all"
    )
    max_retries: int = Field(
        default=3, ge=0, description="retries of an analyze or GO task whose worker process "
        "died (embed actors are restarted and their shards retried by Ray Data itself)",
    )  # fmt: skip


@dataclass(frozen=True)
class ShardRecord:
    """One shard written: its index in the plan, and where its time went (seconds; ``None``
    where the engine found the file already complete and had nothing to compute)."""

    shard: int
    forward_s: float | None = None
    write_s: float | None = None
    wait_s: float | None = None  # the local engine: the forward loop waiting for its writer


class Engine(Protocol):
    """What a stage needs of the machinery that runs its units."""

    name: EngineName

    def embed_shards(
        self, job: ShardJob, todo: Sequence[int], progress: Callable[[int], None]
    ) -> Iterator[ShardRecord]:
        """Embed and write shards ``todo`` of ``job``; a record per shard once its file lands.
        ``progress(n)``: ``n`` more residues embedded (for a progress bar)."""
        ...

    def map_units(
        self,
        fn: Callable[[C, U], R],
        context: C,
        units: Sequence[U],
        *,
        processes: int = 1,
        gpu: bool = False,
    ) -> Iterator[tuple[U, R | BaseException]]:
        """``fn(context, unit)`` per unit, results as they finish. ``processes``: the local
        engine's forked workers (1 = in this process); ``gpu``: the unit uses a GPU if given
        one (Ray then reserves ``gpus_per_worker``)."""
        ...

    def close(self) -> None:
        """Release what the engine started (a Ray instance it started itself)."""
        ...


def start_engine(name: EngineName, ray: RayConfig | None = None) -> Engine:
    """The engine a config names; Ray is imported only here, and only for ``ray``."""
    if name == "ray":
        from trainer.engines.ray import RayEngine

        return RayEngine(ray or RayConfig())
    from trainer.engines.local import LocalEngine

    return LocalEngine()
