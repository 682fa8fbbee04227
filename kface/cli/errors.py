"""The CLI's last-resort error handler: every failure ends as one ``error:`` line and an exit code.

kface's own errors (:class:`~kface.errors.KfaceError`) already carry their message and code; this
module turns everything else that can reach the top of a command into the same form: click's usage
errors (exit 2, one line instead of click's four), the environment's failures (a read-only or full
disk, a missing permission, a broken database: exit 1, naming the file), and anything unexpected (exit
1). ``KFACE_DEBUG=1`` prints the traceback before the line.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import sys
import traceback
from typing import NoReturn

import click

from ..errors import INPUT_ERROR, RUNTIME_ERROR, KfaceError

DEBUG_ENV = "KFACE_DEBUG"
# click >= 8.2 raises this for a group called without a command; older versions print the help themselves.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())
INTERRUPTED = 130

# What the user can do about an OSError, by errno.
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EFBIG: "the file is larger than this process may write (ulimit -f)",
    errno.EROFS: "the file system is read-only; choose another folder",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.EMFILE: "too many open files (ulimit -n)",
    errno.ENOMEM: "out of memory",
}


def run(group: click.Group, prog_name: str = "kface") -> NoReturn:
    """Run ``group`` as the program and exit; no failure leaves it as a traceback."""
    try:
        code = group.main(prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except _NO_ARGS_IS_HELP as exc:  # a bare group (``kface``, ``kface gallery``): its help, as asked
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        code = 0
    except click.UsageError as exc:
        code = _fail(usage_message(exc), INPUT_ERROR, exc)
    except click.Abort as exc:
        code = _fail("interrupted", INTERRUPTED, exc)
    except click.ClickException as exc:
        code = _fail(exc.format_message(), exc.exit_code, exc)
    except SystemExit:
        raise
    except BaseException as exc:  # noqa: BLE001 - the last resort: nothing may leave as a traceback
        message, code = describe(exc)
        code = _fail(message, code, exc)
    sys.exit(code if isinstance(code, int) else 0)


def usage_message(exc: click.UsageError) -> str:
    """click's usage error as one line, with where to read the usage."""
    message = " ".join(exc.format_message().split())
    command = exc.ctx.command_path if exc.ctx is not None else "kface"
    return f"{message} (see '{command} --help')"


def describe(exc: BaseException) -> tuple[str, int]:
    """One line saying what failed (and the file or setting at fault) and the exit code for ``exc``."""
    if isinstance(exc, KfaceError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(exc, MemoryError):
        return "out of memory; use smaller inputs or a machine with more memory", RUNTIME_ERROR
    if isinstance(exc, BrokenPipeError):
        return "the output pipe was closed before kface finished writing", RUNTIME_ERROR
    if isinstance(exc, OSError):
        return os_error_message(exc), RUNTIME_ERROR
    if isinstance(exc, sqlite3.Error):
        return (f"database error ({exc}); if it is the cache, use --no-cache or another --cache-dir",
                RUNTIME_ERROR)
    return (f"internal error ({type(exc).__name__}: {_short(str(exc))}); rerun with {DEBUG_ENV}=1 for the "
            f"traceback and report it", RUNTIME_ERROR)


def os_error_message(exc: OSError) -> str:
    """``<file>: <what happened>; <advice>`` for an OSError."""
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    where = " -> ".join(names) if names else "a file"
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = _ADVICE.get(exc.errno)
    if advice and advice.split(";")[0] not in what.lower():
        return f"{where}: {what} ({advice})"
    return f"{where}: {what}"


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _fail(message: str, code: int, exc: BaseException) -> int:
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    try:
        sys.stderr.write(f"error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # stderr itself is gone: the exit code is all that is left to say it
    return code
