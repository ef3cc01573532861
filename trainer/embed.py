"""Stage 2, embed: ESM2 activations of chosen layers for every protein, in float16 shards.

Proteins are sorted by length (longest first, ties in corpus order) and cut into shards of at most
``shard_max_residues`` residues, so each shard batches with little padding and memory stays bounded
by two shards (a writer thread pools and writes one while the next runs on the model). Each shard
(``shard_00000.safetensors``) holds, per layer ``L``, ``layer{L}.pooled`` [n_prot, d] (mean of the
residue vectors as stored, float16) and, for the ``residue_layers`` only, ``layer{L}.residue``
[n_res, d]; plus ``offsets`` [n_prot+1] and ``protein_index`` [n_prot] (corpus row of each
protein). Per-residue rows are what costs disk (12 GB per layer on the full corpus), and
protein-level dictionaries read pooled vectors alone, so a layer used only at the protein level is
stored pooled-only; one forward pass still serves every layer.
:func:`trainer.residue_replay.model_residue_source` recomputes such a layer's residues for the
proteins that need them (analyze's example tracks), as the embed stage would have stored them. With ``residue_proteins`` the residue layers store a
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
:class:`trainer.embedding_store.EmbeddingStore` reads the result (see docs/pipeline.md).

This module plans the shards and keeps the manifest; ``trainer.embed_shards`` runs the model and
writes each shard, and ``trainer.residue_sample`` chooses and records the residue sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from app.atomic_write import write_atomic
from app.esm import Attention, LoadedModel, load_esm
from app.esm_window import MAX_RESIDUES
from app.stage_summaries import EmbedManifest
from trainer.embed_shards import ShardJob, complete_shard
from trainer.layout import RunLayout
from trainer.residue_sample import (
    choose_residue_proteins,
    sample_record,
    sample_text,
    write_sample_file,
)
from trainer.stage_driver import needs_run

if TYPE_CHECKING:
    from trainer.engines import Engine


FORMAT_VERSION = 1
_IDENTITY_KEYS = ("format", "model", "layers", "residue_layers", "d_model", "dtype", "corpus_sha256",
                  "plan")  # fmt: skip


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


def corpus_sha256(sequences: Sequence[str]) -> str:
    """Fingerprint of the corpus in order (a resumed run must embed the same proteins)."""
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(seq.encode("ascii"))
        digest.update(b"\n")
    return digest.hexdigest()


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
        "residue_sample": sample_record(cfg, residue_seed, chosen, lengths, files),
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
        reason = (f"the stored residue sample changed ({sample_text(old.get('residue_sample'))}"
                  f" -> {sample_text(manifest['residue_sample'])})")  # fmt: skip
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
            new_shard["done"] = recorded or complete_shard(
                path, idx, layers, residue_layers, loaded.sha256,
                None if stored is None else stored[idx],
            )  # fmt: skip
        reason = _unfinished(old, manifest)
    if not needs_run(ManifestUnit(f"embed: {out_dir}", reason)) and old is not None:
        return old  # already finished: leave the directory untouched
    for stale in files.interrupted_shards():
        stale.unlink()  # a shard interrupted while being written
    write_sample_file(files.residue_proteins, chosen)
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
