"""Every cryoSPARC parameter changes the result the way its guide says, one test each."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from em_synthetic import SyntheticSet, Template, make_particles, random_templates, render

from otf2d.core.config import Class2DParams
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.em.constraints import centre_of_mass, principal_axis
from otf2d.engine.em.driver import classify_batches
from otf2d.engine.em.estep import build_reference_bank, ring_weights, score_chunk
from otf2d.engine.em.mstep import data_spectra
from otf2d.engine.em.preprocess import radius_map

BOX, PIXEL, STEP = 32, 3.0, 15.0


def _params(**kw: object) -> Class2DParams:
    base: dict[str, object] = {
        "n_classes": 4,
        "max_resolution_angstrom": 2 * PIXEL,
        "in_plane_step_degrees": STEP,
        "max_shift_angstrom": PIXEL,
        "force_max_over_poses": True,
        "online_em_iterations": 4,
        "batch_size_per_class": 30,
        "seed": 0,
    }
    base.update(kw)
    return Class2DParams(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> SyntheticSet:
    rng = np.random.default_rng(5)
    return make_particles(
        240, random_templates(4, BOX, rng), BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=1, noise_std=0.3
    )


def _trained(data: SyntheticSet, steps: int = 1, **kw: object) -> Classifier:
    clf = Classifier(_params(**kw), BOX, PIXEL)
    batch = TensorBatch.from_particles(data.batch.take(np.arange(160)))
    clf.initialise(batch)
    for _ in range(steps):
        clf.step(batch)
    return clf


def test_clamp_solvent_zeroes_the_background(data: SyntheticSet) -> None:
    plain = _trained(data, clamp_solvent=False).class_averages()
    clamped = _trained(data, clamp_solvent=True).class_averages()
    g = Classifier(_params(), BOX, PIXEL).geometry
    outside = radius_map(BOX) >= g.mask_inner_radius
    assert float(clamped[:, outside].abs().max()) == 0.0
    assert float(plain[:, outside].abs().max()) > 0.0


def test_non_negativity_removes_negative_density(data: SyntheticSet) -> None:
    plain = _trained(data, non_negativity=False).class_averages()
    positive = _trained(data, non_negativity=True).class_averages()
    assert float(plain.min()) < 0.0  # CTF-corrected averages ripple below zero
    assert float(positive.min()) >= 0.0
    assert float(positive.max()) > 0.0


def _scaled_particles(n: int) -> tuple[SyntheticSet, np.ndarray, torch.Tensor]:
    """``n`` particles of two templates at scale 0.5 or 2, their scales and the templates' images."""
    rng = np.random.default_rng(2)
    templates = random_templates(2, BOX, rng)
    scales = rng.choice([0.5, 2.0], n)
    data = make_particles(
        n, templates, BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=1, noise_std=0.15, scales=scales
    )
    return data, scales, torch.as_tensor(np.stack([render(t, BOX) for t in templates]))


def _classifier_of_truth(params: Class2DParams, data: SyntheticSet, truth: torch.Tensor) -> Classifier:
    """A float64 classifier whose classes are the true templates."""
    clf = Classifier(params, BOX, PIXEL, dtype=torch.float64)
    clf.estimate_noise(data.batch)
    clf.set_class_images(truth * clf.window.double())
    return clf


def test_per_particle_scale_recovers_the_particles_scale() -> None:
    data, scales, truth = _scaled_particles(120)
    for on in (True, False):
        params = _params(n_classes=2, per_particle_scale=on, per_particle_scale_iterations=0)
        got = _classifier_of_truth(params, data, truth).assign(data.batch).scale.numpy()
        if on:
            assert np.corrcoef(got, scales)[0, 1] > 0.95
            ratio = np.median(got[scales == 2.0]) / np.median(got[scales == 0.5])
            assert 3.0 < ratio < 5.0, f"scale ratio {ratio:.2f}, truth 4"
        else:
            assert np.all(got == 1.0)


