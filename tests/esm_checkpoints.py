"""Random-initialised ESM2 checkpoints of the published architectures, in fair-esm's on-disk format.

Real ESM2 weights cannot be downloaded here, but their files' layout is known: a downloaded
``esm2_t12_35M_UR50D.pt`` is ``{"model": state_dict, "cfg": {"model": Namespace(...)}}`` with the
fairseq prefixes ``encoder.sentence_encoder.`` (the transformer) and ``encoder.lm_head.`` (the LM
head), and ``esm2_t12_35M_UR50D-contact-regression.pt`` is ``{"model": {"contact_head.regression.
weight" [1, layers x heads], "contact_head.regression.bias" [1]}}`` (fair-esm's
``load_model_and_alphabet_core`` merges it into the state dict). Writing exactly that, with
fair-esm's own initialisation, lets a test load a real architecture through the path a downloaded
file takes: ``$TORCH_HOME/hub/checkpoints/<name>.pt``.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path

import esm
import torch
from esm.model.esm2 import ESM2

# Published (fair-esm README, Lin et al. 2023): layers, embedding dim, heads, parameters in M.
PUBLISHED = {
    "esm2_t6_8M_UR50D": (6, 320, 20, 8),
    "esm2_t12_35M_UR50D": (12, 480, 20, 35),
    "esm2_t33_650M_UR50D": (33, 1280, 20, 650),
}


def _fairseq_key(key: str) -> str:
    return ("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key


def write_random_checkpoint(name: str, folder: Path, seed: int = 0) -> Path:
    """``folder/<name>.pt`` and its ``-contact-regression.pt``: fair-esm's initialisation of the
    published architecture ``name``, saved as a downloaded checkpoint is."""
    layers, dim, heads, _ = PUBLISHED[name]
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ESM2(num_layers=layers, embed_dim=dim, attention_heads=heads,
                     alphabet=esm.data.Alphabet.from_architecture("ESM-1b"), token_dropout=True)  # fmt: skip
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.")}
    cfg = Namespace(encoder_layers=layers, encoder_embed_dim=dim,
                    encoder_attention_heads=heads, token_dropout=True)  # fmt: skip
    path = folder / f"{name}.pt"
    torch.save({"model": {_fairseq_key(k): v for k, v in state.items()}, "cfg": {"model": cfg}},
               path)  # fmt: skip
    torch.save({"model": regression}, folder / f"{name}-contact-regression.pt")
    del model, state
    return path
