"""Property: whatever a particle file holds, the readers return a table or raise ``InputError``.

The streamer quarantines a file on any failure (issue 13), but an exception other than
``InputError`` is a reader bug: a user would see a traceback instead of a reason. Hypothesis
mutates the real EMPIAR-10076 files (STAR text and cryoSPARC ``.cs``): cut them anywhere, swap
values for hostile tokens, duplicate or drop lines, flip bytes, change field shapes and dtypes,
and reads every result (table, stack check, images) through the public API.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from particle_files import write_cs

from otf2d.core.errors import InputError
from otf2d.core.readers import check_stacks, load_batch, read_particle_table

#: Values a hostile or broken file may hold where a number or an image name is expected.
NASTY = [
    "99999999999999999999",
    "-1",
    "0",
    "nan",
    "inf",
    "-inf",
    "1e400",
    "@",
    "0@x.mrcs",
    "1@../../etc/passwd",
    "1@/etc/passwd",
    "x@y@z",
    "é",
    "1@empiar_10076_7.mrc@",
    "3000000",
    "-300",
    '"quoted value"',
    "data_",
    "loop_",
    "_rlnImageName",
    "1" * 400,
]
#: ``OTF2D_FUZZ_EXAMPLES=5000`` for a deeper, randomised run (the suite's default is fixed and quick).
_EXAMPLES = int(os.environ.get("OTF2D_FUZZ_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=_EXAMPLES or 150,
    deadline=None,
    derandomize=not _EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow],
)


def _read_everything(path: Path) -> None:
    """Read ``path`` fully; only ``InputError`` may come out."""
    try:
        table = read_particle_table(path)
        check_stacks(table)
        load_batch(table, slice(0, min(len(table), 3)))
    except InputError:
        pass


def _star_mutation() -> st.SearchStrategy[tuple[str, int, int, str]]:
    kinds = st.sampled_from(["cut", "token", "dup_line", "drop_line", "flip"])
    return st.tuples(kinds, st.integers(0, 10_000), st.integers(0, 10_000), st.sampled_from(NASTY))


def _mutate_star(text: bytes, mutation: tuple[str, int, int, str]) -> bytes:
    kind, a, b, token = mutation
    if kind == "cut":
        return text[: a % (len(text) + 1)]
    if kind == "flip":
        k = a % len(text)
        return text[:k] + bytes([text[k] ^ (1 + b % 255)]) + text[k + 1 :]
    lines = text.split(b"\n")
    k = a % len(lines)
    if kind == "dup_line":
        return b"\n".join([*lines[: k + 1], lines[k], *lines[k + 1 :]])
    if kind == "drop_line":
        return b"\n".join(lines[:k] + lines[k + 1 :])
    fields = lines[k].split()
    if fields:
        fields[b % len(fields)] = token.encode()
        lines[k] = b" ".join(fields)
    return b"\n".join(lines)


@given(mutations=st.lists(_star_mutation(), min_size=1, max_size=3))
@SETTINGS
def test_mutated_star_files_give_a_table_or_an_input_error(
    shared_data: Path, mutations: list[tuple[str, int, int, str]]
) -> None:
    source = shared_data / "cryodrgn" / "empiar_10076_7.star"
    text = source.read_bytes()
    for mutation in mutations:
        text = _mutate_star(text, mutation)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(shared_data / "cryodrgn" / "empiar_10076_7.mrc", Path(tmp) / "empiar_10076_7.mrc")
        star = Path(tmp) / "empiar_10076_7.star"
        star.write_bytes(text)
        _read_everything(star)


_SHAPES = st.sampled_from([(), (1,), (2,), (3,), (2, 2)])
_DTYPES = st.sampled_from(["<u4", "<i8", "<f4", "<f8", "S8", "<u8", "?"])
_VALUES = st.sampled_from([0.0, -1.0, 1.0, 2.0, 1e30, np.nan, np.inf, 2.0**33, 300.0])


@given(
    field=st.sampled_from(
        [
            "blob/path",
            "blob/idx",
            "blob/shape",
            "blob/psize_A",
            "ctf/accel_kv",
            "ctf/amp_contrast",
            "ctf/df1_A",
            "ctf/df2_A",
            "ctf/exp_group_id",
            "alignments2D/shift",
            "alignments2D/pose",
            "alignments2D/class",
        ]
    ),
    action=st.sampled_from(["drop", "reshape", "value", "cut"]),
    shape=_SHAPES,
    dtype=_DTYPES,
    value=_VALUES,
    cut=st.integers(1, 2000),
)
@SETTINGS
def test_mutated_cs_files_give_a_table_or_an_input_error(
    shared_data: Path, field: str, action: str, shape: tuple[int, ...], dtype: str, value: float, cut: int
) -> None:
    records = np.load(shared_data / "cryodrgn" / "empiar_10076_7.cs")
    n = len(records)
    fields = {name: records[name] for name in records.dtype.names or ()}
    fields["alignments2D/pose"] = np.zeros(n, dtype="<f4")
    fields["alignments2D/shift"] = np.zeros((n, 2), dtype="<f4")
    if action == "drop":
        fields.pop(field, None)
    elif action == "reshape":
        fields[field] = np.ones((n, *shape), dtype=dtype)
    elif action == "value" and fields.get(field) is not None and fields[field].dtype.kind in "fiu":
        column = fields[field].astype(np.float64)
        column.reshape(n, -1)[n // 2] = value
        with np.errstate(invalid="ignore", over="ignore"):
            fields[field] = column.astype(fields[field].dtype)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(shared_data / "cryodrgn" / "empiar_10076_7.mrc", Path(tmp) / "empiar_10076_7.mrc")
        cs = write_cs(Path(tmp) / "empiar_10076_7.cs", fields)
        if action == "cut":
            data = cs.read_bytes()
            cs.write_bytes(data[: max(0, len(data) - cut)])
        _read_everything(cs)


def test_a_nasty_token_in_every_column_of_every_row(shared_data: Path, tmp_path: Path) -> None:
    """Exhaustive, not sampled: each hostile token in each value of a real STAR file."""
    source = (shared_data / "cryodrgn" / "empiar_10076_7.star").read_bytes()
    shutil.copyfile(shared_data / "cryodrgn" / "empiar_10076_7.mrc", tmp_path / "empiar_10076_7.mrc")
    lines = source.split(b"\n")
    rows = [k for k, line in enumerate(lines) if b"@" in line]
    star = tmp_path / "empiar_10076_7.star"
    tried = 0
    for k in rows[:2] + rows[-1:]:
        for column in range(len(lines[k].split())):
            for token in NASTY:
                fields = lines[k].split()
                fields[column] = token.encode()
                star.write_bytes(b"\n".join([*lines[:k], b" ".join(fields), *lines[k + 1 :]]))
                _read_everything(star)
                tried += 1
    assert tried == 3 * 10 * len(NASTY)


@pytest.mark.parametrize("n_bytes", [0, 1, 100, 1023, 1024, 1100])
def test_cut_stack_header(shared_data: Path, tmp_path: Path, n_bytes: int) -> None:
    shutil.copyfile(shared_data / "cryodrgn" / "empiar_10076_7.star", tmp_path / "empiar_10076_7.star")
    data = (shared_data / "cryodrgn" / "empiar_10076_7.mrc").read_bytes()
    (tmp_path / "empiar_10076_7.mrc").write_bytes(data[:n_bytes])
    _read_everything(tmp_path / "empiar_10076_7.star")
