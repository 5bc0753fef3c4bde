"""Flatten the view distribution: drop particles at random from over-represented views of good classes.

Example usage:

    otf2d rebalance Class2D/otf2d --out Select/rebalanced --factor 1
    otf2d rebalance Class2D/otf2d --out Select/rebalanced --factor 0.5 --classes 1-6,9 --seed 3
    otf2d rebalance grid3 --engine tcp://gpu-node:5555 --out Select/grid3_balanced --factor 0.3

The chosen classes (--auto by default: those the junk score calls good; or --classes) are grouped
into views exactly as the distinct-views metric of the status page groups them: rotation- and
mirror-invariant similarity of the class averages, classes merged while their mean similarity is
at least --similarity. Then particles are dropped at random (--seed) from the views that are over
represented, following cryoSPARC's "Rebalance 2D Classes" rule: afterwards the smallest view holds
at least --factor times the particles of the largest. --factor 0 keeps every particle; --factor 1
makes every view as large as the smallest (as equal as the data allow). Views smaller than
--min-view-particles are kept whole and do not set that size; --max-view-particles N caps every view
at N particles instead of --factor. Particles of classes not chosen are not written. With --auto,
the particles of kept classes whose own junk score (rlnOtf2dJunkScore, as for `otf2d select --auto`)
is above --particle-junk-threshold (default 0.5; 1 keeps whole classes) are left out before the
views are counted, so junk hiding in good classes is neither kept nor counted as a view's particles.

SNAPSHOT_OR_SESSION and --engine work as for `otf2d select`: a snapshot on disk, or a live session
of a running engine (a snapshot is requested now and read once written).

Written under --out (each file atomically): particles.star (RELION 3.1, image names pointing at
the original stacks, 2D alignment kept), particles.cs (cryoSPARC) with its result group
particles.csg, rebalance.json (views, their
classes and particles before and after) and views.png (the view distribution before, grey, and
after, blue, with the largest class average of each view). The view table and the entropy of the
view distribution before and after are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from otf2d.monitoring.views import SAME_VIEW_SIMILARITY
from otf2d.selection.rebalance import DEFAULT_MIN_VIEW_PARTICLES, ViewBalance, rebalance_views
from otf2d.selection.source import (
    add_class_args,
    add_particle_junk_arg,
    add_source_args,
    choose_from_args,
    describe_choice,
    load_source,
    particle_junk_mask,
    relative_note,
)
from otf2d.selection.view_plot import write_view_histogram_png
from otf2d.selection.write import write_selection

#: File names written next to particles.star.
RECORD_JSON = "rebalance.json"
VIEWS_PNG = "views.png"


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d rebalance``."""
    add_source_args(parser)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for particles.star/.cs, rebalance.json, views.png"
    )
    parser.add_argument(
        "--factor",
        type=float,
        required=True,
        metavar="F",
        help="0..1: afterwards the smallest view holds at least F x the largest (0 keeps all, 1 makes views equal)",
    )
    add_class_args(parser)
    add_particle_junk_arg(parser)
    views = parser.add_argument_group("views")
    views.add_argument("--seed", type=int, default=0, help="seed of the random draw (default 0)")
    views.add_argument(
        "--min-view-particles",
        type=int,
        default=DEFAULT_MIN_VIEW_PARTICLES,
        metavar="N",
        help=f"smaller views are kept whole and do not set the size (default {DEFAULT_MIN_VIEW_PARTICLES})",
    )
    views.add_argument(
        "--max-view-particles",
        type=int,
        default=None,
        metavar="N",
        help="cap every view at N particles (wins over --factor)",
    )
    views.add_argument(
        "--similarity",
        type=float,
        default=SAME_VIEW_SIMILARITY,
        metavar="S",
        help=f"classes at least this similar show the same view (default {SAME_VIEW_SIMILARITY})",
    )
    parser.add_argument(
        "--absolute-paths", action="store_true", help="write absolute stack paths (default: relative to the project)"
    )
    parser.add_argument("--quiet", action="store_true", help="print only the summary (no view table)")


