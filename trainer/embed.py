"""Stage 2, embed: ESM2 activations of chosen layers for every protein, in float16 shards.

Proteins are sorted by length (longest first, ties in corpus order) and cut into shards of at most
``shard_max_residues`` residues, so each shard batches with little padding and memory stays bounded
by two shards (a writer thread pools and writes one while the next runs on the model). Each shard
(``shard_00000.safetensors``) holds, per layer ``L``, ``layer{L}.pooled`` [n_prot, d] (mean of the
residue vectors as stored, float16) and, for the ``residue_layers`` only, ``layer{L}.residue``
[n_res, d]; plus ``offsets`` [n_prot+1] and ``protein_index`` [n_prot] (corpus row of each
protein). Per-residue rows are what costs disk (12 GB per layer on the full corpus), and
protein-level dictionaries read pooled vectors alone, so a layer used only at the protein level is
stored pooled-only; one forward pass still serves every layer. :func:`model_residue_source`
recomputes such a layer's residues for the proteins that need them (analyze's example tracks), as
the embed stage would have stored them. With ``residue_proteins`` the residue layers store a
seeded sample of the proteins alone (their row ranges in ``residue_offsets`` [n_prot+1], zero
length for the others; the sorted sample in ``residue_proteins.npy``), so their disk is bounded by
the sample, not the corpus; ``trainer.residue_replay`` recomputes the others' residues exactly.
``manifest.json`` records the model (name, sha256), layers, residue layers, the shard plan and
which shards are finished; it is rewritten atomically after each shard and marked ``done`` last.
A rerun keeps finished shards, redoes unfinished ones (a directory storing residues of more
layers than asked is reused as it is), embeds again when the residue sample changed and refuses
a manifest made by another model, layer set, residue layer set or corpus. Whether to run, and why
(a new directory, a changed residue sample, shards left), is decided and logged through the stage
driver (``trainer.stage_driver.needs_run``) with the manifest as the marker: a whole-stage DONE
stamp would make every directory embedded before it embed again, so there is none.
:class:`EmbeddingStore` reads the result (see docs/pipeline.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tqdm import tqdm

from app.atomic_write import atomic_file, atomic_path, write_atomic
from app.esm import Attention, LoadedModel, embed_concatenated, load_esm
from app.esm_window import MAX_RESIDUES
from app.stage_summaries import EmbedManifest
from trainer.layout import EmbeddingFiles, RunLayout
from trainer.stage_driver import needs_run

if TYPE_CHECKING:
    from trainer.engines import Engine

FORMAT_VERSION = 1
_IDENTITY_KEYS = ("format", "model", "layers", "residue_layers", "d_model", "dtype", "corpus_sha256",
                  "plan")  # fmt: skip
# (layer, corpus rows) -> float32 [sum of their lengths, d]: the rows' residues back to back.
ResidueSource = Callable[[int, Sequence[int]], np.ndarray]


class EmbedConfig(BaseModel):
    """Every parameter of the embed stage (recorded in the run's config file)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(description="Local fair-esm ESM2 checkpoint path, or a fair-esm model name.")
    layers: list[int] | None = Field(
        default=None, description="Layers to keep; None = 0..n_layers."
    )
    residue_layers: list[int] | None = Field(
        default=None,
        description="Layers whose per-residue vectors are stored (pooled vectors are stored for "
        "every layer); None = all of them.",
    )
    max_tokens_per_batch: int = Field(default=8192, ge=16)
    shard_max_residues: int = Field(default=200_000, ge=1)
    dtype: Literal["float16", "float32"] = "float16"
    device: str = "auto"
    attention: Attention = Field(
        default="fused",
        description="Self-attention kernel: 'fused' (torch's scaled_dot_product_attention on "
        "the model's weights, ~3x faster on the CPU) or 'fair-esm' (its own modules, bit for "
        "bit); the two agree up to float rounding.",
    )
    window_stride: int = Field(
        default=511, ge=1, description=f"Stride of windows over >{MAX_RESIDUES} aa."
    )
    residue_proteins: int | None = Field(
        default=None,
        ge=1,
        description="Store per-residue vectors for this many proteins only, a sample seeded by "
        "[run] seed (pooled vectors are stored for every protein); training draws its residues "
        "from them and analyze recomputes the other proteins' residues with the model. None "
        "(or at least the corpus size) = every protein.",
    )


class EmbeddingMismatchError(RuntimeError):
    """An existing embeddings directory was made with another model, layers or corpus."""


class ResiduesNotStoredError(KeyError):
    """A layer was embedded pooled-only: its per-residue vectors are not in the shards."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def corpus_sha256(sequences: Sequence[str]) -> str:
    """Fingerprint of the corpus in order (a resumed run must embed the same proteins)."""
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(seq.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


def choose_residue_proteins(n_proteins: int, count: int | None, seed: int) -> np.ndarray | None:
    """Sorted corpus rows whose residues are stored: ``count`` drawn with ``seed`` (a function of
    the corpus size and the seed alone, not of the shard plan); None = every protein."""
    if count is None or count >= n_proteins:
        return None
    rows = np.random.default_rng(seed).choice(n_proteins, size=count, replace=False)
    return np.sort(rows).astype(np.int64)


def residue_offsets(offsets: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Row ranges of a shard's stored residues: ``offsets`` with unstored proteins' lengths 0."""
    out = np.zeros_like(offsets)
    np.cumsum(np.diff(offsets) * stored, out=out[1:])
    return out


def plan_shards(lengths: np.ndarray, shard_max_residues: int) -> list[np.ndarray]:
    """Corpus indices per shard: longest first, each shard at most ``shard_max_residues`` aa."""
    order = np.argsort(-lengths, kind="stable")
    shards: list[np.ndarray] = []
    start, filled = 0, 0
    for pos, idx in enumerate(order):
        if pos > start and filled + lengths[idx] > shard_max_residues:
            shards.append(order[start:pos])
            start, filled = pos, 0
        filled += int(lengths[idx])
    if len(order) > start:
        shards.append(order[start:])
    return shards


def _write_manifest(path: Path, data: dict[str, Any]) -> None:
    EmbedManifest.model_validate(data)  # the document the pipeline and the summary read back
    write_atomic(path, json.dumps(data, indent=1))


def _check_same(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    old = {"residue_layers": old.get("layers"), **old}  # manifests from before residue_layers
    diffs = [key for key in _IDENTITY_KEYS if old.get(key) != new.get(key)]
    if diffs:
        detail = "; ".join(
            f"{k}: existing {old.get(k)!r} vs requested {new.get(k)!r}" for k in diffs
        )
        raise EmbeddingMismatchError(
            f"{path} was made for other inputs ({detail[:600]}); delete the directory or choose "
            "another one to embed again"
        )


def pooled_sums(
    residue: np.ndarray, offsets: np.ndarray, chunk_residues: int = 1 << 18
) -> np.ndarray:
    """float32 [n, d]: the sum of each protein's rows ``offsets[i]:offsets[i+1]`` of ``residue``.

    Equals ``np.add.reduceat(residue, offsets[:-1], axis=0, dtype=np.float32)`` up to float32
    summation order, but runs in torch's threads (numpy's reduceat with a float16 → float32 cast
    took 3 s per layer of a 1M-residue shard, the embed stage's bottleneck on a GPU), over
    chunks of whole proteins so the float32 copy stays small whatever the shard and model size.
    """
    lengths = np.diff(offsets)
    out = np.empty((len(lengths), residue.shape[1]), dtype=np.float32)
    first = 0
    while first < len(lengths):
        # Proteins first..last-1: at least one, then as many as fit in chunk_residues.
        last = int(np.searchsorted(offsets, offsets[first] + chunk_residues, side="right")) - 1
        last = min(max(last, first + 1), len(lengths))
        block = torch.from_numpy(residue[offsets[first] : offsets[last]]).float()
        out[first:last] = torch.segment_reduce(
            block, "sum", lengths=torch.from_numpy(lengths[first:last]), axis=0
        ).numpy()
        first = last
    return out


def _write_shard(
    offsets: np.ndarray,
    stacked: dict[int, np.ndarray],
    indices: np.ndarray,
    residue_layers: list[int],
    cfg: EmbedConfig,
    model_sha256: str,
    path: Path,
    stored: np.ndarray | None = None,
) -> None:
    """Pool and write one shard atomically (host work that overlaps the next shard's forward).

    ``stored`` (bool per protein of the shard): residues of those proteins alone, their row
    ranges in ``residue_offsets``; None = every protein's, at ``offsets``.
    """
    layers = sorted(stacked)
    lengths = np.diff(offsets)[:, None]
    tensors: dict[str, np.ndarray] = {"offsets": offsets, "protein_index": indices.astype(np.int64)}
    rows = None if stored is None else np.repeat(stored, lengths[:, 0])
    if stored is not None:
        tensors["residue_offsets"] = residue_offsets(offsets, stored)
    for layer in layers:
        residue = stacked.pop(layer)
        if layer in residue_layers:
            tensors[f"layer{layer}.residue"] = residue if rows is None else residue[rows]
        means = pooled_sums(residue, offsets) / lengths
        tensors[f"layer{layer}.pooled"] = means.astype(cfg.dtype)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"model_sha256": model_sha256})
        os.chmod(tmp, 0o644)  # safetensors creates 0600 files; the server may run as another user


