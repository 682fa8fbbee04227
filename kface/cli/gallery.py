"""The gallery commands: ``kface enroll``, ``kface search``, ``kface gallery ...``, ``kface cluster`` and
``kface benchmark identification``, thin over :mod:`kface.galleries` (registered by kface.cli)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import click

from ..api import FaceOptions, load_verifier
from ..datasets import load_dataset
from ..datasets.common import IMAGE_EXTENSIONS
from ..embeddings.parquet import read_vectors, verifier_model_key
from ..errors import InputError
from ..evaluation.identification import IdentificationProtocol, run_identification
from ..galleries import Gallery
from ..galleries.clustering import bcubed
from ..galleries.stored import enroll_embeddings
from ..models import STOCK_MODEL, default_model
from ..toolkit import cluster as group_faces
from ..toolkit import cluster_vectors
from ..util.outputs import atomic_path
from .names import DETECTOR_NAMES, FALLBACK_NAMES, IDENTITY_DATASETS
from .options import (
    common_options,
    device_option,
    handle_errors,
    json_option,
    operating_point_options,
    print_json,
    setup_logging,
)


def gallery_option(function):
    return click.option("--gallery", "gallery_path", required=True, type=click.Path(dir_okay=False),
                        help="The gallery file (SQLite; its index is kept beside it as GALLERY.index).")(function)


def verifier_options(function):
    """--model, --detector, --fallback: default to the gallery's own model and settings."""
    function = click.option("--fallback", type=click.Choice(FALLBACK_NAMES), default=None,
                            help="When no face is found: fail (none, default) or use the whole image.")(function)
    function = click.option("--detector", type=click.Choice(DETECTOR_NAMES), default=None,
                            help="Face detector [default: auto].")(function)
    function = click.option("--model", help="The model to embed with: a shipped name (korean, dlib) or a trained "
                                            "runs/NAME/model.pt [default: the gallery's own; for a new gallery, "
                                            "kface's default model]. Another model than the gallery's is "
                                            "refused.")(function)
    return function


def dataset_source_options(function):
    function = click.option("--manifest", type=click.Path(dir_okay=False),
                            help="--dataset csv: the manifest (path,identity,...), paths relative to --root.")(function)
    function = click.option("--root", type=click.Path(), help="--dataset: the dataset's root folder.")(function)
    function = click.option("--dataset", type=click.Choice(IDENTITY_DATASETS),
                            help="Read a whole dataset (identities from its layout) instead of IMAGE "
                                 "arguments.")(function)
    return function


def _open(gallery_path, model=None, create=False, **options):
    return Gallery.open(gallery_path, model, create=create, **options)


# -- enroll and search -----------------------------------------------------------------------------
@click.command()
@click.argument("images", nargs=-1, type=click.Path())
@gallery_option
@click.option("--identity", help="The person's name for IMAGE arguments.")
@dataset_source_options
@click.option("--embeddings", type=click.Path(),
              help="Enroll the vectors of NAME.parquet (kface embed --out NAME.parquet) under its identity column, "
                   "without running the network; the rows must be of the gallery's model.")
@verifier_options
@click.option("--batch", type=click.IntRange(1), default=None,
              help="--dataset, --embeddings: images embedded and committed together [default: 64].")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Face-finding worker processes [default: the CPU cores; 0: this process].")
