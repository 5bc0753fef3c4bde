"""The ground-truth scorer separates a perfect classification from a random one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from otf2d.simulator.config import SimulationConfig
from otf2d.simulator.particles import prepare_simulation, simulate_particles
from otf2d.simulator.projection import project, viewing_direction
from otf2d.simulator.scoring import (
    align_to_reference,
    best_selection_f1,
    circular_std_degrees,
    fourier_ring_correlation,
    frc_resolution_angstrom,
    in_plane_spread_degrees,
    score_classification,
)


@pytest.fixture(scope="module")
def session() -> tuple[pd.DataFrame, object]:
    config = SimulationConfig(n_particles=300, n_micrographs=1, box=48, pixel_size_angstrom=5.0, seed=3)
    setup = prepare_simulation(config)
    sim = simulate_particles(setup, 300, np.random.default_rng(0))
    truth = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(len(sim))],
            "is_junk": sim.is_junk,
            "rlnAngleRot": sim.rot,
            "rlnAngleTilt": sim.tilt,
            "rlnAnglePsi": sim.psi,
        }
    )
    return truth, setup


def oracle_classes(truth: pd.DataFrame, n_view_classes: int) -> np.ndarray:
    """Junk in class 0; particles binned by their true viewing direction (k-means-like on the sphere)."""
    junk = truth["is_junk"].to_numpy()
    d = viewing_direction(truth["rlnAngleRot"].fillna(0), truth["rlnAngleTilt"].fillna(0))
    rng = np.random.default_rng(0)
    centres = d[~junk][rng.choice(int((~junk).sum()), n_view_classes, replace=False)]
    for _ in range(10):
        labels = np.argmax(d @ centres.T, axis=1)
        centres = np.stack(
            [
                d[(labels == k) & ~junk].mean(0) if np.any((labels == k) & ~junk) else centres[k]
                for k in range(n_view_classes)
            ]
        )
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return np.where(junk, 0, labels + 1)


def test_circular_std_and_frc_basics() -> None:
    assert circular_std_degrees([10, 10, 10]) < 1e-3
    assert circular_std_degrees([350, 10]) == pytest.approx(10.0, rel=0.02)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((32, 32))
    assert np.allclose(fourier_ring_correlation(a, a)[1:], 1.0)
    frc = fourier_ring_correlation(a, rng.standard_normal((32, 32)))
    assert np.abs(frc[2:]).mean() < 0.3
    assert frc_resolution_angstrom(np.ones(16), 32, 2.0) == pytest.approx(4.0)


def test_alignment_finds_rotated_shifted_copy(session: tuple[pd.DataFrame, object]) -> None:
    _, setup = session
    ref = project(setup.spectrum, 30.0, 60.0, 0.0, 48, 5.0)[0]
    moved = project(setup.spectrum, 30.0, 60.0, 42.0, 48, 5.0, origin_x_angstrom=10.0)[0]
    corr, _ = align_to_reference(moved, ref)
    other = project(setup.spectrum, 120.0, 150.0, 0.0, 48, 5.0)[0]
    corr_other, _ = align_to_reference(moved, other)
    assert corr > 0.95
    assert corr_other < corr


def test_perfect_classification_scores_well_and_random_scores_badly(session: tuple[pd.DataFrame, object]) -> None:
    truth, setup = session
    labels = oracle_classes(truth, 12)
    psi_est = (truth["rlnAnglePsi"].fillna(0).to_numpy() + 17.0 * labels) % 360
    # Class averages: clean projections at each class's mean view.
    averages = np.zeros((13, 48, 48))
    for k in range(1, 13):
        members = truth[labels == k]
        averages[k] = project(
            setup.spectrum, members["rlnAngleRot"].iloc[0], members["rlnAngleTilt"].iloc[0], 0.0, 48, 5.0
        )[0]
    good = score_classification(
        truth, truth["rlnImageName"], labels, psi_est, averages, 5.0, setup.spectrum, n_classes=15,
        junk_flags={0: True, 3: True},
    )  # fmt: skip
    rng = np.random.default_rng(5)
    random_labels = rng.integers(0, 13, len(truth))
    bad = score_classification(
        truth,
        truth["rlnImageName"],
        random_labels,
        rng.uniform(0, 360, len(truth)),
        rng.standard_normal((13, 48, 48)),
        5.0,
        setup.spectrum,
    )
    assert good.n_particles == bad.n_particles == len(truth)
    assert good.junk_isolation == 1.0 and good.good_kept == 1.0
    assert bad.junk_isolation < 0.5 or bad.good_kept < 0.5
    assert good.view_purity_degrees < 30 < bad.view_purity_degrees
    # ψ_true + a constant per class is consistent only up to the spread of the members' views.
    assert good.in_plane_spread_degrees < 15.0
    assert bad.in_plane_spread_degrees > 60
    assert good.fidelity_correlation > 0.6 > bad.fidelity_correlation
    assert good.fidelity_resolution_angstrom < bad.fidelity_resolution_angstrom
    assert good.populated_classes == 13
    # issue 12's metrics: oracle classes are all good but the junk one, none empty beyond the 2 unused labels
    assert good.good_classes == 12 and good.empty_classes == 2 and good.good_classes_flagged_junk == 1
    assert good.selection_f1 == 1.0 and bad.selection_f1 < 0.95
    assert good.view_spread_degrees < 30 < bad.view_spread_degrees
    assert good.in_plane_consistency_degrees < 20.0 < 60 < bad.in_plane_consistency_degrees  # a mean: views spread
    assert good.faithful_classes >= 6 and bad.faithful_classes == 0
    assert good.fidelity_ncc > 0.72 > bad.fidelity_ncc
    assert bad.empty_classes == -1 and bad.good_classes_flagged_junk == -1  # not given: unknown


def test_best_selection_f1_takes_whole_classes_in_order_of_purity() -> None:
    # class 1: 8 good of 10; class 2: 1 good of 10; class 3: 10 good of 10
    labels = np.repeat([1, 2, 3], 10)
    good = np.concatenate([np.arange(10) < 8, np.arange(10) < 1, np.ones(10, dtype=bool)])
    # best: classes 3 and 1 (18 of the 19 good among 20 kept): F1 = 2*18 / (20 + 19)
    assert best_selection_f1(labels, good) == pytest.approx(36 / 39)
    assert np.isnan(best_selection_f1(labels, np.zeros(30, dtype=bool)))


def test_unknown_particles_are_an_error(session: tuple[pd.DataFrame, object]) -> None:
    truth, _ = session
    with pytest.raises(ValueError, match="not in the truth table"):
        score_classification(truth, ["000999@elsewhere.mrcs"], [1], [0.0])


def test_in_plane_spread_of_one_view_is_the_spread_of_psi_errors() -> None:
    rng = np.random.default_rng(7)
    psi_true = rng.uniform(-180, 180, 50)
    psi_est = psi_true + 25.0 + rng.normal(0.0, 6.0, 50)
    got = in_plane_spread_degrees(np.full(50, 40.0), np.full(50, 70.0), psi_true, psi_est)
    assert got == pytest.approx(circular_std_degrees(psi_est - psi_true), rel=1e-6)
    assert 3.0 < got < 9.0


def test_in_plane_spread_holds_where_rot_and_psi_trade_off() -> None:
    """At tilt 0 only rot + ψ shapes the image: identical images with scattered ψ are consistent."""
    rng = np.random.default_rng(8)
    rot = rng.uniform(-180, 180, 40)
    tilt = rng.uniform(0.0, 3.0, 40)
    psi_true = 40.0 - rot  # the same image for every member (up to the tiny tilts)
    psi_est = np.full(40, 12.0)  # a classifier sees one image and gives one angle
    assert in_plane_spread_degrees(rot, tilt, psi_true, psi_est) < 3.0
    assert circular_std_degrees(psi_est - psi_true) > 60.0  # the naive measure calls it random
    assert in_plane_spread_degrees(rot, tilt, psi_true, rng.uniform(-180, 180, 40)) > 90.0


def test_first_class_label_picks_the_averages_even_when_class_one_is_empty(
    session: tuple[pd.DataFrame, object],
) -> None:
    """Labels 2..K of 1-based classes must not be taken for 0-based ones."""
    truth, setup = session
    labels = oracle_classes(truth, 4) + 2  # 1-based: class 1 empty, junk in class 2, views in 3..6
    averages = np.zeros((6, 48, 48))
    for k in range(3, 7):
        members = truth[labels == k]
        averages[k - 1] = project(
            setup.spectrum, members["rlnAngleRot"].iloc[0], members["rlnAngleTilt"].iloc[0], 0.0, 48, 5.0
        )[0]
    psi = truth["rlnAnglePsi"].fillna(0).to_numpy()
    right = score_classification(
        truth, truth["rlnImageName"], labels, psi, averages, 5.0, setup.spectrum, first_class_label=1
    )
    assert right.fidelity_correlation > 0.6
    with pytest.raises(IndexError):  # the guess (smallest label 2 -> offset 0) runs past the last class
        score_classification(truth, truth["rlnImageName"], labels, psi, averages, 5.0, setup.spectrum)