def _complete_shard(
    path: Path,
    indices: np.ndarray,
    layers: list[int],
    residue_layers: list[int],
    sha256: str,
    stored: np.ndarray | None = None,
) -> bool:
    """Whether ``path`` is this shard as the current plan would write it: same model, proteins,
    tensors and stored residues (header and index tensors only; an unreadable file is simply
    recomputed)."""
    if not path.exists():
        return False
    expected = {"offsets", "protein_index"} | {f"layer{n}.pooled" for n in layers}
    expected |= {f"layer{n}.residue" for n in residue_layers}
    if stored is not None:
        expected.add("residue_offsets")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("model_sha256") != sha256 or set(handle.keys()) != expected:
                return False
            if not np.array_equal(handle.get_tensor("protein_index"), indices):
                return False
            if stored is None:
                return True
            offsets = handle.get_tensor("offsets")
            return bool(np.array_equal(handle.get_tensor("residue_offsets"),
                                       residue_offsets(offsets, stored)))  # fmt: skip
    except (OSError, SafetensorError):  # a truncated or foreign file: recompute it
        return False


@dataclasses.dataclass
class ShardJob:
    """Everything embedding any shard of a plan needs, for whichever engine runs it (picklable:
    the Ray engine ships it to each actor once). Shard ``k`` holds corpus rows ``shards[k]``,
    longest first, and is written to ``out_dir / files[k]``."""

    loaded: LoadedModel
    sequences: list[str]
    shards: list[np.ndarray]
    files: list[str]
    out_dir: Path
    layers: list[int]
    residue_layers: list[int]
    cfg: EmbedConfig
    # Bool per corpus row: whose residues are stored (None: every protein's).
    residue_stored: np.ndarray | None = None

    def stored(self, k: int) -> np.ndarray | None:
        """Bool per protein of shard ``k``: whose residues it stores (None: all)."""
        return None if self.residue_stored is None else self.residue_stored[self.shards[k]]

    def n_residues(self, k: int) -> int:
        return sum(len(self.sequences[int(i)]) for i in self.shards[k])

    def path(self, k: int) -> Path:
        return self.out_dir / self.files[k]

    def forward(
        self, k: int, loaded: LoadedModel, on_batch: Callable[[int], None] | None = None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """Shard ``k``'s forward passes with ``loaded`` (token-budgeted batches of its
        length-sorted proteins): ``(offsets, {layer: residues})`` in shard order."""
        return embed_concatenated(
            loaded,
            [self.sequences[int(i)] for i in self.shards[k]],
            self.layers,
            max_tokens_per_batch=self.cfg.max_tokens_per_batch,
            dtype=np.dtype(self.cfg.dtype),
            stride=self.cfg.window_stride,
            on_batch=on_batch,
        )

    def write(self, k: int, offsets: np.ndarray, stacked: dict[int, np.ndarray]) -> None:
        """Pool and write shard ``k`` atomically (the file lands by rename)."""
        _write_shard(offsets, stacked, self.shards[k], self.residue_layers, self.cfg,
                     self.loaded.sha256, self.path(k), stored=self.stored(k))  # fmt: skip

    def complete(self, k: int) -> bool:
        """Whether shard ``k``'s file is already on disk as this plan writes it."""
        return _complete_shard(self.path(k), self.shards[k], self.layers, self.residue_layers,
                               self.loaded.sha256, self.stored(k))  # fmt: skip


def run_embed(
    workdir: Path,
    sequences: list[str],
    cfg: EmbedConfig,
    *,
    model_override: LoadedModel | None = None,
    subdir: str = "embeddings",
    engine: Engine | None = None,
    residue_seed: int = 0,
) -> dict[str, Any]:
    """Embed ``sequences`` (corpus order) into ``workdir/subdir``; resumable; returns the manifest.

    ``engine`` runs the shards (default: the local engine, in this process); this function alone
    writes the manifest, marking each shard done once the engine reports its file in place.
    ``residue_seed`` draws the proteins whose residues are stored when ``cfg.residue_proteins``
    asks for a sample (the pipeline passes ``[run] seed``); another sample embeds again.
    """
    loaded = dataclasses.replace(
        model_override or load_esm(cfg.model, cfg.device), attention=cfg.attention
    )
    layers = sorted(set(cfg.layers)) if cfg.layers else list(range(loaded.num_layers + 1))
    bad = [layer for layer in layers if not 0 <= layer <= loaded.num_layers]
    if bad:
        raise ValueError(f"layers {bad} outside 0..{loaded.num_layers} of {loaded.name}")
    residue_layers = layers if cfg.residue_layers is None else sorted(set(cfg.residue_layers))
    if not set(residue_layers) <= set(layers):
        extra = sorted(set(residue_layers) - set(layers))
        raise ValueError(f"residue_layers {extra} are not among the embedded layers {layers}")
    if not sequences:
        raise ValueError("no sequences to embed")
    files = RunLayout(workdir).embeddings(subdir)
    out_dir = files.dir
    out_dir.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(s) for s in sequences], dtype=np.int64)
    shards = plan_shards(lengths, cfg.shard_max_residues)
    chosen = choose_residue_proteins(len(sequences), cfg.residue_proteins, residue_seed)
    stored = None
    if chosen is not None:
        stored = np.zeros(len(sequences), dtype=bool)
        stored[chosen] = True
    manifest: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": {"name": loaded.name, "sha256": loaded.sha256},
        "layers": layers,
        "residue_layers": residue_layers,
        "d_model": loaded.embed_dim,
        "num_layers": loaded.num_layers,
        "dtype": cfg.dtype,
        "n_proteins": len(sequences),
        "n_residues": int(lengths.sum()),
        "corpus_sha256": corpus_sha256(sequences),
        "plan": {
            "shard_max_residues": cfg.shard_max_residues,
            "window": loaded.max_tokens,
            "window_stride": cfg.window_stride,
        },
        "config": cfg.model_dump(),
        "residue_sample": _sample_record(cfg, residue_seed, chosen, lengths, files),
        "shards": [],
        "done": False,
    }
    position = 0
    for k, idx in enumerate(shards):
        manifest["shards"].append(
            {
                "file": files.shard(k),
                "sorted_range": [position, position + len(idx)],
                "n_proteins": len(idx),
                "n_residues": int(lengths[idx].sum()),
                "done": False,
            }
        )
        position += len(idx)
    manifest_path = files.manifest
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    reason: str | None = "not done yet" if old is None else None
    if old is not None and old.get("residue_sample") != manifest["residue_sample"]:
        _check_same({**old, "residue_layers": residue_layers}, manifest, manifest_path)
        reason = (f"the stored residue sample changed ({_sample_text(old.get('residue_sample'))}"
                  f" -> {_sample_text(manifest['residue_sample'])})")  # fmt: skip
        old = None
    if old is not None:
        kept = old.get("residue_layers", old.get("layers"))
        if isinstance(kept, list) and set(residue_layers) <= set(kept):
            residue_layers = manifest["residue_layers"] = kept  # more residues than asked: reuse
        _check_same(old, manifest, manifest_path)
        for new_shard, old_shard, idx in zip(
            manifest["shards"], old["shards"], shards, strict=True
        ):
            path = out_dir / old_shard["file"]
            recorded = bool(old_shard["done"]) and path.exists()
            # A shard whose write finished after the last record (the run died during the next
            # shard's forward) is complete on disk, since files land by rename: keep it.
            new_shard["done"] = recorded or _complete_shard(
                path, idx, layers, residue_layers, loaded.sha256,
                None if stored is None else stored[idx],
            )  # fmt: skip
        reason = _unfinished(old, manifest)
    if not needs_run(ManifestUnit(f"embed: {out_dir}", reason)) and old is not None:
        return old  # already finished: leave the directory untouched
    for stale in files.interrupted_shards():
        stale.unlink()  # a shard interrupted while being written
    _write_sample_file(files.residue_proteins, chosen)
    _write_manifest(manifest_path, manifest)

    finished = sum(s["n_residues"] for s in manifest["shards"] if s["done"])
    job = ShardJob(loaded, sequences, shards, [s["file"] for s in manifest["shards"]], out_dir,
                   layers, residue_layers, cfg, stored)  # fmt: skip
    todo = [k for k, shard in enumerate(manifest["shards"]) if not shard["done"]]
    if engine is None:
        from trainer.engines.local import LocalEngine

        engine = LocalEngine()
    with tqdm(
        total=manifest["n_residues"], initial=finished, unit="aa", desc="embed", disable=None
    ) as bar:
        for record in engine.embed_shards(job, todo, bar.update):
            shard = manifest["shards"][record.shard]
            for key in ("forward_s", "write_s", "wait_s"):
                value = getattr(record, key)
                if value is not None:
                    shard[key] = round(value, 3)
            shard["done"] = True
            _write_manifest(manifest_path, manifest)
    missing = [s["file"] for s in manifest["shards"] if not s["done"]]
    if missing:
        raise RuntimeError(f"{out_dir}: the {engine.name} engine did not write {missing[:5]}")
    manifest["done"] = True
    _write_manifest(manifest_path, manifest)
    return manifest


