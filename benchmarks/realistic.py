"""otf2d vs RELION 3.1 on the realistic session (issue 12): class quality against ground truth and wall time.

The session is ``otf2d.simulator.presets.realistic_session``: the real 70S ribosome map (box 80 at 5 Å/px),
RELION's CTF, SNR ``--snr`` (default 0.05), 20 % junk of five kinds, made anew for every seed. On
each, in the same run and on the same threads:

- ``otf2d classify`` at its **default settings** (``--classes K --seed S --threads T`` and
  nothing else but the flags of ``--otf2d-args``, empty by default);
- ``relion_refine`` 3.1 Class2D with the GUI's defaults (``--iter 25 --tau2_fudge 2 --ctf --norm
  --scale --zero_mask --flatten_solvent``, psi 12°, offsets ±5 step 2: see ``classify.py``),
  unless ``--skip-relion``;

both scored by ``otf2d.simulator.scoring.score_classification`` against ``truth.csv``: good
(good-majority) classes, empty classes, good classes otf2d flagged as junk, view spread
(weighted mean of per-class median angles to the medoid view), in-plane consistency, junk
isolation, best whole-class selection F1, fidelity NCC at 12 Å of the good classes and how many
reach 0.72, wall time. For otf2d also the grid verdict that the engine's monitoring gives its
snapshot (``otf2d.monitoring.state.compute_state``, default thresholds) and the share of the good
particles in the largest view it sees; every session is a good grid, so the target is collect.
One table per program and seed, then the mean over seeds and the targets of the issue.

Usage::

    .venv/bin/python benchmarks/realistic.py                               # 3 seeds, 2,000 particles, K = 20 (~60 min)
    .venv/bin/python benchmarks/realistic.py --skip-relion --seeds 1       # otf2d alone, one seed (~5 min)
    .venv/bin/python benchmarks/realistic.py --relion-seeds 1              # RELION on seed 1 only (~35 min)
    .venv/bin/python benchmarks/realistic.py --skip-relion --otf2d-args='--per-particle-scale-iterations 10'
    .venv/bin/python benchmarks/realistic.py --particles 20000 --classes 50 --snr 0.02 --skip-relion
    .venv/bin/python benchmarks/realistic.py --map path/to/clean70SRibosome_vol_65p.mrc

Needs the map (``../shared/data/aspire/clean70SRibosome_vol_65p.mrc`` by default, ``--map`` else).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from classify import relion_command, run_logged, score_relion_output  # benchmarks/classify.py

from otf2d.monitoring.snapshots import read_latest
from otf2d.monitoring.snapshots.reader import read_snapshot
from otf2d.monitoring.state import compute_state
from otf2d.simulator.particles import SimulationSetup, prepare_simulation
from otf2d.simulator.presets import RIBOSOME_MAP, realistic_session
from otf2d.simulator.scoring import FAITHFUL_NCC, QualityReport
from otf2d.simulator.session import SessionSummary, simulate_session

#: RELION's default schedule (the GUI's Class2D).
RELION_ITERATIONS = 25
#: The shared data folder beside the project.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: (label, QualityReport field, "wall", "cpu" or "largest_view_share", format, target description)
METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("good classes", "good_classes", "d", ">= 10 faithful"),
    ("empty classes", "empty_classes", "d", "0"),
    ("good flagged junk", "good_classes_flagged_junk", "d", "0"),
    ("view spread deg", "view_spread_degrees", ".1f", "<= 45"),
    ("in-plane deg", "in_plane_consistency_degrees", ".1f", "<= 40"),
    ("junk isolation", "junk_isolation", ".3f", ">= 0.80"),
    ("selection F1", "selection_f1", ".3f", ">= 0.95"),
    ("fidelity NCC 12A", "fidelity_ncc", ".3f", ""),
    (f"classes NCC>={FAITHFUL_NCC}", "faithful_classes", "d", ">= 10"),
    ("largest view share", "largest_view_share", ".2f", "< 0.60 (marginal at or above)"),
    ("wall s", "wall", ".1f", "<= RELION / 20"),
    ("cpu s", "cpu", ".1f", ""),
)


@dataclass
class Run:
    """One program on one seed's session."""

    program: str
    seed: int
    quality: QualityReport
    wall_seconds: float
    cpu_seconds: float
    #: The monitoring's verdict on the run's snapshot (None for RELION, which has none).
    verdict: str | None = None
    #: Share of the good particles in the largest view the monitoring sees (NaN for RELION).
    largest_view_share: float = math.nan


def mask_diameter_angstrom(setup: SimulationSetup) -> float:
    """RELION's --particle_diameter: the particle's, rounded up to 10 Å, within the box."""
    box_angstrom = setup.box * setup.pixel_size_angstrom
    return float(min(10 * math.ceil(setup.particle_diameter_angstrom / 10), box_angstrom))


