"""otf2d.core.ctf against an independent scalar transcription of RELION's CTF::getCTF, physics, torch-ctf."""

from __future__ import annotations

import math

import numpy as np
import pytest

from otf2d.core.ctf import fft_frequency_grid, relion_ctf_2d, relion_wavelength_angstrom
from otf2d.core.errors import InputError, PixelSizeError
from otf2d.core.particles import CtfParams


def _params(**values: float) -> CtfParams:
    base = {
        "defocus_u_angstrom": 15000.0,
        "defocus_v_angstrom": 15000.0,
        "voltage_kv": 300.0,
        "spherical_aberration_mm": 2.7,
        "amplitude_contrast": 0.1,
    }
    base.update(values)
    return CtfParams.uniform(1, **base)


def _relion_get_ctf_scalar(
    x: float,
    y: float,
    *,
    defocus_u: float,
    defocus_v: float,
    azimuthal_angle: float,
    kv: float,
    cs_mm: float,
    q0: float,
    bfac: float,
    phase_shift: float,
    scale: float,
) -> float:
    """RELION's CTF::initialise + CTF::getCTF(X, Y), literally, one pixel at a time (float64)."""
    local_cs = cs_mm * 1e7
    local_kv = kv * 1e3
    lam = 12.2643247 / math.sqrt(local_kv * (1.0 + local_kv * 0.978466e-6))
    k1 = math.pi / 2.0 * 2.0 * lam
    k2 = math.pi / 2.0 * local_cs * lam * lam * lam
    k3 = math.atan(q0 / math.sqrt(1.0 - q0 * q0))
    k4 = -bfac / 4.0
    k5 = math.radians(phase_shift)
    rad_azimuth = math.radians(azimuthal_angle)
    cos_az, sin_az = math.cos(rad_azimuth), math.sin(rad_azimuth)
    axx = -defocus_u * cos_az * cos_az - defocus_v * sin_az * sin_az
    axy = (defocus_v - defocus_u) * cos_az * sin_az
    ayy = -defocus_u * sin_az * sin_az - defocus_v * cos_az * cos_az
    u2 = x * x + y * y
    u4 = u2 * u2
    gamma = k1 * (axx * x * x + 2.0 * axy * x * y + ayy * y * y) + k2 * u4 - k5 - k3
    retval = -math.sin(gamma)
    retval *= math.exp(k4 * u2)
    return retval * scale


