"""Issue 14, item 1: every input column travels through ``otf2d classify`` and ``select`` into the
RELION and cryoSPARC outputs, which RELION's own ``relion_star_handler`` and cryosparc-tools read."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from roundtrip_project import MIC_SHAPE, PIXEL, RoundtripProject, make_project
from snapshot_factory import make_snapshot

from otf2d.core.cli import main as otf2d
from otf2d.core.readers import read_particle_table
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.monitoring.snapshots.cryosparc import ALIGNMENTS2D_OMITTED

FAST = [
    "--classes", "2", "--batch-per-class", "6", "--online-em-iterations", "2",
    "--in-plane-step", "30", "--max-shift", "2", "--threads", "1", "--quiet", "--seed", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> RoundtripProject:
    return make_project(tmp_path_factory.mktemp("roundtrip"))


@pytest.fixture(scope="module")
def run_dir(project: RoundtripProject) -> Path:
    out = project.root / "Class2D" / "otf2d"
    assert otf2d(["classify", str(project.particles_star), "--out", str(out), *FAST]) == 0
    return out


def _one(out: Path, suffix: str) -> Path:
    found = sorted(out.glob(f"run_it*{suffix}"))
    assert found, f"no run_it*{suffix} in {out}"
    return found[-1]


def _blocks(path: Path) -> dict[str, pd.DataFrame]:
    return starfile.read(path, always_dict=True)  # type: ignore[no-any-return]


def test_reader_keeps_every_input_column(project: RoundtripProject) -> None:
    table = read_particle_table(project.particles_star)
    assert table.extra is not None and table.extra.origin == "relion"
    given = _blocks(project.particles_star)
    assert [c for c in table.extra.names if not c.startswith("optics/")] == list(given["particles"].columns)
    assert "optics/rlnMicrographOriginalPixelSize" in table.extra.names
    np.testing.assert_array_equal(table.extra.columns["rlnCoordinateX"], project.coords_x)
    subset = table.take([3, 1])
    assert subset.extra is not None
    np.testing.assert_array_equal(subset.extra.columns["rlnCoordinateY"], project.coords_y[[3, 1]])


def test_classify_data_star_keeps_every_input_column(project: RoundtripProject, run_dir: Path) -> None:
    given = _blocks(project.particles_star)
    out = _blocks(_one(run_dir, "_data.star"))
    gp, op = given["particles"], out["particles"].set_index("rlnImageName")
    kept = [c for c in gp.columns if c not in ("rlnClassNumber", "rlnOriginX", "rlnImageName")]
    assert sorted(op.index) == sorted(gp["rlnImageName"])
    for label in kept:
        assert label in op.columns, label
        np.testing.assert_array_equal(op.loc[gp["rlnImageName"], label].to_numpy(), gp[label].to_numpy(), label)
    assert "rlnOriginX" not in op.columns  # an old result in pixels is not passed off as ours
    assert set(op["rlnClassNumber"]) <= {1, 2}  # the old class 7 was replaced
    assert {"rlnAnglePsi", "rlnOriginXAngst", "rlnMaxValueProbDistribution"} <= set(op.columns)
    optics = out["optics"]
    assert optics["rlnMicrographOriginalPixelSize"].tolist() == [1.0]
    assert optics["rlnCtfDataAreCtfPremultiplied"].tolist() == [0]


def test_classify_cs_has_location_from_the_star_coordinates(project: RoundtripProject, run_dir: Path) -> None:
    cs = np.load(_one(run_dir, "_particles.cs"), allow_pickle=False)
    star = _blocks(_one(run_dir, "_data.star"))["particles"]
    assert len(cs) == project.n
    ny, nx = MIC_SHAPE
    np.testing.assert_array_equal(cs["location/micrograph_shape"], np.tile([ny, nx], (project.n, 1)))
    paths = np.char.decode(cs["location/micrograph_path"]).tolist()
    assert paths == star["rlnMicrographName"].tolist()
    # pyem csparc2star's inverse: X = frac_x * nx, Y = (1 - frac_y) * ny
    np.testing.assert_allclose(cs["location/center_x_frac"] * nx, star["rlnCoordinateX"], atol=1e-3)
    np.testing.assert_allclose((1 - cs["location/center_y_frac"]) * ny, star["rlnCoordinateY"], atol=1e-3)
    assert cs["location/micrograph_uid"][0] == cs["location/micrograph_uid"][1] != cs["location/micrograph_uid"][-1]


def test_cryosparc_tools_loads_the_cs_with_location(project: RoundtripProject, run_dir: Path) -> None:
    dataset_module = pytest.importorskip("cryosparc.dataset")
    data = dataset_module.Dataset.load(_one(run_dir, "_particles.cs"))
    assert len(data) == project.n
    for field in ("location/micrograph_path", "location/center_x_frac", "location/micrograph_shape", "uid"):
        assert field in data.fields(), field
    assert data["location/micrograph_shape"].shape == (project.n, 2)


def test_cs_input_fields_come_back_unchanged(project: RoundtripProject, run_dir: Path) -> None:
    """A .cs input (our own, plus a field cryoSPARC has and otf2d does not know) is written back field by
    field, uid included; its location becomes RELION coordinates in the STAR output."""
    source = np.load(_one(run_dir, "_particles.cs"), allow_pickle=False)
    names = source.dtype.names or ()
    dtype = [*source.dtype.descr, ("pick_stats/ncc_score", "<f4")]
    extended = np.zeros(len(source), dtype=dtype)
    for name in names:
        extended[name] = source[name]
    extended["pick_stats/ncc_score"] = np.linspace(0.1, 0.9, len(source))
    extended["uid"] = np.arange(1000, 1000 + len(source), dtype=np.uint64)
    extended["ctf/tilt_A"] = [[0.25, -0.5]] * len(source)  # a default-valued field of ours: the input's wins
    extended["blob/import_sig"] = 1467678264753543796
    cs_in = project.root / "from_cs" / "input.cs"
    cs_in.parent.mkdir(exist_ok=True)
    with cs_in.open("wb") as fh:
        np.save(fh, extended)
    out = project.root / "Class2D" / "from_cs"
    assert otf2d(["classify", str(cs_in), "--project-dir", str(project.root), "--out", str(out), *FAST]) == 0
    back = np.load(_one(out, "_particles.cs"), allow_pickle=False)
    for name in names:
        if name.startswith(("alignments2D/", "otf2d/")):
            continue  # this run's results
        assert back.dtype[name] == extended.dtype[name], name
        np.testing.assert_array_equal(back[name], extended[name], name)
    np.testing.assert_array_equal(back["pick_stats/ncc_score"], extended["pick_stats/ncc_score"])
    star = _blocks(_one(out, "_data.star"))["particles"]
    np.testing.assert_allclose(star["rlnCoordinateX"], project.coords_x, atol=0.51)
    np.testing.assert_allclose(star["rlnCoordinateY"], project.coords_y, atol=0.51)


def test_select_keeps_every_column(project: RoundtripProject, run_dir: Path) -> None:
    out = project.root / "Select" / "otf2d"
    assert otf2d(["select", str(run_dir), "--classes", "1,2", "--out", str(out)]) == 0
    given = _blocks(project.particles_star)["particles"]
    chosen = _blocks(out / "particles.star")["particles"].set_index("rlnImageName")
    for label in ("rlnCoordinateX", "rlnCtfFigureOfMerit", "rlnHelicalTubeID", "rlnAutopickFigureOfMerit"):
        np.testing.assert_array_equal(
            chosen[label].to_numpy(), given.set_index("rlnImageName").loc[chosen.index, label].to_numpy(), label
        )
    assert _blocks(out / "particles.star")["optics"]["rlnMicrographOriginalPixelSize"].tolist() == [1.0]
    cs = np.load(out / "particles.cs", allow_pickle=False)
    snap_cs = np.load(_one(run_dir, "_particles.cs"), allow_pickle=False)
    assert set(cs["uid"].tolist()) <= set(snap_cs["uid"].tolist())
    assert "location/center_x_frac" in (cs.dtype.names or ())


@pytest.mark.relion
def test_relion_star_handler_removes_duplicates_from_our_data_star(project: RoundtripProject, run_dir: Path) -> None:
    binary = shutil.which("relion_star_handler")
    if binary is None:
        pytest.skip("relion_star_handler not on PATH (Debian's relion package is not installed)")
    data_star = _one(run_dir, "_data.star").relative_to(project.root)
    done = subprocess.run(
        [binary, "--i", str(data_star), "--o", "nodup.star", "--remove_duplicates", "30"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kept = _blocks(project.root / "nodup.star")["particles"]
    # particle 2 sits 6 Å from particle 1 on the same micrograph: one of the two goes
    assert len(kept) == project.n - len(project.duplicate_rows)
    assert "rlnCoordinateX" in kept.columns and "rlnCtfFigureOfMerit" in kept.columns


def test_cryosparc_tools_loads_every_cs_and_every_blob_path_resolves_under_the_stated_root(
    project: RoundtripProject, run_dir: Path, shared_data: Path
) -> None:
    """Issue 14, item 3: particles and class averages load with cryosparc-tools, their fields have the
    dtypes of a real cryoSPARC export, and every ``blob/path`` is relative to the root latest.json names."""
    dataset_module = pytest.importorskip("cryosparc.dataset")
    latest = json.loads((run_dir / "latest.json").read_text())
    root = Path(latest["cryosparc_paths_relative_to"])
    assert root == project.root.resolve()
    real = dataset_module.Dataset.load(shared_data / "cryodrgn" / "cryosparc_J2_particles_exported.cs")
    for role in ("particles_cs", "class_averages_cs"):
        data = dataset_module.Dataset.load(run_dir / latest["files"][role])
        paths = {p.lstrip(">") for p in data["blob/path"].tolist()}
        assert paths and all(not Path(p).is_absolute() and (root / p).is_file() for p in paths), paths
        common = [f for f in data.fields() if f in real.fields()]
        assert "blob/sign" in common and "blob/path" in common
        for field in common:
            assert data[field].dtype == real[field].dtype, field
            assert data[field].shape[1:] == real[field].shape[1:], field


def test_engine_style_snapshot_without_project_dir_has_relative_class_average_paths(tmp_path: Path) -> None:
    """An engine session started without a project directory: the class averages' blob/path is relative
    to the snapshot directory (was absolute), and latest.json says so."""
    out = tmp_path / "sessions" / "s" / "snapshots"
    paths = write_snapshot(make_snapshot(), out, project_dir=None, session="s")
    averages = np.load(paths.class_averages_cs, allow_pickle=False)
    stored = {p.decode() for p in averages["blob/path"]}
    assert stored == {paths.classes_mrcs.name}
    latest = json.loads((out / "latest.json").read_text())
    assert Path(latest["cryosparc_paths_relative_to"]) == out.resolve()
    assert (Path(latest["cryosparc_paths_relative_to"]) / stored.pop()).is_file()


def _relion(binary: str, args: list[str], cwd: Path) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not on PATH (Debian's relion package is not installed)")
    done = subprocess.run([path, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{binary} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


@pytest.mark.relion
def test_relion_refine_continues_from_our_classes_keeping_the_coordinates(
    project: RoundtripProject, run_dir: Path
) -> None:
    """One iteration of RELION's own 2D classification from our _model.star and _data.star; RELION's
    output still has the input's coordinates (so re-extraction can follow)."""
    out = project.root / "Class2D" / "relion_check"
    out.mkdir(parents=True, exist_ok=True)
    args = ["--i", str(_one(run_dir, "_data.star").relative_to(project.root))]
    args += ["--ref", str(_one(run_dir, "_model.star").relative_to(project.root))]
    args += ["--o", "Class2D/relion_check/run", "--iter", "1", "--K", "2", "--particle_diameter", "50"]
    args += ["--psi_step", "30", "--offset_range", "2", "--offset_step", "2", "--ctf", "--j", "1", "--pool", "4"]
    args += ["--dont_combine_weights_via_disc"]
    _relion("relion_refine", args, project.root)
    back = _blocks(out / "run_it001_data.star")["particles"].set_index("rlnImageName")
    given = _blocks(project.particles_star)["particles"].set_index("rlnImageName").loc[back.index]
    for label in ("rlnCoordinateX", "rlnCoordinateY", "rlnMicrographName", "rlnCtfFigureOfMerit"):
        np.testing.assert_array_equal(back[label].to_numpy(), given[label].to_numpy(), label)


