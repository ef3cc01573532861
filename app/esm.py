"""Load fair-esm ESM2 checkpoints safely and embed sequences per residue.

The one place that turns sequences into ESM2 activations: the trainer's embed stage and the
server's on-demand encoding both call :func:`embed_sequences`, so they see identical numbers.

Sequences longer than the model's 1,022-residue limit are cut into overlapping windows (stride
half a window by default). Each residue is taken from the window in which it sits farthest from a
window edge ("centre parts"): no averaging, so every residue's vector is one real forward pass,
with at least ~``window - stride`` / 2 residues of context on each side wherever the protein has it.

The forward stops at the deepest layer asked for (:func:`forward_representations`) and tokens
come from a lookup table (:func:`tokenize`, exactly fair-esm's tokens): an SAE on layer 3 of 4 must
not pay for layer 4, the final LayerNorm and the LM head. Self-attention runs fused by default
(torch's ``scaled_dot_product_attention`` on the layer's own weights and rotary embedding): fair-esm
materialises every head's L x L score matrix, masks, softmaxes and transposes it, which was ~65%
of a CPU forward; the fused kernel gives the same numbers up to float rounding at ~3x the
residues/s (``benchmarks/bench_embed.py``). ``attention="fair-esm"`` keeps fair-esm's own modules,
bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import pickle
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import esm
import numpy as np
import torch
import torch.nn.functional as F
from esm.model.esm2 import ESM2
from esm.modules import TransformerLayer, gelu
from esm.multihead_attention import MultiheadAttention

from app.esm_window import MAX_RESIDUES

Attention = Literal["fused", "fair-esm"]
ATTENTION_MODES: tuple[Attention, ...] = ("fused", "fair-esm")
_VALID_TOKENS = frozenset("ACDEFGHIKLMNPQRSTVWYXBUZO")


class ModelLoadError(RuntimeError):
    """An ESM checkpoint could not be loaded (missing file, refused pickle, offline download)."""


@dataclass(frozen=True)
class LoadedModel:
    """An ESM2 model in eval mode with what every caller needs to use and record it."""

    model: ESM2
    alphabet: esm.data.Alphabet
    batch_converter: Callable[[Sequence[tuple[str, str]]], tuple[Any, Any, torch.Tensor]]
    name: str
    sha256: str
    num_layers: int
    embed_dim: int
    device: torch.device
    max_tokens: int = MAX_RESIDUES
    # How self-attention runs in :func:`forward_representations`; ``dataclasses.replace`` gives
    # the other mode on the same (cached) weights.
    attention: Attention = "fused"


_CACHE: dict[tuple[str, ...], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit CUDA request without a GPU fails."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return resolved


_SHA_CACHE: dict[tuple[str, int], str] = {}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks (checkpoints reach tens of GB); computed once per
    (path, mtime) in a process, since the server checks the same checkpoint on every load."""
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _SHA_CACHE:
        with path.open("rb") as handle:
            _SHA_CACHE[key] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _SHA_CACHE[key]


def load_esm(path_or_name: str | Path, device: str = "auto") -> LoadedModel:
    """Load an ESM2 checkpoint named by a path or a fair-esm hub name; cached per process.

    Resolution (:func:`resolve_checkpoint`): an explicit path; else the torch hub cache, where
    fair-esm keeps what it downloads; else a :class:`ModelLoadError` naming the files to place.
    Nothing is downloaded: the machines that train and serve need not reach the internet.
    """
    dev = resolve_device(device)
    path = resolve_checkpoint(path_or_name)
    stat = path.resolve().stat()
    key: tuple[str, ...] = (str(path.resolve()), str(stat.st_mtime_ns), str(dev))
    with _CACHE_LOCK:
        if key not in _CACHE:
            model, alphabet, name, sha = _load_local(path)
            _CACHE[key] = _wrap(model, alphabet, name, sha, dev)
        return _CACHE[key]


