"""Per-particle results of an E-step: class, in-plane pose, shift and confidence (tensors)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch

from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.particles import CtfParams
from otf2d.core.snapshot import OPTIONAL_PER_PARTICLE_ARRAYS, ParticleAssignments
from otf2d.engine.em.estep import Posteriors


class ParticleLabels(Protocol):
    """Who ``n`` particles are, without their pixels: a ``ParticleBatch`` is one, and so is a
    ``otf2d.core.readers.ParticleTable`` (what a data-parallel run's rank 0 labels the gathered
    assignments with, ``otf2d.engine.em.distributed``)."""

    @property
    def stack_paths(self) -> np.ndarray: ...

    @property
    def indices(self) -> np.ndarray: ...

    @property
    def optics_groups(self) -> np.ndarray: ...

    @property
    def ctf(self) -> CtfParams: ...

    def __len__(self) -> int: ...


@dataclass(frozen=True)
class Assignments:
    """The latest assignment of ``n`` particles, each field ``(n,)`` on the CPU.

    Attributes
    ----------
    class_index
        int64, 0-based engine class (not sorted by size).
    psi_degrees
        RELION ``rlnAnglePsi`` in (−180, 180].
    origin_x_angstrom, origin_y_angstrom
        RELION ``rlnOriginXAngst``/``rlnOriginYAngst``: the shift that centres the particle.
    pmax
        Posterior of the chosen (class, pose) sample.
    class_posterior
        Posterior of the chosen class.
    class_ess
        Effective number of classes ``1 / Σ_k γ_k²``.
    n_significant
        int64, samples with a posterior of at least 0.1 % of ``pmax``.
    log_likelihood
        Log-likelihood of the chosen sample (whitened units, untempered).
    scale
        Per-particle scale α at the chosen sample (1 when the per-particle scale is off).
    image_power, cross_term, norm_term
        ``‖X‖²_ω``, and the cross and norm terms at the chosen sample at scale 1 (whitened units,
        ``otf2d.engine.em.estep``), so that ``−log_likelihood = image_power − α·cross_term +
        α²·norm_term``; NaN where the E-step did not keep them.
    """

    class_index: torch.Tensor
    psi_degrees: torch.Tensor
    origin_x_angstrom: torch.Tensor
    origin_y_angstrom: torch.Tensor
    pmax: torch.Tensor
    class_posterior: torch.Tensor
    class_ess: torch.Tensor
    n_significant: torch.Tensor
    log_likelihood: torch.Tensor
    scale: torch.Tensor
    image_power: torch.Tensor
    cross_term: torch.Tensor
    norm_term: torch.Tensor

    def __len__(self) -> int:
        return int(self.class_index.shape[0])

    @classmethod
    def concatenate(cls, parts: Sequence[Assignments]) -> Assignments:
        """Join assignments end to end."""
        return cls(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def take(self, index: torch.Tensor) -> Assignments:
        """The assignments at ``index``."""
        return Assignments(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_psi_offsets(self, offsets_degrees: torch.Tensor) -> Assignments:
        """Add a per-class angle to ``psi`` (after a class was rotated by that angle).

        Parameters
        ----------
        offsets_degrees
            ``(K,)`` angle each class was turned by (counter-clockwise); a particle of class ``k``
            then has ``ψ' = ψ + offsets[k]``, origins unchanged.
        """
        psi = self.psi_degrees + offsets_degrees.to(self.psi_degrees)[self.class_index]
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["psi_degrees"] = wrap_degrees(psi)
        return Assignments(**values)

    def to_particle_assignments(self, batch: ParticleLabels) -> ParticleAssignments:
        """The snapshot form (NumPy), with the particles' identities and CTF from ``batch``."""
        if len(batch) != len(self):
            raise ValueError(f"{len(self)} assignments for a batch of {len(batch)} particles")

        def f64(t: torch.Tensor) -> np.ndarray:
            return np.asarray(t.detach().cpu().to(torch.float64).numpy())

        return ParticleAssignments(
            stack_paths=batch.stack_paths,
            indices=batch.indices,
            optics_groups=batch.optics_groups,
            ctf=batch.ctf,
            class_index=np.asarray(self.class_index.cpu().numpy(), dtype=np.int64),
            psi_degrees=f64(self.psi_degrees),
            origin_x_angstrom=f64(self.origin_x_angstrom),
            origin_y_angstrom=f64(self.origin_y_angstrom),
            pmax=f64(self.pmax),
            class_posterior=f64(self.class_posterior),
            class_ess=f64(self.class_ess),
            n_significant=np.asarray(self.n_significant.cpu().numpy(), dtype=np.int64),
            log_likelihood=f64(self.log_likelihood),
            scale=f64(self.scale),
            image_power=f64(self.image_power),
            cross_term=f64(self.cross_term),
            norm_term=f64(self.norm_term),
        )