@pytest.mark.relion
def test_relion_star_handler_removes_duplicates_from_our_selection(project: RoundtripProject, run_dir: Path) -> None:
    out = project.root / "Select" / "dedup"
    assert otf2d(["select", str(run_dir), "--classes", "1,2", "--out", str(out)]) == 0
    star = (out / "particles.star").relative_to(project.root)
    _relion(
        "relion_star_handler",
        ["--i", str(star), "--o", "Select/dedup/nodup.star", "--remove_duplicates", "30"],
        project.root,
    )
    kept = _blocks(out / "nodup.star")["particles"]
    assert len(kept) == project.n - len(project.duplicate_rows)


def _check_result_group(csg: Path, group_type: str, slots: set[str], root: Path) -> np.ndarray:
    """Load ``csg`` as cryoSPARC's Import Result Group would: its .cs by the '>' path beside it, with
    cryosparc-tools; every slot's fields present, as many rows as it says, blob paths under ``root``."""
    dataset_module = pytest.importorskip("cryosparc.dataset")
    yaml = pytest.importorskip("yaml")
    group = yaml.safe_load(csg.read_text())
    assert group["group"]["type"] == group_type
    assert f"blob/path relative to {root.resolve()}" in group["group"]["description"]
    assert set(group["results"]) >= slots, group["results"]
    metafiles = {result["metafile"] for result in group["results"].values()}
    assert len(metafiles) == 1 and next(iter(metafiles)).startswith(">")
    cs_path = csg.parent / next(iter(metafiles))[1:]
    data = dataset_module.Dataset.load(cs_path)
    for slot, result in group["results"].items():
        assert result["type"] == f"{group_type}.{slot}"
        assert result["num_items"] == len(data)
        assert any(f.startswith(f"{slot}/") for f in data.fields()), slot
    assert "otf2d" not in group["results"]  # our own fields stay in the .cs, not offered as a slot
    paths = set(data["blob/path"].tolist())
    assert paths and all(not Path(p).is_absolute() and (root / p).is_file() for p in paths), paths
    stored = np.load(cs_path, allow_pickle=False)
    np.testing.assert_array_equal(data["uid"], stored["uid"])
    return stored


