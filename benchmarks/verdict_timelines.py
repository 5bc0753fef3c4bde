"""Verdict timelines from real classification runs: three simulated grids, classified as they arrive.

Each grid is simulated by the virtual microscope (``simulator``) and fed, micrograph by micrograph in
arrival order, through the engine's own classifier (``otf2d.engine.serving.em_adapter.EmClassifier``, the class
the engine's worker drives): the classes are initialised from the first ``K × batch_per_class``
particles with the classifier's initial schedule, then every later micrograph is folded in with one
online-EM step, as ``otf2d.engine.serving.folding.SessionFolder`` does. This is the engine with no
idle time (``--no-revisit``, or arrivals faster than it folds): no reclassification ever replaces the
streaming classes, so they start from the full initial schedule, not the quick start. At every
``--every`` particles a snapshot is taken (``Classifier.snapshot``) and judged by the engine's monitoring
(``otf2d.monitoring.state.SessionMonitor``: junk scores, distinct views, rates, verdict) on a simulated
clock: particles arrive at ``--rate`` per second, and classification is taken to keep up (the
classifier's own compute time is not on the clock).

The grids (``GRIDS``):

``good``
    20 % junk (every kind of the simulator), the good particles spread evenly over the five views of
    the phantom in ``GOOD_VIEWS`` (each a Gaussian cone of 5° per axis, random in-plane angle), so
    the number of distinct views is known: 5.
``junk-heavy``
    80 % junk (every kind), the particles in uniformly random views.
``preferred``
    20 % junk; the simulator's ``--preferred-orientation``: 75 % of the particles about one view
    (6° per axis), 10 % about a second, the rest uniform.

With ``--map`` (the 70S ribosome map of ``../shared/data``), the grids are realistic instead
(``MAP_GRIDS``): the realistic session of issue 12 (box 80 at 5 Å/px, SNR 0.05, uniform views, 20 %
junk), the same with 80 % junk, and with 90 % of the particles within 4° (per axis) of one view.

For each grid one table row per snapshot (at every multiple of ``--every``; the first when the classes
start, ``K × batch_per_class`` particles, if that is later): particles classified, the true junk fraction of those
particles and the measured one (particles in classes flagged junk), the distinct views, the share of
good particles in the largest view, the verdict, its confidence and its first reason. After the
table, per junk kind (``truth.csv``'s ``junk_type``), the share of its particles that ended in
classes flagged junk at the last snapshot, and for the good grid the distinct views against the truth.
The last lines say, per grid, from how many particles on the verdict stayed what it finally was::

    grid good: verdict collect from 2,000 particles on

Usage::

    .venv/bin/python benchmarks/verdict_timelines.py          # 3 grids x 8,000 particles (~1 min, 2 idle cores)
    .venv/bin/python benchmarks/verdict_timelines.py --particles 3000 --every 500 --grids good
    .venv/bin/python benchmarks/verdict_timelines.py --map ../shared/data/aspire/clean70SRibosome_vol_65p.mrc \\
        --seeds 1,2,3 --particles 6000 --every 500   # the realistic grids (issue 15 item 6)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from otf2d.core.config import Class2DParams, VerdictConfig
from otf2d.core.ctf import relion_ctf_2d
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.snapshot import ASSIGNMENT_ARRAYS, AssignmentRecord, ClassSnapshot, ParticleAssignments
from otf2d.engine.serving.em_adapter import EmClassifier
from otf2d.monitoring.state import MonitoringState, SessionMonitor
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import (
    SimulatedParticles,
    SimulationSetup,
    draw_ctf,
    normalise_like_relion,
    prepare_simulation,
    simulate_particles,
)
from otf2d.simulator.presets import realistic_session
from otf2d.simulator.projection import project, viewing_direction
from otf2d.simulator.views import PREFERRED_VIEWS_DEGREES, views_near

#: Five views of the phantom ``(rot, tilt)`` in degrees that look different in 2D (their pairwise
#: rotation-invariant similarity, mirrors included, is at most 0.7: ``tests/monitoring_truth.py``).
GOOD_VIEWS: tuple[tuple[float, float], ...] = (
    (30.0, 50.0),
    (-120.0, 110.0),
    (45.0, 135.0),
    (-60.0, 60.0),
    (60.0, 30.0),
)
#: Spread of the good grid's views about each of ``GOOD_VIEWS`` (Gaussian, degrees per axis).
GOOD_VIEW_SPREAD_DEGREES = 5.0
#: A good particle of the preferred grid is "in the main view" within this angle of it (or its mirror).
MAIN_VIEW_RADIUS_DEGREES = 15.0
#: Particles per micrograph (one arrival, one folding step).
PARTICLES_PER_MICROGRAPH = 100
#: Where the simulated stacks would live (only names: nothing is written to disk).
STACK_DIR = "Extract/job005/Movies"


@dataclass(frozen=True)
class GridSpec:
    """One simulated grid: its junk, its views and what the verdict should be."""

    name: str
    junk_fraction: float
    preferred_orientation: bool = False
    views: tuple[tuple[float, float], ...] | None = None
    description: str = ""


GRIDS: dict[str, GridSpec] = {
    "good": GridSpec("good", 0.2, views=GOOD_VIEWS, description="20% junk, 5 distinct views"),
    "junk-heavy": GridSpec("junk-heavy", 0.8, description="80% junk, uniform views"),
    "preferred": GridSpec(
        "preferred", 0.2, preferred_orientation=True, description="20% junk, 75% of the particles about one view"
    ),
}


#: The truth fields of :class:`Micrograph`, in order.
TRUTH_FIELDS = ("is_junk", "junk_type", "rot", "tilt")


@dataclass(frozen=True)
class Micrograph:
    """One arrival: a batch of particles and its truth."""

    batch: ParticleBatch
    is_junk: npt.NDArray[np.bool_]
    junk_type: npt.NDArray[np.str_]
    rot: npt.NDArray[np.float64]
    tilt: npt.NDArray[np.float64]


@dataclass(frozen=True)
class TimelineRow:
    """The monitoring state after ``particles`` particles were classified."""

    particles: int
    true_junk_fraction: float
    junk_fraction: float
    distinct_views: int
    largest_view_share: float
    verdict: str
    confidence: float
    reason: str


@dataclass(frozen=True)
class GridRun:
    """A grid's timeline and what its last snapshot says against the truth."""

    spec: GridSpec
    rows: list[TimelineRow]
    junk_recall_by_type: dict[str, tuple[int, float]]
    good_kept: float
    true_views: int | None
    true_main_view_share: float | None
    view_purity: list[tuple[int, int, int, float]]
    seconds: float
    final_state: MonitoringState

    def settled(self) -> tuple[str, int]:
        """The final verdict and the particle count from which every later row has it."""
        final = self.rows[-1].verdict
        since = self.rows[-1].particles
        for row in reversed(self.rows):
            if row.verdict != final:
                break
            since = row.particles
        return final, since


