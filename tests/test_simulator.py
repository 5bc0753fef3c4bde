"""The virtual microscope: RELION Extract output on disk, ground truth, SNR, views, junk, RELION."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from otf2d.core.cli import main as otf2d_main
from otf2d.core.ctf import relion_ctf_2d
from otf2d.core.errors import ConfigError
from otf2d.simulator.config import JUNK_TYPES, SimulationConfig
from otf2d.simulator.particles import prepare_simulation, signal_variance_in_circle, simulate_particles
from otf2d.simulator.projection import project, viewing_direction
from otf2d.simulator.relion_output import TRUTH_COLUMNS
from otf2d.simulator.session import iter_session, particles_per_micrograph, simulate_session
from otf2d.simulator.views import PREFERRED_VIEWS_DEGREES

EXTRACT_COLUMNS = {
    "rlnImageName",
    "rlnMicrographName",
    "rlnOpticsGroup",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnCtfMaxResolution",
    "rlnCtfFigureOfMerit",
    "rlnCoordinateX",
    "rlnCoordinateY",
}
OPTICS_COLUMNS = {
    "rlnOpticsGroupName",
    "rlnOpticsGroup",
    "rlnMicrographOriginalPixelSize",
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnImagePixelSize",
    "rlnImageSize",
    "rlnImageDimensionality",
}
STRINGS = ["rlnImageName", "rlnMicrographName", "rlnOpticsGroupName"]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimulationConfig]:
    out = tmp_path_factory.mktemp("session")
    config = SimulationConfig(n_particles=200, n_micrographs=4, seed=11, junk_fraction=0.2)
    simulate_session(config, out)
    return out, config


def test_session_files_have_relions_names_and_no_tmp_left(session: tuple[Path, SimulationConfig]) -> None:
    out, _ = session
    movies = out / "Extract" / "job005" / "Movies"
    expected = {f"mic_{m:05d}{suffix}" for m in range(1, 5) for suffix in (".mrcs", "_extract.star")}
    assert {p.name for p in movies.iterdir()} == expected
    assert (out / "Extract" / "job005" / "particles.star").is_file()
    assert (out / "truth.csv").is_file()
    assert not list(out.rglob("*.tmp"))


def test_extract_stars_and_stacks_read_back(session: tuple[Path, SimulationConfig]) -> None:
    out, config = session
    counts = particles_per_micrograph(config)
    for m, n_here in enumerate(counts, start=1):
        blocks = starfile.read(
            out / f"Extract/job005/Movies/mic_{m:05d}_extract.star", always_dict=True, parse_as_string=STRINGS
        )
        assert list(blocks) == ["images"]  # one data_images loop, no optics (RELION's Extract)
        images = blocks["images"]
        assert set(images.columns) >= EXTRACT_COLUMNS
        stack_rel = f"Extract/job005/Movies/mic_{m:05d}.mrcs"
        assert list(images.rlnImageName) == [f"{i:06d}@{stack_rel}" for i in range(1, n_here + 1)]
        assert set(images.rlnMicrographName) == {f"MotionCorr/job002/Movies/mic_{m:05d}.mrc"}
        assert images.rlnDefocusU.nunique() == 1 and images.rlnDefocusU.iloc[0] >= images.rlnDefocusV.iloc[0]
        assert 8000 <= (images.rlnDefocusU.iloc[0] + images.rlnDefocusV.iloc[0]) / 2 <= 25000
        with mrcfile.open(out / stack_rel) as mrc:
            assert mrc.data.shape == (n_here, 64, 64)
            assert mrc.data.dtype == np.float32
            assert mrc.is_image_stack()
            assert float(mrc.voxel_size.x) == pytest.approx(4.0)
            # Normalised like RELION: background mean 0, std 1.
            yy, xx = np.mgrid[:64, :64] - 32
            background = mrc.data[:, xx**2 + yy**2 > 24**2]
            np.testing.assert_allclose(background.mean(axis=1), 0.0, atol=1e-4)
            np.testing.assert_allclose(background.std(axis=1), 1.0, atol=1e-4)


def test_particles_star_has_optics_and_every_particle(session: tuple[Path, SimulationConfig]) -> None:
    out, config = session
    blocks = starfile.read(out / "Extract/job005/particles.star", always_dict=True, parse_as_string=STRINGS)
    assert set(blocks) == {"optics", "particles"}
    optics = blocks["optics"]
    assert set(optics.columns) >= OPTICS_COLUMNS and len(optics) == 1
    row = optics.iloc[0]
    assert (row.rlnVoltage, row.rlnSphericalAberration, row.rlnAmplitudeContrast) == (300.0, 2.7, 0.1)
    assert (row.rlnImagePixelSize, row.rlnImageSize, row.rlnImageDimensionality) == (4.0, 64, 2)
    particles = blocks["particles"]
    assert len(particles) == config.n_particles
    per_mic = pd.concat(
        [
            starfile.read(out / f"Extract/job005/Movies/mic_{m:05d}_extract.star", parse_as_string=STRINGS)
            for m in range(1, 5)
        ],
        ignore_index=True,
    )
    assert list(particles.rlnImageName) == list(per_mic.rlnImageName)
    np.testing.assert_allclose(particles.rlnDefocusU, per_mic.rlnDefocusU)


def test_truth_has_one_row_per_particle_and_the_junk_share(session: tuple[Path, SimulationConfig]) -> None:
    out, config = session
    truth = pd.read_csv(out / "truth.csv")
    particles = starfile.read(out / "Extract/job005/particles.star", always_dict=True, parse_as_string=STRINGS)[
        "particles"
    ]
    assert tuple(truth.columns) == TRUTH_COLUMNS
    assert list(truth.rlnImageName) == list(particles.rlnImageName)
    np.testing.assert_allclose(truth.rlnDefocusU, particles.rlnDefocusU, rtol=1e-6)
    n, f = len(truth), config.junk_fraction
    assert abs(truth.is_junk.mean() - f) <= 3 * np.sqrt(f * (1 - f) / n)
    assert set(truth.junk_type[truth.is_junk == 1]) <= set(JUNK_TYPES)
    assert set(truth.junk_type[truth.is_junk == 0]) == {"none"}
    good = truth[truth.is_junk == 0]
    assert good[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"]].notna().all().all()
    assert good.rlnOriginXAngst.abs().max() <= config.max_shift_pixels * 4.0 + 1e-6
    no_pose = truth[truth.junk_type.isin(["noise", "ice", "carbon"])]
    assert no_pose.rlnAngleRot.isna().all()


def test_truth_poses_reproduce_the_written_signal() -> None:
    """Each clean signal is CTF · projection at the truth pose and origin (RELION's convention)."""
    config = SimulationConfig(n_particles=40, n_micrographs=1, junk_fraction=0.0, seed=5)
    setup = prepare_simulation(config)
    sim = simulate_particles(setup, 12, np.random.default_rng(0))
    redo = project(
        setup.spectrum,
        sim.rot,
        sim.tilt,
        sim.psi,
        64,
        4.0,
        origin_x_angstrom=sim.origin_x_angstrom,
        origin_y_angstrom=sim.origin_y_angstrom,
    )
    redo = np.fft.irfft2(np.fft.rfft2(redo) * relion_ctf_2d(sim.ctf, 4.0, 64), s=(64, 64))
    for a, b in zip(sim.signal.astype(np.float64), redo, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99999
    # Shifts are real: moving a particle back by its origin is what re-centres it.
    assert np.abs(sim.origin_x_angstrom).max() > 0


def test_seeds_reproduce_bit_identical_stacks(tmp_path: Path) -> None:
    config = SimulationConfig(n_particles=30, n_micrographs=2, seed=7)
    for name in ("a", "b"):
        simulate_session(config, tmp_path / name)
    simulate_session(SimulationConfig(n_particles=30, n_micrographs=2, seed=8), tmp_path / "c")
    for m in (1, 2):
        rel = f"Extract/job005/Movies/mic_{m:05d}.mrcs"
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
        assert (tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes()
    assert (tmp_path / "a/truth.csv").read_bytes() == (tmp_path / "b/truth.csv").read_bytes()


def test_append_growth_writes_the_same_stacks(tmp_path: Path) -> None:
    simulate_session(SimulationConfig(n_particles=12, n_micrographs=2, seed=3), tmp_path / "atomic")
    simulate_session(
        SimulationConfig(n_particles=12, n_micrographs=2, seed=3, stack_growth="append"), tmp_path / "append"
    )
    for m in (1, 2):
        rel = f"Extract/job005/Movies/mic_{m:05d}.mrcs"
        np.testing.assert_array_equal(mrcfile.read(tmp_path / "atomic" / rel), mrcfile.read(tmp_path / "append" / rel))


@pytest.mark.parametrize("snr", [0.05, 1.0])
def test_measured_snr_of_clean_particles_matches_request(snr: float) -> None:
    config = SimulationConfig(n_particles=400, n_micrographs=1, junk_fraction=0.0, snr=snr, seed=2)
    setup = prepare_simulation(config)
    sim = simulate_particles(setup, 400, np.random.default_rng(9))
    noise = sim.images.astype(np.float64) - sim.signal
    noise_variance = noise.var(axis=(1, 2))  # images - signal = noise + a constant per image
    signal_variance = signal_variance_in_circle(sim.signal, setup.particle_diameter_angstrom / 4.0)
    measured = float(signal_variance.mean() / noise_variance.mean())
    assert measured == pytest.approx(snr, rel=0.1)


def _fraction_near(rot: np.ndarray, tilt: np.ndarray, view: tuple[float, float], degrees: float) -> float:
    cosine = viewing_direction(rot, tilt) @ viewing_direction(*view)[0]
    return float(np.mean(cosine >= np.cos(np.radians(degrees))))


def test_preferred_orientation_concentrates_views() -> None:
    rng = np.random.default_rng(0)
    preferred = simulate_particles(
        SimulationConfig(n_particles=600, n_micrographs=1, junk_fraction=0.0, preferred_orientation=True), 600, rng
    )
    uniform = simulate_particles(SimulationConfig(n_particles=600, n_micrographs=1, junk_fraction=0.0), 600, rng)
    main_view = PREFERRED_VIEWS_DEGREES[0]
    near_preferred = _fraction_near(preferred.rot, preferred.tilt, main_view, 15.0)
    near_uniform = _fraction_near(uniform.rot, uniform.tilt, main_view, 15.0)
    assert near_preferred >= 0.65  # 75 % drawn about it, ~96 % of those within 15°
    assert near_uniform < 0.05  # a 15° cap is 1.7 % of the sphere
    assert _fraction_near(preferred.rot, preferred.tilt, PREFERRED_VIEWS_DEGREES[1], 15.0) >= 0.05
    # Uniform views are uniform on the sphere: cos(tilt) ~ U(-1, 1).
    cos_tilt = np.cos(np.radians(uniform.tilt))
    assert abs(cos_tilt.mean()) < 0.1 and abs(cos_tilt.var() - 1 / 3) < 0.05


def test_every_junk_kind_is_made_and_tagged() -> None:
    config = SimulationConfig(n_particles=100, n_micrographs=1, junk_fraction=1.0, seed=4)
    sim = simulate_particles(config, 100, np.random.default_rng(1))
    assert sim.is_junk.all()
    assert set(sim.junk_type) == set(JUNK_TYPES)
    noise = sim.junk_type == "noise"
    assert np.all(sim.signal[noise] == 0)
    for kind in ("ice", "carbon", "aggregate", "decoy"):
        sel = sim.junk_type == kind
        assert np.all(sim.signal[sel].std(axis=(1, 2)) > 0)
    assert np.isnan(sim.rot[np.isin(sim.junk_type, ["noise", "ice", "carbon"])]).all()
    assert np.isfinite(sim.rot[np.isin(sim.junk_type, ["aggregate", "decoy"])]).all()


def test_a_map_with_voxel_size_zero_uses_the_given_pixel_size(shared_data: Path) -> None:
    config = SimulationConfig(
        map_path=shared_data / "aspire" / "clean70SRibosome_vol_65p.mrc",
        map_pixel_size_angstrom=4.5,
        n_particles=8,
        n_micrographs=1,
        junk_fraction=0.0,
    )
    setup = prepare_simulation(config)
    assert (setup.box, setup.pixel_size_angstrom, setup.volume_pixel_size_angstrom) == (66, 4.5, 4.5)
    assert 200 < setup.particle_diameter_angstrom < 66 * 4.5
    sim = simulate_particles(setup, 4, np.random.default_rng(0))
    assert sim.images.shape == (4, 66, 66)


def test_progressive_output_and_pacing(tmp_path: Path) -> None:
    config = SimulationConfig(n_particles=30, n_micrographs=3, rate_per_minute=1200.0)  # 10 per 0.5 s
    seen = []
    start = time.monotonic()
    for result in iter_session(config, tmp_path):
        truth = pd.read_csv(tmp_path / "truth.csv")
        particles = starfile.read(tmp_path / "Extract/job005/particles.star", always_dict=True)["particles"]
        seen.append((result.written_at - start, len(truth), len(particles)))
    assert [s[1] for s in seen] == [10, 20, 30]
    assert [s[2] for s in seen] == [10, 20, 30]
    gaps = np.diff([s[0] for s in seen])
    assert np.all(gaps > 0.4) and np.all(gaps < 1.5)


def test_config_and_out_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SimulationConfig(box=65)
    with pytest.raises(ConfigError):
        SimulationConfig(junk_fraction=1.5)
    with pytest.raises(ConfigError):
        SimulationConfig(n_particles=3, n_micrographs=4)
    simulate_session(SimulationConfig(n_particles=4, n_micrographs=1), tmp_path)
    with pytest.raises(ConfigError):
        simulate_session(SimulationConfig(n_particles=4, n_micrographs=1), tmp_path)
    simulate_session(SimulationConfig(n_particles=6, n_micrographs=1), tmp_path, overwrite=True)
    assert len(pd.read_csv(tmp_path / "truth.csv")) == 6


def test_cli_writes_a_session(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = [
        "simulate",
        "--out",
        str(out),
        "--particles",
        "24",
        "--micrographs",
        "3",
        "--seed",
        "1",
        "--junk-fraction",
        "0.25",
        "--preferred-orientation",
    ]
    assert otf2d_main(args) == 0
    text = capsys.readouterr().out
    assert "micrograph 3/3" in text and "wrote 24 particles" in text
    assert len(pd.read_csv(out / "truth.csv")) == 24
    assert otf2d_main(args) == 2  # refuses to overwrite an earlier session
    assert otf2d_main([*args, "--overwrite", "--quiet"]) == 0


@pytest.mark.slow
@pytest.mark.relion
@pytest.mark.skipif(shutil.which("relion_refine") is None, reason="relion_refine is not on PATH")
def test_relion_refine_accepts_the_simulated_particles(tmp_path: Path) -> None:
    simulate_session(SimulationConfig(n_particles=60, n_micrographs=2, seed=3), tmp_path)
    (tmp_path / "Class2D").mkdir()
    proc = subprocess.run(
        [
            "relion_refine",
            "--i",
            "Extract/job005/particles.star",
            "--o",
            "Class2D/run",
            "--K",
            "2",
            "--iter",
            "1",
            "--tau2_fudge",
            "2",
            "--particle_diameter",
            "180",
            "--ctf",
            "--zero_mask",
            "--psi_step",
            "30",
            "--offset_range",
            "2",
            "--offset_step",
            "2",
            "--j",
            "2",
            "--dont_combine_weights_via_disc",
            "--pool",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with mrcfile.open(tmp_path / "Class2D" / "run_it001_classes.mrcs") as mrc:
        assert mrc.data.shape == (2, 64, 64)
        assert np.isfinite(mrc.data).all() and mrc.data.std() > 0
    data = starfile.read(tmp_path / "Class2D" / "run_it001_data.star", always_dict=True)["particles"]
    assert len(data) == 60


def test_the_decoy_protein_has_the_maps_density(shared_data: Path) -> None:
    """With a real map (ASPIRE's ribosome holds values ~1e-4), the decoy junk protein is scaled to its
    density: before, decoys came out ~10^4 times brighter than the particles (variance 11,000 after
    RELION's normalisation), junk that no classifier could miss and that swamped the noise estimate."""
    from otf2d.simulator.presets import RIBOSOME_MAP, realistic_session

    config = realistic_session(shared_data / RIBOSOME_MAP, n_particles=400, seed=3)
    sim = simulate_particles(config, 400, np.random.default_rng(3))
    inside = np.hypot(*np.mgrid[-40:40, -40:40]) < 25
    power = sim.signal[:, inside].var(axis=1)
    decoy, particle = power[sim.junk_type == "decoy"], power[sim.junk_type == "none"]
    assert len(decoy) >= 5
    # a smaller protein of the same density: a weaker projection, but of the same order
    assert 0.05 < np.median(decoy) / np.median(particle) < 1.5
