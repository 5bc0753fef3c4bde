"""RELION STAR readers against the real files in ../shared/data and files written here.

Expected values are read independently with starfile / mrcfile / numpy in each test.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import warnings
from collections.abc import Sequence
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from particle_files import random_images, star_loop, write_stack, write_star

from otf2d.core.errors import InputError, MissingStackError, PixelSizeError
from otf2d.core.particles import ParticleBatch
from otf2d.core.readers import check_stacks, iter_batches, load_batch, read_particle_table


def _star(path: Path) -> dict:
    return starfile.read(path, always_dict=True, parse_as_string=["rlnImageName", "rlnMicrographName"])


def _mrc_data(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # relion31.mrcs lacks the MAP id
        with mrcfile.open(path, permissive=True) as mrc:
            return np.asarray(mrc.data, dtype=np.float32)


def test_aspire_relion31_two_optics_groups(shared_data: Path) -> None:
    path = shared_data / "aspire" / "sample_particles_relion31.star"
    star = _star(path)
    particles, optics = star["particles"], star["optics"].set_index("rlnOpticsGroup")
    table = read_particle_table(path)
    assert len(table) == 17 and table.format == "relion"
    assert (table.stack_paths == "sample.mrcs").all()
    np.testing.assert_array_equal(table.indices, np.arange(1, 18))
    groups = particles["rlnOpticsGroup"].to_numpy()
    np.testing.assert_array_equal(table.optics_groups, groups)
    np.testing.assert_array_equal(table.ctf.voltage_kv, optics.loc[groups, "rlnVoltage"].to_numpy())
    assert set(table.ctf.voltage_kv) == {300.0, 200.0}
    np.testing.assert_array_equal(table.ctf.defocus_u_angstrom, particles["rlnDefocusU"])
    np.testing.assert_array_equal(table.ctf.defocus_v_angstrom, particles["rlnDefocusV"])
    np.testing.assert_array_equal(table.ctf.amplitude_contrast, optics.loc[groups, "rlnAmplitudeContrast"])
    assert table.pixel_size_angstrom == 1.4 and table.box_size == 200
    assert [g.voltage_kv for g in table.optics] == [300.0, 200.0]
    batch = load_batch(table, slice(None))
    np.testing.assert_array_equal(batch.images, _mrc_data(shared_data / "aspire" / "sample.mrcs"))
    assert batch.pixel_size_angstrom == 1.4
    assert table.alignments is not None and table.alignments.class_index is not None
    np.testing.assert_array_equal(table.alignments.psi_degrees, particles["rlnAnglePsi"])
    np.testing.assert_array_equal(table.alignments.class_index, particles["rlnClassNumber"] - 1)


def test_aspire_relion30_takes_optics_from_rows(shared_data: Path) -> None:
    path = shared_data / "aspire" / "sample_particles_relion30.star"
    rows = next(iter(_star(path).values()))
    table = read_particle_table(path)
    assert table.format == "relion30" and len(table) == 17
    expected_px = rows["rlnDetectorPixelSize"].iloc[0] * 1e4 / rows["rlnMagnification"].iloc[0]
    assert table.pixel_size_angstrom == pytest.approx(expected_px, rel=1e-12)
    np.testing.assert_array_equal(table.ctf.voltage_kv, rows["rlnVoltage"])
    np.testing.assert_array_equal(table.ctf.phase_shift_degrees, rows["rlnPhaseShift"])
    # one optics group per distinct (kV, Cs, Q0, pixel size), numbered by first appearance
    expected_groups = np.where(rows["rlnVoltage"].to_numpy() == 300.0, 1, 2)
    np.testing.assert_array_equal(table.optics_groups, expected_groups)
    assert table.box_size == 200  # from the stack header: the file has no rlnImageSize
    # origins in pixels (3.0) become Å
    assert table.alignments is not None
    np.testing.assert_allclose(table.alignments.origin_x_angstrom, rows["rlnOriginX"] * expected_px)
    # the 3.1 version of the file describes the same particles and stack
    other = read_particle_table(shared_data / "aspire" / "sample_particles_relion31.star")
    np.testing.assert_array_equal(table.ctf.defocus_u_angstrom, other.ctf.defocus_u_angstrom)
    np.testing.assert_array_equal(table.ctf.voltage_kv, other.ctf.voltage_kv)
    np.testing.assert_array_equal(load_batch(table, [0, 16]).images, load_batch(other, [0, 16]).images)


def test_cryodrgn_relion31_with_its_stack(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "relion31.star"
    star = _star(path)
    particles, optics = star["particles"], star["optics"]
    table = read_particle_table(path)
    assert table.pixel_size_angstrom == optics["rlnImagePixelSize"].iloc[0] == 2.806
    assert table.box_size == 256
    np.testing.assert_array_equal(table.ctf.defocus_angle_degrees, particles["rlnDefocusAngle"])
    np.testing.assert_array_equal(table.ctf.bfactor_angstrom2, particles["rlnCtfBfactor"])
    np.testing.assert_array_equal(table.ctf.scale, particles["rlnCtfScalefactor"])
    np.testing.assert_array_equal(table.ctf.spherical_aberration_mm, [0.01] * 5)
    np.testing.assert_array_equal(table.micrograph_names, particles["rlnMicrographName"].astype(str))
    assert table.alignments is not None
    np.testing.assert_array_equal(table.alignments.origin_y_angstrom, particles["rlnOriginYAngst"])
    # the stack's header lacks the MAP id (old writer): it still reads
    images = load_batch(table, [4, 0]).images
    data = _mrc_data(shared_data / "cryodrgn" / "relion31.mrcs")
    np.testing.assert_array_equal(images, data[[4, 0]])


def test_six_optics_groups_metadata_only(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "relion31.6opticsgroups.star"
    star = _star(path)
    particles, optics = star["particles"], star["optics"].set_index("rlnOpticsGroup")
    table = read_particle_table(path)
    groups = particles["rlnOpticsGroup"].to_numpy()
    assert len(table) == len(particles) == 139
    np.testing.assert_array_equal(table.optics_groups, groups)
    for label, field in [("rlnSphericalAberration", "spherical_aberration_mm"), ("rlnVoltage", "voltage_kv")]:
        np.testing.assert_array_equal(getattr(table.ctf, field), optics.loc[groups, label].to_numpy())
    np.testing.assert_array_equal(table.pixel_sizes_angstrom, optics.loc[groups, "rlnImagePixelSize"].to_numpy())
    names = {g.number: g.name for g in table.optics}
    assert names == optics["rlnOpticsGroupName"].to_dict()
    stack0, _, index0 = particles["rlnImageName"].iloc[0].partition("@")
    assert table.stack_paths[0] == index0 and table.indices[0] == int(stack0)
    check = check_stacks(table)
    assert len(check.missing) == len(set(table.stack_paths)) and not check.found
    with pytest.raises(MissingStackError):
        load_batch(table, [0])


def test_relion5_extra_columns(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "relion5.star"
    star = _star(path)
    particles, optics = star["particles"], star["optics"]
    table = read_particle_table(path)
    assert len(table) == 17
    assert set(table.stack_paths) == {"toy_images_a.mrcs", "toy_images_b.mrcs"}
    np.testing.assert_array_equal(table.indices, [int(n.split("@")[0]) for n in particles["rlnImageName"]])
    group = table.optics[0]
    assert (group.voltage_kv, group.spherical_aberration_mm, group.image_size) == (100.0, 1.6, 448)
    assert group.image_pixel_size_angstrom == optics["rlnImagePixelSize"].iloc[0]
    np.testing.assert_array_equal(table.ctf.defocus_v_angstrom, particles["rlnDefocusV"])


def test_empiar_star_relion30_pixel_size(shared_data: Path) -> None:
    table = read_particle_table(shared_data / "cryodrgn" / "empiar_10076_7.star")
    assert table.pixel_size_angstrom == pytest.approx(5 * 1e4 / 38168)
    assert (table.ctf.voltage_kv == 300).all() and (table.ctf.amplitude_contrast == 0.07).all()
    batch = load_batch(table, slice(None))
    np.testing.assert_array_equal(batch.images, _mrc_data(shared_data / "cryodrgn" / "empiar_10076_7.mrc"))


def test_projections_without_ctf(shared_data: Path) -> None:
    path = shared_data / "aspire" / "rln_proj_65.star"
    with pytest.raises(PixelSizeError, match="rln_proj_65"):
        read_particle_table(path)  # no pixel size in the metadata, 0 in the header
    table = read_particle_table(path, pixel_size_angstrom=4.0)
    assert not table.has_ctf and table.pixel_size_angstrom == 4.0
    np.testing.assert_array_equal(table.ctf.defocus_u_angstrom, 0.0)
    rows = _star(path)["particles"]
    assert table.alignments is not None
    np.testing.assert_array_equal(table.alignments.psi_degrees, rows["rlnAnglePsi"])
    images = load_batch(table, slice(None)).images
    np.testing.assert_array_equal(images, _mrc_data(shared_data / "aspire" / "rln_proj_65.mrcs"))


def _two_group_optics(extra: dict[str, list[object]] | None = None) -> str:
    columns: dict[str, list[object]] = {
        "rlnOpticsGroup": [1, 2],
        "rlnOpticsGroupName": ["og1", "og2"],
        "rlnVoltage": [300.0, 200.0],
        "rlnImagePixelSize": [1.5, 1.5],
        "rlnImageSize": [16, 16],
    }
    columns.update(extra or {})
    return star_loop("optics", columns)


def test_lookup_rule_particle_then_optics_then_default(tmp_path: Path) -> None:
    write_stack(tmp_path / "s.mrcs", random_images(3, 16))
    optics = _two_group_optics({"rlnSphericalAberration": [2.7, 1.4], "rlnAmplitudeContrast": [0.1, 0.07]})
    particles = star_loop(
        "particles",
        {
            "rlnImageName": ["1@s.mrcs", "2@s.mrcs", "3@s.mrcs"],
            "rlnOpticsGroup": [1, 2, 2],
            "rlnDefocusU": [10000.0, 12000.0, 14000.0],
            "rlnAmplitudeContrast": [0.2, 0.3, 0.4],  # in both: the particle row wins
            "rlnCtfBfactor": [5.0, 6.0, 7.0],  # only in particles
        },
    )
    table = read_particle_table(write_star(tmp_path / "p.star", optics, particles))
    ctf = table.ctf
    np.testing.assert_array_equal(ctf.voltage_kv, [300.0, 200.0, 200.0])  # only in optics
    np.testing.assert_array_equal(ctf.spherical_aberration_mm, [2.7, 1.4, 1.4])  # only in optics
    np.testing.assert_array_equal(ctf.amplitude_contrast, [0.2, 0.3, 0.4])
    np.testing.assert_array_equal(ctf.bfactor_angstrom2, [5.0, 6.0, 7.0])
    np.testing.assert_array_equal(ctf.defocus_v_angstrom, ctf.defocus_u_angstrom)  # DefocusV := DefocusU
    for field, value in [("defocus_angle_degrees", 0.0), ("phase_shift_degrees", 0.0), ("scale", 1.0)]:
        np.testing.assert_array_equal(getattr(ctf, field), value)


def test_lookup_rule_defaults_when_nowhere(tmp_path: Path) -> None:
    write_stack(tmp_path / "s.mrcs", random_images(2, 16))
    optics = star_loop("optics", {"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]})
    particles = star_loop("particles", {"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnDefocusU": [9000.0, 9500.0]})
    table = read_particle_table(write_star(tmp_path / "p.star", optics, particles))
    assert (table.ctf.voltage_kv == 200.0).all() and (table.ctf.spherical_aberration_mm == 0.0).all()
    assert (table.ctf.amplitude_contrast == 0.0).all() and (table.optics_groups == 1).all()
    assert table.box_size == 16  # no rlnImageSize: from the stack header


def _extract_project(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """A RELION project: Extract/job007/particles.star + Movies/mic1_extract.star + mic1.mrcs."""
    images = random_images(4, 16, seed=3)
    write_stack(tmp_path / "Extract/job007/Movies/mic1.mrcs", images, voxel_size=1.5)
    names = [f"{i:06d}@Extract/job007/Movies/mic1.mrcs" for i in range(1, 5)]
    rows: dict[str, Sequence[object]] = {
        "rlnImageName": names,
        "rlnMicrographName": ["MotionCorr/job002/Movies/mic1.mrc"] * 4,
        "rlnOpticsGroup": [1] * 4,
        "rlnDefocusU": [11000.0, 11100.0, 11200.0, 11300.0],
        "rlnDefocusV": [10500.0, 10600.0, 10700.0, 10800.0],
        "rlnDefocusAngle": [12.0] * 4,
    }
    extract = write_star(tmp_path / "Extract/job007/Movies/mic1_extract.star", star_loop("images", rows))
    optics = star_loop(
        "optics",
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [1.5],
            "rlnImageSize": [16],
        },
    )
    particles = write_star(tmp_path / "Extract/job007/particles.star", optics, star_loop("particles", rows))
    return extract, particles, images


def test_extract_star_with_optics_from(tmp_path: Path) -> None:
    extract, particles, images = _extract_project(tmp_path)
    table = read_particle_table(extract, optics_from=particles)
    assert table.format == "relion-extract"
    assert table.project_dir == tmp_path.resolve()  # paths are relative to the project root
    assert table.session == tmp_path.name
    np.testing.assert_array_equal(table.ctf.voltage_kv, 300.0)
    np.testing.assert_array_equal(table.ctf.spherical_aberration_mm, 2.7)
    np.testing.assert_array_equal(load_batch(table, slice(None)).images, images)
    # the job's particles.star gives the same keys: dedup works across the two files
    assert read_particle_table(particles).keys() == table.keys()


def test_extract_star_needs_optics(tmp_path: Path) -> None:
    extract, _, _ = _extract_project(tmp_path)
    with pytest.raises(InputError, match="optics_from") as info:
        read_particle_table(extract)
    assert str(extract) in str(info.value)
    table = read_particle_table(extract, voltage_kv=300.0, spherical_aberration_mm=2.7, amplitude_contrast=0.1)
    assert table.pixel_size_angstrom == 1.5  # from the stack header, which RELION's Extract fills
    np.testing.assert_array_equal(table.ctf.amplitude_contrast, 0.1)


def test_explicit_values_override_the_file(shared_data: Path) -> None:
    path = shared_data / "cryodrgn" / "relion31.star"
    table = read_particle_table(path, voltage_kv=200.0, pixel_size_angstrom=3.0, session="s1")
    assert (table.ctf.voltage_kv == 200.0).all() and table.optics[0].voltage_kv == 200.0
    assert table.pixel_size_angstrom == 3.0 and table.session == "s1"


def test_project_dir_keyword(tmp_path: Path) -> None:
    write_stack(tmp_path / "elsewhere" / "s.mrcs", random_images(2, 16))
    star = write_star(
        tmp_path / "meta" / "p.star",
        star_loop("particles", {"rlnImageName": ["1@s.mrcs", "2@s.mrcs"], "rlnImagePixelSize": [1.0, 1.0]}),
    )
    assert check_stacks(read_particle_table(star)).missing == ["s.mrcs"]
    table = read_particle_table(star, project_dir=tmp_path / "elsewhere")
    assert check_stacks(table).ok and len(load_batch(table, [1])) == 1


@pytest.mark.parametrize("dtype", [np.float16, np.int16, np.uint16, np.int8])
def test_stack_dtypes(tmp_path: Path, dtype: type) -> None:
    raw = random_images(3, 16) * (1 if dtype == np.float16 else 10) + (20 if dtype == np.uint16 else 0)
    data: np.ndarray = np.abs(raw).astype(dtype)
    write_stack(tmp_path / "s.mrcs", data)
    star = write_star(
        tmp_path / "p.star",
        star_loop("particles", {"rlnImageName": ["3@s.mrcs", "1@s.mrcs"], "rlnImagePixelSize": [1.0, 1.0]}),
    )
    batch = load_batch(read_particle_table(star), slice(None))
    assert batch.images.dtype == (np.float16 if dtype == np.float16 else np.float32)
    np.testing.assert_array_equal(batch.images, data[[2, 0]].astype(batch.images.dtype))


def test_single_2d_image_is_a_stack_of_one(tmp_path: Path) -> None:
    image = random_images(1, 16)[0]
    write_stack(tmp_path / "one.mrc", image)
    star = write_star(
        tmp_path / "p.star", star_loop("particles", {"rlnImageName": ["one.mrc"], "rlnImagePixelSize": [1.0]})
    )
    batch = load_batch(read_particle_table(star), [0])
    np.testing.assert_array_equal(batch.images[0], image)


def test_iter_batches_covers_the_table_in_order(tmp_path: Path) -> None:
    images = random_images(7, 16)
    write_stack(tmp_path / "a.mrcs", images[:4])
    write_stack(tmp_path / "b.mrcs", images[4:])
    names = [f"{i}@a.mrcs" for i in range(1, 5)] + [f"{i}@b.mrcs" for i in range(1, 4)]
    optics = _two_group_optics({"rlnImagePixelSize": [1.5, 2.0]})
    particles = star_loop("particles", {"rlnImageName": names, "rlnOpticsGroup": [1, 1, 1, 1, 1, 2, 2]})
    table = read_particle_table(write_star(tmp_path / "p.star", optics, particles))
    batches = list(iter_batches(table, 2))
    # a batch never spans two pixel sizes: [2, 2, 1 | 2]
    assert [len(b) for b in batches] == [2, 2, 1, 2]
    assert [b.pixel_size_angstrom for b in batches] == [1.5, 1.5, 1.5, 2.0]
    joined = ParticleBatch.concatenate(batches[:3])
    np.testing.assert_array_equal(joined.images, images[:5])
    np.testing.assert_array_equal(batches[3].images, images[5:])
    assert list(itertools.chain.from_iterable(b.keys() for b in batches)) == table.keys()
    with pytest.raises(PixelSizeError):
        load_batch(table, [0, 6])


def test_take_keeps_rows_consistent(shared_data: Path) -> None:
    table = read_particle_table(shared_data / "aspire" / "sample_particles_relion31.star")
    sub = table.take([16, 3])
    assert sub.keys() == [table.keys()[16], table.keys()[3]]
    np.testing.assert_array_equal(sub.ctf.voltage_kv, table.ctf.voltage_kv[[16, 3]])
    assert sub.alignments is not None and table.alignments is not None
    np.testing.assert_array_equal(sub.alignments.psi_degrees, table.alignments.psi_degrees[[16, 3]])
    np.testing.assert_array_equal(load_batch(sub, slice(None)).images, load_batch(table, [16, 3]).images)
    assert len(table.take(slice(2, 5))) == 3


def test_float16_and_float32_stacks_in_one_batch(tmp_path: Path) -> None:
    half = random_images(2, 16).astype(np.float16)
    full = random_images(2, 16, seed=1)
    write_stack(tmp_path / "h.mrcs", half)
    write_stack(tmp_path / "f.mrcs", full)
    names = ["1@h.mrcs", "1@f.mrcs", "2@h.mrcs"]
    star = write_star(tmp_path / "p.star", star_loop("", {"rlnImageName": names, "rlnImagePixelSize": [1.0] * 3}))
    table = read_particle_table(star)
    batch = load_batch(table, slice(None))
    assert batch.images.dtype == np.float32
    np.testing.assert_array_equal(batch.images, np.stack([half[0], full[0], half[1]]).astype(np.float32))
    assert load_batch(table, [0, 2]).images.dtype == np.float16


@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_convert_star") is None, reason="relion_convert_star not installed")
@pytest.mark.parametrize("name", ["aspire/sample_particles_relion30.star", "cryodrgn/empiar_10076_7.star"])
def test_relion30_reading_matches_relions_own_conversion(shared_data: Path, tmp_path: Path, name: str) -> None:
    source = shared_data / name
    converted = tmp_path / "converted.star"
    subprocess.run(
        ["relion_convert_star", "--i", str(source), "--o", str(converted)],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    ours = read_particle_table(source)
    theirs = read_particle_table(converted, project_dir=source.parent)
    assert theirs.format == "relion" and ours.format == "relion30"
    np.testing.assert_array_equal(ours.optics_groups, theirs.optics_groups)
    for mine, relions in zip(ours.optics, theirs.optics, strict=True):
        assert mine.voltage_kv == relions.voltage_kv
        assert mine.spherical_aberration_mm == relions.spherical_aberration_mm
        assert mine.amplitude_contrast == relions.amplitude_contrast
        assert mine.image_pixel_size_angstrom == pytest.approx(relions.image_pixel_size_angstrom, abs=1e-6)
    for field in ("defocus_u_angstrom", "defocus_v_angstrom", "defocus_angle_degrees", "voltage_kv"):
        np.testing.assert_allclose(getattr(ours.ctf, field), getattr(theirs.ctf, field), rtol=1e-6)
    assert ours.keys() == theirs.keys()
