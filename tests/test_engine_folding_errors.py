"""A session folder used out of order is a programming error (RuntimeError), never an input error.

``InputError`` means "this file or request is bad" and the CLI reports it as such; calling ``fold`` before the
classes exist, or a classifier that breaks its contract, is a bug in the engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch

from otf2d.core.config import Class2DParams
from otf2d.core.errors import Otf2dError
from otf2d.core.snapshot import ASSIGNMENT_ARRAYS, AssignmentRecord, ParticleAssignments
from otf2d.engine.serving.folding import SessionFolder
from otf2d.engine.serving.session import Session


def never(*args: Any) -> Any:
    raise AssertionError("no classifier is made in these tests")


@pytest.fixture
def folder(tmp_path: Path) -> SessionFolder:
    session = Session.create(tmp_path / "sessions", "s", Class2DParams(n_classes=2))
    return SessionFolder(session, never, torch.device("cpu"))


def test_fold_before_the_classes_exist_is_a_runtime_error(folder: SessionFolder) -> None:
    with pytest.raises(RuntimeError, match="not streaming") as caught:
        folder.fold(10)
    assert not isinstance(caught.value, Otf2dError)


def test_snapshot_before_the_classes_exist_is_a_runtime_error(folder: SessionFolder) -> None:
    empty = cast(ParticleAssignments, np.zeros(0))
    with pytest.raises(RuntimeError, match="no classes yet") as caught:
        folder.snapshot(empty, 1)
    assert not isinstance(caught.value, Otf2dError)


def test_a_classifier_that_returns_too_little_is_a_runtime_error(folder: SessionFolder) -> None:
    with pytest.raises(RuntimeError, match="classifier returned no AssignmentRecord but a dict") as caught:
        folder._store(cast(Any, []), cast(Any, {}))
    assert not isinstance(caught.value, Otf2dError)
    two = AssignmentRecord(**{c: np.zeros(2) for c in ASSIGNMENT_ARRAYS})
    with pytest.raises(RuntimeError, match="classifier returned 2 assignments for 3 particles") as caught:
        folder._store(cast(Any, np.zeros(3)), two)
    assert not isinstance(caught.value, Otf2dError)


def test_an_assignment_record_of_unequal_fields_is_a_value_error() -> None:
    fields = {c: np.zeros(3) for c in ASSIGNMENT_ARRAYS}
    with pytest.raises(ValueError, match="pmax has 2 entries, not 3") as caught:
        AssignmentRecord(**(fields | {"pmax": np.zeros(2)}))
    assert not isinstance(caught.value, Otf2dError)
    with pytest.raises(ValueError, match="scale has 4 entries, not 3"):
        AssignmentRecord(**fields, scale=np.zeros(4))
