"""Per-particle scale: the least-squares amplitude of the reference in a particle.

With ``corr = 2·Re⟨C·X, Z⟩_ω`` and ``norm = ⟨C², |Z|²⟩_ω`` (``otf2d.engine.em.estep``), the log-likelihood
of a sample at scale α is ``−‖X‖² + α·corr − α²·norm``; its maximum is at
``α* = corr / (2·norm)`` (cryoSPARC's ``alpha_min = cross_cor / (2·slice_pow)``, ``algorithm.md``
§12), giving ``−‖X‖² + corr²/(4·norm)`` — no extra GEMM. A negative ``corr`` gives ``α = 0``.
"""

from __future__ import annotations

import torch


def pose_log_likelihood(
    corr: torch.Tensor, norm: torch.Tensor, power: torch.Tensor, per_particle_scale: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood and scale of samples from their cross and norm terms.

    Parameters
    ----------
    corr, norm
        Broadcastable tensors ending in the particle dimension ``B``.
    power
        ``(B,)`` ``‖X‖²_ω``.
    per_particle_scale
        Use ``α* = max(corr, 0)/(2·norm)`` (``LL = −‖X‖² + max(corr, 0)²/(4·norm)``) instead of ``α = 1``.

    Returns
    -------
    tuple of torch.Tensor
        ``LL`` and ``α``, broadcast shape.
    """
    if per_particle_scale:
        safe = norm.clamp(min=1e-30)
        c = corr.clamp(min=0.0)
        return c * c / (4.0 * safe) - power, c / (2.0 * safe)
    return corr - norm - power, torch.ones_like(corr)


__all__ = ["pose_log_likelihood"]
