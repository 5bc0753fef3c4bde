"""Streaming equals batch (issue 12 item 4): the engine's classes against ``otf2d classify``'s.

For each seed, a realistic session is made from the 70S ribosome map (``otf2d.simulator.presets.realistic_session``:
box 80 at 5 Å/px, 20 % junk of five kinds), and its micrographs arrive one by one at a real session of
the engine (journal on disk, the engine's ``SessionFolder`` and classifier, driven as the worker drives
them: initialise once ``K × batch`` particles are journaled, fold every micrograph as it arrives; no
idle time between arrivals, the worst case for the engine). The table scores against ground truth:

- ``streaming``: the classes when the last micrograph has been folded, before any idle time;
- ``stream+idle``: after the engine's idle-time reclassification has run to its end (every folded
  particle classified from scratch as ``otf2d classify`` does, then adopted);
- ``classify``: ``classify_batches`` (what ``otf2d classify`` runs) on the same particles in arrival order.

Times: ``first classes s`` is the initialisation (from the ``K × batch``-th particle to the first
classes); ``idle s`` the idle time the reclassification took after the last arrival; ``snapshot s``
building one snapshot (classes and every particle's assignment; not writing it). The engine's grid
verdict (``otf2d.monitoring.state.SessionMonitor``, one micrograph every 30 s of simulated time) is
printed under the table for the streaming classes and after reclassification.

Defaults: ``--classes 20 --batch-per-class 40`` (as the issue's engine run; with 100, a
2,000-particle session is all initialisation).

Usage::

    .venv/bin/python benchmarks/stream_vs_batch.py --seeds 1            # ~15 min on 2 cores
    .venv/bin/python benchmarks/stream_vs_batch.py --seeds 1,2,3 --batch-per-class 100 --particles 6000
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from otf2d.core.config import Class2DParams, VerdictConfig
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers import load_batch, read_particle_table
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.em.driver import BatchList, classify_batches
from otf2d.engine.serving.em_adapter import em_classifier_factory
from otf2d.engine.serving.folding import SessionFolder
from otf2d.engine.serving.session import Session
from otf2d.monitoring.quality import score_snapshot
from otf2d.monitoring.state import SessionMonitor
from otf2d.simulator.particles import SimulationSetup, prepare_simulation
from otf2d.simulator.presets import RIBOSOME_MAP, realistic_session
from otf2d.simulator.scoring import QualityReport, score_classification
from otf2d.simulator.session import simulate_session

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Simulated time between two micrographs (s): 200 particles each make 24,000 particles an hour.
MICROGRAPH_SECONDS = 30.0
METRICS: tuple[tuple[str, str, str], ...] = (
    ("good classes", "good_classes", "d"),
    ("empty classes", "empty_classes", "d"),
    ("view spread deg", "view_spread_degrees", ".1f"),
    ("in-plane deg", "in_plane_consistency_degrees", ".1f"),
    ("junk isolation", "junk_isolation", ".3f"),
    ("selection F1", "selection_f1", ".3f"),
    ("fidelity NCC 12A", "fidelity_ncc", ".3f"),
    ("faithful classes", "faithful_classes", "d"),
)


@dataclass
class Column:
    """One way of classifying one seed's session, scored."""

    name: str
    seed: int
    quality: QualityReport
    times: dict[str, float]
    verdict: str = ""


def micrograph_batches(star: Path) -> list[ParticleBatch]:
    """The session's particles, one batch per micrograph in arrival order (the extract STAR files' order)."""
    files = sorted(star.parent.glob("Movies/*_extract.star"))
    if not files:
        raise SystemExit(f"no per-micrograph extract STAR files beside {star}")
    batches = []
    for path in files:
        table = read_particle_table(path, session="bench", optics_from=star)
        batches.append(load_batch(table, np.arange(len(table))))
    return batches


def score(snapshot: ClassSnapshot, setup: SimulationSetup, truth: pd.DataFrame, k: int) -> QualityReport:
    scored = score_snapshot(snapshot)
    flags = {i: bool(s > 0.5) for i, s in enumerate(scored.junk_score)} if scored.junk_score is not None else None
    return score_classification(
        truth,
        scored.particles.image_names(),
        scored.particles.class_index,
        scored.particles.psi_degrees,
        scored.averages,
        scored.pixel_size_angstrom,
        setup.spectrum,
        particle_diameter_angstrom=setup.particle_diameter_angstrom,
        first_class_label=0,
        n_classes=k,
        junk_flags=flags,
    )