CASES = [
    {"defocus_u_angstrom": 15000.0, "defocus_v_angstrom": 14000.0, "defocus_angle_degrees": 30.0},
    {
        "defocus_u_angstrom": 8000.0,
        "defocus_v_angstrom": 9500.0,
        "defocus_angle_degrees": -160.4,
        "amplitude_contrast": 0.07,
        "voltage_kv": 200.0,
        "spherical_aberration_mm": 0.01,
    },
    {
        "defocus_u_angstrom": 25000.0,
        "defocus_v_angstrom": 24500.0,
        "defocus_angle_degrees": 77.0,
        "phase_shift_degrees": 35.0,
        "bfactor_angstrom2": 120.0,
        "scale": 0.8,
    },
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rfft", [True, False])
def test_matches_scalar_transcription_of_relion(case: dict[str, float], rfft: bool) -> None:
    box, pixel = 48, 1.7
    ctf = _params(**case)
    grid = relion_ctf_2d(ctf, pixel, box, rfft=rfft)
    assert grid.shape == (1, box, box // 2 + 1 if rfft else box)
    assert grid.dtype == np.float64
    rng = np.random.default_rng(3)
    rows = rng.integers(0, box, 40)
    cols = rng.integers(0, grid.shape[2], 40)
    for i, j in zip(rows, cols, strict=True):
        ky = i if i < box // 2 else i - box  # numpy fftfreq
        kx = j if (rfft or j < box // 2) else j - box
        expected = _relion_get_ctf_scalar(
            kx / (box * pixel),
            ky / (box * pixel),
            defocus_u=ctf.defocus_u_angstrom[0],
            defocus_v=ctf.defocus_v_angstrom[0],
            azimuthal_angle=ctf.defocus_angle_degrees[0],
            kv=ctf.voltage_kv[0],
            cs_mm=ctf.spherical_aberration_mm[0],
            q0=ctf.amplitude_contrast[0],
            bfac=ctf.bfactor_angstrom2[0],
            phase_shift=ctf.phase_shift_degrees[0],
            scale=ctf.scale[0],
        )
        assert abs(grid[0, i, j] - expected) < 1e-10


def test_batch_rows_are_the_single_particle_ctfs() -> None:
    parts = [_params(**c) for c in CASES]
    batch = relion_ctf_2d(CtfParams.concatenate(parts), 2.0, 32)
    for k, p in enumerate(parts):
        np.testing.assert_array_equal(batch[k], relion_ctf_2d(p, 2.0, 32)[0])


def test_wavelength_at_300kv() -> None:
    # 0.019687 Å is the textbook relativistic wavelength at 300 kV.
    assert relion_wavelength_angstrom(300.0) == pytest.approx(0.0196875, abs=2e-7)


def test_first_zero_of_round_ctf_at_analytic_radius() -> None:
    # Round CTF, no Cs: γ(u) = -π·λ·Δf·u² - K3, so -sin(γ) = 0 first where π·λ·Δf·u² = π - K3.
    defocus, q0, pixel, box = 20000.0, 0.1, 1.0, 512
    ctf = _params(
        defocus_u_angstrom=defocus,
        defocus_v_angstrom=defocus,
        amplitude_contrast=q0,
        spherical_aberration_mm=0.0,
    )
    lam = float(relion_wavelength_angstrom(300.0))
    k3 = math.atan(q0 / math.sqrt(1 - q0 * q0))
    u_zero = math.sqrt((math.pi - k3) / (math.pi * lam * defocus))
    profile = relion_ctf_2d(ctf, pixel, box)[0, 0, :]  # along +x
    freqs = np.fft.rfftfreq(box) / pixel
    first_sign_change = int(np.flatnonzero(np.diff(np.sign(profile)) != 0)[0])
    assert freqs[first_sign_change] <= u_zero <= freqs[first_sign_change + 1]
    assert profile[0] == pytest.approx(q0, abs=1e-12)  # -sin(-K3) = Q0 at the origin


@pytest.mark.parametrize("direction", [(1, 0), (3, 2), (0, 1), (-2, 5), (-4, -1)])
def test_defocus_u_lies_along_the_defocus_angle(direction: tuple[int, int]) -> None:
    # Along direction φ the CTF equals a round CTF of defocus U; along φ + 90°, one of defocus V.
    # φ is chosen so that the pixels (m·kx, m·ky) lie exactly on that line of the FFT grid.
    kx, ky = direction
    angle = math.degrees(math.atan2(ky, kx))
    u, v, box, pixel = 18000.0, 12000.0, 64, 1.5
    astig = relion_ctf_2d(
        _params(defocus_u_angstrom=u, defocus_v_angstrom=v, defocus_angle_degrees=angle),
        pixel,
        box,
        rfft=False,
    )[0]
    round_u = relion_ctf_2d(_params(defocus_u_angstrom=u, defocus_v_angstrom=u), pixel, box, rfft=False)[0]
    round_v = relion_ctf_2d(_params(defocus_u_angstrom=v, defocus_v_angstrom=v), pixel, box, rfft=False)[0]
    steps = np.arange(1, 6)
    along_u = (steps * ky % box, steps * kx % box)  # [y, x] indices of (m·kx, m·ky)
    along_v = (steps * kx % box, -steps * ky % box)  # rotated by +90°: (-m·ky, m·kx)
    np.testing.assert_allclose(astig[along_u], round_u[along_u], atol=1e-12)
    np.testing.assert_allclose(astig[along_v], round_v[along_v], atol=1e-12)
    assert np.abs(round_u[along_u] - round_v[along_u]).max() > 0.05  # the test can tell U from V


def test_phase_shift_of_90_degrees_turns_sine_into_cosine() -> None:
    # Q0 = 0 and γ0 the phase without shift: CTF_0 = -sin(γ0) and, since K5 is subtracted,
    # CTF_90 = -sin(γ0 - π/2) = cos(γ0): CTF_0² + CTF_90² = 1, and the 90° CTF is 1 at the origin.
    kwargs = {"amplitude_contrast": 0.0, "defocus_v_angstrom": 14000.0, "defocus_angle_degrees": 20.0}
    plain = relion_ctf_2d(_params(**kwargs), 1.2, 64)[0]
    shifted = relion_ctf_2d(_params(phase_shift_degrees=90.0, **kwargs), 1.2, 64)[0]
    np.testing.assert_allclose(plain**2 + shifted**2, 1.0, atol=1e-12)
    assert shifted[0, 0] == pytest.approx(1.0, abs=1e-12)
    xx, yy = fft_frequency_grid(64, 1.2)
    lam = float(relion_wavelength_angstrom(300.0))
    phi = math.radians(20.0)
    c, s = math.cos(phi), math.sin(phi)
    axx, axy, ayy = -15000 * c * c - 14000 * s * s, (14000 - 15000) * c * s, -15000 * s * s - 14000 * c * c
    u2 = xx**2 + yy**2
    gamma0 = math.pi * lam * (axx * xx**2 + 2 * axy * xx * yy + ayy * yy**2) + math.pi / 2 * 2.7e7 * lam**3 * u2**2
    np.testing.assert_allclose(shifted, np.cos(gamma0), atol=1e-10)
    np.testing.assert_allclose(plain, -np.sin(gamma0), atol=1e-10)


def test_bfactor_envelope_and_scale() -> None:
    base = relion_ctf_2d(_params(defocus_v_angstrom=13000.0), 1.1, 40)[0]
    damped = relion_ctf_2d(_params(defocus_v_angstrom=13000.0, bfactor_angstrom2=200.0, scale=0.5), 1.1, 40)[0]
    xx, yy = fft_frequency_grid(40, 1.1)
    np.testing.assert_allclose(damped, 0.5 * base * np.exp(-200.0 / 4.0 * (xx**2 + yy**2)), atol=1e-14)


def test_full_grid_is_consistent_with_rfft_half() -> None:
    ctf = _params(defocus_v_angstrom=12000.0, defocus_angle_degrees=-33.0)
    full = relion_ctf_2d(ctf, 1.3, 36, rfft=False)[0]
    half = relion_ctf_2d(ctf, 1.3, 36)[0]
    np.testing.assert_array_equal(full[:, :18], half[:, :18])
    # CTF(-X, -Y) = CTF(X, Y): column -kx of row ky equals column kx of row -ky (row 18 is the
    # Nyquist row, -18 in NumPy's convention, which has no +18 partner).
    kx = np.arange(1, 18)
    ky = np.delete(np.arange(36), 18)
    np.testing.assert_allclose(full[ky[:, None], (-kx) % 36], half[(-ky[:, None]) % 36, kx], atol=1e-12)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(PixelSizeError):
        relion_ctf_2d(_params(), 0.0, 32)
    with pytest.raises(InputError):
        relion_ctf_2d(_params(), 1.0, 1)
    with pytest.raises(InputError):
        relion_ctf_2d(_params(amplitude_contrast=1.0), 1.0, 32)
    with pytest.raises(InputError):
        relion_ctf_2d(_params(voltage_kv=0.0), 1.0, 32)


def _codata_wavelength_angstrom(voltage_kv: np.ndarray) -> np.ndarray:
    """λ from CODATA 2018 constants, as torch-ctf computes it (RELION uses a rounded formula)."""
    h, c, m0, e = 6.62607015e-34, 299792458.0, 9.1093837015e-31, 1.602176634e-19
    ev = e * voltage_kv * 1e3
    return h * c / np.sqrt(ev * (2 * m0 * c**2 + ev)) * 1e10


def _torch_ctf(ctf: CtfParams, pixel: float, box: int, rfft: bool) -> np.ndarray:
    torch_ctf = pytest.importorskip("torch_ctf")
    torch = pytest.importorskip("torch")
    return (
        torch_ctf.calculate_ctf_2d(  # formats.md §12 mapping
            defocus=torch.as_tensor((ctf.defocus_u_angstrom + ctf.defocus_v_angstrom) / 2e4),
            astigmatism=torch.as_tensor((ctf.defocus_u_angstrom - ctf.defocus_v_angstrom) / 2e4),
            astigmatism_angle=torch.as_tensor(ctf.defocus_angle_degrees),
            voltage=torch.as_tensor(ctf.voltage_kv),
            spherical_aberration=torch.as_tensor(ctf.spherical_aberration_mm),
            amplitude_contrast=torch.as_tensor(ctf.amplitude_contrast),
            phase_shift=torch.as_tensor(ctf.phase_shift_degrees),
            pixel_size=pixel,
            image_shape=(box, box),
            rfft=rfft,
            fftshift=False,
        )
        .double()
        .numpy()
    )


TORCH_CASES = CtfParams.concatenate(
    [
        _params(defocus_u_angstrom=15000.0, defocus_v_angstrom=14000.0, defocus_angle_degrees=30.0),
        _params(
            defocus_u_angstrom=22000.0,
            defocus_v_angstrom=21300.0,
            defocus_angle_degrees=-70.0,
            phase_shift_degrees=40.0,
        ),
        _params(
            defocus_u_angstrom=9000.0,
            defocus_v_angstrom=9000.0,
            amplitude_contrast=0.07,
            voltage_kv=200.0,
            spherical_aberration_mm=0.01,
        ),
        _params(defocus_u_angstrom=25000.0, defocus_v_angstrom=24600.0, defocus_angle_degrees=170.0),
    ]
)


def _without_nyquist_row(a: np.ndarray, box: int) -> np.ndarray:
    """Drop row box/2, where RELION/NumPy and torch-ctf may sign Y differently."""
    keep = np.ones(box, dtype=bool)
    keep[box // 2] = False
    return a[:, keep]


@pytest.mark.parametrize("rfft", [True, False])
def test_agrees_with_torch_ctf_at_simulator_sampling(rfft: bool) -> None:
    # At 4 Å/px (the simulator's default) the two agree to ~2e-4 (formats.md §12).
    box, pixel = 64, 4.0
    ours = relion_ctf_2d(TORCH_CASES, pixel, box, rfft=rfft)
    theirs = _torch_ctf(TORCH_CASES, pixel, box, rfft)
    assert theirs.shape == ours.shape
    max_abs = float(np.abs(_without_nyquist_row(ours - theirs, box)).max())
    print(f"4.0 A/px box 64: max |relion_ctf_2d - torch_ctf| = {max_abs:.3e}")
    assert max_abs < 3e-4


def test_torch_ctf_differs_only_by_its_wavelength() -> None:
    # At fine sampling the difference grows with |γ|: torch-ctf takes λ from CODATA constants,
    # RELION from 12.2643247/√(V(1+0.978466e-6 V)), 6.4e-6 apart (relative) at 300 kV. Bound the
    # difference by the phase error that alone explains, |Δγ| ≤ |K1 term|·ε + |K2 term|·3ε.
    box, pixel = 96, 1.1
    ours = relion_ctf_2d(TORCH_CASES, pixel, box)
    theirs = _torch_ctf(TORCH_CASES, pixel, box, True)
    lam = relion_wavelength_angstrom(TORCH_CASES.voltage_kv)
    eps = np.abs(_codata_wavelength_angstrom(TORCH_CASES.voltage_kv) / lam - 1.0)[:, None, None]
    xx, yy = fft_frequency_grid(box, pixel)
    u2 = xx**2 + yy**2
    dmax = np.maximum(TORCH_CASES.defocus_u_angstrom, TORCH_CASES.defocus_v_angstrom)[:, None, None]
    k1_term = np.pi * lam[:, None, None] * dmax * u2
    k2_term = np.pi / 2 * TORCH_CASES.spherical_aberration_mm[:, None, None] * 1e7 * lam[:, None, None] ** 3 * u2**2
    bound = k1_term * eps + 3 * k2_term * eps + 5e-5  # + float32 rounding inside torch-ctf
    diff = np.abs(ours - theirs)
    max_abs = float(_without_nyquist_row(diff, box).max())
    print(f"1.1 A/px box 96: max |relion_ctf_2d - torch_ctf| = {max_abs:.3e}")
    assert np.all(_without_nyquist_row(diff - bound, box) <= 0)
    assert max_abs > 1e-4  # the wavelength effect is real at this sampling, so the bound is tested
