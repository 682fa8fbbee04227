"""The identification protocol (``kface benchmark identification``): closed- and open-set 1:N figures.

For each person with photos at two or more age classes, the gallery holds their photos at one age class
(``gallery_age``: their youngest by default, the missing-child case) and the probes are their photos at the
other ages (mated searches). A seeded share of those people is left out of the gallery, and with everyone
who has a single age class they make the non-mated searches (people who were never enrolled). Where the
data has no age labels (LFW), the gallery holds each person's first photo and the probes are the others.
Figures: rank-1 and rank-5 identification rates, and FNIR at FPIR 1% (the open-set threshold that lets 1%
of never-enrolled people match someone), beside FNIR and FPIR at the model's 1:1 threshold.
Restrict the data to a model's held-out families with ``groups_file`` (``kface/models/korean-heldout-families.txt``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..errors import InputError
from ..galleries.openset import DEFAULT_FPIR, identification_rates, ranks_of_mates
from ..pairs import identity_groups
from ..util.cache import CacheSetting
from ..util.outputs import write_json, write_text
from .groups import distinct_images, group_rows, load_index, read_group_list, restrict_groups
from .scoring import score_models


@dataclass(frozen=True)
class IdentificationProtocol:
    """The protocol's settings, recorded in what it writes."""

    gallery_age: str = "youngest"  # youngest, oldest, or one age class (e.g. "a")
    age_column: str = "age_class"
    unenrolled_share: float = 0.2  # of the people who could be enrolled, left out as strangers
    probes_per_person: int = 0  # at most this many probes of one person (0: all), a seeded choice
    identities: int = 0  # a seeded sample of this many people (0: all)
    fpir: float = DEFAULT_FPIR
    seed: int = 0
    #: Leave people out one by one ("identity": strangers may be relatives of enrolled people), or by
    #: whole groups (a column such as "family": strangers are from families nobody enrolled is from).
    unenrolled_by: str = "identity"

    def __post_init__(self) -> None:
        if not 0.0 < self.unenrolled_share < 1.0:
            raise InputError(f"--unenrolled-share must be between 0 and 1, got {self.unenrolled_share}")
        if not 0.0 < self.fpir < 1.0:
            raise InputError(f"--fpir must be between 0 and 1, got {self.fpir}")


@dataclass
class IdentificationSplit:
    """Rows of the dataset index in each role."""

    gallery: np.ndarray
    mated: np.ndarray
    nonmated: np.ndarray
    by_age: bool  # whether the gallery was chosen by age class

    def counts(self, index) -> dict:
        codes = index.identity_codes
        return {"gallery_images": int(len(self.gallery)), "gallery_people": int(len(np.unique(codes[self.gallery]))),
                "mated_probes": int(len(self.mated)), "nonmated_probes": int(len(self.nonmated)),
                "nonmated_people": int(len(np.unique(codes[self.nonmated]))), "by_age": self.by_age}


