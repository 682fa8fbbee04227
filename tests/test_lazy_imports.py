"""`kface --help` and a default `kface verify` must not pay for torch, scikit-learn or matplotlib."""
from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "sklearn", "matplotlib", "scipy")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('heavy:', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.splitlines()[-1].split()[1:])


def test_help_imports_nothing_heavy():
    assert _imported_after("from kface.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass") == set()


def test_default_verify_imports_nothing_heavy(samples_dir):
    code = (f"from kface.api import verify\n"
            f"assert verify({str(samples_dir / 'obama.jpg')!r}, {str(samples_dir / 'obama2.jpg')!r}).same")
    assert _imported_after(code) == set()