def test_every_cryosparc_output_comes_with_a_result_group_that_resolves(
    project: RoundtripProject, run_dir: Path
) -> None:
    """Issue 14, item 3: classify's particles and class averages, select's and rebalance's particles,
    each with a .csg (cryoSPARC's Import Result Group file) naming its .cs beside it and the root of
    its blob paths; cryosparc-tools loads what it names and the blob paths resolve under that root."""
    latest = json.loads((run_dir / "latest.json").read_text())
    root = Path(latest["cryosparc_paths_relative_to"])
    particles = _check_result_group(
        run_dir / latest["files"]["particles_csg"], "particle", {"blob", "ctf", "alignments2D", "location"}, root
    )
    assert len(particles) == project.n
    # the rows are the _data.star's particles: same stacks and (0-based) indices
    star = _blocks(_one(run_dir, "_data.star"))["particles"]
    named = {
        f"{int(i) + 1:06d}@{p.decode()}" for p, i in zip(particles["blob/path"], particles["blob/idx"], strict=True)
    }
    assert named == set(star["rlnImageName"])
    averages = _check_result_group(
        run_dir / latest["files"]["class_averages_csg"], "template", {"blob", "alignments2D"}, root
    )
    classes = mrcfile.read(run_dir / latest["files"]["classes_mrcs"])
    assert averages["blob/idx"].tolist() == list(range(len(classes))) == [0, 1]
    assert {root / p.decode() for p in averages["blob/path"]} == {(run_dir / latest["files"]["classes_mrcs"]).resolve()}
    assert averages["blob/shape"].tolist() == [list(classes.shape[1:])] * len(classes)
    for command, extra in (("select", []), ("rebalance", ["--factor", "0"])):
        out = project.root / "Select" / f"csg_{command}"
        assert otf2d([command, str(run_dir), "--classes", "1,2", "--out", str(out), "--quiet", *extra]) == 0
        chosen = _check_result_group(out / "particles.csg", "particle", {"blob", "ctf", "alignments2D"}, root)
        assert set(chosen["uid"].tolist()) <= set(particles["uid"].tolist())
        record = json.loads((out / ("selection.json" if command == "select" else "rebalance.json")).read_text())
        assert record["files"]["particles_csg"] == "particles.csg"


