"""Find and load what one dictionary needs to encode: its ESM2 checkpoint and its weights.

The checkpoint is looked up from the run (config paths, then ``{shared,data}_dir/models``) and
accepted only when its sha256 equals the run's ``checkpoint_sha256``, so a user never sees
features computed by another model than the one the dictionary was trained on.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from app.encoding.validation import MODEL_WINDOW
from app.settings import Settings
from app.store.schema import Run, Sae


class EncodingUnavailable(RuntimeError):
    """The server cannot encode for this dictionary (missing checkpoint or weights): a 503."""


class Dictionary(Protocol):
    """What ``app.sae`` dictionaries offer (``encode`` non-negative latents, ``forward`` recon)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ReluNeurons(torch.nn.Module):
    """The raw-neuron baseline (latent i = ReLU(x_i)); used when ``app.sae`` is not installed."""

    kind = "neurons"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = x.relu()
        return z, z


@dataclass
class LoadedEsm:
    """A fair-esm model in eval mode, and what identifies it."""

    model: torch.nn.Module
    alphabet: Any
    name: str
    sha256: str
    device: torch.device
    loaded: Any = None  # app.esm.LoadedModel when that module is present
    lock: threading.Lock = field(default_factory=threading.Lock)

    def embed(self, sequences: Sequence[str], layer: int) -> list[np.ndarray]:
        """Per sequence ``float32 [L, d]`` at ``layer`` (BOS/EOS excluded; windows beyond 1,022)."""
        esm_mod = _optional("app.esm")
        if esm_mod is not None and self.loaded is not None:
            out = esm_mod.embed_sequences(self.loaded, list(sequences), [layer])
            return [np.asarray(d[layer], dtype=np.float32) for d in out]
        return _embed_plain(self, sequences, layer)


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 (fp16 where bf16 is missing) autocast on CUDA; plain fp32 on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _windows(length: int, window: int = MODEL_WINDOW) -> Iterator[tuple[int, int]]:
    for start in range(0, length, window):
        yield start, min(start + window, length)


def _embed_plain(esm: LoadedEsm, sequences: Sequence[str], layer: int) -> list[np.ndarray]:
    """One padded forward over all pieces (non-overlapping windows for long sequences)."""
    pieces = [(i, a, b) for i, s in enumerate(sequences) for a, b in _windows(len(s))]
    convert = esm.alphabet.get_batch_converter()
    _, _, tokens = convert([(str(i), sequences[i][a:b]) for i, a, b in pieces])
    with torch.inference_mode(), autocast(esm.device):
        reps = esm.model(tokens.to(esm.device), repr_layers=[layer])["representations"][layer]
    reps_np = reps.float().cpu().numpy()
    parts: list[list[np.ndarray]] = [[] for _ in sequences]
    for row, (i, a, b) in enumerate(pieces):
        parts[i].append(reps_np[row, 1 : b - a + 1])
    return [np.concatenate(p, axis=0) for p in parts]


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


_SHA_CACHE: dict[tuple[str, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed once per (path, mtime) in this process."""
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _SHA_CACHE:
        with path.open("rb") as handle:
            _SHA_CACHE[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _SHA_CACHE[key]


def checkpoint_candidates(run: Run, settings: Settings) -> list[Path]:
    """Where a run's checkpoint may lie: paths in its config, then the models folders."""
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
    found += [settings.data_dir / "models" / stem]
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
        return _load_checkpoint(path, sha, device)
    raise EncodingUnavailable(
        f"run {run.name!r}: no checkpoint of {run.base_model} with sha256 "
        f"{run.checkpoint_sha256[:12]}… found; tried {'; '.join(tried) or 'nothing'}"
    )


def _load_checkpoint(path: Path, sha: str, device: torch.device) -> LoadedEsm:
    esm_mod = _optional("app.esm")
    if esm_mod is not None:
        loaded = esm_mod.load_esm(path, device=str(device))
        return LoadedEsm(loaded.model, loaded.alphabet, loaded.name, loaded.sha256, device, loaded)
    import esm

    torch.serialization.add_safe_globals([argparse.Namespace])
    model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
    return LoadedEsm(model.eval().to(device), alphabet, path.stem, sha, device)


def load_dictionary_for(sae: Sae, device: torch.device) -> Any:
    """The dictionary module of ``sae``: raw neurons need no weights, the others load from disk."""
    if sae.kind == "neurons" and not sae.weights_path:
        return ReluNeurons().to(device)
    if not sae.weights_path:
        raise EncodingUnavailable(f"SAE {sae.id} ({sae.name}) has no weights_path in the store")
    sae_mod = _optional("app.sae")
    if sae_mod is None:
        raise EncodingUnavailable("the SAE module (app.sae) is not installed on this server")
    directory = Path(sae.weights_path)
    if directory.is_file():
        directory = directory.parent
    if not directory.is_dir():
        raise EncodingUnavailable(f"SAE {sae.id} ({sae.name}): weights not found at {directory}")
    return sae_mod.load_dictionary(directory, device=str(device)).eval()
