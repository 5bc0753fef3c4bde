"""Folded circular correlations: all in-plane rotations of polar scores from a few real GEMMs.

For angular spectra ``Ŷ`` (particles) and ``Ẑ`` (references) of Hermitian-angular polar samples,
the circular correlation at the ``R`` rotations ``ψ_l = 2π·l/R`` (``Q`` a multiple of ``R``)::

    corr(l) = (1/Q)·Re Σ_{m=0}^{Q/2} c_m·Ẑ_m·conj(Ŷ_m)·e^{2πi·m·l/R}      (c_0 = c_{Q/2} = 1, else 2)

Orders with the same ``m mod R`` are folded into ``⌊R/2⌋ + 1`` bins (conjugated when
``m mod R > R/2``); each bin is one real GEMM ``(2C × 2L) @ (2L × B)`` over its (ring, order)
slots, and a real DFT (by symmetry, half of one) turns bins into rotations. The same machinery
computes correlations of real sequences (the CTF² norm term), whose spectra pair ``m`` and ``−m``
the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FoldPlan:
    """Index tables folding angular orders into rotation bins (see the module docstring).

    Attributes
    ----------
    ring, order
        ``(J, L)`` int64: ring and angular order of each slot of each bin (pads point at ``(0, 0)``).
    weight
        ``(J, L)``: ``c_m`` (0 for pads), applied on the particle side.
    sign
        ``(J, L)``: +1 when the order enters its bin directly, −1 when conjugated (0 for pads).
    cos, sin
        ``(⌊R/2⌋ + 1, J)``: ``cos(2πjl/R)/Q`` and ``sin(2πjl/R)/Q`` for ``l = 0 .. ⌊R/2⌋``; the
        rotations ``R − l`` follow by symmetry (:func:`bins_to_rotations`).
    n_rotations
        ``R``.
    n_orders
        Orders ``0 .. n_orders − 1`` of the angular spectra the tables index.
    """

    ring: torch.Tensor
    order: torch.Tensor
    weight: torch.Tensor
    sign: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    n_rotations: int
    n_orders: int

    @property
    def n_bins(self) -> int:
        """Number of bins ``J = ⌊R/2⌋ + 1``."""
        return int(self.ring.shape[0])

    @property
    def slots(self) -> int:
        """Slots per bin ``L`` (complex; the GEMM inner dimension is ``2L``)."""
        return int(self.ring.shape[1])


def make_fold_plan(
    ring_orders: list[int],
    ring_min: int,
    ring_max: int,
    n_angles: int,
    n_rotations: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> FoldPlan:
    """Build the fold tables for rings ``ring_min .. ring_max`` with per-ring maximum orders.

    Parameters
    ----------
    ring_orders
        Highest angular order used on each ring ``0 .. N`` (capped at ``Q/2``).
    ring_min, ring_max
        Rings included (inclusive).
    n_angles, n_rotations
        ``Q`` (even, a multiple of ``R``) and ``R``.
    device, dtype
        Where the tables live and the float dtype of ``weight``, ``sign``, ``dft``.

    Returns
    -------
    FoldPlan
    """
    q, r_count = n_angles, n_rotations
    half = q // 2
    n_bins = r_count // 2 + 1
    bins: list[list[tuple[int, int, float, float]]] = [[] for _ in range(n_bins)]
    top = min(half, max(ring_orders[ring_min : ring_max + 1]))
    for m in range(top + 1):
        c = 1.0 if m in (0, half) else 2.0
        j0 = m % r_count
        if j0 == 0 or 2 * j0 == r_count:
            j, sgn = j0 if j0 == 0 else r_count // 2, 1.0
        elif 2 * j0 < r_count:
            j, sgn = j0, 1.0
        else:
            j, sgn = r_count - j0, -1.0
        for r in range(ring_min, ring_max + 1):
            if min(ring_orders[r], half) >= m:
                bins[j].append((r, m, c, sgn))
    width = max(1, max(len(b) for b in bins))
    ring = torch.zeros(n_bins, width, dtype=torch.int64)
    order = torch.zeros(n_bins, width, dtype=torch.int64)
    weight = torch.zeros(n_bins, width, dtype=torch.float64)
    sign = torch.zeros(n_bins, width, dtype=torch.float64)
    for j, slots in enumerate(bins):
        for s, (r, m, c, sgn) in enumerate(slots):
            ring[j, s], order[j, s], weight[j, s], sign[j, s] = r, m, c, sgn
    jj = torch.arange(n_bins, dtype=torch.float64)
    ll = torch.arange(r_count // 2 + 1, dtype=torch.float64)
    ang = 2.0 * math.pi * ll[:, None] * jj[None, :] / r_count
    return FoldPlan(
        ring=ring.to(device),
        order=order.to(device),
        weight=weight.to(device=device, dtype=dtype),
        sign=sign.to(device=device, dtype=dtype),
        cos=(torch.cos(ang) / q).to(device=device, dtype=dtype),
        sin=(torch.sin(ang) / q).to(device=device, dtype=dtype),
        n_rotations=r_count,
        n_orders=top + 1,
    )


def bins_to_rotations(re: torch.Tensor, im: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """The ``R`` rotations from folded bins: ``corr(l) = Σ_j re_j·cos(2πjl/R) − im_j·sin(2πjl/R)``, /Q.

    Parameters
    ----------
    re, im
        ``(J, n)`` real and imaginary parts of the bins (any strides with a unit last stride).
    plan
        The fold tables.

    Returns
    -------
    torch.Tensor
        ``(R, n)``. Uses ``corr(R − l) = Σ re·cos + im·sin`` to halve the work.
    """
    r_count = plan.n_rotations
    half = r_count // 2 + 1
    p = plan.cos @ re
    s = plan.sin @ im
    out = torch.empty(r_count, re.shape[1], dtype=p.dtype, device=p.device)
    torch.sub(p, s, out=out[:half])
    mirrored = r_count - half
    if mirrored:
        out[half:] = (p[1 : mirrored + 1] + s[1 : mirrored + 1]).flip(0)
    return out


def particle_matrix(spectra: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """Particle side of the folded GEMM.

    Parameters
    ----------
    spectra
        ``(B, N + 1, ≥ plan.n_orders)`` complex angular spectra of the weighted particles.
    plan
        The fold tables.

    Returns
    -------
    torch.Tensor
        ``(J, 2L, B)`` real: rows ``(slot, re/im)``, weighted by ``c_m``.
    """
    vals = spectra[:, plan.ring, plan.order]  # (B, J, L) complex
    vals = torch.view_as_real(vals) * plan.weight[None, :, :, None]  # (B, J, L, 2)
    b = vals.shape[0]
    return vals.permute(1, 2, 3, 0).reshape(plan.n_bins, 2 * plan.slots, b).contiguous()


def reference_matrix(spectra: torch.Tensor, plan: FoldPlan) -> torch.Tensor:
    """Reference side of the folded GEMM.

    Parameters
    ----------
    spectra
        ``(C, N + 1, ≥ plan.n_orders)`` complex angular spectra of ``C`` references (class × shift).
    plan
        The fold tables.

    Returns
    -------
    torch.Tensor
        ``(J, 2C, 2L)`` real: row ``c`` gives ``Re(Ẑ·conj Ŷ)`` of reference ``c``, row ``C + c`` gives
        ``±Im(Ẑ·conj Ŷ)``, when multiplied by :func:`particle_matrix`.
    """
    z = torch.view_as_real(spectra[:, plan.ring, plan.order]).permute(1, 0, 2, 3)  # (J, C, L, 2)
    c = spectra.shape[0]
    s = plan.sign[:, None, :]
    out = torch.empty(plan.n_bins, 2, c, plan.slots, 2, dtype=z.dtype, device=z.device)
    out[:, 0] = z
    out[:, 1, :, :, 0] = z[..., 1] * s
    out[:, 1, :, :, 1] = -z[..., 0] * s
    return out.reshape(plan.n_bins, 2 * c, 2 * plan.slots)


def folded_correlation(
    reference: torch.Tensor,
    particles: torch.Tensor,
    plan: FoldPlan,
    gemm_dtype: torch.dtype | None = None,
    native_low_precision: bool = False,
    workspace: torch.Tensor | None = None,
) -> torch.Tensor:
    """Circular correlations at the ``R`` rotations for every (reference, particle) pair.

    Parameters
    ----------
    reference
        ``(J, 2C, 2L)`` from :func:`reference_matrix`.
    particles
        ``(J, 2L, B)`` from :func:`particle_matrix`.
    plan
        The fold tables.
    gemm_dtype
        ``None`` (float32), ``torch.bfloat16`` or ``torch.float16`` for the GEMM inputs.
    native_low_precision
        With a reduced ``gemm_dtype``: ``True`` runs the GEMM in that dtype (fast on GPUs with
        tensor cores, float32 output where torch supports it); ``False`` rounds the inputs to it
        and multiplies in float32, which is what a tensor-core GEMM with float32 accumulation
        computes (use it to measure the accuracy on a CPU without fast bf16).
    workspace
        Optional ``(J, 2C, B)`` float32 buffer for the GEMM result (reused between chunks).

    Returns
    -------
    torch.Tensor
        ``(R, C, B)`` float32.
    """
    out = low_precision_bmm(reference, particles, gemm_dtype, native_low_precision, workspace)  # (J, 2C, B)
    n_bins, two_c, b = out.shape
    c = two_c // 2
    re = out[:, :c].reshape(n_bins, c * b)
    im = out[:, c:].reshape(n_bins, c * b)
    return bins_to_rotations(re, im, plan).reshape(-1, c, b)


def folded_max_over_shifts(
    reference: torch.Tensor,
    particles: torch.Tensor,
    plan: FoldPlan,
    n_shifts: int,
    gemm_dtype: torch.dtype | None = None,
    native_low_precision: bool = False,
    workspace: torch.Tensor | None = None,
    track_argmax: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Like :func:`folded_correlation` for references ordered ``(shift, class)``, keeping only the
    maximum over shifts: the ``(R, T, K, B)`` tensor is never formed.

    With ``track_argmax=False`` the shift reaching each maximum is not tracked (three of the
    seven element-wise passes per shift); a force-max E-step only needs it at the best rotation
    of each (class, particle), which :func:`shift_argmax_at` recomputes from the GEMM result
    (call :func:`low_precision_bmm` and :func:`max_over_shifts` to keep that result).

    Returns
    -------
    tuple
        ``(R, K, B)`` maxima and ``(R, K, B)`` int64 shift indices reaching them (``None``
        unless ``track_argmax``).
    """
    out = low_precision_bmm(reference, particles, gemm_dtype, native_low_precision, workspace)  # (J, 2C, B)
    return max_over_shifts(out, plan, n_shifts, track_argmax)


