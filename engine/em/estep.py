"""E-step scores for every (class, in-plane rotation, shift) from polar Fourier samples.

Model (``algorithm.md`` §1, §3): particle ``X = α·C·S_o R_ψ A_k + N`` with coloured complex
Gaussian noise of variance ``σ²(r)`` per polar sample. On the polar grid, with ring weights
``ω_r = independent_r / σ²_r`` on the alignment rings (0 elsewhere; ``independent_r`` = independent
Fourier coefficients per sample, so the polar sums approximate the Cartesian sums)::

    log p(X | k, ψ, o, α) = −‖X‖²_ω + α·corr − α²·norm
    corr = 2·Re Σ_rq ω_r·C·X(r, θ_q)·conj(Z_kt(r, θ_q + ψ))     Z_kt = A_k · e^{2πi k·o'/D}
    norm =    Σ_rq ω_r·C²(r, θ_q)·|A_k(r, θ_q + ψ)|²

The shift ``o'`` lives in the class frame (the particle-frame origin reported is ``R(−ψ)·o'``), so
the shifted references ``Z_kt`` are built once per batch and the per-particle work is independent
of the number of shifts. With ``Y = 2ω·C·X`` and angular spectra ``Ŷ_m = Σ_q Y_q e^{−2πimq/Q}``,

    corr(ψ_l) = (1/Q)·Re Σ_{m=0}^{Q/2} c_m·Ẑ_m·conj(Ŷ_m)·e^{2πi·m·l/R}      (c_0 = c_{Q/2} = 1, else 2)

for the ``R`` rotations ``ψ_l = 2π·l/R`` (``Q`` is a multiple of ``R``). Orders ``m`` with the same
``m mod R`` are *folded* into ``⌊R/2⌋ + 1`` bins (conjugated when ``m mod R > R/2``), so that each
bin is one real GEMM ``(2·KT × 2L) @ (2L × B)`` whose inner dimension ``L`` runs over the (ring,
order) pairs of that bin, limited on each ring to its band ``M_r``; a real DFT matrix then turns
the bins into the ``R`` rotations (``otf2d.engine.em.fold``). The norm term is the same circular
correlation of the real sequences ``ω·C²`` and ``|A|²`` (all orders, no shift).

Posteriors, with the ICUF temperature ``T`` (``otf2d.engine.em.schedule.posterior_temperature``) and
class priors ``π_k``:

- force-max: for each class the best (ψ, o) (and ``α* = corr/(2·norm)`` when the per-particle
  scale is on), then ``γ_k ∝ π_k·exp(LL_k / T)`` over classes: soft classes, hard poses;
- marginalise: ``γ_kψo ∝ π_k·exp(LL_kψo / T) / (R·T_shifts)`` over all samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from otf2d.engine.em.fold import (
    FoldPlan,
    folded_correlation,
    low_precision_bmm,
    max_over_shifts,
    particle_matrix,
    reference_matrix,
    shift_argmax_at,
)
from otf2d.engine.em.polar import PolarGrid, angular_spectrum
from otf2d.engine.em.scale import pose_log_likelihood

#: Posterior below which a (particle, class) pair is not accumulated in a force-max M-step.
PAIR_THRESHOLD = 1e-3
#: At most this many classes per particle are accumulated in a force-max M-step.
MAX_PAIRS_PER_PARTICLE = 8


class GemmWorkspace:
    """One reusable block for the GEMM results of the E-step's chunks, whatever their widths.

    :meth:`view` returns the block's first elements shaped as asked (contiguous), growing the
    block when a larger shape is asked for. One block per shape would keep a block for every
    width the last chunk of a batch has ever had: a streaming engine folds batches of every size,
    and its memory grew by a 5-40 MB block per new width (hundreds of MB over a session).
    """

    def __init__(self) -> None:
        self._flat: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return 0 if self._flat is None else self._flat.numel() * self._flat.element_size()

    def view(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A ``shape`` tensor of ``dtype`` on ``device`` over the block (its contents are undefined)."""
        n = math.prod(shape)
        flat = self._flat
        if flat is None or flat.dtype != dtype or flat.device != device or flat.numel() < n:
            self._flat = flat = None  # the old block is freed before the new one is taken
            self._flat = flat = torch.empty(n, dtype=dtype, device=device)
        return flat[:n].view(shape)


