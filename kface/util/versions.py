"""The versions of kface, Python and named libraries, as checkpoints and ``kface serve`` record them."""
from __future__ import annotations

import platform
import sys

from .. import __version__

#: What a checkpoint records besides kface and Python.
CHECKPOINT_PACKAGES = ("torch", "numpy")


def versions(packages: tuple[str, ...] = CHECKPOINT_PACKAGES, loaded: bool = True) -> dict:
    """``{"kface", "python", *packages}``: versions, importing nothing; a package not installed is left out.

    With ``loaded`` a package already imported reports its ``__version__`` (torch's names its build, e.g.
    ``+cu130``, which its metadata does not, and checkpoints record it); any other its installed metadata,
    so that serve never imports torch for this.
    """
    from importlib import metadata  # email, zipfile, csv...: off the paths that record no versions (verify)

    found = {"kface": __version__, "python": platform.python_version()}
    for package in packages:
        module = sys.modules.get(package)
        if loaded and module is not None and hasattr(module, "__version__"):
            found[package] = str(module.__version__)
            continue
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
