"""ProtSAE Explorer: the server side (settings, the store, model definitions used for encoding)."""
