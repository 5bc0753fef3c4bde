"""Turn the classifier's state into a ``otf2d.core.snapshot.ClassSnapshot`` (NumPy, no I/O).

Classes are sorted by particle count (largest first) when ``params.sort_by_size`` is set; the
engine keeps its own class numbers, and the snapshot records the mapping in
``parameters["engine_class_of_snapshot_class"]`` (snapshot class ``i`` is engine class
``mapping[i]``), so a class keeps its identity across snapshots.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.snapshot import ClassSnapshot, OpticsGroup, ParticleAssignments
from otf2d.engine.em.geometry import Geometry
from otf2d.engine.em.preprocess import fourier_pad


class SnapshotSource(Protocol):
    """What a snapshot reads of a classifier (``otf2d.engine.em.classifier.Classifier`` is one);
    a protocol, so that this module does not import the classifier that imports it."""

    @property
    def geometry(self) -> Geometry: ...
    @property
    def params(self) -> Class2DParams: ...
    @property
    def n_classes(self) -> int: ...
    @property
    def n_effective(self) -> float: ...
    @property
    def n_updates(self) -> int: ...
    @property
    def iteration(self) -> int: ...
    def class_averages(self) -> torch.Tensor: ...
    def class_resolution_angstrom(self) -> torch.Tensor: ...


def optics_from_particles(particles: ParticleAssignments, pixel_size_angstrom: float, box: int) -> list[OpticsGroup]:
    """One ``OpticsGroup`` per optics group present, with the CTF values of its first particle."""
    groups = []
    for number in sorted({int(g) for g in np.asarray(particles.optics_groups).tolist()}):
        first = int(np.flatnonzero(np.asarray(particles.optics_groups) == number)[0])
        groups.append(
            OpticsGroup(
                number=number,
                name=f"opticsGroup{number}",
                voltage_kv=float(particles.ctf.voltage_kv[first]),
                spherical_aberration_mm=float(particles.ctf.spherical_aberration_mm[first]),
                amplitude_contrast=float(particles.ctf.amplitude_contrast[first]),
                image_pixel_size_angstrom=float(pixel_size_angstrom),
                image_size=int(box),
            )
        )
    return groups


def build_snapshot(
    classifier: SnapshotSource,
    particles: ParticleAssignments,
    *,
    iteration: int | None = None,
    optics: list[OpticsGroup] | None = None,
    full_size: bool = True,
) -> ClassSnapshot:
    """A snapshot of the classes and of ``particles`` (whose ``class_index`` are engine classes).

    Parameters
    ----------
    classifier
        The classifier.
    particles
        Assignments of the particles to include.
    iteration
        Snapshot counter; default the classifier's iteration.
    optics
        Optics groups; default derived from the particles.
    full_size
        Averages at the particles' box and pixel size (Fourier-padded, as RELION writes them);
        ``False``: at the internal box and pixel size.

    Returns
    -------
    ClassSnapshot
    """
    g = classifier.geometry
    k = classifier.n_classes
    images = classifier.class_averages().to(torch.float32)
    if full_size:
        if g.box != g.internal_box:
            images = fourier_pad(images, g.box)
        pixel = g.pixel_size_angstrom
    else:
        pixel = g.internal_pixel_angstrom
    counts = np.bincount(np.asarray(particles.class_index, dtype=np.int64), minlength=k).astype(np.int64)
    order = np.argsort(-counts, kind="stable") if classifier.params.sort_by_size else np.arange(k)
    new_of_old = np.empty(k, dtype=np.int64)
    new_of_old[order] = np.arange(k)
    sorted_particles = dataclasses.replace(
        particles, class_index=new_of_old[np.asarray(particles.class_index, dtype=np.int64)]
    )
    resolution = classifier.class_resolution_angstrom().numpy()[order]
    # Not estimated: the sampling steps stand in for RELION's accuracies.
    acc_rot = np.full(k, g.rotation_step_degrees, dtype=np.float64)
    acc_trans = np.full(k, g.shift_step * g.internal_pixel_angstrom, dtype=np.float64)
    params = dataclasses.asdict(classifier.params)
    params.update(
        {
            "engine_class_of_snapshot_class": [int(i) for i in order],
            "internal_box": g.internal_box,
            "internal_pixel_size_angstrom": g.internal_pixel_angstrom,
            "n_rotations": g.n_rotations,
            "n_shifts": len(g.shift_grid()),
            "n_polar_angles": g.n_angles,
            "particles_effective": classifier.n_effective,
            "online_updates": classifier.n_updates,
        }
    )
    return ClassSnapshot(
        averages=np.ascontiguousarray(images.cpu().numpy()[order], dtype=np.float32),
        pixel_size_angstrom=float(pixel),
        particle_counts=counts[order],
        resolution_angstrom=np.asarray(resolution, dtype=np.float64),
        accuracy_rotations_degrees=acc_rot,
        accuracy_translations_angstrom=acc_trans,
        iteration=int(classifier.iteration if iteration is None else iteration),
        optics=optics if optics is not None else optics_from_particles(particles, g.pixel_size_angstrom, g.box),
        particles=sorted_particles,
        original_image_size=int(g.box),
        parameters=params,
    )


__all__ = ["SnapshotSource", "build_snapshot", "optics_from_particles"]
