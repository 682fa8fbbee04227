"""The model commands: ``kface models`` (the shipped model cards) and ``kface export`` (ONNX)."""
from __future__ import annotations

from pathlib import Path

import click

from ..models import default_model, describe, shipped_names
from ..models.attributes import attributes_card, has_shipped_attributes
from ..reporting.card_plots import plot_cards
from .options import handle_errors, json_option, print_json


@click.command("models")
@json_option("Print every model card as JSON on stdout.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False),
              help="Write each model's val distance distributions (with its operating points) and its probability's "
                   "reliability diagram as PNG files into this folder.")
@handle_errors
def models(as_json, plot_dir):
    """The models that ship with kface: data, recipe, threshold, operating points, figures, size and sha256 (the
    face models, then the age-group and gender model)."""
    cards = [describe(name) for name in shipped_names()]
    if plot_dir:
        blocks = [(f"{body['name']}{label}", variant["answers"]) for body in cards
                  for label, variant in (("", body), ("-int8", body.get("int8", {}))) if "answers" in variant]
        for path in plot_cards(Path(plot_dir), blocks):
            click.echo(f"wrote {path}", err=True)
        return
    attributes = attributes_card() if has_shipped_attributes() else None
    if as_json:
        print_json({"default": default_model(), "models": cards, "attributes": attributes})
        return
    for body in cards:
        marker = " (default)" if body["name"] == default_model() else ""
        threshold = body["threshold"]
        click.echo(f"{body['name']}{marker}: {body['description']}")
        click.echo(f"  threshold {threshold['value']:.4f} ({threshold['rule']}): {threshold['source']}")
        if "threshold" in body.get("int8", {}):
            click.echo(f"  int8 copy's threshold {body['int8']['threshold']['value']:.4f}: the same rule on its own "
                       f"distances")
        for line in answers_text(body.get("answers")):
            click.echo(f"  {line}")
        for line in body.get("figures_text", []):
            click.echo(f"  {line}")
        for line in answers_text(body.get("int8", {}).get("answers")):
            click.echo(f"  int8 copy: {line}")
        for line in body.get("int8", {}).get("figures_text", []):
            click.echo(f"  {line}")
        variants = [("float ", body), ("int8 ", body["int8"])] if "int8" in body else [("", body)]
        for label, variant in variants:
            runs = " (runs on the CPU)" if label and body["runs_on_cpu"] == label.strip() else ""
            click.echo(f"  {label}file {variant['file']}{runs} ({variant['size_bytes'] / 2**20:.1f} MiB, "
                       f"sha256 {variant['sha256']})")
    if attributes is not None:
        click.echo(f"{attributes['name']} (analyze, serve, verify --json ages): {attributes['description']}")
        shipped = next(row for name, row in attributes["figures"]["rows"].items() if name.endswith("(shipped file)"))
        click.echo(f"  on {attributes['figures']['on']}: age class exact {shipped['exact']:.1%}, within one "
                   f"{shipped['within_one']:.1%}, MAE {shipped['mae_years']:.2f} years, gender {shipped['gender']:.1%}")
        click.echo(f"  file {attributes['file']} ({attributes['size_bytes'] / 2**20:.1f} MiB, "
                   f"sha256 {attributes['sha256']}); made by {attributes['made_by']}")


def answers_text(block) -> list[str]:
    """One line per operating point, and one for the probability and the caution, from a card's answers block."""
    if not block:
        return []
    lines = []
    for name, point in block["points"].items():
        measured = point["heldout"]
        kinds = ", ".join(f"{kind} FAR {100 * entry['far']:.2f}% TAR {100 * entry['tar']:.1f}%"
                          for kind, entry in measured.items() if kind != "both")
        lines.append(f"operating point {name}: threshold {point['threshold']:.4f}; held-out groups: {kinds}")
    probability, caution = block["probability"], block["caution"]["heldout"]
    lines.append(f"probability: {probability['method']} calibration on val pairs, held-out ECE "
                 f"{probability['heldout']['ece']:.3f}; caution pairs (a face under 13 or a wide age gap) "
                 f"{100 * caution['caution']['accuracy']:.1f}% right, "
                 f"other pairs {100 * caution['other']['accuracy']:.1f}%")
    return lines


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The ONNX file to write.")
@click.option("--fp16", is_flag=True, help="Store the weights as float16 (half the file; computation stays float32).")
@json_option("Print what was written as JSON on stdout.")
@handle_errors
def export(model, out, fp16, as_json):
    """Export a trained MODEL (runs/NAME/model.pt) to ONNX: aligned uint8 chips in, the vectors its
    distance is measured on out (tuned layers, flip averaging and head inside), run by onnxruntime."""
    from ..training.export import export_checkpoint

    info = export_checkpoint(model, out, fp16=fp16)
    if as_json:
        print_json({"out": out, **info})
        return
    parity = info["parity"]
    click.echo(f"wrote {out} ({info['size_bytes'] / 2**20:.1f} MiB, sha256 {info['sha256']}); input chips uint8 "
               f"{info['input']['shape']}, output {info['output']['shape']}; parity with PyTorch: cosine >= "
               f"{parity['min_cosine']:.7f}, max |diff| {parity['max_abs_diff']:.1e}")
