"""``otf2d select`` and otf2d.selection.write: particles.star / particles.cs of the chosen classes, read back by
our readers, by RELION 3.1 (when installed) and checked against the snapshot they came from."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import starfile
from selection_session import ClassifiedSession, classified_session, is_junk
from snapshot_factory import COUNTS, make_snapshot

from otf2d.core.cli import main as otf2d
from otf2d.core.errors import InputError, NonFiniteError
from otf2d.core.readers import read_particle_table, read_stack_images
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.monitoring.snapshots.reader import LoadedSnapshot, read_snapshot
from otf2d.selection.write import subset_snapshot, write_selection


@pytest.fixture(scope="session")
def classified(tmp_path_factory: pytest.TempPathFactory) -> ClassifiedSession:
    return classified_session(tmp_path_factory.getbasetemp() / "selection_session")


@pytest.fixture
def loaded(tmp_path: Path) -> LoadedSnapshot:
    project = tmp_path / "project"
    write_snapshot(make_snapshot(iteration=3), project / "Class2D" / "otf2d", project_dir=project, session="s1")
    return read_snapshot(project / "Class2D" / "otf2d", project_dir=project)


def _relion(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.skip(f"{name} not on PATH (Debian's relion package is not installed)")
    return binary


def test_written_particles_are_the_chosen_ones(loaded: LoadedSnapshot, tmp_path: Path) -> None:
    snapshot = loaded.snapshot
    index = np.flatnonzero(np.isin(snapshot.particles.class_index, [1, 3]))  # classes 2 and 4
    files = write_selection(loaded, index, tmp_path / "Select", details={"how": "test"})
    assert files.n_particles == COUNTS[1] + COUNTS[3]
    blocks = starfile.read(files.particles_star, always_dict=True)
    assert list(blocks) == ["optics", "particles"]
    particles = blocks["particles"]
    parts = snapshot.particles
    assert list(particles["rlnImageName"]) == [parts.image_names()[i] for i in index]
    np.testing.assert_array_equal(particles["rlnClassNumber"], parts.class_index[index] + 1)
    for label, values in (
        ("rlnAnglePsi", parts.psi_degrees),
        ("rlnOriginXAngst", parts.origin_x_angstrom),
        ("rlnOriginYAngst", parts.origin_y_angstrom),
        ("rlnDefocusU", parts.ctf.defocus_u_angstrom),
        ("rlnMaxValueProbDistribution", parts.pmax),
    ):
        np.testing.assert_array_equal(particles[label].to_numpy(), values[index])
    # our own reader takes it as a particle file with its 2D alignments
    table = read_particle_table(files.particles_star, project_dir=loaded.project_dir)
    assert table.alignments is not None and table.alignments.class_index is not None
    np.testing.assert_array_equal(table.alignments.class_index, parts.class_index[index])
    assert table.optics == snapshot.optics
    # the .cs has the same particles, and the uids of the snapshot's own .cs
    cs = np.load(files.particles_cs, allow_pickle=False)
    assert loaded.particles_cs is not None
    np.testing.assert_array_equal(cs["uid"], loaded.particles_cs["uid"][index])
    np.testing.assert_array_equal(cs["blob/idx"], parts.indices[index] - 1)
    np.testing.assert_array_equal(cs["alignments2D/class"], parts.class_index[index])
    record = json.loads(files.record_json.read_text())
    assert record["n_particles"] == len(index) and record["how"] == "test"
    assert record["source"]["data_star"] == str(loaded.paths.data_star)
    assert not list((tmp_path / "Select").glob(".*tmp"))  # no temporary file left behind


def test_subset_recounts_and_absolute_paths(loaded: LoadedSnapshot, tmp_path: Path) -> None:
    subset = subset_snapshot(loaded.snapshot, [0, 1, 2])
    assert int(subset.particle_counts.sum()) == 3 and subset.n_classes == len(COUNTS)
    files = write_selection(loaded, [4, 2], tmp_path / "abs", absolute_paths=True)
    names = list(starfile.read(files.particles_star, always_dict=True)["particles"]["rlnImageName"])
    stacks = loaded.snapshot.particles.stack_paths
    assert names == [f"{i:06d}@{(loaded.project_dir.resolve() / stacks[p]).as_posix()}" for i, p in ((5, 4), (3, 2))]
    with pytest.raises(InputError, match="no particle to write"):
        write_selection(loaded, [], tmp_path / "none")


def test_bad_content_writes_nothing(loaded: LoadedSnapshot, tmp_path: Path) -> None:
    psi = loaded.snapshot.particles.psi_degrees.copy()
    psi[3] = np.nan
    broken = dataclasses.replace(
        loaded,
        snapshot=dataclasses.replace(
            loaded.snapshot, particles=dataclasses.replace(loaded.snapshot.particles, psi_degrees=psi)
        ),
    )
    with pytest.raises(NonFiniteError, match="psi_degrees"):
        write_selection(broken, [1, 2, 3, 4], tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_missing_snapshot_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "Class2D" / "nothing"
    assert otf2d(["select", str(missing), "--out", str(tmp_path / "out"), "--classes", "1"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "out").exists()


def test_unknown_classes_exit_2(loaded: LoadedSnapshot, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = otf2d(["select", str(loaded.directory), "--out", str(tmp_path / "o"), "--classes", "2,40"])
    assert code == 2
    err = capsys.readouterr().err
    assert "run_it003_model.star" in err and "[40] do not exist" in err


@pytest.mark.slow
def test_select_command_on_a_classified_session(
    classified: ClassifiedSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "Select"
    assert (
        otf2d(
            [
                "select",
                str(classified.run_dir),
                "--out",
                str(out),
                "--auto",
                "--min-particles",
                "10",
                "--particle-junk-threshold",
                "1",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    summary = printed.strip().splitlines()[-1]
    loaded = read_snapshot(classified.run_dir)
    particles = starfile.read(out / "particles.star", always_dict=True)["particles"]
    match = re.search(r"Selected ([\d,]+) of ([\d,]+) particles", summary)
    assert match is not None and int(match.group(1).replace(",", "")) == len(particles)
    assert str(out / "particles.star") in summary and str(out / "particles.cs") in summary
    kept = json.loads((out / "selection.json").read_text())["classes_kept"]
    counts = loaded.snapshot.particle_counts
    assert len(particles) == sum(int(counts[c - 1]) for c in kept)
    assert all(counts[c - 1] >= 10 for c in kept)
    assert set(particles["rlnClassNumber"]) == set(kept)
    # image names point at the original stacks: the pixels read through them are the session's
    first = str(particles["rlnImageName"].iloc[0])
    index, stack = first.split("@")
    image = read_stack_images(classified.project / stack, [int(index)])[0]
    assert image.shape == (64, 64) and np.isfinite(image).all()


@pytest.mark.slow
@pytest.mark.relion
def test_relion_reads_the_selected_particles(classified: ClassifiedSession, tmp_path: Path) -> None:
    """RELION 3.1 parses particles.star as a 3.1 file, and reads every image it names."""
    star_handler = _relion("relion_star_handler")
    image_handler = _relion("relion_image_handler")
    out = tmp_path / "Select"
    assert otf2d(["select", str(classified.run_dir), "--out", str(out), "--auto", "--quiet"]) == 0
    ours = starfile.read(out / "particles.star", always_dict=True)["particles"]
    done = subprocess.run(
        [star_handler, "--i", str(out / "particles.star"), "--o", str(tmp_path / "relion_copy.star")],
        cwd=classified.project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "previous version" not in done.stdout + done.stderr  # read as RELION 3.1 (optics table)
    back = starfile.read(tmp_path / "relion_copy.star", always_dict=True)
    assert list(back["particles"]["rlnImageName"]) == list(ours["rlnImageName"])
    np.testing.assert_allclose(back["particles"]["rlnAnglePsi"], ours["rlnAnglePsi"], atol=1e-4)
    np.testing.assert_array_equal(back["particles"]["rlnClassNumber"], ours["rlnClassNumber"])
    # relion_image_handler opens every image through its rlnImageName, from the project directory
    stats = subprocess.run(
        [image_handler, "--i", str(out / "particles.star"), "--stats"],
        cwd=classified.project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert stats.returncode == 0, stats.stdout + stats.stderr
    rows = re.findall(r"^(\d{6}@\S+) : .* avg= (\S+) .*angpix = (\S+)$", stats.stdout, flags=re.MULTILINE)
    assert [r[0] for r in rows] == list(ours["rlnImageName"])
    for name, avg, angpix in rows[:20]:
        index, stack = name.split("@")
        image = read_stack_images(classified.project / stack, [int(index)])[0]
        assert float(avg) == pytest.approx(float(np.mean(image, dtype=np.float64)), abs=1e-5)
        assert float(angpix) == pytest.approx(4.0)


@pytest.mark.slow
@pytest.mark.relion
def test_select_by_class_keeps_what_relions_own_selection_keeps(classified: ClassifiedSession, tmp_path: Path) -> None:
    """Issue 14: ``otf2d select --classes`` keeps exactly the rows of the job's ``_data.star`` that
    RELION's ``relion_star_handler --select rlnClassNumber`` keeps for those classes (what a Subset
    selection of those classes gives), in the same order and with the same 2D results."""
    star_handler = _relion("relion_star_handler")
    chosen = [2, 4, 5]
    out = tmp_path / "Select"
    assert otf2d(["select", str(classified.run_dir), "--out", str(out), "--classes", "2,4,5", "--quiet"]) == 0
    ours = starfile.read(out / "particles.star", always_dict=True)["particles"]
    data_star = sorted(classified.run_dir.glob("run_it*_data.star"))[-1]
    kept = []
    for number in chosen:
        part = tmp_path / f"class{number}.star"
        select = ["--select", "rlnClassNumber", "--minval", str(number), "--maxval", str(number)]
        done = subprocess.run(
            [star_handler, "--i", str(data_star), "--o", str(part), *select],
            cwd=classified.project,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        kept.append(starfile.read(part, always_dict=True)["particles"])
    theirs = starfile.read(data_star, always_dict=True)["particles"]
    names = set().union(*(set(k["rlnImageName"]) for k in kept))
    in_order = [name for name in theirs["rlnImageName"] if name in names]  # RELION keeps the file's order
    assert len(ours) == sum(len(k) for k in kept) > 0
    assert list(ours["rlnImageName"]) == in_order
    relion_rows = theirs.set_index("rlnImageName").loc[in_order]
    np.testing.assert_array_equal(ours["rlnClassNumber"].to_numpy(), relion_rows["rlnClassNumber"].to_numpy())
    for column in ("rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        np.testing.assert_allclose(ours[column].to_numpy(), relion_rows[column].to_numpy(), atol=1e-4)


@pytest.mark.slow
def test_select_auto_leaves_out_junk_hiding_in_good_classes(classified: ClassifiedSession, tmp_path: Path) -> None:
    """Issue 14: ``--auto`` also drops particles their class explains far worse than its typical member
    (``rlnOtf2dJunkScore`` > 0.5). Against whole-class selection on the ground truth: what it leaves out is
    several times richer in junk than what it keeps, and nearly every good particle stays."""
    whole, default = tmp_path / "whole", tmp_path / "default"
    assert otf2d(["select", str(classified.run_dir), "--out", str(whole), "--particle-junk-threshold", "1"]) == 0
    assert otf2d(["select", str(classified.run_dir), "--out", str(default), "--quiet"]) == 0
    whole_names = starfile.read(whole / "particles.star", always_dict=True)["particles"]["rlnImageName"].tolist()
    chosen = starfile.read(default / "particles.star", always_dict=True)["particles"]
    assert (chosen["rlnOtf2dJunkScore"] <= 0.5).all()
    kept = set(chosen["rlnImageName"])
    assert kept < set(whole_names)
    junk = dict(zip(whole_names, is_junk(classified.truth_of(whole_names)), strict=True))
    left_out = [n for n in whole_names if n not in kept]
    good_whole = sum(not junk[n] for n in whole_names)
    good_kept = sum(not junk[n] for n in kept)
    assert good_kept >= 0.98 * good_whole
    junk_rate_left_out = sum(junk[n] for n in left_out) / len(left_out)
    junk_rate_whole = sum(junk.values()) / len(whole_names)
    assert junk_rate_left_out >= 3 * junk_rate_whole
    record = json.loads((default / "selection.json").read_text())
    assert record["particles_dropped_as_junk_in_kept_classes"] == len(left_out)