def junk_flags_of(model_star: Path) -> dict[int, bool]:
    """Class number -> flagged junk, from otf2d's ``rlnPredictedClassScore`` (1 - junk score)."""
    classes = starfile.read(model_star, always_dict=True)["model_classes"]
    if "rlnPredictedClassScore" not in classes:
        return {}
    scores = classes["rlnPredictedClassScore"].to_numpy(dtype=np.float64)
    return {i + 1: bool(s < 0.5) for i, s in enumerate(scores)}


def score(
    setup: SimulationSetup,
    truth: pd.DataFrame,
    data_star: Path,
    classes_mrcs: Path,
    k: int,
    junk_flags: dict[int, bool] | None,
) -> QualityReport:
    return score_relion_output(
        data_star,
        classes_mrcs,
        truth,
        setup.spectrum,
        setup.particle_diameter_angstrom,
        n_classes=k,
        junk_flags=junk_flags,
    )


def run_otf2d(
    summary: SessionSummary,
    setup: SimulationSetup,
    truth: pd.DataFrame,
    k: int,
    seed: int,
    threads: int,
    extra: Sequence[str] = (),
) -> Run:
    job = summary.out_dir / "Class2D" / "otf2d"
    cmd = [
        sys.executable, "-m", "otf2d.core.cli", "classify", str(summary.particles_star), "--out", str(job),
        "--classes", str(k), "--seed", str(seed), "--threads", str(threads), "--quiet", *extra,
    ]  # fmt: skip
    wall, cpu = run_logged(cmd, summary.out_dir, summary.out_dir / "otf2d.log")
    latest = read_latest(job)
    if latest is None:
        raise RuntimeError(f"otf2d classify wrote no snapshot under {job}")
    model = latest.data_star.with_name(latest.data_star.name.replace("_data.star", "_model.star"))
    quality = score(setup, truth, latest.data_star, latest.classes_mrcs, k, junk_flags_of(model))
    state = compute_state(read_snapshot(latest).snapshot, [])
    return Run("otf2d classify", seed, quality, wall, cpu, state.verdict.state, state.views.largest_share)


def run_relion(
    summary: SessionSummary,
    setup: SimulationSetup,
    truth: pd.DataFrame,
    k: int,
    seed: int,
    threads: int,
    iterations: int,
) -> Run:
    cmd = relion_command(summary, k, mask_diameter_angstrom(setup), threads, iterations)
    cmd[cmd.index("--random_seed") + 1] = str(seed)
    (summary.out_dir / "Class2D" / "relion").mkdir(parents=True, exist_ok=True)
    wall, cpu = run_logged(cmd, summary.out_dir, summary.out_dir / "relion.log")
    it = summary.out_dir / "Class2D" / "relion" / f"run_it{iterations:03d}"
    quality = score(setup, truth, Path(f"{it}_data.star"), Path(f"{it}_classes.mrcs"), k, None)
    return Run("relion_refine 3.1", seed, quality, wall, cpu)


def cell_value(run: Run, field: str) -> float | int:
    """A metric of ``run``: its wall or CPU seconds, its largest view's share, or a field of its quality report."""
    if field in ("wall", "cpu"):
        return run.wall_seconds if field == "wall" else run.cpu_seconds
    if field == "largest_view_share":
        return run.largest_view_share
    value: float | int = getattr(run.quality, field)
    return value


def cell(run: Run, field: str, spec: str) -> str:
    value = cell_value(run, field)
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    if isinstance(value, int) and value < 0:
        return "-"
    return format(value, spec)


def mean_cell(runs: Sequence[Run], field: str, spec: str) -> str:
    values = [float(cell_value(r, field)) for r in runs]
    values = [v for v in values if math.isfinite(v) and v >= 0]
    if not values:
        return "-"
    return format(float(np.mean(values)), ".1f" if spec == "d" else spec)


def render(runs: Sequence[Run]) -> str:
    """The table: one column per program and seed, then the means per program and the target."""
    programs = list(dict.fromkeys(r.program for r in runs))
    columns = [(f"{r.program.split()[0]} s{r.seed}", [r]) for r in runs]
    columns += [(f"{p.split()[0]} mean", [r for r in runs if r.program == p]) for p in programs]
    width = max(12, *(len(c[0]) for c in columns))
    lines = ["| metric | " + " | ".join(f"{c[0]:>{width}}" for c in columns) + " | target |"]
    lines.append("|---|" + "---:|" * len(columns) + "---|")
    for label, field, spec, target in METRICS:
        cells = []
        for name, rs in columns:
            cells.append(mean_cell(rs, field, spec) if name.endswith(" mean") else cell(rs[0], field, spec))
        lines.append(f"| {label} | " + " | ".join(f"{c:>{width}}" for c in cells) + f" | {target} |")
    verdicts = [verdict_cell(rs, name.endswith(" mean")) for name, rs in columns]
    lines.append("| verdict | " + " | ".join(f"{c:>{width}}" for c in verdicts) + " | collect |")
    return "\n".join(lines)


