"""Run a kface command that pauses, for a test to kill it, in the middle of writing an output.

``python tests/paused_writer.py MARKER HOOK KFACE-ARGS...`` runs ``kface KFACE-ARGS`` with one hook:

- ``rename``: when the command is about to give a finished temp file its final name (kface.util.outputs'
  atomic_path: ``os.replace`` or ``os.link`` of a ``.NAME.*`` temp file), the rename waits;
- ``commit:N``: the N-th gallery change waits inside its write transaction, its rows inserted but not
  committed.

When it waits it creates MARKER and sleeps, so the test knows the kill lands inside the writing phase.
"""
from __future__ import annotations

import os
import runpy
import sys
import time

marker, hook, arguments = sys.argv[1], sys.argv[2], sys.argv[3:]


def pause(detail: str) -> None:
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(detail)
    time.sleep(3600)


if hook == "rename":
    from kface.util.outputs import temp_prefix

    def pausing(real):
        def call(source, target, *args, **kwargs):
            if os.path.basename(os.fspath(source)).startswith(temp_prefix(target)):
                pause(f"{source} -> {target}")
            return real(source, target, *args, **kwargs)
        return call

    os.replace, os.link = pausing(os.replace), pausing(os.link)
elif hook.startswith("commit:"):
    from kface.galleries.store import GalleryStore

    wanted, calls = int(hook.split(":")[1]), []
    real_bump = GalleryStore._bump

    def bump(self, epoch):
        calls.append(epoch)
        if len(calls) == wanted:
            pause(f"gallery change {wanted}")
        return real_bump(self, epoch)

    GalleryStore._bump = bump
else:
    raise SystemExit(f"unknown hook {hook!r}")

sys.argv = ["kface", *arguments]
runpy.run_module("kface", run_name="__main__")
