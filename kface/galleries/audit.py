"""The audit log of a gallery's changes: one JSON line per enrolment or removal, in ``<gallery>.audit.jsonl``.

A line names when, who (the client address and the id of the token it showed, never the token itself, or
the local user for a command on this machine), what (``enroll`` or ``remove``), the identity and the
sha256 of each image concerned; never an image or an embedding. The store writes the line while it holds
the gallery's write lock, just before the change commits, so lines never interleave and every committed
change has its line (a writer killed between the two leaves a line for a change that did not happen).
"""
from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from ..errors import KfaceError

AUDIT_SUFFIX = ".audit.jsonl"


@dataclass(frozen=True)
class Actor:
    """Who asks for a gallery change."""

    client: str  # "203.0.113.5:52814" for a server request, "local" for a command on this machine
    user: Optional[str] = None  # the local user name (commands) or None (server requests)
    token_id: Optional[str] = None  # the id of the bearer token the request showed (kface.serve.auth)


def local_actor() -> Actor:
    """The actor of a command run on this machine: the user who runs it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return Actor("local", user=user)


def audit_path(gallery: os.PathLike) -> Path:
    return Path(f"{os.fspath(gallery)}{AUDIT_SUFFIX}")


def append_audit(gallery: os.PathLike, actor: Actor, event: str, identity: str, sha256s: Sequence[str]) -> None:
    """Append one line for a change of ``gallery`` (called under the gallery's write lock)."""
    record = {"time": round(time.time(), 3), "event": event, "identity": identity, "images": list(sha256s),
              "client": actor.client, "user": actor.user, "token_id": actor.token_id}
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    path = audit_path(gallery)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(handle, line)
            os.fsync(handle)
        finally:
            os.close(handle)
    except OSError as exc:
        # An unrecorded change is refused: the caller's transaction rolls back.
        raise KfaceError(f"{path}: cannot append to the gallery's audit log ({exc.strerror or exc})") from None


def read_audit(gallery: os.PathLike) -> list[dict]:
    """Every line of ``gallery``'s audit log, oldest first (empty when nothing changed it)."""
    path = audit_path(gallery)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
