"""otf2d.core.durable: the one atomic write (engine checkpoints and sessions, the demo, the simulator)."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest

from otf2d.core import durable
from otf2d.core.durable import (
    atomic_output,
    fsync_directory,
    temporary_sibling,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)


def test_replaces_the_target_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    assert write_bytes_atomic(target, b"new") == target
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="half-way"), atomic_output(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("half-way")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_the_temporary_is_a_fresh_hidden_sibling(tmp_path: Path) -> None:
    names = {temporary_sibling(tmp_path / "x.json") for _ in range(50)}
    assert len(names) == 50
    assert all(p.parent == tmp_path and p.name.startswith(".x.json.") and p.suffix == ".tmp" for p in names)
    assert not any(p.exists() for p in names)


def test_keep_previous_renames_the_current_target_aside(tmp_path: Path) -> None:
    target, previous = tmp_path / "c.npz", tmp_path / "c.prev.npz"
    write_bytes_atomic(target, b"one", keep_previous=previous)
    assert not previous.exists()  # nothing to keep the first time
    write_bytes_atomic(target, b"two", keep_previous=previous)
    assert (target.read_bytes(), previous.read_bytes()) == (b"two", b"one")


def test_a_named_temporary_without_fsync_as_relion_writes(tmp_path: Path) -> None:
    target = tmp_path / "particles.star"
    with atomic_output(target, temporary=tmp_path / "particles.star.tmp", fsync=False) as tmp:
        assert tmp.name == "particles.star.tmp"
        tmp.write_text("data_\n")
    assert target.read_text() == "data_\n" and not tmp.exists()


def test_json_is_strict_and_optionally_sorted(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "s.json", {"b": 1, "a": [1.5]}, sort_keys=True, newline=False)
    assert path.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}'
    assert json.loads(write_text_atomic(tmp_path / "t.json", '{"x": 1}').read_text()) == {"x": 1}
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "n.json", {"a": math.nan})
    assert not (tmp_path / "n.json").exists()


def test_fsync_directory_refuses_a_missing_directory(tmp_path: Path) -> None:
    fsync_directory(tmp_path)
    with pytest.raises(OSError):
        fsync_directory(tmp_path / "missing")


@pytest.mark.parametrize(("code", "tolerated"), [(errno.EINVAL, True), (errno.EBADF, True), (errno.EIO, False)])
def test_a_filesystem_that_cannot_sync_directories_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, tolerated: bool
) -> None:
    real_fsync_file = durable.fsync_file

    def refuse_directories(path: str | os.PathLike[str]) -> None:
        if Path(path).is_dir():
            raise OSError(code, os.strerror(code))
        real_fsync_file(path)

    monkeypatch.setattr(durable, "fsync_file", refuse_directories)
    target = tmp_path / "latest.json"
    if tolerated:
        write_json_atomic(target, {"a": 1})
    else:
        with pytest.raises(OSError, match=os.strerror(code)):
            write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}  # renamed either way: only the directory sync failed
