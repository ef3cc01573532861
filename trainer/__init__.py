"""The offline pipeline: real proteins → ESM2 activations → SAEs/transcoders → features in the store."""