def split_identification(index, protocol: IdentificationProtocol) -> IdentificationSplit:
    """Gallery, mated and non-mated probe rows of ``index`` (every draw from ``SeedSequence(seed)``)."""
    streams = np.random.SeedSequence(protocol.seed).spawn(3)
    codes = index.identity_codes
    people = np.unique(codes)
    if protocol.identities:
        people = np.sort(np.random.default_rng(streams[0]).choice(
            people, size=min(protocol.identities, len(people)), replace=False))
    ages = index.attributes.get(protocol.age_column)
    by_age = ages is not None and all(value not in (None, "") for value in ages)
    rows_of = {int(p): np.flatnonzero(codes == p) for p in people}
    gallery_of, probes_of, strangers = {}, {}, []
    for person, rows in rows_of.items():
        if by_age:
            classes = sorted({ages[r] for r in rows}, key=_age_key)
            chosen = _gallery_class(classes, protocol.gallery_age)
            if len(classes) < 2 or chosen is None:
                strangers.append(person)
                continue
            gallery_of[person] = np.array([r for r in rows if ages[r] == chosen])
            probes_of[person] = np.array([r for r in rows if ages[r] != chosen])
        else:
            rows = sorted(rows, key=lambda r: index.paths[r])
            if len(rows) < 2:
                strangers.append(person)
                continue
            gallery_of[person], probes_of[person] = np.array(rows[:1]), np.array(rows[1:])
    eligible = np.array(sorted(gallery_of), dtype=np.int64)
    if len(eligible) < 2:
        raise InputError(f"only {len(eligible)} people have photos for both a gallery and a probe; the "
                         f"protocol needs more")
    left_out = _left_out(index, eligible, protocol, np.random.default_rng(streams[1]))
    cap = np.random.default_rng(streams[2])
    gallery, mated, nonmated = [], [], []
    for person in eligible.tolist():
        if person in left_out:
            nonmated.append(_capped(rows_of[person], protocol.probes_per_person, cap))
        else:
            gallery.append(gallery_of[person])
            mated.append(_capped(probes_of[person], protocol.probes_per_person, cap))
    for person in strangers:
        nonmated.append(_capped(rows_of[person], protocol.probes_per_person, cap))
    return IdentificationSplit(np.concatenate(gallery), np.concatenate(mated), np.concatenate(nonmated), by_age)


def _left_out(index, eligible: np.ndarray, protocol: IdentificationProtocol, rng: np.random.Generator) -> set:
    """The eligible people kept out of the gallery: a share of them, or of their groups."""
    if protocol.unenrolled_by == "identity":
        order = rng.permutation(eligible)
        return set(order[:max(1, int(round(protocol.unenrolled_share * len(eligible))))].tolist())
    groups = identity_groups(index, eligible, protocol.unenrolled_by)
    names = rng.permutation(np.unique(groups))
    chosen = set(names[:max(1, int(round(protocol.unenrolled_share * len(names))))].tolist())
    return {int(person) for person, group in zip(eligible, groups) if group in chosen}


def _age_key(value):
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _gallery_class(classes: list, choice: str):
    if choice == "youngest":
        return classes[0]
    if choice == "oldest":
        return classes[-1]
    return choice if choice in {str(c) for c in classes} else None


