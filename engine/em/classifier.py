"""The stateful online-EM 2D classifier: class state, E-step, online M-step, checkpoints.

``Classifier`` owns the class statistics and references and delegates the math to the pure
modules of ``otf2d.engine.em``. One ``step(batch)`` is one online-EM iteration: E-step of the batch
against the current classes, online update of the sufficient statistics (step size
``otf2d.engine.em.schedule.step_size``), M-step (Wiener averages, constraints, noise, priors). Its cost
depends on the batch, never on how many particles came before, so the streaming engine calls it on
each arriving batch; ``assign(batch)`` re-judges particles without changing the classes.

Example
-------
>>> clf = Classifier(Class2DParams(n_classes=10), box=128, pixel_size_angstrom=1.3)
>>> clf.initialise(first_batch)
>>> assignments = clf.step(batch)          # E + online M
>>> averages = clf.class_averages()        # (K, D, D) real space, internal pixels
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from otf2d.core.config import Class2DParams
from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot, OpticsGroup, ParticleAssignments
from otf2d.engine.em.assignments import Assignments, assignments_from_posteriors
from otf2d.engine.em.batch import BatchLike, TensorBatch
from otf2d.engine.em.constraints import upright_rotation
from otf2d.engine.em.ctf import CtfTensors
from otf2d.engine.em.estep import (
    MAX_PAIRS_PER_PARTICLE,
    PAIR_THRESHOLD,
    Posteriors,
    ReferenceBank,
    build_reference_bank,
    force_max_posteriors,
    marginal_posteriors,
    ring_weights,
    score_chunk,
    score_products,
)
from otf2d.engine.em.fold import make_fold_plan
from otf2d.engine.em.geometry import Geometry, make_geometry
from otf2d.engine.em.mstep import (
    OrderAccumulator,
    SufficientStats,
    data_spectra,
    hard_pairs,
    online_update,
    resolution_from_ssnr,
    ring_power,
    spectral_snr,
)
from otf2d.engine.em.noise import unaligned_noise
from otf2d.engine.em.polar import PolarGrid, band_limit, image_to_polar, rotate_polar
from otf2d.engine.em.prepare import ParticlePreparer
from otf2d.engine.em.preprocess import radius_map, soft_circular_mask
from otf2d.engine.em.references import ClassMasks, apply_constraints, build_references
from otf2d.engine.em.reseed import reseed_empty_classes
from otf2d.engine.em.schedule import posterior_temperature, step_size
from otf2d.engine.em.significant import SampleWeights, adaptive_posteriors, make_coarse_grid
from otf2d.engine.em.state import ClassifierState, pack_state, unpack_state

#: Each class starts from one particle low-passed to this resolution (Å): see ``Classifier.initialise``.
INIT_RESOLUTION_ANGSTROM = 30.0
#: Classes whose prior falls below this fraction of 1/K are reseeded during online EM.
RESEED_FRACTION = 0.1
#: Relative amplitude of the perturbation that separates the two halves of a split class.
RESEED_PERTURBATION = 0.2
#: A class is turned upright only if its principal standard deviations differ by this ratio.
FILAMENT_ELONGATION = 1.2
#: Bytes of score tensor per chunk of particles (sets the chunk size). 192 MiB gives 160 particles a chunk
#: on the realistic session (K = 20, 108 rotations, 145 shifts): online-EM steps 1.45x faster than 40 (48 MiB),
#: from fewer, larger GEMMs and M-step accumulations.
CHUNK_BYTES = 192 * 2**20

_PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MaximiseReport:
    """What an M-step changed: per-class shift applied by re-centring (px, ``(K, 2)``), reseeded classes."""

    recentre_shifts: torch.Tensor
    reseeded: list[int]


class Classifier:
    """Online-EM 2D classification state (see the module docstring).

    Parameters
    ----------
    params
        cryoSPARC-style parameters (``otf2d.core.config.Class2DParams``).
    box
        Side of the input particles (px, even).
    pixel_size_angstrom
        Pixel size of the input particles (Å).
    device
        Where the state and the math live.
    dtype
        Real working dtype (float32, or float64 for validation).
    chunk_size
        Particles scored at a time; ``None`` picks it from :data:`CHUNK_BYTES`.
    native_low_precision
        With ``params.precision`` bf16/fp16: run the GEMMs natively in that dtype (``True``) or
        round their inputs and multiply in float32 (``False``, the default on CPUs, which have
        no fast bf16 kernels; the results equal a tensor-core GEMM with float32 accumulation).
    """

    def __init__(
        self,
        params: Class2DParams,
        box: int,
        pixel_size_angstrom: float,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        chunk_size: int | None = None,
        native_low_precision: bool | None = None,
    ) -> None:
        self.params = params
        self.geometry: Geometry = make_geometry(params, box, pixel_size_angstrom)
        self.device = torch.device(device)
        self.dtype = dtype
        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        g = self.geometry
        self.grid = PolarGrid.from_geometry(g, self.device)
        self.shifts = torch.tensor(g.shift_grid(), dtype=torch.float64, device=self.device)
        self.phases = self.grid.shift_phases(self.shifts, self.complex_dtype)
        self.zero_shift = int(torch.argmin(self.shifts.norm(dim=1)))
        self.window = soft_circular_mask(g.internal_box, g.mask_inner_radius, g.mask_outer_radius, self.device, dtype)
        edge = max(g.mask_outer_radius - g.mask_inner_radius, 1.0)
        solvent = soft_circular_mask(
            g.internal_box, max(g.mask_inner_radius - edge, 0.0), g.mask_inner_radius, self.device, dtype
        )
        background = radius_map(g.internal_box, self.device) > min(g.mask_inner_radius, g.internal_box / 2 - 2)
        self.masks = ClassMasks(self.window, solvent, background)
        orders = g.ring_orders()
        self.cross_plan = make_fold_plan(
            orders, g.align_ring_min, g.align_ring_max, g.n_angles, g.n_rotations, self.device, dtype
        )
        self.norm_plan = make_fold_plan(
            [g.n_angles // 2] * (g.n_rings + 1),
            g.align_ring_min,
            g.align_ring_max,
            g.n_angles,
            g.n_rotations,
            self.device,
            dtype,
        )
        # Statistics keep every angular order (the CTF widens the band of C·X beyond the class's).
        self.n_orders = g.n_angles // 2 + 1
        self.preparer = ParticlePreparer(g, self.grid, self.window, self.device, dtype)
        self.gemm_dtype = _PRECISIONS[params.precision]
        self.native_low_precision = self.device.type == "cuda" if native_low_precision is None else native_low_precision
        if chunk_size is None:
            per_particle = 4 * g.n_rotations * params.n_classes * len(self.shifts)
            chunk_size = int(min(256, max(4, CHUNK_BYTES // per_particle)))
        self.chunk_size = chunk_size
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(params.seed))
        self.coarse_grid = make_coarse_grid(self.shifts, g.shift_step, self.cross_plan)
        #: Marginalise over every sample instead of the significant ones (the exhaustive reference).
        self.exhaustive_marginalisation = False
        # State
        self.stats: SufficientStats | None = None
        self.variance = math.inf
        self.n_updates = 0
        self.iteration = 0
        self.sigma2: torch.Tensor | None = None
        self._references: torch.Tensor | None = None  # (K, N+1, Q) complex, band-limited polar
        self._references_version = 0
        self.images: torch.Tensor | None = None  # (K, D, D) real, after constraints
        self.tau2: torch.Tensor | None = None  # (K, N+1)
        self._bank: tuple[tuple[int, torch.dtype | None], ReferenceBank] | None = None

    # ------------------------------------------------------------------ properties
    @property
    def references(self) -> torch.Tensor | None:
        """``(K, N + 1, Q)`` complex band-limited polar references of the next E-step."""
        return self._references

    @references.setter
    def references(self, value: torch.Tensor | None) -> None:
        self._references = value
        self._references_version += 1

    @property
    def n_classes(self) -> int:
        """Number of classes ``K``."""
        return int(self.params.n_classes)

    @property
    def initialised(self) -> bool:
        """Whether references exist."""
        return self.references is not None

    @property
    def force_max(self) -> bool:
        """Maximise over poses (True) or marginalise (False)."""
        return bool(self.params.force_max)

    @property
    def n_effective(self) -> float:
        """Effective number of particles the statistics stand for."""
        return 1.0 / self.variance if self.variance > 0 else math.inf

    @property
    def scale_per_particle(self) -> bool:
        """Whether this iteration's E-step fits a scale per particle: ``per_particle_scale``, or one of
        the first ``per_particle_scale_iterations`` online-EM iterations (never a final full pass)."""
        p = self.params
        return p.per_particle_scale or self.iteration < min(p.per_particle_scale_iterations, p.online_em_iterations)

    def temperature(self, iteration: int | None = None) -> float:
        """ICUF posterior temperature at ``iteration`` (default: the current one)."""
        p = self.params
        it = self.iteration if iteration is None else iteration
        return posterior_temperature(
            it, p.initial_uncertainty_factor, p.noise_anneal_start_iteration, p.noise_anneal_iterations
        )

    def class_priors(self) -> torch.Tensor:
        """``π_k`` ``(K,)`` from the statistics (uniform before any)."""
        if self.stats is None:
            return torch.full((self.n_classes,), 1.0 / self.n_classes, dtype=self.dtype, device=self.device)
        counts = self.stats.counts.clamp(min=0.0)
        total = counts.sum()
        if float(total) <= 0:
            return torch.full_like(counts, 1.0 / self.n_classes)
        return counts / total

    # ------------------------------------------------------------------ preprocessing
    def prepare(self, images: torch.Tensor, ctf: CtfTensors) -> tuple[torch.Tensor, torch.Tensor]:
        """Polar samples ``(n, N + 1, Q)`` and CTF ``(n, N + 1, Q)`` of particles (``otf2d.engine.em.prepare``)."""
        return self.preparer.prepare(images, ctf)

    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised, Fourier-cropped, masked particle images ``(n, D, D)`` (internal pixels)."""
        return self.preparer.images(images)

    def polar_ctf(self, ctf: CtfTensors) -> torch.Tensor:
        """The CTF of each particle at the polar samples, ``(n, N + 1, Q)`` real."""
        return self.preparer.ctf(ctf)

    def _chunks(self, batch: BatchLike) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor]]:
        return self.preparer.chunks(batch, self.chunk_size)

    # ------------------------------------------------------------------ initialisation
    def initialise(self, batch: BatchLike, *, from_subsets: bool = False) -> None:
        """Start the classes from ``batch`` (seeded by ``params.seed``).

        By default class ``k`` starts from one particle of the batch (``K`` distinct particles
        drawn at random), CTF-corrected and low-passed to :data:`INIT_RESOLUTION_ANGSTROM`: ``K``
        distinct views to start from (junk particles, drawn at the batch's junk fraction, start
        junk classes). With ``from_subsets`` each particle goes to class ``perm(i) mod K`` at a
        random rotation and no shift and the class is the CTF-corrected average of its
        particles: RELION's start, and otf2d's before. At low SNR those averages are all the same
        rotationally blurred disc, so the first posteriors are flat, the classes stay alike and
        the first class to lead takes the particles: on the realistic session (SNR 0.05, K = 20,
        ``benchmarks/realistic.py``) two classes held 83 % of the particles and 13 were empty
        images, where single-particle starts kept 12 good classes and none empty.

        The initial noise is, either way, the power of the batch's particles minus the power of
        their mean, per ring.
        """
        n = len(batch)
        if n < 2:
            raise InputError(None, "initialisation needs at least 2 particles")
        k = self.n_classes
        g = self.geometry
        perm = torch.randperm(n, generator=self.generator)
        klass_all = torch.empty(n, dtype=torch.int64)
        klass_all[perm] = torch.arange(n) % k
        rot_all = torch.randint(0, g.n_rotations, (n,), generator=self.generator)
        # one particle per class (the first K of the permutation); the others weigh nothing
        weight_all = torch.ones(n, dtype=self.dtype) if from_subsets else (perm.argsort() < k).to(self.dtype)
        acc = self.new_accumulator()
        power_sum = torch.zeros(g.n_rings + 1, dtype=torch.float64, device=self.device)
        mean_sum = torch.zeros(g.n_rings + 1, g.n_angles, dtype=torch.complex128, device=self.device)
        for sl, samples, ctf in self._chunks(batch):
            b = samples.shape[0]
            power_sum += (samples.real**2 + samples.imag**2).to(torch.float64).sum(dim=(0, 2))
            mean_sum += samples.to(torch.complex128).sum(dim=0)
            acc.add_pairs(
                data_spectra(samples, ctf, acc.numerator.shape[-1]),
                samples,
                torch.arange(b, device=self.device),
                klass_all[sl].to(self.device),
                torch.full((b,), self.zero_shift, device=self.device, dtype=torch.int64),
                rot_all[sl].to(self.device),
                weight_all[sl].to(self.device),
                torch.ones(b, dtype=self.dtype, device=self.device),
            )
        stats = acc.to_stats(self.phases, g.n_angles)
        unaligned = unaligned_noise(power_sum, mean_sum, n, g.n_angles).to(self.dtype)
        if not from_subsets:
            ring = int(g.internal_box * g.internal_pixel_angstrom / INIT_RESOLUTION_ANGSTROM)
            numerator = stats.numerator.clone()
            numerator[:, ring + 1 :] = 0
            stats = dataclasses.replace(stats, numerator=numerator)
        self.sigma2 = unaligned
        self.stats = stats.normalised()
        self.variance = 1.0 / float(weight_all.sum())
        self.tau2 = None
        self._rebuild(recenter=False)
        self._rebuild(recenter=False)  # second pass: Wiener with τ² of the first
        if not from_subsets:
            self.sigma2 = unaligned  # the seeds' residuals against themselves say nothing of the noise

    def estimate_noise(self, batch: BatchLike) -> torch.Tensor:
        """Set (and return) the noise power from unaligned particles: their power minus that of their mean."""
        g = self.geometry
        power_sum = torch.zeros(g.n_rings + 1, dtype=torch.float64, device=self.device)
        mean_sum = torch.zeros(g.n_rings + 1, g.n_angles, dtype=torch.complex128, device=self.device)
        for _, samples, _ in self._chunks(batch):
            power_sum += (samples.real**2 + samples.imag**2).to(torch.float64).sum(dim=(0, 2))
            mean_sum += samples.to(torch.complex128).sum(dim=0)
        self.sigma2 = unaligned_noise(power_sum, mean_sum, len(batch), g.n_angles).to(self.dtype)
        return self.sigma2

    def set_class_images(self, images: torch.Tensor) -> None:
        """Use given images as the class references (e.g. from an earlier run), as they are.

        Parameters
        ----------
        images
            ``(K, D, D)`` real images at the internal box and pixel size, positive density.
            The noise must be set too (:meth:`estimate_noise`) before an E-step; statistics and
            priors start empty (uniform priors) until the first update.
        """
        d = self.geometry.internal_box
        if tuple(images.shape) != (self.n_classes, d, d):
            raise InputError(None, f"class images must be ({self.n_classes}, {d}, {d}), got {tuple(images.shape)}")
        imgs = images.to(device=self.device, dtype=self.dtype)
        self.images = imgs
        self.references = band_limit(image_to_polar(imgs, self.grid), self.grid).to(self.complex_dtype)
        self.tau2 = ring_power(self.references).to(self.dtype)

    # ------------------------------------------------------------------ E-step
    def _log_prior(self, dtype: torch.dtype) -> torch.Tensor:
        return torch.log(self.class_priors().clamp(min=1e-6 / self.n_classes)).to(dtype)

    def _posteriors(self, scores: Any, temperature: float) -> Posteriors:
        log_prior = self._log_prior(scores.norm.dtype)
        if self.force_max:
            return force_max_posteriors(scores, log_prior, temperature, self.scale_per_particle)
        return marginal_posteriors(scores, log_prior, temperature, self.scale_per_particle)

    def _assignments(self, post: Posteriors) -> Assignments:
        g = self.geometry
        return assignments_from_posteriors(post, self.shifts, g.rotation_step_degrees, g.internal_pixel_angstrom)

    def expect(
        self,
        batch: BatchLike,
        *,
        accumulate: bool = True,
        temperature: float | None = None,
        refine_poses: bool = True,
    ) -> tuple[Assignments, SufficientStats | None]:
        """E-step of a batch against the current classes.

        Parameters
        ----------
        batch
            Particles (a ``ParticleBatch`` or ``TensorBatch``) of the classifier's box and pixel size.
        accumulate
            Also return the batch's sufficient statistics (sums, not yet folded into the state).
        temperature
            Posterior temperature; default the ICUF law at the current iteration.

        Returns
        -------
        tuple
            Assignments of every particle, and the statistics (``None`` unless ``accumulate``).
        """
        acc = self.new_accumulator() if accumulate else None
        assignments = self.accumulate(batch, acc, temperature=temperature, refine_poses=refine_poses)
        return assignments, None if acc is None else self.statistics(acc)

    def new_accumulator(self) -> OrderAccumulator:
        """Empty batch sums; fill with :meth:`accumulate`, finish with :meth:`statistics`.

        One accumulator can gather several batches (a full pass read in chunks) and be turned
        into statistics once, which is cheaper than one ``expect`` per chunk.
        """
        g = self.geometry
        return OrderAccumulator.zeros(
            self.n_classes,
            len(self.shifts),
            g.n_rings,
            self.n_orders,
            g.n_angles,
            g.n_rotations,
            self.device,
            self.dtype,
        )

    def statistics(self, accumulator: OrderAccumulator) -> SufficientStats:
        """The class-frame sufficient statistics (sums) of an accumulator."""
        return accumulator.to_stats(self.phases, self.geometry.n_angles)

    def accumulate(
        self,
        batch: BatchLike,
        accumulator: OrderAccumulator | None,
        *,
        temperature: float | None = None,
        refine_poses: bool = True,
    ) -> Assignments:
        """E-step of ``batch``, adding its sums to ``accumulator`` (none: assignments only).

        ``refine_poses=False`` skips the fine-grid pose refinement of adaptive marginalisation
        (:func:`otf2d.engine.em.significant.adaptive_posteriors`) for a caller that discards the poses.
        """
        if self.references is None or self.sigma2 is None:
            raise InputError(None, "the classifier has no classes yet: call initialise() first")
        g = self.geometry
        temp = self.temperature() if temperature is None else temperature
        bank = self._reference_bank()
        scale = self.scale_per_particle
        weights = ring_weights(self.grid, self.sigma2, g.align_ring_min, g.align_ring_max)
        parts: list[Assignments] = []
        for _, samples, ctf in self._chunks(batch):
            spectra = data_spectra(samples, ctf, self.n_orders)
            if not self.force_max and not self.exhaustive_marginalisation:
                scores = score_products(
                    bank, spectra[0], samples, ctf, weights, self.gemm_dtype, self.native_low_precision
                )
                if scores.products is None:
                    raise RuntimeError("score_products returned no GEMM products")
                post, sample_weights = adaptive_posteriors(
                    scores.products,
                    scores.norm,
                    scores.power,
                    self.coarse_grid,
                    self._log_prior(scores.norm.dtype),
                    temp,
                    scale,
                    refine_poses=refine_poses or scale,
                )
                parts.append(self._assignments(post))
                if accumulator is not None:
                    self._add_adaptive(accumulator, spectra, samples, sample_weights)
                continue
            scores = score_chunk(
                bank,
                spectra[0],
                samples,
                ctf,
                weights,
                self.gemm_dtype,
                self.native_low_precision,
                keep_all_shifts=not self.force_max,
            )
            post = self._posteriors(scores, temp)
            parts.append(self._assignments(post))
            if accumulator is None:
                continue
            if self.force_max:
                accumulator.add_pairs(spectra, samples, *hard_pairs(post, PAIR_THRESHOLD, MAX_PAIRS_PER_PARTICLE))
            else:
                accumulator.add_posteriors(spectra, samples, post)
        return Assignments.concatenate(parts)

    def _add_adaptive(
        self,
        accumulator: OrderAccumulator,
        spectra: tuple[torch.Tensor, torch.Tensor],
        samples: torch.Tensor,
        weights: SampleWeights,
    ) -> None:
        """M-step sums of an adaptive E-step: coarse posteriors densely, fine samples sparsely."""
        coarse = weights.coarse_particles
        if len(coarse):
            # every particle stayed coarse (early iterations): the chunk's tensors, without copies
            every = len(coarse) == len(samples)
            pick = (lambda x: x) if every else (lambda x: x.index_select(0, coarse))
            accumulator.add_dense(
                (pick(spectra[0]), pick(spectra[1])),
                pick(samples),
                weights.coarse_posterior,
                pick(weights.alpha),
                shift_rows=self.coarse_grid.coarse_shifts,
            )
        if len(weights.particle):
            accumulator.add_samples(
                spectra,
                samples,
                weights.particle,
                weights.klass,
                weights.shift,
                weights.rotation,
                weights.weight,
                weights.alpha,
            )

    def _reference_bank(self) -> ReferenceBank:
        """The shifted references laid out for the GEMMs, rebuilt only when the classes changed."""
        if self.references is None:
            raise InputError(None, "the classifier has no classes yet: call initialise() first")
        key = (self._references_version, self.gemm_dtype)
        if self._bank is None or self._bank[0] != key:
            previous = None if self._bank is None else self._bank[1]
            self._bank = None
            bank = build_reference_bank(
                self.references, self.phases, self.cross_plan, self.norm_plan, self.gemm_dtype, reuse=previous
            )
            self._bank = (key, bank)
        return self._bank[1]

    def assign(self, batch: BatchLike) -> Assignments:
        """E-step only (final pass, re-judging): the classes do not change."""
        return self.expect(batch, accumulate=False)[0]

    # ------------------------------------------------------------------ M-step
    def update(self, batch_stats: SufficientStats, step: float | None = None) -> float:
        """Fold a batch's statistics into the state; returns the step size η used.

        ``step`` defaults to the Cappé–Moulines law of the update count; 1 replaces the
        statistics (a full EM pass).
        """
        if self.stats is None:
            self.stats = batch_stats.normalised()
            self.variance = 1.0 / max(float(batch_stats.weight), 1e-12)
            self.n_updates += 1
            return 1.0
        eta = step_size(self.n_updates + 1) if step is None else float(step)
        self.stats, self.variance = online_update(self.stats, self.variance, batch_stats, eta)
        self.n_updates += 1
        return eta

    def maximise(self, *, reseed: bool = False, recenter: bool | None = None) -> MaximiseReport:
        """M-step from the current statistics: averages, constraints, noise, priors.

        Parameters
        ----------
        reseed
            Replace near-empty classes (prior below ``RESEED_FRACTION / K``) by a split of the
            largest classes: both halves keep half of the donor's statistics, with a random
            perturbation of ±``RESEED_PERTURBATION`` of its amplitude in opposite directions.
        recenter
            Re-centre classes on the centre of mass of their pixels above
            ``recenter_threshold × max`` (default ``params.recenter``); the statistics are shifted
            with them.
        """
        reseeded: list[int] = []
        if reseed and self.stats is not None:
            self.stats, self.tau2, reseeded = reseed_empty_classes(
                self.stats, self.tau2, self.generator, RESEED_FRACTION, RESEED_PERTURBATION
            )
        shifts = self._rebuild(recenter=self.params.recenter if recenter is None else recenter)
        return MaximiseReport(shifts, reseeded)

    def _rebuild(self, *, recenter: bool) -> torch.Tensor:
        """Averages → images → constraints → references, τ², σ²; returns the re-centring shifts."""
        if self.stats is None or self.sigma2 is None:
            raise InputError(None, "the classifier has no statistics yet: call initialise() first")
        out = build_references(
            self.stats,
            self.sigma2,
            self.tau2,
            self.n_effective,
            self.grid,
            self.masks,
            clamp_solvent=self.params.clamp_solvent,
            non_negativity=self.params.non_negativity,
            recenter_threshold=self.params.recenter_threshold if recenter else None,
            max_shift=self.geometry.max_shift,
        )
        self.stats, self.images, self.references = out.stats, out.images, out.references
        self.tau2, self.sigma2 = out.tau2, out.sigma2
        return out.moved

    def apply_constraints(self, images: torch.Tensor) -> torch.Tensor:
        """The real-space constraints on class images (``otf2d.engine.em.references.apply_constraints``)."""
        return apply_constraints(images, self.masks, self.params.clamp_solvent, self.params.non_negativity)

    # ------------------------------------------------------------------ driver-level operations
    def step(self, batch: BatchLike, *, reseed: bool | None = None, refine_poses: bool = True) -> Assignments:
        """One online-EM iteration on ``batch``: E-step, online update, M-step.

        Initialises from ``batch`` first if there are no classes yet. Reseeding defaults to on
        during the first ``online_em_iterations`` iterations. ``refine_poses=False``: the returned
        poses are not refined on the fine grid (see :meth:`accumulate`); the classes are the same.
        """
        if not self.initialised:
            self.initialise(batch)
        assignments, stats = self.expect(batch, refine_poses=refine_poses)
        assert stats is not None
        self.update(stats)
        do_reseed = self.iteration < self.params.online_em_iterations if reseed is None else reseed
        self.maximise(reseed=do_reseed)
        self.iteration += 1
        return assignments

    def permute_classes(self, order: torch.Tensor) -> None:
        """Renumber the classes: new class ``i`` is old class ``order[i]`` (``order`` a permutation of ``0..K-1``).

        Statistics, averages, references and τ² move with their class; nothing else changes.
        """
        if self.stats is None or self.references is None or self.images is None:
            raise InputError(None, "the classifier has no classes yet: call initialise() first")
        order = torch.as_tensor(order, dtype=torch.long).cpu()
        if sorted(order.tolist()) != list(range(self.n_classes)):
            raise ValueError(f"not a permutation of the {self.n_classes} classes: {order.tolist()}")
        on = order.to(self.stats.counts.device)
        self.stats = dataclasses.replace(
            self.stats, numerator=self.stats.numerator[on], ctf2=self.stats.ctf2[on], counts=self.stats.counts[on]
        )
        self.images = self.images[order.to(self.images.device)]
        if self.tau2 is not None:
            self.tau2 = self.tau2[order.to(self.tau2.device)]
        self.references = self.references[order.to(self.references.device)]

    def align_vertically(self) -> torch.Tensor:
        """Turn elongated classes so their long axis is vertical (+y); returns the angles (degrees).

        The long axis comes from the second moments of each class's positive density; a class is
        turned by ``Δ = 90° − axis`` (within ±90°, no polarity) when its principal standard
        deviations differ by at least ``FILAMENT_ELONGATION``. The statistics turn with it. A
        particle assigned before has ``ψ' = ψ + Δ`` (``Assignments.with_psi_offsets``).
        """
        if self.images is None or self.stats is None:
            raise InputError(None, "the classifier has no classes yet: call initialise() first")
        delta = upright_rotation(self.images, FILAMENT_ELONGATION)
        if bool((delta != 0).any()):
            self.stats = dataclasses.replace(
                self.stats,
                numerator=rotate_polar(self.stats.numerator, delta),
                ctf2=rotate_polar(self.stats.ctf2, delta),
            )
            self._rebuild(recenter=False)
        return delta.cpu()

    # ------------------------------------------------------------------ outputs
    def class_averages(self) -> torch.Tensor:
        """``(K, D, D)`` real class images at the internal box and pixel size (after constraints)."""
        if self.images is None:
            raise InputError(None, "the classifier has no classes yet: call initialise() first")
        return self.images.clone()

    def class_resolution_angstrom(self) -> torch.Tensor:
        """Per-class resolution (Å): the first ring where RELION's SSNR ``τ²·ΣC²/σ²`` drops below 1."""
        if self.stats is None or self.tau2 is None or self.sigma2 is None:
            return torch.full((self.n_classes,), math.inf, dtype=torch.float64)
        ssnr = spectral_snr(self.stats, self.sigma2, self.tau2, self.n_effective)
        g = self.geometry
        return resolution_from_ssnr(ssnr, g.internal_box * g.internal_pixel_angstrom)

    def snapshot(
        self,
        particles: ParticleAssignments,
        *,
        iteration: int | None = None,
        optics: list[OpticsGroup] | None = None,
        full_size: bool = True,
    ) -> ClassSnapshot:
        """The classes and ``particles`` as a ``otf2d.core.snapshot.ClassSnapshot`` (see ``otf2d.engine.em.export``)."""
        from otf2d.engine.em.export import build_snapshot

        return build_snapshot(self, particles, iteration=iteration, optics=optics, full_size=full_size)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The whole state as tensors and plain numbers (``otf2d.engine.em.state``)."""
        if self.stats is None or self.references is None or self.images is None or self.sigma2 is None:
            raise InputError(None, "nothing to save: the classifier has no classes yet")
        return pack_state(
            ClassifierState(
                params=dataclasses.asdict(self.params),
                geometry=self.geometry.as_dict(),
                iteration=self.iteration,
                n_updates=self.n_updates,
                variance=self.variance,
                stats=self.stats,
                sigma2=self.sigma2,
                references=self.references,
                images=self.images,
                tau2=self.tau2,
                generator=self.generator.get_state(),
            )
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict` (same parameters and geometry).

        Raises
        ------
        InputError
            If the state is of another version, parameter set or geometry.
        """
        restored = unpack_state(state, self.device)
        if restored.params != dataclasses.asdict(self.params):
            raise InputError(None, "checkpoint was written with other classification parameters")
        if restored.geometry != self.geometry.as_dict():
            raise InputError(None, "checkpoint was written for another box, pixel size or sampling")
        self.iteration, self.n_updates, self.variance = restored.iteration, restored.n_updates, restored.variance
        self.stats, self.sigma2, self.tau2 = restored.stats, restored.sigma2, restored.tau2
        self.references, self.images = restored.references, restored.images
        self.generator.set_state(restored.generator)


__all__ = ["INIT_RESOLUTION_ANGSTROM", "Classifier", "MaximiseReport", "TensorBatch"]
