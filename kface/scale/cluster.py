"""Connecting to Ray: this machine (``local``), the cluster it belongs to (``auto``) or one at an address."""
from __future__ import annotations

import logging
import socket

from ..engines.runtime import usable_cores
from ..errors import InputError

#: The package --ray needs (an extra of ray: Ray Data's streaming executor).
RAY_PACKAGE = "ray[data]"
#: Seconds to wait for a TCP answer from an address before calling it unreachable.
CONNECT_TIMEOUT_S = 10


def import_ray():
    """The ``ray`` module with Ray Data, or an :class:`InputError` naming the package to install."""
    try:
        import ray
        import ray.data  # the extra: Ray Data
    except ImportError as exc:
        raise InputError(f"--ray needs the package {RAY_PACKAGE} (pip install '{RAY_PACKAGE}'; {exc})") from None
    return ray


def connect(address: str, quiet: bool = False):
    """Connect this process to Ray at ``address`` and return the ``ray`` module.

    ``local``: start Ray here with this machine's cores; ``auto``: the cluster this machine belongs to
    (``ray start``); ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` (a head node's address). An
    address that does not answer is an :class:`InputError` naming it, within :data:`CONNECT_TIMEOUT_S`.
    A process already connected (a notebook, a test) keeps its connection.
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray
    options = {"include_dashboard": False, "configure_logging": True,
               "logging_level": logging.ERROR if quiet else logging.INFO, "log_to_driver": not quiet}
    if quiet:  # Ray Data's own notes (progress bars off, deprecations) as well
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if address == "local":
        init = {"num_cpus": usable_cores(), **options}
    else:
        if address != "auto":
            _probe(address)
        init = {"address": address, **options}
        if address.startswith("ray://"):
            init.pop("include_dashboard")
    try:
        ray.init(**init)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
        raise InputError(f"--ray {address}: cannot connect to a Ray cluster there ({_first_line(exc)})") from None
    return ray


def _probe(address: str) -> None:
    """Fail fast where nothing answers at ``address`` (Ray itself retries for minutes)."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray {address}: not an address; give local, auto, ray://HOST:PORT or HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InputError(f"--ray {address}: no Ray cluster answers there ({reason})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
