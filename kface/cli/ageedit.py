"""The age-editing commands: ``kface train-age-editor`` and ``kface age-edit``."""
from __future__ import annotations

from pathlib import Path

import click

from ..ageedit.editor import age_edit as edit
from ..ageedit.editor import age_strip, checked_strength, parse_age_class, write_png
from ..datasets import dataset_options as checked_dataset_options
from ..errors import InputError
from .names import ATTRIBUTE_DATASETS
from .options import (
    dataset_options,
    device_option,
    handle_errors,
    json_option,
    print_json,
    setup_logging,
)


@click.command("train-age-editor")
@dataset_options(ATTRIBUTE_DATASETS)
@click.option("--group-by", default="family", show_default=True, metavar="COLUMN",
              help="Keep each group (a dataset column) on one side of the train/val split.")
@click.option("--exclude-groups", type=click.Path(dir_okay=False),
              help="A file of group names (one per line) never trained on, e.g. "
                   "kface/models/korean-heldout-families.txt.")
@click.option("--steps", type=click.IntRange(1), default=2400, show_default=True, help="Training steps (batches).")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--size", type=click.IntRange(32), default=64, show_default=True,
              help="Chip side the editor works at (a multiple of 8; 64 is what one CPU core trains in an hour).")
@click.option("--width", type=click.IntRange(1), default=16, show_default=True,
              help="Channels of the first layer (doubled at each downsampling).")
@click.option("--lr", type=float, default=2e-4, show_default=True,
              help="Adam learning rate (editor and discriminator).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, initialisation and batches.")
@click.option("--checkpoint-minutes", type=float, default=5.0, show_default=True,
              help="Write the checkpoint, log line and sample sheet this often.")
@device_option
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run folder: chips.npz, checkpoint.pt (resumed when present), log.jsonl, samples.png, "
                   "summary.json, editor.onnx.")
@json_option("Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes.")
@handle_errors
def train_age_editor(dataset, root, layout_options, group_by, exclude_groups, steps, batch_size, size, width, lr, seed,
                     checkpoint_minutes, device, out, as_json, quiet):
    """Train an age editor (feature-decomposition autoencoder, 8 Korean age classes) on a dataset with ages.

    Example: kface train-age-editor --dataset csv --root path/to/korean_family
    --exclude-groups kface/models/korean-heldout-families.txt --out runs/age-editor.
    The shipped editor: python -m kface.build.age_editor --root path/to/korean_family
    """
    setup_logging(quiet)
    from ..ageedit.train import EditorTrainConfig, dataset_chips, train_and_export
    config = EditorTrainConfig(out=out, size=size, width=width, batch_size=batch_size, steps=steps, lr=lr, seed=seed,
                               checkpoint_minutes=checkpoint_minutes, device=device)
    chips = dataset_chips(dataset, root, Path(out), size, group_by, exclude_groups,
                          checked_dataset_options(dataset, **layout_options), not quiet, device)
    summary = train_and_export(chips, config, progress=not quiet)
    if as_json:
        print_json(summary)
    elif not quiet:
        val = summary["val"]
        click.echo(f"{summary['steps']} steps in {summary['seconds']:.0f} s on {summary['device']}: val reconstruction "
                   f"L1 {val['reconstruction_l1']:.4f}, cycle L1 {val['cycle_l1']:.4f}; wrote {out}/editor.onnx",
                   err=True)


@click.command("age-edit")
@click.argument("image", type=click.Path())
@click.option("--to", "target", metavar="CLASS",
              help="Target age class: 0-6, 7-12, 13-19, 20-30, 31-45, 46-55, 56-66, 67+.")
@click.option("--all-ages", is_flag=True,
              help="Write one strip: the face's aligned chip, then the face at all 8 classes.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output PNG.")
@click.option("--chip", "chip_only", is_flag=True,
              help="Write the edited aligned chip (150 px) instead of the photo with the face pasted back.")
@click.option("--no-detail", is_flag=True,
              help="Enlarge the editor's 64 px output instead of carrying its change onto the 150 px chip.")
@click.option("--strength", type=float, default=1.0, show_default=True,
              help="Scale the edit (0 to 4): above 1 the age moves further and less of the person is kept.")
@click.option("--model", type=click.Path(dir_okay=False),
              help="A training run's editor.onnx [default: the shipped editor].")
@click.option("--detector", type=click.Choice(["dlib", "mtcnn", "auto"]), default="auto", show_default=True,
              help="Face detector (no face found is an error).")
@device_option
@json_option("Print a JSON summary on stdout.")
@handle_errors
def age_edit(image, target, all_ages, out, chip_only, no_detail, strength, model, detector, device, as_json):
    """Show the largest face of IMAGE at another age class.

    Example: kface age-edit photo.jpg --to 67+ --out old.png; kface age-edit photo.jpg --all-ages --out strip.png
    """
    if all_ages == (target is not None):
        raise InputError("give either --to CLASS or --all-ages")
    if target is not None:
        parse_age_class(target)  # a bad class fails before any image is read
    checked_strength(strength)  # as the class: before any image is read
    if all_ages:
        pixels, source = age_strip(image, model=model, detail=not no_detail, detector=detector, device=device,
                                   strength=strength)
        written, what = pixels, "a strip of the aligned face at all 8 classes"
        summary = {"out": out, "written": "strip", "source_class": source}
    else:
        result = edit(image, target, model=model, paste=not chip_only, detail=not no_detail, detector=detector,
                      device=device, strength=strength)
        written = result.chip if chip_only else result.image
        what = "the edited aligned chip" if chip_only else "the photo with the edited face pasted back"
        summary = {"out": out, "written": "chip" if chip_only else "photo", "source_class": result.source,
                   "target_class": result.target, "stage": result.stage}
    write_png(out, written)
    if as_json:
        print_json(summary)
    else:
        click.echo(f"wrote {what} to {out}", err=True)
