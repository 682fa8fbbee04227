"""The `kface` command line: each command parses its options, calls the Python API and prints.

Errors are one line on stderr, ``error: ...``, exit 2 for bad input or usage and 1 for runtime failures
(see kface.errors). Heavy libraries are imported inside the commands, so ``kface --help`` stays fast.
"""
from __future__ import annotations

import click

from .. import __version__
from .evaluation import benchmark, overlap_report
from .gallery import register as register_gallery_commands
from .models import export, models
from .serve import serve
from .training import make_pairs, sweep, train, train_attributes
from .verify import analyze, embed, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kface")
def cli() -> None:
    """kface: face verification for Korean faces.

    Pair sampling, Siamese fine-tuning on a frozen face backbone, overlap-area evaluation with measured
    thresholds. Every command answers --help.
    """


for _command in (embed, verify, analyze, make_pairs, train, sweep, train_attributes, overlap_report, benchmark, models,
                 export, serve):
    cli.add_command(_command)
register_gallery_commands(cli, benchmark)  # enroll, search, gallery, cluster, benchmark identification


def main() -> None:
    """Console-script entry point: every failure, kface's or not, ends as one ``error:`` line."""
    from .errors import run

    run(cli, prog_name="kface")


if __name__ == "__main__":
    main()