@dataclass(frozen=True)
class ReferenceBank:
    """Everything the E-step needs from the current classes, built once per batch.

    Attributes
    ----------
    cross
        ``(J, 2·T·K, 2L)`` reference matrix of the shifted references, rows ordered (shift, class)
        (possibly in a reduced dtype).
    norm
        ``(J', 2K, 2L')`` reference matrix of ``|A_k|²``.
    cross_plan, norm_plan
        Their fold tables.
    n_classes, n_shifts
        ``K`` and ``T``.
    """

    cross: torch.Tensor
    norm: torch.Tensor
    cross_plan: FoldPlan
    norm_plan: FoldPlan
    n_classes: int
    n_shifts: int
    workspace: GemmWorkspace = field(default_factory=GemmWorkspace, compare=False, repr=False)

    def buffer(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A buffer of ``shape`` for GEMM results (float64 for a float64 bank, else float32) on the
        bank's device, kept for reuse: large temporaries are costly to allocate on CPUs. The
        buffer of the previous call is overwritten."""
        dtype = torch.float64 if self.cross.dtype == torch.float64 else torch.float32
        return self.workspace.view(shape, dtype, self.norm.device)


def build_reference_bank(
    references: torch.Tensor,
    phases: torch.Tensor,
    cross_plan: FoldPlan,
    norm_plan: FoldPlan,
    gemm_dtype: torch.dtype | None = None,
    chunk: int = 256,
    reuse: ReferenceBank | None = None,
) -> ReferenceBank:
    """Shift the band-limited references and lay them out for the folded GEMMs.

    Parameters
    ----------
    references
        ``(K, N + 1, Q)`` complex band-limited class references (polar).
    phases
        ``(T, N + 1, Q)`` shift phase ramps (``PolarGrid.shift_phases`` of the class-frame shifts).
    cross_plan, norm_plan
        Fold tables of the cross and norm terms.
    gemm_dtype
        Reduced dtype to store the cross matrix in (``None``: float32).
    chunk
        About how many shifted references are built at a time (whole shifts of all classes).
    reuse
        A previous bank whose memory (cross matrix of the same size, workspaces) is reused; it
        must not be used afterwards.

    Returns
    -------
    ReferenceBank
    """
    k, t = references.shape[0], phases.shape[0]
    per = max(1, chunk // k)
    cross_dtype = references.real.dtype if gemm_dtype is None else gemm_dtype
    shape = (cross_plan.n_bins, 2, t * k, 2 * cross_plan.slots)
    if reuse is not None and reuse.cross.dtype == cross_dtype and reuse.cross.numel() == math.prod(shape):
        cross = reuse.cross.view(shape)
    else:
        cross = torch.empty(shape, dtype=cross_dtype, device=references.device)
    for start in range(0, t, per):
        z = phases[start : start + per, None] * references[None]  # (t', K, N+1, Q), rows (shift, class)
        spec = angular_spectrum(z.reshape(-1, *z.shape[2:]), cross_plan.n_orders)
        m = reference_matrix(spec, cross_plan)  # (J, 2·t'·K, 2L)
        rows = m.shape[1] // 2
        cross[:, :, start * k : start * k + rows] = m.reshape(m.shape[0], 2, rows, m.shape[2])
    power = references.real**2 + references.imag**2
    norm = reference_matrix(torch.fft.rfft(power, dim=-1), norm_plan)
    return ReferenceBank(
        cross.reshape(cross_plan.n_bins, 2 * k * t, 2 * cross_plan.slots),
        norm,
        cross_plan,
        norm_plan,
        k,
        t,
        workspace=GemmWorkspace() if reuse is None else reuse.workspace,
    )


@dataclass(frozen=True)
class ChunkScores:
    """Scores of a chunk of ``B`` particles.

    Attributes
    ----------
    corr
        ``(R, T, K, B)`` cross terms ``2·Re⟨C·X, R_ψ Z_kt⟩_ω``, or ``None`` when only the maximum
        over shifts was kept.
    corr_max, corr_argmax
        ``(R, K, B)`` maximum of the cross terms over shifts and the shift index reaching it
        (force-max only, else ``None``; ``corr_argmax`` is ``None`` when it was not tracked: see
        :meth:`best_shift`).
    norm
        ``(R, K, B)`` norm terms ``⟨C², |R_ψ A_k|²⟩_ω``.
    power
        ``(B,)`` ``‖X‖²_ω``.
    products, plan
        Without ``corr_argmax``: the ``(J, 2·T·K, B)`` GEMM result and its fold plan, from which
        :meth:`best_shift` recomputes the argmax at the rotations asked for (valid only until the
        bank's workspace is reused by the next chunk).
    """

    corr: torch.Tensor | None
    corr_max: torch.Tensor | None
    corr_argmax: torch.Tensor | None
    norm: torch.Tensor
    power: torch.Tensor
    products: torch.Tensor | None = None
    plan: FoldPlan | None = None

    def best_shift(self, rotation: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
        """``(K, B)`` int64 shift index of the largest cross term at ``rotation`` ``(K, B)``.

        Without a tracked argmax it is recomputed only where the assignments and a force-max
        M-step read it (:func:`otf2d.engine.em.mstep.hard_pairs`): each particle's most probable class,
        and its other ``MAX_PAIRS_PER_PARTICLE − 1`` most probable ones with ``γ ≥ PAIR_THRESHOLD``
        (by ``class_weights`` ``(K, B)``). The others are −1.
        """
        if self.corr_argmax is not None:
            return self.corr_argmax.gather(0, rotation[None])[0]
        if self.products is None or self.plan is None:
            raise ValueError("scores keep neither the shift argmax nor the GEMM products")
        k, b = rotation.shape
        n_shifts = self.products.shape[1] // (2 * k)
        values, top = torch.topk(class_weights, min(MAX_PAIRS_PER_PARTICLE, k), dim=0)  # (top, B)
        needed = values >= PAIR_THRESHOLD
        needed[0] = True
        particle = torch.arange(b, device=top.device).expand_as(top)[needed]
        klass = top[needed]
        shift = torch.full((k, b), -1, dtype=torch.int64, device=rotation.device)
        shift[klass, particle] = shift_argmax_at(
            self.products, self.plan, n_shifts, klass, particle, rotation[klass, particle]
        )
        return shift


def score_chunk(
    bank: ReferenceBank,
    spectrum: torch.Tensor,
    samples: torch.Tensor,
    ctf: torch.Tensor,
    ring_weights: torch.Tensor,
    gemm_dtype: torch.dtype | None = None,
    native_low_precision: bool = False,
    keep_all_shifts: bool = False,
) -> ChunkScores:
    """Cross and norm terms of a chunk of particles against every class, rotation and shift.

    Parameters
    ----------
    bank
        The references (:func:`build_reference_bank`).
    spectrum
        ``(B, N + 1, ≥ n_orders)`` complex angular spectrum of ``C·X`` (unweighted).
    samples
        ``(B, N + 1, Q)`` complex polar samples ``X`` of the particles.
    ctf
        ``(B, N + 1, Q)`` real CTF at the samples.
    ring_weights
        ``(N + 1,)`` ``ω_r`` (0 outside the alignment rings).
    gemm_dtype, native_low_precision
        See :func:`folded_correlation`.
    keep_all_shifts
        Keep the full ``(R, T, K, B)`` cross terms (marginalisation); otherwise only their maximum
        over shifts is formed (force-max).

    Returns
    -------
    ChunkScores
    """
    w = ring_weights.to(ctf.dtype)
    spec = spectrum[..., : bank.cross_plan.n_orders] * (2.0 * w)[None, :, None]
    pmat = particle_matrix(spec, bank.cross_plan)
    k, t = bank.n_classes, bank.n_shifts
    b = pmat.shape[-1]
    workspace = bank.buffer((bank.cross_plan.n_bins, bank.cross.shape[1], b))
    corr_argmax: torch.Tensor | None
    products: torch.Tensor | None = None
    if keep_all_shifts:
        corr = folded_correlation(bank.cross, pmat, bank.cross_plan, gemm_dtype, native_low_precision, workspace)
        r_count, _, b = corr.shape
        corr = corr.reshape(r_count, t, k, b)
        corr_max, corr_argmax = None, None  # marginalisation reads the full cross terms only
    else:
        corr = None
        # Only the best rotation's shift is needed: recomputed later from the GEMM result.
        products = low_precision_bmm(bank.cross, pmat, gemm_dtype, native_low_precision, workspace)
        corr_max, corr_argmax = max_over_shifts(products, bank.cross_plan, t, track_argmax=False)
    norm, power = norm_and_power(bank, samples, ctf, w)
    return ChunkScores(corr, corr_max, corr_argmax, norm, power, products, bank.cross_plan)


def score_products(
    bank: ReferenceBank,
    spectrum: torch.Tensor,
    samples: torch.Tensor,
    ctf: torch.Tensor,
    ring_weights: torch.Tensor,
    gemm_dtype: torch.dtype | None = None,
    native_low_precision: bool = False,
) -> ChunkScores:
    """The folded GEMM of a chunk without any rotation transform (adaptive marginalisation,
    :mod:`otf2d.engine.em.significant`, transforms only the samples it needs).

    Parameters as in :func:`score_chunk`; the result has ``products`` (valid until the bank's
    workspace is reused by the next chunk), ``norm`` and ``power``, and neither ``corr`` nor
    ``corr_max``.
    """
    w = ring_weights.to(ctf.dtype)
    spec = spectrum[..., : bank.cross_plan.n_orders] * (2.0 * w)[None, :, None]
    pmat = particle_matrix(spec, bank.cross_plan)
    workspace = bank.buffer((bank.cross_plan.n_bins, bank.cross.shape[1], pmat.shape[-1]))
    products = low_precision_bmm(bank.cross, pmat, gemm_dtype, native_low_precision, workspace)
    norm, power = norm_and_power(bank, samples, ctf, w)
    return ChunkScores(None, None, None, norm, power, products, bank.cross_plan)


def norm_and_power(
    bank: ReferenceBank, samples: torch.Tensor, ctf: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(R, K, B)`` norm terms ``⟨C², |R_ψ A_k|²⟩_ω`` and ``(B,)`` powers ``‖X‖²_ω`` (``weights``: ``ω_r``)."""
    c2 = torch.fft.rfft(weights[None, :, None] * ctf * ctf, dim=-1)
    norm = folded_correlation(bank.norm, particle_matrix(c2, bank.norm_plan), bank.norm_plan)
    power = (weights[None, :, None] * (samples.real**2 + samples.imag**2)).sum(dim=(1, 2))
    return norm, power


@dataclass(frozen=True)
class Posteriors:
    """E-step result for ``B`` particles (tensors indexed by particle last where 2-D).

    Attributes
    ----------
    class_weights
        ``(K, B)`` class posteriors ``γ_k``.
    best_rotation, best_shift
        ``(K, B)`` int64 best rotation and shift index within each class (force-max: the shift
        only for each particle's ``MAX_PAIRS_PER_PARTICLE`` most probable classes, −1 elsewhere).
    best_scale
        ``(K, B)`` per-particle scale at that pose (1 when the scale is off).
    best_log_likelihood
        ``(K, B)`` log-likelihood at that pose (untempered).
    sample_posterior
        ``(R, T, K, B)`` posterior of every sample (marginalisation only, else ``None``).
    pmax
        ``(B,)`` posterior of the best (class, pose) sample.
    n_significant
        ``(B,)`` int64 number of samples with a posterior of at least 0.1 % of ``pmax``.
    power
        ``(B,)`` ``‖X‖²_ω`` (``None`` when not kept).
    chosen_corr, chosen_norm
        ``(B,)`` cross term ``2·Re⟨C·X, R_ψ Z_kt⟩_ω`` and norm term ``⟨C², |R_ψ A_k|²⟩_ω`` at the best
        pose of each particle's most probable class (``class_weights.argmax(0)``), at scale 1
        (``None`` when not kept): cryoSPARC's ``cross_cor`` and ``slice_pow``.
    """

    class_weights: torch.Tensor
    best_rotation: torch.Tensor
    best_shift: torch.Tensor
    best_scale: torch.Tensor
    best_log_likelihood: torch.Tensor
    sample_posterior: torch.Tensor | None
    pmax: torch.Tensor
    n_significant: torch.Tensor
    power: torch.Tensor | None = None
    chosen_corr: torch.Tensor | None = None
    chosen_norm: torch.Tensor | None = None


def chosen(values: torch.Tensor, class_weights: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the entries of ``(K, B)`` ``values`` at each particle's most probable class."""
    return values.gather(0, class_weights.argmax(dim=0)[None])[0]


def force_max_posteriors(
    scores: ChunkScores, log_prior: torch.Tensor, temperature: float, per_particle_scale: bool
) -> Posteriors:
    """Force-max E-step: best pose per class, soft over classes.

    Parameters
    ----------
    scores
        From :func:`score_chunk`.
    log_prior
        ``(K,)`` ``log π_k``.
    temperature
        Posterior temperature (≥ 1) dividing the log-likelihoods.
    per_particle_scale
        Optimise a scale per sample (see :func:`pose_log_likelihood`).

    Returns
    -------
    Posteriors
    """
    norm, power, corr_max = scores.norm, scores.power, scores.corr_max
    if corr_max is None:
        raise ValueError("a force-max E-step needs the maximum over shifts (score_chunk with keep_all_shifts=False)")
    ll, _ = pose_log_likelihood(corr_max, norm, power, per_particle_scale)  # (R, K, B)
    best_ll, best_rot = ll.max(dim=0)  # (K, B)
    best_corr = corr_max.gather(0, best_rot[None])[0]
    best_norm = norm.gather(0, best_rot[None])[0]
    _, best_scale = pose_log_likelihood(best_corr, best_norm, power, per_particle_scale)
    logits = best_ll / temperature + log_prior[:, None]
    weights = torch.softmax(logits.to(torch.float64), dim=0).to(best_ll.dtype)
    best_shift = scores.best_shift(best_rot, weights)
    pmax = weights.max(dim=0).values
    significant = (weights >= 1e-3 * pmax[None]).sum(dim=0)
    return Posteriors(
        weights,
        best_rot,
        best_shift,
        best_scale,
        best_ll,
        None,
        pmax,
        significant,
        power,
        chosen(best_corr, weights),
        chosen(best_norm, weights),
    )


def marginal_posteriors(
    scores: ChunkScores, log_prior: torch.Tensor, temperature: float, per_particle_scale: bool
) -> Posteriors:
    """Marginalising E-step: the full posterior over class, rotation and shift.

    Parameters and return as in :func:`force_max_posteriors`; ``sample_posterior`` is filled and
    ``best_*`` give, per class, the most probable sample.
    """
    corr, norm, power = scores.corr, scores.norm, scores.power
    if corr is None:
        raise ValueError("marginalisation needs the cross terms of every shift (keep_all_shifts=True)")
    r_count, t, k, b = corr.shape
    # Within a class the posterior is monotone in LL, so the best sample per class is LL's argmax
    # over (ψ, o); the (R·T, K, B) views below are free (no permuted copies of the big tensor).
    if per_particle_scale:
        ll, scale = pose_log_likelihood(corr, norm[:, None], power, True)  # (R, T, K, B)
    else:
        ll, scale = (corr - norm[:, None]) - power, None  # α = 1: no (R, T, K, B) tensor of ones
    flat = ll.reshape(r_count * t, k, b)
    best_flat = flat.argmax(dim=0)  # (K, B)
    best_rot = torch.div(best_flat, t, rounding_mode="floor")
    best_shift = best_flat % t
    best_ll = flat.gather(0, best_flat[None])[0]
    if scale is None:
        best_scale = torch.ones_like(best_ll)
    else:
        best_scale = scale.expand_as(ll).reshape(r_count * t, k, b).gather(0, best_flat[None])[0]
    # ll is ours: turn it into the posterior in place (one big tensor instead of three).
    post = ll.div_(temperature).add_((log_prior - math.log(r_count * t))[None, None, :, None])
    log_z = torch.logsumexp(post.reshape(-1, b), dim=0)  # (B,)
    post = post.sub_(log_z).exp_()
    class_weights = post.sum(dim=(0, 1))  # (K, B)
    pmax = post.reshape(-1, b).max(dim=0).values
    significant = (post >= 1e-3 * pmax).reshape(-1, b).sum(dim=0)
    # the chosen class's terms, indexed (no reshape: corr may be a strided view of a big tensor)
    top = class_weights.argmax(dim=0)
    particles = torch.arange(b, device=top.device)
    top_rot, top_shift = best_rot[top, particles], best_shift[top, particles]
    return Posteriors(
        class_weights,
        best_rot,
        best_shift,
        best_scale,
        best_ll,
        post,
        pmax,
        significant,
        power,
        corr[top_rot, top_shift, top, particles],
        norm[top_rot, top, particles],
    )


def ring_weights(grid: PolarGrid, sigma2: torch.Tensor, ring_min: int, ring_max: int) -> torch.Tensor:
    """``ω_r = independent_r / σ²_r`` on rings ``ring_min .. ring_max``, 0 elsewhere, ``(N + 1,)``."""
    w = grid.independent.to(sigma2.dtype) / sigma2.clamp(min=1e-30)
    keep = torch.zeros_like(w)
    keep[ring_min : ring_max + 1] = 1.0
    return w * keep


__all__ = [
    "MAX_PAIRS_PER_PARTICLE",
    "PAIR_THRESHOLD",
    "ChunkScores",
    "GemmWorkspace",
    "Posteriors",
    "ReferenceBank",
    "build_reference_bank",
    "chosen",
    "force_max_posteriors",
    "marginal_posteriors",
    "norm_and_power",
    "ring_weights",
    "score_chunk",
    "score_products",
]
