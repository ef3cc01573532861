"""On-demand encoding: ESM2 then a dictionary, models warm per process, results cached.

One :class:`EncodingService` per process holds, per SAE id, the loaded ESM2 checkpoint (shared
between dictionaries of the same run) and the dictionary; requests go through a
:class:`~app.encoding.batcher.MicroBatcher` so concurrent users share forward passes, and each
sequence's result is cached by (SAE id, sequence sha256). Results are kept sparse: a CSR matrix
of the active (residue, latent) pairs, or the active pooled latents.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import sparse
from sqlalchemy.orm import Session

from app.encoding.batcher import MicroBatcher
from app.encoding.errors import UnknownSae
from app.encoding.models import (
    EncodingUnavailable,
    LoadedEsm,
    load_dictionary_for,
    load_esm_for_run,
)
from app.queries.encoding import encoding_dictionary
from app.sae import sequence_fve
from app.settings import Settings

OOD_MARGIN = 0.2  # warn when FVE falls this far below the training median (or below its p05)


@dataclass
class DictionaryHandle:
    """A warm dictionary with its ESM2 model and what the answer must say about them."""

    sae_id: int
    sae_name: str
    kind: str
    level: str
    layer: int
    n_latents: int
    esm: LoadedEsm
    module: Any
    provenance: dict[str, Any]
    fve_median: float | None
    fve_floor: float | None
    density: np.ndarray  # [n_latents] from the store, for hiding dense features


@dataclass
class SequenceEncoding:
    """One sequence through ESM2 and a dictionary (sparse).

    ``residue``: CSR ``[L, n_latents]`` of residue-level latents, or (protein level) the exact
    per-residue attribution of the active pooled latents. ``pooled``: ``[n_latents]`` dense —
    the encoded mean vector (protein level) or the max over residues (residue level).
    """

    length: int
    residue: sparse.csr_matrix
    pooled: np.ndarray
    mean: np.ndarray  # mean over residues (residue level) or = pooled (protein level)
    fve: float | None


def sequence_key(sae_id: int, sequence: str) -> tuple[int, str]:
    return sae_id, hashlib.sha256(sequence.encode()).hexdigest()


class ResultCache:
    """A thread-safe LRU of :class:`SequenceEncoding` by (SAE id, sequence sha256)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], SequenceEncoding] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, str]) -> SequenceEncoding | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: tuple[int, str], value: SequenceEncoding) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


def encode_with(handle: DictionaryHandle, sequences: Sequence[str]) -> list[SequenceEncoding]:
    """Synchronous: one ESM2 pass over ``sequences`` then the dictionary (worker-thread code)."""
    with handle.esm.lock:
        reps = handle.esm.embed(sequences, handle.layer)
    out = []
    with torch.inference_mode():
        for x in reps:
            if handle.level == "protein":
                out.append(_encode_protein(handle, x))
            else:
                out.append(_encode_residues(handle, x))
    return out


def _encode_residues(handle: DictionaryHandle, x: torch.Tensor) -> SequenceEncoding:
    """Only the latents' non-zeros leave the device; max and mean come from them.

    ``np.add.at`` sums each latent's values in residue order in float32, exactly as numpy's mean
    over the dense ``[L, n]`` did (the zeros add nothing). The decode reads only the active
    latents (it serves the FVE warning, nothing else).
    """
    codes = handle.module.forward_sparse(x)
    fve = None if handle.kind == "neurons" else sequence_fve(x, codes.recon)
    length = x.shape[0]
    values = codes.values.float().cpu().numpy()
    indices = codes.indices.cpu().numpy()
    residue = sparse.csr_matrix(
        (values, indices, codes.indptr.cpu().numpy()), shape=(length, handle.n_latents)
    )
    pooled = np.zeros(handle.n_latents, dtype=np.float32)
    np.maximum.at(pooled, indices, values)
    total = np.zeros(handle.n_latents, dtype=np.float32)
    np.add.at(total, indices, values)
    return SequenceEncoding(length, residue, pooled, total / np.float32(length), fve)


def _encode_protein(handle: DictionaryHandle, x: torch.Tensor) -> SequenceEncoding:
    pooled_x = x.mean(dim=0, keepdim=True)
    recon, z = handle.module.forward(pooled_x)
    z_np = z.float().cpu().numpy()[0]
    active = np.flatnonzero(z_np > 0)
    attribution = getattr(handle.module, "residue_attribution", None)
    if attribution is not None and active.size:
        terms = attribution(x)[:, torch.from_numpy(active).to(x.device)].float().cpu().numpy()
    else:  # raw neurons: pooled = mean of residues, so residue l contributes x_l / L
        terms = (x[:, torch.from_numpy(active).to(x.device)] / x.shape[0]).float().cpu().numpy()
    residue = sparse.csr_matrix(
        (
            terms.ravel(),
            (np.repeat(np.arange(x.shape[0]), active.size), np.tile(active, x.shape[0])),
        ),
        shape=(x.shape[0], handle.n_latents),
    )
    fve = None if handle.kind == "neurons" else sequence_fve(pooled_x, recon)
    return SequenceEncoding(x.shape[0], residue, z_np, z_np, fve)


