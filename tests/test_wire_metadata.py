"""The wire's metadata frame (issue 14): the input's columns travel with each batch, validated."""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pytest

from otf2d.core.errors import DecodeError
from otf2d.core.extra_columns import ExtraColumns
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.wire import decode_batch, decode_metadata_frame, encode_batch, encode_metadata_frame

N = 5


def relion_extra() -> ExtraColumns:
    return ExtraColumns(
        "relion",
        {
            "rlnCoordinateX": np.linspace(10, 50, N),
            "rlnHelicalTubeID": np.arange(N, dtype=np.int64),
            "rlnMicrographName": np.array([f"Movies/mic_{i}_µ.mrc" for i in range(N)]),
            "optics/rlnMicrographOriginalPixelSize": np.full(N, 0.83),
        },
    )


def cs_extra() -> ExtraColumns:
    return ExtraColumns(
        "cryosparc",
        {
            "uid": np.arange(N, dtype="<u8") + 2**60,
            "location/micrograph_shape": np.tile(np.array([4096, 4096], dtype="<u4"), (N, 1)),
            "location/micrograph_path": np.array([b"J1/mic.mrc"] * N),
            "location/center_x_frac": np.linspace(0, 1, N, dtype="<f4"),
            "pick_stats/flag": np.array([True, False, True, False, True]),
        },
    )


@pytest.mark.parametrize("make", [relion_extra, cs_extra])
def test_metadata_frame_round_trip(make: Any) -> None:
    extra = make()
    back = decode_metadata_frame(encode_metadata_frame(extra), N)
    assert back.origin == extra.origin and back.names == extra.names
    for name in extra.names:
        assert back.columns[name].dtype.kind == extra.columns[name].dtype.kind, name
        np.testing.assert_array_equal(back.columns[name], extra.columns[name], name)


def _batch(extra: ExtraColumns | None) -> ParticleBatch:
    return ParticleBatch(
        images=np.zeros((N, 4, 4), dtype=np.float32),
        pixel_size_angstrom=1.5,
        ctf=CtfParams.uniform(N, defocus_u_angstrom=1e4),
        session="s",
        stack_paths=np.array(["a.mrcs"] * N),
        indices=np.arange(1, N + 1),
        optics_groups=np.ones(N, dtype=np.int64),
        extra=extra,
    )


def test_batch_carries_its_metadata_frame_and_stays_three_frames_without() -> None:
    frames = encode_batch(_batch(relion_extra()), msg_id="x:1", source="f.star", file_ready_time=1.0)
    assert len(frames) == 4
    _, batch = decode_batch(frames)
    assert batch.extra is not None
    np.testing.assert_array_equal(batch.extra.columns["rlnMicrographName"], relion_extra().columns["rlnMicrographName"])
    assert batch.take([4, 0]).extra is not None
    plain = encode_batch(_batch(None), msg_id="x:2", source="f.star", file_ready_time=1.0)
    assert len(plain) == 3
    assert decode_batch(plain)[1].extra is None


def _split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    length = int.from_bytes(frame[:4], "little")
    return json.loads(frame[4 : 4 + length]), frame[4 + length :]


def _join(header: dict[str, Any], data: bytes, *, fix_crc: bool = True) -> bytes:
    if fix_crc:
        header = {**header, "data_crc32": zlib.crc32(data) & 0xFFFFFFFF}
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(4, "little") + raw + data


def _tampered(change: str) -> bytes:
    header, data = _split(encode_metadata_frame(relion_extra()))
    columns = header["columns"]
    if change == "version":
        header["metadata_version"] = 2
    elif change == "origin":
        header["origin"] = "pickle"
    elif change == "rows":
        header["n_rows"] = N + 1
    elif change == "dtype":
        columns[0]["dtype"] = "|O"
    elif change == "name":
        columns[0]["name"] = "../../etc/passwd rm -rf"
    elif change == "duplicate":
        columns[1]["name"] = columns[0]["name"]
    elif change == "shape":
        columns[0]["shape"] = [N, 10**6]
    elif change == "truncated":
        data = data[:-3]
    elif change == "trailing":
        data = data + b"\0" * 8
    elif change == "crc":
        return _join(header, data[:-1] + bytes([data[-1] ^ 1]), fix_crc=False)
    elif change == "utf8":
        columns[2]["dtype"] = "|S1"
        return _join(header, data)
    return _join(header, data)


@pytest.mark.parametrize(
    "change", ["version", "origin", "rows", "dtype", "name", "duplicate", "shape", "truncated", "trailing", "crc"]
)
def test_a_bad_metadata_frame_is_a_decode_error(change: str) -> None:
    with pytest.raises(DecodeError):
        decode_metadata_frame(_tampered(change), N)


def test_text_that_is_not_utf8_is_refused() -> None:
    extra = ExtraColumns("relion", {"rlnMicrographName": np.array(["ab"] * N)})
    header, data = _split(encode_metadata_frame(extra))
    bad = bytearray(data)
    bad[0] = 0xFF
    with pytest.raises(DecodeError, match="UTF-8"):
        decode_metadata_frame(_join(header, bytes(bad)), N)


@pytest.mark.parametrize("frame", [b"", b"\x01\x00", b"\xff\xff\xff\x7f{}", (5).to_bytes(4, "little") + b"[1,2]"])
def test_garbage_is_a_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_metadata_frame(frame, N)


def test_a_batch_with_a_bad_metadata_frame_is_rejected_whole() -> None:
    frames = encode_batch(_batch(relion_extra()), msg_id="x:1", source="f.star", file_ready_time=1.0)
    frames[3] = _tampered("rows")
    with pytest.raises(DecodeError, match="rows"):
        decode_batch(frames)
