"""Class quality: the junk score separates junk class averages from particle views (simulated truth).

Class averages are built from the virtual microscope's ground truth (``monitoring_truth``): good
classes average 60 particles of one view aligned with their true pose; junk classes average 60
images of one junk kind aligned reference-free, as a classifier would align them to their class.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from monitoring_truth import (
    DISTINCT_VIEWS,
    ClassSpec,
    grid_snapshot,
    simulation_setup,
    truth_aligned_class,
    view_particles,
)
from snapshot_factory import make_snapshot

from otf2d.core.errors import InputError
from otf2d.monitoring.quality import (
    JUNK_SCORE_THRESHOLD,
    RULES,
    class_features,
    image_features,
    load_overrides,
    save_overrides,
    score_classes,
    score_features,
    score_snapshot,
    with_junk_scores,
)
from otf2d.simulator.config import JUNK_TYPES

GOOD = tuple(ClassSpec(400, "none", r, t) for r, t in DISTINCT_VIEWS)
JUNK = tuple(ClassSpec(400, kind) for kind in JUNK_TYPES)


@pytest.fixture(scope="module")
def truth_snapshot():
    """Five good views then one class per junk kind (noise, ice, carbon, aggregate, decoy)."""
    return grid_snapshot((*GOOD, *JUNK))


def test_junk_score_separates_every_junk_kind_from_particle_views(truth_snapshot) -> None:
    report = score_classes(truth_snapshot)
    good = report.scores[: len(GOOD)]
    junk = report.scores[len(GOOD) :]
    for spec, score in zip((*GOOD, *JUNK), report.scores, strict=True):
        print(f"{spec.kind:10s} view=({spec.rot_degrees:6.1f},{spec.tilt_degrees:6.1f})  junk score {score:.2f}")
    assert good.max() < 0.2, f"a particle view scored {good.max():.2f}"
    assert junk.min() > 0.8, (
        f"a junk class scored {junk.min():.2f}: {dict(zip(JUNK_TYPES, junk.round(2), strict=True))}"
    )
    assert not report.junk[: len(GOOD)].any()
    assert report.junk[len(GOOD) :].all()


def test_every_junk_class_has_a_reason_in_words(truth_snapshot) -> None:
    report = score_classes(truth_snapshot)
    for k in range(len(GOOD), truth_snapshot.n_classes):
        reasons = report.reasons(k)
        assert reasons, f"junk class {k + 1} has no reason"
        assert all(isinstance(r, str) and r for r in reasons)
    assert report.reasons(0) == []


def test_ice_and_carbon_are_off_centre_noise_has_no_signal_in_the_mask(truth_snapshot) -> None:
    f = class_features(truth_snapshot)
    kinds = {kind: len(GOOD) + i for i, kind in enumerate(JUNK_TYPES)}
    good = slice(0, len(GOOD))
    assert f["centre_offset_fraction"][kinds["ice"]] > 3 * f["centre_offset_fraction"][good].max()
    assert f["centre_offset_fraction"][kinds["carbon"]] > 3 * f["centre_offset_fraction"][good].max()
    assert f["mask_rms_ratio"][kinds["noise"]] == pytest.approx(1.0, abs=0.15)
    assert f["mask_rms_ratio"][good].min() > 1.8


def test_features_match_independent_geometry() -> None:
    """A noise-free uniform disc: centre offset and radius of gyration are known in closed form."""
    box, radius, mask = 64, 8.0, 27.0
    yy, xx = np.mgrid[:box, :box].astype(np.float64)
    dy, dx = 5.0, -3.0
    disc = ((yy - (box // 2 + dy)) ** 2 + (xx - (box // 2 + dx)) ** 2 <= radius**2).astype(np.float64)
    f = image_features(disc[None], mask)
    # Pixel-sampled disc: the exact centroid and gyration radius of the pixels themselves.
    w = disc / disc.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    rg = np.sqrt((w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum())
    assert f["centre_offset_fraction"][0] == pytest.approx(np.hypot(cy - box // 2, cx - box // 2) / mask, rel=1e-9)
    assert f["centre_offset_fraction"][0] == pytest.approx(np.hypot(dy, dx) / mask, rel=1e-3)
    assert f["radius_of_gyration_fraction"][0] == pytest.approx(rg / mask, rel=1e-9)
    assert rg == pytest.approx(radius / np.sqrt(2.0), rel=0.05)  # continuous disc: R / √2
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(1, box, box))
    assert image_features(noise, mask)["mask_rms_ratio"][0] == pytest.approx(1.0, abs=0.08)


def test_score_is_a_noisy_or_of_weighted_evidence() -> None:
    k = 3
    features = {rule.feature: np.full(k, rule.good_value) for rule in RULES}
    features["centre_offset_fraction"] = np.array([0.0, 0.30, 0.21])  # ramp 0.12 → 0.30
    features["share_of_uniform"] = np.array([1.0, 1.0, 0.05])
    report = score_features(features)
    w_off = next(r.weight for r in RULES if r.feature == "centre_offset_fraction")
    w_few = next(r.weight for r in RULES if r.feature == "share_of_uniform")
    expected = [0.0, w_off, 1.0 - (1.0 - w_off * 0.5) * (1.0 - w_few)]
    assert report.scores == pytest.approx(expected, abs=1e-12)


def test_unknown_resolution_and_empty_classes_are_not_evidence() -> None:
    snapshot = make_snapshot((10, 0, 10))
    features = class_features(snapshot)
    assert np.isnan(features["mask_rms_ratio"][1])  # empty class: image features unknown
    report = score_classes(snapshot)
    assert np.isfinite(report.scores).all()
    assert ((report.scores >= 0) & (report.scores <= 1)).all()


def test_another_protein_seen_in_one_view_looks_like_a_particle_until_a_user_says_junk(tmp_path: Path) -> None:
    """A clean view of a different protein (the simulator's decoy) has nothing junk-like in 2D."""
    setup = simulation_setup()
    decoys = view_particles(setup, 20.0, 70.0, 60, np.random.default_rng(5), decoy=True)
    decoy_average = truth_aligned_class(decoys, setup.pixel_size_angstrom).average
    two_views = grid_snapshot(GOOD[:2], seed=4)
    snapshot = make_snapshot(
        (400, 400, 400), averages=np.concatenate([two_views.averages, decoy_average[None].astype(np.float32)])
    )
    snapshot = dataclasses.replace(snapshot, pixel_size_angstrom=setup.pixel_size_angstrom, parameters={})
    assert not score_classes(snapshot).junk.any()
    overrides_path = tmp_path / "overrides.json"
    save_overrides(overrides_path, {3: "junk", 1: "good"})
    report = score_classes(snapshot, load_overrides(overrides_path))
    assert report.junk.tolist() == [False, False, True]
    assert report.effective_scores[2] == 1.0
    assert report.reasons(2)[0] == "marked junk by a user"


def test_overrides_win_over_the_score(truth_snapshot) -> None:
    base = score_classes(truth_snapshot)
    noise_class = len(GOOD) + 1  # RELION number of the noise class (1-based)
    report = score_classes(truth_snapshot, {1: "junk", noise_class: "good", 999: "junk"})
    assert report.junk[0] and not base.junk[0]
    assert not report.junk[noise_class - 1] and base.junk[noise_class - 1]
    assert report.scores == pytest.approx(base.scores)  # computed scores unchanged
    assert report.effective_scores[0] == 1.0 and report.effective_scores[noise_class - 1] == 0.0
    assert report.overrides == {1: "junk", noise_class: "good"}  # class 999 does not exist: ignored
    rows = report.to_json()
    assert rows[0]["override"] == "junk" and rows[0]["junk"] is True
    json.dumps(rows, allow_nan=False)


def test_overrides_persist_through_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "state" / "overrides.json"
    path.parent.mkdir()
    assert load_overrides(path) == {}
    save_overrides(path, {12: "junk", 3: "good"})
    assert load_overrides(path) == {3: "good", 12: "junk"}
    record = json.loads(path.read_text())
    assert record == {"schema": 1, "classes": {"3": "good", "12": "junk"}}
    save_overrides(path, {12: "good"})
    assert load_overrides(path) == {12: "good"}
    assert sorted(os.listdir(path.parent)) == ["overrides.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({0: "junk"}, "class number"), ({2: "bad"}, "not one of"), ({"2": "junk"}, "class number")],
)
def test_invalid_overrides_are_refused_and_nothing_is_written(tmp_path: Path, overrides, message) -> None:
    path = tmp_path / "overrides.json"
    with pytest.raises(InputError, match=message):
        save_overrides(path, overrides)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    ["not json", '{"schema": 2, "classes": {}}', '{"schema": 1, "classes": {"x": "junk"}}', '{"schema": 1}'],
)
def test_a_corrupt_overrides_file_names_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "overrides.json"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        load_overrides(path)
    assert str(path) in str(info.value)


