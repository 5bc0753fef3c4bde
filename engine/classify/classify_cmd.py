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
  run_itNNN_particles.csg, run_itNNN_class_averages.csg               their cryoSPARC result groups
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
import sys
import time
from pathlib import Path

import numpy as np

from otf2d.core.classification_flags import add_classification_args, params_from_args
from otf2d.core.config import VerdictConfig, load_config
from otf2d.core.input_args import add_input_args, read_table_from_args
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.resources.device import add_device_args, choose_device


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``otf2d classify``."""
    parser.add_argument("input", type=Path, help="particles: RELION particles.star / _extract.star, or cryoSPARC .cs")
    parser.add_argument("--out", required=True, type=Path, help="job directory for the outputs (created if missing)")
    parser.add_argument(
        "--config", type=Path, help="TOML file whose [classification] table sets the options (flags win)"
    )
    add_classification_args(parser, "classification (cryoSPARC's parameters; defaults are cryoSPARC's)")
    run = parser.add_argument_group("run")
    add_device_args(run)
    add_input_args(run)
    run.add_argument("--quiet", action="store_true", help="no progress bar")


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
    threshold = snapshot.effective_junk_threshold
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

    from otf2d.core.durations import format_clock
    from otf2d.engine.classify.offline import PhaseUpdate, classify_table, planned_particles
    from otf2d.engine.classify.progress_bar import ProgressBar
    from otf2d.monitoring.quality import score_snapshot
    from otf2d.monitoring.snapshots import write_snapshot

    start = time.perf_counter()
    params = params_from_args(args)
    device = choose_device(args.device, args.threads)
    table = read_table_from_args(args.input, args)
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

    def on_processed(n: int) -> None:
        if bar is not None:
            bar.advance(n)

    result = classify_table(table, params, device=device, on_phase=on_phase, on_processed=on_processed)
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
        f"wall time {format_clock(wall)} ({wall:.1f} s; classification {result.classify_seconds:.1f} s, "
        f"{result.particles_read} images read, {result.particles_read / max(result.classify_seconds, 1e-9):,.0f}/s) "
        f"on {device}"
    )
    print(f"outputs in {args.out}:")
    for role, path in paths.files().items():
        print(f"  {role:<18} {path}")
    return 0


__all__ = ["add_args", "junk_summary", "junk_threshold_from_args", "main"]
