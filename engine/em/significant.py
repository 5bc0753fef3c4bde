"""Adaptive marginalisation: RELION's significant samples on the folded E-step.

An exhaustive marginalising E-step (:func:`otf2d.engine.em.estep.marginal_posteriors`) forms the
posterior of every (rotation, shift, class) sample: ``R·T·K`` per particle (48,600 at 6°, ±5 px,
K = 10), and every pass over that tensor (log-sum-exp, exp, sums, the M-step's transforms) costs
more than the GEMM that scored it. RELION avoids this with adaptive oversampling (``--adaptive_oversampling``,
``--adaptive_fraction 0.999``); this module does the same on our grids:

1. **Coarse pass.** The folded GEMM (:func:`otf2d.engine.em.estep.score_products`) is computed once for
   every fine shift. Its rotation transform is evaluated only at every other rotation and for the
   shifts with even coordinates (on the 1-px disc: 12° and 2 px for 6° and 1 px): ``R_c·T_c·K``
   samples, 8× fewer. Their posterior (ICUF temperature, class priors) is exact on that grid.
2. **Significant samples.** Per particle, the smallest set of coarse samples holding
   ``ADAPTIVE_FRACTION`` (99.9 %) of the coarse posterior, as RELION's ``adaptive_fraction``.
3. **Fine pass.** Each significant coarse sample stands for its neighbourhood on the fine grid:
   rotations ``l − 1 .. l + 1`` and the fine shifts within one step in x and y (27 samples). The
   union of these neighbourhoods is scored from the same GEMM result (a gather of ``J`` numbers per
   sample, no second GEMM) and the posterior is normalised over it: the fine posterior restricted
   to the significant region.
4. **Broad posteriors stay coarse.** A particle needing more than ``MAX_SIGNIFICANT_COARSE`` coarse
   samples for 99.9 % (early iterations, when classes are blurred and the ICUF temperature high;
   junk at any time) has a posterior much wider than a coarse cell, which the coarse grid already
   samples well: its posterior stays on the coarse grid, each coarse sample standing for the
   ``cell_size`` fine samples around it. RELION would oversample all of them, at 8× the cost.

Every particle's reported pose is refined on the fine grid by a hill climb (27 samples a round,
at most ``REFINE_ROUNDS``) from the best coarse sample of its most probable class, so poses keep the
fine sampling whichever posterior was used. The climb changes the reported pose only (and the
per-particle scale's ``alpha``, when that is on), never the posterior that the M-step sums: a caller
that discards the poses (the online-EM batches of ``otf2d classify``, whose particles the final
pass assigns again) skips it with ``refine_poses=False``.

The M-step takes the coarse posteriors as dense tensors (:meth:`OrderAccumulator.add_posteriors`
with ``shift_rows``) and the fine samples as a sparse list (:meth:`OrderAccumulator.add_samples`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from otf2d.engine.em.estep import Posteriors
from otf2d.engine.em.fold import FoldPlan, full_rotation_matrices
from otf2d.engine.em.scale import pose_log_likelihood

#: Share of the coarse posterior whose samples are refined (RELION's ``--adaptive_fraction``).
ADAPTIVE_FRACTION = 0.999
#: Particles needing more coarse samples than this for ``ADAPTIVE_FRACTION`` stay on the coarse grid.
MAX_SIGNIFICANT_COARSE = 64
#: Share of ``pmax`` above which a sample counts as significant (``n_significant``, as RELION's).
SIGNIFICANT_SHARE = 1e-3
#: Fine samples below this share of their particle's best one are left out of the M-step (the
#: others renormalised), as RELION's M-step skips samples below its significant weight.
MSTEP_SHARE = 1e-4
#: Rounds of the fine-grid hill climb that refines each particle's reported pose.
REFINE_ROUNDS = 4


@dataclass(frozen=True)
class CoarseGrid:
    """The coarse subgrid of a (rotation, shift) sampling and each coarse sample's fine neighbourhood.

    Attributes
    ----------
    rotation_stride
        Fine rotations per coarse rotation (2, or 1 when ``R`` is odd or below 8).
    coarse_shifts
        ``(T_c,)`` int64 indices, into the fine shifts, of the coarse shifts (even grid coordinates).
    neighbours
        ``(T_c, 9)`` int64 fine shift indices within one grid step in x and y of each coarse
        shift (−1 pads).
    fine_neighbours
        ``(T, 9)`` the same for every fine shift.
    cell_size
        Fine samples per coarse sample, ``R·T / (R_c·T_c)``.
    wc, ws
        ``(R, J)`` rotation transform: ``corr(l) = wc[l]·re + ws[l]·im`` of the folded bins.
    """

    rotation_stride: int
    coarse_shifts: torch.Tensor
    neighbours: torch.Tensor
    fine_neighbours: torch.Tensor
    cell_size: float
    wc: torch.Tensor
    ws: torch.Tensor

    @property
    def n_rotations(self) -> int:
        """Fine rotations ``R``."""
        return int(self.wc.shape[0])

    @property
    def coarse_rotations(self) -> torch.Tensor:
        """``(R_c,)`` int64 fine rotation index of each coarse rotation."""
        return torch.arange(0, self.n_rotations, self.rotation_stride, device=self.wc.device)


def make_coarse_grid(shifts_px: torch.Tensor, shift_step_px: float, plan: FoldPlan) -> CoarseGrid:
    """The coarse grid of the fine shifts ``shifts_px`` ``(T, 2)`` (a grid of step ``shift_step_px``)
    and the rotations of ``plan``.

    Coarse shifts are the fine ones whose grid coordinates are both even. Every fine shift is within
    one step of one (round its coordinates towards zero to even: that point is on the grid's disc).
    """
    device = plan.cos.device
    steps = torch.round(shifts_px.to(torch.float64) / shift_step_px).to(torch.int64).cpu()
    coarse = torch.nonzero((steps % 2 == 0).all(dim=1)).flatten()
    if len(coarse) == 0:  # a grid without the origin: keep it fine
        coarse = torch.arange(len(steps))
    diff = (steps[None, :, :] - steps[:, None, :]).abs().amax(dim=2)  # (T, T)
    fine_neighbours = torch.full((len(steps), 9), -1, dtype=torch.int64)
    for row, near in enumerate(diff <= 1):
        idx = torch.nonzero(near).flatten()
        fine_neighbours[row, : len(idx)] = idx
    r_count = plan.n_rotations
    stride = 2 if r_count % 2 == 0 and r_count >= 8 else 1
    wc, ws = full_rotation_matrices(plan)
    cell = (r_count * len(steps)) / ((r_count // stride) * len(coarse))
    return CoarseGrid(
        stride, coarse.to(device), fine_neighbours[coarse].to(device), fine_neighbours.to(device), cell, wc, ws
    )


@dataclass(frozen=True)
class SampleWeights:
    """What the M-step accumulates from an adaptive E-step of ``B`` particles.

    Attributes
    ----------
    coarse_particles
        ``(B_c,)`` int64 particles whose posterior stayed on the coarse grid.
    coarse_posterior
        ``(R_c, T_c, K, B_c)`` their posterior over the coarse samples (sums to one per particle).
    particle, klass, shift, rotation
        ``(P,)`` int64 fine samples of the other particles (fine shift and rotation indices).
    weight
        ``(P,)`` their posterior (sums to one per particle).
    alpha
        ``(B,)`` per-particle scale at each particle's most probable class (1 without the scale).
    """

    coarse_particles: torch.Tensor
    coarse_posterior: torch.Tensor
    particle: torch.Tensor
    klass: torch.Tensor
    shift: torch.Tensor
    rotation: torch.Tensor
    weight: torch.Tensor
    alpha: torch.Tensor


def _fine_log_likelihood(
    products: torch.Tensor,
    norm: torch.Tensor,
    power: torch.Tensor,
    grid: CoarseGrid,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    klass: torch.Tensor,
    particle: torch.Tensor,
    per_particle_scale: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood and scale of individual fine samples ``(P,)`` from the folded GEMM result.

    ``products`` is ``(J, 2·T·K, B)`` with rows ordered ``(re/im, shift, class)``: each sample reads
    its ``J`` real and imaginary bins and applies its rotation's row of the transform.
    """
    corr = _fine_correlation(products, grid, rotation, shift, klass, particle, norm.shape[1])
    return pose_log_likelihood(corr, norm[rotation, klass, particle], power[particle], per_particle_scale)


def _fine_correlation(
    products: torch.Tensor,
    grid: CoarseGrid,
    rotation: torch.Tensor,
    shift: torch.Tensor,
    klass: torch.Tensor,
    particle: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Cross terms ``(P,)`` of individual fine samples (see :func:`_fine_log_likelihood`)."""
    n_bins, two_c, b = products.shape
    c = two_c // 2
    flat = products.reshape(n_bins, two_c * b)
    column = (shift * k + klass) * b + particle
    re = flat.index_select(1, column)  # (J, P)
    im = flat.index_select(1, column + c * b)
    corr = (grid.wc.to(products.dtype)[rotation].T * re).sum(dim=0)
    corr += (grid.ws.to(products.dtype)[rotation].T * im).sum(dim=0)
    return corr


def _segment_max(values: torch.Tensor, segment: torch.Tensor, n: int) -> torch.Tensor:
    """``(n,)`` maximum of ``values`` per segment id (−inf where empty)."""
    out = torch.full((n,), -math.inf, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, segment, values, reduce="amax", include_self=True)


def _segment_argmax(values: torch.Tensor, segment: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum per segment and the index (first on ties, −1 where empty) of the value reaching it."""
    best = _segment_max(values, segment, n)
    hit = values >= best[segment]
    index = torch.arange(len(values), device=values.device)
    big = torch.full((n,), len(values), dtype=torch.int64, device=values.device)
    first = big.scatter_reduce(0, segment[hit], index[hit], reduce="amin", include_self=True)
    return best, torch.where(first == len(values), -1, first)


def adaptive_posteriors(
    products: torch.Tensor,
    norm: torch.Tensor,
    power: torch.Tensor,
    grid: CoarseGrid,
    log_prior: torch.Tensor,
    temperature: float,
    per_particle_scale: bool,
    refine_poses: bool = True,
) -> tuple[Posteriors, SampleWeights]:
    """Coarse-to-fine marginalising E-step of a chunk (see the module docstring).

    Parameters
    ----------
    products
        ``(J, 2·T·K, B)`` folded GEMM result (:func:`otf2d.engine.em.estep.score_products`).
    norm
        ``(R, K, B)`` norm terms.
    power
        ``(B,)`` ``‖X‖²_ω``.
    grid
        The coarse grid of the classifier's sampling.
    log_prior
        ``(K,)`` ``log π_k``.
    temperature
        Posterior temperature (≥ 1).
    per_particle_scale
        Optimise a scale per sample.
    refine_poses
        Hill-climb each particle's pose on the fine grid. Without it the pose is the best sample
        scored (the best coarse one, or the best of the fine region); the class posteriors and the
        M-step weights are the same either way when ``per_particle_scale`` is off.

    Returns
    -------
    tuple
        ``Posteriors`` (``sample_posterior`` is ``None``; ``best_*`` per class: the best coarse
        sample, refined on the fine grid where fine samples of that class were scored) and the
        ``SampleWeights`` of the M-step.
    """
    b = products.shape[2]
    k = norm.shape[1]
    coarse = _coarse_pass(products, norm, power, grid, log_prior, temperature, per_particle_scale)
    sig = _significant_coarse(coarse.post, k)
    offsets = torch.arange(-(grid.rotation_stride // 2), grid.rotation_stride // 2 + 1, device=products.device)
    reg_r, reg_t, reg_k, reg_b = _fine_region(sig, grid, offsets, norm.shape[0], products.shape[1] // (2 * k), k, b)
    reg_ll, reg_scale = _fine_log_likelihood(
        products, norm, power, grid, reg_r, reg_t, reg_k, reg_b, per_particle_scale
    )
    scored = [(reg_r, reg_t, reg_k, reg_b, reg_ll, reg_scale.expand_as(reg_ll))]
    if refine_poses:
        scored += _refine_poses(products, norm, power, grid, coarse, offsets, per_particle_scale, reg_ll.dtype)
    _take_best_fine(coarse, scored, k, b)
    reg_post, class_weights = _fine_posterior(reg_ll, reg_k, reg_b, log_prior, temperature, sig.fine, coarse, k)
    fine_max = _segment_max(reg_post, reg_b, b)
    pmax, n_significant = _significance(sig, reg_post, reg_b, fine_max, grid.cell_size)
    top_class = class_weights.argmax(dim=0)
    weights = _mstep_weights(coarse, sig.fine, reg_post, fine_max, reg_r, reg_t, reg_k, reg_b, top_class)
    particles = torch.arange(b, device=products.device)
    top_rot, top_shift = coarse.best_rot[top_class, particles], coarse.best_shift[top_class, particles]
    posteriors = Posteriors(
        class_weights,
        coarse.best_rot,
        coarse.best_shift,
        coarse.best_scale,
        coarse.best_ll,
        None,
        pmax,
        n_significant,
        power,
        _fine_correlation(products, grid, top_rot, top_shift, top_class, particles, k),
        norm[top_rot, top_class, particles],
    )
    return posteriors, weights


@dataclass(frozen=True)
class _CoarsePass:
    """Step 1 of :func:`adaptive_posteriors`: the coarse samples' posterior and each class's best sample.

    ``best_*`` are ``(K, B)`` and are replaced in place by better fine samples (:func:`_take_best_fine`).
    """

    post: torch.Tensor  #: (R_c, T_c, K, B), sums to one per particle
    class_weights: torch.Tensor  #: (K, B)
    best_ll: torch.Tensor
    best_rot: torch.Tensor
    best_shift: torch.Tensor
    best_scale: torch.Tensor


def _coarse_pass(
    products: torch.Tensor,
    norm: torch.Tensor,
    power: torch.Tensor,
    grid: CoarseGrid,
    log_prior: torch.Tensor,
    temperature: float,
    per_particle_scale: bool,
) -> _CoarsePass:
    """1. Coarse pass: the rotation transform at coarse rotations of the coarse shifts' rows."""
    n_bins, two_c, b = products.shape
    k = norm.shape[1]
    t = two_c // (2 * k)
    rot_c = grid.coarse_rotations
    t_c = grid.coarse_shifts
    r_n, s_n = len(rot_c), len(t_c)
    rows = (t_c[:, None] * k + torch.arange(k, device=products.device)[None]).flatten()  # (T_c·K)
    re = products.index_select(1, rows).reshape(n_bins, -1)
    im = products.index_select(1, rows + t * k).reshape(n_bins, -1)
    corr = grid.wc.to(products.dtype)[rot_c] @ re
    corr.addmm_(grid.ws.to(products.dtype)[rot_c], im)
    corr = corr.reshape(r_n, s_n, k, b)
    ll, scale = pose_log_likelihood(corr, norm[rot_c][:, None], power, per_particle_scale)  # (R_c, T_c, K, B)
    flat_ll = ll.reshape(r_n * s_n, k, b)
    best_ll, best_flat = flat_ll.max(dim=0)  # (K, B): best coarse sample per class
    best_rot = rot_c[torch.div(best_flat, s_n, rounding_mode="floor")]
    best_shift = t_c[best_flat % s_n]
    best_scale = scale.expand_as(ll).reshape(r_n * s_n, k, b).gather(0, best_flat[None])[0]

    logits = ll.div(temperature).add_(log_prior.to(ll.dtype)[None, None, :, None])
    top = logits.reshape(-1, b).amax(dim=0)  # (B,)
    post = logits.sub_(top).exp_()
    post = post.div_(post.reshape(-1, b).sum(dim=0))  # (R_c, T_c, K, B), sums to one per particle
    return _CoarsePass(post, post.sum(dim=(0, 1)), best_ll, best_rot, best_shift, best_scale)


@dataclass(frozen=True)
class _Significant:
    """Step 2: the significant coarse samples ``(S,)`` (particle, class, coarse shift and rotation positions)."""

    by_particle: torch.Tensor  #: (B, R_c·T_c·K) the coarse posterior per particle
    top_values: torch.Tensor  #: (B, n_top) its largest values, in decreasing order
    fine: torch.Tensor  #: (B,) bool: the particle is refined on the fine grid
    b: torch.Tensor
    k: torch.Tensor
    t: torch.Tensor
    r: torch.Tensor


def _significant_coarse(post: torch.Tensor, k: int) -> _Significant:
    """2. Significant coarse samples: the fewest holding ADAPTIVE_FRACTION of the posterior."""
    s_n, b = post.shape[1], post.shape[3]
    by_particle = post.reshape(-1, b).T.contiguous()  # (B, R_c·T_c·K)
    n_top = min(MAX_SIGNIFICANT_COARSE, by_particle.shape[1])
    values, index = torch.topk(by_particle, n_top, dim=1)
    covered = values.cumsum(dim=1)
    fine = covered[:, -1] >= ADAPTIVE_FRACTION
    n_keep = ((covered < ADAPTIVE_FRACTION).sum(dim=1) + 1).clamp(max=n_top)
    keep = (torch.arange(n_top, device=post.device)[None] < n_keep[:, None]) & fine[:, None]
    sig_b, sig_s = torch.nonzero(keep, as_tuple=True)
    sig = index[sig_b, sig_s]  # flat (rotation_c, shift_c, class)
    sig_k = sig % k
    sig_t = torch.div(sig, k, rounding_mode="floor") % s_n
    sig_r = torch.div(sig, k * s_n, rounding_mode="floor")
    return _Significant(by_particle, values, fine, sig_b, sig_k, sig_t, sig_r)


def _fine_region(
    sig: _Significant, grid: CoarseGrid, offsets: torch.Tensor, r_count: int, t: int, k: int, b: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """3. Fine region: neighbourhoods of the significant samples, each fine sample once (rotation, shift,
    class, particle)."""
    cand_r = (grid.coarse_rotations[sig.r][:, None, None] + offsets[None, :, None]) % r_count  # (S, 3, 1)
    cand_t = grid.neighbours[sig.t][:, None, :]  # (S, 1, 9)
    shape = (len(sig.b), len(offsets), grid.neighbours.shape[1])
    valid = (cand_t >= 0).expand(shape)
    key = ((cand_r * t + cand_t.clamp(min=0)) * k + sig.k[:, None, None]) * b + sig.b[:, None, None]
    key = torch.unique(key.expand(shape)[valid])
    reg_b = key % b
    reg_k = torch.div(key, b, rounding_mode="floor") % k
    reg_t = torch.div(key, b * k, rounding_mode="floor") % t
    reg_r = torch.div(key, b * k * t, rounding_mode="floor")
    return reg_r, reg_t, reg_k, reg_b


_Scored = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _refine_poses(
    products: torch.Tensor,
    norm: torch.Tensor,
    power: torch.Tensor,
    grid: CoarseGrid,
    coarse: _CoarsePass,
    offsets: torch.Tensor,
    per_particle_scale: bool,
    dtype: torch.dtype,
) -> list[_Scored]:
    """Pose of every particle's most probable class: hill-climb on the fine grid from its best coarse
    sample (the fine optimum can lie two steps from the best coarse sample). Returns the samples scored."""
    b = products.shape[2]
    r_count = norm.shape[0]
    tail = (len(offsets), grid.neighbours.shape[1])
    top_class = coarse.class_weights.argmax(dim=0)  # (B,)
    particles = torch.arange(b, device=products.device)
    at_r = coarse.best_rot[top_class, particles]
    at_t = coarse.best_shift[top_class, particles]
    at_ll = torch.full((b,), -math.inf, dtype=dtype, device=products.device)
    active = particles  # particles whose best sample moved in the last round
    scored: list[_Scored] = []
    for _ in range(REFINE_ROUNDS):
        n_active = len(active)
        cand_r = ((at_r[active][:, None, None] + offsets[None, :, None]) % r_count).expand(n_active, *tail)
        cand_t = grid.fine_neighbours[at_t[active]][:, None, :].expand(n_active, *tail)
        ok = cand_t >= 0
        c_r, c_t = cand_r[ok], cand_t[ok]
        c_b = active[:, None, None].expand(n_active, *tail)[ok]
        c_k = top_class[c_b]
        c_ll, c_scale = _fine_log_likelihood(products, norm, power, grid, c_r, c_t, c_k, c_b, per_particle_scale)
        scored.append((c_r, c_t, c_k, c_b, c_ll, c_scale.expand_as(c_ll)))
        new_ll, which = _segment_argmax(c_ll, c_b, b)
        moved = torch.nonzero(new_ll > at_ll).flatten()  # particles outside ``active`` have −inf
        if len(moved) == 0:
            break
        at_ll[moved] = new_ll[moved]
        at_r[moved] = c_r[which[moved]]
        at_t[moved] = c_t[which[moved]]
        active = moved
    return scored


def _take_best_fine(coarse: _CoarsePass, scored: list[_Scored], k: int, b: int) -> None:
    """Best fine sample per (class, particle) wherever fine samples were scored (into ``coarse.best_*``)."""
    all_r, all_t, all_k, all_b, all_ll, all_scale = (torch.cat(parts) for parts in zip(*scored, strict=True))
    pair = all_k * b + all_b
    fine_best, which = _segment_argmax(all_ll, pair, k * b)
    have = which >= 0
    if bool(have.any()):
        w = which[have]
        coarse.best_ll.view(-1)[have] = fine_best[have]
        coarse.best_rot.view(-1)[have] = all_r[w]
        coarse.best_shift.view(-1)[have] = all_t[w]
        coarse.best_scale.view(-1)[have] = all_scale[w]


def _fine_posterior(
    reg_ll: torch.Tensor,
    reg_k: torch.Tensor,
    reg_b: torch.Tensor,
    log_prior: torch.Tensor,
    temperature: float,
    fine: torch.Tensor,
    coarse: _CoarsePass,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """4. Fine posterior over the region of each refined particle; the class weights (fine where refined)."""
    b = len(fine)
    reg_logits = reg_ll / temperature + log_prior.to(reg_ll.dtype)[reg_k]
    reg_top = _segment_max(reg_logits, reg_b, b)
    reg_post = torch.exp(reg_logits - reg_top[reg_b])
    z = torch.zeros(b, dtype=reg_post.dtype, device=reg_post.device).index_add_(0, reg_b, reg_post)
    reg_post = reg_post / z[reg_b]
    fine_weights = torch.zeros(k * b, dtype=reg_post.dtype, device=reg_post.device)
    fine_weights = fine_weights.index_add_(0, reg_k * b + reg_b, reg_post).reshape(k, b)
    return reg_post, torch.where(fine[None, :], fine_weights, coarse.class_weights)


def _significance(
    sig: _Significant, reg_post: torch.Tensor, reg_b: torch.Tensor, fine_max: torch.Tensor, cell_size: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """5. pmax and the count of significant samples, in fine samples (a coarse one stands for cell_size)."""
    b = len(sig.fine)
    coarse_max = sig.top_values[:, 0]
    counted = (reg_post >= SIGNIFICANT_SHARE * fine_max[reg_b]).to(torch.int64)
    fine_count = torch.zeros(b, dtype=torch.int64, device=reg_post.device).index_add_(0, reg_b, counted)
    coarse_count = (sig.by_particle >= SIGNIFICANT_SHARE * coarse_max[:, None]).sum(dim=1)
    pmax = torch.where(sig.fine, fine_max, coarse_max / cell_size)
    n_significant = torch.where(sig.fine, fine_count, torch.round(coarse_count * cell_size).to(torch.int64))
    return pmax, n_significant


def _mstep_weights(
    coarse: _CoarsePass,
    fine: torch.Tensor,
    reg_post: torch.Tensor,
    fine_max: torch.Tensor,
    reg_r: torch.Tensor,
    reg_t: torch.Tensor,
    reg_k: torch.Tensor,
    reg_b: torch.Tensor,
    top_class: torch.Tensor,
) -> SampleWeights:
    """6. What the M-step accumulates: the coarse posterior of coarse particles, the fine samples carrying
    at least MSTEP_SHARE of a refined particle's best (renormalised), the scale at the top class."""
    b = len(fine)
    alpha = coarse.best_scale.gather(0, top_class[None])[0]
    coarse_particles = torch.nonzero(~fine).flatten()
    used = torch.nonzero(reg_post >= MSTEP_SHARE * fine_max[reg_b]).flatten()
    used_b = reg_b[used]
    used_post = reg_post[used]
    kept = torch.zeros(b, dtype=used_post.dtype, device=used_post.device).index_add_(0, used_b, used_post)
    post = coarse.post
    return SampleWeights(
        coarse_particles=coarse_particles,
        coarse_posterior=post if len(coarse_particles) == b else post.index_select(3, coarse_particles),
        particle=used_b,
        klass=reg_k[used],
        shift=reg_t[used],
        rotation=reg_r[used],
        weight=used_post / kept[used_b],
        alpha=alpha,
    )


__all__ = [
    "ADAPTIVE_FRACTION",
    "MAX_SIGNIFICANT_COARSE",
    "CoarseGrid",
    "SampleWeights",
    "adaptive_posteriors",
    "make_coarse_grid",
]
