"""M-step: sufficient statistics in the class frame, their online update and the Wiener average.

Sufficient statistics (polar samples in the class frame, per-particle weights ``w_ik`` summing to
one over the classes, per-particle scale ``α``)::

    B_k(r, φ) = Σ_i Σ_pose w·α·C_i·X_i(r, φ − ψ) · e^{−2πi k·o'/D}      (aligned, CTF-weighted data)
    D_k(r, φ) = Σ_i Σ_pose w·α²·C_i²(r, φ − ψ)                         (CTF² weights)
    n_k       = Σ_i w_ik                                               (class sizes)
    x2(r)     = Σ_i Σ_q |X_i(r, q)|²                                   (data power, for the noise)

They are kept *per particle* (divided by the particles' total weight) together with an effective
number of particles ``n_eff``, and updated online with a step size η (Cappé & Moulines 2009):
``S ← (1 − η)·S + η·S_batch``, ``v ← (1 − η)²·v + η²/n_batch``, ``n_eff = 1/v``; so the cost of an
update does not depend on how many particles were seen, and ``η = 1`` is a plain (full) EM pass.

Wiener average (RELION ``backprojector.cpp::reconstruct``, ``algorithm.md`` §5), per sample::

    A_k = B_k / (D_k + σ²(r) / (n_eff · T · τ²_k(r)))

with ``T`` = ``tau2_fudge`` (2, as RELION's 2D GUI) and ``τ²_k(r)`` the power per sample of the
current reference on ring ``r``. Only the ratio of per-particle statistics enters, so it is the
same as RELION's ``Σ C X/σ² / (Σ C²/σ² + 1/(T τ²))`` on ``n_eff`` particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch

from otf2d.engine.em.estep import Posteriors
from otf2d.engine.em.polar import angular_spectrum

#: RELION's ``--tau2_fudge`` for 2D (GUI default 2; "we typically use values of T=2-3").
TAU2_FUDGE = 2.0


@dataclass(frozen=True)
class SufficientStats:
    """Class-frame sufficient statistics (sums over particles, or per particle after ``normalised``).

    Attributes
    ----------
    numerator
        ``(K, N + 1, Q)`` complex ``B_k``.
    ctf2
        ``(K, N + 1, Q)`` real ``D_k``.
    counts
        ``(K,)`` ``n_k``.
    power
        ``(N + 1,)`` ``x2``.
    weight
        Scalar tensor: total particle weight the sums hold (1 once normalised).
    """

    numerator: torch.Tensor
    ctf2: torch.Tensor
    counts: torch.Tensor
    power: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def zeros(
        cls, n_classes: int, n_rings: int, n_angles: int, device: torch.device | str, dtype: torch.dtype
    ) -> SufficientStats:
        """Empty statistics (``dtype`` is the real dtype)."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return cls(
            numerator=torch.zeros(n_classes, n_rings + 1, n_angles, dtype=cdtype, device=device),
            ctf2=torch.zeros(n_classes, n_rings + 1, n_angles, dtype=dtype, device=device),
            counts=torch.zeros(n_classes, dtype=dtype, device=device),
            power=torch.zeros(n_rings + 1, dtype=dtype, device=device),
            weight=torch.zeros((), dtype=dtype, device=device),
        )

    def __add__(self, other: SufficientStats) -> SufficientStats:
        return SufficientStats(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, factor: float) -> SufficientStats:
        """All statistics times ``factor``."""
        return SufficientStats(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def normalised(self) -> SufficientStats:
        """Divided by the total weight (per-particle statistics, ``weight == 1``)."""
        w = float(self.weight)
        if w <= 0:
            return self
        return self.scaled(1.0 / w)


def hard_pairs(
    posteriors: Posteriors, threshold: float, max_per_particle: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (particle, class) pairs a force-max M-step accumulates.

    Classes with ``γ ≥ threshold``, at most ``max_per_particle`` per particle (the most probable),
    their weights renormalised to sum to one per particle.

    Returns
    -------
    tuple of torch.Tensor
        ``particle, klass, shift, rotation, weight, scale``, each ``(P,)``.
    """
    w = posteriors.class_weights  # (K, B)
    k, b = w.shape
    top = min(max_per_particle, k)
    vals, cls = torch.topk(w, top, dim=0)  # (top, B)
    keep = vals >= threshold
    keep[0] = True
    vals = torch.where(keep, vals, torch.zeros_like(vals))
    vals = vals / vals.sum(dim=0, keepdim=True)
    part = torch.arange(b, device=w.device)[None, :].expand(top, b)
    sel = keep.flatten()
    part_f = part.flatten()[sel]
    cls_f = cls.flatten()[sel]
    return (
        part_f,
        cls_f,
        posteriors.best_shift[cls_f, part_f],
        posteriors.best_rotation[cls_f, part_f],
        vals.flatten()[sel],
        posteriors.best_scale[cls_f, part_f],
    )


def data_spectra(samples: torch.Tensor, ctf: torch.Tensor, n_orders: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular spectra a batch contributes to the statistics.

    Parameters
    ----------
    samples, ctf
        ``(B, N + 1, Q)`` polar samples (complex) and CTF (real).
    n_orders
        Orders ``0 .. n_orders − 1`` kept of ``C·X``.

    Returns
    -------
    tuple of torch.Tensor
        ``Ŷ`` ``(B, N + 1, n_orders)`` of ``C·X`` over the full circle, and ``Ĉ`` ``(B, N + 1, Q/4 + 1)``:
        the real FFT of ``C²`` over the half circle (``C²`` has period π, so its order ``m'``
        here is angular order ``2m'``).
    """
    q = samples.shape[-1]
    cx = angular_spectrum(samples * ctf, n_orders)
    c2 = torch.fft.rfft(ctf[..., : q // 2] ** 2, dim=-1)
    return cx, c2


@dataclass
class OrderAccumulator:
    """Sums of one batch in the angular-order domain, turned into class-frame statistics at the end.

    ``U[(k, t), r, m] = Σ_i Σ_l w·α·e^{−i·m·ψ_l}·Ŷ_i(r, m)`` for each class ``k`` and class-frame shift
    ``t`` (rotating by ψ is a phase per order), and ``V[k, r, m'] = Σ w·α²·e^{−2i·m'·ψ_l}·Ĉ_i(r, m')``
    for the ``C²`` weights. Force-max adds single poses (:meth:`add_pairs`), marginalisation adds
    posterior-weighted sums over all poses as GEMMs over the particles (:meth:`add_posteriors`).
    :meth:`to_stats` applies ``e^{−2πi k·o'/D}`` per shift in polar space and sums: the
    ``SufficientStats`` of the module docstring.
    """

    numerator: torch.Tensor  # (K·T, N + 1, M + 1) complex
    ctf2: torch.Tensor  # (K, N + 1, Q/4 + 1) complex
    counts: torch.Tensor  # (K,)
    power: torch.Tensor  # (N + 1,)
    weight: torch.Tensor  # ()
    n_shifts: int
    n_rotations: int
    _phase_tables: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    _buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def zeros(
        cls,
        n_classes: int,
        n_shifts: int,
        n_rings: int,
        n_orders: int,
        n_angles: int,
        n_rotations: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> OrderAccumulator:
        """Empty sums (``dtype`` is the real dtype)."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        return cls(
            numerator=torch.zeros(n_classes * n_shifts, n_rings + 1, n_orders, dtype=cdtype, device=device),
            ctf2=torch.zeros(n_classes, n_rings + 1, n_angles // 4 + 1, dtype=cdtype, device=device),
            counts=torch.zeros(n_classes, dtype=dtype, device=device),
            power=torch.zeros(n_rings + 1, dtype=dtype, device=device),
            weight=torch.zeros((), dtype=dtype, device=device),
            n_shifts=n_shifts,
            n_rotations=n_rotations,
        )

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A reusable buffer (the leading dimension may shrink for the last chunk)."""
        buf = self._buffers.get(name)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0] or buf.dtype != dtype:
            buf = torch.empty(shape, dtype=dtype, device=self.numerator.device)
            self._buffers[name] = buf
        return buf[: shape[0]]

    def _rotation_phases(self, rotation: torch.Tensor, n: int, factor: int) -> torch.Tensor:
        """``e^{−i·factor·m·ψ_l}`` for orders ``m < n``, rows picked by ``rotation``."""
        key = (n, factor)
        table = self._phase_tables.get(key)
        if table is None:
            m = torch.arange(n, device=rotation.device, dtype=torch.float64)
            psi = 2.0 * math.pi * torch.arange(self.n_rotations, device=rotation.device, dtype=torch.float64)
            phase = -factor * (psi[:, None] / self.n_rotations) * m[None, :]
            table = torch.polar(torch.ones_like(phase), phase).to(self.numerator.dtype)
            self._phase_tables[key] = table
        return table[rotation]

    def add_power(self, samples: torch.Tensor, weights: torch.Tensor) -> None:
        """Add the data power of particles with total weights ``(B,)`` (their pair weights summed)."""
        power = (samples.real**2 + samples.imag**2).sum(dim=2).to(self.power.dtype)  # (B, N+1)
        self.power += (weights.to(self.power.dtype)[:, None] * power).sum(dim=0)
        self.weight += weights.to(self.weight.dtype).sum()

    def add_pairs(
        self,
        spectra: tuple[torch.Tensor, torch.Tensor],
        samples: torch.Tensor,
        particle: torch.Tensor,
        klass: torch.Tensor,
        shift: torch.Tensor,
        rotation: torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor,
        chunk: int = 512,
    ) -> None:
        """Add (particle, class, pose) pairs (force-max, initialisation).

        Parameters
        ----------
        spectra
            ``data_spectra`` of the chunk's particles.
        samples
            ``(B, N + 1, Q)`` their polar samples (for the data power).
        particle, klass, shift, rotation
            ``(P,)`` int64: each pair's particle, class, shift index and rotation index.
        weight, scale
            ``(P,)`` posterior weight and per-particle scale of each pair.
        chunk
            Pairs handled at a time.
        """
        cx, c2 = spectra
        rdtype = self.power.dtype
        for start in range(0, len(particle), chunk):
            sl = slice(start, start + chunk)
            p, rot = particle[sl], rotation[sl]
            wa = (weight[sl] * scale[sl]).to(rdtype)[:, None, None]
            wa2 = (weight[sl] * scale[sl] ** 2).to(rdtype)[:, None, None]
            # Gathers and index_adds on real views into reused buffers: complex index ops and
            # fresh large allocations are slow on CPUs.
            values = self._buffer("num", (len(p), *cx.shape[1:]), cx.dtype)
            torch.index_select(cx, 0, p, out=values)
            values.mul_(self._rotation_phases(rot, cx.shape[-1], 1)[:, None, :] * wa)
            torch.view_as_real(self.numerator).index_add_(
                0, klass[sl] * self.n_shifts + shift[sl], torch.view_as_real(values)
            )
            values2 = self._buffer("c2", (len(p), *c2.shape[1:]), c2.dtype)
            torch.index_select(c2, 0, p, out=values2)
            values2.mul_(self._rotation_phases(rot, c2.shape[-1], 2)[:, None, :] * wa2)
            torch.view_as_real(self.ctf2).index_add_(0, klass[sl], torch.view_as_real(values2))
        self.counts.index_add_(0, klass, weight.to(rdtype))
        per_particle = torch.zeros(samples.shape[0], dtype=rdtype, device=samples.device)
        per_particle.index_add_(0, particle, weight.to(rdtype))
        self.add_power(samples, per_particle)

    def add_posteriors(
        self, spectra: tuple[torch.Tensor, torch.Tensor], samples: torch.Tensor, posteriors: Posteriors
    ) -> None:
        """Add a chunk with full sample posteriors (marginalisation), as GEMMs over the particles."""
        post = posteriors.sample_posterior
        if post is None:
            raise ValueError("a marginalising M-step needs the sample posteriors")
        alpha = posteriors.best_scale.gather(0, posteriors.class_weights.argmax(dim=0)[None])[0]  # (B,)
        self.add_dense(spectra, samples, post, alpha)

    def add_dense(
        self,
        spectra: tuple[torch.Tensor, torch.Tensor],
        samples: torch.Tensor,
        post: torch.Tensor,
        alpha: torch.Tensor,
        shift_rows: torch.Tensor | None = None,
    ) -> None:
        """Add posteriors over a regular grid of poses, as GEMMs over the particles.

        Parameters
        ----------
        spectra, samples
            ``data_spectra`` and polar samples of the ``B`` particles.
        post
            ``(R', T', K, B)`` posterior of each (rotation, shift, class) sample, summing to one per
            particle. The rotations are ``ψ_l = 2π·l/R'``: every rotation (``R' = R``) or every
            ``R/R'``-th one.
        alpha
            ``(B,)`` per-particle scale.
        shift_rows
            ``(T',)`` int64 indices of the ``T'`` shifts among the accumulator's (default: all).
        """
        cx, c2 = spectra
        r_count, t, k, b = post.shape
        # γ̂_j = Σ_l γ_l e^{−2πi j l/R'} for j = 0..R'−1 (torch's FFT sign); order m needs γ̂_{m mod R'}.
        # Rows of U are (class, shift). Orders sharing a residue j share γ̂_j, so one batched GEMM
        # over j takes every full run of R' orders at once, and a second one the remaining orders:
        # the (orders × KT × B) tensor of γ̂ picked per order is never formed.
        by_class = post.to(self.power.dtype).permute(0, 2, 1, 3).reshape(r_count, k * t, b)
        spec = torch.fft.fft(by_class, dim=0).to(self.numerator.dtype)  # (R', KT', B)
        n_orders, n1 = cx.shape[-1], cx.shape[1]
        y = (cx * alpha.to(cx.dtype)[:, None, None]).to(spec.dtype)  # (B, N+1, M+1)
        n_full, rest = divmod(n_orders, r_count)
        # With shift_rows the products are written into an uninitialised buffer (then index-added);
        # without, added to the numerator in place. Either way through strided views of the
        # products, with no permuted copy in between.
        write = shift_rows is not None
        if write:
            target = torch.empty(k * t, n1, n_orders, dtype=self.numerator.dtype, device=self.numerator.device)
        else:
            target = self.numerator
        if n_full:
            full = y[..., : n_full * r_count].reshape(b, n1, n_full, r_count).permute(3, 0, 2, 1)
            out = torch.bmm(spec, full.reshape(r_count, b, n_full * n1)).reshape(r_count, k * t, n_full, n1)
            into = target[..., : n_full * r_count].view(k * t, n1, n_full, r_count)
            (into.copy_ if write else into.add_)(out.permute(1, 3, 2, 0))
        if rest:
            tail = y[..., n_full * r_count :].permute(2, 0, 1)  # (rest, B, N+1): orders n_full·R' + j
            into = target[..., n_full * r_count :]
            (into.copy_ if write else into.add_)(torch.bmm(spec[:rest], tail).permute(1, 2, 0))
        if shift_rows is not None:
            rows = (torch.arange(k, device=post.device)[:, None] * self.n_shifts + shift_rows[None, :]).flatten()
            torch.view_as_real(self.numerator).index_add_(0, rows, torch.view_as_real(target))
        m2 = torch.arange(c2.shape[-1], device=post.device)
        spec2 = torch.fft.fft(post.to(self.power.dtype).sum(dim=1), dim=0).to(self.numerator.dtype)  # (R', K, B)
        gamma2 = spec2[(2 * m2) % r_count]  # (Q/4+1, K, B)
        y2 = (c2 * (alpha * alpha).to(c2.dtype)[:, None, None]).permute(2, 0, 1)
        self.ctf2 += torch.bmm(gamma2, y2).permute(1, 2, 0)
        self.counts += post.sum(dim=(0, 1, 3)).to(self.counts.dtype)
        self.add_power(samples, torch.ones(b, dtype=self.power.dtype, device=samples.device))

    def add_samples(
        self,
        spectra: tuple[torch.Tensor, torch.Tensor],
        samples: torch.Tensor,
        particle: torch.Tensor,
        klass: torch.Tensor,
        shift: torch.Tensor,
        rotation: torch.Tensor,
        weight: torch.Tensor,
        alpha: torch.Tensor,
        chunk: int = 1024,
    ) -> None:
        """Add a sparse posterior: individual (particle, class, shift, rotation) samples.

        Samples of one (class, shift, particle) share the particle's spectrum, so their rotations
        are summed into one weight per order first, ``W(m) = Σ_l w·α·e^{−i·m·ψ_l}``; the ``C²``
        weights likewise per (class, particle). Each particle's weights must sum to one.

        Parameters
        ----------
        spectra, samples
            ``data_spectra`` and polar samples of the chunk's ``B`` particles.
        particle, klass, shift, rotation
            ``(P,)`` int64 sample indices (shift and rotation on the accumulator's grids).
        weight
            ``(P,)`` posterior of each sample.
        alpha
            ``(B,)`` per-particle scale.
        chunk
            (class, shift, particle) triples handled at a time.
        """
        cx, c2 = spectra
        b = samples.shape[0]
        rdtype = self.power.dtype
        device = self.numerator.device
        a = alpha.to(rdtype)[particle]
        triple, where = torch.unique((klass * self.n_shifts + shift) * b + particle, return_inverse=True)
        phase = self._rotation_phases(rotation, cx.shape[-1], 1) * (weight.to(rdtype) * a)[:, None]  # (P, M+1)
        w_order = torch.zeros(len(triple), cx.shape[-1], dtype=cx.dtype, device=device)
        torch.view_as_real(w_order).index_add_(0, where, torch.view_as_real(phase))
        row = torch.div(triple, b, rounding_mode="floor")
        owner = triple % b
        for start in range(0, len(triple), chunk):
            sl = slice(start, start + chunk)
            values = self._buffer("num", (len(owner[sl]), *cx.shape[1:]), cx.dtype)
            torch.index_select(cx, 0, owner[sl], out=values)
            values.mul_(w_order[sl][:, None, :])
            torch.view_as_real(self.numerator).index_add_(0, row[sl], torch.view_as_real(values))
        pair, where2 = torch.unique(klass * b + particle, return_inverse=True)
        phase2 = self._rotation_phases(rotation, c2.shape[-1], 2) * (weight.to(rdtype) * a * a)[:, None]
        w2 = torch.zeros(len(pair), c2.shape[-1], dtype=c2.dtype, device=device)
        torch.view_as_real(w2).index_add_(0, where2, torch.view_as_real(phase2))
        values2 = c2.index_select(0, pair % b) * w2[:, None, :]
        torch.view_as_real(self.ctf2).index_add_(
            0, torch.div(pair, b, rounding_mode="floor"), torch.view_as_real(values2)
        )
        self.counts.index_add_(0, klass, weight.to(rdtype))
        per_particle = torch.zeros(b, dtype=rdtype, device=device).index_add_(0, particle, weight.to(rdtype))
        self.add_power(samples, per_particle)

    def to_stats(self, phases: torch.Tensor, n_angles: int) -> SufficientStats:
        """Class-frame statistics: ``B_k = Σ_t U_kt·conj(phase_t)`` in polar space, ``D_k``.

        Parameters
        ----------
        phases
            ``(T, N + 1, Q)`` class-frame shift phase ramps.
        n_angles
            ``Q``.
        """
        kt, n1, n_orders = self.numerator.shape
        t = self.n_shifts
        k = kt // t
        mm = torch.arange(1, n_orders, device=self.numerator.device)
        mm = mm[mm < n_angles - mm]
        sign = torch.where(mm % 2 == 0, 1.0, -1.0).to(self.power.dtype)
        numerator = torch.empty(k, n1, n_angles, dtype=self.numerator.dtype, device=self.numerator.device)
        conj_phases = phases.to(self.numerator.dtype)[None].conj()
        per = max(1, (16 * 2**20) // (t * n1 * n_angles * 8))  # classes at a time: ~16 MB temporaries
        for start in range(0, k, per):
            stop = min(k, start + per)
            block = self.numerator[start * t : stop * t]
            full = torch.zeros(block.shape[0], n1, n_angles, dtype=block.dtype, device=block.device)
            full[..., :n_orders] = block
            full[..., n_angles - mm] = block[..., mm].conj() * sign  # X(θ + π) = conj X(θ)
            per_shift = torch.fft.ifft(full, dim=-1).reshape(stop - start, t, n1, n_angles)
            numerator[start:stop] = (per_shift * conj_phases).sum(dim=1)
        half = torch.fft.irfft(self.ctf2, n=n_angles // 2, dim=-1)
        ctf2 = torch.cat([half, half], dim=-1).to(self.power.dtype)
        return SufficientStats(numerator, ctf2, self.counts.clone(), self.power.clone(), self.weight.clone())


def online_update(
    running: SufficientStats, variance: float, batch: SufficientStats, step: float
) -> tuple[SufficientStats, float]:
    """One stochastic-approximation step on per-particle statistics.

    Parameters
    ----------
    running
        Current per-particle statistics.
    variance
        Current ``v = 1/n_eff`` (``inf`` before the first update).
    batch
        Sums over the batch (``batch.weight`` particles).
    step
        η in (0, 1]; 1 replaces the statistics.

    Returns
    -------
    tuple
        New per-particle statistics and ``v``.
    """
    n_batch = float(batch.weight)
    mean = batch.normalised()
    if step >= 1.0 or not variance < float("inf"):
        return mean, 1.0 / max(n_batch, 1e-12)
    new = running.scaled(1.0 - step) + mean.scaled(step)
    new = replace(new, weight=torch.ones_like(new.weight))
    return new, (1.0 - step) ** 2 * variance + step**2 / max(n_batch, 1e-12)


def ring_power(polar: torch.Tensor) -> torch.Tensor:
    """Mean power per sample of each ring, ``(…, N + 1)`` from ``(…, N + 1, Q)``."""
    return (polar.real**2 + polar.imag**2).mean(dim=-1) if polar.is_complex() else (polar**2).mean(dim=-1)


def wiener_average(
    stats: SufficientStats,
    sigma2: torch.Tensor,
    tau2: torch.Tensor | None,
    n_effective: float,
    tau2_fudge: float = TAU2_FUDGE,
) -> torch.Tensor:
    """CTF-corrected, Wiener-regularised class averages in polar form.

    Parameters
    ----------
    stats
        Per-particle statistics.
    sigma2
        ``(N + 1,)`` noise power per sample.
    tau2
        ``(K, N + 1)`` signal power per sample of the current references; ``None`` regularises
        with 1 % of the mean ``D_k`` of each ring instead (used to start).
    n_effective
        Particles the statistics stand for.
    tau2_fudge
        RELION's ``T``.

    Returns
    -------
    torch.Tensor
        ``(K, N + 1, Q)`` complex ``A_k``.
    """
    d = stats.ctf2
    if tau2 is None:
        reg = 0.01 * d.mean(dim=-1, keepdim=True) + 1e-12
    else:
        reg = sigma2[None, :, None] / (n_effective * tau2_fudge * tau2.clamp(min=1e-30)[:, :, None])
    return stats.numerator / (d + reg)


def spectral_snr(stats: SufficientStats, sigma2: torch.Tensor, tau2: torch.Tensor, n_effective: float) -> torch.Tensor:
    """RELION's per-ring ``τ²·Σ C²/σ²`` ("data vs prior") of each class, ``(K, N + 1)``."""
    return tau2 * stats.ctf2.mean(dim=-1) * n_effective / sigma2.clamp(min=1e-30)[None]


def resolution_from_ssnr(ssnr: torch.Tensor, box_angstrom: float) -> torch.Tensor:
    """Resolution (Å) of each class: the ring before the first one (≥ 1) whose SSNR is below 1.

    Parameters
    ----------
    ssnr
        ``(K, N + 1)`` from :func:`spectral_snr`.
    box_angstrom
        Internal box side in Å (ring ``r`` is ``box_angstrom / r``).

    Returns
    -------
    torch.Tensor
        ``(K,)`` float64 on the CPU, ``inf`` where not even ring 1 passes.
    """
    values = ssnr.to(torch.float64).cpu()
    n_rings = values.shape[1] - 1
    out = torch.full((values.shape[0],), math.inf, dtype=torch.float64)
    for k in range(values.shape[0]):
        below = torch.nonzero(values[k, 1:] < 1.0).flatten()
        ring = int(below[0]) if len(below) else n_rings
        if ring >= 1:
            out[k] = box_angstrom / ring
    return out


__all__ = [
    "TAU2_FUDGE",
    "OrderAccumulator",
    "SufficientStats",
    "data_spectra",
    "hard_pairs",
    "online_update",
    "resolution_from_ssnr",
    "ring_power",
    "spectral_snr",
    "wiener_average",
]
