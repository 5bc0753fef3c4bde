"""Classify a finished particle set (RELION particles.star or cryoSPARC .cs) into 2D classes, offline.

Example usage:

    otf2d classify Extract/job005/particles.star --classes 50 --out Class2D/otf2d
    otf2d classify J42_particles.cs --classes 100 --out Class2D/otf2d --max-res 8 --threads 8

The schedule is cryoSPARC's "2D Classification": classes start from a random subset at random
in-plane angles; --online-em-iterations online-EM iterations each see a fresh random mini-batch of
(--batch-per-class x --classes) particles; then --final-full-iterations full EM passes over every
particle give the final classes and every particle's class, in-plane angle, shift and posterior.
Images are read from the stacks in batches as they are needed, so the data set need not fit in
memory. Runs on CUDA when present (--device auto), else on the CPU; on the CPU the result is
identical from run to run for a given --seed (and --threads).

Every classification option defaults to cryoSPARC's default (shown below); --config reads them from
the [classification] table of a TOML file, and flags given here override the file.

Written under --out (each file atomically; run_itNNN with NNN the number of EM iterations done):
  run_itNNN_classes.mrcs, run_itNNN_model.star, run_itNNN_data.star   RELION Class2D output
  run_itNNN_particles.cs, run_itNNN_class_averages.cs                 cryoSPARC-style .cs
  run_itNNN_gallery.png                                               classes, largest first
  run_itNNN_otf2d.json, latest.json                                   provenance, newest snapshot
Each class gets a junk score in [0, 1] (otf2d.monitoring.quality; classes above the [verdict]
junk_score_threshold of --config, default 0.5, are junk): in the _model.star as
rlnPredictedClassScore = 1 - junk score (RELION 4's class-ranker label), in the class-average .cs as
otf2d/junk_score and otf2d/is_junk, and as red borders in the gallery.
A progress bar (phase, iteration, particles, particles/s, ETA) goes to stderr; a summary to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from otf2d.core.config import Class2DParams, VerdictConfig, load_config
from otf2d.core.errors import ConfigError
from otf2d.core.snapshot import ClassSnapshot

_DEFAULTS = Class2DParams()


@dataclass(frozen=True)
class ParamFlag:
    """One command-line flag of a ``Class2DParams`` field."""

    field: str
    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    boolean: bool = False


def _default(name: str) -> Any:
    return getattr(_DEFAULTS, name)


#: Every field of ``Class2DParams`` and its flag (``--force-max``/``--marginalise`` share one field).
PARAM_FLAGS: tuple[ParamFlag, ...] = (
    ParamFlag("n_classes", ("--classes", "-K"), "number of classes", int, "K"),
    ParamFlag(
        "initial_uncertainty_factor",
        ("--icuf",),
        "initial classification uncertainty factor: posterior temperature at the start, annealed to 1",
        float,
        "F",
    ),
    ParamFlag(
        "max_resolution_angstrom", ("--max-res",), "maximum resolution used (sets the internal box), A", float, "A"
    ),
    ParamFlag(
        "max_alignment_resolution_angstrom",
        ("--max-align-res",),
        "maximum alignment resolution, A (default: --max-res)",
        float,
        "A",
    ),
    ParamFlag(
        "min_alignment_resolution_angstrom",
        ("--min-align-res",),
        "minimum alignment resolution, A, against micelles (default: off)",
        float,
        "A",
    ),
    ParamFlag(
        "mask_diameter_angstrom",
        ("--mask-diameter",),
        "circular mask diameter, A (default: 85%% of the box)",
        float,
        "A",
    ),
    ParamFlag(
        "mask_outer_diameter_angstrom",
        ("--mask-outer-diameter",),
        "outer diameter of the soft mask edge, A (default: 1.2 x --mask-diameter, at most the box)",
        float,
        "A",
    ),
    ParamFlag("online_em_iterations", ("--online-em-iterations",), "number of online-EM iterations", int, "N"),
    ParamFlag("batch_size_per_class", ("--batch-per-class",), "online-EM batch size per class", int, "N"),
    ParamFlag("final_full_iterations", ("--final-full-iterations",), "number of final full EM passes", int, "N"),
    ParamFlag("zero_pad_factor", ("--zero-pad",), "2D zero-padding factor", int, "F"),
    ParamFlag("per_particle_scale", ("--per-particle-scale",), "fit a scale per particle", boolean=True),
    ParamFlag("clamp_solvent", ("--clamp-solvent",), "zero the classes outside the mask", boolean=True),
    ParamFlag("non_negativity", ("--non-negativity",), "no negative density in the classes", boolean=True),
    ParamFlag("recenter", ("--recenter",), "re-centre classes on their centre of mass", boolean=True),
    ParamFlag(
        "recenter_threshold",
        ("--recenter-threshold",),
        "re-centring uses pixels above this fraction of the class maximum",
        float,
        "F",
    ),
    ParamFlag(
        "align_filaments_vertically",
        ("--align-filaments-vertically",),
        "turn elongated classes upright",
        boolean=True,
    ),
    ParamFlag("sort_by_size", ("--sort",), "number classes by size, largest first", boolean=True),
    ParamFlag(
        "in_plane_step_degrees",
        ("--in-plane-step",),
        "in-plane angular step, degrees (default: RELION's rule 360/ceil(pi x diameter / resolution))",
        float,
        "DEG",
    ),
    ParamFlag(
        "max_shift_angstrom", ("--max-shift",), "largest shift searched, A (default: 10%% of the mask)", float, "A"
    ),
    ParamFlag(
        "noise_anneal_start_iteration",
        ("--noise-anneal-start",),
        "online-EM iteration where the ICUF annealing starts",
        int,
        "N",
    ),
    ParamFlag(
        "noise_anneal_iterations", ("--noise-anneal-iterations",), "iterations the ICUF annealing takes", int, "N"
    ),
    ParamFlag("seed", ("--seed",), "random seed (same seed, same result on the CPU)", int, "N"),
)

#: The field set by ``--force-max`` / ``--marginalise``.
FORCE_MAX_FIELD = "force_max_over_poses"
#: The field set by ``--precision``.
PRECISION_FIELD = "precision"


def _help_default(f: ParamFlag) -> str:
    value = _default(f.field)
    if value is None:
        return f.help  # the help text says what it is derived from
    if f.boolean:
        return f"{f.help} (default: {'on' if value else 'off'})"
    return f"{f.help} (default: {value})"


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d classify``."""
    parser.add_argument("input", type=Path, help="particles: RELION particles.star / _extract.star, or cryoSPARC .cs")
    parser.add_argument("--out", required=True, type=Path, help="job directory for the outputs (created if missing)")
    parser.add_argument(
        "--config", type=Path, help="TOML file whose [classification] table sets the options (flags win)"
    )
    cls = parser.add_argument_group("classification (cryoSPARC's parameters; defaults are cryoSPARC's)")
    for f in PARAM_FLAGS:
        if f.boolean:
            cls.add_argument(
                *f.flags, dest=f.field, action=argparse.BooleanOptionalAction, default=None, help=_help_default(f)
            )
        else:
            cls.add_argument(
                *f.flags, dest=f.field, type=f.type, metavar=f.metavar, default=None, help=_help_default(f)
            )
    poses = cls.add_mutually_exclusive_group()
    poses.add_argument(
        "--force-max",
        dest=FORCE_MAX_FIELD,
        action="store_const",
        const=True,
        default=None,
        help="maximise over poses and shifts (default: on when --classes > 20)",
    )
    poses.add_argument(
        "--marginalise",
        dest=FORCE_MAX_FIELD,
        action="store_const",
        const=False,
        help="marginalise over poses and shifts (default: on when --classes <= 20)",
    )
    cls.add_argument(
        "--precision",
        dest=PRECISION_FIELD,
        choices=("fp32", "bf16", "fp16"),
        default=None,
        help=f"precision of the E-step matrix products (default: {_DEFAULTS.precision}; see benchmarks/classify.py)",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to compute (default auto)"
    )
    run.add_argument("--threads", type=int, default=None, metavar="N", help="CPU threads (default: torch's choice)")
    run.add_argument(
        "--optics-from", type=Path, default=None, help="RELION file whose data_optics applies (for _extract.star input)"
    )
    run.add_argument(
        "--project-dir",
        type=Path,
        default=None,
        help="directory the stack paths are relative to (default: found from the input's location)",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def params_from_args(args: argparse.Namespace) -> Class2DParams:
    """The classification parameters: cryoSPARC's defaults, then ``--config``, then the flags given.

    Raises
    ------
    ConfigError
        An invalid config file or an invalid value.
    """
    params = load_config(args.config).classification if getattr(args, "config", None) is not None else Class2DParams()
    names = [f.field for f in PARAM_FLAGS] + [FORCE_MAX_FIELD, PRECISION_FIELD]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    return dataclasses.replace(params, **overrides) if overrides else params


def junk_threshold_from_args(args: argparse.Namespace) -> float:
    """The junk-score threshold: the ``[verdict]`` table of ``--config`` when given, else the default.

    Raises
    ------
    ConfigError
        An invalid config file.
    """
    config = getattr(args, "config", None)
    verdict = load_config(config).verdict if config is not None else VerdictConfig()
    return float(verdict.junk_score_threshold)


def junk_summary(snapshot: ClassSnapshot) -> str:
    """One line: classes flagged junk and the share of particles in them (the snapshot must be scored)."""
    scores = np.asarray(snapshot.junk_score, dtype=np.float64)
    threshold = float(snapshot.parameters.get("junk_score_threshold", 0.5))
    junk = scores > threshold
    counts = np.asarray(snapshot.particle_counts, dtype=np.int64)
    total = int(counts.sum())
    fraction = float(counts[junk].sum() / total) if total else 0.0
    return (
        f"junk: {int(junk.sum())} of {snapshot.n_classes} classes flagged (junk score > {threshold:g}), "
        f"{fraction:.0%} of the particles; scores in the _model.star (rlnPredictedClassScore = 1 - junk score) "
        "and the class-average .cs (otf2d/junk_score)"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``otf2d classify``; returns the exit status."""
    import torch

    from otf2d.core.readers import read_particle_table
    from otf2d.engine.classify.offline import PhaseUpdate, classify_table, planned_particles
    from otf2d.engine.classify.progress_bar import ProgressBar, format_duration
    from otf2d.monitoring.quality import score_snapshot
    from otf2d.monitoring.snapshots import write_snapshot

    start = time.perf_counter()
    params = params_from_args(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(None, "--device cuda: no CUDA device is available")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(None, f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    table = read_particle_table(args.input, project_dir=args.project_dir, optics_from=args.optics_from)
    print(
        f"otf2d classify: {len(table)} particles from {args.input} (box {table.box_size} px, "
        f"{table.pixel_size_angstrom:g} A/px) into {params.n_classes} classes on {device}",
        file=sys.stderr,
        flush=True,
    )
    bar = None if args.quiet else ProgressBar(planned_particles(len(table), params))

    def on_phase(update: PhaseUpdate) -> None:
        if bar is not None:
            bar.set_phase(update.phase, update.iteration, update.total_iterations)

    def on_read(n: int) -> None:
        if bar is not None:
            bar.advance(n)

    result = classify_table(table, params, device=device, on_phase=on_phase, on_read=on_read)
    if bar is not None:
        bar.set_phase("done", result.snapshot.iteration, params.online_em_iterations + params.final_full_iterations)
        bar.close()
    snap = score_snapshot(result.snapshot, threshold=junk_threshold_from_args(args))
    paths = write_snapshot(snap, args.out, project_dir=table.project_dir, session=table.session)
    wall = time.perf_counter() - start
    populated = int((snap.particle_counts > 0).sum())
    print(f"classified {len(snap.particles)} particles: {populated} of {snap.n_classes} classes populated")
    print(junk_summary(snap))
    print(
        f"wall time {format_duration(wall)} ({wall:.1f} s; classification {result.classify_seconds:.1f} s, "
        f"{result.particles_read} images read, {result.particles_read / max(result.classify_seconds, 1e-9):,.0f}/s) "
        f"on {device}"
    )
    print(f"outputs in {args.out}:")
    for role, path in paths.files().items():
        print(f"  {role:<18} {path}")
    return 0


__all__ = [
    "FORCE_MAX_FIELD",
    "PARAM_FLAGS",
    "PRECISION_FIELD",
    "ParamFlag",
    "add_args",
    "junk_summary",
    "junk_threshold_from_args",
    "main",
    "params_from_args",
]
