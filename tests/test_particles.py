"""ParticleBatch and CtfParams: validation, keys, slicing and joining."""

from __future__ import annotations

import numpy as np
import pytest

from otf2d.core.errors import BoxSizeMismatchError, InputError, NonFiniteError, PixelSizeError
from otf2d.core.particles import CtfParams, ParticleBatch, ParticleKey


def make_batch(n: int = 4, box: int = 8, session: str = "s1", dtype: type = np.float32) -> ParticleBatch:
    rng = np.random.default_rng(0)
    return ParticleBatch(
        images=rng.standard_normal((n, box, box)).astype(dtype),
        pixel_size_angstrom=1.5,
        ctf=CtfParams.uniform(n, defocus_u_angstrom=15000.0, voltage_kv=300.0),
        session=session,
        stack_paths=np.array([f"Extract/job005/Movies/mic_{i // 2:05d}.mrcs" for i in range(n)]),
        indices=np.array([i % 2 + 1 for i in range(n)]),
        optics_groups=np.ones(n, dtype=np.int64),
    )


def test_uniform_ctf_takes_relion_defaults() -> None:
    ctf = CtfParams.uniform(3, defocus_u_angstrom=12000.0)
    assert len(ctf) == 3
    np.testing.assert_array_equal(ctf.defocus_v_angstrom, [12000.0] * 3)
    np.testing.assert_array_equal(ctf.voltage_kv, [200.0] * 3)
    np.testing.assert_array_equal(ctf.scale, [1.0] * 3)
    np.testing.assert_array_equal(ctf.spherical_aberration_mm, [0.0] * 3)


def test_keys_and_image_names_are_one_based() -> None:
    b = make_batch()
    assert b.keys()[0] == ParticleKey("s1", "Extract/job005/Movies/mic_00000.mrcs", 1)
    assert b.image_names()[3] == "000002@Extract/job005/Movies/mic_00001.mrcs"
    assert b.box_size == (8, 8)


def test_take_and_concatenate_round_trip() -> None:
    b = make_batch(6)
    parts = [b.take(np.arange(0, 2)), b.take(np.arange(2, 6))]
    joined = ParticleBatch.concatenate(parts)
    np.testing.assert_array_equal(joined.images, b.images)
    assert joined.keys() == b.keys()
    np.testing.assert_array_equal(joined.ctf.defocus_u_angstrom, b.ctf.defocus_u_angstrom)


def test_float16_images_are_kept() -> None:
    assert make_batch(dtype=np.float16).images.dtype == np.float16


def test_unequal_boxes_refuse_to_join() -> None:
    with pytest.raises(BoxSizeMismatchError, match=r"box \(10, 10\)"):
        ParticleBatch.concatenate([make_batch(box=8), make_batch(box=10)])


def test_bad_pixel_size_and_shapes() -> None:
    b = make_batch()
    with pytest.raises(PixelSizeError):
        ParticleBatch(b.images, 0.0, b.ctf, "s", b.stack_paths, b.indices, b.optics_groups)
    with pytest.raises(InputError, match="float32 or float16"):
        ParticleBatch(b.images.astype(np.float64), 1.0, b.ctf, "s", b.stack_paths, b.indices, b.optics_groups)
    with pytest.raises(InputError, match="1-based"):
        ParticleBatch(b.images, 1.0, b.ctf, "s", b.stack_paths, b.indices - 1, b.optics_groups)
    with pytest.raises(InputError, match="entries"):
        ParticleBatch(b.images[:3], 1.0, b.ctf, "s", b.stack_paths, b.indices, b.optics_groups)


def test_non_finite_pixels_name_the_particle() -> None:
    b = make_batch()
    b.images[2, 1, 1] = np.nan
    with pytest.raises(NonFiniteError, match=r"image 1 of Extract/job005/Movies/mic_00001\.mrcs"):
        b.check_finite()


def test_non_finite_ctf_rejected() -> None:
    with pytest.raises(NonFiniteError):
        CtfParams.uniform(2, defocus_u_angstrom=float("inf"))
