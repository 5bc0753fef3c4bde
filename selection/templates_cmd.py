"""Class averages as an MRC stack of picking templates (RELION autopick, cryoSPARC template picker).

Example usage:

    otf2d templates Class2D/otf2d --out templates.mrcs
    otf2d templates Class2D/otf2d --out refs/templates.mrcs --classes 2,5,9 --lowpass 15
    otf2d templates grid3 --engine tcp://gpu-node:5555 --out refs/grid3.mrcs --auto --min-particles 200

Each chosen class average (--auto by default: the classes the junk score calls good; or --classes)
is re-centred on the centre of mass of its density (a sub-pixel Fourier shift), low-passed with a
raised-cosine filter at --lowpass angstrom (transmission 1/2 there; default 20 A, RELION autopick's
default; 0 = none) and its background (the median outside the mask) set to 0. The stack is float32,
one template per class in class-number order, with the pixel size in the header (voxel size) and
header labels that say what was done (sign convention, centring, low-pass, class numbers).

Sign convention: protein WHITE (positive density) on a background of ~0, the contrast of otf2d's
class averages. RELION autopick takes such references with its defaults (do not set --invert
there; "References CTF corrected": yes, they are Wiener-filtered class averages), and cryoSPARC's
template picker takes positive density too. --invert flips the sign for averages showing dark
protein (e.g. from a program that does not invert the contrast at extraction).

SNAPSHOT_OR_SESSION and --engine work as for `otf2d select`: a snapshot on disk, or a live session
of a running engine (a snapshot is requested now and read once written).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from otf2d.selection.source import add_class_args, add_source_args, choose_from_args, describe_choice, load_source
from otf2d.selection.templates import (
    DEFAULT_LOWPASS_ANGSTROM,
    SIGN_CONVENTION,
    header_labels,
    make_templates,
    write_templates_mrcs,
)


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d templates``."""
    add_source_args(parser)
    parser.add_argument("--out", required=True, type=Path, help="the MRC stack to write, e.g. templates.mrcs")
    add_class_args(parser)
    parser.add_argument(
        "--lowpass",
        type=float,
        default=DEFAULT_LOWPASS_ANGSTROM,
        metavar="A",
        help=f"low-pass resolution in angstrom, raised-cosine edge (default {DEFAULT_LOWPASS_ANGSTROM:g}; 0 = none)",
    )
    parser.add_argument(
        "--no-recentre", dest="recentre", action="store_false", help="keep the averages where they are (no re-centring)"
    )
    parser.add_argument("--invert", action="store_true", help="flip the sign (for averages that show protein dark)")


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d templates``; returns the exit status."""
    source = load_source(args)
    loaded = source.loaded
    choice = choose_from_args(args, loaded)
    numbers = choice.kept
    templates = make_templates(
        loaded.snapshot, numbers, lowpass_angstrom=args.lowpass or None, recentre=args.recentre, invert=args.invert
    )
    labels = header_labels(templates, f"of snapshot {loaded.snapshot.iteration}")
    out = write_templates_mrcs(args.out, templates, labels=labels)
    box = templates.images.shape[-1]
    largest_shift = float(abs(templates.shifts_yx).max()) if len(templates.shifts_yx) else 0.0
    lowpass = f"low-passed at {templates.lowpass_angstrom:g} A" if templates.lowpass_angstrom else "not low-passed"
    centred = f"re-centred (largest shift {largest_shift:.1f} px)" if args.recentre else "not re-centred"
    print(
        f"Wrote {len(numbers)} templates ({box} x {box} px at {templates.pixel_size_angstrom:g} A/px, in the header) "
        f"to {out} from {source.description}: {describe_choice(choice, loaded.snapshot.n_classes)}; "
        f"{centred}, {lowpass}. Sign: {SIGN_CONVENTION}"
        f"{' (inverted from the averages)' if args.invert else ''} - use them as RELION autopick references "
        "without --invert, or as cryoSPARC template picker templates."
    )
    return 0


__all__ = ["add_args", "main"]
