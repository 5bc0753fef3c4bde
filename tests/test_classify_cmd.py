"""``otf2d classify`` end to end on a small simulated session: outputs, RELION/cryoSPARC readability,
every particle exactly once, determinism for a seed, and the flags of every classification parameter."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from PIL import Image
from snapshot_factory import make_snapshot

from otf2d.core.classification_flags import FORCE_MAX_FIELD, PARAM_FLAGS, PRECISION_FIELD, params_from_args
from otf2d.core.cli import main as otf2d
from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError
from otf2d.engine.classify.classify_cmd import add_args, junk_summary
from otf2d.monitoring.quality import (
    count_features,
    image_features,
    mask_radius_pixels,
    resolution_features,
    score_features,
)
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import SessionSummary, simulate_session

#: Small and fast: 4 classes, 3 online iterations of 80 particles, coarse sampling.
FAST = [
    "--classes", "4", "--batch-per-class", "20", "--online-em-iterations", "3",
    "--in-plane-step", "15", "--max-shift", "8", "--threads", "2", "--quiet",
]  # fmt: skip


#: A value for every classification flag (checked against Class2DParams below).
EVERY_FLAG = [
    "--icuf", "3", "--max-align-res", "10", "--min-align-res", "30", "--mask-diameter", "150",
    "--mask-outer-diameter", "180", "--online-em-iterations", "5", "--final-full-iterations", "2",
    "--zero-pad", "3", "--per-particle-scale", "--per-particle-scale-iterations", "4", "--non-negativity",
    "--no-recenter",
    "--recenter-threshold", "0.3", "--align-filaments-vertically", "--in-plane-step", "4",
    "--max-shift", "12", "--noise-anneal-start", "1", "--noise-anneal-iterations", "9", "--seed", "7",
    "--force-max", "--precision", "bf16",
]  # fmt: skip


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> SessionSummary:
    out = tmp_path_factory.mktemp("classify_session")
    return simulate_session(SimulationConfig(n_particles=240, n_micrographs=3, snr=0.2, seed=5), out)


@pytest.fixture(scope="module")
def run_dir(session: SessionSummary) -> Path:
    out = session.out_dir / "Class2D" / "otf2d"
    assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST]) == 0
    return out


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_args(parser)
    return parser.parse_args(["in.star", "--out", "o", *argv])


def _latest_files(out: Path, suffix: str) -> Path:
    found = sorted(out.glob(f"run_it*{suffix}"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
def test_outputs_exist_and_hold_every_particle_once(session: SessionSummary, run_dir: Path) -> None:
    data_star = _latest_files(run_dir, "_data.star")
    assert data_star.name == "run_it006_data.star"  # 3 online iterations + 3 full passes (the default)
    for suffix in ("_classes.mrcs", "_model.star", "_particles.cs", "_class_averages.cs", "_gallery.png"):
        _latest_files(run_dir, suffix)
    assert (run_dir / "latest.json").is_file()

    given = starfile.read(session.particles_star, always_dict=True)["particles"]
    data = starfile.read(data_star, always_dict=True)["particles"]
    assert isinstance(data, pd.DataFrame)
    assert len(data) == len(given) == 240
    assert data["rlnImageName"].is_unique
    assert set(data["rlnImageName"]) == set(given["rlnImageName"])
    assert data["rlnClassNumber"].between(1, 4).all()
    assert data["rlnAnglePsi"].between(-180, 180).all()
    assert (np.hypot(data["rlnOriginXAngst"], data["rlnOriginYAngst"]) <= 8.0 + 1e-6).all()
    assert data["rlnMaxValueProbDistribution"].between(0, 1).all()
    assert "rlnMicrographName" in data.columns

    cs = np.load(_latest_files(run_dir, "_particles.cs"), allow_pickle=False)
    assert len(cs) == 240
    assert len(np.unique(cs["uid"])) == 240
    np.testing.assert_array_equal(np.sort(cs["alignments2D/class"]), np.sort(data["rlnClassNumber"] - 1))

    with mrcfile.open(_latest_files(run_dir, "_classes.mrcs"), permissive=True) as mrc:
        classes = np.asarray(mrc.data)
        assert classes.shape == (4, 64, 64)
        assert float(mrc.voxel_size.x) == pytest.approx(session.pixel_size_angstrom)
    assert np.isfinite(classes).all() and classes.std() > 0
    with Image.open(_latest_files(run_dir, "_gallery.png")) as png:
        assert png.size[0] > 64


@pytest.mark.slow
def test_classes_carry_junk_scores_in_the_model_star_and_the_cs(run_dir: Path) -> None:
    """Scored with ``otf2d.monitoring.quality``: the values written match a re-scoring of what was written."""
    classes = starfile.read(_latest_files(run_dir, "_model.star"), always_dict=True)["model_classes"]
    cs = np.load(_latest_files(run_dir, "_class_averages.cs"), allow_pickle=False)
    junk = cs["otf2d/junk_score"].astype(np.float64)
    assert ((junk >= 0) & (junk <= 1)).all()
    np.testing.assert_allclose(1.0 - classes["rlnPredictedClassScore"].to_numpy(), junk, atol=1e-6)
    np.testing.assert_array_equal(cs["otf2d/is_junk"].astype(bool), junk > 0.5)
    assert not any(cs["otf2d/override"])  # no user overrides offline
    # independently: the scores of the averages, counts and resolutions read back from the files
    averages = mrcfile.read(_latest_files(run_dir, "_classes.mrcs")).astype(np.float32)
    data = starfile.read(_latest_files(run_dir, "_data.star"), always_dict=True)["particles"]
    counts = np.bincount(data["rlnClassNumber"].to_numpy() - 1, minlength=len(averages))
    resolution = classes["rlnEstimatedResolution"].to_numpy()
    provenance = json.loads(_latest_files(run_dir, "_otf2d.json").read_text())
    assert provenance["parameters"]["junk_score_threshold"] == 0.5
    assert provenance["parameters"]["class_overrides"] == {}
    features = image_features(averages, mask_radius_pixels({}, averages.shape[-1], float(cs["blob/psize_A"][0])))
    features = {name: np.where(counts > 0, v, np.nan) for name, v in features.items()}
    features.update(count_features(counts))
    features.update(resolution_features(np.where(resolution >= 999.0, np.inf, resolution)))
    np.testing.assert_allclose(score_features(features).scores, junk, atol=1e-5)


def test_junk_summary_counts_the_particles_of_junk_classes() -> None:
    snapshot = dataclasses.replace(
        make_snapshot((10, 30, 0, 60), junk_score=np.array([0.9, 0.2, 0.7, 0.51])),
        parameters={"junk_score_threshold": 0.5},
    )
    line = junk_summary(snapshot)
    assert line.startswith("junk: 3 of 4 classes flagged (junk score > 0.5), 70% of the particles")


@pytest.mark.slow
@pytest.mark.relion
def test_relion_star_handler_reads_the_data_star(session: SessionSummary, run_dir: Path) -> None:
    binary = shutil.which("relion_star_handler")
    if binary is None:
        pytest.skip("relion_star_handler not on PATH (Debian's relion package is not installed)")
    data_star = _latest_files(run_dir, "_data.star")
    # Selecting on rlnClassNumber makes RELION parse every row's class; all 240 are kept.
    done = subprocess.run(
        [binary, "--i", str(data_star), "--o", "selected.star", "--select", "rlnClassNumber", "--minval", "1"],
        cwd=session.out_dir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    back = starfile.read(session.out_dir / "selected.star", always_dict=True)
    assert len(back["particles"]) == 240
    assert "optics" in back


@pytest.mark.slow
def test_same_seed_gives_identical_data_star(session: SessionSummary, run_dir: Path) -> None:
    again = session.out_dir / "Class2D" / "again"
    assert otf2d(["classify", str(session.particles_star), "--out", str(again), *FAST]) == 0
    first = _latest_files(run_dir, "_data.star").read_bytes()
    assert _latest_files(again, "_data.star").read_bytes() == first
    # The MRC header holds a creation time; the class images themselves are identical.
    np.testing.assert_array_equal(
        mrcfile.read(_latest_files(again, "_classes.mrcs")), mrcfile.read(_latest_files(run_dir, "_classes.mrcs"))
    )


def test_every_parameter_has_a_flag() -> None:
    covered = {f.field for f in PARAM_FLAGS} | {FORCE_MAX_FIELD, PRECISION_FIELD}
    assert covered == {f.name for f in dataclasses.fields(Class2DParams)}


def test_flags_default_to_cryosparc_and_override_the_config(tmp_path: Path) -> None:
    assert params_from_args(_parse([])) == Class2DParams()
    config = tmp_path / "c.toml"
    config.write_text("[classification]\nn_classes = 12\nclamp_solvent = true\nmax_resolution_angstrom = 9.0\n")
    params = params_from_args(
        _parse(["--config", str(config), "--classes", "30", "--no-clamp-solvent", "--marginalise", "--no-sort"])
    )
    assert params.n_classes == 30  # flag beats file
    assert params.max_resolution_angstrom == 9.0  # file beats default
    assert params.clamp_solvent is False
    assert params.force_max is False and params.sort_by_size is False
    assert params.recenter is True and params.batch_size_per_class == 100
    many = params_from_args(_parse(EVERY_FLAG))
    assert many == dataclasses.replace(
        Class2DParams(),
        initial_uncertainty_factor=3.0,
        max_alignment_resolution_angstrom=10.0,
        min_alignment_resolution_angstrom=30.0,
        mask_diameter_angstrom=150.0,
        mask_outer_diameter_angstrom=180.0,
        online_em_iterations=5,
        final_full_iterations=2,
        zero_pad_factor=3,
        per_particle_scale=True,
        per_particle_scale_iterations=4,
        non_negativity=True,
        recenter=False,
        recenter_threshold=0.3,
        align_filaments_vertically=True,
        in_plane_step_degrees=4.0,
        max_shift_angstrom=12.0,
        noise_anneal_start_iteration=1,
        noise_anneal_iterations=9,
        seed=7,
        force_max_over_poses=True,
        precision="bf16",
    )


def test_invalid_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="recenter_threshold"):
        params_from_args(_parse(["--recenter-threshold", "2"]))


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        otf2d(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("(default: 50)", "(default: 2.0)", "(default: 6.0)", "(default: 20)", "(default: 100)",
                     "(default: 0.2)", "--marginalise", "--no-recenter", "--no-sort", "--threads"):  # fmt: skip
        assert expected in text


def test_missing_input_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = otf2d(["classify", str(tmp_path / "absent.star"), "--out", str(tmp_path / "o"), "--quiet"])
    assert status == 2
    assert "absent.star" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_file_without_voltage_is_a_clean_error_naming_the_option(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: no data_optics and no rlnVoltage is refused (not 200 kV); the option is checked too."""
    star = tmp_path / "p.star"
    table = starfile.read(shared_data / "cryodrgn" / "empiar_10076_7.star", parse_as_string=["rlnImageName"])
    starfile.write(table.drop(columns=["rlnVoltage"]), star)
    out = tmp_path / "o"
    assert otf2d(["classify", str(star), "--out", str(out), "--quiet"]) == 2
    assert "no accelerating voltage" in capsys.readouterr().err and not out.exists()
    assert otf2d(["classify", str(star), "--out", str(out), "--quiet", "--voltage", "3000"]) == 2
    assert "voltage_kv=3000 given explicitly is outside 60–400 kV" in capsys.readouterr().err


