"""``kface sweep``: the study's grid of negative:positive ratios (and images per identity), end to end.

For every setting (each ``images_per_identity`` value x each ratio x each head x each distance) the sweep

1. samples a pair file from the dataset, indexed once (``OUT/pairs/<k and ratio>.csv``, shared by
   the heads and distances of that cell, so they are compared on the very same pairs);
2. trains a model on it with :func:`kface.training.run.train` (``OUT/runs/<setting>/model.pt``);
3. writes that model's overlap report (``OUT/<setting>/``): threshold chosen on val, scored on test;

and, when heads or distances are compared (or ``baseline`` asks), scores the **base backbone** on
each pair file and distance too (head ``base``: no training, its threshold chosen on the same val
split), so the table says whether any trained head beats the backbone it starts from;

then lays the results out as the study's tables: ``sweep.csv`` (one row per setting), ``sweep.md``
(one table per images-per-identity setting: ratio, [head, distance,] accuracy, loss, overlap,
threshold) and ``sweep.png`` (each measure against the share of different-person pairs, one line per
head and distance). ``sweep.json`` holds the configuration and every row. With the defaults (the
paper's siamese head, Euclidean distance) settings are named ``k5-ratio-4-6``; as soon as another
head or distance is swept (or a baseline is scored) every name ends in ``-<head>-<distance>``.

Every pair file is sampled before anything trains, so a ratio the data cannot support fails at once.
With ``resume`` a setting whose report exists is reused and an interrupted training run continues.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..api import Verifier
from ..datasets import dataset_options, load_dataset
from ..distances import DISTANCES
from ..embeddings.embedder import Embedder
from ..errors import InputError
from ..metrics import parse_rule, parse_samples
from ..pairs import PairRequest, make_pair_file, parse_ratio, parse_split
from ..reporting.plots import pyplot, save_figure
from ..util.cache import CacheSetting, cache_setting
from ..util.outputs import write_json, write_text
from .report import overlap_report, report_verifier

log = logging.getLogger("kface")

#: The study's grid: 1:9 ... 9:1 (different-person : same-person pairs).
DEFAULT_RATIOS = tuple(f"{n}:{10 - n}" for n in range(1, 10))
#: The head name of the base backbone's rows (nothing trained).
BASE_HEAD = "base"
#: Columns of sweep.csv, in order.
COLUMNS = ("setting", "ratio", "negative_fraction", "images_per_identity", "head", "distance", "accuracy", "loss",
           "overlap",
           "overlap_histogram", "threshold", "rule", "auc", "eer", "n_same", "n_diff", "best_epoch", "report")


def parse_ratios(text: Union[str, Sequence[str]]):
    """``"1:9,2:8"`` (or a list) as :class:`~kface.pairs.Ratio` objects, repeats refused."""
    items = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if str(part).strip()]
    if not items:
        raise InputError("--ratios: give at least one ratio, e.g. 1:9,5:5,9:1")
    ratios = [parse_ratio(item) for item in items]
    if len({ratio.reduced for ratio in ratios}) != len(ratios):
        raise InputError(f"--ratios: the same ratio is listed twice in {','.join(items)}")
    return tuple(ratios)


def parse_choices(text: Union[str, Sequence[str]], valid: Sequence[str], option: str) -> tuple[str, ...]:
    """``"a,b"`` (or a list) as a tuple of names, each one of ``valid``, none repeated."""
    items = [part.strip() for part in (text.split(",") if isinstance(text, str) else text) if str(part).strip()]
    if not items:
        raise InputError(f"{option}: give at least one of {', '.join(valid)}")
    unknown = [item for item in items if item not in valid]
    if unknown:
        raise InputError(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise InputError(f"{option}: a value is listed twice in {','.join(items)}")
    return tuple(items)


def parse_heads(text: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``"siamese,lda"`` as head names of :data:`kface.training.heads.HEADS`."""
    from ..training.heads import HEADS

    return parse_choices(text, list(HEADS), "--heads")


