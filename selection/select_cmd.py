"""Select the particles of chosen 2D classes, as a RELION particles.star and a cryoSPARC .cs.

Example usage:

    otf2d select Class2D/otf2d --out Select/otf2d_auto --auto
    otf2d select Class2D/otf2d/run_it021_data.star --out Select/job012 --classes 1,4,7 --min-particles 100
    otf2d select grid3 --engine tcp://gpu-node:5555 --out Select/grid3_live --max-resolution 12

SNAPSHOT_OR_SESSION is a snapshot on disk (the --out folder of otf2d classify, an engine session's
folder or its snapshots/ folder, or any run_itNNN_* file of one snapshot; RELION's own Class2D
run_itNNN_data.star works too), or, with --engine, the name of a session of a running engine: a
snapshot of that session is then requested now through the engine's control socket (what
`otf2d snapshot` does), and the particles are selected from that snapshot once it is written (its
folder must be visible from this machine).

Classes are chosen by number (--classes, 1-based as in the gallery and _model.star) or, by default
(--auto), by the junk score of every class (the red borders of the gallery; user overrides of an
engine session are honoured), then --min-particles and --max-resolution drop classes on top. With
--auto, particles of the kept classes whose own junk score (rlnOtf2dJunkScore: their class explains
them far worse than its typical member, see otf2d.monitoring.particle_junk) is above
--particle-junk-threshold are left out too.

Written under --out (each file atomically):
  particles.star   RELION 3.1 (data_optics + data_particles): image names pointing at the original
                   stacks (relative to the project directory, or absolute with --absolute-paths), CTF,
                   and the 2D alignment kept (rlnClassNumber, rlnAnglePsi, rlnOriginX/YAngst, Pmax)
  particles.cs     the same particles as a cryoSPARC .cs (blob, ctf, alignments2D)
  particles.csg    its cryoSPARC result group (Import Result Group), naming the root of the blob paths
  selection.json   where the particles came from and how the classes were chosen
Exits 2 with a message naming the file when the snapshot is missing or unreadable, a class number
does not exist, or no class is left after the filters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from otf2d.selection.source import (
    add_class_args,
    add_particle_junk_arg,
    add_source_args,
    choose_from_args,
    class_table,
    describe_choice,
    load_source,
    particle_junk_mask,
    relative_note,
)
from otf2d.selection.write import write_selection


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d select``."""
    add_source_args(parser)
    parser.add_argument(
        "--out", required=True, type=Path, help="folder for particles.star, particles.cs, selection.json"
    )
    add_class_args(parser)
    parser.add_argument(
        "--absolute-paths", action="store_true", help="write absolute stack paths (default: relative to the project)"
    )
    add_particle_junk_arg(parser)
    parser.add_argument("--quiet", action="store_true", help="print only the summary (no per-class table)")


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d select``; returns the exit status."""
    source = load_source(args)
    loaded = source.loaded
    choice = choose_from_args(args, loaded)
    index = choice.particle_index(loaded.snapshot)
    in_classes = len(index)
    index = index[particle_junk_mask(args, loaded, choice)[index]]
    details = {
        "command": "select",
        "chosen_by": "junk score" if choice.junk_scores is not None else "class numbers",
        "classes_kept": choice.kept,
        "classes_left_out": {str(c): reason for c, reason in sorted(choice.dropped.items())},
        "junk_threshold": args.junk_threshold if choice.junk_scores is not None else None,
        "min_particles": args.min_particles,
        "max_resolution_angstrom": args.max_resolution,
        "user_overrides": {str(c): v for c, v in sorted(choice.overrides.items())},
        "particle_junk_threshold": args.particle_junk_threshold if choice.junk_scores is not None else None,
        "particles_dropped_as_junk_in_kept_classes": in_classes - len(index),
    }
    files = write_selection(loaded, index, args.out, details=details, absolute_paths=args.absolute_paths)
    if not args.quiet:
        print("\n".join(class_table(choice, loaded)))
        print()
    total = len(loaded.snapshot.particles)
    dropped = in_classes - len(index)
    dropped_note = f"; {dropped:,} junk particles of those classes left out" if dropped else ""
    share = files.n_particles / total if total else 0.0
    print(
        f"Selected {files.n_particles:,} of {total:,} particles ({share:.0%}) from {source.description}: "
        f"{describe_choice(choice, loaded.snapshot.n_classes)}{dropped_note}. "
        f"RELION particles: {files.particles_star} ({relative_note(loaded, args.absolute_paths)}); "
        f"cryoSPARC particles: {files.particles_cs}; record: {files.record_json}."
    )
    return 0


__all__ = ["add_args", "main"]