@device_option
@json_option("Print a JSON summary on stdout.")
@common_options
@handle_errors
def enroll(images, gallery_path, identity, dataset, root, manifest, embeddings, model, detector, fallback, batch,
           workers,
           device, as_json, quiet, cache):
    """Enroll faces in a gallery (created when missing): IMAGE... --identity NAME, or a whole dataset.

    Images already in the gallery (same content) are skipped. With --dataset, faceless or unreadable
    images are skipped and listed, and progress is committed every --batch images: an interrupted
    enrolment keeps every image it reported and a rerun finishes the rest. Example:
    kface enroll --gallery family.kgallery photos/mina*.jpg --identity mina
    """
    setup_logging(quiet)
    _check_enrol_sources(images, identity, dataset, root, embeddings)
    path = Path(gallery_path)
    say = (lambda text: None) if quiet else (lambda text: click.echo(text, err=True))
    # A new gallery is created at the first commit (Gallery.open(create=True)): a failed enrolment leaves none.
    with _open(path, model, create=True, detector=detector, fallback=fallback, device=device,
               cache=cache, progress=not quiet) as gallery:
        if workers is not None:  # the embedder behind the model (a trained model's wraps one)
            embedder = gallery.verifier.embedder
            getattr(embedder, "embedder", embedder).workers = workers

        def committed(report) -> None:
            say(f"note: enrolled {report.enrolled} (of {report.total}) in {path}")

        if embeddings:
            report = enroll_embeddings(gallery, embeddings, batch=batch, on_commit=committed)
        elif dataset:
            layout = {"manifest": manifest} if manifest else {}
            report = gallery.enroll_dataset(dataset, root, layout, batch=batch, progress=not quiet,
                                            on_commit=committed)
        else:
            report = gallery.enroll(list(images), identity)
        people, total = gallery.store.counts()
    for _, message in sorted(report.skipped.items()):
        say(f"skipped: {message}")
    for name, owner in sorted(report.conflicts.items()):
        say(f"skipped: {name} is already enrolled as {owner!r}")
    summary = {"gallery": str(path), **report.to_dict(), "identities": people, "images": total}
    if as_json:
        print_json(summary)
    elif not quiet:
        click.echo(f"enrolled {report.enrolled} new images ({report.already} already there, "
                   f"{len(report.skipped)} skipped); {path} holds {total} images of {people} people", err=True)


def _check_enrol_sources(images, identity, dataset, root, embeddings) -> None:
    """One source of faces: IMAGE... with --identity, a --dataset with --root, or stored --embeddings."""
    if embeddings:
        if images or identity or dataset:
            raise click.UsageError("--embeddings enrolls a Parquet dataset's own identities; give no IMAGE, "
                                   "--identity or --dataset")
    elif dataset:
        if images or identity:
            raise click.UsageError("--dataset enrolls a dataset's own identities; give no IMAGE or --identity")
        if not root:
            raise click.UsageError("--dataset needs --root DIR")
    else:
        if not images:
            raise click.UsageError("give IMAGE... --identity NAME, or --dataset KIND --root DIR")
        if not identity:
            raise click.UsageError("IMAGE arguments need --identity NAME")


@click.command()
@click.argument("image", type=click.Path())
@gallery_option
@click.option("--top", type=click.IntRange(1), default=5, show_default=True, help="Identities to list.")
@click.option("--open-set-threshold", type=float,
              help="Distance within which the best match counts as found [default: the gallery's, measured "
                   "at FPIR 1%].")
@operating_point_options(abstain=False)
@verifier_options
@device_option
@json_option()
@common_options
@handle_errors
def search(image, gallery_path, top, open_set_threshold, operating_point, far, model, detector, fallback, device,
           as_json, quiet, cache):
    """Who in the gallery is the face in IMAGE? Ranked identities with distances, and the open-set answer
    ("no one in the gallery" when nobody is within the open-set threshold). --operating-point/--far make the
    match threshold the model card's 1:1 threshold at that point (its false-accept rate is per comparison:
    a gallery of N people lets a stranger through up to N times as often)."""
    setup_logging(quiet)
    with _open(gallery_path, model, detector=detector, fallback=fallback, device=device, cache=cache,
               progress=False) as gallery:
        if operating_point is not None or far is not None:
            if open_set_threshold is not None:
                raise click.UsageError("give --open-set-threshold or an operating point, not both")
            open_set_threshold = gallery.verifier.point_threshold(operating_point, far)[1]
        answer = gallery.search(image, top=top, open_set_threshold=open_set_threshold)
    if as_json:
        print_json(answer.to_dict())
        return
    for rank, candidate in enumerate(answer.candidates, 1):
        verdict = "same person" if candidate.same_at_threshold else "different"
        click.echo(f"{rank}. {candidate.identity}  distance {candidate.distance:.4f}  ({verdict} at the 1:1 threshold "
                   f"{answer.threshold:.4f}; {candidate.image})")
    if answer.match is not None:
        click.echo(f"match: {answer.match} (distance {answer.candidates[0].distance:.4f} <= open-set threshold "
                   f"{answer.open_set_threshold:.4f})")
    else:
        best = answer.candidates[0]
        click.echo(f"no one in the gallery (nearest {best.identity} at {best.distance:.4f} > open-set threshold "
                   f"{answer.open_set_threshold:.4f})")