def test_the_early_scale_is_fitted_in_the_first_online_iterations_only() -> None:
    data, _, truth = _scaled_particles(60)
    params = _params(n_classes=2, per_particle_scale_iterations=3, online_em_iterations=5)
    clf = _classifier_of_truth(params, data, truth)
    fitted = []
    for iteration in range(7):  # five online iterations, then two final passes
        clf.iteration = iteration
        fitted.append(bool(np.any(clf.assign(data.batch).scale.numpy() != 1.0)))
    assert fitted == [True, True, True, False, False, False, False]
    short = Classifier(dataclasses.replace(params, online_em_iterations=2), BOX, PIXEL)
    assert short.scale_per_particle
    short.iteration = 2  # the first final pass of a schedule shorter than the early scale
    assert not short.scale_per_particle


def _bar(angle_degrees: float) -> Template:
    """An elongated "filament" segment: a row of blobs along ``angle`` through the centre."""
    t = np.linspace(-10.0, 10.0, 9)
    a = np.deg2rad(angle_degrees)
    centres = np.stack([t * np.cos(a), t * np.sin(a)], axis=1)
    return Template(centres, np.full(9, 1.0), np.full(9, 1.8))


@pytest.mark.slow
def test_vertical_alignment_turns_filament_classes_upright() -> None:
    rng = np.random.default_rng(3)
    data = make_particles(120, [_bar(30.0)], BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=1, noise_std=0.2)
    clf = Classifier(_params(n_classes=1), BOX, PIXEL)
    clf.initialise(data.batch)
    clf.set_class_images(torch.as_tensor(render(_bar(30.0), BOX)[None], dtype=torch.float32) * clf.window)
    clf.estimate_noise(data.batch)
    for _ in range(2):
        clf.step(data.batch)
    before_axis, elongation = principal_axis(clf.class_averages())
    assert float(elongation[0]) > 2.0 and abs(float(before_axis[0]) - 30.0) < 10.0
    before = clf.assign(data.batch)
    delta = clf.align_vertically()
    after_axis, _ = principal_axis(clf.class_averages())
    assert abs(abs(float(after_axis[0])) - 90.0) < 5.0, f"axis {float(after_axis[0]):.1f}° after alignment"
    # Particles follow: ψ' = ψ + Δ, to within one angular step of the new search (the bar is
    # two-fold symmetric, so modulo 180°).
    after = clf.assign(data.batch)
    expected = before.with_psi_offsets(delta).psi_degrees
    diff = (after.psi_degrees - expected + 90.0) % 180.0 - 90.0
    assert float((diff.abs() <= STEP + 1e-6).float().mean()) > 0.9
    # Through the driver: classes come out upright.
    params = _params(n_classes=1, align_filaments_vertically=True, online_em_iterations=6, batch_size_per_class=40)
    res = classify_batches(data.batch.take(np.arange(80)), params)
    axis, _ = principal_axis(res.classifier.class_averages())
    assert abs(abs(float(axis[0])) - 90.0) < 8.0


