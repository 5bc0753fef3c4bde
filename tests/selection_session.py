"""One simulated, classified session with ground truth, shared by the ``test_selection_*`` modules.

The virtual microscope writes 1,000 particles (box 64 at 4 Å/px, SNR 0.1) with 25 % junk and a
preferred orientation (75 % of the particles within ~6° of one view, 10 % about a second one),
then ``otf2d classify`` sorts them into 10 classes with a short, coarse schedule (a few seconds on
two cores). 12 online-EM iterations, not fewer: with 8, some seeds leave the preferred view's
classes unconverged (two views found instead of three), which the tests would read as a rebalance
failure (seeds 0-7 checked). :func:`classified_session` builds it once per test process, whichever
module asks first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from otf2d.core.cli import main as otf2d
from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.projection import viewing_direction
from otf2d.simulator.session import SessionSummary, simulate_session
from otf2d.simulator.views import PREFERRED_VIEWS_DEGREES

SESSION = SimulationConfig(
    n_particles=1000, n_micrographs=5, snr=0.1, junk_fraction=0.25, preferred_orientation=True, seed=3
)
CLASSIFY = [
    "--classes", "10", "--batch-per-class", "30", "--online-em-iterations", "12", "--in-plane-step", "10",
    "--max-res", "12", "--max-shift", "12", "--threads", "2", "--seed", "0", "--quiet",
]  # fmt: skip


@dataclass(frozen=True)
class ClassifiedSession:
    """The simulated project, its ground truth and the classification's job folder."""

    summary: SessionSummary
    run_dir: Path
    truth: pd.DataFrame

    @property
    def project(self) -> Path:
        return self.summary.out_dir

    def truth_of(self, image_names: list[str]) -> pd.DataFrame:
        """Rows of ``truth.csv`` for these ``rlnImageName``, in that order."""
        return self.truth.set_index("rlnImageName").loc[image_names]


_SESSIONS: dict[Path, ClassifiedSession] = {}


def classified_session(base: Path) -> ClassifiedSession:
    """Simulate and classify :data:`SESSION` under ``base`` (once per process and ``base``)."""
    if base not in _SESSIONS:
        summary = simulate_session(SESSION, base / "project")
        run_dir = summary.out_dir / "Class2D" / "otf2d"
        if otf2d(["classify", str(summary.particles_star), "--out", str(run_dir), *CLASSIFY]) != 0:
            raise RuntimeError("otf2d classify failed on the selection test session")
        _SESSIONS[base] = ClassifiedSession(summary, run_dir, pd.read_csv(summary.truth_csv))
    return _SESSIONS[base]


def is_junk(truth: pd.DataFrame) -> np.ndarray:
    """``(n,)`` bool: the truth rows that are junk."""
    return truth["is_junk"].astype(str).str.lower().isin(["1", "true"]).to_numpy()


#: Bin centres for view histograms: a Fibonacci lattice on the sphere (v and −v fall in one bin).
def fibonacci_directions(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def true_view_entropy(truth: pd.DataFrame, n_bins: int = 12) -> float:
    """Shannon entropy (nats) of the true viewing directions of the good particles in ``truth``.

    Each direction goes to the nearest of ``n_bins`` Fibonacci directions up to sign (2D classes
    cannot tell a view from its mirror), an independent measure of the view distribution.
    """
    good = truth[~is_junk(truth)]
    directions = viewing_direction(good["rlnAngleRot"].to_numpy(), good["rlnAngleTilt"].to_numpy())
    centres = fibonacci_directions(n_bins)
    bins = np.argmax(np.abs(directions @ centres.T), axis=1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main_view_share(truth: pd.DataFrame, within_degrees: float = 20.0) -> float:
    """Share of the good particles in ``truth`` viewed within ``within_degrees`` of the main preferred view
    (or its opposite, which a 2D class cannot tell apart)."""
    good = truth[~is_junk(truth)]
    directions = viewing_direction(good["rlnAngleRot"].to_numpy(), good["rlnAngleTilt"].to_numpy())
    rot, tilt = PREFERRED_VIEWS_DEGREES[0]
    main = viewing_direction(np.array([rot]), np.array([tilt]))[0]
    return float((np.abs(directions @ main) >= np.cos(np.radians(within_degrees))).mean())