# -- gallery maintenance ---------------------------------------------------------------------------
@click.group("gallery")
def gallery_group() -> None:
    """List, inspect, rebuild or remove people from a gallery."""


@gallery_group.command("list")
@gallery_option
@json_option()
@handle_errors
def gallery_list(gallery_path, as_json):
    """The enrolled identities and their image counts."""
    with _open(gallery_path) as gallery:
        people = gallery.identities()
    if as_json:
        print_json({"gallery": gallery_path, "identities": people})
        return
    for person in people:
        click.echo(f"{person['identity']}\t{person['images']}")


@gallery_group.command("remove")
@gallery_option
@click.option("--identity", required=True, help="The person to delete, with every embedding of theirs.")
@json_option()
@handle_errors
def gallery_remove(gallery_path, identity, as_json):
    """Delete a person for good: their rows are deleted with secure_delete, the file is VACUUMed and the
    index rebuilt without them."""
    with _open(gallery_path) as gallery:
        removed = gallery.remove(identity)
    if as_json:
        print_json({"gallery": gallery_path, "identity": identity, "removed_images": removed})
    else:
        click.echo(f"removed {identity} ({removed} images) from {gallery_path}", err=True)


@gallery_group.command("stats")
@gallery_option
@json_option()
@handle_errors
def gallery_stats(gallery_path, as_json):
    """People, images, the model and thresholds, and the index's state."""
    with _open(gallery_path) as gallery:
        stats = gallery.stats()
    if as_json:
        print_json(stats)
        return
    index = stats["index"]
    click.echo(f"{stats['gallery']}: {stats['images']} images of {stats['identities']} people; model "
               f"{stats['model']} ({stats['model_key']}, {stats['dim']}-d, {stats['distance']}); 1:1 threshold "
               f"{stats['threshold']:.4f}; open-set threshold {stats['open_set_threshold']:.4f} "
               f"({stats['open_set_source']}); index: "
               + ("none (built on the next search)" if index is None else
                  f"{index['kind']}, {index['count']} vectors, {'current' if index['current'] else 'stale'}"))


@gallery_group.command("rebuild")
@gallery_option
@handle_errors
def gallery_rebuild(gallery_path):
    """Rebuild the index file from the gallery (searches also do this when it is missing or stale), and
    compact the file (VACUUM), leaving no trace of removed people."""
    with _open(gallery_path) as gallery:
        index = gallery.rebuild()
        gallery.store.scrub()
    click.echo(f"rebuilt the {index.kind} index of {gallery_path} ({index.count} vectors)", err=True)


# -- clustering ------------------------------------------------------------------------------------
@click.command()
@click.argument("inputs", nargs=-1, type=click.Path())
@dataset_source_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="clusters.csv: path,cluster[,identity].")
@click.option("--method", type=click.Choice(["chinese-whispers", "components", "agglomerative"]),
              default="agglomerative", show_default=True, help="Grouping method (agglomerative measured best).")
@click.option("--threshold", type=float,
              help="Link distance [default: the one measured for the model, else its 1:1 threshold].")