def assignments_from_posteriors(
    posteriors: Posteriors, shifts: torch.Tensor, rotation_step_degrees: float, pixel_size_angstrom: float
) -> Assignments:
    """Each particle's most probable class with its best pose there.

    Parameters
    ----------
    posteriors
        E-step result for ``B`` particles.
    shifts
        ``(T, 2)`` class-frame shifts ``o'`` (internal px).
    rotation_step_degrees
        ``360 / R``.
    pixel_size_angstrom
        Internal pixel size (Å); origins are reported in Å.

    Returns
    -------
    Assignments
        On the CPU. ``ψ = l·step``; origin ``o = R(−ψ)·o'`` (RELION: the shift that centres the
        particle, since ``image(p) = class(R(ψ)·(p + o))``).
    """
    w = posteriors.class_weights
    best = w.argmax(dim=0)  # (B,)
    col = best[None]
    rot = posteriors.best_rotation.gather(0, col)[0]
    shift = posteriors.best_shift.gather(0, col)[0]
    psi = rot.to(torch.float64) * rotation_step_degrees
    o = shifts.to(torch.float64)[shift]
    rad = torch.deg2rad(psi)
    c, s = torch.cos(rad), torch.sin(rad)
    ox = (c * o[:, 0] + s * o[:, 1]) * pixel_size_angstrom
    oy = (-s * o[:, 0] + c * o[:, 1]) * pixel_size_angstrom
    # renormalised in float64: float32 posteriors sum to 1 only within their rounding, and the
    # effective number of classes is at least 1 by definition
    w64 = w.to(torch.float64)
    ess = 1.0 / ((w64 / w64.sum(dim=0)) ** 2).sum(dim=0)
    return Assignments(
        class_index=best.cpu(),
        psi_degrees=wrap_degrees(psi).cpu(),
        origin_x_angstrom=ox.cpu(),
        origin_y_angstrom=oy.cpu(),
        pmax=posteriors.pmax.to(torch.float64).cpu(),
        class_posterior=w.gather(0, col)[0].to(torch.float64).cpu(),
        class_ess=ess.cpu(),
        n_significant=posteriors.n_significant.to(torch.int64).cpu(),
        log_likelihood=posteriors.best_log_likelihood.gather(0, col)[0].to(torch.float64).cpu(),
        scale=posteriors.best_scale.gather(0, col)[0].to(torch.float64).cpu(),
        image_power=_per_particle(posteriors.power, len(best)),
        cross_term=_per_particle(posteriors.chosen_corr, len(best)),
        norm_term=_per_particle(posteriors.chosen_norm, len(best)),
    )


def _per_particle(values: torch.Tensor | None, n: int) -> torch.Tensor:
    """``values`` as float64 on the CPU, or ``n`` NaN (unknown) when ``None``."""
    if values is None:
        return torch.full((n,), math.nan, dtype=torch.float64)
    return values.to(torch.float64).cpu()


def concatenate_particle_assignments(parts: Sequence[ParticleAssignments]) -> ParticleAssignments:
    """Join ``ParticleAssignments`` end to end (CTF and metadata included)."""
    if not parts:
        raise ValueError("nothing to concatenate")
    skip = ("ctf", "micrograph_names", "extra", *OPTIONAL_PER_PARTICLE_ARRAYS)
    names = [f.name for f in fields(ParticleAssignments) if f.name not in skip]
    values: dict[str, Any] = {name: np.concatenate([np.asarray(getattr(p, name)) for p in parts]) for name in names}
    for name in OPTIONAL_PER_PARTICLE_ARRAYS:  # known for all parts, else unknown
        arrays = [getattr(p, name) for p in parts]
        values[name] = None if any(a is None for a in arrays) else np.concatenate(arrays)
    mics = [p.micrograph_names for p in parts]
    return ParticleAssignments(
        ctf=CtfParams.concatenate([p.ctf for p in parts]),
        micrograph_names=None if any(m is None for m in mics) else np.concatenate([np.asarray(m) for m in mics]),
        extra=ExtraColumns.concatenate([p.extra for p in parts]),
        **values,
    )


def wrap_degrees(angle: torch.Tensor) -> torch.Tensor:
    """Angles wrapped into (−180, 180]."""
    out = torch.remainder(angle + 180.0, 360.0) - 180.0
    return torch.where(out <= -180.0, out + 360.0, out)


__all__ = [
    "Assignments",
    "ParticleLabels",
    "assignments_from_posteriors",
    "concatenate_particle_assignments",
    "wrap_degrees",
]
