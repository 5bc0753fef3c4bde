"""M-step statistics against direct sums: the residual identity, soft vs hard accumulation, Wiener.

The statistics are accumulated in the angular-order domain and turned into class-frame polar
samples; these tests recompute what they must equal sample by sample in θ-space.
"""

from __future__ import annotations

import math

import torch

from otf2d.core.config import Class2DParams
from otf2d.engine.em.estep import Posteriors
from otf2d.engine.em.geometry import make_geometry
from otf2d.engine.em.mstep import OrderAccumulator, data_spectra, online_update, wiener_average
from otf2d.engine.em.noise import noise_from_stats
from otf2d.engine.em.polar import PolarGrid, band_limit

BOX = 24


def _setup(seed: int = 0) -> tuple[PolarGrid, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    g = make_geometry(
        Class2DParams(max_resolution_angstrom=4.0, in_plane_step_degrees=30.0, max_shift_angstrom=2.0), BOX, 2.0
    )
    grid = PolarGrid.from_geometry(g)
    gen = torch.Generator().manual_seed(seed)
    n, q = 5, g.n_angles
    half = torch.complex(*torch.randn(2, n, g.n_rings + 1, q // 2, generator=gen, dtype=torch.float64))
    samples = band_limit(torch.cat([half, half.conj()], dim=-1), grid)  # X(θ + π) = conj X(θ)
    ctf_half = torch.rand(n, g.n_rings + 1, q // 2, generator=gen, dtype=torch.float64) - 0.3
    ctf = torch.cat([ctf_half, ctf_half], dim=-1)  # C(θ + π) = C(θ)
    shifts = torch.tensor(g.shift_grid(), dtype=torch.float64)
    phases = grid.shift_phases(shifts, torch.complex128)
    refs_half = torch.complex(*torch.randn(2, 3, g.n_rings + 1, q // 2, generator=gen, dtype=torch.float64))
    refs = band_limit(torch.cat([refs_half, refs_half.conj()], dim=-1), grid)
    return grid, samples, ctf, phases, refs, g.n_rotations, g.angles_per_rotation


def _assert_same_sums(a: OrderAccumulator, b: OrderAccumulator, *, power: bool = True) -> None:
    """The M-step sums of two accumulators agree (``power``: the data power too)."""
    torch.testing.assert_close(a.numerator, b.numerator)
    torch.testing.assert_close(a.ctf2, b.ctf2)
    torch.testing.assert_close(a.counts, b.counts)
    if power:
        torch.testing.assert_close(a.power, b.power)


def test_noise_from_statistics_equals_the_direct_residual() -> None:
    grid, samples, ctf, phases, refs, r_count, c = _setup()
    acc = OrderAccumulator.zeros(
        3, len(phases), grid.n_rings, grid.n_angles // 2 + 1, grid.n_angles, r_count, "cpu", torch.float64
    )
    particle = torch.tensor([0, 0, 1, 2, 3, 4])
    klass = torch.tensor([0, 2, 1, 1, 0, 2])
    shift = torch.tensor([0, 3, len(phases) - 1, 2, 4, 1])
    rotation = torch.tensor([0, 3, 7, 11, 1, 5])
    weight = torch.tensor([0.7, 0.3, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 1.0, 0.5, 2.0, 1.0, 1.3], dtype=torch.float64)
    acc.add_pairs(
        data_spectra(samples, ctf, acc.numerator.shape[-1]), samples, particle, klass, shift, rotation, weight, scale
    )
    stats = acc.to_stats(phases, grid.n_angles).normalised()
    got = noise_from_stats(stats, refs)

    residual = torch.zeros(grid.n_rings + 1, dtype=torch.float64)
    for p, k, t, lr, w, a in zip(particle, klass, shift, rotation, weight, scale, strict=True):
        z = refs[k] * phases[t]  # class-frame shifted reference
        model = ctf[p] * torch.roll(z, -int(lr) * c, dims=-1)  # X(θ) ≈ C·Z(θ + ψ)
        residual += w * ((samples[p] - a * model).abs() ** 2).sum(dim=-1)
    want = residual / (float(weight.sum()) * grid.n_angles)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_soft_accumulation_with_one_hot_posteriors_equals_hard_pairs() -> None:
    grid, samples, ctf, phases, _, r_count, _ = _setup(1)
    n, t, k = samples.shape[0], len(phases), 3
    n_orders = grid.n_angles // 2 + 1
    rotation = torch.tensor([2, 0, 9, 4, 11])
    shift = torch.tensor([1, 0, 4, 3, 2])
    klass = torch.tensor([0, 1, 2, 2, 1])
    post = torch.zeros(r_count, t, k, n, dtype=torch.float64)
    post[rotation, shift, klass, torch.arange(n)] = 1.0
    weights = post.sum(dim=(0, 1))
    posteriors = Posteriors(
        class_weights=weights,
        best_rotation=torch.zeros(k, n, dtype=torch.int64) + rotation,
        best_shift=torch.zeros(k, n, dtype=torch.int64) + shift,
        best_scale=torch.ones(k, n, dtype=torch.float64),
        best_log_likelihood=torch.zeros(k, n, dtype=torch.float64),
        sample_posterior=post,
        pmax=torch.ones(n, dtype=torch.float64),
        n_significant=torch.ones(n, dtype=torch.int64),
    )
    spectra = data_spectra(samples, ctf, n_orders)
    soft = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    soft.add_posteriors(spectra, samples, posteriors)
    hard = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    hard.add_pairs(
        spectra,
        samples,
        torch.arange(n),
        klass,
        shift,
        rotation,
        torch.ones(n, dtype=torch.float64),
        torch.ones(n, dtype=torch.float64),
    )
    a, b = soft.to_stats(phases, grid.n_angles), hard.to_stats(phases, grid.n_angles)
    _assert_same_sums(a, b)


def test_wiener_average_of_aligned_clean_data_is_the_reference() -> None:
    grid, _, ctf, phases, refs, r_count, c = _setup(2)
    n = ctf.shape[0]
    rotation = torch.tensor([0, 3, 5, 8, 10])
    shift = torch.tensor([0, 1, 2, 3, 4])
    samples = torch.stack(
        [ctf[i] * torch.roll(refs[0] * phases[shift[i]], -int(rotation[i]) * c, dims=-1) for i in range(n)]
    )
    n_orders = grid.n_angles // 2 + 1
    acc = OrderAccumulator.zeros(3, len(phases), grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    acc.add_pairs(
        data_spectra(samples, ctf, n_orders),
        samples,
        torch.arange(n),
        torch.zeros(n, dtype=torch.int64),
        shift,
        rotation,
        ones,
        ones,
    )
    stats = acc.to_stats(phases, grid.n_angles).normalised()
    sigma2 = torch.full((grid.n_rings + 1,), 1e-9, dtype=torch.float64)
    tau2 = torch.full((3, grid.n_rings + 1), 1e9, dtype=torch.float64)
    avg = band_limit(wiener_average(stats, sigma2, tau2, n_effective=n), grid)[0]
    covered = stats.ctf2[0] > 1e-3  # samples where some particle's CTF is not ~0
    torch.testing.assert_close(avg[covered], refs[0][covered], rtol=1e-4, atol=1e-4 * float(refs[0].abs().max()))


def test_online_update_is_a_decaying_average_with_an_effective_count() -> None:
    grid, samples, ctf, phases, _, r_count, _ = _setup(3)
    n_orders = grid.n_angles // 2 + 1

    def batch(value: float) -> OrderAccumulator:
        acc = OrderAccumulator.zeros(
            3, len(phases), grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64
        )
        n = samples.shape[0]
        acc.add_pairs(
            data_spectra(samples * value, ctf, n_orders),
            samples * value,
            torch.arange(n),
            torch.zeros(n, dtype=torch.int64),
            torch.zeros(n, dtype=torch.int64),
            torch.zeros(n, dtype=torch.int64),
            torch.ones(n, dtype=torch.float64),
            torch.ones(n, dtype=torch.float64),
        )
        return acc

    first = batch(1.0).to_stats(phases, grid.n_angles)
    second = batch(3.0).to_stats(phases, grid.n_angles)
    s1, v1 = online_update(first.normalised(), math.inf, first, 1.0)
    assert v1 == 1.0 / samples.shape[0]
    s2, v2 = online_update(s1, v1, second, 0.25)
    torch.testing.assert_close(s2.numerator, 0.75 * first.normalised().numerator + 0.25 * second.normalised().numerator)
    assert v2 == 0.75**2 * v1 + 0.25**2 / samples.shape[0]
    assert float(s2.weight) == 1.0


def test_soft_accumulation_of_a_dense_posterior_equals_every_sample_as_a_weighted_pair() -> None:
    grid, samples, ctf, phases, _, r_count, _ = _setup(3)
    n, t, k = samples.shape[0], len(phases), 3
    n_orders = grid.n_angles // 2 + 1
    gen = torch.Generator().manual_seed(11)
    post = torch.rand(r_count, t, k, n, dtype=torch.float64, generator=gen) ** 4
    post /= post.sum(dim=(0, 1, 2), keepdim=True)
    scale = torch.rand(k, n, dtype=torch.float64, generator=gen) + 0.5
    weights = post.sum(dim=(0, 1))
    posteriors = Posteriors(
        class_weights=weights,
        best_rotation=torch.zeros(k, n, dtype=torch.int64),
        best_shift=torch.zeros(k, n, dtype=torch.int64),
        best_scale=scale,
        best_log_likelihood=torch.zeros(k, n, dtype=torch.float64),
        sample_posterior=post,
        pmax=post.reshape(-1, n).max(dim=0).values,
        n_significant=torch.ones(n, dtype=torch.int64),
    )
    spectra = data_spectra(samples, ctf, n_orders)
    soft = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    soft.add_posteriors(spectra, samples, posteriors)
    # Every (rotation, shift, class, particle) sample as a pair, at the scale of the particle's best class.
    rot, sh, cls, part = (i.flatten() for i in torch.meshgrid(*(torch.arange(d) for d in post.shape), indexing="ij"))
    alpha = scale.gather(0, weights.argmax(dim=0)[None])[0]
    hard = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    hard.add_pairs(spectra, samples, part, cls, sh, rot, post.flatten(), alpha[part])
    a, b = soft.to_stats(phases, grid.n_angles), hard.to_stats(phases, grid.n_angles)
    _assert_same_sums(a, b, power=False)


def test_dense_accumulation_on_a_coarse_subgrid_equals_every_sample_as_a_weighted_pair() -> None:
    # Adaptive marginalisation adds broad posteriors on every other rotation and a subset of the
    # shifts (otf2d.engine.em.significant): the same sums as each coarse sample added at its fine indices.
    grid, samples, ctf, phases, _, r_count, _ = _setup(4)
    n, t, k = samples.shape[0], len(phases), 3
    n_orders = grid.n_angles // 2 + 1
    gen = torch.Generator().manual_seed(5)
    rows = torch.tensor([0, 2, 3])  # the coarse shifts among the accumulator's
    post = torch.rand(r_count // 2, len(rows), k, n, dtype=torch.float64, generator=gen) ** 3
    post /= post.sum(dim=(0, 1, 2), keepdim=True)
    alpha = torch.rand(n, dtype=torch.float64, generator=gen) + 0.5
    spectra = data_spectra(samples, ctf, n_orders)
    dense = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    dense.add_dense(spectra, samples, post, alpha, shift_rows=rows)
    rot, sh, cls, part = (i.flatten() for i in torch.meshgrid(*(torch.arange(d) for d in post.shape), indexing="ij"))
    pairs = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    pairs.add_pairs(spectra, samples, part, cls, rows[sh], 2 * rot, post.flatten(), alpha[part])
    a, b = dense.to_stats(phases, grid.n_angles), pairs.to_stats(phases, grid.n_angles)
    assert float(a.numerator.abs().max()) > 0
    _assert_same_sums(a, b)


def test_sparse_sample_accumulation_equals_the_samples_as_weighted_pairs() -> None:
    # add_samples merges the rotations of one (class, shift, particle) before touching the sums.
    grid, samples, ctf, phases, _, r_count, _ = _setup(6)
    n, t, k = samples.shape[0], len(phases), 3
    n_orders = grid.n_angles // 2 + 1
    gen = torch.Generator().manual_seed(8)
    m = 60
    particle = torch.randint(0, n, (m,), generator=gen)
    particle[:n] = torch.arange(n)  # every particle has samples
    klass = torch.randint(0, k, (m,), generator=gen)
    shift = torch.randint(0, t, (m,), generator=gen)
    rotation = torch.randint(0, r_count, (m,), generator=gen)
    klass[n : n + 4], shift[n : n + 4], particle[n : n + 4] = 1, 2, 0  # one triple with several rotations
    weight = torch.rand(m, dtype=torch.float64, generator=gen)
    weight /= torch.zeros(n, dtype=torch.float64).index_add_(0, particle, weight)[particle]
    alpha = torch.rand(n, dtype=torch.float64, generator=gen) + 0.5
    spectra = data_spectra(samples, ctf, n_orders)
    sparse = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    sparse.add_samples(spectra, samples, particle, klass, shift, rotation, weight, alpha, chunk=7)
    pairs = OrderAccumulator.zeros(k, t, grid.n_rings, n_orders, grid.n_angles, r_count, "cpu", torch.float64)
    pairs.add_pairs(spectra, samples, particle, klass, shift, rotation, weight, alpha[particle])
    a, b = sparse.to_stats(phases, grid.n_angles), pairs.to_stats(phases, grid.n_angles)
    assert float(a.numerator.abs().max()) > 0
    _assert_same_sums(a, b)
