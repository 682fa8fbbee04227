"""Age editing: a face shown at another of the 8 Korean age classes, by a feature-decomposition autoencoder.

The network (:mod:`.network`, torch) follows the study "age classification and synthesis using feature
decomposition": an encoder, a self-attention module splitting its features into an age-related and an
age-unrelated part, an age classifier on the first, and a decoder fed the second, conditioned on the
target age class through conditional batch normalisation. :mod:`.train` trains it
(``kface train-age-editor``); :mod:`.editor` runs the shipped ONNX editor without torch
(``kface age-edit``, :func:`kface.age_edit`).
"""
from __future__ import annotations

#: The 8 Korean age classes, lower edges in years (the shipped attribute model's classes).
AGE_EDGES = (0, 7, 13, 20, 31, 46, 56, 67)
AGE_CLASSES = ("0-6", "7-12", "13-19", "20-30", "31-45", "46-55", "56-66", "67+")
#: The side of the chips the editor reads and writes: what one CPU core trains in about an hour
#: (128 px costs about 4x per step; see docs/age-editing.md).
EDIT_SIZE = 64