def test_engine_snapshot_result_groups_are_relative_to_the_snapshot_folder(tmp_path: Path) -> None:
    out = tmp_path / "sessions" / "s" / "snapshots"
    paths = write_snapshot(make_snapshot(), out, project_dir=None, session="s")
    assert paths.class_averages_csg is not None and paths.particles_csg is not None
    _check_result_group(paths.class_averages_csg, "template", {"blob", "alignments2D"}, out)
    yaml = pytest.importorskip("yaml")
    group = yaml.safe_load(paths.particles_csg.read_text())
    assert group["results"]["blob"]["metafile"] == f">{paths.particles_cs.name}"


@pytest.mark.relion
def test_relion_star_handler_removes_duplicates_from_our_rebalanced_particles(
    project: RoundtripProject, run_dir: Path
) -> None:
    out = project.root / "Select" / "rebalanced"
    assert otf2d(["rebalance", str(run_dir), "--classes", "1,2", "--factor", "0", "--out", str(out), "--quiet"]) == 0
    star = (out / "particles.star").relative_to(project.root)
    _relion(
        "relion_star_handler",
        ["--i", str(star), "--o", "Select/rebalanced/nodup.star", "--remove_duplicates", "30"],
        project.root,
    )
    kept = _blocks(out / "nodup.star")["particles"]
    assert len(kept) == project.n - len(project.duplicate_rows)
    assert "rlnCoordinateX" in kept.columns and "rlnMicrographName" in kept.columns


