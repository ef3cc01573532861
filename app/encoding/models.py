"""Find and load what one dictionary needs to encode: its ESM2 checkpoint and its weights.

The checkpoint is looked up from the run (config paths, then ``{shared,data}_dir/models``, then
the torch hub cache) and accepted only when its sha256 equals the run's ``checkpoint_sha256``, so
a user never sees features computed by another model than the one the dictionary was trained on.
Loading itself is ``app.esm.load_esm`` (safe unpickling, cached per process) and
``app.sae.load_dictionary``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.encoding.errors import EncodingUnavailable
from app.esm import (
    LoadedModel,
    embed_on_device,
    file_sha256,
    hub_checkpoint_dir,
    load_esm,
    resolve_device,
)
from app.sae import NeuronBasis, load_dictionary
from app.settings import Settings
from app.store.schema import Run, Sae


@dataclass
class LoadedEsm:
    """A warm ESM2 model shared by the requests of one process (forward passes serialised)."""

    loaded: LoadedModel
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def sha256(self) -> str:
        return self.loaded.sha256

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def alphabet(self) -> Any:
        return self.loaded.alphabet

    def embed(self, sequences: Sequence[str], layer: int) -> list[torch.Tensor]:
        """Per sequence ``float32 [L, d]`` at ``layer`` on the model's device (BOS/EOS excluded;
        windows beyond 1,022; the forward stops at ``layer``)."""
        return embed_on_device(self.loaded, list(sequences), layer)


def checkpoint_candidates(run: Run, settings: Settings) -> list[Path]:
    """Where a run's checkpoint may lie: paths in its config, then the models folders, then the
    torch hub cache (where a run that named its model by hub name found it)."""
    found: list[Path] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, str) and key in {"model", "model_path", "checkpoint"}:
                    found.append(Path(value))
                walk(value)

    walk(run.config or {})
    stem = run.base_model if run.base_model.endswith(".pt") else f"{run.base_model}.pt"
    found += [Path(run.base_model), settings.shared_dir / "models" / stem]
    found += [settings.data_dir / "models" / stem, hub_checkpoint_dir() / stem]
    return [p for p in found if p.suffix == ".pt"]


def load_esm_for_run(run: Run, settings: Settings) -> LoadedEsm:
    """The run's ESM2 checkpoint, verified by sha256, on the configured device."""
    device = resolve_device(settings.device)
    tried = []
    for path in checkpoint_candidates(run, settings):
        if not path.is_file():
            tried.append(f"{path} (absent)")
            continue
        sha = file_sha256(path)
        if run.checkpoint_sha256 and sha != run.checkpoint_sha256:
            tried.append(f"{path} (sha256 {sha[:12]}… differs)")
            continue
        return LoadedEsm(load_esm(path, device=str(device)))
    raise EncodingUnavailable(
        f"run {run.name!r}: no checkpoint of {run.base_model} with sha256 "
        f"{run.checkpoint_sha256[:12]}… found; tried {'; '.join(tried) or 'nothing'}"
    )


def load_dictionary_for(sae: Sae, device: torch.device) -> Any:
    """The dictionary module of ``sae``: raw neurons need no weights, the others load from disk."""
    if sae.kind == "neurons" and not sae.weights_path:
        return NeuronBasis(sae.d_in).to(device).eval()
    if not sae.weights_path:
        raise EncodingUnavailable(f"SAE {sae.id} ({sae.name}) has no weights_path in the store")
    directory = Path(sae.weights_path)
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise EncodingUnavailable(f"SAE {sae.id} ({sae.name}): weights not found at {directory}")
    return load_dictionary(directory, device=str(device)).eval()