def parse_distances(text: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``"euclidean,cosine"`` as distance names of :data:`kface.distances.DISTANCES`."""
    return parse_choices(text, list(DISTANCES), "--distance")


def parse_images_per_identity(text: Union[str, Sequence, None]) -> tuple[Optional[int], ...]:
    """``"5,10"`` as ``(5, 10)``; ``None``/empty as ``(None,)`` (all images); ``all`` as None in a list."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return (None,)
    items = text.split(",") if isinstance(text, str) else list(text)
    values: list[Optional[int]] = []
    for item in items:
        word = str(item).strip().lower()
        if word == "all":
            values.append(None)
            continue
        try:
            value = int(word)
        except ValueError:
            raise InputError(f"--images-per-identity: expected numbers such as 5,10 (or all), got {item!r}") from None
        if value < 2:
            raise InputError(f"--images-per-identity: a same-person pair needs 2 or more images, got {value}")
        values.append(value)
    if len(set(values)) != len(values):
        raise InputError(f"--images-per-identity: a value is listed twice in {text!r}")
    return tuple(values)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: the dataset, the grid, the pair sampling, and the settings passed on to training and reports.

    ``train`` holds :class:`kface.training.run.TrainConfig` settings (``epochs``, ``backbone``, ``lr``, ...;
    an unknown key fails when the first run is configured); ``pairs``/``out``/``seed`` and
    ``head``/``distance`` there are set by the sweep (from ``heads`` and ``distances``).
    """

    dataset: str
    root: str
    out: str
    dataset_options: dict = field(default_factory=dict)
    ratios: tuple = DEFAULT_RATIOS
    images_per_identity: tuple = (None,)
    heads: tuple = ("siamese",)
    distances: tuple = ("euclidean",)
    pairs: int = 2000
    split: tuple = (0.8, 0.1, 0.1)
    hard_negatives: bool = False
    group_by: Optional[str] = None  # keep each group (e.g. family) in one split
    seed: int = 0
    rule: str = "intersection"
    samples: Union[int, str] = 400
    train: dict = field(default_factory=dict)
    #: Score the base backbone too: None = when heads or distances are compared.
    baseline: Optional[bool] = None

    @property
    def scores_baseline(self) -> bool:
        return self.baseline if self.baseline is not None else _compares_models(self)

    def to_dict(self) -> dict:
        """JSON-ready settings (ratios as text), recorded in sweep.json."""
        values = asdict(self)
        values["ratios"] = [str(ratio) for ratio in self.ratios]
        values["images_per_identity"] = list(self.images_per_identity)
        values["heads"] = list(self.heads)
        values["distances"] = list(self.distances)
        values["split"] = list(self.split)
        return values


@dataclass(frozen=True)
class Setting:
    """One cell of the grid and where its files go."""

    ratio: object  # kface.pairs.Ratio
    images_per_identity: Optional[int]
    head: str = "siamese"
    distance: str = "euclidean"
    tagged: bool = False  # the name carries the head and distance (several, or not the paper's, are swept)

    @property
    def pairs_name(self) -> str:
        """``k5-ratio-4-6`` (or ``ratio-4-6`` with every image): the pair file, shared by heads and distances."""
        ratio = f"ratio-{self.ratio.negatives}-{self.ratio.positives}"
        return f"k{self.images_per_identity}-{ratio}" if self.images_per_identity else ratio

    @property
    def name(self) -> str:
        """The pair name, then ``-<head>-<distance>`` when the setting is tagged."""
        return f"{self.pairs_name}-{self.head}-{self.distance}" if self.tagged else self.pairs_name

def sweep_config(dataset: str, root: str, out: str, layout_options: dict, *, ratios: str,
                 images_per_identity: Optional[str], heads: str, distances: str, split: str, rule: str, samples: str,
                 train: dict, **settings) -> SweepConfig:
    """A SweepConfig from the command line's text: the grid, split, rule and samples parsed, the layout options
    checked, and the training settings not given (None) left out, so that the chosen recipe's defaults apply."""
    return SweepConfig(dataset=dataset, root=root, out=out, dataset_options=dataset_options(dataset, **layout_options),
                       ratios=parse_ratios(ratios), images_per_identity=parse_images_per_identity(images_per_identity),
                       heads=parse_heads(heads), distances=parse_distances(distances), split=parse_split(split),
                       rule=str(parse_rule(rule)), samples=parse_samples(samples),
                       train={name: value for name, value in train.items() if value is not None}, **settings)


def settings_of(config: SweepConfig) -> list[Setting]:
    """The grid in table order: images per identity outermost, then the ratios as given, heads (the base
    backbone first, when scored), distances."""
    tagged = _tagged(config)
    heads = ((BASE_HEAD,) if config.scores_baseline else ()) + tuple(config.heads)
    return [Setting(parse_ratio(ratio), k, head, distance, tagged) for k in config.images_per_identity
            for ratio in config.ratios for head in heads for distance in config.distances]


def _compares_models(config: SweepConfig) -> bool:
    """Whether heads or distances are part of the grid (anything but the paper's siamese + Euclidean)."""
    return tuple(config.heads) != ("siamese",) or tuple(config.distances) != ("euclidean",)


def _tagged(config: SweepConfig) -> bool:
    """Whether setting names carry the head and distance: several models share each pair file."""
    return _compares_models(config) or config.scores_baseline


def run_sweep(config: SweepConfig, *, resume: bool = False, progress: bool = False,
              cache: Union[bool, CacheSetting] = True, command: Optional[str] = None) -> list[dict]:
    """Run every setting of ``config`` (sample, train, report) and write the sweep tables; return the rows."""
    out = Path(config.out)
    if not resume and out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out} is not empty; add --resume to continue that sweep, or choose another --out")
    settings = settings_of(config)
    pair_files = {setting.pairs_name: out / "pairs" / f"{setting.pairs_name}.csv" for setting in settings}
    for setting in settings:  # settings training cannot take (e.g. --loss arcface with Euclidean) fail first
        try:
            _train_config(config, setting, pair_files[setting.pairs_name])
        except InputError as error:
            raise InputError(f"setting {setting.name}: {error}") from None
    index = load_dataset(config.dataset, config.root, progress=progress, **config.dataset_options)
    for line in index.problems.lines():
        log.warning("%s", line)
    sampled = set()
    for setting in settings:  # all pair files first: an impossible setting fails before any training
        if setting.pairs_name in sampled:
            continue
        sampled.add(setting.pairs_name)
        request = PairRequest(setting.ratio, config.pairs, tuple(config.split), setting.images_per_identity,
                              config.seed, config.hard_negatives, config.group_by)
        try:
            make_pair_file(index, request, pair_files[setting.pairs_name])
        except InputError as error:
            raise InputError(f"setting {setting.pairs_name}: {error}") from None
    rows = []
    for number, setting in enumerate(settings, start=1):
        log.info("sweep %d/%d: %s", number, len(settings), setting.name)
        rows.append(_run_setting(config, setting, pair_files[setting.pairs_name], resume=resume, progress=progress,
                                 cache=cache))
    write_sweep(out, config, rows, command)
    return rows


