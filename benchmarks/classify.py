"""otf2d 2D classification benchmark: E+M throughput, reduced precision, and RELION 3.1 side by side.

Prints one table with two parts.

**Throughput** (``Classifier.step``: E-step of a batch + online update + M-step; and
``Classifier.assign``: E-step only) of one batch (default 5,000 particles: cryoSPARC's online-EM
batch, 100 per class at K = 50; the classifier state is restored untimed before each run),
particles per second, best of ``--repeats``, on simulated
particles of the built-in phantom (box 64 at 2 Å/px, so the internal box is 64 with no cropping):

- configuration A: internal box 64, K = 50, 5° in-plane step (72 rotations), shifts ±3 px in 1 px
  steps on a disc (29 shifts), force-max; configuration B: the same with K = 200;
- precisions: ``fp32``; ``bf16`` = GEMM inputs rounded to bfloat16 and products summed in float32
  (what a tensor-core GEMM computes; what ``--precision bf16`` runs on a CPU); ``bf16-native`` =
  the GEMM run by torch in bfloat16 (on CPUs without bf16 units, emulated: timed on fewer particles);
- agreement: share of particles given the same class, and the same class, rotation and shift, as
  fp32 from the same classifier state;
- on the CPU (``--threads``), and on CUDA when torch sees a GPU (there ``bf16`` is native).

(This folds in ``benchmarks/estep_speed.py``, which measured the same on synthetic blobs.)

**Against RELION 3.1** (Debian's ``relion_refine``, CPU, ``--j THREADS``): one simulated session
(phantom, box 64 at 4 Å/px, SNR ``--snr``, 20 % junk) classified by both programs into the same K,
each with its default schedule and comparable sampling, wall time measured around each command:

- RELION: the GUI's Class2D defaults: ``--iter 25 --tau2_fudge 2 --ctf --zero_mask --flatten_solvent
  --oversampling 1 --psi_step 12 --offset_range 5 --offset_step 2`` (the GUI's "in-plane angular
  sampling 6°" and "offset step 1 px" are the fine steps after one oversampling: it writes twice
  them), ``--norm --scale --pad 2 --pool 30 --dont_combine_weights_via_disc --random_seed 1``,
  ``--particle_diameter D``;
- otf2d: ``otf2d classify`` with cryoSPARC's schedule (20 online-EM iterations of 100 × K
  particles, one full pass), mask diameter D, 6° in-plane step and ±5 px shifts (RELION's fine
  sampling), ``--threads THREADS --device cpu`` (and a CUDA row when a GPU is present);
- both outputs (RELION's ``run_it025_data.star`` + ``_classes.mrcs``, ours) scored against
  ``truth.csv`` by ``otf2d.simulator.scoring.score_classification``.

Usage::

    .venv/bin/python benchmarks/classify.py                         # the full run (~15-20 min)
    .venv/bin/python benchmarks/classify.py --quick --skip-relion   # smoke run (~1 min)
    .venv/bin/python benchmarks/classify.py --devices cuda --skip-relion   # a GPU machine's CUDA rows (~1 min)
    .venv/bin/python benchmarks/classify.py --relion-particles 1000 --relion-classes 10 --out /tmp/bench
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers import load_batch, read_particle_table
from otf2d.engine.em.assignments import Assignments
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.monitoring.snapshots import read_latest
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import prepare_simulation
from otf2d.simulator.scoring import QualityReport, score_classification
from otf2d.simulator.session import SessionSummary, simulate_session

#: Throughput particles: the phantom in a 64 px box at 2 Å/px, so that the internal box is 64.
THROUGHPUT_BOX = 64
THROUGHPUT_PIXEL_ANGSTROM = 2.0
#: Targets of the issue "The classifier".
TARGET_CPU_RATE = 1000.0
TARGET_SPEEDUP = 20.0
TARGET_AGREEMENT = 0.99
#: RELION iterations of its default Class2D schedule.
RELION_ITERATIONS = 25
#: K of configurations A and B, and the small K of a --quick smoke run.
CONFIG_CLASSES = (50, 200)
QUICK_CLASSES = (6, 12)
#: The RELION session: sized so that relion_refine (2 threads) takes about ten minutes here.
DEFAULT_RELION_PARTICLES = 1400
DEFAULT_RELION_CLASSES = 10


@dataclass
class Row:
    """One row of the table (``None`` cells print as ``-``)."""

    part: str
    program: str
    config: str
    device: str
    precision: str
    classes: int
    particles: int
    em_rate: float | None = None
    em_rate_cpu: float | None = None
    e_rate: float | None = None
    same_class: float | None = None
    same_pose: float | None = None
    wall_seconds: float | None = None
    cpu_seconds: float | None = None
    quality: QualityReport | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- throughput


def progress(row: Row) -> Row:
    """Log a measured row to stderr (the table comes at the end, on stdout); returns it."""
    cells = " ".join(c for c in row_cells(row) if c != "-")
    print(f"[{time.strftime('%H:%M:%S')}] {cells}", file=sys.stderr, flush=True)
    return row


def config_params(k: int, pixel_angstrom: float) -> Class2DParams:
    """Reference configuration A (K = 50) or B (K = 200): internal box 64, 5°, ±3 px on a disc."""
    return Class2DParams(
        n_classes=k,
        max_resolution_angstrom=2.0 * pixel_angstrom,
        in_plane_step_degrees=5.0,
        max_shift_angstrom=3.0 * pixel_angstrom,
        force_max_over_poses=True,
    )


def simulated_batch(out: Path, n: int, seed: int) -> ParticleBatch:
    """``n`` simulated particles (phantom, 20 % junk, SNR 0.05) as tensors, written to and read from disk."""
    cfg = SimulationConfig(
        n_particles=n,
        n_micrographs=max(1, n // 200),
        box=THROUGHPUT_BOX,
        pixel_size_angstrom=THROUGHPUT_PIXEL_ANGSTROM,
        seed=seed,
    )
    summary = simulate_session(cfg, out, overwrite=True)
    return load_batch(read_particle_table(summary.particles_star), slice(None))


def best_rate(
    fn: Callable[[], object],
    n: int,
    repeats: int,
    device: torch.device,
    threads: int,
    setup: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """Best particles/s of ``fn()`` over ``repeats`` runs: by wall time, and by CPU time.

    ``setup()`` runs untimed before each run. The CPU-time rate is ``n / (process CPU seconds /
    threads)``: the rate had the process had its ``threads`` cores to itself (the build machine
    is shared; on a GPU it is not meaningful).
    """
    best_wall = best_cpu = math.inf
    for _ in range(max(1, repeats)):
        if setup is not None:
            setup()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best_wall = min(best_wall, time.perf_counter() - t)
        best_cpu = min(best_cpu, (time.process_time() - c) / max(threads, 1))
    return n / best_wall, n / max(best_cpu, 1e-9)


def agreement(got: Assignments, ref: Assignments) -> tuple[float, float]:
    """Share of particles with the same class, and with the same class, rotation and shift."""
    same_class = got.class_index == ref.class_index
    same_pose = (
        same_class
        & (got.psi_degrees == ref.psi_degrees)
        & (got.origin_x_angstrom == ref.origin_x_angstrom)
        & (got.origin_y_angstrom == ref.origin_y_angstrom)
    )
    return float(same_class.double().mean()), float(same_pose.double().mean())


def restore(clf: Classifier, state: dict[str, Any], dtype: torch.dtype | None, native: bool) -> None:
    """Put ``clf`` back to ``state`` with the GEMMs in ``dtype`` (``native``: run in that dtype); untimed."""
    clf.load_state_dict(state)
    clf.gemm_dtype, clf.native_low_precision = dtype, native


def throughput_rows(
    particles: ParticleBatch,
    ks: Sequence[int],
    device: torch.device,
    repeats: int,
    native_particles: int,
    threads: int,
) -> list[Row]:
    """fp32, bf16 and bf16-native rows of configurations A and B on ``device``.

    Configuration A is timed on all of ``particles``, B (K ≥ 100) on the first half; bf16-native
    on ``native_particles``.
    """
    rows = []
    small = TensorBatch.from_particles(particles.take(np.arange(min(native_particles, len(particles)))), device)
    for k in ks:
        # K >= 100 (configuration B) is timed on half the batch: it costs about four times more per particle.
        n = len(particles) if k < 100 else max(1, len(particles) // 2)
        batch = TensorBatch.from_particles(particles.take(np.arange(n)), device)
        name = {50: "A", 200: "B"}.get(k, f"K={k}")
        clf = Classifier(config_params(k, THROUGHPUT_PIXEL_ANGSTROM), THROUGHPUT_BOX, THROUGHPUT_PIXEL_ANGSTROM, device)
        g = clf.geometry
        clf.initialise(batch)
        clf.step(batch)  # warm-up, and classes that are no longer the random start
        state = clf.state_dict()
        reference = clf.assign(batch)
        variants: list[tuple[str, torch.dtype | None, bool, TensorBatch]] = [("fp32", None, False, batch)]
        if device.type == "cuda":
            variants.append(("bf16", torch.bfloat16, True, batch))
        else:
            variants += [("bf16", torch.bfloat16, False, batch), ("bf16-native", torch.bfloat16, True, small)]
        for label, dtype, native, data in variants:
            m = len(data)

            # The reference bank is rebuilt after each restore, so both timings include it (as in a pass).
            setup = functools.partial(restore, clf, state, dtype, native)
            em_rate, em_rate_cpu = best_rate(functools.partial(clf.step, data), m, repeats, device, threads, setup)
            e_rate, _ = best_rate(functools.partial(clf.assign, data), m, repeats, device, threads, setup)
            same_class, same_pose = agreement(clf.assign(data), reference.take(torch.arange(m)))
            row = Row(
                "throughput", "otf2d", name, device.type, label, k, m, em_rate, None, e_rate, same_class, same_pose
            )
            row.em_rate_cpu = em_rate_cpu if device.type == "cpu" else None
            row.notes.append(
                f"internal box {g.internal_box}, R={g.n_rotations} ({g.rotation_step_degrees:g} deg), "
                f"T={len(g.shift_grid())} shifts, Q={g.n_angles}"
            )
            rows.append(progress(row))
    return rows


# --------------------------------------------------------------------------- RELION vs otf2d


def particle_diameter_angstrom(summary: SessionSummary) -> float:
    """The mask / particle diameter both programs get: the phantom's, rounded up to 10 Å, within the box."""
    return float(
        min(10 * math.ceil(summary.particle_diameter_angstrom / 10), summary.box * summary.pixel_size_angstrom)
    )


