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

Data-parallel (torch.distributed: gloo on CPUs, NCCL on GPUs): --nproc N starts N processes on this
machine (torch's launcher, torchrun); each classifies its share of every mini-batch and of the full
passes, the sufficient statistics are summed over the processes (all_reduce) and every process runs
the same M-step, so the result equals one process's up to the order of floating-point sums. --threads
is per process (default: the cores divided among the processes); with CUDA, process i uses cuda:i.
On several nodes, start it with torchrun on each node instead (no --nproc), e.g.
  torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \
      -m otf2d.core.cli classify particles.star --classes 100 --out Class2D/otf2d
Every process must see the same input files; rank 0 alone writes the outputs and prints.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from otf2d.core.classification_flags import add_classification_args, params_from_args
from otf2d.core.config import VerdictConfig, load_config
from otf2d.core.errors import ConfigError, InputError
from otf2d.core.input_args import add_input_args, read_table_from_args
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.resources.device import add_device_args, choose_device

if TYPE_CHECKING:
    from otf2d.core.config import Class2DParams
    from otf2d.core.readers import ParticleTable
    from otf2d.engine.classify.offline import OfflineResult, PhaseUpdate
    from otf2d.engine.classify.progress_bar import ProgressBar
    from otf2d.engine.resources.ranks import RankEnv


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
    run.add_argument(
        "--nproc",
        type=_process_count,
        default=1,
        metavar="N",
        help="processes on this machine, data-parallel through torch.distributed (default %(default)s; "
        "under torchrun, leave it out)",
    )


def _process_count(text: str) -> int:
    """``--nproc``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nproc must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--nproc must be >= 1, got {value}")
    return value


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
    from otf2d.engine.resources.ranks import rank_env

    place = rank_env()
    if place is None and args.nproc > 1:
        return _launch(args)
    if place is not None and args.nproc not in (1, place.world_size):
        raise ConfigError(
            None, f"--nproc {args.nproc} in a run of WORLD_SIZE={place.world_size}: under torchrun, leave --nproc out"
        )
    return _classify(args, place)


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: check the options and the input once, then run ``N`` ranks of this command line."""
    from otf2d.engine.resources.device import check_threads
    from otf2d.engine.resources.ranks import launch_local, threads_per_process

    check_threads(args.threads)
    params_from_args(args)
    junk_threshold_from_args(args)
    table = read_table_from_args(args.input, args)
    if args.nproc > len(table):
        raise InputError(
            args.input, f"--nproc {args.nproc} for {len(table)} particles: use at most one process per particle"
        )
    command_line = getattr(args, "command_line", None)
    if command_line is None:
        raise ConfigError(None, "--nproc needs the otf2d command line: run it as `otf2d classify ... --nproc N`")
    return launch_local(args.nproc, command_line, threads_per_process(args.nproc, args.threads))


def _classify(args: argparse.Namespace, place: RankEnv | None) -> int:
    """Classify in this process: alone (``place`` ``None``) or as one rank of a data-parallel run."""
    from otf2d.engine.classify.offline import classify_table, classify_table_on_ranks
    from otf2d.engine.resources.ranks import join, leave

    start = time.perf_counter()
    params = params_from_args(args)
    threshold = junk_threshold_from_args(args)
    device = choose_device(args.device, args.threads)
    table = read_table_from_args(args.input, args)
    ranks = None
    try:
        if place is not None:
            ranks, device = join(place, device)
        lead = ranks is None or ranks.rank == 0
        where = str(device) if ranks is None else f"{ranks.world_size} processes ({device} each)"
        if lead:
            print(
                f"otf2d classify: {len(table)} particles from {args.input} (box {table.box_size} px, "
                f"{table.pixel_size_angstrom:g} A/px) into {params.n_classes} classes on {where}",
                file=sys.stderr,
                flush=True,
            )
        bar = _progress_bar(len(table), params) if lead and not args.quiet else None
        on_phase, on_processed = (None, None) if bar is None else (bar.on_phase, bar.advance)
        result: OfflineResult | None
        if ranks is None:
            result = classify_table(table, params, device=device, on_phase=on_phase, on_processed=on_processed)
        else:
            result = classify_table_on_ranks(
                table, params, ranks, device=device, on_phase=on_phase, on_processed=on_processed
            )
    finally:
        if ranks is not None:
            leave()
    if bar is not None:
        bar.finish(params)
    if result is None:  # not rank 0: rank 0 writes
        return 0
    _write_and_report(args, table, result, threshold, time.perf_counter() - start, where)
    return 0


class _Bar:
    """The progress bar with the callbacks the classification calls."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar

    def on_phase(self, update: PhaseUpdate) -> None:
        self.bar.set_phase(update.phase, update.iteration, update.total_iterations)

    def advance(self, n: int) -> None:
        self.bar.advance(n)

    def finish(self, params: Class2DParams) -> None:
        total = params.online_em_iterations + params.final_full_iterations
        self.bar.set_phase("done", total, total)
        self.bar.close()


def _progress_bar(n_particles: int, params: Class2DParams) -> _Bar:
    from otf2d.engine.classify.offline import planned_particles
    from otf2d.engine.classify.progress_bar import ProgressBar

    return _Bar(ProgressBar(planned_particles(n_particles, params)))


def _write_and_report(
    args: argparse.Namespace, table: ParticleTable, result: OfflineResult, threshold: float, wall: float, where: str
) -> None:
    """Score and write the snapshot under ``--out``; the summary on stdout."""
    from otf2d.core.durations import format_clock
    from otf2d.monitoring.quality import score_snapshot
    from otf2d.monitoring.snapshots import write_snapshot

    snap = score_snapshot(result.snapshot, threshold=threshold)
    paths = write_snapshot(snap, args.out, project_dir=table.project_dir, session=table.session)
    populated = int((snap.particle_counts > 0).sum())
    print(f"classified {len(snap.particles)} particles: {populated} of {snap.n_classes} classes populated")
    print(junk_summary(snap))
    print(
        f"wall time {format_clock(wall)} ({wall:.1f} s; classification {result.classify_seconds:.1f} s, "
        f"{result.particles_read} images read, {result.particles_read / max(result.classify_seconds, 1e-9):,.0f}/s) "
        f"on {where}"
    )
    print(f"outputs in {args.out}:")
    for role, path in paths.files().items():
        print(f"  {role:<18} {path}")


__all__ = ["add_args", "junk_summary", "junk_threshold_from_args", "main"]
