"""Coloured noise model: the noise power per polar sample on each Fourier ring.

- Initial estimate (RELION ``setSigmaNoiseEstimatesAndSetAverageImage``, ``algorithm.md`` §2): the
  mean power of the particles minus the power of their mean, per ring. Before any alignment this
  includes the signal, so the first posteriors are conservative (flatter).
- Update from the sufficient statistics (``otf2d.engine.em.mstep``): the expected residual power
  ``Σ_i Σ_pose w·|X_i − α·C·R_ψ S_o A_k|²`` per ring, which expands exactly into the statistics
  ``x2 − 2·Re Σ_k ⟨A_k, B_k⟩ + Σ_k ⟨|A_k|², D_k⟩``, so it needs no extra pass over the particles.
"""

from __future__ import annotations

import torch

from otf2d.engine.em.mstep import SufficientStats


def initial_noise(samples: torch.Tensor) -> torch.Tensor:
    """Noise power per sample of each ring from unaligned particles.

    Parameters
    ----------
    samples
        ``(n, N + 1, Q)`` complex polar samples of ``n ≥ 2`` particles.

    Returns
    -------
    torch.Tensor
        ``(N + 1,)`` real, positive: ``⟨|X|²⟩ − |⟨X⟩|²`` averaged over each ring.
    """
    power = (samples.real**2 + samples.imag**2).mean(dim=(0, 2))
    mean = samples.mean(dim=0)
    mean_power = (mean.real**2 + mean.imag**2).mean(dim=-1)
    return fill_nonpositive(power - mean_power)


def noise_from_stats(stats: SufficientStats, references: torch.Tensor) -> torch.Tensor:
    """Noise power per sample of each ring from per-particle statistics and the references.

    Parameters
    ----------
    stats
        Per-particle (normalised) statistics.
    references
        ``(K, N + 1, Q)`` complex references the residuals are taken against.

    Returns
    -------
    torch.Tensor
        ``(N + 1,)`` real, positive.
    """
    q = references.shape[-1]
    a = references.to(stats.numerator.dtype)
    cross = (a.conj() * stats.numerator).real.sum(dim=(0, 2))
    model = ((a.real**2 + a.imag**2) * stats.ctf2).sum(dim=(0, 2))
    total = float(stats.weight) if float(stats.weight) > 0 else 1.0
    residual = (stats.power - 2.0 * cross + model) / (total * q)
    return fill_nonpositive(residual.to(stats.power.dtype))


def unaligned_noise(power_sum: torch.Tensor, mean_sum: torch.Tensor, n: int, n_angles: int) -> torch.Tensor:
    """:func:`initial_noise` from running sums over ``n`` particles (read in chunks).

    Parameters
    ----------
    power_sum
        ``(N + 1,)`` ``Σ_i Σ_q |X_i(r, q)|²``.
    mean_sum
        ``(N + 1, Q)`` ``Σ_i X_i(r, q)``.
    n, n_angles
        Particles summed and ``Q``.
    """
    mean = mean_sum / n
    return fill_nonpositive(power_sum / (n * n_angles) - (mean.real**2 + mean.imag**2).mean(dim=-1))


def fill_nonpositive(sigma2: torch.Tensor) -> torch.Tensor:
    """Replace non-positive (or non-finite) ring values by the nearest positive neighbour's."""
    out = sigma2.clone()
    good = torch.isfinite(out) & (out > 0)
    if not bool(good.any()):
        return torch.ones_like(out)
    idx = torch.nonzero(good).flatten()
    positions = torch.arange(len(out), device=out.device)
    nearest = idx[torch.argmin((positions[:, None] - idx[None, :]).abs(), dim=1)]
    return torch.where(good, out, out[nearest])


__all__ = ["fill_nonpositive", "initial_noise", "noise_from_stats", "unaligned_noise"]
