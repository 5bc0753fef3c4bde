"""otf2d.monitoring.snapshots.reader: a snapshot written by otf2d.monitoring.snapshots reads back as the same
ClassSnapshot."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from snapshot_factory import COUNTS, make_snapshot

from otf2d.core.errors import InputError
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.monitoring.snapshots.reader import find_snapshot, read_snapshot


@pytest.fixture
def written(tmp_path: Path) -> tuple[ClassSnapshot, Path, Path]:
    project = tmp_path / "project"
    job = project / "Class2D" / "otf2d"
    snapshot = make_snapshot(iteration=7, parameters={"mask_diameter_angstrom": 80.0, "seed": 3})
    write_snapshot(snapshot, job, project_dir=project, session="s1")
    return snapshot, job, project


def test_round_trip_of_every_field(written: tuple[ClassSnapshot, Path, Path]) -> None:
    snapshot, job, project = written
    loaded = read_snapshot(job, project_dir=project)
    back = loaded.snapshot
    np.testing.assert_array_equal(back.averages, snapshot.averages)
    assert back.pixel_size_angstrom == snapshot.pixel_size_angstrom
    assert back.iteration == 7 and back.original_image_size == snapshot.original_image_size
    np.testing.assert_array_equal(back.particle_counts, COUNTS)
    # unknown resolution (inf) is written as 999 Å and reads back as inf
    np.testing.assert_array_equal(back.resolution_angstrom, snapshot.resolution_angstrom)
    np.testing.assert_array_equal(back.accuracy_rotations_degrees, snapshot.accuracy_rotations_degrees)
    assert back.optics == snapshot.optics
    assert back.parameters["mask_diameter_angstrom"] == 80.0
    a, b = back.particles, snapshot.particles
    assert a.image_names() == b.image_names()
    for name in ("class_index", "optics_groups", "n_significant"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for name in ("psi_degrees", "origin_x_angstrom", "origin_y_angstrom", "pmax", "log_likelihood"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))  # shortest-repr floats: exact
    for name in ("class_posterior", "class_ess"):  # only in the .cs, as float32
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    for f in dataclasses.fields(b.ctf):
        np.testing.assert_array_equal(getattr(a.ctf, f.name), getattr(b.ctf, f.name))
    assert list(a.micrograph_names) == list(b.micrograph_names)  # type: ignore[arg-type]
    assert loaded.particles_cs is not None and len(loaded.particles_cs) == sum(COUNTS)
    assert loaded.project_dir == project


def test_estep_statistics_are_read_back_from_the_cs(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    n = len(snapshot.particles)
    assert read_snapshot(_written(snapshot, tmp_path / "a")).snapshot.particles.image_power is None
    ramp = np.linspace(1.0, 2.0, n)
    parts = dataclasses.replace(
        snapshot.particles, scale=ramp, image_power=100 * ramp, cross_term=10 * ramp, norm_term=np.full(n, 3.0)
    )
    back = read_snapshot(_written(dataclasses.replace(snapshot, particles=parts), tmp_path / "b")).snapshot.particles
    for name in ("scale", "image_power", "cross_term", "norm_term"):
        np.testing.assert_allclose(getattr(back, name), getattr(parts, name), rtol=1e-6)  # float32 in the .cs


def _written(snapshot: ClassSnapshot, project: Path) -> Path:
    job = project / "Class2D" / "otf2d"
    write_snapshot(snapshot, job, project_dir=project, session="s1")
    return job


def test_every_way_of_naming_a_snapshot_finds_the_same_files(written: tuple[ClassSnapshot, Path, Path]) -> None:
    _, job, project = written
    expected = find_snapshot(job)
    assert expected.data_star == job / "run_it007_data.star"
    for name in ("run_it007_data.star", "run_it007_model.star", "run_it007_classes.mrcs", "run_it007_particles.cs"):
        assert find_snapshot(job / name) == expected
    # an engine session folder holds its snapshots in snapshots/
    session = project / "sessions" / "grid3"
    shutil.copytree(job, session / "snapshots")
    assert find_snapshot(session).data_star == session / "snapshots" / "run_it007_data.star"
    # without latest.json, the newest run_itNNN_data.star of the folder
    bare = project / "bare"
    shutil.copytree(job, bare)
    (bare / "latest.json").unlink()
    for name in ("run_it007_data.star", "run_it007_model.star", "run_it007_classes.mrcs"):
        (bare / name.replace("007", "012")).write_bytes((bare / name).read_bytes())
    assert find_snapshot(bare).iteration == 12


def test_project_directory_is_found_from_the_stacks(written: tuple[ClassSnapshot, Path, Path]) -> None:
    snapshot, job, project = written
    assert not read_snapshot(job).stacks_found  # the synthetic stacks do not exist
    first = project / str(snapshot.particles.stack_paths[0])
    first.parent.mkdir(parents=True)
    first.write_bytes(b"")
    loaded = read_snapshot(job / "run_it007_data.star")
    assert loaded.stacks_found and loaded.project_dir == project.resolve()


def test_missing_and_wrong_inputs_name_the_file(written: tuple[ClassSnapshot, Path, Path], tmp_path: Path) -> None:
    _, job, _ = written
    with pytest.raises(InputError, match="does not exist") as missing:
        read_snapshot(tmp_path / "nowhere")
    assert missing.value.path == str(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no snapshot here"):
        find_snapshot(empty)
    with pytest.raises(InputError, match="not a file of a snapshot"):
        find_snapshot(job / "latest.json")
    (job / "run_it007_classes.mrcs").unlink()
    with pytest.raises(InputError, match="not found") as gone:
        read_snapshot(job)
    assert gone.value.path is not None and gone.value.path.endswith("run_it007_classes.mrcs")


def test_a_classes_stack_that_disagrees_with_the_model_is_refused(written: tuple[ClassSnapshot, Path, Path]) -> None:
    _, job, project = written
    other = make_snapshot(counts=(3, 4), iteration=7)
    from otf2d.monitoring.snapshots.atomic import write_mrc_atomic

    write_mrc_atomic(job / "run_it007_classes.mrcs", other.averages, voxel_size_angstrom=3.0)
    with pytest.raises(InputError, match=r"holds 2 class averages but run_it007_model\.star lists 6"):
        read_snapshot(job, project_dir=project)


def test_typed_snapshot_fields_are_written_where_the_parameters_kept_them(tmp_path: Path) -> None:
    order = (3, 1, 5, 0, 4, 2)
    snapshot = dataclasses.replace(
        make_snapshot(junk_score=np.linspace(0.0, 1.0, 6)),
        engine_class_of_snapshot_class=order,
        junk_score_threshold=0.625,
    )
    job = _written(snapshot, tmp_path / "p")
    recorded = json.loads(next(job.glob("*_otf2d.json")).read_text())["parameters"]
    # The file format is what it was: a reader of the untyped parameters still finds both.
    assert recorded["engine_class_of_snapshot_class"] == list(order)
    assert recorded["junk_score_threshold"] == 0.625
    back = read_snapshot(job).snapshot
    assert back.engine_class_of_snapshot_class == order
    assert back.engine_class_order() == list(order)
    assert back.junk_score_threshold == 0.625
    assert "engine_class_of_snapshot_class" not in back.parameters and "junk_score_threshold" not in back.parameters


def test_a_snapshot_written_before_the_typed_fields_reads_them_from_its_parameters(tmp_path: Path) -> None:
    job = _written(make_snapshot(junk_score=np.linspace(0.0, 1.0, 6)), tmp_path / "p")
    provenance = next(job.glob("*_otf2d.json"))
    record = json.loads(provenance.read_text())
    assert "engine_class_of_snapshot_class" not in record["parameters"]
    back = read_snapshot(job).snapshot
    assert back.engine_class_of_snapshot_class is None and back.engine_class_order() == list(range(6))
    # as an older otf2d wrote them: inside "parameters", the order as a list
    record["parameters"].update(engine_class_of_snapshot_class=[5, 4, 3, 2, 1, 0], junk_score_threshold=0.75)
    provenance.write_text(json.dumps(record))
    back = read_snapshot(job).snapshot
    assert back.engine_class_of_snapshot_class == (5, 4, 3, 2, 1, 0)
    assert back.junk_score_threshold == 0.75 and back.effective_junk_threshold == 0.75
    # an order that is not a permutation of the classes reads as the engine's own order, as it always did
    record["parameters"]["engine_class_of_snapshot_class"] = [0, 0, 1, 2, 3, 4]
    provenance.write_text(json.dumps(record))
    assert read_snapshot(job).snapshot.engine_class_of_snapshot_class is None


def test_an_invalid_recorded_junk_threshold_is_refused_naming_the_file(tmp_path: Path) -> None:
    job = _written(make_snapshot(), tmp_path / "p")
    provenance = next(job.glob("*_otf2d.json"))
    record = json.loads(provenance.read_text())
    record["parameters"]["junk_score_threshold"] = "high"
    provenance.write_text(json.dumps(record))
    with pytest.raises(InputError, match="junk_score_threshold") as refused:
        read_snapshot(job)
    assert refused.value.path == str(provenance)


def test_a_typed_engine_order_must_be_a_permutation_of_the_classes() -> None:
    with pytest.raises(InputError, match=r"not a permutation of 0\.\.5"):
        dataclasses.replace(make_snapshot(), engine_class_of_snapshot_class=(0, 1, 2))
    with pytest.raises(InputError, match="junk_score_threshold"):
        dataclasses.replace(make_snapshot(), junk_score_threshold=1.5)
