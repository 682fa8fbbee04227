"""Where the pretrained files that ship on PyPI live.

``face_recognition_models`` holds dlib's ResNet descriptor, its 5- and 68-point landmark models and the
MMOD detector. Its ``__init__`` imports ``pkg_resources`` (gone from new setuptools), so the package is
located through importlib without importing it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import KfaceError

DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
DLIB_LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"


def models_dir() -> Path:
    """The ``models/`` folder of the installed face_recognition_models package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise KfaceError("face_recognition_models is not installed; run the README's set-up command")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def model_file(name: str) -> Path:
    """Path of one model file in face_recognition_models, with a clear error if it is missing."""
    path = models_dir() / name
    if not path.is_file():
        raise KfaceError(f"model file {name} is missing from {path.parent}; reinstall face_recognition_models")
    return path
