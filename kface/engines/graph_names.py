"""The names of an exported graph's one input and one output (see :mod:`kface.engines`)."""
from __future__ import annotations

INPUT_NAME = "chips"
OUTPUT_NAME = "embeddings"