def _ring_scores(clf: Classifier, samples: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    g = clf.geometry
    assert clf.references is not None and clf.sigma2 is not None
    bank = build_reference_bank(clf.references, clf.phases, clf.cross_plan, clf.norm_plan)
    weights = ring_weights(clf.grid, clf.sigma2, g.align_ring_min, g.align_ring_max)
    s = score_chunk(bank, data_spectra(samples, ctf, clf.n_orders)[0], samples, ctf, weights, keep_all_shifts=True)
    assert s.corr is not None
    return s.corr - s.norm[:, None] - s.power


@pytest.mark.parametrize(
    ("limits", "rings"),
    [
        ({"min_alignment_resolution_angstrom": 24.0}, "low"),
        ({"max_alignment_resolution_angstrom": 12.0}, "high"),
    ],
)
def test_alignment_resolution_limits_drop_rings_from_scoring(
    data: SyntheticSet, limits: dict[str, float], rings: str
) -> None:
    batch = TensorBatch.from_particles(data.batch.take(np.arange(20)))
    truth = torch.as_tensor(np.stack([render(t, BOX) for t in data.templates]), dtype=torch.float32)
    results = []
    for kw in ({}, limits):
        clf = Classifier(_params(**kw), BOX, PIXEL)
        clf.estimate_noise(data.batch)
        clf.set_class_images(truth * clf.window)
        samples, ctf = clf.prepare(batch.images, batch.ctf)
        g = clf.geometry
        perturbed = samples.clone()
        if rings == "low":
            assert g.align_ring_min == (4 if kw else 1)  # 32 · 3 Å / 24 Å
            perturbed[:, 1:4] += 50.0 * torch.randn_like(perturbed[:, 1:4])
        else:
            assert g.align_ring_max == (8 if kw else 16)  # 32 · 3 Å / 12 Å
            perturbed[:, 9:] += 50.0 * torch.randn_like(perturbed[:, 9:])
        results.append(
            torch.allclose(_ring_scores(clf, samples, ctf), _ring_scores(clf, perturbed, ctf), rtol=1e-4, atol=1e-3)
        )
    assert results == [False, True], "only the limited classifier ignores those rings"


def test_max_resolution_sets_the_internal_box(data: SyntheticSet) -> None:
    fine = Classifier(_params(max_resolution_angstrom=6.0), BOX, PIXEL)
    coarse = Classifier(_params(max_resolution_angstrom=12.0), BOX, PIXEL)
    assert fine.geometry.internal_box == 32 and coarse.geometry.internal_box == 16
    coarse.initialise(data.batch.take(np.arange(60)))
    assert coarse.class_averages().shape == (4, 16, 16)
    assert coarse.geometry.internal_pixel_angstrom == pytest.approx(6.0)


def test_recentring_moves_an_off_centre_class_to_the_centre() -> None:
    rng = np.random.default_rng(4)
    template = random_templates(1, BOX, rng)[0]
    data = make_particles(80, [template], BOX, PIXEL, rng, psi_step_degrees=STEP, max_shift_px=1, noise_std=0.2)
    off = Template(template.centres + np.array([3.0, -2.0]), template.amplitudes, template.widths)
    coms = {}
    for recenter in (True, False):
        clf = Classifier(_params(n_classes=1, recenter=recenter, max_shift_angstrom=5 * PIXEL), BOX, PIXEL)
        clf.estimate_noise(data.batch)
        clf.set_class_images(torch.as_tensor(render(off, BOX)[None], dtype=torch.float32) * clf.window)
        clf.step(data.batch, reseed=False)
        coms[recenter] = float(centre_of_mass(clf.class_averages(), 0.2).norm())
    assert coms[False] > 2.5, "without re-centring the class stays where the particles aligned to it"
    assert coms[True] < 0.75


def test_zero_pad_factor_is_the_classifiers_interpolation_grid(data: SyntheticSet) -> None:
    batch = TensorBatch.from_particles(data.batch.take(np.arange(4)))
    samples = []
    for pad in (1, 2):
        clf = Classifier(_params(zero_pad_factor=pad), BOX, PIXEL)
        assert clf.grid.zero_pad_factor == pad
        samples.append(clf.prepare(batch.images, batch.ctf)[0])
    assert not torch.allclose(samples[0], samples[1])


def test_sort_by_size_orders_the_snapshot_classes(data: SyntheticSet) -> None:
    res = classify_batches(data.batch, _params(online_em_iterations=2, sort_by_size=False))
    counts = np.bincount(res.assignments.class_index.numpy(), minlength=4)
    unsorted = res.snapshot
    assert np.array_equal(unsorted.particle_counts, counts)
    assert unsorted.engine_class_of_snapshot_class == (0, 1, 2, 3)
    sorted_params = dataclasses.replace(res.classifier.params, sort_by_size=True)
    res.classifier.params = sorted_params
    snap = res.classifier.snapshot(res.particles)
    assert np.array_equal(snap.particle_counts, np.sort(counts)[::-1])
    order = snap.engine_class_order()
    np.testing.assert_array_equal(snap.averages, unsorted.averages[order])
    assert np.array_equal(np.asarray(order)[snap.particles.class_index], res.assignments.class_index.numpy())


def test_empty_classes_are_reseeded_by_splitting_the_largest(data: SyntheticSet) -> None:
    clf = _trained(data, steps=1)
    assert clf.stats is not None
    counts = clf.stats.counts.clone()
    counts[2] = 0.0
    clf.stats = dataclasses.replace(clf.stats, counts=counts)
    donor = int(torch.argmax(counts))
    donor_count = float(counts[donor])
    report = clf.maximise(reseed=True)
    assert report.reseeded == [2]
    priors = clf.class_priors()
    assert float(priors[2]) > 0.1 / 4
    assert float(clf.stats.counts[2]) == pytest.approx(donor_count / 2)
    assert not torch.allclose(clf.class_averages()[2], clf.class_averages()[donor])