def test_threshold_is_the_galleries() -> None:
    from otf2d.monitoring.snapshots.gallery import JUNK_THRESHOLD

    assert JUNK_SCORE_THRESHOLD == JUNK_THRESHOLD


def test_the_spread_counts_density_inside_the_mask_only() -> None:
    """Bright specks outside the mask leave the gyration radius of the disc inside unchanged."""
    box, radius, mask = 64, 8.0, 20.0
    yy, xx = np.mgrid[:box, :box].astype(np.float64)
    disc = ((yy - box // 2) ** 2 + (xx - box // 2) ** 2 <= radius**2).astype(np.float64)
    specks = disc.copy()
    specks[2, 2] = specks[61, 3] = specks[5, 60] = 1.0  # corners: outside the mask of radius 20
    w = disc / disc.sum()
    rg = np.sqrt((w * ((yy - box // 2) ** 2 + (xx - box // 2) ** 2)).sum())
    f = image_features(np.stack([disc, specks]), mask)
    np.testing.assert_allclose(f["radius_of_gyration_fraction"], rg / mask, rtol=1e-9)


def test_scored_snapshots_carry_effective_scores_overrides_and_threshold(truth_snapshot) -> None:
    overrides = {1: "junk", 7: "good"}
    scored = score_snapshot(truth_snapshot, overrides, threshold=0.6)
    report = score_classes(truth_snapshot, overrides, threshold=0.6)
    np.testing.assert_array_equal(scored.junk_score, report.effective_scores)
    assert scored.junk_score[0] == 1.0 and scored.junk_score[6] == 0.0
    assert scored.parameters["class_overrides"] == {"1": "junk", "7": "good"}
    assert scored.junk_score_threshold == 0.6
    assert truth_snapshot.junk_score is None  # the input is left alone
    assert with_junk_scores(truth_snapshot, report).parameters == scored.parameters
    with pytest.raises(InputError, match="quality of 3 classes"):
        with_junk_scores(truth_snapshot, score_features({r.feature: np.zeros(3) for r in RULES}))
