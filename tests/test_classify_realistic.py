"""Class quality on the realistic session (issue 12): the real 70S ribosome map, SNR 0.05, 20 % junk of
five kinds (``otf2d.simulator.presets.realistic_session``), classified at otf2d's default settings and
scored against the ground truth by ``otf2d.simulator.scoring`` (the scorer of ``benchmarks/realistic.py``).

The benchmark's size (2,000 particles, K = 20: a smaller session, 1,200 particles at K = 12, is not
separated yet, see the CHANGELOG); two seeds, each its own session, about 5 minutes each on 2 cores.
The bounds are what the classifier reached on these sessions (seed 1: 12 good classes, view spread
48°, selection F1 0.938, 9 faithful classes; seed 2: 14, 57°, 0.954, 10) with a margin; the
classifier's start before issue 12 (averages of random subsets) left 3 good classes on such a
session, and the shuffled-label control shows that a classifier grouping at random cannot meet them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from otf2d.core.config import Class2DParams
from otf2d.core.readers import read_particle_table
from otf2d.core.snapshot import ClassSnapshot
from otf2d.engine.classify.offline import classify_table
from otf2d.simulator.particles import SimulationSetup, prepare_simulation
from otf2d.simulator.presets import RIBOSOME_MAP, realistic_session
from otf2d.simulator.scoring import QualityReport, score_classification
from otf2d.simulator.session import simulate_session

N_PARTICLES = 2000
N_CLASSES = 20

#: Bounds every seed must meet (issue 12's targets are stricter: see the CHANGELOG).
MIN_GOOD_CLASSES = 10
MAX_VIEW_SPREAD_DEGREES = 62.0
MIN_SELECTION_F1 = 0.93
MIN_FAITHFUL_CLASSES = 7


@dataclass(frozen=True)
class Realistic:
    setup: SimulationSetup
    truth: pd.DataFrame
    star: Path


def make_session(shared_data: Path, out: Path, seed: int) -> Realistic:
    setup = prepare_simulation(realistic_session(shared_data / RIBOSOME_MAP, n_particles=N_PARTICLES, seed=seed))
    summary = simulate_session(setup, out)
    return Realistic(setup, pd.read_csv(summary.truth_csv), summary.particles_star)


def classify(session: Realistic, seed: int, early_scale_iterations: int = 0) -> ClassSnapshot:
    """``otf2d classify``'s classification at its defaults (the API under the command), but for
    ``--per-particle-scale-iterations early_scale_iterations``."""
    params = Class2DParams(n_classes=N_CLASSES, seed=seed, per_particle_scale_iterations=early_scale_iterations)
    return classify_table(read_particle_table(session.star), params).snapshot


def score(session: Realistic, snap: ClassSnapshot, labels: np.ndarray | None = None) -> QualityReport:
    """The snapshot scored against the truth (``labels`` replace its classes, for controls)."""
    return score_classification(
        session.truth,
        snap.particles.image_names(),
        snap.particles.class_index if labels is None else labels,
        snap.particles.psi_degrees,
        snap.averages,
        snap.pixel_size_angstrom,
        session.setup.spectrum,
        particle_diameter_angstrom=session.setup.particle_diameter_angstrom,
        first_class_label=0,
        n_classes=N_CLASSES,
    )


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_default_settings_separate_views_on_the_realistic_session(shared_data: Path, tmp_path: Path, seed: int) -> None:
    session = make_session(shared_data, tmp_path, seed)
    snap = classify(session, seed)
    report = score(session, snap)
    assert report.empty_classes == 0, report
    assert report.good_classes >= MIN_GOOD_CLASSES, report
    assert report.view_spread_degrees <= MAX_VIEW_SPREAD_DEGREES, report
    assert report.selection_f1 >= MIN_SELECTION_F1, report
    assert report.faithful_classes >= MIN_FAITHFUL_CLASSES, report
    # control: the same classes with shuffled labels (a classifier that groups at random) fail
    control = score(session, snap, np.random.default_rng(0).permutation(snap.particles.class_index))
    assert control.view_spread_degrees > MAX_VIEW_SPREAD_DEGREES, control
    assert control.selection_f1 < MIN_SELECTION_F1, control


@pytest.mark.slow
def test_the_early_per_particle_scale_separates_views_better(shared_data: Path, tmp_path: Path) -> None:
    """``--per-particle-scale-iterations 10`` on seed 2: view spread 43°, in-plane 46°, junk isolation
    0.75, F1 0.967, 15 faithful classes, where the default gives 58°, 51°, 0.86, 0.952 and 13."""
    session = make_session(shared_data, tmp_path, 2)
    report = score(session, classify(session, 2, early_scale_iterations=10))
    assert report.empty_classes == 0, report
    assert report.view_spread_degrees <= 50.0, report
    assert report.in_plane_consistency_degrees <= 55.0, report
    assert report.junk_isolation >= 0.65, report
    assert report.selection_f1 >= 0.94, report
    assert report.faithful_classes >= 12, report
