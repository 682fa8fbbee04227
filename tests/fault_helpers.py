"""Helpers of the fault-injection tests: run kface as a real process, and read what it said."""
from __future__ import annotations

import contextlib
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def kface(*args, env: Optional[dict] = None, preexec_fn: Optional[Callable] = None, timeout: float = 300,
          cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """``python -m kface ARGS`` in a new process (the environment is this one's, plus ``env``)."""
    return subprocess.run([sys.executable, "-m", "kface", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, preexec_fn=preexec_fn, timeout=timeout, cwd=cwd)


def start_kface(*args, env: Optional[dict] = None, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kface", *map(str, args)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_error(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """The process failed with ``code``, said so in exactly one ``error:`` line holding ``fragments``, and
    printed no traceback; returns that line."""
    assert "Traceback" not in result.stderr, result.stderr
    errors = error_lines(result.stderr)
    assert result.returncode == code and len(errors) == 1, (result.returncode, result.stderr)
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert not error_lines(result.stderr), result.stderr


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("note:")]


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` is read-only inside the block: its mode for an ordinary user; for root (who ignores
    modes) a read-only bind mount of it onto itself, or a skip where the machine forbids mounts."""
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
        for path in modes:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"running as root, and cannot bind-mount {folder} read-only ({bound.stderr.strip()})")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def file_size_limit(limit: int) -> Callable:
    """preexec_fn: no file this process writes may grow past ``limit`` bytes (a full disk, per file).
    Python ignores SIGXFSZ, so a write past it fails with EFBIG instead of killing the process."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


PAUSED_WRITER = Path(__file__).resolve().parent / "paused_writer.py"


def kill_mid_write(args: list, marker: Path, hook: str = "rename", timeout: float = 600) -> None:
    """Run ``kface ARGS`` until it is in the middle of writing (tests/paused_writer.py's ``hook``), then
    kill it with SIGKILL; fails unless it reached that point and died of the kill."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, str(PAUSED_WRITER), str(marker), hook, *map(str, args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    reached = marker.exists()
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    assert reached, f"kface {args[0]} never reached its write ({hook}); it ended with {process.returncode}: {stderr}"
    assert process.returncode == -signal.SIGKILL, f"kface {args[0]} was not killed: {process.returncode}, {stderr}"