def view_table(balance: ViewBalance) -> list[str]:
    """Lines of the per-view table: view, particles before and after, its classes."""
    lines = [f"{'view':>4} {'before':>8} {'after':>8}  classes"]
    for v, classes in enumerate(balance.views.view_classes):
        numbers = ",".join(str(c) for c in classes)
        lines.append(f"{v + 1:>4} {int(balance.before[v]):>8,} {int(balance.after[v]):>8,}  {numbers}")
    return lines


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d rebalance``; returns the exit status."""
    source = load_source(args)
    loaded = source.loaded
    snapshot = loaded.snapshot
    choice = choose_from_args(args, loaded)
    class_mask = choice.class_mask(snapshot.n_classes)
    not_junk = particle_junk_mask(args, loaded, choice)
    in_classes = class_mask[np.asarray(snapshot.particles.class_index, dtype=np.int64)]
    balance = rebalance_views(
        snapshot,
        class_mask,
        args.factor,
        seed=args.seed,
        min_view_particles=args.min_view_particles,
        max_view_particles=args.max_view_particles,
        threshold=args.similarity,
        eligible=not_junk,
    )
    junk_dropped = int(np.count_nonzero(in_classes & ~not_junk))
    details = {
        "command": "rebalance",
        "factor": args.factor,
        "seed": args.seed,
        "min_view_particles": args.min_view_particles,
        "max_view_particles": args.max_view_particles,
        "similarity_threshold": args.similarity,
        "cap": balance.cap,
        "classes_kept": choice.kept,
        "classes_left_out": {str(c): reason for c, reason in sorted(choice.dropped.items())},
        "particle_junk_threshold": args.particle_junk_threshold if choice.junk_scores is not None else None,
        "particles_dropped_as_junk_in_kept_classes": junk_dropped,
        "views": [
            {"view": v + 1, "classes": classes, "before": int(balance.before[v]), "after": int(balance.after[v])}
            for v, classes in enumerate(balance.views.view_classes)
        ],
        "entropy_before": balance.entropy_before,
        "entropy_after": balance.entropy_after,
        "effective_views_before": balance.effective_views_before,
        "effective_views_after": balance.effective_views_after,
    }
    files = write_selection(
        loaded,
        balance.keep_index,
        args.out,
        record_name=RECORD_JSON,
        details=details,
        absolute_paths=args.absolute_paths,
    )
    largest = [classes[0] - 1 for classes in balance.views.view_classes]
    png = write_view_histogram_png(
        Path(args.out) / VIEWS_PNG,
        balance.before,
        balance.after,
        np.asarray(snapshot.averages)[largest],
        title=f"otf2d rebalance --factor {args.factor:g}: snapshot {snapshot.iteration}",
    )
    if not args.quiet:
        print("\n".join(view_table(balance)))
        print()
    n_before, n_after = int(balance.before.sum()), int(balance.after.sum())
    cap = f"each view capped at {balance.cap:,} particles" if balance.cap is not None else "no view capped"
    junk_note = f", {junk_dropped:,} junk particles of those classes left out first" if junk_dropped else ""
    print(
        f"Rebalanced {n_before:,} particles from {source.description} ({describe_choice(choice, snapshot.n_classes)}"
        f"{junk_note}) "
        f"in {balance.views.n_views} views; {cap} (--factor {args.factor:g}, "
        f"--seed {args.seed}): kept {n_after:,} ({n_after / max(n_before, 1):.0%}). View distribution entropy "
        f"{balance.entropy_before:.3f} -> {balance.entropy_after:.3f} nats (effective views "
        f"{balance.effective_views_before:.2f} -> {balance.effective_views_after:.2f}). "
        f"RELION particles: {files.particles_star} ({relative_note(loaded, args.absolute_paths)}); "
        f"cryoSPARC particles: {files.particles_cs}; views plot: {png}; record: {files.record_json}."
    )
    return 0


__all__ = ["RECORD_JSON", "VIEWS_PNG", "add_args", "main", "view_table"]
