"""The engine's psi and origin conventions are RELION's: pinned against ``relion_project``.

A 2D template is put into the central plane of a thin 3D volume, so that RELION's projection at
``rot = tilt = 0`` is the template turned by ``rlnAnglePsi`` and shifted by ``rlnOriginX/YAngst``.
The classifier, given the template as its only class, must read those values back. The synthetic
particle generator of the tests is checked against the same projections.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from em_synthetic import random_templates, render

from otf2d.core.config import Class2DParams
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.engine.em.classifier import Classifier

BOX = 48
PIXEL = 2.0
#: (psi°, origin x Å, origin y Å). Shifts are searched on a class-frame grid, whose points map to
#: the particle frame by R(−ψ): with ψ a multiple of 90° the RELION origins are grid points.
CASES = [
    (0.0, 0.0, 0.0),
    (30.0, 0.0, 0.0),
    (-70.0, 0.0, 0.0),
    (0.0, 4.0, 0.0),
    (0.0, 0.0, -6.0),
    (90.0, 4.0, -2.0),
    (180.0, -2.0, 6.0),
    (-90.0, 6.0, 4.0),
]

pytestmark = pytest.mark.skipif(shutil.which("relion_project") is None, reason="relion_project not installed")


@pytest.fixture(scope="module")
def projections(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    tmp = tmp_path_factory.mktemp("relion")
    template = render(random_templates(1, BOX, np.random.default_rng(3))[0], BOX)
    vol = np.zeros((BOX, BOX, BOX), dtype=np.float32)
    vol[BOX // 2] = template
    with mrcfile.new(tmp / "vol.mrc") as m:
        m.set_data(vol)
        m.voxel_size = PIXEL
    rows = "\n".join(f"0 0 {psi} {ox} {oy} 1" for psi, ox, oy in CASES)
    (tmp / "ang.star").write_text(
        "data_optics\nloop_\n_rlnOpticsGroup\n_rlnImagePixelSize\n_rlnVoltage\n_rlnSphericalAberration\n"
        f"_rlnAmplitudeContrast\n_rlnImageSize\n_rlnImageDimensionality\n1 {PIXEL} 300 2.7 0.1 {BOX} 2\n\n"
        "data_particles\nloop_\n_rlnAngleRot\n_rlnAngleTilt\n_rlnAnglePsi\n_rlnOriginXAngst\n"
        f"_rlnOriginYAngst\n_rlnOpticsGroup\n{rows}\n"
    )
    subprocess.run(
        ["relion_project", "--i", "vol.mrc", "--o", "proj", "--ang", "ang.star"],
        cwd=tmp,
        check=True,
        capture_output=True,
    )
    images = mrcfile.read(Path(tmp) / "proj.mrcs").astype(np.float32)
    return template, images


def test_synthetic_generator_matches_relion_project(projections: tuple[np.ndarray, np.ndarray]) -> None:
    _, images = projections
    template = random_templates(1, BOX, np.random.default_rng(3))[0]
    for (psi, ox, oy), image in zip(CASES, images, strict=True):
        ours = render(template, BOX, psi, (ox / PIXEL, oy / PIXEL))
        cc = np.corrcoef(ours.ravel(), image.ravel())[0, 1]
        assert cc > 0.98, f"psi={psi}, origin=({ox}, {oy}): correlation {cc:.3f}"


def test_classifier_reads_back_relion_psi_and_origin(projections: tuple[np.ndarray, np.ndarray]) -> None:
    template, images = projections
    n = len(images)
    noisy = images + np.random.default_rng(0).normal(0, 0.05 * images.max(), images.shape).astype(np.float32)
    batch = ParticleBatch(
        images=noisy,
        pixel_size_angstrom=PIXEL,
        ctf=CtfParams.uniform(n, defocus_u_angstrom=0.0, amplitude_contrast=0.999),
        session="relion",
        stack_paths=np.array(["proj.mrcs"] * n),
        indices=np.arange(1, n + 1),
        optics_groups=np.ones(n, dtype=np.int64),
    )
    params = Class2DParams(
        n_classes=1,
        max_resolution_angstrom=2 * PIXEL,
        in_plane_step_degrees=10.0,
        max_shift_angstrom=8 * PIXEL,
        per_particle_scale=True,
    )
    clf = Classifier(params, BOX, PIXEL, dtype=torch.float64)
    clf.estimate_noise(batch)
    clf.set_class_images(torch.as_tensor(template[None]))
    got = clf.assign(batch)
    for i, (psi, ox, oy) in enumerate(CASES):
        dpsi = (float(got.psi_degrees[i]) - psi + 180.0) % 360.0 - 180.0
        assert abs(dpsi) < 1e-6, f"case {i}: psi {float(got.psi_degrees[i])} instead of {psi}"
        err = np.hypot(float(got.origin_x_angstrom[i]) - ox, float(got.origin_y_angstrom[i]) - oy)
        assert err < 1e-6, f"case {i}: origin ({got.origin_x_angstrom[i]}, {got.origin_y_angstrom[i]}) Å"
