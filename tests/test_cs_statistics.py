"""The particle ``.cs`` of ``otf2d classify`` carries the E-step's real statistics, with
cryoSPARC's identities (``algorithm.md`` §12): read back with plain NumPy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otf2d.core.cli import main as otf2d
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.session import SessionSummary, simulate_session

#: Small and fast: 3 classes, 2 online iterations of 45 particles, coarse sampling.
FAST = [
    "--classes", "3", "--batch-per-class", "15", "--online-em-iterations", "2",
    "--in-plane-step", "20", "--max-shift", "6", "--threads", "2", "--quiet",
]  # fmt: skip

STATISTICS = ("error", "image_pow", "cross_cor", "slice_pow", "alpha", "alpha_min", "class_ess")


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> SessionSummary:
    out = tmp_path_factory.mktemp("cs_statistics")
    return simulate_session(SimulationConfig(n_particles=90, n_micrographs=2, snr=0.2, seed=3), out)


def _particles_cs(session: SessionSummary, name: str) -> Path:
    (path,) = sorted((session.out_dir / name).glob("run_it*_particles.cs"))
    return path


def _classify(session: SessionSummary, name: str, *flags: str) -> dict[str, np.ndarray]:
    out = session.out_dir / name
    assert otf2d(["classify", str(session.particles_star), "--out", str(out), *FAST, *flags]) == 0
    cs = np.load(_particles_cs(session, name), allow_pickle=False)
    assert len(cs) == 90
    return {n: cs[f"alignments2D/{n}"].astype(np.float64) for n in STATISTICS}


def _check_identities(a: dict[str, np.ndarray]) -> None:
    for name, values in a.items():
        assert np.isfinite(values).all(), name
    assert (a["image_pow"] > 0).all() and (a["slice_pow"] > 0).all()
    # ‖X − α·C·A‖² = ‖X‖² − α·2Re⟨X, CA⟩ + α²‖CA‖² (cryoSPARC's identity at α = 1)
    rebuilt = a["image_pow"] - a["alpha"] * a["cross_cor"] + a["alpha"] ** 2 * a["slice_pow"]
    np.testing.assert_allclose(a["error"], rebuilt, rtol=1e-4)
    np.testing.assert_allclose(a["alpha_min"], a["cross_cor"] / (2 * a["slice_pow"]), rtol=1e-5)
    assert (a["class_ess"] >= 1 - 1e-6).all()
    assert a["cross_cor"].std() > 0  # real per-particle values, not a constant


@pytest.mark.parametrize("mode", [(), ("--force-max",)], ids=["default", "force-max"])
def test_statistics_hold_cryosparcs_identities_with_scale_off(session: SessionSummary, mode: tuple[str, ...]) -> None:
    a = _classify(session, f"off{len(mode)}", *mode)
    _check_identities(a)
    np.testing.assert_array_equal(a["alpha"], 1.0)
    np.testing.assert_allclose(a["error"], a["image_pow"] - a["cross_cor"] + a["slice_pow"], rtol=1e-4)


def test_per_particle_scale_is_the_least_squares_scale(session: SessionSummary) -> None:
    a = _classify(session, "scale", "--per-particle-scale")
    _check_identities(a)
    # α* = max(cross_cor, 0) / (2·slice_pow): the scale used is alpha_min where that is positive
    np.testing.assert_allclose(a["alpha"], np.clip(a["alpha_min"], 0.0, None), rtol=1e-5, atol=1e-7)
    assert a["alpha"].std() > 0


def test_cryosparc_tools_reads_the_statistics(session: SessionSummary) -> None:
    dataset_module = pytest.importorskip("cryosparc.dataset")
    a = _classify(session, "tools")
    data = dataset_module.Dataset.load(_particles_cs(session, "tools"))
    for name in STATISTICS:
        np.testing.assert_array_equal(np.asarray(data[f"alignments2D/{name}"], dtype=np.float64), a[name])
