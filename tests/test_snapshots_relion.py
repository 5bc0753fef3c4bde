"""RELION Class2D writer: every field read back with starfile/mrcfile, and parsed by RELION 3.1 itself."""

from __future__ import annotations

import dataclasses
import hashlib
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
from snapshot_factory import COUNTS, IMAGE_PIXEL_SIZE, IMAGE_SIZE, PIXEL_SIZE, class_patterns, make_snapshot

from otf2d import core
from otf2d.core.errors import InputError, NonFiniteError
from otf2d.core.particles import CtfParams
from otf2d.core.snapshot import ClassSnapshot
from otf2d.monitoring.snapshots.relion import UNKNOWN_RESOLUTION_ANGSTROM, iteration_root, write_relion_class2d

STRINGS = ["rlnImageName", "rlnMicrographName", "rlnReferenceImage", "rlnOpticsGroupName"]


def _read(path: Path) -> dict[str, object]:
    return starfile.read(path, always_dict=True, parse_as_string=STRINGS)


@pytest.fixture
def written(tmp_path: Path) -> tuple[ClassSnapshot, dict[str, Path], Path]:
    snapshot = make_snapshot()
    project = tmp_path / "project"
    paths = write_relion_class2d(snapshot, project / "Class2D" / "job001", project_dir=project)
    return snapshot, paths, project


