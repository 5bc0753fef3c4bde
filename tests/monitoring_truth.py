"""Class averages built from the virtual microscope's ground truth, for the monitoring tests.

A 2D classification of a simulated session ends with class averages of roughly three sorts, and
these helpers make each of them *without* the engine, from truth only:

- a **good class**: particles of one view (random in-plane angle and shift, their own CTF and
  noise), un-shifted and un-rotated with their true pose and averaged with a CTF Wiener filter;
- a **junk class** of one kind (``otf2d.simulator.config.JUNK_TYPES``): images made by
  ``simulate_particles`` with only that kind, aligned with their true pose where they have one
  (aggregate, decoy) and otherwise by a few rounds of reference-free alignment (rotation search +
  cross-correlation shift), as an EM classifier would align them to their class.

Everything is seeded; the images are the simulator's, on its scale (background std 1).
"""

from __future__ import annotations

import dataclasses
import zlib
from functools import lru_cache

import numpy as np

from otf2d.core.ctf import relion_ctf_2d
from otf2d.core.particles import CtfParams
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.image_geometry import rotate_images, shift_images
from otf2d.monitoring.state import SessionMonitor
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import (
    SimulatedParticles,
    SimulationSetup,
    draw_ctf,
    normalise_like_relion,
    prepare_simulation,
    simulate_particles,
)
from otf2d.simulator.projection import project

#: Wiener regulariser, as a fraction of the number of images averaged.
WIENER_EPSILON_PER_IMAGE = 0.05


@lru_cache(maxsize=4)
def simulation_setup(seed: int = 0, snr: float = 0.05) -> SimulationSetup:
    """The default virtual microscope (phantom, box 64, 4 Å/px), prepared once per process."""
    return prepare_simulation(SimulationConfig(seed=seed, snr=snr))


def _radial_ctf_power(ctf: CtfParams, pixel_size_angstrom: float, box: int) -> np.ndarray:
    """``Σ_i C_i²`` as an ``(box, box // 2 + 1)`` array."""
    c = relion_ctf_2d(ctf, pixel_size_angstrom, box)
    return np.asarray((np.asarray(c, dtype=np.float64) ** 2).sum(axis=0))


@dataclasses.dataclass(frozen=True)
class TruthClass:
    """A class average built from truth, with its half-set resolution.

    Attributes
    ----------
    average
        ``(box, box)`` float64 CTF-Wiener average of all members.
    resolution_angstrom
        Where the FRC of the even/odd half-set averages first drops below 0.143 (Å; the
        resolution of the first ring when it never rises above, Nyquist when it never drops).
    n_particles
        Members averaged.
    """

    average: np.ndarray
    resolution_angstrom: float
    n_particles: int


