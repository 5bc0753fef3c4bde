"""Reseeding of empty and near-empty classes by splitting the largest ones.

A class whose prior falls below ``fraction / K`` (RELION's ``--class_inactivity_threshold`` is
0.1) takes half of the statistics of a donor, the largest remaining class (donors in decreasing
size). The two halves are pushed apart by a random perturbation of the donor's data sum,
``± perturbation·|B|·ξ`` (ξ complex Gaussian, Hermitian so the class stays a real image), so
the next E-step divides the donor's particles between them if they differ.
"""

from __future__ import annotations

import dataclasses

import torch

from otf2d.engine.em.mstep import SufficientStats


def reseed_empty_classes(
    stats: SufficientStats,
    tau2: torch.Tensor | None,
    generator: torch.Generator,
    fraction: float,
    perturbation: float,
) -> tuple[SufficientStats, torch.Tensor | None, list[int]]:
    """Split the largest classes into the near-empty ones.

    Parameters
    ----------
    stats
        Per-particle statistics (``counts`` give the priors).
    tau2
        ``(K, N + 1)`` signal power of the classes (copied to the new class), or ``None``.
    generator
        Source of the perturbation (CPU generator; seeded for reproducibility).
    fraction
        Reseed classes whose prior is below ``fraction / K``.
    perturbation
        Relative amplitude of the perturbation.

    Returns
    -------
    tuple
        New statistics, new ``tau2`` and the reseeded classes (in order).
    """
    counts = stats.counts.clamp(min=0.0)
    k = counts.shape[0]
    total = float(counts.sum())
    priors = counts / total if total > 0 else torch.full_like(counts, 1.0 / k)
    empty = [int(i) for i in torch.nonzero(priors < fraction / k).flatten().tolist()]
    donors = [int(i) for i in torch.argsort(priors, descending=True).tolist() if int(i) not in empty]
    if not empty or not donors:
        return stats, tau2, []
    numerator = stats.numerator.clone()
    ctf2 = stats.ctf2.clone()
    new_counts = stats.counts.clone()
    new_tau2 = None if tau2 is None else tau2.clone()
    for i, target in enumerate(empty):
        donor = donors[i % len(donors)]
        base = numerator[donor] * 0.5
        noise = torch.randn(base.shape[0], base.shape[1] // 2, 2, generator=generator, dtype=torch.float64)
        xi = torch.complex(noise[..., 0], noise[..., 1]).to(device=base.device, dtype=base.dtype)
        xi = torch.cat([xi, xi.conj()], dim=-1)  # keeps X(θ + π) = conj X(θ)
        delta = perturbation * base.abs() * xi
        numerator[donor] = base + delta
        numerator[target] = base - delta
        ctf2[donor] = ctf2[donor] * 0.5
        ctf2[target] = ctf2[donor]
        new_counts[donor] = new_counts[donor] * 0.5
        new_counts[target] = new_counts[donor]
        if new_tau2 is not None:
            new_tau2[target] = new_tau2[donor]
    return dataclasses.replace(stats, numerator=numerator, ctf2=ctf2, counts=new_counts), new_tau2, empty


__all__ = ["reseed_empty_classes"]