def run_logged(cmd: list[str], cwd: Path, log: Path, timeout: float | None = None) -> tuple[float, float]:
    """Run ``cmd`` in ``cwd`` with its output to ``log``; returns its wall time and CPU time (s)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} failed ({done.returncode}); log {log}:\n{tail}")
    return wall, cpu


def relion_command(summary: SessionSummary, k: int, diameter: float, threads: int, iterations: int) -> list[str]:
    """``relion_refine`` Class2D with the GUI's defaults (see the module docstring)."""
    particles = summary.particles_star.relative_to(summary.out_dir)
    return [
        "relion_refine",
        "--o", "Class2D/relion/run",
        "--i", str(particles),
        "--dont_combine_weights_via_disc",
        "--pool", "30",
        "--pad", "2",
        "--ctf",
        "--iter", str(iterations),
        "--tau2_fudge", "2",
        "--particle_diameter", f"{diameter:g}",
        "--K", str(k),
        "--flatten_solvent",
        "--zero_mask",
        "--oversampling", "1",
        "--psi_step", "12",
        "--offset_range", "5",
        "--offset_step", "2",
        "--norm",
        "--scale",
        "--random_seed", "1",
        "--j", str(threads),
    ]  # fmt: skip


def otf2d_command(
    summary: SessionSummary, k: int, diameter: float, threads: int, device: str, extra: Sequence[str], job: str
) -> list[str]:
    """``otf2d classify`` with cryoSPARC's schedule and RELION's fine sampling, into ``Class2D/<job>``."""
    return [
        sys.executable, "-m", "otf2d.core.cli", "classify", str(summary.particles_star),
        "--out", f"Class2D/{job}",
        "--classes", str(k),
        "--mask-diameter", f"{diameter:g}",
        "--in-plane-step", "6",
        "--max-shift", f"{5 * summary.pixel_size_angstrom:g}",
        "--threads", str(threads),
        "--device", device,
        "--quiet",
        *extra,
    ]  # fmt: skip