@click.option("--model", help="korean, dlib or runs/NAME/model.pt [default: kface's default model].")
@click.option("--detector", type=click.Choice(DETECTOR_NAMES), default="auto", show_default=True)
@click.option("--fallback", type=click.Choice(FALLBACK_NAMES), default="none", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of chinese-whispers' node order.")
@click.option("--embeddings", type=click.Path(),
              help="Cluster the vectors of NAME.parquet (kface embed --out NAME.parquet, the model's key) instead of "
                   "embedding images; its identity column, where every row has one, scores the grouping.")
@device_option
@json_option("Print a JSON summary on stdout.")
@common_options
@handle_errors
def cluster(inputs, dataset, root, manifest, out, method, threshold, model, detector, fallback, seed, embeddings,
            device,
            as_json, quiet, cache):
    """Group the faces of DIR (or IMAGE..., or a --dataset) by person into clusters.csv.

    Faceless images are left out and listed. With --dataset, the true identities are written beside the
    clusters and the grouping is scored (BCubed precision, recall, F1).
    """
    setup_logging(quiet)
    options = FaceOptions(detector=detector, fallback=fallback, device=device, cache=cache, progress=not quiet)
    verifier = load_verifier(model, options=options)
    if embeddings:
        if inputs or dataset:
            raise click.UsageError("--embeddings clusters a Parquet dataset's rows; give no DIR/IMAGE or --dataset")
        paths, vectors, truth = _stored_vectors(embeddings, verifier)
        found = cluster_vectors(paths, vectors, verifier, method=method, threshold=threshold, seed=seed)
    else:
        paths, truth = _cluster_inputs(inputs, dataset, root, manifest)
        found = group_faces(paths, method=method, threshold=threshold, seed=seed, verifier=verifier)
    if not quiet:
        for message in found.skipped.values():
            click.echo(f"skipped: {message}", err=True)
    truth_of = None if truth is None else dict(zip(paths, truth))
    kept_truth = None if truth_of is None else [truth_of[path] for path in found.paths]
    labels, limit, keep = found.labels, found.threshold, found.paths
    _write_clusters(out, found.paths, labels, kept_truth)
    summary = {"out": out, "faces": len(keep), "skipped": len(found.skipped), "clusters": found.count,
               "method": method, "threshold": limit, "model": found.model, "seed": seed}
    if truth is not None:
        summary["bcubed"] = bcubed(labels, kept_truth)
    if as_json:
        print_json(summary)
    elif not quiet:
        score = "" if truth is None else (f"; BCubed precision {summary['bcubed']['precision']:.3f}, recall "
                                          f"{summary['bcubed']['recall']:.3f}, F1 {summary['bcubed']['f1']:.3f}")
        click.echo(f"{len(keep)} faces in {summary['clusters']} clusters ({method}, threshold {limit:.4f}){score}; "
                   f"wrote {out}", err=True)


def _stored_vectors(folder, verifier):
    """Paths, vectors and (where every row has one) identities of a Parquet dataset's rows of ``verifier``'s model."""
    stored = read_vectors(folder, verifier_model_key(verifier))
    return stored.paths, stored.vectors, stored.identities if all(stored.identities) else None


def _cluster_inputs(inputs, dataset, root, manifest):
    """Image paths to cluster, and their true identities for a dataset (else None)."""
    if dataset:
        if inputs:
            raise click.UsageError("give either DIR/IMAGE... or --dataset, not both")
        if not root:
            raise click.UsageError("--dataset needs --root DIR")
        index = load_dataset(dataset, root, **({"manifest": manifest} if manifest else {}))
        return ([str(index.absolute_path(i)) for i in range(len(index))],
                [index.identity_names[c] for c in index.identity_codes])
    if not inputs:
        raise click.UsageError("give a folder, IMAGE..., or --dataset KIND --root DIR")
    paths: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(sorted(str(p) for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            paths.append(item)
    if not paths:
        raise InputError(f"no images under {', '.join(inputs)}")
    return paths, None


def _write_clusters(out, paths, labels, truth) -> None:
    with atomic_path(out, suffix=".csv") as temp:
        with open(temp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "cluster"] + (["identity"] if truth is not None else []))
            for i, path in enumerate(paths):
                writer.writerow([path, int(labels[i])] + ([truth[i]] if truth is not None else []))


# -- the identification protocol -------------------------------------------------------------------
@click.command("identification")
@click.option("--dataset", required=True, type=click.Choice(IDENTITY_DATASETS), help="Layout of the data under --root.")
@click.option("--root", required=True, type=click.Path(), help="The dataset's root folder.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="--dataset csv: the manifest.")
@click.option("--groups", "groups_file", type=click.Path(dir_okay=False),
              help="Use only the groups (families) listed in this file, e.g. kface/models/korean-heldout-families.txt.")
@click.option("--group-by", default="family", show_default=True, help="The column --groups names values of.")
@click.option("--keep-outside-copies", is_flag=True,
              help="With --groups: keep images whose identical file is also in another group (left out by default: "
                   "a model trained on the other groups has seen them).")
@click.option("--gallery-age", default="youngest", show_default=True,
              help="The age class each person is enrolled at: youngest, oldest, or a class (e.g. a).")
@click.option("--age-column", default="age_class", show_default=True, help="The age label (none: first photo).")
@click.option("--unenrolled-share", type=float, default=0.2, show_default=True,
              help="Share of the enrollable people left out, whose photos are non-mated probes.")
@click.option("--unenrolled-by", default="identity", show_default=True,
              help="Leave people out one by one (identity), or whole groups by a column such as family.")
@click.option("--probes-per-person", type=click.IntRange(0), default=0, show_default=True,
              help="At most this many probes of one person (0: all).")
@click.option("--identities", type=click.IntRange(0), default=0, show_default=True,
              help="A seeded sample of this many people (0: all), to bound the embedding time.")
@click.option("--fpir", type=float, default=0.01, show_default=True, help="FPIR the open-set threshold is chosen at.")
@click.option("--model", "models", multiple=True,
              help="A model to score (korean, dlib, runs/NAME/model.pt); repeatable [default: the default model and "
                   "dlib].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of every choice of people and probes.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for identification.json/.md.")
@device_option
@json_option("Print identification.json's rows on stdout.")
@common_options
@handle_errors
def benchmark_identification(dataset, root, manifest, groups_file, group_by, keep_outside_copies, gallery_age,
                             age_column, unenrolled_share,
                             unenrolled_by, probes_per_person, identities, fpir, models, seed, out, device, as_json,
                             quiet, cache):
    """1:N identification, closed and open set: rank-1, rank-5 and FNIR at FPIR 1%.

    Example (the Korean model's held-out families): kface benchmark identification --dataset csv
    --root korean_family --manifest korean_family/identities.csv --groups
    kface/models/korean-heldout-families.txt --out reports/identification-korean
    """
    setup_logging(quiet)
    protocol = IdentificationProtocol(gallery_age, age_column, unenrolled_share, probes_per_person, identities, fpir,
                                      seed, unenrolled_by)
    chosen = tuple(models) or tuple(dict.fromkeys([default_model(), STOCK_MODEL]))
    rows = run_identification(dataset, root, {"manifest": manifest}, protocol, models=chosen, out=Path(out),
                              groups_file=groups_file, group_by=group_by, keep_outside_copies=keep_outside_copies,
                              device=device, cache=cache,
                              progress=not quiet,
                              log=(lambda text: None) if quiet else (lambda text: click.echo(f"note: {text}",
                                                                                             err=True)))
    if as_json:
        print_json({"out": out, "rows": rows})
    elif not quiet:
        click.echo(Path(out, "identification.md").read_text(encoding="utf-8"), nl=False)
