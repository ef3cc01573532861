"""ESM2's window: the residues one forward pass sees. Torch-free, so routes, validation and the
trainer's configs share the one number without importing the model code."""

MAX_RESIDUES = 1022  # ESM2 was trained on crops of 1,022 residues (+ BOS/EOS = 1,024 tokens)