#: The grids of the realistic mode (``--map``): the realistic session of issue 12 (uniform views) and
#: its variations; the preferred grid puts 90 % of the particles within a 4° cone (per axis) of one view,
#: so that ≥ 80 % of the good particles lie within 10° of it (issue 15 item 6).
MAP_GRIDS: dict[str, GridSpec] = {
    "good": GridSpec("good", 0.2, description="20% junk, uniform views (the realistic session)"),
    "junk-heavy": GridSpec("junk-heavy", 0.8, description="80% junk, uniform views"),
    "preferred": GridSpec(
        "preferred", 0.2, preferred_orientation=True, description="20% junk, 90% of the particles within 4° of one view"
    ),
}
MAP_PREFERRED_FRACTION = 0.9
MAP_PREFERRED_SPREAD_DEGREES = 4.0
#: About a second view (the simulator's secondary view); the remaining 5 % are uniform.
MAP_SECONDARY_FRACTION = 0.05


def simulation_config(spec: GridSpec, seed: int, map_path: Path | None = None) -> SimulationConfig:
    """The virtual microscope for ``spec``: the phantom at box 64, 4 Å/px, SNR 0.05 (the defaults), or
    with ``map_path`` the realistic session (``otf2d.simulator.presets.realistic_session``) with the
    grid's junk and views."""
    if map_path is not None:
        return dataclasses.replace(
            realistic_session(map_path, n_particles=PARTICLES_PER_MICROGRAPH, seed=seed),
            n_micrographs=1,
            junk_fraction=spec.junk_fraction,
            preferred_orientation=spec.preferred_orientation,
            preferred_fraction=MAP_PREFERRED_FRACTION,
            secondary_fraction=MAP_SECONDARY_FRACTION,
            preferred_spread_degrees=MAP_PREFERRED_SPREAD_DEGREES,
        )
    return SimulationConfig(
        n_particles=PARTICLES_PER_MICROGRAPH,
        n_micrographs=1,
        junk_fraction=spec.junk_fraction,
        preferred_orientation=spec.preferred_orientation,
        seed=seed,
    )