def score_relion_output(
    data_star: Path,
    classes_mrcs: Path,
    truth: pd.DataFrame,
    spectrum: object,
    diameter: float,
    *,
    n_classes: int | None = None,
    junk_flags: dict[int, bool] | None = None,
) -> QualityReport:
    """Score a RELION (or otf2d) Class2D iteration: ``_data.star`` + ``_classes.mrcs`` (``n_classes`` and
    ``junk_flags``, class number -> flagged junk, as ``score_classification`` takes them)."""
    blocks = starfile.read(data_star, always_dict=True)
    particles = blocks["particles"]
    with mrcfile.open(classes_mrcs, permissive=True) as mrc:
        averages = np.asarray(mrc.data, dtype=np.float64)
        pixel = float(mrc.voxel_size.x)
    if averages.ndim == 2:
        averages = averages[None]
    return score_classification(
        truth,
        particles["rlnImageName"].to_numpy(),
        particles["rlnClassNumber"].to_numpy(),
        particles["rlnAnglePsi"].to_numpy(),
        averages,
        pixel,
        spectrum,  # type: ignore[arg-type]
        particle_diameter_angstrom=diameter,
        first_class_label=1,  # rlnClassNumber 1 is the first slice, even when class 1 is empty
        n_classes=n_classes,
        junk_flags=junk_flags,
    )


