"""The Ray engine: the trainer's shards and units on a Ray cluster (``[run] engine = "ray"``).

- embed: a Ray Data dataset of the shards still to do, ``map_batches`` over an actor pool (one
  actor per ``gpus_per_worker`` GPUs, or per ``cpus_per_worker`` CPU threads). Each actor gets the
  model once (from the object store, moved to its device) and, per shard, runs the shard's
  length-sorted proteins through it in token-budgeted batches and writes the same safetensors
  file the local engine writes, by rename. The driver alone writes the manifest, as each
  shard's record streams back. An actor that dies is restarted and its shards are retried (Ray
  Data's defaults for actor pools); a shard whose file is already complete is not recomputed.
- analyze and GO: each unit (one shard's encoding pass, one GO feature range) is a Ray task,
  retried up to ``max_retries`` times if its worker dies; the stage's job is put in the object
  store once and read once per worker process.

Every worker reads and writes the run's directory, so that path must be the same on every node
(a shared filesystem); see docs/scale.md. Ray is imported by this module alone.
"""

from __future__ import annotations

import copy
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import ray
import ray.data
from ray.exceptions import RayError, RayTaskError

from app.esm import LoadedModel, resolve_device
from trainer.embed_shards import ShardJob
from trainer.engines import EngineName, RayConfig, ShardRecord

C = TypeVar("C")
U = TypeVar("U")
R = TypeVar("R")


def on_device(loaded: LoadedModel, device: Any) -> LoadedModel:
    """``loaded`` on ``device``: itself when already there, else a moved copy (the caller's
    model stays where it is; a CUDA model cannot be unpickled on a worker without a GPU)."""
    import dataclasses

    import torch

    device = torch.device(device)
    if loaded.device == device and next(loaded.model.parameters()).device == device:
        return loaded
    model = copy.deepcopy(loaded.model).to(device).eval()
    return dataclasses.replace(loaded, model=model, device=device)


# Ray starts its worker processes at niceness 15 (to keep a driver responsive). The trainer's
# workers do the run's work, so they run at the trainer's own priority: at nice 15 on a machine
# doing anything else they get a fraction of the CPU (bench_ray at load ~15: the actors' forwards
# 1.7x slower than the same forwards in the trainer's process).
WORKER_NICENESS_ENV = "RAY_worker_niceness"


def start_local_instance(num_cpus: int | None) -> None:
    """A Ray instance inside this process whose workers run at the trainer's priority (a user's
    own ``RAY_worker_niceness`` is kept)."""
    os.environ.setdefault(WORKER_NICENESS_ENV, "0")
    ray.init(num_cpus=num_cpus, include_dashboard=False)


def _set_threads(cpus: float) -> None:
    """Torch threads = the CPUs the worker reserved (Ray does not limit them itself)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(cpus)))


class _ShardEmbedder:
    """A Ray Data actor: the model loaded once, then one call per batch of shard numbers."""

    def __init__(self, job_ref: list[ray.ObjectRef], cpus: float) -> None:
        _set_threads(cpus)
        job: ShardJob = ray.get(job_ref[0])
        self.job = job
        self.loaded = on_device(job.loaded, resolve_device(job.cfg.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import time

        shards, forward, write = [], [], []
        for k in (int(k) for k in batch["shard"]):
            if self.job.complete(k):  # written by an attempt that died before reporting it
                forward_s = write_s = math.nan
            else:
                started = time.perf_counter()
                offsets, stacked = self.job.forward(k, self.loaded)
                forward_s = time.perf_counter() - started
                self.job.write(k, offsets, stacked)
                write_s = time.perf_counter() - started - forward_s
            shards.append(k)
            forward.append(forward_s)
            write.append(write_s)
        return {"shard": np.array(shards, np.int64), "forward_s": np.array(forward),
                "write_s": np.array(write)}  # fmt: skip


_CONTEXTS: dict[str, Any] = {}  # per worker process: the job it read last, by object id


def _run_unit(fn: Callable[[Any, Any], Any], context_ref: list[ray.ObjectRef], unit: Any,
              cpus: float) -> Any:  # fmt: skip
    """One unit in a Ray worker; the stage's job is fetched once per worker process."""
    key = context_ref[0].hex()
    if key not in _CONTEXTS:
        _CONTEXTS.clear()
        _CONTEXTS[key] = ray.get(context_ref[0])
    _set_threads(cpus)
    return fn(_CONTEXTS[key], unit)