def discrete_view_particles(
    setup: SimulationSetup,
    views: Sequence[tuple[float, float]],
    n: int,
    rng: np.random.Generator,
    *,
    spread_degrees: float = GOOD_VIEW_SPREAD_DEGREES,
) -> SimulatedParticles:
    """``n`` particles about ``views`` (equal shares), drawn like ``simulate_particles`` draws particles.

    Each particle: a view from ``views`` at random, a direction scattered about it
    (``otf2d.simulator.views.views_near``), a uniform in-plane angle, the configuration's shifts, its own
    CTF (``draw_ctf``), the session's noise and RELION's normalisation.
    """
    cfg, box, pixel = setup.config, setup.box, setup.pixel_size_angstrom
    which = rng.integers(0, len(views), n)
    rot = np.empty(n)
    tilt = np.empty(n)
    for v, (r, t) in enumerate(views):
        sel = np.flatnonzero(which == v)
        rot[sel], tilt[sel] = views_near(viewing_direction(r, t)[0], spread_degrees, len(sel), rng)
    psi = rng.uniform(-180.0, 180.0, n)
    shifts = np.clip(rng.normal(0.0, cfg.shift_sigma_pixels, (2, n)), -cfg.max_shift_pixels, cfg.max_shift_pixels)
    origin_x, origin_y = -shifts[0] * pixel, -shifts[1] * pixel
    clean = project(setup.spectrum, rot, tilt, psi, box, pixel, origin_x_angstrom=origin_x, origin_y_angstrom=origin_y)
    ctf = draw_ctf(cfg, n, rng)
    signal = np.fft.irfft2(np.fft.rfft2(clean) * relion_ctf_2d(ctf, pixel, box), s=(box, box))
    images, _, std = normalise_like_relion(signal + rng.normal(0.0, setup.noise_sigma, signal.shape))
    return SimulatedParticles(
        images=images.astype(np.float32),
        signal=(signal / std[:, None, None]).astype(np.float32),
        ctf=ctf,
        rot=rot,
        tilt=tilt,
        psi=psi,
        origin_x_angstrom=origin_x,
        origin_y_angstrom=origin_y,
        is_junk=np.zeros(n, dtype=bool),
        junk_type=np.full(n, "none"),
    )


def _concatenate(parts: Sequence[SimulatedParticles], order: npt.NDArray[np.int64]) -> SimulatedParticles:
    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])[order]

    ctf = CtfParams.concatenate([p.ctf for p in parts]).take(order)
    names = [f.name for f in dataclasses.fields(SimulatedParticles) if f.name != "ctf"]
    return SimulatedParticles(ctf=ctf, **{name: cat(name) for name in names})


def grid_particles(spec: GridSpec, setup: SimulationSetup, n: int, rng: np.random.Generator) -> SimulatedParticles:
    """``n`` particles of the grid ``spec`` (junk mixed in at its fraction)."""
    if spec.views is None:
        return simulate_particles(setup, n, rng)
    is_junk = rng.random(n) < spec.junk_fraction
    n_junk = int(is_junk.sum())
    junk_setup = dataclasses.replace(setup, config=dataclasses.replace(setup.config, junk_fraction=1.0))
    good = discrete_view_particles(setup, spec.views, n - n_junk, rng)
    junk = simulate_particles(junk_setup, n_junk, rng) if n_junk else None
    parts = [good] if junk is None else [good, junk]
    order = np.empty(n, dtype=np.int64)
    order[~is_junk] = np.arange(n - n_junk)
    order[is_junk] = n - n_junk + np.arange(n_junk)
    return _concatenate(parts, order)


