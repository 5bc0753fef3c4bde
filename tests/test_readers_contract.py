"""One contract, every reader: the same particles written in each format read back the same.

Ground truth: six images in two stacks with known CTF and pixel size, described as a RELION 3.1
``particles.star``, a RELION 3.0 STAR, a per-micrograph ``_extract.star`` (+ ``optics_from``) and a
cryoSPARC ``.cs`` (float32 fields, radians, 0-based indices).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from particle_files import random_images, star_loop, write_cs, write_stack, write_star

from otf2d.core.particles import ParticleBatch, ParticleKey
from otf2d.core.readers import (
    ParticleTable,
    check_stacks,
    iter_batches,
    load_batch,
    read_particle_table,
    read_stack_images,
)

BOX = 16
PIXEL_SIZE = 1.25
STACKS = ["Extract/job3/Movies/a.mrcs"] * 4 + ["Extract/job3/Movies/b.mrcs"] * 2
INDICES = [1, 2, 3, 4, 1, 2]
TRUTH: dict[str, np.ndarray] = {
    "defocus_u_angstrom": np.array([10000.0, 11000.0, 12000.0, 13000.0, 14000.0, 15000.0]),
    "defocus_v_angstrom": np.array([9500.0, 10500.0, 11500.0, 12500.0, 13500.0, 14500.0]),
    "defocus_angle_degrees": np.array([-30.0, 0.0, 15.0, 45.0, 60.0, 90.0]),
    "voltage_kv": np.full(6, 300.0),
    "spherical_aberration_mm": np.full(6, 2.7),
    "amplitude_contrast": np.full(6, 0.1),
    "phase_shift_degrees": np.full(6, 0.0),
    "bfactor_angstrom2": np.full(6, 0.0),
    "scale": np.full(6, 1.0),
}
_CTF_ROWS: dict[str, Sequence[object]] = {
    "rlnDefocusU": TRUTH["defocus_u_angstrom"].tolist(),
    "rlnDefocusV": TRUTH["defocus_v_angstrom"].tolist(),
    "rlnDefocusAngle": TRUTH["defocus_angle_degrees"].tolist(),
}
_OPTICS: dict[str, Sequence[object]] = {
    "rlnOpticsGroup": [1],
    "rlnOpticsGroupName": ["opticsGroup1"],
    "rlnVoltage": [300.0],
    "rlnSphericalAberration": [2.7],
    "rlnAmplitudeContrast": [0.1],
    "rlnImagePixelSize": [PIXEL_SIZE],
    "rlnImageSize": [BOX],
}


def _names() -> list[str]:
    return [f"{i:06d}@{s}" for s, i in zip(STACKS, INDICES, strict=True)]


def _relion31(root: Path) -> tuple[Path, dict[str, Any]]:
    rows: dict[str, Sequence[object]] = {"rlnImageName": _names(), "rlnOpticsGroup": [1] * 6, **_CTF_ROWS}
    particles = star_loop("particles", rows)
    return write_star(root / "Extract/job3/particles.star", star_loop("optics", _OPTICS), particles), {}


def _relion30(root: Path) -> tuple[Path, dict[str, Any]]:
    rows: dict[str, Sequence[object]] = {
        "rlnImageName": _names(),
        **_CTF_ROWS,
        "rlnVoltage": [300] * 6,
        "rlnSphericalAberration": [2.7] * 6,
        "rlnAmplitudeContrast": [0.1] * 6,
        "rlnMagnification": [40000] * 6,
        "rlnDetectorPixelSize": [5.0] * 6,  # 5 µm / 40000 = 1.25 Å
    }
    return write_star(root / "Extract/job3/particles_30.star", star_loop("", rows), version=False), {}


def _extract(root: Path) -> tuple[Path, dict[str, Any]]:
    optics_from, _ = _relion31(root)
    rows: dict[str, Sequence[object]] = {"rlnImageName": _names(), "rlnOpticsGroup": [1] * 6, **_CTF_ROWS}
    path = write_star(root / "Extract/job3/Movies/a_extract.star", star_loop("images", rows))
    return path, {"optics_from": optics_from}


def _cryosparc(root: Path) -> tuple[Path, dict[str, Any]]:
    fields = {
        "blob/path": np.array([">" + s for s in STACKS], dtype="S40"),
        "blob/idx": np.array(INDICES, dtype=np.uint32) - 1,
        "blob/shape": np.full((6, 2), BOX, dtype=np.uint32),
        "blob/psize_A": np.full(6, PIXEL_SIZE, dtype=np.float32),
        "ctf/exp_group_id": np.zeros(6, dtype=np.uint32),
        "ctf/accel_kv": np.full(6, 300.0, dtype=np.float32),
        "ctf/cs_mm": np.full(6, 2.7, dtype=np.float32),
        "ctf/amp_contrast": np.full(6, 0.1, dtype=np.float32),
        "ctf/df1_A": TRUTH["defocus_u_angstrom"].astype(np.float32),
        "ctf/df2_A": TRUTH["defocus_v_angstrom"].astype(np.float32),
        "ctf/df_angle_rad": np.radians(TRUTH["defocus_angle_degrees"]).astype(np.float32),
        "ctf/phase_shift_rad": np.zeros(6, dtype=np.float32),
    }
    return write_cs(root / "J9" / "particles.cs", fields), {"project_dir": root}


WRITERS: dict[str, Callable[[Path], tuple[Path, dict[str, Any]]]] = {
    "relion31": _relion31,
    "relion30": _relion30,
    "relion-extract": _extract,
    "cryosparc": _cryosparc,
}


@pytest.fixture
def images(tmp_path: Path) -> np.ndarray:
    truth = random_images(6, BOX, seed=11)
    write_stack(tmp_path / STACKS[0], truth[:4])
    write_stack(tmp_path / STACKS[4], truth[4:])
    return truth


@pytest.fixture(params=sorted(WRITERS))
def table(request: pytest.FixtureRequest, tmp_path: Path, images: np.ndarray) -> ParticleTable:
    path, kwargs = WRITERS[request.param](tmp_path)
    return read_particle_table(path, session="S", **kwargs)


def test_metadata(table: ParticleTable) -> None:
    assert len(table) == 6
    assert table.keys() == [ParticleKey("S", s, i) for s, i in zip(STACKS, INDICES, strict=True)]
    assert table.pixel_size_angstrom == pytest.approx(PIXEL_SIZE, rel=1e-6)
    assert table.box_size == BOX and table.has_ctf
    for field, expected in TRUTH.items():
        np.testing.assert_allclose(getattr(table.ctf, field), expected, rtol=1e-6, atol=1e-5, err_msg=field)
    assert len({int(g) for g in table.optics_groups}) == 1
    group = table.optics_group(int(table.optics_groups[0]))
    assert (group.voltage_kv, group.image_size) == (300.0, BOX)
    assert group.spherical_aberration_mm == pytest.approx(2.7, rel=1e-6)


def test_images(table: ParticleTable, images: np.ndarray) -> None:
    assert check_stacks(table).ok
    batch = load_batch(table, slice(None))
    assert batch.images.dtype == np.float32 and batch.box_size == (BOX, BOX)
    np.testing.assert_array_equal(batch.images, images)
    np.testing.assert_array_equal(batch.ctf.defocus_u_angstrom, table.ctf.defocus_u_angstrom)
    batches = list(iter_batches(table, 4))
    assert [len(b) for b in batches] == [4, 2]
    np.testing.assert_array_equal(ParticleBatch.concatenate(batches).images, images)
    np.testing.assert_array_equal(load_batch(table.take([5, 0]), slice(None)).images, images[[5, 0]])
    np.testing.assert_array_equal(load_batch(table, np.array([False, True] * 3)).images, images[1::2])


def test_bare_stack_reads_the_same_images(tmp_path: Path, images: np.ndarray) -> None:
    np.testing.assert_array_equal(read_stack_images(tmp_path / STACKS[0]), images[:4])
    np.testing.assert_array_equal(read_stack_images(tmp_path / STACKS[4], [2]), images[5:])