def stream(
    batches: Sequence[ParticleBatch], params: Class2DParams, work: Path, setup: SimulationSetup, truth: pd.DataFrame
) -> list[Column]:
    """Micrographs arrive one by one at a real session; the classes before and after idle reclassification."""
    session = Session.create(work / "sessions", "bench", params)
    folder = SessionFolder(session, em_classifier_factory, torch.device("cpu"))
    times: dict[str, float] = {}
    clock = [0.0]  # simulated collection time: one micrograph every MICROGRAPH_SECONDS
    monitor = SessionMonitor(VerdictConfig(), clock=lambda: clock[0])
    for m, batch in enumerate(batches):
        clock[0] += MICROGRAPH_SECONDS
        header = {"msg_id": f"m{m}", "file_ready_time": time.time(), "source": f"mic{m}.star"}
        session.journal.append_many([(header, batch)])
        if folder.ready_to_initialise():
            start = time.perf_counter()
            folder.initialise(quick=True)  # as the engine does, since it reclassifies in idle time
            times["first classes s"] = time.perf_counter() - start
        while folder.classifier is not None and folder.pending:
            folder.fold(2048)
        monitor.record_classified("bench", folder.high_water, clock[0])
    k = params.n_classes
    start = time.perf_counter()
    snapshot = folder.snapshot(session.journal.assignments(), 1)
    times["snapshot s"] = time.perf_counter() - start
    before = Column(
        "streaming", params.seed, score(snapshot, setup, truth, k), dict(times), verdict_of(monitor, snapshot)
    )
    start = time.perf_counter()
    while folder.wants_idle_work():
        folder.idle_step()
        while folder.pending:
            folder.fold(2048)
    times["idle s"] = time.perf_counter() - start
    after = folder.snapshot(session.journal.assignments(), 2)
    clock[0] += times["idle s"]
    return [
        before,
        Column("stream+idle", params.seed, score(after, setup, truth, k), times, verdict_of(monitor, after)),
    ]


def verdict_of(monitor: SessionMonitor, snapshot: ClassSnapshot) -> str:
    """The engine's grid verdict on ``snapshot`` (its state, and the deciding reason)."""
    verdict = monitor.publish("bench", snapshot).verdict
    return f"{verdict.state.upper()}: {verdict.reasons[0]}" if verdict.reasons else verdict.state.upper()


def batch_column(
    batches: Sequence[ParticleBatch], params: Class2DParams, setup: SimulationSetup, truth: pd.DataFrame
) -> Column:
    start = time.perf_counter()
    result = classify_batches(BatchList(batches), params)
    wall = time.perf_counter() - start
    return Column("classify", params.seed, score(result.snapshot, setup, truth, params.n_classes), {"wall s": wall})


def render(columns: Sequence[Column]) -> str:
    names = [f"{c.name} s{c.seed}" for c in columns]
    width = max(12, *(len(n) for n in names))
    lines = ["| metric | " + " | ".join(f"{n:>{width}}" for n in names) + " |", "|---|" + "---:|" * len(names)]
    for label, field, spec in METRICS:
        cells = []
        for c in columns:
            value = getattr(c.quality, field)
            cells.append("-" if isinstance(value, float) and not math.isfinite(value) else format(value, spec))
        lines.append(f"| {label} | " + " | ".join(f"{x:>{width}}" for x in cells) + " |")
    for key in ("first classes s", "snapshot s", "idle s", "wall s"):
        cells = [format(c.times[key], ".1f") if key in c.times else "" for c in columns]
        lines.append(f"| {key} | " + " | ".join(f"{x:>{width}}" for x in cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1", help="comma-separated seeds, one session each (default 1)")
    parser.add_argument("--particles", type=int, default=2000, help="particles per session (default 2000)")
    parser.add_argument("--classes", type=int, default=20, help="K (default 20)")
    parser.add_argument("--batch-per-class", type=int, default=40, help="batch per class (default 40, as the issue)")
    parser.add_argument("--snr", type=float, default=0.05, help="SNR (default 0.05)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--map", type=Path, default=SHARED_DATA / RIBOSOME_MAP, help="the 70S ribosome map")
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a new temp dir)")
    args = parser.parse_args(argv)
    if not args.map.is_file():
        raise SystemExit(f"the map {args.map} is not there: pass --map (ASPIRE's clean70SRibosome_vol_65p.mrc)")
    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="otf2d-stream-vs-batch-"))
    columns: list[Column] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        setup = prepare_simulation(realistic_session(args.map, n_particles=args.particles, snr=args.snr, seed=seed))
        work = out / f"seed{seed}"
        summary = simulate_session(setup, work)
        truth = pd.read_csv(work / "truth.csv")
        batches = micrograph_batches(summary.particles_star)
        params = Class2DParams(n_classes=args.classes, batch_size_per_class=args.batch_per_class, seed=seed)
        columns += stream(batches, params, work, setup, truth)
        columns.append(batch_column(batches, params, setup, truth))
        print(render(columns), flush=True)
        print(flush=True)
    for c in columns:
        if c.verdict:
            print(f"verdict, {c.name} s{c.seed}: {c.verdict}")
    print(f"sessions under {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