def micrographs(
    spec: GridSpec, n_particles: int, seed: int, setup: SimulationSetup | None = None, map_path: Path | None = None
) -> Iterator[Micrograph]:
    """The grid's particles in arrival order, :data:`PARTICLES_PER_MICROGRAPH` per micrograph."""
    setup = setup if setup is not None else prepare_simulation(simulation_config(spec, seed, map_path))
    n_mics = math.ceil(n_particles / PARTICLES_PER_MICROGRAPH)
    for m in range(1, n_mics + 1):
        n = min(PARTICLES_PER_MICROGRAPH, n_particles - (m - 1) * PARTICLES_PER_MICROGRAPH)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7, m]))
        p = grid_particles(spec, setup, n, rng)
        batch = ParticleBatch(
            images=p.images,
            pixel_size_angstrom=setup.pixel_size_angstrom,
            ctf=p.ctf,
            session=spec.name,
            stack_paths=np.full(n, f"{STACK_DIR}/mic_{m:05d}.mrcs"),
            indices=np.arange(1, n + 1, dtype=np.int64),
            optics_groups=np.ones(n, dtype=np.int64),
        )
        yield Micrograph(batch, p.is_junk, p.junk_type, p.rot, p.tilt)


class StreamingRun:
    """One grid classified as the engine does it, with its monitoring on a simulated clock.

    Parameters
    ----------
    params
        Classification parameters.
    verdict
        Verdict thresholds.
    rate_per_second
        Arrival rate of particles (sets the clock).
    device
        Where the classifier runs.
    """

    def __init__(
        self, params: Class2DParams, verdict: VerdictConfig, rate_per_second: float, device: torch.device
    ) -> None:
        self.params = params
        self.rate = float(rate_per_second)
        self.device = device
        self.clock = 0.0
        self.monitor = SessionMonitor(verdict, clock=lambda: self.clock)
        self.classifier: EmClassifier | None = None
        self.pending: list[Micrograph] = []
        self.classified: list[Micrograph] = []
        self.judgements: list[AssignmentRecord] = []
        self.arrived = 0
        self.iteration = 0

    @property
    def n_init(self) -> int:
        """Particles the classes are initialised from."""
        return self.params.n_classes * self.params.batch_size_per_class

    @property
    def n_classified(self) -> int:
        """Particles folded into the classes so far."""
        return sum(len(m.batch) for m in self.classified)

    def arrive(self, mic: Micrograph, session: str) -> None:
        """A micrograph's particles arrive; fold what is pending (initialise once there are enough)."""
        self.arrived += len(mic.batch)
        self.clock = self.arrived / self.rate
        self.pending.append(mic)
        classifier = self.classifier
        if classifier is None:
            if sum(len(m.batch) for m in self.pending) < self.n_init:
                return
            classifier = self._initialise()
        while self.pending:
            part = self.pending.pop(0)
            self.judgements.append(classifier.fold(part.batch))
            self.classified.append(part)
        self.monitor.record_classified(session, self.n_classified, self.clock)

    def _initialise(self) -> EmClassifier:
        """The engine initialises from exactly the first ``n_init`` journal particles, then folds the rest."""
        batch = ParticleBatch.concatenate([m.batch for m in self.pending])
        truth = {name: np.concatenate([getattr(m, name) for m in self.pending]) for name in TRUTH_FIELDS}
        first = np.arange(self.n_init)
        rest = np.arange(self.n_init, len(batch))
        classifier = EmClassifier(self.params, batch.box_size, batch.pixel_size_angstrom, self.device)
        init = batch.take(first)
        self.judgements.append(classifier.initialise(init))
        self.classified.append(Micrograph(init, *(truth[k][first] for k in TRUTH_FIELDS)))
        self.pending = [Micrograph(batch.take(rest), *(truth[k][rest] for k in TRUTH_FIELDS))] if len(rest) else []
        self.classifier = classifier
        return classifier

    def assignments(self) -> ParticleAssignments:
        """Every classified particle's latest assignment (what the journal holds)."""
        batch = ParticleBatch.concatenate([m.batch for m in self.classified])
        column = {name: np.concatenate([getattr(j, name) for j in self.judgements]) for name in ASSIGNMENT_ARRAYS}
        return ParticleAssignments(
            stack_paths=batch.stack_paths,
            indices=batch.indices,
            optics_groups=batch.optics_groups,
            ctf=batch.ctf,
            class_index=column["class_index"].astype(np.int64),
            psi_degrees=column["psi_degrees"].astype(np.float64),
            origin_x_angstrom=column["origin_x_angstrom"].astype(np.float64),
            origin_y_angstrom=column["origin_y_angstrom"].astype(np.float64),
            pmax=column["pmax"].astype(np.float64),
            class_posterior=column["class_posterior"].astype(np.float64),
            class_ess=column["class_ess"].astype(np.float64),
            n_significant=column["n_significant"].astype(np.int64),
            log_likelihood=column["log_likelihood"].astype(np.float64),
        )

    def truth(self, name: str) -> np.ndarray:
        """A truth column of every classified particle, in assignment order."""
        return np.concatenate([getattr(m, name) for m in self.classified])

    def snapshot(self) -> ClassSnapshot:
        """The classes now with every classified particle (engine class numbers → sorted by size)."""
        if self.classifier is None:
            raise RuntimeError(f"no classes before {self.n_init} particles have arrived")
        self.iteration += 1
        return self.classifier.snapshot(self.assignments(), iteration=self.iteration, optics=[])

    def publish(self, session: str) -> tuple[ClassSnapshot, MonitoringState]:
        """Snapshot and monitoring state now."""
        snapshot = self.snapshot()
        return snapshot, self.monitor.publish(session, snapshot, snapshot_time=self.clock)