def verdict_cell(runs: Sequence[Run], summary: bool) -> str:
    """A run's verdict, or for the mean column how many of the runs said collect ("-" for RELION)."""
    said = [r.verdict for r in runs if r.verdict is not None]
    if not said:
        return "-"
    if not summary:
        return said[0]
    return f"{sum(v == 'collect' for v in said)}/{len(said)} collect"


def speed_line(runs: Sequence[Run]) -> str | None:
    """Wall-time ratio RELION / otf2d over the seeds both ran."""
    ours = {r.seed: r.wall_seconds for r in runs if r.program.startswith("otf2d")}
    theirs = {r.seed: r.wall_seconds for r in runs if r.program.startswith("relion")}
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    ratios = [theirs[s] / ours[s] for s in seeds]
    ours_cpu = {r.seed: r.cpu_seconds for r in runs if r.program.startswith("otf2d")}
    theirs_cpu = {r.seed: r.cpu_seconds for r in runs if r.program.startswith("relion")}
    cpu = [theirs_cpu[s] / ours_cpu[s] for s in seeds]
    return (
        f"RELION wall / otf2d wall: {', '.join(f'{x:.1f}x' for x in ratios)} (target >= 20x); "
        f"CPU time: {', '.join(f'{x:.1f}x' for x in cpu)} (the steadier figure on a shared machine)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds, one session each (default 1,2,3)")
    parser.add_argument("--particles", type=int, default=2000, help="particles per session (default 2000)")
    parser.add_argument("--classes", type=int, default=20, help="K for both programs (default 20)")
    parser.add_argument("--snr", type=float, default=0.05, help="SNR of the sessions (default 0.05)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both programs (default 2)")
    parser.add_argument("--skip-relion", action="store_true", help="do not run relion_refine")
    parser.add_argument(
        "--relion-seeds", default=None, help="run RELION on these seeds only (default: every seed; ~15 min each)"
    )
    parser.add_argument("--relion-iterations", type=int, default=RELION_ITERATIONS, help="RELION iterations (25)")
    parser.add_argument("--map", type=Path, default=SHARED_DATA / RIBOSOME_MAP, help="the 70S ribosome map")
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a new temp dir)")
    parser.add_argument(
        "--otf2d-args",
        default="",
        help="more `otf2d classify` flags, one string (default: none, i.e. its defaults); "
        "e.g. --otf2d-args='--per-particle-scale-iterations 10'",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.map.is_file():
        raise SystemExit(f"the map {args.map} is not there: pass --map (ASPIRE's clean70SRibosome_vol_65p.mrc)")
    relion = not args.skip_relion and shutil.which("relion_refine") is not None
    out = args.out or Path(tempfile.mkdtemp(prefix="otf2d-realistic-"))
    extra = shlex.split(args.otf2d_args)
    started = time.perf_counter()
    print(
        f"realistic session: {args.particles} particles, K = {args.classes}, SNR {args.snr}, seeds {args.seeds}, "
        f"{args.threads} thread(s) of {os.cpu_count()}, RELION {'yes' if relion else 'no'}, "
        f"otf2d classify {'at its defaults' if not extra else 'with ' + ' '.join(extra)}; "
        f"load average {os.getloadavg()[0]:.1f}; working dir {out}",
        flush=True,
    )
    runs: list[Run] = []
    relion_seeds = None if args.relion_seeds is None else {int(s) for s in args.relion_seeds.split(",")}
    for seed in (int(s) for s in args.seeds.split(",")):
        setup = prepare_simulation(realistic_session(args.map, n_particles=args.particles, snr=args.snr, seed=seed))
        summary = simulate_session(setup, out / f"seed{seed}", overwrite=True)
        truth = pd.read_csv(summary.truth_csv)
        runs.append(run_otf2d(summary, setup, truth, args.classes, seed, args.threads, extra))
        print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: otf2d {runs[-1].wall_seconds:.0f} s", file=sys.stderr)
        if relion and (relion_seeds is None or seed in relion_seeds):
            runs.append(run_relion(summary, setup, truth, args.classes, seed, args.threads, args.relion_iterations))
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed}: RELION {runs[-1].wall_seconds:.0f} s", file=sys.stderr)
    print()
    print(render(runs))
    line = speed_line(runs)
    if line:
        print(line)
    print(f"total benchmark time {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