@pytest.mark.slow
def test_cryosparc_cs_input(session: SessionSummary, run_dir: Path) -> None:
    """Our own ``particles.cs`` (cryoSPARC layout) is a valid input; its stack paths are relative to --project-dir."""
    cs = _latest_files(run_dir, "_particles.cs")
    out = session.out_dir / "Class2D" / "from_cs"
    args = ["classify", str(cs), "--project-dir", str(session.out_dir), "--out", str(out), *FAST]
    assert otf2d(args) == 0
    data = starfile.read(_latest_files(out, "_data.star"), always_dict=True)["particles"]
    given = starfile.read(session.particles_star, always_dict=True)["particles"]
    assert sorted(data["rlnImageName"]) == sorted(given["rlnImageName"])
    np.testing.assert_allclose(
        data.set_index("rlnImageName").loc[given["rlnImageName"], "rlnDefocusU"].to_numpy(),
        given["rlnDefocusU"].to_numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("full_iterations", [1, 0])
def test_progress_counts_every_particle_each_iteration_sees(session: SessionSummary, full_iterations: int) -> None:
    """The progress bar's count grows by one mini-batch per online-EM iteration and by every particle
    per full pass (the final assignment when there is none), and ends exactly at the planned total."""
    from otf2d.core.readers import read_particle_table
    from otf2d.engine.classify.offline import PhaseUpdate, classify_table, planned_particles

    args = _parse([*FAST, "--final-full-iterations", str(full_iterations)])
    params = params_from_args(args)
    table = read_particle_table(session.particles_star)
    counts: list[int] = []
    phases: list[tuple[str, int, int]] = []

    def on_phase(update: PhaseUpdate) -> None:
        phases.append((update.phase, update.iteration, sum(counts)))

    classify_table(table, params, on_phase=on_phase, on_processed=counts.append)
    batch = params.batch_size_per_class * params.n_classes
    assert sum(counts) == planned_particles(len(table), params)
    online_starts = [done for phase, _, done in phases if phase == "online"]
    assert online_starts == [batch * (i + 1) for i in range(params.online_em_iterations)]
    assert sum(counts) - batch * (1 + params.online_em_iterations) == len(table)