# Published ESM2 checkpoints (fair-esm README, ESM2 paper): layers, embedding dim, heads.
ESM2_ARCHITECTURES: dict[str, tuple[int, int, int]] = {
    "esm2_t6_8M_UR50D": (6, 320, 20),
    "esm2_t12_35M_UR50D": (12, 480, 20),
    "esm2_t30_150M_UR50D": (30, 640, 20),
    "esm2_t33_650M_UR50D": (33, 1280, 20),
    "esm2_t36_3B_UR50D": (36, 2560, 40),
    "esm2_t48_15B_UR50D": (48, 5120, 40),
}
_HUB_URL = "https://dl.fbaipublicfiles.com/fair-esm"


def hub_checkpoint_dir() -> Path:
    """Where fair-esm's hub loader keeps checkpoints: ``$TORCH_HOME/hub/checkpoints`` (torch's
    default ``~/.cache/torch``; ``torch.hub.set_dir`` overrides it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _looks_like_path(path_or_name: str | Path) -> bool:
    text = str(path_or_name)
    return isinstance(path_or_name, Path) or text.endswith(".pt") or "/" in text or "\\" in text


def resolve_checkpoint(path_or_name: str | Path) -> Path:
    """The checkpoint file for a path or a hub name, or a :class:`ModelLoadError` saying which
    files to place where (a hub name's download links included, for a machine that has the
    network to fetch them on)."""
    if _looks_like_path(path_or_name) or Path(path_or_name).is_file():
        path = Path(path_or_name)
        if not path.is_file():
            raise ModelLoadError(f"ESM checkpoint not found: {path}")
        return path
    name = str(path_or_name)
    if not name.startswith("esm2"):
        raise ModelLoadError(
            f"{name!r} is neither an existing file nor a fair-esm ESM2 name "
            f"(known: {', '.join(ESM2_ARCHITECTURES)})"
        )
    folder = hub_checkpoint_dir()
    files = [folder / f"{name}.pt", folder / f"{name}-contact-regression.pt"]
    missing = [f for f in files if not f.is_file()]
    if missing:
        urls = [
            f"{_HUB_URL}/models/{name}.pt",
            f"{_HUB_URL}/regression/{name}-contact-regression.pt",
        ]
        raise ModelLoadError(
            f"ESM2 model {name!r} is not in the torch hub cache and is never downloaded here. "
            f"Place {' and '.join(str(f) for f in missing)} (from "
            f"{' and '.join(u for f, u in zip(files, urls, strict=True) if f in missing)}; "
            "$TORCH_HOME moves the cache), or name the checkpoint by its path with its "
            "-contact-regression.pt beside it"
        )
    return files[0]


def _allow_namespace() -> None:
    """fair-esm pickles an ``argparse.Namespace``: allow exactly that class, nothing broader."""
    torch.serialization.add_safe_globals([argparse.Namespace])


def _load_local(path: Path) -> tuple[ESM2, esm.data.Alphabet, str, str]:
    if not path.stem.startswith("esm2"):
        raise ModelLoadError(
            f"{path}: fair-esm picks its ESM2 loader by file name; the stem must start with 'esm2'"
        )
    regression = Path(str(path.with_suffix("")) + "-contact-regression.pt")
    if not regression.is_file():
        raise ModelLoadError(f"{path}: fair-esm needs {regression.name} beside the checkpoint")
    _allow_namespace()
    try:
        model, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path}: refused to unpickle (only argparse.Namespace is allowed besides tensors): "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    model = _check_esm2(model, path.name)
    published = ESM2_ARCHITECTURES.get(path.stem)
    found = (model.num_layers, model.embed_dim, model.attention_heads)
    if published is not None and found != published:
        raise ModelLoadError(
            f"{path}: named like the published {path.stem} (layers, dim, heads = {published}) "
            f"but holds {found}; rename a model of another architecture"
        )
    return model, alphabet, path.stem, file_sha256(path)


def _check_esm2(model: torch.nn.Module, source: str) -> ESM2:
    if not isinstance(model, ESM2):
        raise ModelLoadError(f"{source}: not an ESM2 model ({type(model).__name__})")
    return model


def _wrap(
    model: ESM2, alphabet: esm.data.Alphabet, name: str, sha: str, dev: torch.device
) -> LoadedModel:
    model = model.eval().to(dev)
    return LoadedModel(
        model=model,
        alphabet=alphabet,
        batch_converter=alphabet.get_batch_converter(),
        name=name,
        sha256=sha,
        num_layers=model.num_layers,
        embed_dim=model.embed_dim,
        device=dev,
    )


def random_init_copy(loaded: LoadedModel, seed: int) -> LoadedModel:
    """Same architecture, freshly initialised weights: the null control for GO and explanations."""
    src = loaded.model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(
            num_layers=src.num_layers,
            embed_dim=src.embed_dim,
            attention_heads=src.attention_heads,
            alphabet=loaded.alphabet,
            token_dropout=src.token_dropout,
        )
    name = f"{loaded.name}-random-init{seed}"
    return _wrap(model, loaded.alphabet, name, f"random-init:{seed}", loaded.device)


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 (or fp16) autocast on CUDA; plain fp32 on CPU."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def check_sequences(sequences: Sequence[str]) -> None:
    """Refuse empty sequences and letters outside ESM's amino-acid alphabet, naming the index."""
    for i, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"sequence {i} is empty")
        bad = set(seq) - _VALID_TOKENS
        if bad:
            raise ValueError(f"sequence {i} has letters outside the ESM alphabet: {sorted(bad)}")