def comparison_rows(
    out: Path,
    *,
    n_particles: int,
    k: int,
    snr: float,
    threads: int,
    skip_relion: bool,
    relion_iterations: int,
    otf2d_extra: Sequence[str],
    devices: Sequence[str],
) -> list[Row]:
    """Simulate one session, classify it with otf2d (and RELION), score both against the truth."""
    cfg = SimulationConfig(n_particles=n_particles, n_micrographs=max(1, n_particles // 100), snr=snr, seed=11)
    setup = prepare_simulation(cfg)
    summary = simulate_session(setup, out, overwrite=True)
    truth = pd.read_csv(summary.truth_csv)
    diameter = particle_diameter_angstrom(summary)
    rows = []
    # cryoSPARC's default for K <= 20 is marginalisation; the force-max row shows the other mode's cost.
    runs: list[tuple[str, str, list[str]]] = []
    for device in devices:
        runs.append((device, "default O-EM", []))
        if k <= 20:
            runs.append((device, "O-EM force-max", ["--force-max"]))
    for device, label, flags in runs:
        job = f"otf2d_{device}" + ("_force_max" if flags else "")
        cmd = otf2d_command(summary, k, diameter, threads, device, [*otf2d_extra, *flags], job)
        wall, cpu = run_logged(cmd, summary.out_dir, out / f"{job}.log")
        latest = read_latest(summary.out_dir / "Class2D" / job)
        if latest is None:
            raise RuntimeError(f"otf2d classify wrote no snapshot under {summary.out_dir / 'Class2D' / job}")
        quality = score_relion_output(latest.data_star, latest.classes_mrcs, truth, setup.spectrum, diameter)
        row = Row("vs RELION", "otf2d classify", label, device, "fp32", k, n_particles)
        row.wall_seconds, row.cpu_seconds = wall, cpu
        row.quality = quality
        row.notes.append(" ".join(cmd[2:]))
        rows.append(progress(row))
    if skip_relion:
        return rows
    if shutil.which("relion_refine") is None:
        row = Row("vs RELION", "relion_refine 3.1", "not installed", "cpu", "-", k, n_particles)
        row.notes.append("relion_refine is not on PATH")
        return [*rows, row]
    cmd = relion_command(summary, k, diameter, threads, relion_iterations)
    (summary.out_dir / "Class2D" / "relion").mkdir(parents=True, exist_ok=True)
    wall, cpu = run_logged(cmd, summary.out_dir, out / "relion.log")
    it = f"run_it{relion_iterations:03d}"
    quality = score_relion_output(
        summary.out_dir / "Class2D" / "relion" / f"{it}_data.star",
        summary.out_dir / "Class2D" / "relion" / f"{it}_classes.mrcs",
        truth,
        setup.spectrum,
        diameter,
    )
    row = Row("vs RELION", "relion_refine 3.1", f"{relion_iterations} iter", "cpu", "double", k, n_particles)
    row.wall_seconds, row.cpu_seconds, row.quality = wall, cpu, quality
    row.notes.append(" ".join(cmd))
    rows.append(progress(row))
    return rows


# --------------------------------------------------------------------------- table


def _fmt(value: float | int | None, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


COLUMNS = (
    ("part", "<10"),
    ("program", "<17"),
    ("config", "<14"),
    ("device", "<6"),
    ("precision", "<11"),
    ("K", ">4"),
    ("particles", ">9"),
    ("E+M p/s", ">8"),
    ("@cpu p/s", ">8"),
    ("E p/s", ">7"),
    ("same cls", ">8"),
    ("same pose", ">9"),
    ("wall s", ">7"),
    ("cpu s", ">7"),
    ("junk iso", ">8"),
    ("good kept", ">9"),
    ("view pur.", ">9"),
    ("in-plane", ">8"),
    ("populated", ">9"),
    ("fid corr", ">8"),
    ("fid res A", ">9"),
)


def row_cells(row: Row) -> list[str]:
    """The cells of ``row`` in :data:`COLUMNS` order."""
    q = row.quality
    return [
        row.part,
        row.program,
        row.config,
        row.device,
        row.precision,
        str(row.classes),
        str(row.particles),
        _fmt(row.em_rate, ",.0f"),
        _fmt(row.em_rate_cpu, ",.0f"),
        _fmt(row.e_rate, ",.0f"),
        _fmt(row.same_class, ".4f"),
        _fmt(row.same_pose, ".4f"),
        _fmt(row.wall_seconds, ".1f"),
        _fmt(row.cpu_seconds, ".1f"),
        _fmt(q.junk_isolation if q else None, ".3f"),
        _fmt(q.good_kept if q else None, ".3f"),
        _fmt(q.view_purity_degrees if q else None, ".1f"),
        _fmt(q.in_plane_spread_degrees if q else None, ".1f"),
        _fmt(q.populated_classes if q else None, "d"),
        _fmt(q.fidelity_correlation if q else None, ".3f"),
        _fmt(q.fidelity_resolution_angstrom if q else None, ".1f"),
    ]


def render_table(rows: Sequence[Row]) -> str:
    """The one table, as text."""
    header = " ".join(format(name, spec.replace(">", "^")) for name, spec in COLUMNS)
    lines = [header, "-" * len(header)]
    part = rows[0].part if rows else ""
    for row in rows:
        if row.part != part:
            lines.append("-" * len(header))
            part = row.part
        lines.append(" ".join(format(cell, spec) for cell, (_, spec) in zip(row_cells(row), COLUMNS, strict=True)))
    return "\n".join(lines)


def target_lines(rows: Sequence[Row]) -> list[str]:
    """Whether each target of the issue is met, from the measured rows."""
    out = []
    a_cpu = [r for r in rows if r.part == "throughput" and r.config == "A" and r.device == "cpu"]
    fp32 = next((r for r in a_cpu if r.precision == "fp32"), None)
    if fp32 is not None and fp32.em_rate is not None:
        usable = [r for r in a_cpu if r.precision == "fp32" or (r.same_pose or 0) >= TARGET_AGREEMENT]
        best = max(r.em_rate or 0.0 for r in usable)
        best_cpu = max(r.em_rate_cpu or 0.0 for r in usable)
        met = "MET" if best >= TARGET_CPU_RATE else "NOT MET"
        out.append(
            f"CPU configuration A >= {TARGET_CPU_RATE:,.0f} particles/s (E+M): {best:,.0f}/s by wall time, "
            f"{best_cpu:,.0f}/s by CPU time -> {met}"
        )
    low = [r for r in rows if r.part == "throughput" and r.precision.startswith("bf16") and r.same_pose is not None]
    if low:
        worst = min(r.same_pose or 0.0 for r in low)
        met = "MET" if worst >= TARGET_AGREEMENT else "NOT MET (keep fp32 as the default)"
        out.append(f"bf16 agrees with fp32 on class+pose for >= {TARGET_AGREEMENT:.0%}: worst {worst:.4f} -> {met}")
    otf2d_cpu = [r for r in rows if r.part == "vs RELION" and r.program.startswith("otf2d") and r.device == "cpu"]
    ours = next((r for r in otf2d_cpu if r.config == "default O-EM"), None)
    theirs = next((r for r in rows if r.program.startswith("relion") and r.wall_seconds is not None), None)
    if ours is not None and theirs is not None and ours.quality and theirs.quality and ours.wall_seconds:
        speedup = (theirs.wall_seconds or 0.0) / ours.wall_seconds
        cpu_speedup = (theirs.cpu_seconds or 0.0) / max(ours.cpu_seconds or 0.0, 1e-9)
        met = "MET" if speedup >= TARGET_SPEEDUP else "NOT MET"
        out.append(
            f"wall time vs RELION >= {TARGET_SPEEDUP:g}x less: {speedup:.1f}x (CPU time {cpu_speedup:.1f}x) -> {met}"
        )
        q, r = ours.quality, theirs.quality
        checks = [
            ("junk isolation", q.junk_isolation >= r.junk_isolation),
            ("view purity", q.view_purity_degrees <= r.view_purity_degrees),
            ("class fidelity (corr)", q.fidelity_correlation >= r.fidelity_correlation),
            ("class fidelity (FRC res)", q.fidelity_resolution_angstrom <= r.fidelity_resolution_angstrom),
        ]
        for name, ok in checks:
            out.append(f"{name} at least as good as RELION: {'MET' if ok else 'NOT MET'}")
        for other in otf2d_cpu:
            if other is not ours and other.wall_seconds:
                out.append(
                    f"(for information) {other.config}: {(theirs.wall_seconds or 0.0) / other.wall_seconds:.1f}x "
                    "less wall time than RELION"
                )
    return out


# --------------------------------------------------------------------------- main


def devices_to_run(spec: str) -> list[str]:
    """The devices of ``--devices``: ``auto`` is the CPU, plus CUDA when torch sees a GPU."""
    if spec == "auto":
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    devices = [d.strip() for d in spec.split(",") if d.strip()]
    unknown = sorted(set(devices) - {"cpu", "cuda"})
    if unknown or not devices:
        raise SystemExit(f"--devices {spec!r}: expected 'auto' or a comma-separated list of cpu, cuda")
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("--devices names cuda, but torch sees no CUDA device here")
    return devices


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or so")
    parser.add_argument("--skip-relion", action="store_true", help="do not run relion_refine")
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a new temp dir)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for otf2d and RELION (default 2)")
    parser.add_argument(
        "--throughput-particles",
        type=int,
        default=None,
        help="batch of the E+M pass (default 5000: cryoSPARC's online-EM batch of 100 per class at K = 50)",
    )
    parser.add_argument("--native-particles", type=int, default=None, help="batch of the bf16-native rows (64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats, best kept (2)")
    parser.add_argument("--relion-particles", type=int, default=None, help="particles of the RELION session")
    parser.add_argument("--relion-classes", type=int, default=None, help="K of the RELION comparison")
    parser.add_argument("--snr", type=float, default=0.1, help="SNR of the RELION session (default 0.1)")
    parser.add_argument(
        "--devices",
        default="auto",
        help="where otf2d runs: 'cpu', 'cuda' or 'cpu,cuda' (default auto: the CPU, and CUDA when torch sees a GPU)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table; returns 0."""
    args = parse_args(argv)
    quick = args.quick
    threads = max(1, args.threads)
    torch.set_num_threads(threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="otf2d-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    n_t = args.throughput_particles or (64 if quick else 5000)
    n_native = args.native_particles or (8 if quick else 64)
    repeats = args.repeats or (1 if quick else 2)
    # A quick run is a smoke test, not a measurement: fewer classes, a short schedule.
    ks = QUICK_CLASSES if quick else CONFIG_CLASSES
    n_c = args.relion_particles or (120 if quick else DEFAULT_RELION_PARTICLES)
    k_c = args.relion_classes or (3 if quick else DEFAULT_RELION_CLASSES)
    relion_iterations = 2 if quick else RELION_ITERATIONS
    otf2d_extra = ["--online-em-iterations", "2", "--batch-per-class", "20"] if quick else []
    devices = devices_to_run(args.devices)
    cuda = "cuda" in devices

    started = time.perf_counter()
    print(
        f"otf2d classify benchmark: torch {torch.__version__}, {threads} thread(s) of {os.cpu_count()} "
        f"({platform.processor() or platform.machine()}), "
        f"CUDA {'yes: ' + torch.cuda.get_device_name() if cuda else 'no'}"
        f"{', QUICK (smoke sizes)' if quick else ''}; load average {os.getloadavg()[0]:.1f}; working dir {out}",
        flush=True,
    )
    batch = simulated_batch(out / "throughput", n_t, seed=3)
    rows: list[Row] = []
    if "cpu" in devices:
        rows += throughput_rows(batch, ks, torch.device("cpu"), repeats, n_native, threads)
    if cuda:
        rows += throughput_rows(batch, ks, torch.device("cuda"), repeats, n_t, threads)
    rows += comparison_rows(
        out / "session",
        n_particles=n_c,
        k=k_c,
        snr=args.snr,
        threads=threads,
        skip_relion=args.skip_relion,
        relion_iterations=relion_iterations,
        otf2d_extra=otf2d_extra,
        devices=devices,
    )
    print()
    print(render_table(rows))
    print()
    notes = sorted({note for row in rows if row.part == "throughput" for note in row.notes})
    for note in notes:
        print(f"sampling of the throughput rows: {note}")
    for row in rows:
        if row.part != "throughput":
            for note in row.notes:
                print(f"{row.program} ({row.config}, {row.device}): {note}")
    for line in target_lines(rows):
        print(f"target: {line}")
    print(f"total benchmark time {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
