"""Faces to vectors: the Embedder, its wrappers (network, prefix) and the .npz writer of ``kface embed``."""