def frc(half1: np.ndarray, half2: np.ndarray) -> np.ndarray:
    """Fourier ring correlation of two ``(box, box)`` images in rings of 1 pixel, ``(box // 2,)``."""
    box = half1.shape[-1]
    f1, f2 = np.fft.fft2(half1), np.fft.fft2(half2)
    fy = np.fft.fftfreq(box, 1.0 / box)
    ring = np.rint(np.hypot(fy[:, None], fy[None, :])).astype(np.int64).ravel()
    keep = ring < box // 2
    num = np.bincount(ring[keep], weights=np.real(f1 * np.conj(f2)).ravel()[keep], minlength=box // 2)
    p1 = np.bincount(ring[keep], weights=(np.abs(f1) ** 2).ravel()[keep], minlength=box // 2)
    p2 = np.bincount(ring[keep], weights=(np.abs(f2) ** 2).ravel()[keep], minlength=box // 2)
    return np.asarray(num / np.sqrt(np.maximum(p1 * p2, 1e-300)))


def frc_resolution_angstrom(half1: np.ndarray, half2: np.ndarray, pixel_size_angstrom: float) -> float:
    """Resolution (Å) where the FRC of two half-set averages first drops below 0.143 (ring ≥ 1)."""
    box = half1.shape[-1]
    curve = frc(half1, half2)
    below = np.flatnonzero(curve[1:] < 0.143)
    ring = box // 2 - 1 if len(below) == 0 else max(int(below[0]), 1)
    return float(box * pixel_size_angstrom / ring)


def _ctf_weighted(images: np.ndarray, ctf: CtfParams, pixel_size_angstrom: float) -> np.ndarray:
    box = images.shape[-1]
    c = np.asarray(relion_ctf_2d(ctf, pixel_size_angstrom, box), dtype=np.float64)
    return np.asarray(np.fft.irfft2(np.fft.rfft2(images.astype(np.float64)) * c, s=(box, box)))


def _wiener(total: np.ndarray, ctf: CtfParams, pixel_size_angstrom: float) -> np.ndarray:
    box = total.shape[-1]
    denominator = _radial_ctf_power(ctf, pixel_size_angstrom, box) + WIENER_EPSILON_PER_IMAGE * len(ctf)
    return np.asarray(np.fft.irfft2(np.fft.rfft2(total) / denominator, s=(box, box)))


def _truth_class(aligned: np.ndarray, ctf: CtfParams, pixel_size_angstrom: float) -> TruthClass:
    """Average CTF-weighted, aligned images; resolution from the even/odd halves."""
    n = aligned.shape[0]
    even, odd = np.arange(0, n, 2), np.arange(1, n, 2)
    halves = [_wiener(aligned[idx].sum(axis=0), ctf.take(idx), pixel_size_angstrom) for idx in (even, odd)]
    return TruthClass(
        average=_wiener(aligned.sum(axis=0), ctf, pixel_size_angstrom),
        resolution_angstrom=frc_resolution_angstrom(halves[0], halves[1], pixel_size_angstrom),
        n_particles=n,
    )


def truth_aligned_class(parts: SimulatedParticles, pixel_size_angstrom: float) -> TruthClass:
    """CTF-Wiener class average of ``parts`` after undoing their true pose.

    Each image is multiplied by its CTF, shifted by ``+origin / pixel`` and rotated by ``+psi``
    (which undoes the simulator's projection at ``psi`` and origin).
    """
    weighted = _ctf_weighted(parts.images, parts.ctf, pixel_size_angstrom)
    centred = shift_images(
        weighted, parts.origin_y_angstrom / pixel_size_angstrom, parts.origin_x_angstrom / pixel_size_angstrom
    )
    aligned = np.stack([rotate_images(img, float(psi)) for img, psi in zip(centred, parts.psi, strict=True)])
    return _truth_class(aligned, parts.ctf, pixel_size_angstrom)


def view_particles(
    setup: SimulationSetup,
    rot_degrees: float,
    tilt_degrees: float,
    n: int,
    rng: np.random.Generator,
    *,
    decoy: bool = False,
) -> SimulatedParticles:
    """``n`` particles of one view: random psi and shift, own CTF, the session's noise, normalised.

    With ``decoy`` the projected protein is the simulator's decoy (a different protein) instead.
    """
    cfg = setup.config
    box, pixel = setup.box, setup.pixel_size_angstrom
    psi = rng.uniform(-180.0, 180.0, n)
    shifts = np.clip(rng.normal(0.0, cfg.shift_sigma_pixels, (2, n)), -cfg.max_shift_pixels, cfg.max_shift_pixels)
    origin_x, origin_y = -shifts[0] * pixel, -shifts[1] * pixel
    clean = project(
        setup.decoy_spectrum if decoy else setup.spectrum,
        np.full(n, rot_degrees),
        np.full(n, tilt_degrees),
        psi,
        box,
        pixel,
        origin_x_angstrom=origin_x,
        origin_y_angstrom=origin_y,
    )
    ctf = draw_ctf(cfg, n, rng)
    signal = np.fft.irfft2(np.fft.rfft2(clean) * relion_ctf_2d(ctf, pixel, box), s=(box, box))
    noisy = signal + rng.normal(0.0, setup.noise_sigma, signal.shape)
    images, _, std = normalise_like_relion(noisy)
    return SimulatedParticles(
        images=images.astype(np.float32),
        signal=(signal / std[:, None, None]).astype(np.float32),
        ctf=ctf,
        rot=np.full(n, rot_degrees),
        tilt=np.full(n, tilt_degrees),
        psi=psi,
        origin_x_angstrom=origin_x,
        origin_y_angstrom=origin_y,
        is_junk=np.zeros(n, dtype=bool),
        junk_type=np.full(n, "none"),
    )


def good_class(setup: SimulationSetup, rot_degrees: float, tilt_degrees: float, n: int, seed: int) -> TruthClass:
    """The class of ``n`` particles of the view ``(rot, tilt)``, aligned with their true pose."""
    parts = view_particles(setup, rot_degrees, tilt_degrees, n, np.random.default_rng(seed))
    return truth_aligned_class(parts, setup.pixel_size_angstrom)


def _best_alignments(images: np.ndarray, reference: np.ndarray, angles: np.ndarray) -> list[tuple[float, float, float]]:
    """Per image, ``(psi, dy, dx)`` maximising the cross-correlation of the turned, shifted image with the reference."""
    box = images.shape[-1]
    rotated = np.stack([rotate_images(images, float(a)) for a in angles], axis=1)
    cc = np.fft.irfft2(np.conj(np.fft.rfft2(rotated)) * np.fft.rfft2(reference), s=(box, box))
    offsets = np.fft.fftfreq(box, 1.0 / box)
    limit = box // 8
    allowed = (np.abs(offsets)[:, None] <= limit) & (np.abs(offsets)[None, :] <= limit)
    cc = np.where(allowed, cc, -np.inf).reshape(len(images), -1)
    best = np.argmax(cc, axis=1)
    a, y, x = np.unravel_index(best, (len(angles), box, box))
    return [(float(angles[i]), float(offsets[j]), float(offsets[k])) for i, j, k in zip(a, y, x, strict=True)]


def reference_free_class(
    parts: SimulatedParticles, pixel_size_angstrom: float, *, rounds: int = 3, n_angles: int = 24
) -> TruthClass:
    """Class of images aligned to their own running average (rotation + shift search), Wiener-filtered."""
    weighted = _ctf_weighted(parts.images, parts.ctf, pixel_size_angstrom)
    angles = np.arange(n_angles) * 360.0 / n_angles
    reference = weighted[0]
    aligned = weighted
    for _ in range(rounds):
        moves = _best_alignments(weighted, reference, angles)
        aligned = np.stack(
            [shift_images(rotate_images(img, psi), dy, dx) for img, (psi, dy, dx) in zip(weighted, moves, strict=True)]
        )
        reference = _wiener(aligned.sum(axis=0), parts.ctf, pixel_size_angstrom)
    return _truth_class(aligned, parts.ctf, pixel_size_angstrom)


def junk_particles(setup: SimulationSetup, kind: str, n: int, seed: int) -> SimulatedParticles:
    """``n`` junk images of one kind, drawn by ``simulate_particles``."""
    cfg = dataclasses.replace(setup.config, junk_fraction=1.0, junk_types=(kind,))
    return simulate_particles(dataclasses.replace(setup, config=cfg), n, np.random.default_rng(seed))


def junk_class(setup: SimulationSetup, kind: str, n: int, seed: int) -> TruthClass:
    """The class of ``n`` junk images of ``kind``: true pose where there is one, else reference-free."""
    parts = junk_particles(setup, kind, n, seed)
    if np.isfinite(parts.psi).all():
        return truth_aligned_class(parts, setup.pixel_size_angstrom)
    return reference_free_class(parts, setup.pixel_size_angstrom)


@dataclasses.dataclass(frozen=True)
class ClassSpec:
    """One class of a simulated grid: a view ``(rot, tilt)`` turned in-plane by ``psi``, or junk of ``kind``."""

    particles: int
    kind: str = "none"
    rot_degrees: float = 0.0
    tilt_degrees: float = 0.0
    psi_degrees: float = 0.0
    mirror: bool = False


#: Most images averaged per class (more particles only scale the count).
MAX_AVERAGED = 60


@lru_cache(maxsize=256)
def _class_average(
    kind: str, rot: float, tilt: float, psi: float, mirror: bool, n: int, seed: int
) -> tuple[np.ndarray, float]:
    setup = simulation_setup()
    if kind == "none":
        made = good_class(setup, rot, tilt, n, seed)
        return rotate_images(made.average, psi, mirror=mirror), made.resolution_angstrom
    made = reference_free_class(junk_particles(setup, kind, n, seed), setup.pixel_size_angstrom, rounds=2)
    return made.average, made.resolution_angstrom


def spec_average(spec: ClassSpec, seed: int) -> tuple[np.ndarray, float]:
    """Class average ``(64, 64)`` and half-set resolution (Å) of ``spec`` built from truth.

    At most :data:`MAX_AVERAGED` images are averaged; the particle count only sets the class size.
    """
    n = max(4, min(spec.particles, MAX_AVERAGED))
    return _class_average(spec.kind, spec.rot_degrees, spec.tilt_degrees, spec.psi_degrees, spec.mirror, n, seed)


def _spec_seed(spec: ClassSpec) -> int:
    """A seed fixed by what the class shows (not by its particle count)."""
    key = (spec.kind, spec.rot_degrees, spec.tilt_degrees, spec.psi_degrees, spec.mirror)
    return zlib.crc32(repr(key).encode()) % 997


def grid_snapshot(specs: tuple[ClassSpec, ...], *, seed: int = 0, iteration: int = 1) -> ClassSnapshot:
    """A ``ClassSnapshot`` whose classes are ``specs`` (averages and resolutions from truth).

    The particles of a class are drawn from a seed fixed by ``seed`` and the spec, so equal specs
    give equal classes in every grid (and are built once per process).
    """
    from snapshot_factory import make_snapshot

    made = [spec_average(spec, seed * 1000 + _spec_seed(spec)) for spec in specs]
    averages = np.stack([a for a, _ in made]).astype(np.float32)
    snapshot = make_snapshot(tuple(s.particles for s in specs), seed=seed, iteration=iteration, averages=averages)
    return dataclasses.replace(
        snapshot,
        pixel_size_angstrom=simulation_setup().pixel_size_angstrom,
        resolution_angstrom=np.array([r for _, r in made]),
        parameters={"n_classes": len(specs)},
    )


#: Five views of the phantom that look different in 2D (rotation-invariant similarity ≤ 0.7).
DISTINCT_VIEWS: tuple[tuple[float, float], ...] = (
    (30.0, 50.0),
    (-120.0, 110.0),
    (45.0, 135.0),
    (-60.0, 60.0),
    (60.0, 30.0),
)


def good_grid(scale: int = 100) -> tuple[ClassSpec, ...]:
    """A good grid: 20% junk, five distinct views, two of them seen twice (turned in-plane, mirrored)."""
    good = [ClassSpec(12 * scale, "none", r, t, 0.0) for r, t in DISTINCT_VIEWS]
    good += [ClassSpec(6 * scale, "none", 30.0, 50.0, 140.0), ClassSpec(6 * scale, "none", 45.0, 135.0, 60.0, True)]
    junk = [ClassSpec(6 * scale, kind) for kind in ("noise", "ice", "carbon")]
    return (*good, *junk)


def junk_grid(scale: int = 100) -> tuple[ClassSpec, ...]:
    """A junk-heavy grid: 80% of the particles in junk classes."""
    good = [ClassSpec(5 * scale, "none", r, t) for r, t in DISTINCT_VIEWS[:3]]
    junk = [ClassSpec(12 * scale, kind) for kind in ("noise", "ice", "carbon", "aggregate", "decoy")]
    return (*good, *junk)


def preferred_grid(scale: int = 100) -> tuple[ClassSpec, ...]:
    """A strongly preferred orientation: one view (at four in-plane angles) holds ~80% of good particles."""
    main = [ClassSpec(15 * scale, "none", 30.0, 50.0, psi) for psi in (0.0, 90.0, 180.0, 270.0)]
    other = [ClassSpec(5 * scale, "none", r, t) for r, t in DISTINCT_VIEWS[1:3]]
    junk = [ClassSpec(5 * scale, kind) for kind in ("noise", "ice")]
    return (*main, *other, *junk)


def monitor_with_grids(
    grids: dict[str, tuple[ClassSpec, ...]], *, now: float, particles_per_hour: float = 3000.0
) -> SessionMonitor:
    """A ``SessionMonitor`` holding one published state per grid, after an hour of steady counts.

    Each session's count history rises linearly over the hour before ``now`` to the number of
    particles of its snapshot (at ``particles_per_hour`` when that is smaller).
    """
    clock = [now]
    monitor = SessionMonitor(clock=lambda: clock[0])
    for name, specs in grids.items():
        snapshot = grid_snapshot(specs)
        n = len(snapshot.particles)
        start = max(0.0, n - particles_per_hour)
        for i in range(13):
            monitor.record_classified(name, int(start + (n - start) * i / 12), at=now - 3600 + 300 * i)
        monitor.publish(name, snapshot, snapshot_time=now - 42.0)
    return monitor


__all__ = [
    "DISTINCT_VIEWS",
    "ClassSpec",
    "TruthClass",
    "frc",
    "frc_resolution_angstrom",
    "good_class",
    "good_grid",
    "grid_snapshot",
    "junk_class",
    "junk_grid",
    "junk_particles",
    "monitor_with_grids",
    "preferred_grid",
    "reference_free_class",
    "simulation_setup",
    "spec_average",
    "truth_aligned_class",
    "view_particles",
]
