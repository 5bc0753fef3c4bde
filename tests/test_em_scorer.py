"""The fast polar E-step against a direct float64 Cartesian scorer (``em_bruteforce``).

Both score the same preprocessed particles against the same class images over the same samples
(rotations, and per rotation the particle-frame origins ``R(−ψ)·o'`` of the class-frame shift
grid). The polar sums approximate the Cartesian sums (ring-area weights, interpolation from a
zero-padded transform, band limit), so on clean particles the two score landscapes must correlate
above 0.99 and pick the same best sample, and on noisy particles agree on the best sample for the
vast majority.
"""

from __future__ import annotations

import numpy as np
import torch
from em_bruteforce import direct_log_likelihood
from em_synthetic import make_particles, random_templates, relion_ctf_numpy, render

from otf2d.core.config import Class2DParams
from otf2d.engine.em.classifier import Classifier, TensorBatch
from otf2d.engine.em.estep import build_reference_bank, ring_weights, score_chunk
from otf2d.engine.em.mstep import data_spectra
from otf2d.engine.em.scale import pose_log_likelihood

BOX, PIXEL = 32, 3.0


def _scores(noise: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    templates = random_templates(3, BOX, rng, blobs=5)
    data = make_particles(n, templates, BOX, PIXEL, rng, psi_step_degrees=20, max_shift_px=1, noise_std=noise)
    params = Class2DParams(
        n_classes=3,
        max_resolution_angstrom=2 * PIXEL,
        in_plane_step_degrees=20,
        max_shift_angstrom=PIXEL,
        mask_diameter_angstrom=0.9 * BOX * PIXEL,
    )
    clf = Classifier(params, BOX, PIXEL, dtype=torch.float64)
    g = clf.geometry
    clf.sigma2 = torch.full_like(clf.estimate_noise(data.batch), 40.0)  # white, of the order of the particles' noise
    classes = np.stack([render(t, BOX) for t in templates]) * 2.0
    clf.set_class_images(torch.as_tensor(classes) * clf.window)
    tb = TensorBatch.from_particles(data.batch)
    samples, ctf = clf.prepare(tb.images, tb.ctf)
    assert clf.references is not None and clf.images is not None
    bank = build_reference_bank(clf.references, clf.phases, clf.cross_plan, clf.norm_plan)
    weights = ring_weights(clf.grid, clf.sigma2, g.align_ring_min, g.align_ring_max)
    scores = score_chunk(bank, data_spectra(samples, ctf, clf.n_orders)[0], samples, ctf, weights, keep_all_shifts=True)
    assert scores.corr is not None
    fast, _ = pose_log_likelihood(scores.corr, scores.norm[:, None], scores.power, False)  # (R, T, K, B)
    fast_np = fast.permute(3, 2, 0, 1).numpy()  # (B, K, R, T)

    particles = clf.preprocess_images(tb.images.double()).numpy()
    f = np.fft.fftfreq(BOX) / PIXEL
    fy, fx = np.meshgrid(f, f, indexing="ij")
    ctf_grid = relion_ctf_numpy(data.batch.ctf, fx, fy)
    psi = np.arange(g.n_rotations) * g.rotation_step_degrees
    shifts = clf.shifts.numpy()
    a = np.deg2rad(psi)[:, None]
    origins = np.stack(
        [np.cos(a) * shifts[:, 0] + np.sin(a) * shifts[:, 1], -np.sin(a) * shifts[:, 0] + np.cos(a) * shifts[:, 1]],
        axis=-1,
    )
    direct = direct_log_likelihood(
        particles, ctf_grid, clf.images.numpy(), psi, origins, clf.sigma2.numpy(), g.align_ring_min, g.align_ring_max
    )
    return fast_np, direct


def test_fast_scores_track_the_direct_scores_on_clean_particles() -> None:
    fast, direct = _scores(noise=0.02, n=6, seed=1)
    for i in range(len(fast)):
        r = np.corrcoef(fast[i].ravel(), direct[i].ravel())[0, 1]
        assert r > 0.99, f"particle {i}: score correlation {r:.4f}"
        assert np.argmax(fast[i]) == np.argmax(direct[i]), f"particle {i}: different best sample"
        # Differences from the best agree to 12 % of the score range (measured: 5–9 %).
        df, dd = fast[i] - fast[i].max(), direct[i] - direct[i].max()
        assert np.abs(df - dd).max() < 0.12 * np.ptp(direct[i])


def test_fast_and_direct_scorers_pick_the_same_sample_on_noisy_particles() -> None:
    fast, direct = _scores(noise=0.6, n=40, seed=2)
    best_fast = [np.unravel_index(np.argmax(f), f.shape) for f in fast]
    best_direct = [np.unravel_index(np.argmax(d), d.shape) for d in direct]
    same = np.mean([a == b for a, b in zip(best_fast, best_direct, strict=True)])
    assert same >= 0.85, f"same best sample for {same:.0%} of noisy particles"
    assert all(a[0] == b[0] for a, b in zip(best_fast, best_direct, strict=True)), "a different class"
    # Where they differ, the fast choice is nearly as good by the direct score (near-ties).
    for i, d in enumerate(direct):
        regret = d.max() - d[best_fast[i]]
        assert regret < 0.02 * np.ptp(d), f"particle {i}: regret {regret:.1f} of {np.ptp(d):.1f}"