def test_file_names_follow_relion(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    _, paths, project = written
    job = project / "Class2D" / "job001"
    assert paths == {
        "classes": job / "run_it001_classes.mrcs",
        "model": job / "run_it001_model.star",
        "data": job / "run_it001_data.star",
        "provenance": job / "run_it001_otf2d.json",
    }
    assert sorted(p.name for p in job.iterdir()) == sorted(p.name for p in paths.values())
    assert iteration_root("run", 12) == "run_it012"
    assert iteration_root("run", 1234) == "run_it1234"


def test_classes_stack(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    _, paths, _ = written
    with mrcfile.open(paths["classes"]) as mrc:
        assert mrc.is_image_stack()
        assert mrc.data.shape == (len(COUNTS), 32, 32)
        assert mrc.data.dtype == np.float32
        np.testing.assert_array_equal(mrc.data, class_patterns())
        assert float(mrc.voxel_size.x) == pytest.approx(PIXEL_SIZE, rel=1e-6)
        assert float(mrc.voxel_size.y) == pytest.approx(PIXEL_SIZE, rel=1e-6)


def test_model_star(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    snapshot, paths, _ = written
    text = paths["model"].read_text()
    assert text.count("# version 30001") == text.count("\ndata_") == 2
    blocks = _read(paths["model"])
    general = blocks["model_general"]
    assert isinstance(general, dict)
    parts = snapshot.particles
    assert general["rlnReferenceDimensionality"] == 2
    assert general["rlnOriginalImageSize"] == IMAGE_SIZE
    assert general["rlnPixelSize"] == PIXEL_SIZE
    assert general["rlnNrClasses"] == len(COUNTS)
    assert general["rlnNrGroups"] == 1
    assert general["rlnNrOpticsGroups"] == 2
    assert general["rlnTau2FudgeFactor"] == 2.0
    assert general["rlnNormCorrectionAverage"] == 1.0
    assert general["rlnCurrentResolution"] == 9.75  # best finite class resolution
    assert general["rlnLogLikelihood"] == pytest.approx(float(np.sum(parts.log_likelihood)), rel=1e-15)
    assert general["rlnAveragePmax"] == pytest.approx(float(np.mean(parts.pmax)), rel=1e-15)
    ox, oy = parts.origin_x_angstrom, parts.origin_y_angstrom
    expected_sigma = np.sqrt(sum(x * x + y * y for x, y in zip(ox, oy, strict=True)) / (2 * len(ox)))
    assert general["rlnSigmaOffsetsAngst"] == pytest.approx(expected_sigma, rel=1e-12)

    classes = blocks["model_classes"]
    assert isinstance(classes, pd.DataFrame)
    assert list(classes["rlnReferenceImage"]) == [
        f"{k:06d}@Class2D/job001/run_it001_classes.mrcs" for k in range(1, len(COUNTS) + 1)
    ]
    dist = classes["rlnClassDistribution"].to_numpy()
    assert dist.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(dist, np.array(COUNTS) / sum(COUNTS), rtol=1e-15)
    res = classes["rlnEstimatedResolution"].to_numpy()
    np.testing.assert_array_equal(res, [12.5, 15.25, UNKNOWN_RESOLUTION_ANGSTROM, 9.75, 30.0, 18.0])
    np.testing.assert_array_equal(classes["rlnOverallFourierCompleteness"], [1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(classes["rlnAccuracyRotations"], snapshot.accuracy_rotations_degrees)
    np.testing.assert_array_equal(classes["rlnAccuracyTranslationsAngst"], snapshot.accuracy_translations_angstrom)
    np.testing.assert_array_equal(classes["rlnClassPriorOffsetX"], 0.0)
    np.testing.assert_array_equal(classes["rlnClassPriorOffsetY"], 0.0)


def test_model_star_carries_the_class_score_of_a_scored_snapshot(tmp_path: Path) -> None:
    """``rlnPredictedClassScore`` (RELION 4's class-ranker merit, higher = better) = 1 − junk score."""
    scores = np.array([0.125, 0.75, 1.0, 0.5, 0.0, 0.875])
    snapshot = make_snapshot(junk_score=scores)
    paths = write_relion_class2d(snapshot, tmp_path / "job")
    classes = _read(paths["model"])["model_classes"]
    assert isinstance(classes, pd.DataFrame)
    goodness = classes["rlnPredictedClassScore"].to_numpy()
    np.testing.assert_allclose(goodness, [0.875, 0.25, 0.0, 0.5, 1.0, 0.125], rtol=0, atol=1e-15)
    # RELION's Subset selection keeps classes scoring >= 0.5 by default: exactly those not flagged junk
    assert (goodness >= 0.5).tolist() == (scores <= 0.5).tolist()
    unscored = _read(write_relion_class2d(make_snapshot(), tmp_path / "plain")["model"])["model_classes"]
    assert isinstance(unscored, pd.DataFrame)
    assert "rlnPredictedClassScore" not in unscored.columns


def test_data_star(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    snapshot, paths, _ = written
    text = paths["data"].read_text()
    assert text.count("# version 30001") == text.count("\ndata_") == 2
    blocks = _read(paths["data"])
    optics, particles = blocks["optics"], blocks["particles"]
    assert isinstance(optics, pd.DataFrame) and isinstance(particles, pd.DataFrame)
    assert list(optics["rlnOpticsGroup"]) == [1, 2]
    assert list(optics["rlnOpticsGroupName"]) == ["opticsGroup1", "opticsGroup2"]
    assert list(optics["rlnVoltage"]) == [300.0, 200.0]
    assert list(optics["rlnSphericalAberration"]) == [2.7, 0.01]
    assert list(optics["rlnAmplitudeContrast"]) == [0.1, 0.07]
    assert list(optics["rlnImagePixelSize"]) == [IMAGE_PIXEL_SIZE] * 2
    assert list(optics["rlnImageSize"]) == [IMAGE_SIZE] * 2
    assert list(optics["rlnImageDimensionality"]) == [2, 2]

    parts = snapshot.particles
    n = len(parts)
    assert len(particles) == n == sum(COUNTS)
    expected_names = [
        "%06d@%s" % (i, p)  # noqa: UP031 - written independently of the code under test
        for p, i in zip(parts.stack_paths, parts.indices, strict=True)
    ]
    assert list(particles["rlnImageName"]) == expected_names
    assert particles["rlnImageName"].iloc[0] == "000001@Extract/job007/Movies/FoilHole_1000_Data-4.5e3_x.mrcs"
    assert list(particles["rlnMicrographName"]) == [str(m) for m in parts.micrograph_names]  # type: ignore[union-attr]
    for label in ("rlnClassNumber", "rlnOpticsGroup", "rlnNrOfSignificantSamples", "rlnGroupNumber"):
        assert particles[label].dtype.kind == "i", label
    np.testing.assert_array_equal(particles["rlnClassNumber"], parts.class_index + 1)
    assert sorted(set(particles["rlnClassNumber"])) == [1, 2, 4, 5, 6]  # class 3 is empty
    np.testing.assert_array_equal(np.bincount(particles["rlnClassNumber"], minlength=len(COUNTS) + 1)[1:], COUNTS)
    np.testing.assert_array_equal(particles["rlnOpticsGroup"], parts.optics_groups)
    exact = {
        "rlnAnglePsi": parts.psi_degrees,
        "rlnOriginXAngst": parts.origin_x_angstrom,
        "rlnOriginYAngst": parts.origin_y_angstrom,
        "rlnMaxValueProbDistribution": parts.pmax,
        "rlnLogLikeliContribution": parts.log_likelihood,
        "rlnNrOfSignificantSamples": parts.n_significant,
        "rlnDefocusU": parts.ctf.defocus_u_angstrom,
        "rlnDefocusV": parts.ctf.defocus_v_angstrom,
        "rlnDefocusAngle": parts.ctf.defocus_angle_degrees,
        "rlnPhaseShift": parts.ctf.phase_shift_degrees,
        "rlnCtfBfactor": parts.ctf.bfactor_angstrom2,
        "rlnCtfScalefactor": parts.ctf.scale,
    }
    for label, values in exact.items():
        np.testing.assert_array_equal(particles[label].to_numpy(), values, err_msg=label)  # bit-exact
    assert particles["rlnMaxValueProbDistribution"].iloc[0] == 1.234567890123e-12
    np.testing.assert_array_equal(particles["rlnGroupNumber"], 1)
    np.testing.assert_array_equal(particles["rlnNormCorrection"], 1.0)
    # kV, Cs and Q0 agree with the optics groups, so they stay in the optics table only.
    assert not {"rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"} & set(particles.columns)


def test_provenance(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    snapshot, paths, _ = written
    record = json.loads(paths["provenance"].read_text())
    assert record["otf2d_version"] == core.__version__
    assert record["iteration"] == 1
    assert record["n_particles"] == sum(COUNTS)
    assert record["n_classes"] == len(COUNTS)
    assert record["parameters"] == {"n_classes": 6, "tau2_fudge": 2.0, "seed": 0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["written_at"])
    names = sorted(
        "%06d@%s" % (i, p)  # noqa: UP031
        for p, i in zip(snapshot.particles.stack_paths, snapshot.particles.indices, strict=True)
    )
    assert record["particle_set_sha256"] == hashlib.sha256("".join(n + "\n" for n in names).encode()).hexdigest()


def test_parameters_with_numpy_and_non_finite_values_are_recorded(tmp_path: Path) -> None:
    params = {
        "shape": np.array([2, 3]),
        "x": np.float32(0.5),
        "inf": float("inf"),
        "path": tmp_path,
        "t": (1, 2),
    }
    paths = write_relion_class2d(make_snapshot(parameters=params), tmp_path)
    record = json.loads(paths["provenance"].read_text())
    assert record["parameters"] == {
        "shape": [2, 3],
        "x": 0.5,
        "inf": "inf",
        "path": str(tmp_path),
        "t": [1, 2],
    }


def test_reference_path_without_project_dir_is_out_dir_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = write_relion_class2d(make_snapshot(iteration=3), Path("Class2D/otf2d"), root="live")
    classes = _read(paths["model"])["model_classes"]
    assert isinstance(classes, pd.DataFrame)
    assert classes["rlnReferenceImage"].iloc[2] == "000003@Class2D/otf2d/live_it003_classes.mrcs"


def test_per_particle_voltage_is_written_when_it_differs_from_its_optics_group(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    ctf = snapshot.particles.ctf
    voltage = ctf.voltage_kv.copy()
    voltage[4] = 120.0
    parts = dataclasses.replace(snapshot.particles, ctf=CtfParams(**{**dataclasses.asdict(ctf), "voltage_kv": voltage}))
    paths = write_relion_class2d(dataclasses.replace(snapshot, particles=parts), tmp_path)
    particles = _read(paths["data"])["particles"]
    assert isinstance(particles, pd.DataFrame)
    np.testing.assert_array_equal(particles["rlnVoltage"], voltage)
    assert "rlnSphericalAberration" not in particles.columns


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    no_group_2 = dataclasses.replace(snapshot, optics=snapshot.optics[:1])
    with pytest.raises(InputError, match=r"optics group\(s\) \[2\]"):
        write_relion_class2d(no_group_2, tmp_path / "a")
    assert not any((tmp_path / "a").iterdir())
    psi = snapshot.particles.psi_degrees.copy()
    psi[3] = np.nan
    bad = dataclasses.replace(snapshot, particles=dataclasses.replace(snapshot.particles, psi_degrees=psi))
    with pytest.raises(NonFiniteError, match="psi_degrees"):
        write_relion_class2d(bad, tmp_path / "b")
    assert not any((tmp_path / "b").iterdir())


def test_no_particles_yet(tmp_path: Path) -> None:
    snapshot = make_snapshot((0, 0, 0))
    paths = write_relion_class2d(snapshot, tmp_path)
    blocks = _read(paths["data"])
    assert len(blocks["particles"]) == 0  # type: ignore[arg-type]
    classes = _read(paths["model"])["model_classes"]
    np.testing.assert_array_equal(classes["rlnClassDistribution"], 0.0)  # type: ignore[index]


# --- RELION 3.1 itself --------------------------------------------------------------------------


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} not on PATH (Debian's relion package is not installed)")
    return path


def _run(args: list[str], cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.relion
def test_relion_star_handler_reads_data_star(written: tuple[ClassSnapshot, dict[str, Path], Path]) -> None:
    binary = _need("relion_star_handler")
    snapshot, paths, project = written
    # With no operation, relion_star_handler 3.1.3 loads the file through its ObservationModel
    # (optics + particles) and writes it back: a full parse by RELION.
    log = _run([binary, "--i", str(paths["data"].relative_to(project)), "--o", "out.star"], project)
    assert "previous version" not in log  # RELION recognised the 3.1 layout (optics table)
    back = _read(project / "out.star")
    particles = back["particles"]
    assert isinstance(particles, pd.DataFrame)
    parts = snapshot.particles
    assert list(particles["rlnImageName"]) == parts.image_names()
    np.testing.assert_array_equal(particles["rlnClassNumber"], parts.class_index + 1)
    np.testing.assert_allclose(particles["rlnAnglePsi"], parts.psi_degrees, atol=1e-4)
    np.testing.assert_allclose(particles["rlnOriginXAngst"], parts.origin_x_angstrom, atol=1e-4)
    np.testing.assert_allclose(particles["rlnDefocusU"], parts.ctf.defocus_u_angstrom, atol=1e-4)
    np.testing.assert_allclose(particles["rlnMaxValueProbDistribution"], parts.pmax, rtol=1e-5, atol=1e-6)
    optics = back["optics"]
    assert isinstance(optics, pd.DataFrame)
    assert list(optics["rlnImagePixelSize"]) == [IMAGE_PIXEL_SIZE] * 2


@pytest.mark.relion
def test_relion_image_handler_reads_classes_with_pixel_size(
    written: tuple[ClassSnapshot, dict[str, Path], Path],
) -> None:
    binary = _need("relion_image_handler")
    snapshot, paths, project = written
    out = _run([binary, "--i", str(paths["classes"]), "--stats"], project)
    rows = re.findall(r"^(\d{6})@.*avg= (\S+) .*angpix = (\S+)$", out, flags=re.MULTILINE)
    assert [int(r[0]) for r in rows] == list(range(1, len(COUNTS) + 1))
    for k, (_, avg, angpix) in enumerate(rows):
        assert float(angpix) == pytest.approx(PIXEL_SIZE)
        assert float(avg) == pytest.approx(float(np.mean(snapshot.averages[k], dtype=np.float64)), abs=1e-5)


@pytest.mark.relion
def test_relion_refine_starts_from_our_model_and_data(tmp_path: Path) -> None:
    """``relion_refine --ref run_it001_model.star`` reads ``data_model_classes``, follows every
    ``rlnReferenceImage`` into our stack, and classifies the particles of our ``_data.star``.

    The snapshot is scored, so the model also has ``rlnPredictedClassScore``, a label RELION 3.1.3
    does not know: it warns that it ignores it and reads the rest."""
    binary = _need("relion_refine")
    project = tmp_path / "project"
    averages = class_patterns(len(COUNTS), IMAGE_SIZE)
    snapshot = dataclasses.replace(
        make_snapshot(averages=averages, junk_score=np.linspace(0.0, 1.0, len(COUNTS))),
        pixel_size_angstrom=IMAGE_PIXEL_SIZE,
    )  # RELION needs references at the particles' box and pixel size
    paths = write_relion_class2d(snapshot, project / "Class2D" / "job001", project_dir=project)
    parts = snapshot.particles
    rng = np.random.default_rng(3)
    for stack in sorted(set(parts.stack_paths)):
        n = int(parts.indices[parts.stack_paths == stack].max())
        (project / stack).parent.mkdir(parents=True, exist_ok=True)
        with mrcfile.new(project / stack) as mrc:
            mrc.set_data(rng.normal(size=(n, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32))
            mrc.set_image_stack()
            mrc.voxel_size = IMAGE_PIXEL_SIZE
    (project / "Class2D" / "check").mkdir()
    args = [
        binary,
        "--i",
        str(paths["data"].relative_to(project)),
        "--ref",
        str(paths["model"].relative_to(project)),
    ]
    args += ["--o", "Class2D/check/run", "--iter", "1", "--K", str(len(COUNTS)), "--particle_diameter", "80"]
    args += ["--tau2_fudge", "2", "--psi_step", "30", "--offset_range", "3", "--offset_step", "2", "--ctf"]
    args += ["--j", "1", "--pool", "10", "--dont_combine_weights_via_disc"]
    log = _run(args, project)
    assert "unknown label: rlnPredictedClassScore" in log  # ignored with a warning, not an error
    check = project / "Class2D" / "check"
    # it000 holds the references as RELION read them: our classes, slice for slice, at our pixel size.
    with mrcfile.open(check / "run_it000_classes.mrcs") as mrc:
        np.testing.assert_array_equal(mrc.data, averages)
        assert float(mrc.voxel_size.x) == pytest.approx(IMAGE_PIXEL_SIZE)
    data = _read(check / "run_it001_data.star")["particles"]
    assert isinstance(data, pd.DataFrame)
    assert sorted(data["rlnImageName"]) == sorted(parts.image_names())
    model = _read(check / "run_it001_model.star")["model_general"]
    assert model["rlnNrClasses"] == len(COUNTS)  # type: ignore[index]
