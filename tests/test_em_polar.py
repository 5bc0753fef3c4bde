"""Sampling geometry, polar Fourier sampling, the folded correlation and preprocessing.

References are computed directly in float64: the DFT of an image evaluated at the polar points,
circular correlations summed sample by sample.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from em_synthetic import random_templates, render

from otf2d.core.config import Class2DParams
from otf2d.core.errors import InputError
from otf2d.engine.em.fold import (
    folded_correlation,
    folded_max_over_shifts,
    low_precision_bmm,
    make_fold_plan,
    max_over_shifts,
    particle_matrix,
    reference_matrix,
    shift_argmax_at,
)
from otf2d.engine.em.geometry import internal_box_size, make_geometry
from otf2d.engine.em.polar import PolarGrid, angular_spectrum, image_to_polar, polar_to_image, rotate_polar
from otf2d.engine.em.preprocess import fourier_crop, fourier_pad, normalise_background, soft_circular_mask


def _exact_polar(image: np.ndarray, grid: PolarGrid) -> np.ndarray:
    d = image.shape[-1]
    c = np.arange(d) - d // 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    kx, ky = grid.kx.numpy(), grid.ky.numpy()
    phase = np.exp(-2j * np.pi * (kx[..., None, None] * xx + ky[..., None, None] * yy) / d)
    return (phase * image).sum(axis=(-1, -2))


def _blob_image(box: int, seed: int = 0) -> np.ndarray:
    return render(random_templates(1, box, np.random.default_rng(seed))[0], box, 17.0, (1.0, -2.0))


def test_geometry_follows_the_parameters() -> None:
    # 1.3 Å/px, 128 px, 6 Å: the internal box reaches 6 Å (2·128·1.3/6 = 55.5 -> 56).
    assert internal_box_size(128, 1.3, 6.0) == 56
    assert internal_box_size(64, 2.0, 4.0) == 64  # data never upsampled
    g = make_geometry(Class2DParams(max_resolution_angstrom=4.0, in_plane_step_degrees=5.0), 64, 2.0)
    assert g.internal_box == 64 and g.n_rotations == 72
    # ±3 px in 1 px steps on a disc: RELION's rule gives 29 shifts, ±5 px gives 81.
    g3 = make_geometry(Class2DParams(max_resolution_angstrom=4.0, max_shift_angstrom=6.0), 64, 2.0)
    assert len(g3.shift_grid()) == 29
    g5 = make_geometry(Class2DParams(max_resolution_angstrom=4.0, max_shift_angstrom=10.0), 64, 2.0)
    assert len(g5.shift_grid()) == 81
    # RELION's in-plane rule, 360 / ceil(π · diameter / resolution), rounded up to an even count
    # (33 -> 34) so that the adaptive E-step's coarse pass takes every other rotation.
    g_rule = make_geometry(Class2DParams(max_resolution_angstrom=16.56, mask_diameter_angstrom=172.0), 128, 2.0)
    assert g_rule.n_rotations == 34
    g_even = make_geometry(Class2DParams(max_resolution_angstrom=16.0, mask_diameter_angstrom=172.0), 128, 2.0)
    assert g_even.n_rotations == 34  # ceil(π · 172 / 16) = 34 is even already
    assert g_rule.n_angles % g_rule.n_rotations == 0 and g_rule.n_angles % 2 == 0
    with pytest.raises(InputError):
        make_geometry(Class2DParams(), 63, 1.0)


def test_max_resolution_sets_the_internal_box_and_alignment_rings() -> None:
    coarse = make_geometry(Class2DParams(max_resolution_angstrom=12.0), 128, 1.5)
    fine = make_geometry(Class2DParams(max_resolution_angstrom=6.0), 128, 1.5)
    assert coarse.internal_box < fine.internal_box
    assert coarse.internal_box * coarse.internal_pixel_angstrom == pytest.approx(128 * 1.5)
    narrow = make_geometry(Class2DParams(max_resolution_angstrom=6.0, max_alignment_resolution_angstrom=12.0), 128, 1.5)
    assert narrow.internal_box == fine.internal_box
    assert narrow.align_ring_max < fine.align_ring_max
    assert narrow.align_ring_max == math.floor(fine.internal_box * fine.internal_pixel_angstrom / 12.0 + 1e-6)
    low = make_geometry(Class2DParams(max_resolution_angstrom=6.0, min_alignment_resolution_angstrom=50.0), 128, 1.5)
    assert low.align_ring_min > 1 and fine.align_ring_min == 1


@pytest.mark.parametrize("pad", [1, 2, 3])
def test_polar_samples_match_the_exact_dft(pad: int) -> None:
    box = 32
    g = make_geometry(Class2DParams(max_resolution_angstrom=4.0, zero_pad_factor=pad), box, 2.0)
    grid = PolarGrid.from_geometry(g)
    img = _blob_image(box)
    got = image_to_polar(torch.as_tensor(img[None]), grid)[0].numpy()
    want = _exact_polar(img, grid)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < {1: 0.25, 2: 0.06, 3: 0.03}[pad]
    # Hermitian: X(r, θ + π) = conj X(r, θ).
    q = grid.n_angles
    np.testing.assert_allclose(got[:, q // 2 :], got[:, : q // 2].conj(), atol=1e-9)


def test_zero_pad_factor_changes_the_interpolation_grid() -> None:
    box = 32
    errors = []
    for pad in (1, 2):
        g = make_geometry(Class2DParams(max_resolution_angstrom=4.0, zero_pad_factor=pad), box, 2.0)
        grid = PolarGrid.from_geometry(g)
        img = _blob_image(box, seed=4)
        got = image_to_polar(torch.as_tensor(img[None]), grid)[0].numpy()
        want = _exact_polar(img, grid)
        errors.append(np.abs(got - want).max() / np.abs(want).max())
    assert errors[1] < errors[0] / 2


def test_polar_to_image_inverts_image_to_polar() -> None:
    box = 32
    g = make_geometry(Class2DParams(max_resolution_angstrom=4.0), box, 2.0)
    grid = PolarGrid.from_geometry(g)
    img = torch.as_tensor(_blob_image(box, seed=5)[None])
    polar = image_to_polar(img, grid)
    back = polar_to_image(polar, grid)
    for _ in range(2):  # the refinement the classifier does
        back = back + polar_to_image(polar - image_to_polar(back, grid), grid)
    assert float((back - img).norm() / img.norm()) < 0.06


def test_rotate_polar_turns_the_image_counter_clockwise() -> None:
    box = 32
    g = make_geometry(Class2DParams(max_resolution_angstrom=4.0), box, 2.0)
    grid = PolarGrid.from_geometry(g)
    template = random_templates(1, box, np.random.default_rng(6))[0]
    base = image_to_polar(torch.as_tensor(render(template, box)[None]), grid)
    # Turning the content by +φ (CCW) is render(...) at ψ = −φ: image(p) = template(R(−φ)·p).
    turned = image_to_polar(torch.as_tensor(render(template, box, -37.0)[None]), grid)
    got = rotate_polar(base, torch.tensor([37.0]))
    assert float((got - turned).abs().max() / turned.abs().max()) < 0.03


@pytest.mark.parametrize(("q", "r_count"), [(24, 12), (36, 9), (40, 8), (30, 10)])
def test_folded_correlation_equals_direct_sums(q: int, r_count: int) -> None:
    """Σ_q Y_q·conj(Z_{q+l·Q/R}) over rings, for every rotation l, from the folded GEMM."""
    n_rings = 5
    orders = [0] + [min(q // 2, 2 * r + 1) for r in range(1, n_rings + 1)]
    gen = torch.Generator().manual_seed(0)

    def hermitian(n: int) -> torch.Tensor:
        spec = torch.zeros(n, n_rings + 1, q, dtype=torch.complex128)
        for r in range(n_rings + 1):
            for m in range(orders[r] + 1):
                v = torch.complex(*torch.randn(2, n, generator=gen, dtype=torch.float64))
                if m == 0 or 2 * m == q:
                    v = v.real.to(torch.complex128) if m % 2 == 0 else 1j * v.imag
                spec[:, r, m] = v
                if 0 < m < q - m:
                    spec[:, r, q - m] = (-1) ** m * v.conj()
        return torch.fft.ifft(spec, dim=-1)

    y, z = hermitian(3), hermitian(4)
    plan = make_fold_plan(orders, 1, n_rings, q, r_count, dtype=torch.float64)
    got = folded_correlation(
        reference_matrix(angular_spectrum(z, plan.n_orders), plan),
        particle_matrix(angular_spectrum(y, plan.n_orders), plan),
        plan,
    )
    c = q // r_count
    want = torch.stack(
        [
            torch.einsum("brq,crq->cb", y[:, 1:], torch.roll(z, -lag * c, dims=-1)[:, 1:].conj()).real
            for lag in range(r_count)
        ]
    )
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    # The same machinery on real sequences with every order: the CTF² norm term.
    a = torch.randn(4, n_rings + 1, q, dtype=torch.float64, generator=gen)
    b = torch.randn(3, n_rings + 1, q, dtype=torch.float64, generator=gen)
    plan2 = make_fold_plan([q // 2] * (n_rings + 1), 1, n_rings, q, r_count, dtype=torch.float64)
    got2 = folded_correlation(
        reference_matrix(torch.fft.rfft(a, dim=-1), plan2), particle_matrix(torch.fft.rfft(b, dim=-1), plan2), plan2
    )
    want2 = torch.stack(
        [torch.einsum("brq,crq->cb", b[:, 1:], torch.roll(a, -lag * c, dims=-1)[:, 1:]) for lag in range(r_count)]
    )
    torch.testing.assert_close(got2, want2, atol=1e-10, rtol=0)


def test_background_normalisation() -> None:
    rng = np.random.default_rng(0)
    box = 48
    imgs = rng.normal(3.0, 2.5, (4, box, box))
    imgs[:, 16:32, 16:32] += 10.0  # "particle" inside the radius
    out = normalise_background(torch.as_tensor(imgs), radius=18.0).numpy()
    c = np.arange(box) - box // 2
    outside = np.hypot(*np.meshgrid(c, c, indexing="ij")) > 18.0
    np.testing.assert_allclose(out[:, outside].mean(axis=1), 0.0, atol=1e-9)
    np.testing.assert_allclose(out[:, outside].std(axis=1, ddof=1), 1.0, atol=1e-9)


def test_fourier_crop_and_pad() -> None:
    box = 64
    img = _blob_image(box, seed=2)
    cropped = fourier_crop(torch.as_tensor(img[None]), 32)[0].numpy()
    # A smooth image keeps its values at the coarser sampling (every other pixel).
    np.testing.assert_allclose(cropped, img[::2, ::2], atol=0.02 * img.max())
    const = fourier_crop(torch.full((1, box, box), 2.5, dtype=torch.float64), 24)
    np.testing.assert_allclose(const.numpy(), 2.5, atol=1e-9)
    back = fourier_pad(torch.as_tensor(cropped[None]), box)[0].numpy()
    np.testing.assert_allclose(back[::2, ::2], cropped, atol=1e-9 * img.max())
    assert np.abs(back - img).max() < 0.05 * img.max()


def test_soft_mask_edges() -> None:
    m = soft_circular_mask(32, 8.0, 12.0, dtype=torch.float64).numpy()
    assert m[16, 16] == 1.0 and m[16, 16 + 8] == 1.0
    assert m[16, 16 + 12] == pytest.approx(0.0, abs=1e-12) and m[0, 0] == 0.0
    assert 0.0 < m[16, 16 + 10] < 1.0


@pytest.mark.parametrize("r_count", [8, 9, 72])
def test_max_over_shifts_equals_the_full_correlation(r_count: int) -> None:
    q = 2 * r_count
    plan = make_fold_plan([0] + [q // 2] * 4, 1, 4, q, r_count, dtype=torch.float64)
    gen = torch.Generator().manual_seed(r_count)
    n_shifts, n_classes, b = 3, 2, 5
    ref = torch.randn(plan.n_bins, 2 * n_shifts * n_classes, 2 * plan.slots, dtype=torch.float64, generator=gen)
    par = torch.randn(plan.n_bins, 2 * plan.slots, b, dtype=torch.float64, generator=gen)
    full = folded_correlation(ref, par, plan).reshape(r_count, n_shifts, n_classes, b)
    best, where = folded_max_over_shifts(ref, par, plan, n_shifts)
    want_best, want_where = full.max(dim=1)
    torch.testing.assert_close(best, want_best)
    assert torch.equal(where, want_where)


@pytest.mark.parametrize("r_count", [8, 9, 72])
def test_shift_argmax_recomputed_at_a_rotation_equals_the_tracked_one(r_count: int) -> None:
    q = 2 * r_count
    plan = make_fold_plan([0] + [q // 2] * 4, 1, 4, q, r_count, dtype=torch.float64)
    gen = torch.Generator().manual_seed(100 + r_count)
    n_shifts, n_classes, b = 5, 3, 7
    ref = torch.randn(plan.n_bins, 2 * n_shifts * n_classes, 2 * plan.slots, dtype=torch.float64, generator=gen)
    par = torch.randn(plan.n_bins, 2 * plan.slots, b, dtype=torch.float64, generator=gen)
    products = low_precision_bmm(ref, par, None, False)
    best, where = max_over_shifts(products, plan, n_shifts)
    untracked, none = max_over_shifts(products, plan, n_shifts, track_argmax=False)
    assert none is None and where is not None
    torch.testing.assert_close(untracked, best)
    klass = torch.randint(0, n_classes, (11,), generator=gen)
    particle = torch.randint(0, b, (11,), generator=gen)
    rotation = torch.randint(0, r_count, (11,), generator=gen)
    got = shift_argmax_at(products, plan, n_shifts, klass, particle, rotation)
    assert torch.equal(got, where[rotation, klass, particle])
