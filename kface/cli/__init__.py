"""The `kface` command line: each command parses its options, calls the Python API and prints.

Errors are one line on stderr, ``error: ...``, exit 2 for bad input or usage and 1 for runtime failures
(see kface.errors). Each command's module is imported only when it runs, and heavy libraries only inside
the commands, so ``kface --help`` and ``kface verify`` stay fast.
"""
from __future__ import annotations

import click

from .. import __version__
from .errors import run
from .options import LazyGroup

#: Every command, imported only when it runs (or when --help lists them).
COMMANDS = {
    "embed": "kface.cli.embed:embed", "verify": "kface.cli.verify:verify", "analyze": "kface.cli.analyze:analyze",
    "make-pairs": "kface.cli.training:make_pairs", "train": "kface.cli.training:train",
    "sweep": "kface.cli.training:sweep", "train-attributes": "kface.cli.training:train_attributes",
    "overlap-report": "kface.cli.evaluation:overlap_report", "benchmark": "kface.cli.evaluation:benchmark",
    "models": "kface.cli.models:models", "export": "kface.cli.models:export", "serve": "kface.cli.serve:serve",
    "enroll": "kface.cli.gallery:enroll", "search": "kface.cli.gallery:search",
    "gallery": "kface.cli.gallery:gallery_group", "cluster": "kface.cli.gallery:cluster",
    "train-age-editor": "kface.cli.ageedit:train_age_editor", "age-edit": "kface.cli.ageedit:age_edit",
}


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kface")
def cli() -> None:
    """kface: face verification for Korean faces.

    Pair sampling, Siamese fine-tuning on a frozen face backbone, overlap-area evaluation with measured
    thresholds. Every command answers --help.
    """


def main() -> None:
    """Console-script entry point: every failure, kface's or not, ends as one ``error:`` line."""
    run(cli, prog_name="kface")


if __name__ == "__main__":
    main()