def max_over_shifts(
    products: torch.Tensor, plan: FoldPlan, n_shifts: int, track_argmax: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rotation transform and maximum over shifts of a GEMM result (see :func:`folded_max_over_shifts`).

    Parameters
    ----------
    products
        ``(J, 2·T·K, B)`` result of the folded GEMM, references ordered ``(shift, class)``.
    """
    out = products
    n_bins, two_c, b = out.shape
    c = two_c // 2
    k = c // n_shifts
    re = out[:, :c].reshape(n_bins, n_shifts, k * b)
    im = out[:, c:].reshape(n_bins, n_shifts, k * b)
    r_count = plan.n_rotations
    half = plan.cos.shape[0]
    mirrored = r_count - half
    # corr(l) = P_l − S_l and corr(R − l) = P_l + S_l with P = cos·re, S = sin·im (l ≤ R/2):
    # half the multiply-adds of a full DFT. Rows of ``best``: l = 0..R/2, then R − 1, R − 2, ...
    best = torch.full((r_count, k * b), -torch.inf, dtype=out.dtype, device=out.device)
    index_dtype = torch.uint8 if n_shifts < 256 else torch.int32
    where = torch.zeros(best.shape, dtype=index_dtype, device=best.device)
    p = torch.empty(half, k * b, dtype=out.dtype, device=out.device)
    s = torch.empty_like(p)
    cand = torch.empty_like(best)
    better = torch.empty(best.shape, dtype=torch.bool, device=best.device)
    marked = torch.empty(best.shape, dtype=index_dtype, device=best.device)
    for t in range(n_shifts):
        torch.mm(plan.cos, re[:, t], out=p)
        torch.mm(plan.sin, im[:, t], out=s)
        torch.sub(p, s, out=cand[:half])
        torch.add(p[1 : mirrored + 1], s[1 : mirrored + 1], out=cand[half:])
        if not track_argmax:
            torch.maximum(best, cand, out=best)
            continue
        torch.gt(cand, best, out=better)
        torch.maximum(best, cand, out=best)
        # The last shift that improved is the argmax, and shifts come in increasing order:
        # where = max(where, t·better) (much cheaper than a masked fill).
        torch.mul(better.view(torch.uint8).to(index_dtype), t, out=marked)
        torch.maximum(where, marked, out=where)
    order = torch.cat(
        [torch.arange(half, device=best.device), r_count - 1 - torch.arange(mirrored, device=best.device)]
    )
    # row i of ``best`` is rotation order[i] → put rotation l in row l
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(r_count, device=best.device)
    best = best[inverse].reshape(r_count, k, b)
    if not track_argmax:
        return best, None
    return best, where[inverse].to(torch.int64).reshape(r_count, k, b)


def shift_argmax_at(
    products: torch.Tensor,
    plan: FoldPlan,
    n_shifts: int,
    klass: torch.Tensor,
    particle: torch.Tensor,
    rotation: torch.Tensor,
) -> torch.Tensor:
    """The shift with the largest cross term of given (class, particle) pairs at given rotations.

    Parameters
    ----------
    products
        ``(J, 2·T·K, B)`` GEMM result of :func:`folded_max_over_shifts` (references ordered
        ``(shift, class)``).
    plan
        The fold tables.
    n_shifts
        ``T``.
    klass, particle, rotation
        ``(P,)`` int64 class, particle (column of ``products``) and rotation ``l`` of each pair.

    Returns
    -------
    torch.Tensor
        ``(P,)`` int64 index of the shift maximising ``corr(l, t, k, b)`` over ``t`` (the first
        one on ties, like the tracked argmax).
    """
    n_bins, two_c, b = products.shape
    c = two_c // 2
    k = c // n_shifts
    wc, ws = full_rotation_matrices(plan)  # (R, J)
    # Flat column of (half, shift t, pair p) in products.reshape(J, 2C·B): one index_select.
    t = torch.arange(n_shifts, device=products.device)[:, None]
    column = (t * k + klass[None]) * b + particle[None]  # (T, P), real halves
    flat = products.reshape(n_bins, two_c * b)
    re = flat.index_select(1, column.flatten()).reshape(n_bins, n_shifts, -1)  # (J, T, P)
    im = flat.index_select(1, (column + c * b).flatten()).reshape(n_bins, n_shifts, -1)
    corr = (wc.to(products.dtype)[rotation].T[:, None, :] * re).sum(dim=0)
    corr += (ws.to(products.dtype)[rotation].T[:, None, :] * im).sum(dim=0)
    return corr.argmax(dim=0)


def full_rotation_matrices(plan: FoldPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, J)`` matrices ``cos(2πjl/R)/Q`` and ``−sin(2πjl/R)/Q`` for every rotation ``l``."""
    r_count = plan.n_rotations
    half = plan.cos.shape[0]
    mirrored = r_count - half
    wc = torch.cat([plan.cos, plan.cos[1 : mirrored + 1].flip(0)])
    ws = torch.cat([-plan.sin, plan.sin[1 : mirrored + 1].flip(0)])
    return wc, ws


def low_precision_bmm(
    a: torch.Tensor,
    b: torch.Tensor,
    dtype: torch.dtype | None,
    native: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``torch.bmm(a, b)`` with inputs in ``dtype`` and a float32 result (see :func:`folded_correlation`).

    ``out`` (float32, the result's shape) is reused when given: large fresh allocations are
    expensive on CPUs (page faults), so callers keep one per chunk shape.
    """
    if dtype is None or dtype == torch.float32 or not native:
        if dtype is not None and dtype != torch.float32:
            a, b = a.to(dtype).to(torch.float32), b.to(dtype).to(torch.float32)
        if out is None:
            return torch.bmm(a, b)
        return torch.bmm(a, b, out=out)
    a_low, b_low = a.to(dtype), b.to(dtype)
    if a.is_cuda:
        try:
            return torch.bmm(a_low, b_low, out_dtype=torch.float32)
        except (TypeError, RuntimeError):
            pass
    return torch.bmm(a_low, b_low).to(torch.float32)


__all__ = [
    "FoldPlan",
    "bins_to_rotations",
    "folded_correlation",
    "folded_max_over_shifts",
    "full_rotation_matrices",
    "low_precision_bmm",
    "make_fold_plan",
    "max_over_shifts",
    "particle_matrix",
    "reference_matrix",
    "shift_argmax_at",
]
