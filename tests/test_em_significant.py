"""Adaptive (significant-sample) marginalisation against the exhaustive marginalising E-step.

The exhaustive E-step (``otf2d.engine.em.estep.marginal_posteriors``) is the simple reference: the
posterior of every (rotation, shift, class) sample. The adaptive one must give the same posterior
on the samples it keeps, keep the samples that carry the posterior, and report the same poses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from em_synthetic import SyntheticSet, make_particles, random_templates

from otf2d.core.config import Class2DParams
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.em.estep import marginal_posteriors, ring_weights, score_chunk, score_products
from otf2d.engine.em.fold import make_fold_plan
from otf2d.engine.em.mstep import data_spectra
from otf2d.engine.em.significant import CoarseGrid, adaptive_posteriors, make_coarse_grid

BOX, PIXEL, STEP = 32, 3.0, 15.0


@pytest.fixture(scope="module")
def data() -> SyntheticSet:
    rng = np.random.default_rng(5)
    templates = random_templates(4, BOX, rng)
    return make_particles(160, templates, BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=2, noise_std=0.12)


@pytest.fixture(scope="module")
def trained(data: SyntheticSet) -> tuple[Classifier, TensorBatch]:
    params = Class2DParams(
        n_classes=4,
        max_resolution_angstrom=2 * PIXEL,
        in_plane_step_degrees=STEP,
        max_shift_angstrom=2 * PIXEL,
        force_max_over_poses=False,
        per_particle_scale_iterations=0,  # the comparisons below are of the E-step without the scale
        seed=0,
    )
    clf = Classifier(params, BOX, PIXEL)
    batch = TensorBatch.from_particles(data.batch)
    # the state these E-step comparisons were calibrated on: what they compare does not depend on the start
    clf.initialise(batch, from_subsets=True)
    for _ in range(3):
        clf.step(batch)
    return clf, batch


def _chunk_inputs(clf: Classifier, batch: TensorBatch) -> tuple[torch.Tensor, ...]:
    g = clf.geometry
    if clf.sigma2 is None:
        raise RuntimeError("classifier without noise")
    weights = ring_weights(clf.grid, clf.sigma2, g.align_ring_min, g.align_ring_max)
    _, samples, ctf = next(iter(clf._chunks(batch)))
    return weights, samples, ctf


def test_the_coarse_grid_covers_every_fine_sample() -> None:
    shifts = torch.tensor(
        [(x, y) for x in range(-5, 6) for y in range(-5, 6) if x * x + y * y <= 25 + 1e-3], dtype=torch.float64
    )
    plan = make_fold_plan([8] * 9, 1, 8, 120, 60)
    grid: CoarseGrid = make_coarse_grid(shifts, 1.0, plan)
    coarse = shifts[grid.coarse_shifts]
    assert len(shifts) == 81 and len(coarse) == 21
    assert bool((coarse % 2 == 0).all())
    covered = torch.zeros(len(shifts), dtype=torch.bool)
    for row, near in zip(grid.coarse_shifts, grid.neighbours, strict=True):
        near = near[near >= 0]
        assert bool(((shifts[near] - shifts[row]).abs().amax(dim=1) <= 1).all())
        covered[near] = True
    assert bool(covered.all())
    assert grid.rotation_stride == 2 and grid.n_rotations == 60
    assert grid.cell_size == pytest.approx(60 * 81 / (30 * 21))


def test_kept_samples_have_the_exhaustive_posterior(trained: tuple[Classifier, TensorBatch]) -> None:
    clf, batch = trained
    weights, samples, ctf = _chunk_inputs(clf, batch)
    spectrum = data_spectra(samples, ctf, clf.n_orders)[0]
    bank = clf._reference_bank()
    log_prior = torch.log(clf.class_priors().clamp(min=1e-6)).to(torch.float32)
    temperature = 1.3
    full = score_chunk(bank, spectrum, samples, ctf, weights, keep_all_shifts=True)
    exact = marginal_posteriors(full, log_prior, temperature, False)
    post = exact.sample_posterior
    assert post is not None
    prod = score_products(bank, spectrum, samples, ctf, weights)
    assert prod.products is not None
    adaptive, kept = adaptive_posteriors(
        prod.products, prod.norm, prod.power, clf.coarse_grid, log_prior, temperature, False
    )
    n = samples.shape[0]
    assert len(kept.particle) > 0, "no particle was refined on the fine grid"
    # Fine samples: the exhaustive posterior renormalised over the kept samples of each particle.
    ref = post[kept.rotation, kept.shift, kept.klass, kept.particle].double()
    ref /= torch.zeros(n, dtype=torch.float64).index_add_(0, kept.particle, ref)[kept.particle]
    torch.testing.assert_close(kept.weight.double(), ref, rtol=2e-3, atol=1e-6)
    # The kept samples carry the posterior (the exhaustive mass of the refined particles' samples)
    mass = torch.zeros(n, dtype=torch.float64).index_add_(
        0, kept.particle, post[kept.rotation, kept.shift, kept.klass, kept.particle].double()
    )
    refined = torch.unique(kept.particle)
    # (a coarse pass can miss a sharp peak of a second class between its samples, as RELION's can).
    assert float(mass[refined].median()) > 0.995
    assert float((mass[refined] > 0.98).double().mean()) >= 0.95
    # Coarse particles: the exhaustive posterior on the coarse samples, renormalised.
    grid = clf.coarse_grid
    coarse = post[grid.coarse_rotations][:, grid.coarse_shifts][..., kept.coarse_particles].double()
    coarse /= coarse.sum(dim=(0, 1, 2), keepdim=True)
    torch.testing.assert_close(kept.coarse_posterior.double(), coarse, rtol=2e-3, atol=1e-6)
    # Same most probable class and pose as the exhaustive E-step.
    top = exact.class_weights.argmax(dim=0)
    assert float((adaptive.class_weights.argmax(dim=0) == top).double().mean()) >= 0.97
    col = top[None]
    same_pose = (adaptive.best_rotation.gather(0, col) == exact.best_rotation.gather(0, col)) & (
        adaptive.best_shift.gather(0, col) == exact.best_shift.gather(0, col)
    )
    assert float(same_pose.double().mean()) >= 0.95
    gap = (adaptive.class_weights - exact.class_weights).abs().mean()
    assert float(gap) < 0.02, f"class posteriors differ by {float(gap):.3f} on average"


def test_a_flat_posterior_stays_on_the_coarse_grid(trained: tuple[Classifier, TensorBatch]) -> None:
    clf, batch = trained
    weights, samples, ctf = _chunk_inputs(clf, batch)
    spectrum = data_spectra(samples, ctf, clf.n_orders)[0]
    prod = score_products(clf._reference_bank(), spectrum, samples, ctf, weights)
    assert prod.products is not None
    k = clf.n_classes
    log_prior = torch.full((k,), -math.log(k))
    adaptive, kept = adaptive_posteriors(prod.products, prod.norm, prod.power, clf.coarse_grid, log_prior, 1e9, False)
    n = samples.shape[0]
    assert len(kept.coarse_particles) == n and len(kept.particle) == 0
    torch.testing.assert_close(kept.coarse_posterior.sum(dim=(0, 1, 2)), torch.ones(n))
    torch.testing.assert_close(adaptive.class_weights, torch.full((k, n), 1.0 / k), atol=1e-4, rtol=0)
    n_samples = clf.geometry.n_rotations * len(clf.shifts) * k
    torch.testing.assert_close(adaptive.pmax, torch.full((n,), 1.0 / n_samples), rtol=1e-3, atol=0)


def test_adaptive_and_exhaustive_steps_build_the_same_classes(trained: tuple[Classifier, TensorBatch]) -> None:
    clf, batch = trained
    adaptive_stats = clf.expect(batch, temperature=1.0)[1]
    clf.exhaustive_marginalisation = True
    try:
        exact_stats = clf.expect(batch, temperature=1.0)[1]
    finally:
        clf.exhaustive_marginalisation = False
    assert adaptive_stats is not None and exact_stats is not None
    diff = (adaptive_stats.numerator - exact_stats.numerator).norm() / exact_stats.numerator.norm()
    assert float(diff) < 0.05, f"class sums differ by {float(diff):.3f}"
    torch.testing.assert_close(adaptive_stats.counts, exact_stats.counts, rtol=0.05, atol=1.0)


def test_unrefined_poses_leave_the_class_sums_unchanged(trained: tuple[Classifier, TensorBatch]) -> None:
    # otf2d classify skips the pose hill climb in its online-EM batches: only the poses may differ.
    clf, batch = trained
    refined, refined_stats = clf.expect(batch, temperature=1.0)
    plain, plain_stats = clf.expect(batch, temperature=1.0, refine_poses=False)
    assert refined_stats is not None and plain_stats is not None
    assert torch.equal(refined_stats.numerator, plain_stats.numerator)
    assert torch.equal(refined_stats.ctf2, plain_stats.ctf2)
    assert torch.equal(refined_stats.counts, plain_stats.counts)
    assert torch.equal(refined.class_index, plain.class_index)
    assert torch.equal(refined.class_posterior, plain.class_posterior)
    # the climb starts from the unrefined pose and only moves uphill
    assert bool((refined.log_likelihood >= plain.log_likelihood - 1e-9).all())
    assert bool((refined.log_likelihood > plain.log_likelihood + 1e-6).any())  # and it does move some
