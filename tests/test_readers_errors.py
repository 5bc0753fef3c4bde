"""Every bad input gives a specific ``otf2d.core.errors`` class whose message names the file."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from particle_files import random_images, star_loop, write_stack, write_star

from otf2d.core.errors import (
    BoxSizeMismatchError,
    IncompleteStackError,
    IndexOutOfRangeError,
    InputError,
    MissingColumnError,
    MissingStackError,
    NonFiniteError,
    PixelSizeError,
)
from otf2d.core.readers import load_batch, read_particle_table, read_stack_header


def _particles(names: list[str], **extra: list[object]) -> str:
    return star_loop("particles", {"rlnImageName": names, "rlnImagePixelSize": [1.0] * len(names), **extra})


def _raises(cls: type[Exception], names_file: Path, fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert str(names_file) in message, message
    return message


def test_missing_column_lists_what_exists(tmp_path: Path) -> None:
    star = write_star(tmp_path / "p.star", star_loop("particles", {"rlnDefocusU": [1.0], "rlnVoltage": [300]}))
    message = _raises(MissingColumnError, star, read_particle_table, star)
    assert "rlnImageName" in message and "rlnDefocusU" in message and "rlnVoltage" in message


def test_missing_optics_group_column_with_several_groups(tmp_path: Path) -> None:
    optics = star_loop("optics", {"rlnOpticsGroup": [1, 2], "rlnImagePixelSize": [1.0, 1.0]})
    star = write_star(tmp_path / "p.star", optics, star_loop("particles", {"rlnImageName": ["1@s.mrcs"]}))
    assert "rlnOpticsGroup" in _raises(MissingColumnError, star, read_particle_table, star)


def test_unknown_optics_group(tmp_path: Path) -> None:
    optics = star_loop("optics", {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0]})
    particles = star_loop("particles", {"rlnImageName": ["1@s.mrcs"], "rlnOpticsGroup": [3]})
    star = write_star(tmp_path / "p.star", optics, particles)
    assert "[3]" in _raises(InputError, star, read_particle_table, star)


def test_missing_stack_names_stack_metadata_and_places(tmp_path: Path) -> None:
    star = write_star(tmp_path / "p.star", _particles(["1@Extract/job1/gone.mrcs"]))
    table = read_particle_table(star)
    message = _raises(MissingStackError, star, load_batch, table, [0])
    assert "Extract/job1/gone.mrcs" in message and str(tmp_path / "Extract/job1/gone.mrcs") in message


def test_index_out_of_range(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "s.mrcs", random_images(5, 16))
    star = write_star(tmp_path / "p.star", _particles(["2@s.mrcs", "6@s.mrcs"]))
    message = _raises(IndexOutOfRangeError, stack, load_batch, read_particle_table(star), slice(None))
    assert "6" in message and "holds 5" in message and str(star) in message


def test_truncated_stack(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "s.mrcs", random_images(5, 16))
    with stack.open("r+b") as fh:
        fh.truncate(1024 + 3 * 16 * 16 * 4 + 100)  # 3 images and a bit
    star = write_star(tmp_path / "p.star", _particles(["1@s.mrcs"]))
    message = _raises(IncompleteStackError, stack, load_batch, read_particle_table(star), [0])
    assert "5 images" in message and "3 complete" in message and str(star) in message


def test_header_claims_more_sections_than_the_file_holds(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "drgnai" / "header_claims_11029_sections.mrcs"
    with mrcfile.open(path, header_only=True) as mrc:
        assert int(mrc.header.nz) == 11029  # what the header claims
    assert "11029" in _raises(IncompleteStackError, path, read_stack_header, path)
    star = write_star(tmp_path / "p.star", _particles([f"1@{path.name}"]))
    table = read_particle_table(star, project_dir=path.parent)
    _raises(IncompleteStackError, path, load_batch, table, [0])


def test_short_header(tmp_path: Path) -> None:
    stack = tmp_path / "s.mrcs"
    stack.write_bytes(bytes(500))
    _raises(IncompleteStackError, stack, read_stack_header, stack)


def test_unsupported_mode(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "c.mrcs", np.zeros((2, 8, 8), dtype=np.complex64))
    assert "mode 4" in _raises(InputError, stack, read_stack_header, stack)


def test_not_an_mrc_file(tmp_path: Path) -> None:
    stack = tmp_path / "s.mrcs"
    stack.write_bytes(b"\xff" * 2048)
    _raises(InputError, stack, read_stack_header, stack)


def test_non_finite_pixels(tmp_path: Path) -> None:
    images = random_images(3, 16)
    images[1, 4, 5] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mrcfile warns about the NaN we put there
        write_stack(tmp_path / "s.mrcs", images)
    star = write_star(tmp_path / "p.star", _particles(["1@s.mrcs", "2@s.mrcs", "3@s.mrcs"]))
    table = read_particle_table(star)
    message = _raises(NonFiniteError, star, load_batch, table, slice(None))
    assert "image 2 of s.mrcs" in message
    assert load_batch(table, [1], check_finite=False).images.shape == (1, 16, 16)


def test_pixel_size_zero_everywhere(tmp_path: Path) -> None:
    write_stack(tmp_path / "s.mrcs", random_images(1, 16))  # header voxel size 0
    optics = star_loop("optics", {"rlnOpticsGroup": [1], "rlnImagePixelSize": [0.0], "rlnVoltage": [300]})
    star = write_star(tmp_path / "p.star", optics, star_loop("particles", {"rlnImageName": ["1@s.mrcs"]}))
    message = _raises(PixelSizeError, star, read_particle_table, star)
    assert "voxel size 0" in message and "pixel_size_angstrom" in message
    # a header that has it is used
    write_stack(tmp_path / "s.mrcs", random_images(1, 16), voxel_size=1.7)
    assert read_particle_table(star).pixel_size_angstrom == pytest.approx(1.7, rel=1e-6)


def test_pixel_size_missing_in_relion30(tmp_path: Path) -> None:
    star = write_star(tmp_path / "p.star", star_loop("", {"rlnImageName": ["1@gone.mrcs"], "rlnVoltage": [300]}))
    assert "no stack header" in _raises(PixelSizeError, star, read_particle_table, star)


def test_unequal_box_sizes_in_one_batch(tmp_path: Path) -> None:
    write_stack(tmp_path / "a.mrcs", random_images(1, 16))
    b = write_stack(tmp_path / "b.mrcs", random_images(1, 24))
    star = write_star(
        tmp_path / "p.star",
        star_loop("", {"rlnImageName": ["1@a.mrcs", "1@b.mrcs"], "rlnImagePixelSize": [1.0, 1.0]}),
    )
    table = read_particle_table(star)
    message = _raises(BoxSizeMismatchError, b, load_batch, table, slice(None))
    assert str(star) in message and "a.mrcs" in message
    assert load_batch(table, [0]).box_size == (16, 16)
    # the table's box comes from the first stack when the file gives none: b is inconsistent with it
    assert "box of" in _raises(BoxSizeMismatchError, b, load_batch, table, [1])


def test_box_differs_from_metadata(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "s.mrcs", random_images(1, 16))
    optics = star_loop("optics", {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.0], "rlnImageSize": [64]})
    star = write_star(tmp_path / "p.star", optics, star_loop("particles", {"rlnImageName": ["1@s.mrcs"]}))
    assert "is 64" in _raises(BoxSizeMismatchError, stack, load_batch, read_particle_table(star), [0])


def test_crlf_line_endings(tmp_path: Path) -> None:
    text = _particles(["1@s.mrcs"]).replace("\n", "\r\n")
    star = tmp_path / "p.star"
    star.write_bytes(text.encode())
    assert "CR+LF" in _raises(InputError, star, read_particle_table, star)


@pytest.mark.parametrize("name", ["p.star", "p.cs", "p.mrcs"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.touch()
    assert "empty" in _raises(InputError, path, read_particle_table, path)


def test_missing_metadata_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.star"
    assert "not found" in _raises(InputError, path, read_particle_table, path)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs 100 5\n2@a.mrcs\n", "cannot parse"),
        ("hello world\nthis is not STAR\n", "no data blocks"),
        ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n1@a.mrcs abc\n", "rlnDefocusU"),
        ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n", "no particle rows"),
        ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\nx@a.mrcs 100\n", "image number"),
        ("data_particles\nloop_\n_rlnImageName\n_rlnDefocusU\n0@a.mrcs 100\n", "1-based"),
    ],
)
def test_unparsable_star(tmp_path: Path, text: str, expect: str) -> None:
    star = tmp_path / "p.star"
    star.write_text(text)
    assert expect in _raises(InputError, star, read_particle_table, star)


def test_binary_file_with_star_name(tmp_path: Path) -> None:
    star = tmp_path / "p.star"
    star.write_bytes(bytes(range(256)) * 4)
    assert "binary" in _raises(InputError, star, read_particle_table, star)


def test_bare_stack_is_not_a_particle_table(shared_data: Path, tmp_path: Path) -> None:
    stack = tmp_path / "sample.mrcs"
    shutil.copyfile(shared_data / "aspire" / "rln_proj_65.mrcs", stack)  # into tmp_path only
    assert "read_stack_images" in _raises(InputError, stack, read_particle_table, stack)


def test_metadata_reads_while_the_stack_is_still_growing(tmp_path: Path) -> None:
    stack = write_stack(tmp_path / "s.mrcs", random_images(4, 16), voxel_size=1.3)
    with stack.open("r+b") as fh:
        fh.truncate(1024 + 2 * 16 * 16 * 4)  # two of four images written so far
    star = write_star(tmp_path / "p.star", star_loop("", {"rlnImageName": ["1@s.mrcs", "4@s.mrcs"]}))
    table = read_particle_table(star)  # box and pixel size come from the header
    assert table.box_size == 16 and table.pixel_size_angstrom == pytest.approx(1.3, rel=1e-6)
    _raises(IncompleteStackError, stack, load_batch, table, [0])


def test_invalid_explicit_values(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "relion31.star"
    with pytest.raises(PixelSizeError, match="pixel_size_angstrom"):
        read_particle_table(path, pixel_size_angstrom=0.0)
    with pytest.raises(InputError, match="voltage_kv"):
        read_particle_table(path, voltage_kv=float("nan"))
