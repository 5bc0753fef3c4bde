"""otf2d.simulator.projection: conventions pinned against RELION's own projections, and exact physics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from otf2d.core.ctf import relion_ctf_2d
from otf2d.core.errors import InputError
from otf2d.core.particles import CtfParams
from otf2d.simulator.phantom import decoy_phantom, project_blobs, protein_phantom, render_blobs
from otf2d.simulator.projection import (
    euler_matrix_relion,
    prepare_volume,
    project,
    project_fourier,
    viewing_direction,
)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_relion_reference_projections_of_the_ribosome(shared_data: Path) -> None:
    """ASPIRE's 5 RELION projections of the 65³ ribosome at the angles of rln_proj_65.star."""
    volume = mrcfile.read(shared_data / "aspire" / "clean70SRibosome_vol_65p.mrc")
    reference = mrcfile.read(shared_data / "aspire" / "rln_proj_65.mrcs").astype(np.float64)
    angles = starfile.read(shared_data / "aspire" / "rln_proj_65.star")
    assert np.all(angles["rlnOriginXAngst"] == 0) and np.all(angles["rlnOriginYAngst"] == 0)
    spectrum = prepare_volume(volume, 1.0)
    rot, tilt, psi = angles["rlnAngleRot"], angles["rlnAngleTilt"], angles["rlnAnglePsi"]
    # relion_project puts the centre of an odd box at n//2 + 1 (CenterFFT of an odd size; ASPIRE's
    # tests apply the same one-pixel offset): an origin of -1 px moves our centre there.
    ours = project(spectrum, rot, tilt, psi, 65, 1.0, origin_x_angstrom=-1.0, origin_y_angstrom=-1.0)
    correlations = [_pearson(a, b) for a, b in zip(ours, reference, strict=True)]
    print("Pearson vs RELION rln_proj_65:", [f"{c:.6f}" for c in correlations])
    assert min(correlations) > 0.9999
    assert ours.std() / reference.std() == pytest.approx(1.0, abs=1e-3)  # same units as RELION
    # The offset is real, and A (not Aᵀ) is the right matrix: both alternatives fail clearly.
    centred = project(spectrum, rot, tilt, psi, 65, 1.0)
    assert max(_pearson(a, b) for a, b in zip(centred, reference, strict=True)) < 0.95
    transposed = np.swapaxes(euler_matrix_relion(rot, tilt, psi), 1, 2)
    f = project_fourier(spectrum, transposed, 65, 1.0)
    wrong = np.roll(np.fft.irfft2(f, s=(65, 65)), (33, 33), axis=(1, 2))
    assert max(_pearson(a, b) for a, b in zip(wrong, reference, strict=True)) < 0.6


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_project") is None, reason="relion_project is not on PATH")
def test_relion_project_on_an_even_box_with_origins_and_ctf(tmp_path: Path) -> None:
    """relion_project (RELION 3.1.3) of the phantom: angles, origin sign and CTF all agree."""
    box, pixel = 64, 4.0
    volume = render_blobs(protein_phantom(), box, pixel)
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(volume.astype(np.float32))
        mrc.voxel_size = pixel
    rows = pd.DataFrame(
        {
            "rlnImageName": [f"{i:06d}@dummy.mrcs" for i in range(1, 7)],
            "rlnAngleRot": [10.0, -60.0, 130.0, 130.0, 0.0, 250.0],
            "rlnAngleTilt": [20.0, 110.0, 75.0, 75.0, 0.0, 95.0],
            "rlnAnglePsi": [30.0, 200.0, -40.0, -40.0, 0.0, 12.0],
            "rlnOriginXAngst": [0.0, 0.0, 12.0, 0.0, -6.0, 5.2],
            "rlnOriginYAngst": [0.0, 0.0, 0.0, -8.0, 10.0, -3.4],
            "rlnOpticsGroup": [1] * 6,
            "rlnDefocusU": [15000.0, 22000.0, 9000.0, 9000.0, 18000.0, 12500.0],
            "rlnDefocusV": [14000.0, 21500.0, 8700.0, 8700.0, 16000.0, 12400.0],
            "rlnDefocusAngle": [30.0, -70.0, 115.0, 115.0, 0.0, 63.0],
        }
    )
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [pixel],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    starfile.write({"optics": optics, "particles": rows}, tmp_path / "angles.star")
    for name, extra in (("plain", []), ("ctf", ["--ctf"])):
        subprocess.run(
            ["relion_project", "--i", "map.mrc", "--o", name, "--ang", "angles.star", "--angpix", str(pixel), *extra],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=120,
        )
    plain = mrcfile.read(tmp_path / "plain.mrcs").astype(np.float64)
    with_ctf = mrcfile.read(tmp_path / "ctf.mrcs").astype(np.float64)
    spectrum = prepare_volume(volume, pixel)
    ours = project(
        spectrum,
        rows.rlnAngleRot,
        rows.rlnAngleTilt,
        rows.rlnAnglePsi,
        box,
        pixel,
        origin_x_angstrom=rows.rlnOriginXAngst,
        origin_y_angstrom=rows.rlnOriginYAngst,
    )
    ctf = CtfParams.concatenate(
        [
            CtfParams.uniform(
                1,
                defocus_u_angstrom=r.rlnDefocusU,
                defocus_v_angstrom=r.rlnDefocusV,
                defocus_angle_degrees=r.rlnDefocusAngle,
                voltage_kv=300.0,
                spherical_aberration_mm=2.7,
                amplitude_contrast=0.1,
            )
            for r in rows.itertuples()
        ]
    )
    ours_ctf = np.fft.irfft2(np.fft.rfft2(ours) * relion_ctf_2d(ctf, pixel, box), s=(box, box))
    c_plain = [_pearson(a, b) for a, b in zip(ours, plain, strict=True)]
    c_ctf = [_pearson(a, b) for a, b in zip(ours_ctf, with_ctf, strict=True)]
    print(
        "Pearson vs relion_project:",
        "1 - r =",
        [f"{1 - c:.1e}" for c in c_plain],
        "with CTF:",
        [f"{1 - c:.1e}" for c in c_ctf],
    )
    assert min(c_plain) > 0.9999
    assert min(c_ctf) > 0.9999
    # Same gridding correction and trilinear interpolation as RELION's projector: equal to
    # float32 precision (measured 8.5e-7 of the maximum).
    assert np.abs(ours - plain).max() < 1e-5 * np.abs(plain).max()
    # The opposite origin sign is clearly wrong (rows 3-6 are shifted).
    flipped = project(
        spectrum,
        rows.rlnAngleRot,
        rows.rlnAngleTilt,
        rows.rlnAnglePsi,
        box,
        pixel,
        origin_x_angstrom=-rows.rlnOriginXAngst,
        origin_y_angstrom=-rows.rlnOriginYAngst,
    )
    assert max(_pearson(a, b) for a, b in zip(flipped[2:], plain[2:], strict=True)) < 0.9


