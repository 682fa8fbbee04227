"""Reading CSV tables (manifests, pair files, scored distances): every failure one error naming the file."""
from __future__ import annotations

import csv
import os

from ..errors import InputError


def read_csv_rows(path: os.PathLike, what: str) -> list[list[str]]:
    """The rows of the CSV file at ``path`` (a byte-order mark is dropped); ``what`` names it in errors."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError(f"{path}: cannot read the {what} ({reason})") from None


def read_csv_dicts(path: os.PathLike, what: str) -> list[dict[str, str]]:
    """The rows of the CSV file at ``path`` as dicts keyed by its header row (blank lines skipped, short
    rows padded with empty strings)."""
    rows = read_csv_rows(path, what)
    if not rows:
        return []
    header = rows[0]
    return [dict(zip(header, row + [""] * (len(header) - len(row)))) for row in rows[1:] if row]