def _run_setting(config: SweepConfig, setting: Setting, pair_file: Path, *, resume: bool, progress: bool,
                 cache: Union[bool, CacheSetting]) -> dict:
    from ..training.run import HISTORY, LAST, MODEL, train

    train_config = _train_config(config, setting, pair_file)
    run_dir, report_dir = Path(train_config.out), Path(config.out) / setting.name
    if setting.head == BASE_HEAD:
        return _row(config, setting, _base_report(config, train_config, pair_file, report_dir, resume=resume,
                                                  progress=progress, cache=cache), None, report_dir)
    metrics_file = report_dir / "metrics.json"
    if resume and metrics_file.is_file() and (run_dir / MODEL).is_file():
        body = json.loads(metrics_file.read_text(encoding="utf-8"))
    else:
        result = train(train_config, resume=resume and (run_dir / LAST).is_file(), progress=progress,
                       cache=cache_setting(cache))
        verifier = report_verifier(str(result.model_path), detector=train_config.detector,
                                   fallback=train_config.fallback,
                                   device=train_config.device, cache=cache, progress=progress,
                                   max_pixels=train_config.max_pixels)
        body = overlap_report(pair_file, verifier, rule=config.rule, samples=config.samples, seed=config.seed,
                              out_dir=report_dir, command=None, progress=progress)
    history = json.loads((run_dir / HISTORY).read_text(encoding="utf-8"))
    return _row(config, setting, body, (history.get("best") or {}).get("epoch"), report_dir)


