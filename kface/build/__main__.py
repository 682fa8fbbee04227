"""The committed commands that make kface's shipped model files (run from the repository root).

    python -m kface.build heldout --root ../shared/data/korean_family
        writes kface/models/korean-heldout-families.txt: a seeded tenth of the groups of related families, never
        trained on;
        the model cards and the tests score the shipped models on these groups only. An existing list is kept (families
        added to the set later only train), so every version is scored on the same faces.
    python -m kface.build korean --root ../shared/data/korean_family
        trains kface/models/recipes/korean-v4.json on every other group (copies merged; kface train, group-disjoint
        val),
        exports the tuned network (with 0.5 x stock dlib's vector) to kface/models/korean-v4.onnx and writes its
        card korean-v4.json
        (provenance, recipe, threshold, sha256, figures on the held-out families); then the korean-int8 step.
    python -m kface.build korean-int8 --root ../shared/data/korean_family
        quantises kface/models/korean-v4.onnx to kface/models/korean-v4-int8.onnx (calibrated on training-group
        chips), checks it against the float file, scores it on the held-out families, and writes the card's int8
        block: the copy that runs on the CPU.
    python -m kface.build answers --root ../shared/data/korean_family
        writes the answers block of korean-v4.json (float and int8 copies) and of stock dlib's dlib-resnet-v1.json
        for the files as they are (no retraining): operating points balanced / far=1e-2 / far=1e-3 chosen on the
        val groups and measured on the held-out groups, the calibrated probability, the caution rule, the
        abstention band and the val distance distributions (kface/build/card_answers.py).
    python -m kface.build attributes-domain --root ../shared/data/korean_family
        writes the domain block of attributes-korean-v4.json: the shipped age model measured on the families filed
        after it was made and on the sample portraits, and its drift there (kface/build/attributes_domain.py).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import KfaceError
from ..evaluation.heldout import HELDOUT_FILE, write_heldout
from .attributes_domain import update_attributes_domain
from .korean import build_korean, korean_answers
from .korean_int8 import build_int8


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kface.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["heldout", "korean", "korean-int8", "answers", "attributes-domain"])
    parser.add_argument("--root", type=Path, required=True, help="the korean_family folder")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.step == "heldout":
        try:
            print(f"held out {len(write_heldout(args.root))} groups into {HELDOUT_FILE}")
        except KfaceError as exc:
            parser.exit(2, f"error: {exc}\n")
        return
    if args.step == "attributes-domain":
        print(update_attributes_domain(args.root, device=args.device))
        return
    if args.step == "answers":
        print(korean_answers(args.root, device=args.device))
        return
    if args.step == "korean":
        print(build_korean(args.root, device=args.device))
    print(build_int8(args.root, device=args.device))


if __name__ == "__main__":
    main()
