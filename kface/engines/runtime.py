"""ONNX Runtime sessions for exported face networks: chips in, vectors out, no torch.

:class:`OnnxNetwork` creates its ``InferenceSession`` on first use (``import onnxruntime`` about 0.2 s
and session creation about 0.1 s here, against 2.5 s for ``import torch``), with every graph
optimisation on, one intra-op thread per usable CPU core, and no spin-waiting. ``device``: ``cpu``;
``cuda`` (the CUDA execution provider, an error where this onnxruntime build has none); ``auto``
(CUDA where the build and a GPU provide it, else CPU).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import InputError, KfaceError
from ..util.hashing import file_sha256

#: Chips per session call: big enough for full speed, small enough to bound memory (64 x 150 x 150 x 3).
RUN_BATCH = 64
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def providers_for(device: str) -> list[str]:
    """The execution providers for ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), best first."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if device.startswith("cuda"):
        if CUDA_PROVIDER not in available:
            raise InputError("--device cuda was asked for, but this onnxruntime has no CUDA execution provider "
                             "(install onnxruntime-gpu, or use --engine torch)")
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if device != "auto":
        raise InputError(f"unknown device {device!r}; choose one of: auto, cpu, cuda")
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


class OnnxNetwork:
    """An exported face network (see :mod:`kface.engines`) run by ONNX Runtime.

    Args:
        path: the ``.onnx`` file.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: intra-op threads on the CPU (default: the usable cores).
        sha256: when given, the file's sha256 is checked before the session is created.
    """

    def __init__(self, path: Union[str, os.PathLike], device: str = "auto", threads: Optional[int] = None,
                 sha256: Optional[str] = None):
        self.path = Path(path)
        self.device = device
        self.threads = threads
        self.sha256 = sha256
        self._session = None
        self._input = self._output = ""

    @property
    def session(self):
        """The ``onnxruntime.InferenceSession`` (created on first use)."""
        if self._session is None:
            self._session = self._create_session()
        return self._session

    def _create_session(self):
        import onnxruntime

        if not self.path.is_file():
            raise InputError(f"{self.path}: no such ONNX file")
        if self.sha256 is not None:
            if file_sha256(self.path) != self.sha256:
                raise KfaceError(f"{self.path}: sha256 differs from the one recorded for it; the file is damaged "
                                 f"(reinstall kface, or delete it from the cache to export it again)")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or usable_cores()
        options.inter_op_num_threads = 1  # one chain of convolutions: nothing to run side by side
        # Idle threads sleep instead of spinning: on a CPU shared with other work (this project's
        # machines), spinning threads took the cores from the ones with work, 4x slower measured here.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # warnings about unused providers are noise for users
        providers = providers_for(self.device)
        provider_options = [{"device_id": int(self.device.split(":")[1])} if p == CUDA_PROVIDER and ":" in self.device
                            else {} for p in providers]
        try:
            session = onnxruntime.InferenceSession(str(self.path), options, providers=providers,
                                                   provider_options=provider_options)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise InputError(f"{self.path}: not a loadable ONNX network ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
        self._input = session.get_inputs()[0].name
        self._output = session.get_outputs()[0].name
        return session

    @property
    def providers(self) -> list[str]:
        """The execution providers the session runs on."""
        return list(self.session.get_providers())

    @property
    def chip_size(self) -> int:
        """The side of the square chips the network takes."""
        return int(self.session.get_inputs()[0].shape[1])

    def run(self, chips: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB chips -> (N, D) float32 vectors, in batches of :data:`RUN_BATCH`."""
        session = self.session
        chips = np.asarray(chips)
        size = self.chip_size
        if chips.ndim != 4 or chips.shape[1:] != (size, size, 3) or chips.dtype != np.uint8:
            raise InputError(f"{self.path.name} takes (N, {size}, {size}, 3) uint8 RGB chips, "
                             f"got {chips.dtype} {chips.shape}")
        outputs = [session.run([self._output], {self._input: np.ascontiguousarray(chips[start:start + RUN_BATCH])})[0]
                   for start in range(0, len(chips), RUN_BATCH)]
        if not outputs:
            dim = session.get_outputs()[0].shape[1]
            return np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)


def compare_vectors(reference: np.ndarray, other: np.ndarray, pairs: int = 2000, seed: int = 0) -> dict:
    """How far ``other`` (N, D) is from ``reference``, the same chips' vectors from another graph:
    ``{chips, min_cosine, mean_cosine, max_abs_diff}`` per vector, and over ``pairs`` seeded pairs of the
    chips the Euclidean distance's ``distance_mean_abs_diff`` and ``distance_max_abs_diff`` (what a
    threshold sees)."""
    reference, other = np.asarray(reference, np.float64), np.asarray(other, np.float64)
    cosine = (reference * other).sum(1) / np.maximum(
        np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1), 1e-12)
    rng = np.random.default_rng(seed)
    first, second = rng.integers(0, len(reference), pairs), rng.integers(0, len(reference), pairs)
    shift = np.abs(np.linalg.norm(reference[first] - reference[second], axis=1)
                   - np.linalg.norm(other[first] - other[second], axis=1))
    return {"chips": int(len(reference)), "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
            "max_abs_diff": float(np.abs(reference - other).max()),
            "distance_mean_abs_diff": float(shift.mean()), "distance_max_abs_diff": float(shift.max())}