def _train_config(config: SweepConfig, setting: Setting, pair_file: Path):
    """The training settings of one cell of the grid (checked as any TrainConfig is)."""
    from ..training.run import TrainConfig

    return TrainConfig.from_dict({**config.train, "pairs": str(pair_file),
                                  "out": str(Path(config.out) / "runs" / setting.name),
                                  "seed": config.seed, "threshold_rule": config.rule,
                                  # The base row uses only the face and backbone settings.
                                  "head": config.heads[0] if setting.head == BASE_HEAD else setting.head,
                                  "distance": setting.distance})


def _base_report(config: SweepConfig, train_config, pair_file: Path, report_dir: Path, *, resume: bool,
                 progress: bool, cache: Union[bool, CacheSetting]) -> dict:
    """The overlap report of the untrained backbone with the setting's distance (threshold chosen on val)."""
    metrics_file = report_dir / "metrics.json"
    if resume and metrics_file.is_file():
        return json.loads(metrics_file.read_text(encoding="utf-8"))
    embedder = Embedder(train_config.backbone, detector=train_config.detector, fallback=train_config.fallback,
                        tta=train_config.tta, device=train_config.device, weights=train_config.weights, cache=cache,
                        progress=progress, max_pixels=train_config.max_pixels)
    verifier = Verifier(embedder, math.nan, "chosen on val", distance=train_config.distance)
    return overlap_report(pair_file, verifier, rule=config.rule, samples=config.samples, seed=config.seed,
                          out_dir=report_dir, command=None, progress=progress)


def _row(config: SweepConfig, setting: Setting, body: dict, best_epoch: Optional[int], report_dir: Path) -> dict:
    return {
        "setting": setting.name,
        "ratio": str(setting.ratio),
        "negative_fraction": setting.ratio.negative_fraction,
        "images_per_identity": setting.images_per_identity,
        "head": setting.head,
        "distance": setting.distance,
        **{key: body.get(key) for key in ("accuracy", "loss", "overlap", "overlap_histogram", "threshold", "rule",
                                          "auc", "eer", "n_same", "n_diff")},
        "best_epoch": best_epoch,
        "report": os.path.relpath(report_dir, config.out),
    }


# --------------------------------------------------------------------------- the tables


