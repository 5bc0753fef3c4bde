"""otf2d.selection.choose: classes by number or by junk score, the filters, overrides, and --auto against truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import starfile
from selection_session import ClassifiedSession, classified_session, is_junk
from snapshot_factory import make_snapshot

from otf2d.core.errors import InputError
from otf2d.engine.serving.monitoring_hooks import OVERRIDES_FILE, overrides_for_snapshot
from otf2d.monitoring.quality import save_overrides, score_classes
from otf2d.monitoring.snapshots import write_snapshot
from otf2d.monitoring.snapshots.atomic import write_star_atomic
from otf2d.monitoring.snapshots.reader import read_snapshot
from otf2d.selection.choose import (
    SESSION_OVERRIDES_FILE,
    choose_classes,
    engine_overrides_for_snapshot,
    parse_class_numbers,
    session_overrides,
)

# make_snapshot: counts (5, 12, 0, 20, 3, 10), resolutions (12.5, 15.25, inf, 9.75, 30, 18) Å


@pytest.fixture(scope="session")
def classified(tmp_path_factory: pytest.TempPathFactory) -> ClassifiedSession:
    return classified_session(tmp_path_factory.getbasetemp() / "selection_session")


def test_parse_class_numbers() -> None:
    assert parse_class_numbers("1,4,7") == [1, 4, 7]
    assert parse_class_numbers(" 3-5, 9,4 ,") == [3, 4, 5, 9]
    for bad in ("", "a", "0", "5-3", "1,,x", "-2"):
        with pytest.raises(InputError):
            parse_class_numbers(bad)


def test_by_number_with_filters() -> None:
    snapshot = make_snapshot()
    choice = choose_classes(snapshot, classes=[1, 2, 3, 4, 5])
    assert choice.kept == [1, 2, 4, 5]  # class 3 is empty
    assert choice.dropped == {3: "empty", 6: "not asked for"}
    index = choice.particle_index(snapshot)
    np.testing.assert_array_equal(np.isin(snapshot.particles.class_index, [0, 1, 3, 4]), np.isin(np.arange(50), index))
    choice = choose_classes(snapshot, classes=[1, 2, 4, 5, 6], min_particles=6, max_resolution_angstrom=16.0)
    assert choice.kept == [2, 4]
    assert choice.dropped_kind == {
        1: "too few particles",
        3: "not asked for",
        5: "too few particles",
        6: "resolution too poor",
    }


def test_errors_name_the_file_and_say_what_is_wrong(tmp_path: Path) -> None:
    snapshot = make_snapshot()
    model = tmp_path / "run_it001_model.star"
    with pytest.raises(InputError, match=r"class\(es\) \[7, 9\] do not exist: this snapshot has classes 1..6") as err:
        choose_classes(snapshot, classes=[1, 7, 9], source=model)
    assert err.value.path == str(model)
    with pytest.raises(InputError, match="no class left to select") as err:
        choose_classes(snapshot, classes=[3, 5], min_particles=4, source=model)
    assert "class 3: empty" in str(err.value) and "class 5: 3 particles < --min-particles 4" in str(err.value)
    with pytest.raises(InputError, match="either by number"):
        choose_classes(snapshot, classes=[1], auto=True)
    with pytest.raises(InputError, match="either by number"):
        choose_classes(snapshot)


def test_auto_follows_scores_and_overrides() -> None:
    snapshot = make_snapshot()  # its synthetic patterns all score as junk
    with pytest.raises(InputError, match="no class left to select"):
        choose_classes(snapshot, auto=True)
    scores = score_classes(snapshot).scores
    threshold = float(np.sort(scores)[3])  # a threshold that keeps the three lowest-scoring classes
    plain = choose_classes(snapshot, auto=True, junk_threshold=threshold)
    assert plain.junk_scores is not None
    expected = [c for c in range(1, 7) if scores[c - 1] <= threshold and snapshot.particle_counts[c - 1] > 0]
    assert plain.kept == expected and len(expected) >= 2
    rescued = choose_classes(snapshot, auto=True, overrides={1: "good", 4: "good", 3: "good"})
    assert rescued.kept == [1, 4]  # class 3 is empty: an override cannot make particles
    assert rescued.overrides == {1: "good", 3: "good", 4: "good"}
    assert rescued.junk_scores is not None and rescued.junk_scores[0] == 0.0
    forced = choose_classes(snapshot, auto=True, junk_threshold=threshold, overrides={expected[0]: "junk"})
    assert forced.kept == expected[1:] and forced.dropped_kind[expected[0]] == "junk"


def test_auto_uses_the_scores_stored_in_the_snapshot(tmp_path: Path) -> None:
    """A scored snapshot's ``rlnPredictedClassScore`` (1 − junk score; RELION ≥ 4's class merit) decides."""
    job = tmp_path / "project" / "Class2D" / "otf2d"
    paths = write_snapshot(make_snapshot(), job, project_dir=tmp_path / "project")
    blocks = starfile.read(paths.model_star, always_dict=True)
    merit = np.array([0.9, 0.2, 0.8, 0.75, 0.1, 0.51])
    blocks["model_classes"]["rlnPredictedClassScore"] = merit
    write_star_atomic(paths.model_star, blocks)
    snapshot = read_snapshot(job).snapshot
    np.testing.assert_allclose(snapshot.junk_score, 1.0 - merit)  # type: ignore[arg-type]
    choice = choose_classes(snapshot, auto=True)
    assert choice.kept == [1, 4, 6]  # class 3 (merit 0.8) is empty
    assert choice.dropped_kind == {2: "junk", 3: "empty", 5: "junk"}
    overridden = choose_classes(snapshot, auto=True, overrides={1: "junk", 5: "good"})
    assert overridden.kept == [4, 5, 6] and overridden.overrides == {1: "junk", 5: "good"}
    assert choose_classes(snapshot, auto=True, junk_threshold=0.3).kept == [1, 4]


def test_engine_overrides_are_translated_like_the_engine_does(tmp_path: Path) -> None:
    assert SESSION_OVERRIDES_FILE == OVERRIDES_FILE
    order = [2, 0, 5, 1, 4, 3]  # engine class shown as snapshot class i + 1
    snapshot = make_snapshot(parameters={"engine_class_of_snapshot_class": order})
    engine_side = {1: "junk", 6: "good", 9: "junk"}  # engine class numbers (engine index + 1)
    assert engine_overrides_for_snapshot(engine_side, snapshot) == overrides_for_snapshot(engine_side, order)
    assert engine_overrides_for_snapshot(engine_side, snapshot) == {2: "junk", 3: "good"}
    session = tmp_path / "sessions" / "grid3"
    (session / "snapshots").mkdir(parents=True)
    assert session_overrides(session / "snapshots", snapshot) == {}
    save_overrides(session / SESSION_OVERRIDES_FILE, {1: "junk"})
    assert session_overrides(session / "snapshots", snapshot) == {2: "junk"}
    (session / SESSION_OVERRIDES_FILE).write_text(json.dumps({"schema": 1, "classes": {"1": "maybe"}}))
    with pytest.raises(InputError, match="maybe"):
        session_overrides(session / "snapshots", snapshot)


@pytest.mark.slow
def test_auto_keeps_most_good_and_drops_most_junk(classified: ClassifiedSession) -> None:
    """On a classified simulator session, --auto keeps ≥ 90 % of the true particles and drops ≥ 60 %
    of the junk, so that the selection holds at most half the session's junk fraction."""
    loaded = read_snapshot(classified.run_dir)
    snapshot = loaded.snapshot
    choice = choose_classes(snapshot, auto=True)
    kept = np.zeros(len(snapshot.particles), dtype=bool)
    kept[choice.particle_index(snapshot)] = True
    junk = is_junk(classified.truth_of(snapshot.particles.image_names()))
    good_kept = float(kept[~junk].mean())
    junk_dropped = float((~kept[junk]).mean())
    print(f"auto selection: good kept {good_kept:.3f}, junk dropped {junk_dropped:.3f}, classes {choice.kept}")
    assert good_kept >= 0.9
    assert junk_dropped >= 0.6
    assert junk[kept].mean() <= 0.5 * junk.mean()
    # negative control: the classes --auto leaves out are mostly junk
    left_out = ~kept
    assert junk[left_out].mean() >= 0.8