def _angle_to_view_degrees(rot: np.ndarray, tilt: np.ndarray, view: tuple[float, float]) -> np.ndarray:
    """Angle (degrees) between each direction and ``view`` or its opposite (the mirror image)."""
    d = viewing_direction(rot, tilt)
    v = viewing_direction(*view)[0]
    return np.asarray(np.degrees(np.arccos(np.clip(np.abs(d @ v), 0.0, 1.0))))


def evaluate(
    spec: GridSpec, run: StreamingRun, snapshot: ClassSnapshot, state: MonitoringState
) -> tuple[dict[str, tuple[int, float]], float, int | None, float | None, list[tuple[int, int, int, float]]]:
    """Last snapshot against the truth: junk recall per kind, good particles kept, views.

    Returns
    -------
    tuple
        ``{junk_type: (particles, share in junk classes)}``; share of true particles in good
        classes; true number of views with particles (good grid, else ``None``); true share of good
        particles in the main view (preferred grid, else ``None``); per measured view ``(view,
        good particles, its most common true view (1-based), the share of its particles from that
        view)`` (good grid only).
    """
    labels = np.asarray(snapshot.particles.class_index)
    junk_class = np.asarray(state.quality.junk)
    flagged = junk_class[labels]
    junk_type = run.truth("junk_type")
    recall = {}
    for kind in sorted(set(junk_type.tolist()) - {"none"}):
        sel = junk_type == kind
        recall[kind] = (int(sel.sum()), float(flagged[sel].mean()))
    good = junk_type == "none"
    kept = float((~flagged[good]).mean()) if good.any() else math.nan
    rot, tilt = run.truth("rot"), run.truth("tilt")
    true_views = None
    main_share = None
    purity: list[tuple[int, int, int, float]] = []
    if spec.views is not None:
        angles = np.stack([_angle_to_view_degrees(rot[good], tilt[good], v) for v in spec.views])
        nearest = np.argmin(angles, axis=0)
        true_views = len(set(nearest.tolist()))
        class_view = np.asarray(state.views.class_view)[labels[good]]
        for v in range(state.views.n_views):
            members = nearest[class_view == v]
            if len(members):
                counts = np.bincount(members, minlength=len(spec.views))
                purity.append((v + 1, len(members), int(counts.argmax()) + 1, float(counts.max() / len(members))))
    if spec.preferred_orientation:
        main = _angle_to_view_degrees(rot[good], tilt[good], PREFERRED_VIEWS_DEGREES[0]) <= MAIN_VIEW_RADIUS_DEGREES
        main_share = float(main.mean())
    return recall, kept, true_views, main_share, purity


