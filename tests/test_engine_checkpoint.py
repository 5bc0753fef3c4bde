"""Checkpoints: one .npz without pickle, atomic replace with a previous copy, exact round trip of state trees."""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from otf2d.core.errors import InputError
from otf2d.engine.storage.checkpoint import (
    flatten_state,
    load_checkpoint,
    previous_path,
    save_checkpoint,
    unflatten_state,
)


def example_state() -> dict[str, object]:
    g = torch.Generator().manual_seed(3)
    return {
        "sums": torch.randn(3, 8, 5, dtype=torch.complex64, generator=g),
        "weights": torch.rand(3, 8, 5, dtype=torch.float64, generator=g),
        "half": torch.randn(4, generator=g).to(torch.bfloat16),
        "counts": torch.tensor([3, 0, 7]),
        "mask": torch.tensor([True, False, True]),
        "numpy": np.arange(6, dtype=np.int32).reshape(2, 3),
        "scalars": {"iteration": 12, "temperature": 1.25, "nan": math.nan, "inf": -math.inf, "name": "x", "none": None},
        "history": [1, 2.5, (3, "four")],
        "np_scalar": np.float32(0.5),
    }


def test_state_round_trips_exactly_through_a_checkpoint_file(tmp_path: Path) -> None:
    state = example_state()
    arrays: dict[str, np.ndarray] = {}
    tree = flatten_state(state, arrays)
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"consumed": 1234, "classifier": tree}, arrays)
    # a plain npz readable without pickle
    with np.load(path, allow_pickle=False) as archive:
        assert "__meta__" in archive.files
    loaded = load_checkpoint(path)
    assert loaded is not None
    meta, loaded_arrays = loaded
    assert meta["consumed"] == 1234
    back = unflatten_state(meta["classifier"], loaded_arrays, "cpu")
    for name in ("sums", "weights", "half", "counts", "mask"):
        assert back[name].dtype == state[name].dtype, name  # type: ignore[attr-defined]
        assert torch.equal(back[name], state[name]), name  # type: ignore[arg-type]
    np.testing.assert_array_equal(back["numpy"], state["numpy"])  # type: ignore[arg-type]
    scalars = back["scalars"]
    assert scalars["iteration"] == 12 and scalars["temperature"] == 1.25 and scalars["name"] == "x"
    assert math.isnan(scalars["nan"]) and scalars["inf"] == -math.inf and scalars["none"] is None
    assert back["history"] == [1, 2.5, (3, "four")]
    assert back["np_scalar"] == 0.5


def test_the_previous_checkpoint_is_kept_and_used_when_the_newest_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"consumed": 1}, {"a": np.zeros(3)})
    save_checkpoint(path, {"consumed": 2}, {"a": np.ones(3)})
    assert load_checkpoint(path)[0]["consumed"] == 2  # type: ignore[index]
    assert previous_path(path).exists()
    path.write_bytes(path.read_bytes()[:50])  # torn file (cannot happen with os.replace, but disks fail)
    meta, arrays = load_checkpoint(path)  # type: ignore[misc]
    assert meta["consumed"] == 1
    np.testing.assert_array_equal(arrays["a"], np.zeros(3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_no_checkpoint_and_unreadable_checkpoints(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "none.npz") is None
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="no readable checkpoint"):
        load_checkpoint(bad)
    # an npz carrying a pickled object array is refused, not unpickled
    evil = tmp_path / "evil.npz"
    np.savez(evil, __meta__=np.frombuffer(b'{"format": 1}', dtype=np.uint8), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InputError):
        load_checkpoint(evil)
    assert zipfile.is_zipfile(evil)


def test_unsupported_values_are_refused() -> None:
    with pytest.raises(InputError, match="cannot store"):
        flatten_state({"f": object()}, {})
    with pytest.raises(InputError, match="not a string"):
        flatten_state({1: 2}, {})
    with pytest.raises(InputError, match="Python objects"):
        flatten_state({"o": np.array([None])}, {})
