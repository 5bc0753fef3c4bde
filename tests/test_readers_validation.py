"""Issue 13: nothing physically absurd, cut short or unsafe is accepted silently by the readers.

Every case of the issue's "Silently wrong input accepted" paragraph, plus the reader half of the
streamer's loop-killers, on real files (the cryoDRGN / ASPIRE particles in ../shared/data, copied
into a temporary project and damaged there) written and read back with starfile / mrcfile / numpy.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from particle_files import random_images, star_loop, write_cs, write_stack, write_star

from otf2d.core.errors import (
    IncompleteFileError,
    InputError,
    MissingStackError,
    UnsafePathError,
    ValueRangeError,
)
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers import check_stacks, load_batch, read_particle_table, read_stack_header


def _raises(cls: type[Exception], path: Path, *args: object, **kwargs: object) -> str:
    """Read ``path``; the error must be ``cls`` and name the file."""
    with pytest.raises(cls) as info:
        read_particle_table(path, *args, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert str(path) in message, message
    return message


@pytest.fixture
def empiar(shared_data: Path, tmp_path: Path) -> Path:
    """The 7 real EMPIAR-10076 particles (RELION 3.0 STAR, no optics table) in a temporary folder."""
    for name in ("empiar_10076_7.star", "empiar_10076_7.mrc", "empiar_10076_7.cs"):
        shutil.copyfile(shared_data / "cryodrgn" / name, tmp_path / name)
    return tmp_path / "empiar_10076_7.star"


def _rewrite(star: Path, **changes: object) -> Path:
    """Read ``star`` with starfile, set/drop columns (``None`` drops), write it back (a real STAR file)."""
    table = starfile.read(star, parse_as_string=["rlnImageName", "rlnMicrographName"])
    for column, value in changes.items():
        if value is None:
            table = table.drop(columns=[column])
        else:
            table[column] = value
    starfile.write(table, star)
    return star


# ----------------------------------------------------------------- cut short


def test_star_cut_inside_a_number_is_incomplete_never_parsed(empiar: Path) -> None:
    text = empiar.read_bytes()
    good = read_particle_table(empiar)
    assert len(good) == 7 and good.ctf.defocus_u_angstrom[-1] == pytest.approx(15177.4)
    last_row = text.rstrip(b"\n").rsplit(b"\n", 1)[1]
    cut = text.rstrip(b"\n")[: -len(last_row) + last_row.index(b"15177.4") + 3]  # "...7@empiar_10076_7.mrc 7 151"
    empiar.write_bytes(cut)
    message = _raises(IncompleteFileError, empiar)
    assert "cut short" in message
    empiar.write_bytes(text)  # the writer finishes: the same file reads in full
    np.testing.assert_array_equal(read_particle_table(empiar).ctf.defocus_u_angstrom, good.ctf.defocus_u_angstrom)


def test_star_row_with_missing_values_names_the_row(empiar: Path) -> None:
    lines = empiar.read_text().splitlines(keepends=True)
    row3 = next(k for k, line in enumerate(lines) if line.startswith("3@"))
    lines[row3] = " ".join(lines[row3].split()[:4]) + "\n"
    empiar.write_text("".join(lines))
    message = _raises(InputError, empiar)
    assert "row 3" in message and "4 value(s) for 10 columns" in message


def test_cs_cut_short_is_incomplete(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    full = cs.read_bytes()
    record = np.load(cs).dtype.itemsize
    cs.write_bytes(full[: len(full) - record - 17])  # the last record and a bit of the one before
    message = _raises(IncompleteFileError, cs)
    assert "5 complete record(s)" in message
    cs.write_bytes(full + b"\0" * 8)
    assert "more than its .npy header" in _raises(InputError, cs)


# ----------------------------------------------------------------- optics and CTF


def test_no_optics_and_no_voltage_is_an_error_unless_given(empiar: Path) -> None:
    _rewrite(empiar, rlnVoltage=None)
    message = _raises(InputError, empiar)
    assert "no data_optics and no rlnVoltage" in message and "--voltage" in message
    table = read_particle_table(empiar, voltage_kv=300.0)
    assert (table.ctf.voltage_kv == 300.0).all() and (table.ctf.spherical_aberration_mm == 2.7).all()


def test_cs_without_voltage_is_an_error(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    records = np.load(cs)
    names = [n for n in records.dtype.names or () if n != "ctf/accel_kv"]
    write_cs(cs, {n: records[n] for n in names})
    assert "ctf/accel_kv" in _raises(InputError, cs)
    assert (read_particle_table(cs, voltage_kv=300.0).ctf.voltage_kv == 300.0).all()


def test_defocus_v_without_u(empiar: Path) -> None:
    _rewrite(empiar, rlnDefocusU=None)
    assert "rlnDefocusV but no rlnDefocusU" in _raises(InputError, empiar)


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("rlnVoltage", 0.0, "0 is outside the physical range 60–400 kV"),
        ("rlnVoltage", -300.0, "-300 is outside"),
        ("rlnVoltage", 3_000_000.0, "3e+06 is outside"),
        ("rlnAmplitudeContrast", 2.0, "2 is outside the physical range 0 ≤ value < 1"),
        ("rlnAmplitudeContrast", -0.1, "-0.1 is outside"),
        ("rlnSphericalAberration", 27.0, "27 is outside the physical range 0–10 mm"),
    ],
)
def test_absurd_particle_values_name_file_row_and_column(empiar: Path, column: str, value: float, shown: str) -> None:
    table = starfile.read(empiar, parse_as_string=["rlnImageName"])
    values = table[column].to_numpy(dtype=float).copy()
    values[4] = value  # row 5
    _rewrite(empiar, **{column: values})
    message = _raises(ValueRangeError, empiar)
    assert shown in message and "row 5" in message and f"column {column} of data_" in message


def test_absurd_optics_value_names_the_optics_row(shared_data: Path, tmp_path: Path) -> None:
    star = tmp_path / "relion31.star"
    blocks = starfile.read(shared_data / "cryodrgn" / "relion31.star", always_dict=True)
    blocks["optics"]["rlnVoltage"] = [3_000_000.0]
    starfile.write(blocks, star)
    message = _raises(ValueRangeError, star, project_dir=tmp_path)
    assert "row 1, column rlnVoltage of data_optics" in message
    # an explicit value wins over the file, and is itself checked
    assert (read_particle_table(star, project_dir=tmp_path, voltage_kv=300.0).ctf.voltage_kv == 300.0).all()
    with pytest.raises(ValueRangeError, match="voltage_kv=3000 given explicitly"):
        read_particle_table(star, project_dir=tmp_path, voltage_kv=3000.0)


def test_absurd_cs_values(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    records = np.load(cs)
    records["ctf/amp_contrast"][2] = 2.0
    write_cs(cs, {n: records[n] for n in records.dtype.names or ()})
    assert "row 3, field ctf/amp_contrast: 2 is outside" in _raises(ValueRangeError, cs)


def test_negative_pixel_size(empiar: Path) -> None:
    _rewrite(empiar, rlnMagnification=-38168.0)
    assert "negative" in _raises(ValueRangeError, empiar)


# ----------------------------------------------------------------- indices and stacks


def test_image_index_beyond_any_stack(empiar: Path) -> None:
    text = empiar.read_text().replace("\n4@empiar_10076_7.mrc", "\n99999999999999999999@empiar_10076_7.mrc")
    empiar.write_text(text)
    message = _raises(ValueRangeError, empiar)
    assert "row 4" in message and "99999999999999999999" in message and "MRC stack can hold" in message


def test_stack_larger_than_its_header_says(empiar: Path) -> None:
    stack = empiar.with_suffix(".mrc")
    with stack.open("ab") as fh:
        fh.write(bytes(320 * 320 * 4))  # one more image's bytes, header unchanged
    with pytest.raises(InputError, match="bytes more than the header says") as info:
        read_stack_header(stack)
    assert str(stack) in str(info.value)
    table = read_particle_table(empiar)
    assert not check_stacks(table).ok and "more than the header" in check_stacks(table).problems["empiar_10076_7.mrc"]


def test_blank_images_are_found(empiar: Path) -> None:
    stack = empiar.with_suffix(".mrc")
    with mrcfile.open(stack, mode="r+") as mrc:
        mrc.data[2] = 0.0
        mrc.data[5] = 3.5  # constant, not zero
    batch: ParticleBatch = load_batch(read_particle_table(empiar), slice(None))
    assert batch.blank_mask().tolist() == [False, False, True, False, False, True, False]


def test_duplicated_rows_are_dropped_once_with_a_warning(empiar: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = empiar.read_text().splitlines(keepends=True)
    rows = [line for line in lines if "@empiar" in line]
    repeated = [rows[k % 7] for k in range(20)]  # 20 repeated rows
    empiar.write_text("".join(lines) + "".join(repeated))
    with caplog.at_level(logging.WARNING):
        table = read_particle_table(empiar)
    assert len(table) == 7 and table.duplicates_dropped == 20
    assert table.indices.tolist() == list(range(1, 8))
    assert "20 row(s) repeat an earlier particle" in caplog.text and "row 8" in caplog.text


def test_stack_path_leaving_the_project_is_refused(empiar: Path) -> None:
    text = empiar.read_text().replace("\n2@empiar_10076_7.mrc", "\n2@../../etc/passwd")
    empiar.write_text(text)
    message = _raises(UnsafePathError, empiar)
    assert "row 2" in message and "../../etc/passwd" in message and "leaves the project directory" in message
    text = text.replace("2@../../etc/passwd", "2@/etc/passwd")
    empiar.write_text(text)
    assert "/etc/passwd" in _raises(UnsafePathError, empiar)


def test_cs_stack_path_leaving_the_project_is_refused(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    records = np.load(cs)
    records["blob/path"][1] = b"../../../etc/passwd"
    write_cs(cs, {n: records[n] for n in records.dtype.names or ()})
    assert "row 2" in _raises(UnsafePathError, cs)


def _extract_job(root: Path, n_stacks: int) -> Path:
    """``Extract/job007/particles.star`` over ``n_stacks`` real-particle stacks in ``Movies/``."""
    names = []
    for k in range(n_stacks):
        write_stack(root / f"Extract/job007/Movies/mic{k}.mrcs", random_images(2, 16, seed=k))
        names += [f"{i:06d}@Extract/job007/Movies/mic{k}.mrcs" for i in (1, 2)]
    optics = star_loop("optics", {"rlnOpticsGroup": [1], "rlnImagePixelSize": [1.5], "rlnVoltage": [300]})
    particles = star_loop("particles", {"rlnImageName": names, "rlnDefocusU": [9000.0] * len(names)})
    return write_star(root / "Extract/job007/particles.star", optics, particles)


def test_project_dir_comes_from_the_job_layout_not_row_one(tmp_path: Path) -> None:
    star = _extract_job(tmp_path, 3)
    (tmp_path / "Extract/job007/Movies/mic0.mrcs").unlink()  # row 1's stack is missing
    table = read_particle_table(star)
    assert table.project_dir == tmp_path.resolve()
    check = check_stacks(table)
    assert check.missing == ["Extract/job007/Movies/mic0.mrcs"]
    assert check.found == ["Extract/job007/Movies/mic1.mrcs", "Extract/job007/Movies/mic2.mrcs"]
    # outside a job directory, any existing stack (not only row 1's) locates the project
    flat = tmp_path / "elsewhere" / "deep"
    shutil.copytree(tmp_path / "Extract", tmp_path / "elsewhere" / "Extract")
    moved = flat / "p.star"
    flat.mkdir()
    shutil.copyfile(star, moved)
    assert read_particle_table(moved).project_dir == (tmp_path / "elsewhere").resolve()


def test_directory_and_symlink_loop_are_named_as_such(tmp_path: Path) -> None:
    star = _extract_job(tmp_path, 2)
    directory = tmp_path / "dir.star"
    directory.mkdir()
    assert "is a directory" in _raises(InputError, directory)
    loop = tmp_path / "loop.star"
    os.symlink(loop, loop)
    assert "symbolic link loop" in _raises(InputError, loop)
    loop_cs = tmp_path / "loop.cs"
    os.symlink(loop_cs, loop_cs)
    assert "symbolic link loop" in _raises(InputError, loop_cs)
    # a stack that is a directory or a link loop is not "missing" (it will not appear by waiting)
    stack = tmp_path / "Extract/job007/Movies/mic1.mrcs"
    stack.unlink()
    os.symlink(stack, stack)
    table = read_particle_table(star)
    with pytest.raises(InputError, match="symbolic link loop") as info:
        load_batch(table, slice(None))
    assert not isinstance(info.value, MissingStackError)
    assert "symbolic link loop" in check_stacks(table).problems["Extract/job007/Movies/mic1.mrcs"]
    stack.unlink()
    stack.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        load_batch(read_particle_table(star), [2])


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("data_optics\nloop_\n_rlnOpticsGroup\n1\n\ndata_particles\n\n", "data_particles holds no loop_"),
        ("data_particles\n_rlnImageName 1@a.mrcs\n", "data_particles is not a loop_ table"),
    ],
)
def test_particles_block_without_a_loop(tmp_path: Path, text: str, expect: str) -> None:
    star = tmp_path / "p.star"
    star.write_text(text)
    assert expect in _raises(InputError, star)


def test_a_column_listed_twice(empiar: Path) -> None:
    """Found by tests/test_readers_fuzz.py: a repeated label made a column 2-D and crashed the range check."""
    empiar.write_text(empiar.read_text().replace("_rlnMicrographName #2\n", "_rlnVoltage #2\n", 1))
    assert "lists column(s) rlnVoltage more than once" in _raises(InputError, empiar)


def test_cs_blob_path_with_a_shape(empiar: Path) -> None:
    """Found by tests/test_readers_fuzz.py: blob/path of shape (1,) per row gave a TypeError."""
    cs = empiar.with_suffix(".cs")
    _cs_with(cs, "blob/path", "S8", (1,))
    assert "field blob/path has shape (1,)" in _raises(InputError, cs)


# ----------------------------------------------------------------- cryoSPARC shapes (streamer loop-killers)


def _cs_with(cs: Path, name: str, dtype: str, shape: tuple[int, ...]) -> None:
    records = np.load(cs)
    fields = {n: records[n] for n in records.dtype.names or () if n != name}
    fields[name] = np.ones((len(records), *shape), dtype=dtype)
    write_cs(cs, fields)


def test_cs_scalar_blob_shape(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    _cs_with(cs, "blob/shape", "<u4", ())
    assert "field blob/shape has shape scalar per row; cryoSPARC writes (2,)" in _raises(InputError, cs)


def test_cs_shift_with_three_components(empiar: Path) -> None:
    cs = empiar.with_suffix(".cs")
    _cs_with(cs, "alignments2D/pose", "<f4", ())
    _cs_with(cs, "alignments2D/shift", "<f4", (3,))
    assert "field alignments2D/shift has shape (3,)" in _raises(InputError, cs)


def test_valid_real_files_still_read(shared_data: Path) -> None:
    """The checks refuse none of the real files."""
    for name in ("empiar_10076_7.star", "empiar_10076_7.cs", "cryosparc_P12_J24_001_particles.cs"):
        assert len(read_particle_table(shared_data / "cryodrgn" / name)) > 0
    assert len(read_particle_table(shared_data / "aspire" / "sample_particles_relion31.star")) == 17
