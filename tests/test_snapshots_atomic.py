"""Atomic writers: complete files or the previous ones, never a partial file or a stray temp file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from otf2d.core import durable
from otf2d.core.durable import (
    atomic_output,
    temporary_sibling,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from otf2d.core.errors import InputError
from otf2d.monitoring.snapshots import atomic
from otf2d.monitoring.snapshots.atomic import star_text, write_mrc_atomic, write_npy_atomic, write_star_atomic


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_temporary_sibling_is_hidden_unique_and_in_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "run_it001_data.star"
    names = {temporary_sibling(target) for _ in range(100)}
    assert len(names) == 100
    for name in names:
        assert name.parent == tmp_path
        assert name.name.startswith(".run_it001_data.star.")
        assert not name.exists()


def test_write_replaces_previous_content(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new\n")
    assert target.read_text() == "new\n"
    assert _listing(tmp_path) == ["a.txt"]


def test_failure_inside_block_keeps_previous_file_and_removes_temp(tmp_path: Path) -> None:
    target = tmp_path / "classes.mrcs"
    write_bytes_atomic(target, b"previous")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_output(target) as tmp:
        tmp.write_bytes(b"half a fi")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"previous"
    assert _listing(tmp_path) == ["classes.mrcs"]


def test_failure_in_replace_keeps_previous_file_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.star"
    write_text_atomic(target, "previous\n")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("rename failed")

    monkeypatch.setattr(durable.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_text_atomic(target, "new\n")
    assert target.read_text() == "previous\n"
    assert _listing(tmp_path) == ["model.star"]


def test_numpy_writer_failing_midway_leaves_previous_cs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "particles.cs"
    before = np.arange(5, dtype="<u8")
    write_npy_atomic(target, before)

    def half_save(fh: object, arr: np.ndarray, allow_pickle: bool = False) -> None:
        fh.write(b"\x93NUMPY partial")  # type: ignore[attr-defined]
        raise OSError("no space left on device")

    monkeypatch.setattr(atomic.np, "save", half_save)
    with pytest.raises(OSError, match="no space"):
        write_npy_atomic(target, np.arange(10, dtype="<u8"))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target, allow_pickle=False), before)
    assert _listing(tmp_path) == ["particles.cs"]


def test_mrc_writer_failing_midway_leaves_previous_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run_it001_classes.mrcs"
    before = np.ones((2, 8, 8), dtype=np.float32)
    write_mrc_atomic(target, before, voxel_size_angstrom=2.0)

    def broken_stats(self: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(mrcfile.mrcfile.MrcFile, "update_header_stats", broken_stats)
    with pytest.raises(RuntimeError, match="interrupted"):
        write_mrc_atomic(target, np.zeros((3, 8, 8), dtype=np.float32), voxel_size_angstrom=2.0)
    monkeypatch.undo()
    np.testing.assert_array_equal(mrcfile.read(target), before)
    assert _listing(tmp_path) == ["run_it001_classes.mrcs"]


def test_final_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_mrc_stack_header_and_data(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=(4, 16, 12)).astype(np.float32)
    path = write_mrc_atomic(tmp_path / "s.mrcs", data, voxel_size_angstrom=1.234)
    with mrcfile.open(path, permissive=False) as mrc:
        assert mrc.is_image_stack()
        assert mrc.data.dtype == np.float32
        np.testing.assert_array_equal(mrc.data, data)
        assert mrc.voxel_size.x == pytest.approx(1.234, rel=1e-6)
        assert mrc.voxel_size.y == pytest.approx(1.234, rel=1e-6)
        assert float(mrc.header.dmax) == pytest.approx(float(data.max()))
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))  # noqa: SIM115


def test_npy_goes_exactly_to_path_and_refuses_objects(tmp_path: Path) -> None:
    arr = np.zeros(3, dtype=[("uid", "<u8"), ("blob/path", "S4")])
    path = write_npy_atomic(tmp_path / "p.cs", arr)
    assert _listing(tmp_path) == ["p.cs"]
    assert path.read_bytes()[:6] == b"\x93NUMPY"
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), arr)
    with pytest.raises(InputError, match="pickle"):
        write_npy_atomic(tmp_path / "o.cs", np.array([{"a": 1}], dtype=object))
    assert _listing(tmp_path) == ["p.cs"]


def test_json_refuses_nan_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "x.json", {"a": float("nan")})
    assert _listing(tmp_path) == []
    write_json_atomic(tmp_path / "x.json", {"a": 1.5})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1.5}


def test_star_text_has_a_version_line_before_every_block() -> None:
    text = star_text({"general": {"rlnPixelSize": 1.5}, "particles": pd.DataFrame({"rlnClassNumber": [1, 2]})})
    lines = text.splitlines()
    data_lines = [i for i, line in enumerate(lines) if line.startswith("data_")]
    assert [lines[i] for i in data_lines] == ["data_general", "data_particles"]
    for i in data_lines:
        assert "# version 30001" in lines[max(0, i - 2) : i]
    assert "\r" not in text  # RELION rejects CR+LF


def test_star_round_trips_float64_exactly_and_keeps_strings(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(scale=1e4, size=20), [1.234567890123e-12, -0.0, 1e300, 123456789.125]])
    names = [f"{i + 1:06d}@Extract/job007/Movies/mic 0001.mrcs" if i == 0 else f"{i + 1:06d}@x.mrcs" for i in range(24)]
    mics = ["0001", "1e5", "007.mrc", *[f"m{i}" for i in range(21)]]
    df = pd.DataFrame(
        {
            "rlnImageName": names,
            "rlnMicrographName": mics,
            "rlnDefocusU": values,
            "rlnClassNumber": np.arange(24),
        }
    )
    general = {
        "rlnCurrentResolution": float(values[0]),
        "rlnNrClasses": np.int64(6),
        "rlnPixelSize": np.float64(0.1),
    }
    path = write_star_atomic(tmp_path / "t.star", {"model_general": general, "particles": df})
    back = starfile.read(path, always_dict=True, parse_as_string=["rlnMicrographName", "rlnImageName"])
    assert back["model_general"]["rlnCurrentResolution"] == float(values[0])
    assert back["model_general"]["rlnNrClasses"] == 6
    assert back["model_general"]["rlnPixelSize"] == 0.1
    p = back["particles"]
    np.testing.assert_array_equal(p["rlnDefocusU"].to_numpy(dtype=np.float64), values)  # bit-exact
    assert list(p["rlnImageName"]) == names
    assert list(p["rlnMicrographName"]) == mics
    assert p["rlnClassNumber"].dtype.kind == "i"
    assert "np.float64" not in path.read_text()


def _starfile_body(name: str, frame: pd.DataFrame) -> str:
    text = starfile.to_string({name: frame}, float_format=None)
    return text.split("\n", 1)[1].lstrip("\n")


@pytest.mark.parametrize("rows_per_slice", [16384, 7])
def test_fast_loop_blocks_are_exactly_what_starfile_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rows_per_slice: int
) -> None:
    monkeypatch.setattr(atomic, "LOOP_ROWS_PER_SLICE", rows_per_slice)
    rng = np.random.default_rng(5)
    n = 500
    frame = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@Extract/job007/Movies/m {i % 3}.mrcs" for i in range(n)],
            "rlnMicrographName": ["" if i % 7 == 0 else f"Movies/m{i % 3}.mrc" for i in range(n)],
            "rlnClassNumber": rng.integers(1, 50, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            "rlnOriginXAngst": np.concatenate([[0.1, 1e-5, 1e16, -0.0, 123456789.125], rng.normal(0, 3, n - 5)]),
        }
    )
    fast = atomic.loop_text("particles", frame)
    assert fast == _starfile_body("particles", frame)
    path = write_star_atomic(tmp_path / "p.star", {"particles": frame})
    back = starfile.read(path)
    assert back["rlnImageName"].tolist() == frame["rlnImageName"].tolist()
    np.testing.assert_array_equal(back["rlnOriginXAngst"].to_numpy(), frame["rlnOriginXAngst"].to_numpy())


@pytest.mark.parametrize(
    "column",
    [np.array([1.5, np.nan]), np.array([0.1, 0.2], dtype=np.float32), np.array([True, False]), [1, "a"]],
    ids=["nan", "float32", "bool", "mixed"],
)
def test_loop_blocks_the_fast_path_cannot_format_go_through_starfile(column: object) -> None:
    frame = pd.DataFrame({"rlnSomething": column})
    assert atomic.loop_text("x", frame) is None
    assert star_text({"x": frame}, version=None) == _starfile_body("x", frame)
