"""The engine's CTF (torch-ctf on FFT grids, the direct formula at polar samples) against RELION.

The reference is a NumPy float64 transcription of RELION's ``CTF::getCTF`` written in the tests
(``em_synthetic.relion_ctf_numpy``), independent of the engine's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from em_synthetic import relion_ctf_numpy

from otf2d.core.config import Class2DParams
from otf2d.core.particles import CtfParams
from otf2d.engine.em.classifier import Classifier
from otf2d.engine.em.ctf import CtfTensors, relion_ctf, relion_ctf_grid


def _params() -> CtfParams:
    """Cases that exercise every term: astigmatism both ways (U < V too), angles, phase plate, B, scale."""
    return CtfParams(
        defocus_u_angstrom=np.array([15000.0, 9000.0, 22000.0, 12000.0, 30000.0]),
        defocus_v_angstrom=np.array([14000.0, 11500.0, 22000.0, 11000.0, 29000.0]),
        defocus_angle_degrees=np.array([30.0, -160.4, 0.0, 95.0, 45.0]),
        voltage_kv=np.array([300.0, 200.0, 300.0, 120.0, 300.0]),
        spherical_aberration_mm=np.array([2.7, 0.01, 2.7, 1.4, 2.7]),
        amplitude_contrast=np.array([0.1, 0.07, 0.1, 0.1, 0.0]),
        phase_shift_degrees=np.array([0.0, 0.0, 90.0, 0.0, 30.0]),
        bfactor_angstrom2=np.array([0.0, 50.0, 0.0, 0.0, 120.0]),
        scale=np.array([1.0, 0.8, 1.0, 1.0, 1.2]),
    )


@pytest.mark.parametrize("rfft", [True, False])
@pytest.mark.parametrize(("box", "pixel"), [(64, 1.3), (48, 2.1)])
def test_torch_ctf_grid_matches_relion(rfft: bool, box: int, pixel: float) -> None:
    ctf = _params()
    got = relion_ctf_grid(CtfTensors.from_params(ctf), box, pixel, rfft=rfft).numpy()
    fy = np.fft.fftfreq(box) / pixel
    fx = (np.fft.rfftfreq(box) if rfft else np.fft.fftfreq(box)) / pixel
    yy, xx = np.meshgrid(fy, fx, indexing="ij")
    want = relion_ctf_numpy(ctf, xx, yy)
    assert got.shape == want.shape
    assert np.all(np.isfinite(got)), "torch-ctf returned NaN (U < V not handled?)"
    # torch-ctf computes the wavelength from physical constants in float32: γ differs from
    # RELION's by ~1e-5 relative, up to ~3e-3 in the CTF where γ is hundreds of radians (the
    # highest frequencies at 3 µm defocus). RELION takes the Nyquist row as +box/2 and numpy as
    # -box/2; astigmatism makes the CTF odd in Y only there, so it gets a looser bound.
    body = np.ones(box, dtype=bool)
    body[box // 2] = False
    np.testing.assert_allclose(got[:, body], want[:, body], atol=3e-3)
    low = np.hypot(xx, yy) < 0.25 / pixel  # up to half Nyquist: float32 precision proper
    np.testing.assert_allclose(got[:, low], want[:, low], atol=5e-4)
    assert np.abs(got - want).max() < 0.05


def test_direct_ctf_matches_relion_at_arbitrary_frequencies() -> None:
    ctf = _params()
    rng = np.random.default_rng(0)
    fx = rng.uniform(-0.25, 0.25, (7, 11))
    fy = rng.uniform(-0.25, 0.25, (7, 11))
    got = relion_ctf(CtfTensors.from_params(ctf), torch.as_tensor(fx), torch.as_tensor(fy)).numpy()
    want = relion_ctf_numpy(ctf, fx, fy)
    np.testing.assert_allclose(got, want, atol=1e-10)
    got32 = relion_ctf(
        CtfTensors.from_params(ctf), torch.as_tensor(fx, dtype=torch.float32), torch.as_tensor(fy, dtype=torch.float32)
    ).numpy()
    np.testing.assert_allclose(got32, want, atol=2e-4)


def test_polar_ctf_of_the_classifier_matches_relion() -> None:
    ctf = _params()
    clf = Classifier(Class2DParams(n_classes=2, max_resolution_angstrom=4.0), 64, 1.5, dtype=torch.float64)
    got = clf.polar_ctf(CtfTensors.from_params(ctf)).numpy()
    fx, fy = clf.grid.frequencies_per_angstrom(clf.geometry.internal_pixel_angstrom)
    want = relion_ctf_numpy(ctf, fx.numpy(), fy.numpy())
    np.testing.assert_allclose(got, want, atol=1e-9)
    # Low frequencies are positive with RELION's sign: positive density stays positive.
    assert np.all(got[:, 1, :] > 0)