def plan_windows(length: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Windows ``(start, end, keep_from, keep_to)`` in sequence coordinates covering ``length``.

    Each residue is kept from the window whose edge is farthest away (cut at overlap midpoints).
    """
    if length <= window:
        return [(0, length, 0, length)]
    if not 0 < stride < window:
        raise ValueError(f"window stride must be in (0, {window}), got {stride}")
    starts = [*range(0, length - window, stride), length - window]
    cuts = [0] + [(starts[j + 1] + starts[j] + window) // 2 for j in range(len(starts) - 1)]
    cuts.append(length)
    return [(s, s + window, cuts[j], cuts[j + 1]) for j, s in enumerate(starts)]


@dataclass(frozen=True)
class _Piece:
    seq: int  # index of the input sequence
    start: int  # window start in the sequence
    end: int
    keep_from: int  # kept residues, sequence coordinates
    keep_to: int


def token_batches(lengths: Sequence[int], max_tokens_per_batch: int) -> list[list[int]]:
    """Indices grouped longest first so that ``count * (longest + 2)`` stays within the budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = (lengths[current[0]] if current else lengths[i]) + 2
        if current and (len(current) + 1) * width > max_tokens_per_batch:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@functools.lru_cache(maxsize=8)
def _token_table(alphabet: esm.data.Alphabet) -> np.ndarray:
    """Byte -> token index for the alphabet's one-letter tokens (-1 elsewhere)."""
    table = np.full(256, -1, dtype=np.int64)
    for tok, idx in alphabet.tok_to_idx.items():
        if len(tok) == 1 and ord(tok) < 128:
            table[ord(tok)] = idx
    return table


def tokenize(loaded: LoadedModel, sequences: Sequence[str]) -> torch.Tensor:
    """fair-esm's ``BatchConverter`` tokens ``[B, longest + BOS/EOS]`` (padded), on the CPU.

    One table lookup per sequence instead of fair-esm's token-by-token string splitting (a
    millisecond per 300 aa, paid on every request); anything the table does not cover (multi-
    letter tokens such as ``<mask>``, unknown letters) goes through fair-esm's own converter.
    """
    alphabet = loaded.alphabet
    table = _token_table(alphabet)
    codes = [table[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
             for seq in sequences]  # fmt: skip
    if not codes or any(c.size == 0 or bool((c < 0).any()) for c in codes):
        return loaded.batch_converter([(str(i), s) for i, s in enumerate(sequences)])[2]
    bos, eos = int(alphabet.prepend_bos), int(alphabet.append_eos)
    tokens = np.full((len(codes), max(c.size for c in codes) + bos + eos), alphabet.padding_idx,
                     dtype=np.int64)  # fmt: skip
    for row, c in enumerate(codes):
        if bos:
            tokens[row, 0] = alphabet.cls_idx
        tokens[row, bos : bos + c.size] = c
        if eos:
            tokens[row, bos + c.size] = alphabet.eos_idx
    return torch.from_numpy(tokens)


def attention_fusable(layer: torch.nn.Module) -> bool:
    """An ESM2 layer whose attention is plain rotary attention without extra keys or dropout
    (every ESM2 layer is; fair-esm builds it as query = key = value attention, not with its
    ``self_attention`` flag)."""
    if not isinstance(layer, TransformerLayer):
        return False
    attn = layer.self_attn
    return (
        isinstance(attn, MultiheadAttention)
        and not attn.encoder_decoder_attention
        and attn.rot_emb is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
        and not (attn.training and attn.dropout > 0)
    )


def fused_self_attention(
    attn: MultiheadAttention, x: torch.Tensor, key_padding_mask: torch.Tensor | None
) -> torch.Tensor:
    """fair-esm's rotary self-attention ``(T, B, E) -> (T, B, E)`` through one fused kernel.

    Same projections, query scaling and rotary embedding as ``MultiheadAttention.forward``; the
    score matrix, padding mask, softmax and weighted sum run inside
    ``scaled_dot_product_attention`` (its own scale is 1: the query is already scaled).
    """
    length, batch, embed = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    q = (attn.q_proj(x) * attn.scaling).view(length, batch * heads, head_dim).transpose(0, 1)
    k = attn.k_proj(x).view(length, batch * heads, head_dim).transpose(0, 1)
    v = attn.v_proj(x).view(length, batch, heads, head_dim).permute(1, 2, 0, 3)
    q, k = attn.rot_emb(q, k)
    keep = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(
        q.view(batch, heads, length, head_dim),
        k.view(batch, heads, length, head_dim),
        v.to(q.dtype),
        attn_mask=keep,
        scale=1.0,
    )
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, embed))