class EncodingService:
    """Per-process registry of warm dictionaries, the batching queue and the result cache."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = ResultCache(settings.encode_cache_size)
        self._handles: dict[int, DictionaryHandle] = {}
        self._esm: dict[tuple[str, str], LoadedEsm] = {}
        self._load_lock = threading.Lock()
        torch.set_num_threads(settings.torch_threads)
        self.batcher: MicroBatcher[str, SequenceEncoding] = MicroBatcher(
            self._run_batch,
            max_batch=settings.encode_max_batch,
            max_wait_ms=settings.encode_max_wait_ms,
            queue_size=settings.encode_queue_size,
        )

    def handle(self, session: Session, sae_id: int) -> DictionaryHandle:
        """The warm handle for a published SAE (loads on first use; blocking)."""
        if sae_id in self._handles:
            return self._handles[sae_id]
        with self._load_lock:
            if sae_id in self._handles:
                return self._handles[sae_id]
            found = encoding_dictionary(session, sae_id)
            if found is None:
                raise UnknownSae(f"no published SAE with id {sae_id}")
            sae, run, density = found
            esm_key = (run.base_model, run.checkpoint_sha256)
            if esm_key not in self._esm:
                self._esm[esm_key] = load_esm_for_run(run, self.settings)
            esm = self._esm[esm_key]
            metrics = sae.metrics or {}
            median = metrics.get("fve_median", metrics.get("fve_per_sequence_median", sae.fve))
            floor = metrics.get("fve_p05")
            self._handles[sae_id] = DictionaryHandle(
                sae_id=sae.id,
                sae_name=sae.name,
                kind=sae.kind,
                level=sae.level,
                layer=sae.layer,
                n_latents=sae.n_latents,
                esm=esm,
                module=load_dictionary_for(sae, esm.device),
                provenance={
                    "model": run.base_model,
                    "model_loaded": esm.name,
                    "checkpoint_sha256": esm.sha256,
                    "layer": sae.layer,
                    "sae_id": sae.id,
                    "sae_name": sae.name,
                    "sae_kind": sae.kind,
                    "level": sae.level,
                    "run_id": run.id,
                    "run_name": run.name,
                    "weights_sha256": sae.weights_sha256,
                    "device": str(esm.device),
                },
                fve_median=float(median) if median is not None else None,
                fve_floor=float(floor) if floor is not None else None,
                density=density,
            )
            return self._handles[sae_id]

    def _run_batch(self, key: Hashable, sequences: Sequence[str]) -> list[SequenceEncoding]:
        handle = self._handles[int(key)]  # type: ignore[call-overload]
        unique = list(dict.fromkeys(sequences))
        done = dict(zip(unique, encode_with(handle, unique), strict=True))
        return [done[s] for s in sequences]

    async def encode(
        self, handle: DictionaryHandle, sequences: Sequence[str]
    ) -> list[SequenceEncoding]:
        """Encode through the cache and the batching queue (raises QueueFull when full)."""
        keys = [sequence_key(handle.sae_id, s) for s in sequences]
        cached = [self.cache.get(k) for k in keys]
        missing = [i for i, c in enumerate(cached) if c is None]
        fresh = await asyncio.gather(
            *(self.batcher.submit(handle.sae_id, len(sequences[i]), sequences[i]) for i in missing)
        )
        for i, result in zip(missing, fresh, strict=True):
            self.cache.put(keys[i], result)
            cached[i] = result
        return [c for c in cached if c is not None]

    def quality(self, handle: DictionaryHandle, fve: float | None) -> dict[str, Any]:
        """FVE of this sequence against the training median, with an out-of-distribution warning."""
        if fve is None:
            note = "raw neurons are not a reconstruction: FVE is not defined"
            return {"fve": None, "training_median_fve": None, "warning": None, "note": note}
        warning = None
        median = handle.fve_median
        floor = (
            handle.fve_floor
            if handle.fve_floor is not None
            else (median - OOD_MARGIN if median is not None else None)
        )
        if not np.isfinite(fve):
            return {"fve": None, "training_median_fve": median, "note": None,
                    "warning": "reconstruction quality undefined (constant activations)"}  # fmt: skip
        if floor is not None and fve < floor:
            reference = (
                f"training median {median:.3f}" if median is not None else f"p05 {floor:.3f}"
            )
            warning = (
                f"out of distribution: this sequence's FVE {fve:.3f} is far below the SAE's "
                f"{reference}; its features may not mean here what they meant in training"
            )
        return {"fve": fve, "training_median_fve": median, "warning": warning, "note": None}


__all__ = ["EncodingService", "EncodingUnavailable", "SequenceEncoding", "UnknownSae"]
