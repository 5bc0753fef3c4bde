"""cryoSPARC ``.cs`` reader against the real files in ../shared/data and files written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from particle_files import random_images, write_cs, write_stack

from otf2d.core.errors import InputError, MissingColumnError, MissingStackError, UnsupportedFormatError
from otf2d.core.readers import check_stacks, load_batch, read_particle_table


def _records(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def test_empiar_cs_and_star_describe_the_same_particles(shared_data: Path) -> None:
    cs = read_particle_table(shared_data / "cryodrgn" / "empiar_10076_7.cs")
    star = read_particle_table(shared_data / "cryodrgn" / "empiar_10076_7.star")
    assert cs.format == "cryosparc" and len(cs) == len(star) == 7
    assert cs.keys() == star.keys()  # same stack path, same 1-based indices
    # 1.30999 (cs, float32) vs 5 µm / 38168 (star)
    assert cs.pixel_size_angstrom == pytest.approx(star.pixel_size_angstrom, rel=1e-6)
    assert cs.pixel_size_angstrom == pytest.approx(1.31, abs=1e-4)
    for field in (
        "defocus_u_angstrom",
        "defocus_v_angstrom",
        "defocus_angle_degrees",
        "spherical_aberration_mm",
    ):
        np.testing.assert_allclose(getattr(cs.ctf, field), getattr(star.ctf, field), rtol=1e-6)
    np.testing.assert_array_equal(cs.ctf.voltage_kv, star.ctf.voltage_kv)
    np.testing.assert_array_equal(load_batch(cs, slice(None)).images, load_batch(star, slice(None)).images)


def test_empiar_cs_field_conversions(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "empiar_10076_7.cs"
    rec = _records(path)
    table = read_particle_table(path)
    np.testing.assert_array_equal(table.indices, rec["blob/idx"].astype(np.int64) + 1)
    np.testing.assert_array_equal(table.optics_groups, rec["ctf/exp_group_id"].astype(np.int64) + 1)
    assert [g.number for g in table.optics] == [24]
    np.testing.assert_allclose(table.ctf.defocus_angle_degrees, np.degrees(rec["ctf/df_angle_rad"].astype(np.float64)))
    assert table.box_size == int(rec["blob/shape"][0][0]) == 320
    assert table.micrograph_names is None and table.alignments is None


def test_j2_strips_the_leading_marker_and_keeps_2d_alignments(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "cryosparc_J2_particles_exported.cs"
    rec = _records(path)
    table = read_particle_table(path)
    assert len(table) == 22
    raw = [p.decode() for p in rec["blob/path"]]
    assert all(p.startswith(">") for p in raw)
    assert table.stack_paths.tolist() == [p[1:] for p in raw]
    al = table.alignments
    assert al is not None and al.class_index is not None
    np.testing.assert_array_equal(al.class_index, rec["alignments2D/class"])
    np.testing.assert_allclose(al.psi_degrees, np.degrees(rec["alignments2D/pose"].astype(np.float64)))
    psize = rec["alignments2D/psize_A"].astype(np.float64)
    np.testing.assert_allclose(al.origin_x_angstrom, rec["alignments2D/shift"][:, 0] * psize)
    np.testing.assert_allclose(al.origin_y_angstrom, rec["alignments2D/shift"][:, 1] * psize)
    # its images are not included: reported, and a load names stack, .cs and where it looked
    check = check_stacks(table)
    assert check.missing == sorted(set(table.stack_paths.tolist())) and not check.found
    with pytest.raises(MissingStackError) as info:
        load_batch(table, [0])
    message = str(info.value)
    assert str(path) in message and table.stack_paths[0] in message
    # where it looked: beside the .cs (the real directory when ../shared is a symbolic link)
    beside = Path(table.stack_paths[0]).name
    assert str(path.parent / beside) in message or str(path.resolve().parent / beside) in message


def test_p12_larger_file(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "cryosparc_P12_J24_001_particles.cs"
    rec = _records(path)
    table = read_particle_table(path)
    assert len(table) == 2019
    assert table.pixel_size_angstrom == pytest.approx(2.95) and table.box_size == 180
    assert set(table.ctf.voltage_kv) == {200.0} and set(table.ctf.spherical_aberration_mm) == {2.0}
    np.testing.assert_allclose(table.ctf.defocus_u_angstrom, rec["ctf/df1_A"])
    np.testing.assert_allclose(table.ctf.amplitude_contrast, rec["ctf/amp_contrast"])
    assert table.alignments is None  # it holds 3D alignments only
    assert len(set(table.keys())) == 2019


def _cs_fields(stack_path: bytes, n: int) -> dict[str, np.ndarray]:
    return {
        "uid": np.arange(n, dtype=np.uint64),
        "blob/path": np.array([stack_path] * n, dtype="S64"),
        "blob/idx": np.arange(n, dtype=np.uint32),
        "blob/shape": np.full((n, 2), 16, dtype=np.uint32),
        "blob/psize_A": np.full(n, 1.25, dtype=np.float32),
        "ctf/exp_group_id": np.zeros(n, dtype=np.uint32),
        "ctf/accel_kv": np.full(n, 300.0, dtype=np.float32),
        "ctf/cs_mm": np.full(n, 2.7, dtype=np.float32),
        "ctf/amp_contrast": np.full(n, 0.1, dtype=np.float32),
        "ctf/df1_A": np.linspace(9000, 12000, n).astype(np.float32),
        "ctf/df2_A": np.linspace(8800, 11800, n).astype(np.float32),
        "ctf/df_angle_rad": np.full(n, np.pi / 4, dtype=np.float32),
        "ctf/phase_shift_rad": np.full(n, np.pi / 2, dtype=np.float32),
    }


def test_stack_found_by_base_name_next_to_the_cs(tmp_path: Path) -> None:
    images = random_images(3, 16)
    write_stack(tmp_path / "J5" / "stack_particles.mrc", images)
    cs = write_cs(tmp_path / "J5" / "particles.cs", _cs_fields(b">J5/extract/stack_particles.mrc", 3))
    table = read_particle_table(cs)
    assert table.stack_paths[0] == "J5/extract/stack_particles.mrc"  # as written, without '>'
    np.testing.assert_array_equal(load_batch(table, [2, 0]).images, images[[2, 0]])
    np.testing.assert_allclose(table.ctf.defocus_angle_degrees, 45.0, rtol=1e-6)
    np.testing.assert_allclose(table.ctf.phase_shift_degrees, 90.0, rtol=1e-6)


def test_stack_found_under_the_project_dir(tmp_path: Path) -> None:
    images = random_images(2, 16)
    write_stack(tmp_path / "P1" / "J3" / "extract" / "s.mrc", images)
    cs = write_cs(tmp_path / "P1" / "J7" / "particles.cs", _cs_fields(b"J3/extract/s.mrc", 2))
    found = read_particle_table(cs)  # the job layout (P1/J7/) gives the project directory P1
    assert found.project_dir == (tmp_path / "P1").resolve() and check_stacks(found).ok
    table = read_particle_table(cs, project_dir=tmp_path / "P1")
    assert check_stacks(table).ok
    outside = write_cs(tmp_path / "elsewhere" / "particles.cs", _cs_fields(b"J3/extract/s.mrc", 2))
    assert check_stacks(read_particle_table(outside)).missing == ["J3/extract/s.mrc"]
    np.testing.assert_array_equal(load_batch(table, slice(None)).images, images)


def test_csdat_is_refused_with_a_way_out(tmp_path: Path) -> None:
    path = tmp_path / "particles.cs"
    path.write_bytes(b"\x95CSDAT" + bytes(100))
    with pytest.raises(UnsupportedFormatError) as info:
        read_particle_table(path)
    message = str(info.value)
    assert str(path) in message and "CSDAT" in message and "NUMPY_FORMAT" in message


def test_missing_blob_fields(tmp_path: Path) -> None:
    fields = _cs_fields(b"s.mrc", 2)
    del fields["blob/idx"]
    path = write_cs(tmp_path / "p.cs", fields)
    with pytest.raises(MissingColumnError, match="blob/idx") as info:
        read_particle_table(path)
    assert str(path) in str(info.value) and "ctf/df1_A" in str(info.value)  # lists what exists


def test_not_a_numpy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.cs"
    path.write_text("data_particles\n")
    with pytest.raises(InputError, match="NumPy") as info:
        read_particle_table(path)
    assert str(path) in str(info.value)


def test_object_array_needs_pickle(tmp_path: Path) -> None:
    path = tmp_path / "p.cs"
    with path.open("wb") as fh:
        np.save(fh, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as info:
        read_particle_table(path)
    assert str(path) in str(info.value)