@pytest.mark.parametrize(("box", "pixel", "voxel"), [(64, 4.0, 4.0), (48, 5.3, 4.0), (72, 3.0, 4.0)])
def test_fourier_slice_matches_exact_gaussian_projections(box: int, pixel: float, voxel: float) -> None:
    """Projections of Gaussian blobs are known in closed form; the map may be resampled."""
    blobs = protein_phantom()
    spectrum = prepare_volume(render_blobs(blobs, 64, voxel), voxel)
    rng = np.random.default_rng(4)
    rot, tilt, psi = rng.uniform(-180, 180, 8), np.degrees(np.arccos(rng.uniform(-1, 1, 8))), rng.uniform(-180, 180, 8)
    ours = project(spectrum, rot, tilt, psi, box, pixel)
    exact = project_blobs(blobs, euler_matrix_relion(rot, tilt, psi), box, pixel, voxel_size_angstrom=voxel)
    assert min(_pearson(a, b) for a, b in zip(ours, exact, strict=True)) > 0.9999
    assert np.abs(ours - exact).max() < 0.02 * exact.max()


def test_origin_moves_the_particle_centre_to_box_centre_minus_origin() -> None:
    box, pixel = 64, 2.0
    spectrum = prepare_volume(render_blobs(protein_phantom(), box, pixel), pixel)
    centred = project(spectrum, 20.0, 70.0, -15.0, box, pixel)[0]
    moved = project(spectrum, 20.0, 70.0, -15.0, box, pixel, origin_x_angstrom=6.0, origin_y_angstrom=-10.0)[0]
    # +6 Å in x = +3 px: the centre goes to -3 px; -10 Å in y = -5 px: the centre goes to +5 px.
    np.testing.assert_allclose(moved, np.roll(centred, (5, -3), axis=(0, 1)), atol=1e-9 * np.abs(centred).max())