def _image_handler_stats(stack: Path, cwd: Path) -> list[tuple[int, float, float]]:
    """``relion_image_handler --i STACK --stats``: (1-based index, average, pixel size) per image."""
    out = _relion("relion_image_handler", ["--i", str(stack), "--stats"], cwd)
    rows = re.findall(r"^(\d{6})@.*avg= (\S+) .*angpix = (\S+)$", out, flags=re.MULTILINE)
    return [(int(i), float(avg), float(angpix)) for i, avg, angpix in rows]


@pytest.mark.relion
@pytest.mark.parametrize("kind", ["classify_classes", "templates"])
def test_relion_image_handler_stats_reads_our_mrc_outputs(project: RoundtripProject, run_dir: Path, kind: str) -> None:
    """Every kind of MRC stack otf2d writes from a classify run (the classes stack, the picking templates;
    engine snapshots' classes: tests/test_snapshots_relion.py and tests/test_pipeline_exactly_once.py) is
    read by RELION 3.1 image by image, with our pixel size and the averages mrcfile reads."""
    if kind == "classify_classes":
        stack = run_dir / json.loads((run_dir / "latest.json").read_text())["files"]["classes_mrcs"]
    else:
        stack = project.root / "templates.mrcs"
        assert otf2d(["templates", str(run_dir), "--classes", "1,2", "--out", str(stack)]) == 0
    images = mrcfile.read(stack)
    rows = _image_handler_stats(stack.relative_to(project.root), project.root)
    assert [r[0] for r in rows] == list(range(1, len(images) + 1))
    with mrcfile.open(stack, permissive=False) as mrc:
        pixel = float(mrc.voxel_size.x)
    for k, (_, avg, angpix) in enumerate(rows):
        assert angpix == pytest.approx(pixel, rel=1e-4)
        assert avg == pytest.approx(float(np.mean(images[k], dtype=np.float64)), abs=1e-4)
    assert pixel == pytest.approx(PIXEL, rel=1e-4)


def test_classify_cs_has_every_field_of_the_real_export_but_the_documented_omissions(
    run_dir: Path, shared_data: Path
) -> None:
    """Issue 14, item 2, read with cryosparc-tools: every field of the real cryoSPARC 2D export (J2) is in
    the particles .cs of ``otf2d classify`` with J2's dtype and shape, except the five statistics otf2d
    does not compute (ALIGNMENTS2D_OMITTED, each explained in the writer's docstring); what we add is
    location/* (the STAR coordinates) and otf2d's own fields, and RELION columns under relion/."""
    dataset_module = pytest.importorskip("cryosparc.dataset")
    real = dataset_module.Dataset.load(shared_data / "cryodrgn" / "cryosparc_J2_particles_exported.cs")
    ours = dataset_module.Dataset.load(_one(run_dir, "_particles.cs"))
    assert set(real.fields()) - set(ours.fields()) == ALIGNMENTS2D_OMITTED
    for field in set(real.fields()) & set(ours.fields()):
        if field == "blob/path":
            continue  # text: cryosparc-tools gives str objects whatever the stored width
        assert ours[field].dtype == real[field].dtype, field
        assert ours[field].shape[1:] == real[field].shape[1:], field
    added = {f.split("/", 1)[0] for f in set(ours.fields()) - set(real.fields())}
    assert added <= {"location", "otf2d", "relion"}, added
    posterior = np.asarray(ours["alignments2D/class_posterior"])
    assert ((posterior >= 0) & (posterior <= 1)).all()