def _seconds(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class RayEngine:
    """Shards and units on Ray; starts a local instance, or joins a cluster, once."""

    name: EngineName = "ray"

    def __init__(self, cfg: RayConfig) -> None:
        self.cfg = cfg
        self._started = False
        if not ray.is_initialized():
            if cfg.address:
                ray.init(address=cfg.address)  # "auto": RAY_ADDRESS, else this node's cluster
            else:
                start_local_instance(cfg.local_cpus)
            self._started = True

    def workers(self, n_units: int) -> int:
        """Embed actors: as configured, else as many as the cluster's resources hold."""
        if self.cfg.num_workers is not None:
            return max(1, min(self.cfg.num_workers, n_units))
        total = ray.cluster_resources()
        if self.cfg.gpus_per_worker > 0:
            fit = total.get("GPU", 0.0) / self.cfg.gpus_per_worker
        else:
            fit = total.get("CPU", 1.0) / self.cfg.cpus_per_worker
        return max(1, min(int(fit), n_units))

    def embed_shards(
        self, job: ShardJob, todo: Sequence[int], progress: Callable[[int], None]
    ) -> Iterator[ShardRecord]:
        if not todo:
            return
        import torch

        shipped = on_device(job.loaded, torch.device("cpu"))
        job_ref = ray.put(ShardJob(shipped, job.sequences, job.shards, job.files, job.out_dir,
                                   job.layers, job.residue_layers, job.cfg,
                                   job.residue_stored))  # fmt: skip
        gpus = self.cfg.gpus_per_worker
        dataset = ray.data.from_items(
            [{"shard": int(k)} for k in todo], override_num_blocks=len(todo)
        ).map_batches(
            _ShardEmbedder,
            fn_constructor_args=([job_ref], self.cfg.cpus_per_worker),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=self.workers(len(todo))),
            num_cpus=self.cfg.cpus_per_worker,
            num_gpus=gpus if gpus > 0 else None,
        )  # Ray Data restarts a dead actor and retries its shards (its defaults, kept)
        for row in dataset.iter_rows():
            k = int(row["shard"])
            progress(job.n_residues(k))
            yield ShardRecord(k, _seconds(row["forward_s"]), _seconds(row["write_s"]))

    def map_units(
        self,
        fn: Callable[[C, U], R],
        context: C,
        units: Sequence[U],
        *,
        processes: int = 1,
        gpu: bool = False,
    ) -> Iterator[tuple[U, R | BaseException]]:
        """One Ray task per unit (``processes`` is the local engine's; Ray schedules by the
        resources each task reserves)."""
        if not units:
            return
        context_ref = [ray.put(context)]
        cpus, gpus = self.cfg.cpus_per_worker, self.cfg.gpus_per_worker if gpu else 0.0
        remote = ray.remote(_run_unit).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=self.cfg.max_retries
        )
        refs = {remote.remote(fn, context_ref, unit, cpus): unit for unit in units}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            unit = refs[done[0]]
            try:
                result: R | BaseException = ray.get(done[0])
            except RayTaskError as error:  # the unit's own exception, as the local engine gives
                cause = error.cause
                result = cause if isinstance(cause, BaseException) else error
            except RayError as error:  # its worker died more often than max_retries
                result = error
            yield unit, result

    def close(self) -> None:
        """Shut down the Ray instance this engine started (a joined cluster stays up)."""
        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False