def run_grid(
    spec: GridSpec,
    *,
    n_particles: int,
    every: int,
    params: Class2DParams,
    verdict: VerdictConfig | None = None,
    rate_per_second: float = 100.0,
    seed: int = 0,
    device: torch.device | None = None,
    log: bool = False,
    map_path: Path | None = None,
) -> GridRun:
    """Simulate ``spec`` (the phantom, or with ``map_path`` the realistic session's map), classify it in
    arrival order and judge it every ``every`` particles."""
    start = time.perf_counter()
    run = StreamingRun(params, verdict or VerdictConfig(), rate_per_second, device or torch.device("cpu"))
    rows: list[TimelineRow] = []
    snapshot: ClassSnapshot | None = None
    state: MonitoringState | None = None
    next_mark = every
    for mic in micrographs(spec, n_particles, seed, map_path=map_path):
        run.arrive(mic, spec.name)
        if run.classifier is None or run.arrived < next_mark:
            continue
        next_mark = (run.arrived // every + 1) * every
        snapshot, state = run.publish(spec.name)
        row = TimelineRow(
            particles=state.particles_classified,
            true_junk_fraction=float(run.truth("is_junk").mean()),
            junk_fraction=state.junk_fraction,
            distinct_views=state.views.n_views,
            largest_view_share=state.views.largest_share,
            verdict=state.verdict.state,
            confidence=state.verdict.confidence,
            reason=state.verdict.reasons[0] if state.verdict.reasons else "",
        )
        rows.append(row)
        if log:
            print(
                f"  [{spec.name}] {row.particles:>6,} particles, {time.perf_counter() - start:5.0f} s", file=sys.stderr
            )
    if snapshot is None or state is None:
        raise SystemExit(f"grid {spec.name}: fewer than {run.n_init} particles: the classes never started")
    recall, kept, true_views, main_share, purity = evaluate(spec, run, snapshot, state)
    return GridRun(
        spec=spec,
        rows=rows,
        junk_recall_by_type=recall,
        good_kept=kept,
        true_views=true_views,
        true_main_view_share=main_share,
        view_purity=purity,
        seconds=time.perf_counter() - start,
        final_state=state,
    )


def format_table(result: GridRun) -> list[str]:
    """The timeline of one grid as text lines."""
    lines = [
        f"grid {result.spec.name}: {result.spec.description} ({result.seconds:.0f} s)",
        f"{'particles':>9}  {'junk true':>9}  {'junk':>5}  {'views':>5}  {'largest':>7}  "
        f"{'verdict':<8}  {'conf':>4}  first reason",
    ]
    for r in result.rows:
        lines.append(
            f"{r.particles:>9,}  {r.true_junk_fraction:>9.0%}  {r.junk_fraction:>5.0%}  {r.distinct_views:>5}  "
            f"{r.largest_view_share:>7.0%}  {r.verdict:<8}  {r.confidence:>4.2f}  {r.reason}"
        )
    recall = ", ".join(f"{kind} {share:.0%} of {n}" for kind, (n, share) in result.junk_recall_by_type.items())
    lines.append(
        f"  in junk classes at the end, by junk kind: {recall}; true particles in good classes: {result.good_kept:.0%}"
    )
    if result.true_views is not None:
        purity = ", ".join(f"{v}: {n} ({p:.0%} true view {t})" for v, n, t, p in result.view_purity)
        lines.append(f"  distinct views: {result.rows[-1].distinct_views} measured, {result.true_views} true")
        lines.append(f"  good particles per measured view (share from its most common true view): {purity}")
    if result.true_main_view_share is not None:
        lines.append(
            f"  largest view: {result.rows[-1].largest_view_share:.0%} of good particles measured, "
            f"{result.true_main_view_share:.0%} of true particles within {MAIN_VIEW_RADIUS_DEGREES:.0f}° "
            "of the main view"
        )
    return lines


def classification_params(args: argparse.Namespace) -> Class2DParams:
    """The classification parameters of the run (a quick on-the-fly screening setup)."""
    return Class2DParams(
        n_classes=args.classes,
        batch_size_per_class=args.batch_per_class,
        online_em_iterations=args.online_em_iterations,
        final_full_iterations=args.final_full_iterations,
        max_resolution_angstrom=args.max_res,
        in_plane_step_degrees=args.in_plane_step,
        max_shift_angstrom=args.max_shift,
        force_max_over_poses=True,
        seed=args.seed,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", default=",".join(GRIDS), help=f"comma-separated, of {', '.join(GRIDS)}")
    parser.add_argument("--particles", type=int, default=8000, help="particles per grid (default 8000)")
    parser.add_argument(
        "--every", type=int, default=1000, help="a snapshot and verdict every N particles (default 1000)"
    )
    parser.add_argument(
        "--rate", type=float, default=100.0, help="arrival rate, particles/s, on the clock (default 100)"
    )
    parser.add_argument("--classes", type=int, default=30, help="K (default 30)")
    parser.add_argument("--batch-per-class", type=int, default=30, help="initial particles per class (default 30)")
    parser.add_argument(
        "--online-em-iterations", type=int, default=20, help="initial online-EM iterations (default 20)"
    )
    parser.add_argument(
        "--final-full-iterations",
        type=int,
        default=1,
        help="full passes over the initial particles (default 1, as the screening setup was calibrated with)",
    )
    parser.add_argument("--max-res", type=float, default=16.0, help="maximum resolution used, Å (default 16)")
    parser.add_argument("--in-plane-step", type=float, default=12.0, help="in-plane step, degrees (default 12)")
    parser.add_argument("--max-shift", type=float, default=12.0, help="largest shift searched, Å (default 12)")
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds of the simulation and classification (default 0)"
    )
    parser.add_argument(
        "--map",
        type=Path,
        default=None,
        help="realistic grids from this map (the 70S ribosome of ../shared/data: the realistic session of issue 12 "
        "with 20 %% / 80 %% junk and a 90 %% preferred view) instead of the phantom",
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    args.seed = int(args.seeds.split(",")[0])
    unknown = [g for g in args.grids.split(",") if g not in GRIDS]
    if unknown:
        parser.error(f"unknown grid(s) {unknown}; choose from {list(GRIDS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    params = classification_params(args)
    shown = sys.argv[1:] if argv is None else list(argv)
    print(f"command: .venv/bin/python benchmarks/verdict_timelines.py {shlex.join(shown)}".rstrip())
    print(
        f"classifier: K={params.n_classes}, {params.batch_size_per_class}/class to initialise "
        f"({params.n_classes * params.batch_size_per_class} particles, {params.online_em_iterations} online-EM "
        f"iterations), max res {params.max_resolution_angstrom:g} Å, in-plane {params.in_plane_step_degrees:g}°, "
        f"shifts ±{params.max_shift_angstrom:g} Å, force max; {args.threads} CPU thread(s); "
        f"arrivals {args.rate:g}/s in micrographs of {PARTICLES_PER_MICROGRAPH}"
    )
    grids = MAP_GRIDS if args.map is not None else GRIDS
    if args.map is not None and not args.map.is_file():
        raise SystemExit(f"the map {args.map} is not there")
    results: list[tuple[int, GridRun]] = []
    for seed in (int(x) for x in args.seeds.split(",")):
        seeded = dataclasses.replace(params, seed=seed)
        for name in args.grids.split(","):
            result = run_grid(
                grids[name],
                n_particles=args.particles,
                every=args.every,
                params=seeded,
                rate_per_second=args.rate,
                seed=seed,
                log=not args.quiet,
                map_path=args.map,
            )
            results.append((seed, result))
            print()
            print(f"seed {seed}")
            print("\n".join(format_table(result)), flush=True)
    print()
    for seed, result in results:
        final, since = result.settled()
        print(f"seed {seed}, grid {result.spec.name}: verdict {final} from {since:,} particles on")
    return 0


if __name__ == "__main__":
    sys.exit(main())
