"""otf2d.monitoring.snapshots.result_group: the .csg text cryoSPARC's Import Result Group reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otf2d.monitoring.snapshots.result_group import result_group_text, slots_of, write_result_group

yaml = pytest.importorskip("yaml")


def _cs(n: int = 3) -> np.ndarray:
    dtype = [("uid", "<u8"), ("blob/path", "S8"), ("blob/idx", "<u4"), ("ctf/df1_A", "<f4")]
    dtype += [("alignments2D/class", "<u4"), ("otf2d/junk_score", "<f4"), ("rare/thing", "<f4")]
    return np.zeros(n, dtype=dtype)


def test_slots_are_the_known_prefixes_present_in_cryosparcs_order() -> None:
    assert slots_of(_cs(), "particle") == ["blob", "ctf", "alignments2D"]
    assert slots_of(_cs(), "template") == ["blob", "alignments2D"]


def test_text_is_yaml_with_quotes_and_line_breaks_made_safe() -> None:
    text = result_group_text(
        _cs(5), "it's.cs", group_type="particle", name="p", title="a 'quoted'\ntitle", description="d: e"
    )
    group = yaml.safe_load(text)
    assert group["group"] == {"description": "d: e", "name": "p", "title": "a 'quoted' title", "type": "particle"}
    assert group["results"]["ctf"] == {"metafile": ">it's.cs", "num_items": 5, "type": "particle.ctf"}
    assert set(group["results"]) == {"blob", "ctf", "alignments2D"}
    assert str(group["version"]).startswith("otf2d ")


def test_programming_errors_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown result group type"):
        result_group_text(_cs(), "x.cs", group_type="volume", name="v", title="t", description="d")
    with pytest.raises(ValueError, match="without a folder"):
        result_group_text(_cs(), "sub/x.cs", group_type="particle", name="p", title="t", description="d")
    with pytest.raises(ValueError, match="not beside"):
        write_result_group(
            tmp_path / "x.csg", _cs(), tmp_path / "sub" / "x.cs", group_type="particle", name="p", title="t", root=None
        )


def test_written_atomically_and_names_the_root(tmp_path: Path) -> None:
    path = write_result_group(
        tmp_path / "x.csg", _cs(), tmp_path / "x.cs", group_type="particle", name="p", title="t", root=tmp_path
    )
    assert f"blob/path relative to {tmp_path.resolve()}" in yaml.safe_load(path.read_text())["group"]["description"]
    absolute = write_result_group(
        tmp_path / "y.csg", _cs(), tmp_path / "y.cs", group_type="particle", name="p", title="t", root=None
    )
    assert yaml.safe_load(absolute.read_text())["group"]["description"].endswith("blob/path absolute")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.csg", "y.csg"]  # no temporary left behind
