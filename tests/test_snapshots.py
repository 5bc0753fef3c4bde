"""write_snapshot: every output of one iteration; latest.json moves only once all are written."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from PIL import Image
from snapshot_factory import COUNTS, make_snapshot

import otf2d.monitoring.snapshots as snapshots
from otf2d.core.snapshot import PER_PARTICLE_ARRAYS
from otf2d.monitoring.snapshots import LATEST_POINTER, read_latest, write_snapshot


def test_writes_everything_and_points_latest_at_it(tmp_path: Path) -> None:
    project = tmp_path / "project"
    job = project / "Class2D" / "otf2d"
    assert read_latest(job) is None
    paths = write_snapshot(make_snapshot(iteration=7), job, project_dir=project, session="s1")
    files = paths.files()
    assert {p.name for p in files.values()} == {
        "run_it007_classes.mrcs",
        "run_it007_model.star",
        "run_it007_data.star",
        "run_it007_otf2d.json",
        "run_it007_particles.cs",
        "run_it007_class_averages.cs",
        "run_it007_gallery.png",
        "run_it007_particles.csg",
        "run_it007_class_averages.csg",
    }
    assert sorted(p.name for p in job.iterdir()) == sorted([LATEST_POINTER, *(p.name for p in files.values())])
    assert mrcfile.read(paths.classes_mrcs).shape == (len(COUNTS), 32, 32)
    assert len(starfile.read(paths.data_star, always_dict=True)["particles"]) == sum(COUNTS)
    assert len(np.load(paths.particles_cs, allow_pickle=False)) == sum(COUNTS)
    cavg = np.load(paths.class_averages_cs, allow_pickle=False)
    assert (project / cavg["blob/path"][0].decode()) == paths.classes_mrcs
    Image.open(paths.gallery_png).verify()
    pointer = json.loads((job / LATEST_POINTER).read_text())
    assert pointer["iteration"] == 7 and pointer["n_particles"] == sum(COUNTS)
    assert read_latest(job) == paths
    pointer["files"] = {role: name for role, name in pointer["files"].items() if not role.endswith("_csg")}
    (job / LATEST_POINTER).write_text(json.dumps(pointer))  # a pointer written before the result groups
    older = read_latest(job)
    assert older is not None and older.particles_csg is None and older.particles_cs == paths.particles_cs


def test_a_failed_snapshot_leaves_the_pointer_on_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_snapshot(make_snapshot(iteration=1), tmp_path)

    def broken_gallery(*args: object, **kwargs: object) -> Path:
        raise OSError("disk full while writing the gallery")

    monkeypatch.setattr(snapshots, "write_gallery_png", broken_gallery)
    with pytest.raises(OSError, match="disk full"):
        write_snapshot(make_snapshot(iteration=2), tmp_path)
    assert read_latest(tmp_path) == first
    assert not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    second = write_snapshot(make_snapshot(iteration=2), tmp_path)
    assert read_latest(tmp_path) == second
    assert first.model_star.exists()  # older iterations are kept, as RELION keeps them


def test_a_corrupt_pointer_is_reported(tmp_path: Path) -> None:
    (tmp_path / LATEST_POINTER).write_text('{"iteration": 3}')
    with pytest.raises(ValueError, match="not a valid snapshot pointer"):
        read_latest(tmp_path)


def test_particle_assignments_take_keeps_every_per_particle_field_row_aligned() -> None:
    parts = make_snapshot().particles
    index = np.array([5, 0, 17, 5])
    got = parts.take(index)
    assert len(got) == 4
    for name in ("indices", *PER_PARTICLE_ARRAYS):
        assert list(np.asarray(getattr(got, name))) == [np.asarray(getattr(parts, name))[i] for i in index], name
    np.testing.assert_array_equal(got.ctf.defocus_u_angstrom, parts.ctf.defocus_u_angstrom[index])
    assert got.image_names() == [parts.image_names()[i] for i in index]
