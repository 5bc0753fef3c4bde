"""Options and loading shared by ``otf2d select``, ``rebalance`` and ``templates``.

Each command reads one snapshot: from disk (``SNAPSHOT_OR_SESSION`` is a snapshot folder, an
engine session folder or a ``run_itNNN_*`` file), or from a running engine (``--engine ENDPOINT``:
``SNAPSHOT_OR_SESSION`` is a session name; a snapshot is requested now, waited for, then read from
the folder the engine wrote it to). Classes are chosen with ``--classes`` or ``--auto`` (the
default), then filtered by ``--min-particles`` and ``--max-resolution``. With ``--auto``,
``select`` and ``rebalance`` also leave out the particles of kept classes whose own junk score
(``rlnOtf2dJunkScore``, :mod:`otf2d.monitoring.particle_junk`) is above
``--particle-junk-threshold`` (:func:`particle_junk_mask`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from otf2d.core.curve import add_client_args, client_files
from otf2d.core.errors import InputError
from otf2d.monitoring.particle_junk import DEFAULT_PARTICLE_THRESHOLD, particle_junk_scores
from otf2d.monitoring.quality import JUNK_SCORE_THRESHOLD
from otf2d.monitoring.snapshots.reader import LoadedSnapshot, read_snapshot
from otf2d.selection.choose import ClassChoice, choose_classes, parse_class_numbers, session_overrides

#: How the source is described in ``--help``.
SOURCE_HELP = (
    "a snapshot on disk: the folder of otf2d classify --out or an engine session's snapshots/ (latest.json), "
    "an engine session folder, or any run_itNNN_* file; with --engine, the name of a live session"
)


@dataclass(frozen=True)
class Source:
    """A loaded snapshot and how to describe where it came from."""

    loaded: LoadedSnapshot
    description: str


def add_source_args(parser: argparse.ArgumentParser) -> None:
    """``SNAPSHOT_OR_SESSION``, ``--engine``, ``--wait``, ``--timeout``, ``--project-dir``."""
    parser.add_argument("source", metavar="SNAPSHOT_OR_SESSION", help=SOURCE_HELP)
    live = parser.add_argument_group("live session (a running engine)")
    live.add_argument(
        "--engine",
        metavar="ENDPOINT",
        help="the engine's endpoint, e.g. tcp://gpu-node:5555: SNAPSHOT_OR_SESSION is then a session name; "
        "a snapshot is requested now and read from the session's snapshot folder once written "
        "(that folder must be visible from this machine)",
    )
    live.add_argument(
        "--wait", type=float, default=120.0, metavar="S", help="longest wait for the snapshot, seconds (default 120)"
    )
    live.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="wait for each engine answer, seconds (default 5)"
    )
    add_client_args(parser)
    parser.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="directory the stack paths are relative to (default: found from the snapshot's location)",
    )


def add_class_args(parser: argparse.ArgumentParser) -> None:
    """``--classes`` | ``--auto``, ``--min-particles``, ``--max-resolution``, ``--junk-threshold``."""
    group = parser.add_argument_group("which classes")
    which = group.add_mutually_exclusive_group()
    which.add_argument(
        "--classes", metavar="LIST", help="class numbers as in the gallery and _model.star, e.g. 1,4,7 or 3-6,9"
    )
    which.add_argument(
        "--auto",
        action="store_true",
        help="keep the classes the junk score calls good (the default when --classes is not given)",
    )
    group.add_argument(
        "--min-particles", type=int, default=1, metavar="N", help="drop classes with fewer particles (default 1)"
    )
    group.add_argument(
        "--max-resolution",
        type=float,
        default=None,
        metavar="A",
        help="drop classes whose resolution is worse than A angstrom, or unknown (default: no limit)",
    )
    group.add_argument(
        "--junk-threshold",
        type=float,
        default=JUNK_SCORE_THRESHOLD,
        metavar="S",
        help=f"with --auto, classes scoring above S are junk (default {JUNK_SCORE_THRESHOLD})",
    )


def add_particle_junk_arg(parser: argparse.ArgumentParser) -> None:
    """``--particle-junk-threshold`` (the same option, default and meaning for select and rebalance)."""
    parser.add_argument(
        "--particle-junk-threshold",
        type=float,
        default=DEFAULT_PARTICLE_THRESHOLD,
        help="with --auto, also drop particles of kept classes whose own junk score (rlnOtf2dJunkScore) is "
        f"above this (default {DEFAULT_PARTICLE_THRESHOLD}; 1 keeps whole classes)",
    )


def particle_junk_mask(args: argparse.Namespace, loaded: LoadedSnapshot, choice: ClassChoice) -> npt.NDArray[np.bool_]:
    """``(n,)`` bool: the particles whose own junk score lets them be kept.

    With ``--auto`` (``choice.junk_scores`` set), a particle is kept when its junk score is at most
    ``--particle-junk-threshold``; with ``--classes`` every particle is (the user chose whole classes).

    Raises
    ------
    InputError
        ``--particle-junk-threshold`` outside [0, 1].
    """
    n = len(loaded.snapshot.particles)
    if choice.junk_scores is None:
        return np.ones(n, dtype=bool)
    threshold = args.particle_junk_threshold
    if not 0.0 <= threshold <= 1.0:
        raise InputError(None, f"--particle-junk-threshold must lie in [0, 1], got {threshold}")
    return np.asarray(particle_junk_scores(loaded.snapshot) <= threshold, dtype=bool)


def load_source(args: argparse.Namespace) -> Source:
    """Read the snapshot the arguments name (requesting it from the engine with ``--engine``).

    Raises
    ------
    InputError
        A missing or unreadable snapshot.
    EngineRequestError, EngineTimeoutError
        The engine refused, did not answer, or did not write the snapshot within ``--wait``.
    """
    if args.engine:
        from otf2d.selection.live import live_snapshot_directory

        live = live_snapshot_directory(
            args.engine, args.source, timeout_s=args.timeout, wait_s=args.wait, curve=client_files(args)
        )
        loaded = read_snapshot(live.directory, project_dir=args.project_dir)
        where = (
            f"snapshot {loaded.snapshot.iteration} of live session {args.source!r} at {args.engine} ({live.directory})"
        )
    else:
        loaded = read_snapshot(args.source, project_dir=args.project_dir)
        where = f"snapshot {loaded.snapshot.iteration} in {loaded.directory}"
    return Source(loaded=loaded, description=where)


def choose_from_args(args: argparse.Namespace, loaded: LoadedSnapshot) -> ClassChoice:
    """The classes the arguments choose (``--auto`` unless ``--classes``), with session overrides applied.

    Raises
    ------
    InputError
        Unknown class numbers, invalid overrides, or no class left after the filters.
    """
    classes = parse_class_numbers(args.classes) if args.classes is not None else None
    overrides = session_overrides(loaded.directory, loaded.snapshot) if classes is None else {}
    return choose_classes(
        loaded.snapshot,
        classes=classes,
        auto=classes is None,
        min_particles=args.min_particles,
        max_resolution_angstrom=args.max_resolution,
        junk_threshold=args.junk_threshold,
        overrides=overrides,
        source=loaded.paths.model_star,
    )


def describe_choice(choice: ClassChoice, n_classes: int) -> str:
    """One sentence: how many classes were kept and why the others were not."""
    kinds: dict[str, int] = {}
    for kind in choice.dropped_kind.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    how = "by junk score" if choice.junk_scores is not None else "by number"
    dropped = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    numbers = ", ".join(str(c) for c in choice.kept)
    text = f"{len(choice.kept)} of {n_classes} classes chosen {how} ({numbers})"
    if dropped:
        text += f"; left out: {dropped}"
    if choice.overrides:
        text += f"; user overrides applied to classes {sorted(choice.overrides)}"
    return text


def class_table(choice: ClassChoice, loaded: LoadedSnapshot) -> list[str]:
    """Lines of a per-class table: number, particles, resolution, junk score, kept or why not."""
    snapshot = loaded.snapshot
    counts = snapshot.particle_counts
    lines = [f"{'class':>5} {'particles':>9} {'res (A)':>8} {'junk':>5}  choice"]
    for c in range(1, snapshot.n_classes + 1):
        res = float(snapshot.resolution_angstrom[c - 1])
        score = "" if choice.junk_scores is None else f"{choice.junk_scores[c - 1]:.2f}"
        verdict = "kept" if c not in choice.dropped else f"left out: {choice.dropped[c]}"
        shown = f"{res:.1f}" if res < float("inf") else "-"
        lines.append(f"{c:>5} {int(counts[c - 1]):>9,} {shown:>8} {score:>5}  {verdict}")
    return lines


def relative_note(loaded: LoadedSnapshot, absolute_paths: bool) -> str:
    """How the image names of written STAR files resolve."""
    if not loaded.stacks_found:
        return (
            f"the particles' stacks were not found under {loaded.project_dir}: image names are as in the "
            "snapshot; pass --project-dir to say where the project is"
        )
    if absolute_paths:
        return "image names are absolute paths"
    return f"image names are relative to the project directory {loaded.project_dir} (run RELION from there)"


__all__ = [
    "SOURCE_HELP",
    "Source",
    "add_class_args",
    "add_source_args",
    "choose_from_args",
    "class_table",
    "describe_choice",
    "load_source",
    "relative_note",
]