def _fused_layer(
    layer: TransformerLayer, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``TransformerLayer.forward`` (pre-LayerNorm attention, then GELU MLP) with fused attention."""
    x = x + fused_self_attention(layer.self_attn, layer.self_attn_layer_norm(x), mask)
    return x + layer.fc2(gelu(layer.fc1(layer.final_layer_norm(x))))


def apply_block(
    layer: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None, attention: Attention
) -> torch.Tensor:
    """One transformer block on ``x (T, B, E)``: fair-esm's module, or its fused-attention form."""
    if attention == "fused" and attention_fusable(layer):
        return _fused_layer(layer, x, mask)  # type: ignore[arg-type]
    out, _ = layer(x, self_attn_padding_mask=mask, need_head_weights=False)
    return out


def forward_representations(
    model: ESM2, tokens: torch.Tensor, layers: Sequence[int], attention: Attention = "fair-esm"
) -> dict[int, torch.Tensor]:
    """``model(tokens, repr_layers=layers)["representations"]``, run only as deep as needed.

    Follows ``ESM2.forward`` step by step with the model's own modules but stops after the
    deepest layer in ``layers``. fair-esm's last layer is reported after
    ``emb_layer_norm_after``, so that LayerNorm runs only when the last layer is asked for; the
    LM head never runs. ``attention="fair-esm"`` calls fair-esm's layers (its numbers bit for
    bit); ``"fused"`` runs their attention through :func:`fused_self_attention` (the same up to
    float rounding, ~3x faster on the CPU).
    """
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    wanted = set(layers)
    deepest = max(wanted)
    padding_mask = tokens.eq(model.padding_idx)  # B, T
    x = model.embed_scale * model.embed_tokens(tokens)
    if model.token_dropout:
        x.masked_fill_((tokens == model.mask_idx).unsqueeze(-1), 0.0)
        mask_ratio_train = 0.15 * 0.8
        src_lengths = (~padding_mask).sum(-1)
        mask_ratio_observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
        x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
    x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
    reps: dict[int, torch.Tensor] = {}
    if 0 in wanted:
        reps[0] = x
    x = x.transpose(0, 1)  # (B, T, E) => (T, B, E)
    mask = padding_mask if padding_mask.any() else None
    for index, layer in enumerate(model.layers[:deepest]):
        x = apply_block(layer, x, mask, attention)
        if index + 1 in wanted:
            reps[index + 1] = x.transpose(0, 1)
    if 0 < deepest == model.num_layers:
        reps[deepest] = model.emb_layer_norm_after(x).transpose(0, 1)
    return reps


def _batch_representations(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layers: Sequence[int],
    max_tokens_per_batch: int,
    stride: int | None,
    wanted: frozenset[int] | None = None,
) -> tuple[np.ndarray, Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]]]:
    """``offsets [n+1]`` and, per forward batch, (destination rows, ``{layer: kept rows}``).

    The kept rows stay on the model's device; destination rows index the stacked output. With
    ``wanted``, only the batches holding a piece of a wanted sequence run (the same batches).
    """
    check_sequences(sequences)
    bad = [layer for layer in layers if not 0 <= layer <= loaded.num_layers]
    if bad:
        raise ValueError(f"layers {bad} outside 0..{loaded.num_layers} of {loaded.name}")
    window = loaded.max_tokens
    step = stride or window // 2
    pieces = [
        _Piece(i, *w)
        for i, seq in enumerate(sequences)
        for w in plan_windows(len(seq), window, step)
    ]
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    batches = token_batches([p.end - p.start for p in pieces], max_tokens_per_batch)

    def run() -> Iterator[tuple[np.ndarray, dict[int, torch.Tensor]]]:
        for batch in batches:
            chunk = [pieces[k] for k in batch]
            if wanted is not None and not any(p.seq in wanted for p in chunk):
                continue
            tokens = tokenize(loaded, [sequences[p.seq][p.start : p.end] for p in chunk])
            width = tokens.shape[1]
            # Gather the kept residues on the device (no padding, no per-row Python loop on
            # the host): source rows in the padded batch, destination rows in the output.
            source = np.concatenate(
                [row * width + np.arange(1 + p.keep_from - p.start, 1 + p.keep_to - p.start)
                 for row, p in enumerate(chunk)]
            )  # fmt: skip
            dest = np.concatenate(
                [int(offsets[p.seq]) + np.arange(p.keep_from, p.keep_to) for p in chunk]
            )
            index = torch.from_numpy(source).to(loaded.device, non_blocking=True)
            reps = forward_representations(
                loaded.model, tokens.to(loaded.device, non_blocking=True), layers, loaded.attention
            )
            yield (
                dest,
                {
                    layer: reps[layer].reshape(-1, reps[layer].shape[-1]).index_select(0, index)
                    for layer in layers
                },
            )

    return offsets, run()