def write_sweep(out: Path, config: SweepConfig, rows: list[dict], command: Optional[str] = None) -> None:
    """Write ``sweep.csv``, ``sweep.md``, ``sweep.png`` and ``sweep.json`` into ``out``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in COLUMNS})
    write_text(out / "sweep.csv", buffer.getvalue())
    _plot_sweep(out / "sweep.png", rows, _tagged(config))
    write_text(out / "sweep.md", sweep_markdown(config, rows, command))
    write_json(out / "sweep.json", {"config": config.to_dict(), "command": command, "rows": rows})


def _k_label(k: Optional[int]) -> str:
    return "every image per identity" if k is None else f"{k} images per identity"


def _best(rows: list[dict], key: str, lower: bool) -> Optional[float]:
    values = [row[key] for row in rows if row.get(key) is not None]
    if not values:
        return None
    return min(values) if lower else max(values)


def sweep_markdown(config: SweepConfig, rows: list[dict], command: Optional[str] = None) -> str:
    """``sweep.md``: one table per images-per-identity setting, laid out like the study's (best in bold)."""
    train = config.train
    samples = "every pair" if config.samples == "all" else f"at most {config.samples} pairs per class"
    lines = [
        "# Ratio sweep",
        "",
        f"Dataset `{config.dataset}` at `{config.root}`; {config.pairs} pairs per setting (split "
        f"{':'.join(f'{share:g}' for share in config.split)}, seed {config.seed}); "
        f"{train.get('epochs', 'default')} epochs on {train.get('backbone', 'dlib-resnet')}; heads "
        f"{', '.join(config.heads)}"
        + (f" and `{BASE_HEAD}` (the backbone alone, nothing trained)" if config.scores_baseline else "")
        + f"; distances {', '.join(config.distances)}. For each setting "
        f"the threshold is chosen by the `{config.rule}` rule on the val split; accuracy, loss (test BCE) and "
        f"overlap (Gaussian KDE) are measured on the test split ({samples}). "
        f"Ratio = different-person : same-person pairs. Best value per column in bold.",
        "",
    ]
    tagged = _tagged(config)
    for k in dict.fromkeys(row["images_per_identity"] for row in rows):
        group = [row for row in rows if row["images_per_identity"] == k]
        best = {"accuracy": _best(group, "accuracy", False), "loss": _best(group, "loss", True),
                "overlap": _best(group, "overlap", True)}

        def cell(row: dict, key: str, text: str, best: dict = best) -> str:
            return f"**{text}**" if row.get(key) is not None and row[key] == best.get(key) else text

        lines += [f"## {_k_label(k)}", "",
                  "| ratio | " + ("head | distance | " if tagged else "")
                  + "accuracy | loss | overlap | threshold | AUC | EER | report |",
                  "|---|" + ("---|---|" if tagged else "") + "---:|---:|---:|---:|---:|---:|---|"]
        for row in group:
            accuracy = "—" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
            loss = "—" if row["loss"] is None else f"{row['loss']:.4f}"
            overlap = "—" if row["overlap"] is None else f"{row['overlap']:.4f}"
            model = f"{row['head']} | {row['distance']} | " if tagged else ""
            lines.append(f"| {row['ratio']} | {model}{cell(row, 'accuracy', accuracy)} | {cell(row, 'loss', loss)} | "
                         f"{cell(row, 'overlap', overlap)} | {row['threshold']:.4f} | {row['auc']:.4f} | "
                         f"{100 * row['eer']:.2f}% | [{row['setting']}]({row['report']}/report.md) |")
        lines.append("")
    lines += ["![accuracy, loss, overlap and threshold against the ratio](sweep.png)", ""]
    if command:
        lines += ["## Reproduce", "", "```", command, "```", ""]
    return "\n".join(lines)


def _plot_sweep(path: Path, rows: list[dict], tagged: bool = False) -> None:
    plt = pyplot()
    import matplotlib.ticker

    panels = (("accuracy", "accuracy (test)"), ("loss", "BCE loss (test)"), ("overlap", "overlap area (test, KDE)"),
              ("threshold", "threshold (chosen on val)"))
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    ratios = list(dict.fromkeys((row["negative_fraction"], row["ratio"]) for row in rows))
    # One line per images-per-identity setting (and per head and distance when those are swept).
    lines = dict.fromkeys((row["images_per_identity"], row["head"], row["distance"]) for row in rows)
    for k, head, distance in lines:
        group = sorted((row for row in rows if (row["images_per_identity"], row["head"], row["distance"])
                        == (k, head, distance)), key=lambda row: row["negative_fraction"])
        x = [row["negative_fraction"] for row in group]
        label = f"{_k_label(k)}, {head}, {distance}" if tagged else _k_label(k)
        for axis, (key, _) in zip(axes.flat, panels):
            y = [np.nan if row[key] is None else row[key] for row in group]
            axis.plot(x, y, "o-", label=label)
    axes[0, 0].yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(xmax=1))
    for axis, (_, title) in zip(axes.flat, panels):
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
        axis.set_xticks([fraction for fraction, _ in ratios], [ratio for _, ratio in ratios])
    for axis in axes[1]:
        axis.set_xlabel("different : same pairs")
    axes[0, 0].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path)
