"""The encoding pass: every protein through a dictionary, once.

Per protein its maximum activation of each feature (residue level: over its residues, one unit
per embedding shard on an engine; protein level: the encoded pooled vector), per feature the
residues it fires on, and, from the same forward, each protein's reconstruction FVE and the
amino-acid mass; reading and encoding the shards is the stage's main cost, so it happens once.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import Tensor
from tqdm import tqdm

from app.esm import resolve_device
from app.sae import Dictionary, SparseDictionary
from trainer.aa_profile import AaMass
from trainer.embedding_store import EmbeddingStore, ResidueSource
from trainer.engines import Engine

if TYPE_CHECKING:
    from trainer.analyze import AnalyzeConfig, Spec


FloatArray = npt.NDArray[np.float32]


def device_of(module: Dictionary) -> torch.device:
    """Where the module's tensors are: its weights, or the neuron baseline's empty buffer
    (weightless, it ran on the CPU beside a GPU: 110 s for the 31.7 M residues of the full
    corpus on an H200 machine's 16 cores, against 43-64 s for the residue SAEs on the GPU)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def to_device(a: np.ndarray, device: torch.device) -> Tensor:
    """float32 tensor on ``device``; on CUDA through pinned memory, the copy asynchronous."""
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _nonzero(
    module: Dictionary, x: Tensor, batch: int, recon_out: list[Tensor] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Latents of ``x [N, d_in]`` as (rows, columns, values) of the non-zero entries, row-major,
    on ``x``'s device; encoded ``batch`` rows at a time so the dense latents stay small.
    With ``recon_out`` (SAEs), each batch's reconstruction is appended there from the same
    forward, so the FVE needs no second encode."""
    rows, cols, vals = [], [], []
    for start in range(0, x.shape[0], batch):
        if recon_out is None:
            z = module.encode(x[start : start + batch])
        else:
            recon, z = module(x[start : start + batch])
            recon_out.append(recon)
        r, c = z.nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
        vals.append(z[r, c].float())
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty, torch.zeros(0, device=x.device)
    return torch.cat(rows), torch.cat(cols), torch.cat(vals)


def _csr(rows: Tensor, cols: Tensor, vals: Tensor, shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR from row-major sorted non-zero entries (one copy to the host)."""
    r, c, v = rows.cpu().numpy(), cols.cpu().numpy(), vals.cpu().numpy().astype(np.float32)
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=indptr[1:])
    return sp.csr_matrix((v, c.astype(np.int64), indptr), shape=shape)


def _encode(module: Dictionary, x: FloatArray, batch: int) -> sp.csr_matrix:
    """Sparse latents of ``x`` [N, d_in] -> CSR [N, n_latents] (float32)."""
    with torch.inference_mode():
        t = to_device(x, device_of(module))
        return _csr(*_nonzero(module, t, batch), (x.shape[0], module.n_latents))


def _owners(offsets: np.ndarray, device: torch.device) -> Tensor:
    """Residue -> index of its protein within a batch, from the batch's ``offsets``."""
    lengths = torch.from_numpy(np.diff(offsets).astype(np.int64)).to(device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)


@dataclass
class _ShardActivations:
    """One shard's pass: per batch its proteins, their max activations and FVEs."""

    proteins: list[np.ndarray]
    rows: list[sp.csr_matrix]
    fve: list[np.ndarray]
    residue_active: npt.NDArray[np.int64]
    n_residues: int
    aa: tuple[np.ndarray, np.ndarray] | None = None  # activation mass per residue type, residues


@dataclass
class _ShardPass:
    """A residue-level dictionary's encoding pass, one unit per embedding shard (an engine may
    run the units in other processes: pickled, the module travels on the CPU and lands on the
    device ``cfg.device`` names there)."""

    module: Dictionary
    spec: Spec
    store: EmbeddingStore
    cfg: AnalyzeConfig
    with_fve: bool
    sequences: Sequence[str] | None = None  # with them, the amino-acid mass (trainer.aa_profile)
    source: ResidueSource | None = None  # residues of proteins outside a stored residue sample

    def __getstate__(self) -> dict[str, Any]:
        on_cpu = device_of(self.module).type == "cpu"
        return {
            **self.__dict__,
            "module": self.module if on_cpu else copy.deepcopy(self.module).cpu(),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.module = self.module.to(resolve_device(self.cfg.device)).eval()

    def run(self, k: int) -> _ShardActivations:
        module, n_latents = self.module, self.module.n_latents
        device = device_of(module)
        residue_active = torch.zeros(n_latents, dtype=torch.long, device=device)
        out = _ShardActivations([], [], [], np.zeros(0, dtype=np.int64), 0)
        batches = self.store.iter_shard_residue_batches(
            self.spec.layer, k, self.cfg.max_residues_per_batch, self.source
        )
        mass = None if self.sequences is None else AaMass(self.sequences, n_latents, device)
        with torch.inference_mode():
            for protein_indices, offsets, residues in batches:
                x = to_device(residues, device)
                recon: list[Tensor] | None = [] if self.with_fve else None
                r, c, v = _nonzero(module, x, self.cfg.batch_size, recon)
                if recon is not None:
                    out.fve.append(_fve(x, torch.cat(recon), offsets).cpu().numpy())
                out.n_residues += residues.shape[0]
                residue_active += torch.bincount(c, minlength=n_latents)
                if mass is not None:
                    mass.add(protein_indices, np.diff(offsets), r, c, v)
                # One key per (protein, feature); unique() sorts them: the result is row-major.
                keys, inverse = torch.unique(
                    _owners(offsets, device)[r] * n_latents + c, return_inverse=True
                )
                maxima = torch.zeros(len(keys), device=device).scatter_reduce_(
                    0, inverse, v, "amax"
                )
                shape = (len(protein_indices), n_latents)
                out.rows.append(_csr(keys // n_latents, keys % n_latents, maxima, shape))
                out.proteins.append(np.asarray(protein_indices, dtype=np.int64))
        out.residue_active = residue_active.cpu().numpy()
        out.aa = None if mass is None else mass.arrays()
        return out


def protein_activations(
    module: Dictionary,
    spec: Spec,
    store: EmbeddingStore,
    cfg: AnalyzeConfig,
    fve_out: FloatArray | None = None,
    engine: Engine | None = None,
    aa_out: AaMass | None = None,
    residue_source: ResidueSource | None = None,
) -> tuple[sp.csr_matrix, npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per-protein activations [n_proteins, n_latents] and residue-level firing counts.

    Protein level: the encoded pooled vector. Residue level: the max over the protein's residues
    (a scatter-max over the non-zero latents, on the module's device), one unit per embedding
    shard on ``engine`` (default: in this process, in order).
    Also returns, per feature, the number of residues it fires on and the total residue count
    (residue-level density), zeros for protein-level dictionaries.
    ``fve_out [n_proteins]`` (residue-level SAEs): filled with each protein's FVE from the same
    pass, so the shards are read and encoded once, not twice. ``aa_out`` (residue level): each
    batch's activation mass per residue type is added there, from the same pass.
    ``residue_source``: the residues of proteins outside the store's residue sample
    (``trainer.residue_replay``), in the same batches as stored ones.
    """
    n_latents = module.n_latents
    if spec.level == "protein":
        pooled = store.pooled(spec.layer)
        acts = _encode(module, pooled, cfg.batch_size)
        return acts, np.zeros(n_latents, dtype=np.int64), np.zeros(1)
    if engine is None:
        from trainer.engines.local import LocalEngine

        engine = LocalEngine()
    job = _ShardPass(module, spec, store, cfg, fve_out is not None,
                     aa_out.sequences if aa_out is not None else None, residue_source)  # fmt: skip
    parts: dict[int, _ShardActivations] = {}
    units = list(range(store.n_shards))
    for k, part in tqdm(engine.map_units(_ShardPass.run, job, units, gpu=True),
                        total=len(units), desc=f"encode {spec.name}", unit="shard"):  # fmt: skip
        if isinstance(part, BaseException):
            raise RuntimeError(f"analyze {spec.name}: shard {k} failed: {part}") from part
        parts[k] = part
    ordered = [parts[k] for k in units]  # units finish in any order; shards are summed in order
    residue_active = np.zeros(n_latents, dtype=np.int64)
    for part in ordered:
        residue_active += part.residue_active
        if aa_out is not None and part.aa is not None:
            aa_out.merge(*part.aa)
    order = [proteins for part in ordered for proteins in part.proteins]
    if fve_out is not None:
        for proteins, fve in zip(order, (f for part in ordered for f in part.fve), strict=True):
            fve_out[proteins] = fve
    stacked = sp.vstack([row for part in ordered for row in part.rows], format="csr")
    stacked = stacked.astype(np.float32)
    # Row r of ``stacked`` is protein order[r]: put every protein back on its corpus row.
    position = np.empty(store.n_proteins, dtype=np.int64)
    position[np.concatenate(order)] = np.arange(stacked.shape[0])
    acts = stacked[position]
    n_residues = sum(part.n_residues for part in ordered)
    return acts, residue_active, np.array([float(n_residues)])


def _fve(x: Tensor, recon: Tensor, offsets: np.ndarray) -> Tensor:
    """``app.sae.sequence_fve`` of every protein of a batch at once (float64).

    ``x``/``recon`` [n_res, d] hold the proteins' residues back to back (``offsets``); a
    one-residue protein is centred over its dimensions, a longer one over its residues.
    """
    x64, r64 = x.double(), recon.double()
    owner = _owners(offsets, x.device)
    n_proteins = len(offsets) - 1
    lengths = torch.from_numpy(np.diff(offsets)).to(x.device).double()
    sums = torch.zeros(n_proteins, x.shape[1], dtype=torch.float64, device=x.device)
    centre = (sums.index_add_(0, owner, x64) / lengths[:, None])[owner]
    single = (lengths == 1)[owner]
    centre = torch.where(single[:, None], x64.mean(dim=1, keepdim=True), centre)
    per_protein = torch.zeros(n_proteins, dtype=torch.float64, device=x.device)
    sst = per_protein.index_add(0, owner, (x64 - centre).pow(2).sum(dim=1))
    sse = per_protein.index_add(0, owner, (x64 - r64).pow(2).sum(dim=1))
    return torch.where(sst > 0, 1.0 - sse / sst, torch.nan)


def has_fve(module: Dictionary) -> bool:
    """SAEs reconstruct their own input; transcoders (another target) and neurons do not."""
    return isinstance(module, SparseDictionary) and not module.is_transcoder


def per_protein_fve(
    module: Dictionary, spec: Spec, store: EmbeddingStore, cfg: AnalyzeConfig
) -> FloatArray | None:
    """Each protein's reconstruction FVE (``app.sae.sequence_fve``), for SAEs only.

    The server compares a pasted sequence's FVE with this distribution to warn when the input
    is out of distribution. Transcoders (another target) and raw neurons have none.
    """
    if not has_fve(module):
        return None
    device = device_of(module)
    out = np.full(store.n_proteins, np.nan, dtype=np.float32)
    with torch.inference_mode():
        if spec.level == "protein":
            pooled = store.pooled(spec.layer)
            for start in range(0, pooled.shape[0], cfg.batch_size):
                x = to_device(pooled[start : start + cfg.batch_size], device)
                recon, _ = module(x)
                each = np.arange(x.shape[0] + 1)  # every pooled vector is its own "sequence"
                out[start : start + x.shape[0]] = _fve(x, recon, each).cpu().numpy()
            return out
    protein_activations(module, spec, store, cfg, fve_out=out)  # residue level: one pass
    return out
