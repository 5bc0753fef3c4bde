"""Synthetic ``ClassSnapshot``s with known content, shared by the snapshot-writer tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from otf2d.core.particles import CtfParams
from otf2d.core.snapshot import ClassSnapshot, OpticsGroup, ParticleAssignments

#: Particles per class in :func:`make_snapshot` (class 2 is empty; class 3 is the largest).
COUNTS = (5, 12, 0, 20, 3, 10)
BOX = 32
PIXEL_SIZE = 3.0  # Å/px of the class averages (Fourier-cropped)
IMAGE_PIXEL_SIZE = 1.5  # Å/px of the particle images
IMAGE_SIZE = 64


def class_patterns(k: int = len(COUNTS), box: int = BOX) -> np.ndarray:
    """``(k, box, box)`` float32: class ``i`` is a Gaussian blob at angle 60°·i plus a ring of radius 4+i."""
    y, x = np.mgrid[:box, :box].astype(np.float64) - box / 2
    out = np.empty((k, box, box), dtype=np.float32)
    for i in range(k):
        a = np.deg2rad(60.0 * i)
        cx, cy = 8 * np.cos(a), 8 * np.sin(a)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 8.0)
        ring = np.exp(-((np.hypot(x, y) - (4 + i)) ** 2) / 2.0)
        out[i] = (blob + 0.5 * ring - 0.2).astype(np.float32)
    return out


def make_snapshot(
    counts: tuple[int, ...] = COUNTS,
    *,
    seed: int = 0,
    iteration: int = 1,
    averages: np.ndarray | None = None,
    junk_score: np.ndarray | None = None,
    parameters: dict[str, Any] | None = None,
) -> ClassSnapshot:
    """A snapshot with ``sum(counts)`` particles, known assignments and float64 values at full precision."""
    rng = np.random.default_rng(seed)
    k = len(counts)
    class_index = np.repeat(np.arange(k), counts)
    rng.shuffle(class_index)
    n = len(class_index)
    optics_groups = np.where(np.arange(n) % 3 == 2, 2, 1).astype(np.int64)
    voltage = np.where(optics_groups == 1, 300.0, 200.0)
    cs_mm = np.where(optics_groups == 1, 2.7, 0.01)
    q0 = np.where(optics_groups == 1, 0.1, 0.07)
    du = rng.uniform(8000.0, 30000.0, n)
    ctf = CtfParams(
        defocus_u_angstrom=du,
        defocus_v_angstrom=du - rng.uniform(0.0, 500.0, n),
        defocus_angle_degrees=rng.uniform(-180.0, 180.0, n),
        voltage_kv=voltage,
        spherical_aberration_mm=cs_mm,
        amplitude_contrast=q0,
        phase_shift_degrees=rng.uniform(0.0, 90.0, n),
        bfactor_angstrom2=rng.uniform(0.0, 50.0, n),
        scale=rng.uniform(0.9, 1.1, n),
    )
    stacks = np.array(
        [f"Extract/job007/Movies/FoilHole_{1000 + i // 7}_Data-4.5e3_x.mrcs" for i in range(n)], dtype=str
    )
    indices = np.array([i % 7 + 1 for i in range(n)], dtype=np.int64)
    mics = np.array([s.replace("Extract/job007", "MotionCorr/job002").replace(".mrcs", ".mrc") for s in stacks])
    pmax = rng.uniform(0.0, 1.0, n)
    pmax[:1] = 1.234567890123e-12
    parts = ParticleAssignments(
        stack_paths=stacks,
        indices=indices,
        optics_groups=optics_groups,
        ctf=ctf,
        class_index=class_index.astype(np.int64),
        psi_degrees=rng.uniform(-180.0, 180.0, n),
        origin_x_angstrom=rng.uniform(-10.0, 10.0, n),
        origin_y_angstrom=rng.uniform(-10.0, 10.0, n),
        pmax=pmax,
        class_posterior=rng.uniform(0.3, 1.0, n),
        class_ess=rng.uniform(1.0, 3.0, n),
        n_significant=rng.integers(1, 500, n),
        log_likelihood=rng.uniform(1e5, 3e5, n),
        micrograph_names=mics,
    )
    optics = [
        OpticsGroup(1, "opticsGroup1", 300.0, 2.7, 0.1, IMAGE_PIXEL_SIZE, IMAGE_SIZE),
        OpticsGroup(2, "opticsGroup2", 200.0, 0.01, 0.07, IMAGE_PIXEL_SIZE, IMAGE_SIZE),
    ]
    resolution = np.array([12.5, 15.25, np.inf, 9.75, 30.0, 18.0][:k] + [20.0] * max(0, k - 6))
    return ClassSnapshot(
        averages=class_patterns(k) if averages is None else averages,
        pixel_size_angstrom=PIXEL_SIZE,
        particle_counts=np.bincount(class_index, minlength=k).astype(np.int64),
        resolution_angstrom=resolution,
        accuracy_rotations_degrees=rng.uniform(1.0, 10.0, k),
        accuracy_translations_angstrom=rng.uniform(0.5, 3.0, k),
        iteration=iteration,
        optics=optics,
        particles=parts,
        original_image_size=IMAGE_SIZE,
        parameters={"n_classes": k, "tau2_fudge": 2.0, "seed": seed} if parameters is None else parameters,
        junk_score=junk_score,
    )
