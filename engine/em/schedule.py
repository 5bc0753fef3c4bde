"""Schedules: the ICUF posterior temperature, the online step size, the O-EM iteration plan.

ICUF ("initial classification uncertainty factor", cryoSPARC ``class2D_sigma_init_factor``) is
implemented as a posterior temperature that divides every log-likelihood (equivalently, it
multiplies the noise variance σ²)::

    T(it) = 1 + (ICUF − 1) · clip(1 − (it − start) / n_anneal, 0, 1)

with ``it`` the number of completed online-EM iterations (M-steps), ``start`` =
``noise_anneal_start_iteration`` (2) and ``n_anneal`` = ``noise_anneal_iterations`` (15): ``T`` is
ICUF up to iteration ``start``, falls linearly and is 1 from ``start + n_anneal`` on. ICUF = 1
turns it off. This is the "most plausible mechanism" of ``algorithm.md`` §7 with ``p = 1``;
cryoSPARC's exact law is not public.

Online step size (Cappé & Moulines 2009): ``η_b = (b + offset)^(−κ)`` for the ``b``-th update
(``b ≥ 1``), κ ∈ (0.5, 1]; with ``offset = 0`` the first update replaces the initial statistics.
"""

from __future__ import annotations

#: Default exponent of the online step size.
STEP_KAPPA = 0.75
#: Default offset of the online step size.
STEP_OFFSET = 0.0


def posterior_temperature(iteration: int, icuf: float, start: int, n_anneal: int) -> float:
    """The ICUF temperature at ``iteration`` (see the module docstring); ≥ 1."""
    if icuf <= 1.0:
        return 1.0
    if n_anneal <= 0:
        return icuf if iteration < start else 1.0
    frac = 1.0 - (iteration - start) / n_anneal
    return 1.0 + (icuf - 1.0) * min(1.0, max(0.0, frac))


def step_size(update: int, kappa: float = STEP_KAPPA, offset: float = STEP_OFFSET) -> float:
    """η for the ``update``-th online update (``update ≥ 1``), in (0, 1]."""
    return float(min(1.0, (max(update, 1) + offset) ** (-kappa)))


__all__ = ["STEP_KAPPA", "STEP_OFFSET", "posterior_temperature", "step_size"]