def _capped(rows: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.asarray(rows)
    if cap and len(rows) > cap:
        return np.sort(rng.choice(rows, size=cap, replace=False))
    return rows


def score_model(verifier, index, split: IdentificationSplit, protocol: IdentificationProtocol, name: str) -> dict:
    """One model's figures on ``split`` (every image it uses embedded once; failures left out, counted)."""
    used = np.unique(np.concatenate([split.gallery, split.mated, split.nonmated]))
    vectors, result = verifier.embed([str(index.absolute_path(row)) for row in used], on_error="skip")
    ok = ~np.isnan(vectors).any(axis=1)
    position = np.full(len(index), -1, dtype=np.int64)
    position[used[ok]] = np.flatnonzero(ok)
    roles = {role: rows[position[rows] >= 0] for role, rows in
             (("gallery", split.gallery), ("mated", split.mated), ("nonmated", split.nonmated))}
    codes = index.identity_codes
    gallery_vectors = vectors[position[roles["gallery"]]]
    ranks, mated_best = _search(verifier, vectors[position[roles["mated"]]], gallery_vectors,
                                codes[roles["gallery"]], codes[roles["mated"]])
    _, nonmated_best = _search(verifier, vectors[position[roles["nonmated"]]], gallery_vectors,
                               codes[roles["gallery"]], codes[roles["nonmated"]])
    figures = identification_rates(ranks, mated_best, nonmated_best, verifier.threshold, protocol.fpir)
    return {"model": name, "backbone": verifier.embedder.spec.name, "distance": verifier.distance.name,
            "gallery_images": int(len(roles["gallery"])), "not_embedded": int((~ok).sum()),
            "stages": result.stage_counts(), **figures}


def _search(verifier, probes: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
            probe_labels: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Exact 1:N search in chunks of probes (ranks of mates, best distances)."""
    ranks, best = [], []
    for start in range(0, len(probes), chunk):
        distances = np.asarray(verifier.distance.matrix(probes[start:start + chunk], gallery))
        r, b = ranks_of_mates(distances, gallery_labels, probe_labels[start:start + chunk])
        ranks.append(r)
        best.append(b)
    return np.concatenate(ranks), np.concatenate(best)


def run_identification(kind: str, root: str, layout_options: dict, protocol: IdentificationProtocol, *,
                       models: tuple[str, ...], out: Path, groups_file: Optional[str] = None, group_by: str = "family",
                       keep_outside_copies: bool = False, device: str = "auto", cache: Union[bool,
                                                                                             CacheSetting] = True,
                       progress: bool = False,
                       log: Callable[[str], None] = lambda text: None) -> list[dict]:
    """The protocol for each of ``models``; writes ``out/identification.json`` and ``.md`` after each.

    With ``groups_file``, images whose identical file also lies in a group outside it are left out
    (unless ``keep_outside_copies``): a model trained on the other groups has seen them.
    """
    if not models:
        raise InputError("give at least one --model to score")
    index = load_index(kind, root, layout_options, progress)
    chosen_rows = np.arange(len(index))
    if groups_file:
        chosen = read_group_list(groups_file)
        if keep_outside_copies:
            index = restrict_groups(index, group_by, chosen)
            chosen_rows = np.arange(len(index))
        else:
            chosen_rows = group_rows(index, group_by, chosen)
    # Album sets file one scan under several identities: such identities are one person, each image once;
    # with --groups, images whose file also lies in a group outside the list go too (a model trained there
    # has seen them).
    index, copies = distinct_images(index, chosen_rows, group_by)
    outside = copies["also_outside"]
    if outside:
        log(f"left out {outside} images whose identical file is also in a group outside {groups_file} "
            f"(a model trained on those has seen them)")
    if copies["identities_merged"] or copies["repeated"]:
        log(f"merged {copies['identities_merged']} identities that share a photo; {copies['repeated']} repeated "
            f"copies left out")
    split = split_identification(index, protocol)
    dataset = {"kind": kind, "root": str(root), "images": len(index), "identities": len(index.identity_names),
               "groups_file": groups_file, "identities_merged": copies["identities_merged"],
               "repeated_copies_dropped": copies["repeated"],
               "images_also_outside_groups_dropped": outside, **split.counts(index)}
    return score_models(models, lambda verifier, name: score_model(verifier, index, split, protocol, name),
                        lambda rows: write_results(out, rows, protocol, dataset), device=device, cache=cache,
                        progress=progress, log=log)


def write_results(out: Path, rows: list[dict], protocol: IdentificationProtocol, dataset: dict) -> None:
    write_json(out / "identification.json", {"protocol": asdict(protocol), "dataset": dataset, "rows": rows})
    fpir = f"{100 * protocol.fpir:g}%"
    lines = [f"Identification on {dataset['kind']} {dataset['root']}: {dataset['gallery_people']} people enrolled "
             f"({dataset['gallery_images']} images, "
             f"gallery age {protocol.gallery_age if dataset['by_age'] else 'first photo'}), "
             f"{dataset['mated_probes']} mated probes, {dataset['nonmated_probes']} probes of "
             f"{dataset['nonmated_people']} people not enrolled.", "",
             f"| model | rank-1 | rank-5 | FNIR at FPIR {fpir} | open-set threshold | FNIR / FPIR at the 1:1 "
             f"threshold |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['model']} | {100 * row['rank1']:.1f}% | {100 * row['rank5']:.1f}% | "
                     f"{100 * row['fnir_at_fpir']:.1f}% | {row['open_set_threshold']:.4f} | "
                     f"{100 * row['fnir_at_1to1']:.1f}% / {100 * row['fpir_at_1to1']:.1f}% "
                     f"(at {row['threshold_1to1']:.4f}) |")
    write_text(out / "identification.md", "\n".join(lines) + "\n")
