"""`kface --help` and a default `kface verify` must not pay for torch, scikit-learn or matplotlib."""
from __future__ import annotations

import subprocess
import sys

from conftest import default_embedding_size

HEAVY = ("torch", "sklearn", "matplotlib", "scipy", "ray", "pyarrow")


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint('heavy:', *sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.splitlines()[-1].split()[1:])


def test_help_imports_nothing_heavy():
    code = "from kface.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass"
    assert _imported_after(code) == set()


def test_default_verify_imports_nothing_heavy(samples_dir):
    code = (f"from kface.api import verify\n"
            f"assert verify({str(samples_dir / 'obama.jpg')!r}, {str(samples_dir / 'obama2.jpg')!r}).same")
    assert _imported_after(code) == set()


def test_cli_verify_and_embed_run_on_onnxruntime_without_torch(samples_dir, tmp_path):
    a, b = str(samples_dir / "obama.jpg"), str(samples_dir / "biden.jpg")
    code = ("from kface.cli import cli\n"
            "for args in (['verify', '--model', 'dlib', '-q', A, B], ['embed', '-q', A, B, '--out', OUT]):\n"
            "    try:\n        cli(args)\n    except SystemExit as stop:\n        assert stop.code == 0, (args, "
            "stop.code)\n"
            "import onnxruntime  # the network ran there\n")
    code = f"A, B, OUT = {a!r}, {b!r}, {str(tmp_path / 'e.npz')!r}\n" + code
    assert _imported_after(code) == set()
    assert (tmp_path / "e.npz").is_file()


def test_embedding_many_images_imports_nothing_heavy(samples_dir):
    # More chips than dlib-native ever served: the batch path is onnxruntime too, not the torch port.
    images = sorted(str(p) for p in samples_dir.glob("*.jpg"))
    code = (f"from kface.api import embed\n"
            f"result = embed({images * 5!r}, cache=False)\n"
            f"assert result.embeddings.shape == ({len(images) * 5}, {default_embedding_size()})")
    assert _imported_after(code) == set()


def test_serve_app_loads_and_warms_up_without_torch():
    code = ("from kface.serve.app import create_app, load_pipelines\n"
            "app = create_app(load_pipelines(1, 'dlib'))\n"
            "assert app.routes")
    assert _imported_after(code) == set()


def test_warm_cli_verify_imports_only_its_own_command_and_no_decoder(samples_dir, tmp_path):
    """A cached `kface verify` decodes nothing and starts no pool: neither Pillow nor multiprocessing is
    imported, nor the modules of the other commands."""
    a, b = str(samples_dir / "obama.jpg"), str(samples_dir / "obama2.jpg")
    run = ("import os, sys\nos.environ['KFACE_CACHE_DIR'] = CACHE\nfrom kface.cli import cli\n"
           "try:\n    cli(['verify', '--model', 'dlib', '-q', A, B])\nexcept SystemExit as stop:\n    assert "
           "stop.code == 0\n")
    probe = (run + "print('loaded:', *sorted(m for m in ('PIL', 'multiprocessing', 'kface.cli.training', "
             "'kface.cli.gallery', 'kface.cli.serve', 'kface.cli.evaluation') if m in sys.modules))")
    code = f"A, B, CACHE = {a!r}, {b!r}, {str(tmp_path / 'cache')!r}\n" + probe
    subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)  # fills the cache
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1].split()[1:] == []