def embed_concatenated(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layers: Sequence[int],
    *,
    max_tokens_per_batch: int = 8192,
    dtype: np.dtype[Any] | type = np.float32,
    stride: int | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-residue activations of all sequences stacked: ``(offsets [n+1], {layer: [sum L, d]})``.

    BOS/EOS are excluded; row ``offsets[i]:offsets[i+1]`` is sequence ``i`` in input order.
    """
    offsets, batches = _batch_representations(
        loaded, sequences, layers, max_tokens_per_batch, stride
    )
    out = {layer: np.empty((int(offsets[-1]), loaded.embed_dim), dtype=dtype) for layer in layers}
    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    with torch.inference_mode(), autocast_for(loaded.device):
        for dest, kept in batches:
            for layer in layers:
                out[layer][dest] = kept[layer].to(torch_dtype).cpu().numpy()
            if on_batch is not None:
                on_batch(int(dest.size))
    return offsets, out


def embed_selected(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layers: Sequence[int],
    wanted: Sequence[int] | np.ndarray,
    *,
    max_tokens_per_batch: int = 8192,
    dtype: np.dtype[Any] | type = np.float32,
    stride: int | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """:func:`embed_concatenated`'s rows of the ``wanted`` sequences alone (ascending, each once).

    Each wanted sequence runs in the very forward batch (same neighbours, same padding) that
    ``embed_concatenated(sequences)`` puts it in, so its values equal that call's bit for bit on
    the same device; only those batches run, and memory holds the wanted rows alone.
    """
    chosen = np.unique(np.asarray(wanted, dtype=np.int64))
    offsets, batches = _batch_representations(
        loaded, sequences, layers, max_tokens_per_batch, stride, frozenset(chosen.tolist())
    )
    out_offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(np.diff(offsets)[chosen], out=out_offsets[1:])
    is_wanted = np.zeros(len(sequences), dtype=bool)
    is_wanted[chosen] = True
    shift = np.zeros(len(sequences), dtype=np.int64)  # output row = stacked row + shift
    shift[chosen] = out_offsets[:-1] - offsets[chosen]
    rows = int(out_offsets[-1])
    out = {layer: np.empty((rows, loaded.embed_dim), dtype=dtype) for layer in layers}
    torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    with torch.inference_mode(), autocast_for(loaded.device):
        for dest, kept in batches:
            owner = np.searchsorted(offsets, dest, side="right") - 1
            keep = np.flatnonzero(is_wanted[owner])
            index = torch.from_numpy(keep).to(loaded.device)
            target = dest[keep] + shift[owner[keep]]
            for layer in layers:
                out[layer][target] = (
                    kept[layer].index_select(0, index).to(torch_dtype).cpu().numpy()
                )
    return out_offsets, out


def embed_sequences(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layers: Sequence[int],
    *,
    max_tokens_per_batch: int = 8192,
    stride: int | None = None,
) -> list[dict[int, np.ndarray]]:
    """Per sequence, ``{layer: float32 [L, d]}`` per residue (BOS/EOS excluded), windowed if long."""
    offsets, stacked = embed_concatenated(
        loaded, sequences, layers, max_tokens_per_batch=max_tokens_per_batch, stride=stride
    )
    return [
        {layer: stacked[layer][offsets[i] : offsets[i + 1]] for layer in layers}
        for i in range(len(sequences))
    ]


def embed_on_device(
    loaded: LoadedModel,
    sequences: Sequence[str],
    layer: int,
    *,
    max_tokens_per_batch: int = 8192,
    stride: int | None = None,
) -> list[torch.Tensor]:
    """Per sequence, float32 ``[L, d]`` at ``layer`` left on the model's device (the server's
    path: the dictionary runs there next, so no round trip through host memory). Same numbers as
    :func:`embed_sequences`."""
    offsets, batches = _batch_representations(
        loaded, sequences, [layer], max_tokens_per_batch, stride
    )
    parts = []
    with torch.inference_mode(), autocast_for(loaded.device):
        for dest, kept in batches:
            parts.append((dest, kept[layer]))
    if len(parts) == 1 and np.array_equal(parts[0][0], np.arange(int(offsets[-1]))):
        stacked = parts[0][1].float()
    else:
        stacked = torch.empty((int(offsets[-1]), loaded.embed_dim), device=loaded.device)
        for dest, rows in parts:
            stacked[torch.from_numpy(dest).to(loaded.device)] = rows.float()
    return [stacked[offsets[i] : offsets[i + 1]] for i in range(len(sequences))]


def iter_token_batches(
    loaded: LoadedModel, sequences: Sequence[str], max_tokens_per_batch: int
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """(input indices, tokens on the model's device) batched by token budget, longest first."""
    for batch in token_batches([len(s) for s in sequences], max_tokens_per_batch):
        yield batch, tokenize(loaded, [sequences[i] for i in batch]).to(loaded.device)
