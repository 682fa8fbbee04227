"""The family protocol's outputs: the markdown table and ``benchmark.json`` / ``benchmark.md``."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from ..util.outputs import write_text
from .families import PAIR_KINDS, FamilyProtocol


def markdown_table(rows: list[dict], protocol: FamilyProtocol) -> str:
    """The protocol table (docs/korean-model.md): one line per row (a model at each of its thresholds, or a recipe)."""
    cut = "" if protocol.scored == protocol.folds else f" (a cut run: the first {protocol.scored} of its folds scored)"
    lines = [f"{protocol.folds}-fold family-disjoint protocol{cut} ({protocol.pairs_per_class} same + "
             f"{protocol.pairs_per_class} different pairs of each kind per fold, seed {protocol.seed}); "
             f"accuracy mean ± std over folds; AUC, EER and overlap are means of the per-fold figures.", "",
             "| model | threshold | cross-age accuracy | same-age hard accuracy | AUC (cross / hard) "
             "| EER (cross / hard) | TAR@FAR=1e-2 (cross / hard) | overlap (cross / hard) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        cross, hard = (row["pair_kinds"][kind] for kind in PAIR_KINDS)
        variants = [("own", "accuracy", "accuracy_std")]
        if row["kind"] == "model":
            variants.append(("other folds", "accuracy_folds_threshold", "accuracy_folds_threshold_std"))
        for label, key, std in variants:
            source = row["threshold_source"] if label == "own" else f"chosen on the other folds ({protocol.rule})"
            lines.append(f"| {row['name']} | {source} | {_mean_std(cross[key], cross[std])} | "
                         f"{_mean_std(hard[key], hard[std])} | {_number(cross['auc'])} / "
                         f"{_number(hard['auc'])} | {_percent(cross['eer'])} / {_percent(hard['eer'])} | "
                         f"{_percent(cross.get(TAR_KEY))} / {_percent(hard.get(TAR_KEY))} | "
                         f"{_number(cross['overlap'], 3)} / {_number(hard['overlap'], 3)} |")
    return "\n".join(lines) + "\n"


TAR_KEY = "tar_at_far_1e-2"


def _mean_std(mean: float, std: Optional[float]) -> str:
    """``89.40% ± 1.17`` (points); the mean alone where one fold was scored."""
    return f"{100 * mean:.2f}%" + ("" if std is None else f" ± {100 * std:.2f}")


def _percent(value: Optional[float]) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _number(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_results(out: Path, rows: list[dict], protocol: FamilyProtocol, dataset: dict) -> None:
    """``benchmark.json`` (every figure, the settings, the data) and ``benchmark.md`` (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    body = {"protocol": asdict(protocol), "dataset": dataset, "rows": rows}
    write_text(out / "benchmark.json", json.dumps(body, indent=2) + "\n")
    write_text(out / "benchmark.md", markdown_table(rows, protocol))