def test_euler_matrices_are_relions() -> None:
    np.testing.assert_allclose(euler_matrix_relion(0, 0, 0)[0], np.eye(3), atol=1e-15)
    # rot = 90°: RELION's A maps x to -y (A(1,0) = -sin(rot)).
    np.testing.assert_allclose(euler_matrix_relion(90, 0, 0)[0], [[0, 1, 0], [-1, 0, 0], [0, 0, 1]], atol=1e-15)
    # tilt = 90°: z goes to -x (A(0,2) = -sin(tilt)).
    np.testing.assert_allclose(euler_matrix_relion(0, 90, 0)[0], [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-15)
    rng = np.random.default_rng(0)
    a = euler_matrix_relion(*rng.uniform(-180, 180, (3, 50)))
    np.testing.assert_allclose(a @ np.swapaxes(a, 1, 2), np.broadcast_to(np.eye(3), (50, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(a), 1.0, atol=1e-12)
    # ZYZ composition: A(rot, tilt, psi) = A(0, 0, psi) · A(0, tilt, 0) · A(rot, 0, 0).
    rot, tilt, psi = 33.0, 71.0, -122.0
    composed = (
        euler_matrix_relion(0, 0, psi)[0] @ euler_matrix_relion(0, tilt, 0)[0] @ euler_matrix_relion(rot, 0, 0)[0]
    )
    np.testing.assert_allclose(euler_matrix_relion(rot, tilt, psi)[0], composed, atol=1e-12)


def test_viewing_direction_is_the_third_row_and_ignores_psi() -> None:
    rng = np.random.default_rng(1)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 20))
    np.testing.assert_allclose(viewing_direction(rot, tilt), euler_matrix_relion(rot, tilt, psi)[:, 2, :], atol=1e-12)


def test_protein_phantom_is_asymmetric() -> None:
    """No 2-fold axis along x, y or z and no mirror: views of the phantom are distinguishable."""
    vol = render_blobs(protein_phantom(), 48, 5.0)
    core = vol[1:, 1:, 1:]  # drop the first plane so that flips keep the centre (box even)
    for flipped in (core[:, ::-1, ::-1], core[::-1, :, ::-1], core[::-1, ::-1, :], core[:, :, ::-1]):
        assert _pearson(core, flipped) < 0.8
    protein = project(
        prepare_volume(render_blobs(protein_phantom(), 64, 4.0), 4.0), [0, 90, 0, 180], [0, 0, 90, 90], 0, 64, 4.0
    )
    assert max(_pearson(protein[0], p) for p in protein[1:]) < 0.9


def test_batches_equal_single_projections() -> None:
    spectrum = prepare_volume(render_blobs(decoy_phantom(), 32, 5.0), 5.0)
    rng = np.random.default_rng(2)
    rot, tilt, psi = rng.uniform(-180, 180, (3, 5))
    batch = project(spectrum, rot, tilt, psi, 32, 5.0)
    for i in range(5):
        np.testing.assert_allclose(batch[i], project(spectrum, rot[i], tilt[i], psi[i], 32, 5.0)[0], atol=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(InputError):
        prepare_volume(np.zeros((4, 4, 5)), 1.0)
    with pytest.raises(InputError):
        prepare_volume(np.full((4, 4, 4), np.nan), 1.0)
    with pytest.raises(InputError):
        prepare_volume(np.zeros((4, 4, 4)), 0.0)
    spectrum = prepare_volume(np.zeros((8, 8, 8)), 1.0)
    with pytest.raises(InputError):
        project_fourier(spectrum, np.eye(3), 8, 1.0)