@dataclasses.dataclass(frozen=True)
class ManifestUnit:
    """The embed stage as the stage driver sees it (``trainer.stage_driver.Redoable``): its
    marker is the manifest (``done`` overall and per shard, not a DONE file, so directories
    embedded before the driver stay finished), and ``reason`` is what comparing it found."""

    label: str
    reason: str | None

    def redo_reason(self) -> str | None:
        return self.reason


def _unfinished(old: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    """Why a directory of the same identity is not finished (None: it is)."""
    shards = manifest["shards"]
    left = sum(1 for shard in shards if not shard["done"])
    if left:
        return f"{left} of {len(shards)} shards not embedded yet (the finished ones are kept)"
    if not old.get("done"):
        return "every shard is written but the manifest was not marked done"
    return None


def _sample_record(
    cfg: EmbedConfig,
    seed: int,
    chosen: np.ndarray | None,
    lengths: np.ndarray,
    files: EmbeddingFiles,
) -> dict[str, Any] | None:
    """The manifest's ``residue_sample``: what was asked, what it chose (None: every protein).
    Part of the directory's identity: another sample embeds again."""
    if chosen is None:
        return None
    return {
        "proteins": cfg.residue_proteins,
        "seed": seed,
        "n_residues": int(lengths[chosen].sum()),
        "file": files.residue_proteins.name,
        "sha256": hashlib.sha256(chosen.astype("<i8").tobytes()).hexdigest(),
    }


def _sample_text(record: dict[str, Any] | None) -> str:
    if record is None:
        return "every protein"
    return f"{record['proteins']} proteins, seed {record['seed']}"


def _write_sample_file(path: Path, chosen: np.ndarray | None) -> None:
    """``residue_proteins.npy``: the sorted corpus rows whose residues the shards store (absent
    when every protein's are)."""
    if chosen is None:
        path.unlink(missing_ok=True)
        return
    with atomic_file(path) as handle:
        np.save(handle, chosen.astype(np.int64))


def embed_shards_locally(
    job: ShardJob, todo: Sequence[int], progress: Callable[[int], None]
) -> Iterator[tuple[int, float, float, float]]:
    """The local engine's loop: ``(shard, forward_s, write_s, wait_s)`` per shard written.

    One writer thread: shard k is pooled and written while shard k+1 runs on the model, so the
    device does not wait on the disk. At most two shards are in memory; a shard is reported
    only once its file is in place. The manifest keeps, per shard, the seconds of its forward
    passes, of its pooling and writing, and how long the forward loop waited for the writer
    (where a run's time goes, e.g. on a GPU machine whose logs are all one sees).
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer") as writer:
        pending: tuple[int, float, Future[float]] | None = None
        for k in todo:
            started = time.perf_counter()
            offsets, stacked = job.forward(k, job.loaded, progress)
            forward_s = time.perf_counter() - started
            if pending is not None:
                yield _finish_shard(pending)
            pending = (k, forward_s, writer.submit(_timed, job.write, k, offsets, stacked))
            del offsets, stacked
        if pending is not None:
            yield _finish_shard(pending)


def _timed(fn: Callable[..., None], *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _finish_shard(pending: tuple[int, float, Future[float]]) -> tuple[int, float, float, float]:
    """Wait for a shard's write: ``(shard, forward_s, write_s, wait_s)``."""
    k, forward_s, future = pending
    started = time.perf_counter()
    write_s = future.result()  # re-raises a failed write here, before anything is marked done
    return k, forward_s, write_s, time.perf_counter() - started


class EmbeddingStore:
    """Read access to a finished embed stage; every index is a corpus row (protein ``i``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        path = EmbeddingFiles(self.directory).manifest
        if not path.exists():
            raise FileNotFoundError(f"{path}: no embeddings here (run the embed stage)")
        self.manifest: dict[str, Any] = json.loads(path.read_text())
        if not self.manifest.get("done"):
            raise RuntimeError(f"{path}: the embed stage has not finished (rerun it to resume)")
        self.layers: list[int] = list(self.manifest["layers"])
        self.residue_layers: list[int] = list(self.manifest.get("residue_layers", self.layers))
        self.d_model: int = int(self.manifest["d_model"])
        self.n_proteins: int = int(self.manifest["n_proteins"])
        self.dtype = np.dtype(self.manifest["dtype"])
        self.lengths = np.zeros(self.n_proteins, dtype=np.int64)
        self._shard_of = np.full(self.n_proteins, -1, dtype=np.int64)
        self._row_of = np.zeros(self.n_proteins, dtype=np.int64)
        self._index: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        # Row ranges in the residue tensors (``offsets`` unless the shards store a sample).
        self._residue_offsets: list[np.ndarray] = []
        self._files = [self.directory / s["file"] for s in self.manifest["shards"]]
        self._maps: dict[tuple[int, str], np.ndarray] = {}  # (shard, tensor) -> memory map
        for k, file in enumerate(self._files):
            with safe_open(str(file), framework="numpy") as handle:
                index, offsets = handle.get_tensor("protein_index"), handle.get_tensor("offsets")
                names = handle.keys()
                rows = (
                    handle.get_tensor("residue_offsets") if "residue_offsets" in names else offsets
                )
            self._index.append(index)
            self._offsets.append(offsets)
            self._residue_offsets.append(rows)
            self._shard_of[index] = k
            self._row_of[index] = np.arange(len(index))
            self.lengths[index] = np.diff(offsets)
        if (self._shard_of < 0).any():
            raise RuntimeError(f"{self.directory}: shards do not cover every protein")
        self.residue_stored = np.zeros(self.n_proteins, dtype=bool)
        for index, rows in zip(self._index, self._residue_offsets, strict=True):
            self.residue_stored[index] = np.diff(rows) > 0

    @property
    def residue_sampled(self) -> bool:
        """Whether the residue layers store a sample of the proteins (the rest: recompute)."""
        return self.manifest.get("residue_sample") is not None

    @property
    def n_stored_residues(self) -> int:
        """Residues whose vectors the residue layers store (every residue unless sampled)."""
        return sum(int(rows[-1]) for rows in self._residue_offsets)

    def _name(self, layer: int, kind: str) -> str:
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not embedded (have {self.layers})")
        if kind == "residue" and layer not in self.residue_layers:
            raise ResiduesNotStoredError(
                f"layer {layer} was embedded pooled-only in {self.directory}: its per-residue "
                f"vectors are not stored (residue layers: {self.residue_layers}); compute them "
                "with the model (trainer.embed.model_residue_source) or embed again with "
                "residue_layers including it"
            )
        return f"layer{layer}.{kind}"

    def has_residues(self, layer: int) -> bool:
        """Whether ``layer``'s per-residue vectors are in the shards (not only pooled ones)."""
        return layer in self.residue_layers

    def pooled(self, layer: int) -> np.ndarray:
        """float32 [n_proteins, d]: mean over each protein's residues (BOS/EOS excluded)."""
        name = self._name(layer, "pooled")
        out = np.empty((self.n_proteins, self.d_model), dtype=np.float32)
        for file, index in zip(self._files, self._index, strict=True):
            with safe_open(str(file), framework="numpy") as handle:
                out[index] = handle.get_tensor(name)
        return out

    def shard_proteins(self, k: int) -> np.ndarray:
        """Corpus rows of shard ``k``'s proteins in shard order (longest first)."""
        return self._index[k]

    def location(self, i: int) -> tuple[int, int]:
        """(shard, row) of protein ``i``: sorting by it reads the shards in file order."""
        return int(self._shard_of[i]), int(self._row_of[i])

    def residues(self, layer: int, i: int) -> np.ndarray:
        """float32 [len_i, d]: per-residue activations of protein ``i``."""
        name = self._name(layer, "residue")
        if not self.residue_stored[i]:
            raise ResiduesNotStoredError(
                f"protein {i} is outside the residue sample of {self.directory} "
                f"({self.manifest['residue_sample']}): recompute its residues with the model "
                "(trainer.residue_replay.ReplayedResidues)"
            )
        k, row = int(self._shard_of[i]), int(self._row_of[i])
        lo, hi = int(self._residue_offsets[k][row]), int(self._residue_offsets[k][row + 1])
        # One memory map per shard and tensor, kept: example tracks read thousands of proteins
        # one by one, and reopening the file each time doubled the cost (0.5 vs 0.23 ms each).
        rows = self._maps.get((k, name))
        if rows is None:
            rows = self._maps[(k, name)] = tensor_map(self._files[k], name)
        return np.array(rows[lo:hi], dtype=np.float32)  # a copy, also for float32 shards

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its memory maps (another process maps the files itself)."""
        return {**self.__dict__, "_maps": {}}

    @property
    def n_shards(self) -> int:
        return len(self._files)

    def iter_residue_batches(
        self, layer: int, max_residues: int, source: ResidueSource | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(protein_indices, offsets, float32 [n_res, d])`` in shard order, ≤ max_residues each.

        A protein longer than ``max_residues`` comes alone in its batch. Proteins outside a
        residue sample get their residues from ``source`` (the batches stay the same).
        """
        for k in range(self.n_shards):
            yield from self.iter_shard_residue_batches(layer, k, max_residues, source)

    def iter_shard_residue_batches(
        self, layer: int, k: int, max_residues: int, source: ResidueSource | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`iter_residue_batches` of shard ``k`` alone (batches never span shards)."""
        name = self._name(layer, "residue")
        index, offsets = self._index[k], self._offsets[k]
        with safe_open(str(self._files[k]), framework="numpy") as handle:
            data = handle.get_slice(name)
            start = 0
            while start < len(index):
                stop = start + 1
                while stop < len(index) and offsets[stop + 1] - offsets[start] <= max_residues:
                    stop += 1
                lo, hi = int(offsets[start]), int(offsets[stop])
                if self.residue_sampled:
                    x = self._sampled_rows(layer, k, start, stop, data, source)
                else:
                    x = data[lo:hi].astype(np.float32)
                yield index[start:stop], offsets[start : stop + 1] - lo, x
                start = stop

    def _sampled_rows(
        self, layer: int, k: int, start: int, stop: int, data: Any, source: ResidueSource | None
    ) -> np.ndarray:
        """float32 residues of shard ``k``'s proteins ``start:stop``: the stored ones read from
        the shard, the others from ``source``."""
        index, offsets, rows = self._index[k], self._offsets[k], self._residue_offsets[k]
        stored = np.diff(rows[start : stop + 1]) > 0
        out = np.empty((int(offsets[stop] - offsets[start]), self.d_model), dtype=np.float32)
        mask = np.repeat(stored, np.diff(offsets[start : stop + 1]))
        if stored.any():
            out[mask] = data[int(rows[start]) : int(rows[stop])].astype(np.float32)
        if not stored.all():
            missing = index[start:stop][~stored]
            if source is None:
                raise ResiduesNotStoredError(
                    f"{self.directory} stores the residues of a sample of the proteins "
                    f"({self.manifest['residue_sample']}); the others' need a residue source "
                    "(trainer.residue_replay.ReplayedResidues)"
                )
            out[~mask] = source(layer, missing.tolist())
        return out

    def residues_of(
        self, layer: int, proteins: Sequence[int], source: ResidueSource | None = None
    ) -> np.ndarray:
        """float32 residues of ``proteins`` back to back: stored ones from the shards, the
        others (outside a residue sample) from ``source``, in one call."""
        missing = [int(p) for p in proteins if not self.residue_stored[int(p)]]
        if not missing or source is None:
            return np.concatenate([self.residues(layer, int(p)) for p in proteins])
        computed = source(layer, missing)
        cuts = np.cumsum(self.lengths[missing])[:-1]
        fresh = dict(zip(missing, np.split(computed, cuts), strict=True))
        return np.concatenate(
            [fresh[int(p)] if int(p) in fresh else self.residues(layer, int(p)) for p in proteins]
        )

    def sample_residues(
        self, layer: int, n: int, seed: int, dtype: npt.DTypeLike = np.float32
    ) -> np.ndarray:
        """``[n, d]`` residues drawn uniformly without replacement, in random order.

        Only the drawn rows are read (a memory map per shard, rows in file order), so sampling
        from the full corpus needs memory for the sample alone. Draws from the stored residues:
        with ``embed.residue_proteins``, the sampled proteins' alone. ``dtype`` float16 keeps
        the stored values exactly at half the memory.
        """
        name = self._name(layer, "residue")
        sizes = np.array([int(o[-1]) for o in self._residue_offsets], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if n > starts[-1]:
            raise ValueError(f"asked for {n} residues, only {starts[-1]} stored")
        picks = np.random.default_rng(seed).choice(int(starts[-1]), size=n, replace=False)
        shard = np.searchsorted(starts, picks, side="right") - 1
        out = np.empty((n, self.d_model), dtype=dtype)
        for k, file in enumerate(self._files):
            where = np.flatnonzero(shard == k)
            if len(where):
                where = where[np.argsort(picks[where], kind="stable")]  # sequential reads
                out[where] = tensor_map(file, name)[picks[where] - starts[k]]
        return out


def model_residue_source(
    store: EmbeddingStore,
    loaded: LoadedModel,
    sequences: Sequence[str],
    *,
    cache_bytes: int = 0,
) -> ResidueSource:
    """Residues of any embedded layer computed with ``loaded``, as the shards would hold them.

    For layers stored pooled-only: the same model (checked by sha256), corpus, windows, batch
    size and dtype as the embed stage, so values equal the shards' up to float16 rounding of
    batch-dependent float noise. The forward stops at the requested layer.

    Several dictionaries on pooled-only layers show many of the same example proteins. With
    ``cache_bytes`` > 0 a protein's forward keeps every pooled-only layer (in the store's
    dtype) up to that budget, so one forward serves all those dictionaries; without, each
    call runs only as deep as it must.
    """
    manifest = store.manifest
    if loaded.sha256 != manifest["model"]["sha256"]:
        raise EmbeddingMismatchError(
            f"{store.directory} was embedded with model sha256 {manifest['model']['sha256']}, "
            f"not {loaded.name} ({loaded.sha256})"
        )
    if corpus_sha256(sequences) != manifest["corpus_sha256"]:
        raise EmbeddingMismatchError(f"{store.directory} was embedded from another corpus")
    max_tokens = int(manifest["config"]["max_tokens_per_batch"])
    stride = int(manifest["plan"]["window_stride"])
    pooled_only = [layer for layer in store.layers if not store.has_residues(layer)]
    cache: dict[tuple[int, int], np.ndarray] = {}  # (layer, protein) -> residues
    used = 0

    def compute(
        layers: list[int], proteins: Sequence[int]
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        return embed_concatenated(
            loaded,
            [sequences[int(p)] for p in proteins],
            layers,
            max_tokens_per_batch=max_tokens,
            dtype=store.dtype,
            stride=stride,
        )

    def residues(layer: int, proteins: Sequence[int]) -> np.ndarray:
        nonlocal used
        if layer not in store.layers:
            raise KeyError(f"layer {layer} was not embedded (have {store.layers})")
        if cache_bytes <= 0:
            return compute([layer], proteins)[1][layer].astype(np.float32)
        missing = list(dict.fromkeys(int(p) for p in proteins if (layer, int(p)) not in cache))
        fresh: dict[int, np.ndarray] = {}
        if missing:
            layers = sorted({layer, *pooled_only})
            offsets, stacked = compute(layers, missing)
            for i, protein in enumerate(missing):
                reps = {lay: stacked[lay][offsets[i] : offsets[i + 1]] for lay in layers}
                fresh[protein] = reps[layer]
                size = sum(a.nbytes for a in reps.values())
                if used + size <= cache_bytes:
                    cache.update({(lay, protein): a.copy() for lay, a in reps.items()})
                    used += size
        parts = [fresh[int(p)] if int(p) in fresh else cache[(layer, int(p))] for p in proteins]
        return np.concatenate(parts).astype(np.float32)

    return residues


_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}


def tensor_map(file: Path, name: str) -> np.ndarray:
    """A read-only memory map of one tensor in a safetensors file: rows are read when indexed.

    safetensors' own slices take ranges only; random rows of a shard would otherwise mean
    loading the whole tensor. Layout: 8-byte little-endian header size, JSON header, raw data.
    """
    with open(file, "rb") as handle:
        header_size = int.from_bytes(handle.read(8), "little")
        info = json.loads(handle.read(header_size))[name]
    begin, _ = info["data_offsets"]
    return np.memmap(file, dtype=_SAFETENSORS_DTYPES[info["dtype"]], mode="r",
                     offset=8 + header_size + begin, shape=tuple(info["shape"]))  # fmt: skip
