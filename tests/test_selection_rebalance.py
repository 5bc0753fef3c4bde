"""otf2d.selection.rebalance and ``otf2d rebalance``: the cap rule, the seeded draw, and a flatter view
distribution on a preferred-orientation session, measured on the true viewing directions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import starfile
from PIL import Image
from selection_session import ClassifiedSession, classified_session, is_junk, main_view_share, true_view_entropy

from otf2d.core.cli import main as otf2d
from otf2d.core.errors import InputError
from otf2d.monitoring.particle_junk import particle_junk_scores
from otf2d.monitoring.snapshots.reader import read_snapshot
from otf2d.monitoring.views import distribution_entropy
from otf2d.selection.rebalance import draw_kept, rebalance_views, view_cap
from otf2d.selection.view_plot import render_view_histogram


@pytest.fixture(scope="session")
def classified(tmp_path_factory: pytest.TempPathFactory) -> ClassifiedSession:
    return classified_session(tmp_path_factory.getbasetemp() / "selection_session")


def test_view_cap_follows_the_cryosparc_rule() -> None:
    counts = np.array([900, 300, 120, 60, 7])
    assert view_cap(counts, 0.0) is None  # factor 0 keeps everything
    assert view_cap(counts, 1.0, min_view_particles=50) == 60  # views as equal as the data allow
    assert view_cap(counts, 1.0, min_view_particles=0) == 7  # cryoSPARC's rule without the guard
    assert view_cap(counts, 0.25, min_view_particles=50) == 240
    assert view_cap(counts, 0.5, max_view_particles=100) == 100
    assert view_cap(np.array([30, 20]), 1.0, min_view_particles=50) is None  # no view large enough
    for factor in (0.1, 0.3, 0.5, 0.9, 1.0):
        cap = view_cap(counts, factor, min_view_particles=50)
        assert cap is not None
        after = np.minimum(counts, cap)
        eligible = after[counts >= 50]
        assert eligible.min() >= factor * eligible.max() - 1e-9  # smallest ≥ F × largest
        assert eligible.min() < factor * (eligible.max() + 1)  # and no more is dropped than needed
    for bad in (-0.1, 1.5):
        with pytest.raises(InputError, match="--factor"):
            view_cap(counts, bad)


def test_draw_kept_is_seeded_and_uniform() -> None:
    views = np.repeat([0, 1, -1, 2], [1000, 300, 50, 40])
    rng = np.random.default_rng(9)
    rng.shuffle(views)
    kept = draw_kept(views, [100, 300, 40], seed=1)
    np.testing.assert_array_equal(kept, draw_kept(views, [100, 300, 40], seed=1))
    assert not np.array_equal(kept, draw_kept(views, [100, 300, 40], seed=2))
    np.testing.assert_array_equal(np.bincount(views[kept] + 1, minlength=4), [0, 100, 300, 40])
    assert np.all(np.diff(kept) > 0)
    # uniform: every member of view 0 is kept with probability 0.1 over many draws
    hits = np.zeros(len(views))
    for seed in range(200):
        hits[draw_kept(views, [100, 300, 40], seed=seed)] += 1
    share = hits[views == 0] / 200
    assert abs(share.mean() - 0.1) < 1e-12 and share.std() < 0.04


def test_histogram_renders_one_column_per_view() -> None:
    image = render_view_histogram([500, 100, 60], [60, 60, 60], np.random.default_rng(0).normal(size=(3, 16, 16)))
    assert image.mode == "RGB" and image.size[0] >= 3 * 72
    with pytest.raises(InputError):
        render_view_histogram([1, 2], [1])


@pytest.mark.slow
def test_factor_one_flattens_the_true_view_distribution(
    classified: ClassifiedSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    selected, balanced = tmp_path / "selected", tmp_path / "balanced"
    assert (
        otf2d(
            [
                "select",
                str(classified.run_dir),
                "--out",
                str(selected),
                "--auto",
                "--quiet",
                "--particle-junk-threshold",
                "1",
            ]
        )
        == 0
    )
    code = otf2d(["rebalance", str(classified.run_dir), "--out", str(balanced), "--factor", "1", "--seed", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    before = starfile.read(selected / "particles.star", always_dict=True)["particles"]
    after = starfile.read(balanced / "particles.star", always_dict=True)["particles"]
    assert set(after["rlnImageName"]) < set(before["rlnImageName"])  # a subset of the good classes
    truth_before = classified.truth_of(list(before["rlnImageName"])).reset_index()
    truth_after = classified.truth_of(list(after["rlnImageName"])).reset_index()
    h_true_before, h_true_after = true_view_entropy(truth_before), true_view_entropy(truth_after)
    share_before, share_after = main_view_share(truth_before), main_view_share(truth_after)
    record = json.loads((balanced / "rebalance.json").read_text())
    print(
        f"rebalance --factor 1: {len(before)} -> {len(after)} particles; view entropy (clusters) "
        f"{record['entropy_before']:.3f} -> {record['entropy_after']:.3f} nats; true directions "
        f"{h_true_before:.3f} -> {h_true_after:.3f} nats; main preferred view {share_before:.2f} -> {share_after:.2f}"
    )
    # the true viewing directions are spread more evenly, and the preferred view lost its dominance
    assert h_true_after >= h_true_before + 0.2
    assert share_after <= 0.85 * share_before
    assert record["entropy_after"] >= record["entropy_before"] + 0.3
    views = record["views"]
    assert sum(v["after"] for v in views) == len(after)
    big = [v["after"] for v in views if v["before"] >= record["min_view_particles"]]
    assert max(big) == min(big) == record["cap"]  # factor 1: every view that sets the cap is equal
    summary = printed.strip().splitlines()[-1]
    assert re.search(rf"entropy {record['entropy_before']:.3f} -> {record['entropy_after']:.3f} nats", summary)
    with Image.open(balanced / "views.png") as png:
        assert png.size[0] >= 72 * len(views)


@pytest.mark.slow
def test_factor_zero_keeps_all_and_seed_repeats(classified: ClassifiedSession) -> None:
    snapshot = read_snapshot(classified.run_dir).snapshot
    good = np.zeros(snapshot.n_classes, dtype=bool)
    good[[0, 2, 4]] = True
    keep_all = rebalance_views(snapshot, good, 0.0)
    members = np.flatnonzero(good[snapshot.particles.class_index])
    np.testing.assert_array_equal(keep_all.keep_index, members)
    assert keep_all.cap is None and keep_all.entropy_after == pytest.approx(keep_all.entropy_before)
    half = rebalance_views(snapshot, good, 0.5, seed=7, min_view_particles=0)
    again = rebalance_views(snapshot, good, 0.5, seed=7, min_view_particles=0)
    np.testing.assert_array_equal(half.keep_index, again.keep_index)
    assert half.after.min() >= 0.5 * half.after.max()
    assert distribution_entropy(half.after)[0] >= distribution_entropy(half.before)[0]


@pytest.mark.slow
def test_particles_left_out_are_neither_kept_nor_counted(classified: ClassifiedSession) -> None:
    snapshot = read_snapshot(classified.run_dir).snapshot
    good = np.zeros(snapshot.n_classes, dtype=bool)
    good[[0, 2, 4]] = True
    members = good[snapshot.particles.class_index]
    eligible = np.ones(len(snapshot.particles), dtype=bool)
    eligible[np.flatnonzero(members)[::3]] = False  # every third member of the chosen classes
    result = rebalance_views(snapshot, good, 0.0, eligible=eligible)
    np.testing.assert_array_equal(result.keep_index, np.flatnonzero(members & eligible))
    assert int(result.before.sum()) == int(np.count_nonzero(members & eligible))
    with pytest.raises(InputError, match="eligible"):
        rebalance_views(snapshot, good, 0.0, eligible=eligible[:-1])


@pytest.mark.slow
def test_rebalance_auto_leaves_out_junk_hiding_in_good_classes(classified: ClassifiedSession, tmp_path: Path) -> None:
    """Issue 14, item 6: ``rebalance --auto`` drops the particles of kept classes scoring above
    ``--particle-junk-threshold`` (default 0.5, as ``select --auto``) before counting views. With
    --factor 0 (nothing drawn away), against whole classes (threshold 1) on the ground truth: what it
    leaves out is several times richer in junk than the whole classes, and nearly every good particle
    stays; with --factor 1 no kept particle scores above the threshold."""
    whole, default, flat = tmp_path / "whole", tmp_path / "default", tmp_path / "flat"
    common = ["--factor", "0", "--quiet"]
    assert (
        otf2d(["rebalance", str(classified.run_dir), "--out", str(whole), *common, "--particle-junk-threshold", "1"])
        == 0
    )
    assert otf2d(["rebalance", str(classified.run_dir), "--out", str(default), *common]) == 0
    whole_names = starfile.read(whole / "particles.star", always_dict=True)["particles"]["rlnImageName"].tolist()
    chosen = starfile.read(default / "particles.star", always_dict=True)["particles"]
    assert (chosen["rlnOtf2dJunkScore"] <= 0.5).all()
    kept = set(chosen["rlnImageName"])
    assert kept < set(whole_names)
    junk = dict(zip(whole_names, is_junk(classified.truth_of(whole_names)), strict=True))
    left_out = [n for n in whole_names if n not in kept]
    good_whole = sum(not junk[n] for n in whole_names)
    good_kept = sum(not junk[n] for n in kept)
    junk_whole = sum(junk.values())
    junk_left_out = sum(junk[n] for n in left_out)
    print(
        f"rebalance --auto --factor 0: {len(whole_names)} particles in the kept classes ({junk_whole} junk); "
        f"{len(left_out)} left out ({junk_left_out} junk); good kept {good_kept} of {good_whole}"
    )
    assert good_kept >= 0.98 * good_whole
    assert junk_left_out / len(left_out) >= 3 * junk_whole / len(whole_names)
    record = json.loads((default / "rebalance.json").read_text())
    assert record["particles_dropped_as_junk_in_kept_classes"] == len(left_out)
    assert record["particle_junk_threshold"] == 0.5
    assert sum(v["before"] for v in record["views"]) == len(kept)  # left-out junk counts in no view

    assert otf2d(["rebalance", str(classified.run_dir), "--out", str(flat), "--factor", "1", "--quiet"]) == 0
    snapshot = read_snapshot(classified.run_dir).snapshot
    scores = dict(zip(snapshot.particles.image_names(), particle_junk_scores(snapshot), strict=True))
    flat_names = starfile.read(flat / "particles.star", always_dict=True)["particles"]["rlnImageName"]
    assert max(scores[n] for n in flat_names) <= 0.5
