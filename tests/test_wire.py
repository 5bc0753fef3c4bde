"""The wire protocol: round trips, and every malformed message raises DecodeError."""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np
import pytest

from otf2d.core.errors import DecodeError, InputError
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.wire import (
    CONTROL_KINDS,
    CTF_FIELDS,
    KIND_ACK,
    KIND_BATCH,
    KIND_REPLY,
    SCHEMA_VERSION,
    decode_batch,
    decode_control,
    encode_batch,
    encode_control,
    make_msg_id,
    message_kind,
    parse_msg_id,
)


def random_batch(rng: np.random.Generator, n: int, box: tuple[int, int], dtype: type = np.float32) -> ParticleBatch:
    ctf = CtfParams(
        defocus_u_angstrom=rng.uniform(5000, 30000, n),
        defocus_v_angstrom=rng.uniform(5000, 30000, n),
        defocus_angle_degrees=rng.uniform(-180, 180, n),
        voltage_kv=rng.choice([200.0, 300.0], n),
        spherical_aberration_mm=rng.uniform(0, 3, n),
        amplitude_contrast=rng.uniform(0, 0.2, n),
        phase_shift_degrees=rng.uniform(0, 90, n),
        bfactor_angstrom2=rng.uniform(-50, 50, n),
        scale=rng.uniform(0.5, 1.5, n),
    )
    stacks = np.array([f"Extract/job007/Movies/mic_{k:03d}.mrcs" for k in rng.integers(0, 5, n)])
    indices = np.zeros(n, dtype=np.int64)
    for s in np.unique(stacks):  # distinct (stack, index) pairs, 1-based
        members = np.flatnonzero(stacks == s)
        indices[members] = rng.permutation(1000)[: len(members)] + 1
    return ParticleBatch(
        images=rng.standard_normal((n, *box)).astype(dtype),
        pixel_size_angstrom=float(rng.uniform(0.5, 5.0)),
        ctf=ctf,
        session="sess-ä",  # non-ASCII survives the JSON header
        stack_paths=stacks,
        indices=indices,
        optics_groups=rng.integers(1, 4, n),
    )


def frames_of(batch: ParticleBatch, **kw: Any) -> list[bytes]:
    args: dict[str, Any] = {"msg_id": "ledgerA:7", "source": "Extract/job007/Movies/m_extract.star"}
    args["file_ready_time"] = 1_760_000_000.25
    args.update(kw)
    return [bytes(f) for f in encode_batch(batch, **args)]


def header_of(frames: list[bytes]) -> dict[str, Any]:
    return json.loads(frames[0])


def with_header(frames: list[bytes], **changes: Any) -> list[bytes]:
    header = header_of(frames)
    for key, value in changes.items():
        if value is _DELETE:
            del header[key]
        else:
            header[key] = value
    return [json.dumps(header).encode(), *frames[1:]]


_DELETE = object()


def assert_same(a: ParticleBatch, b: ParticleBatch) -> None:
    assert b.images.dtype == a.images.dtype
    np.testing.assert_array_equal(b.images, a.images)
    assert b.pixel_size_angstrom == a.pixel_size_angstrom
    for name in CTF_FIELDS:
        np.testing.assert_array_equal(getattr(b.ctf, name), getattr(a.ctf, name))
    assert b.session == a.session
    assert b.stack_paths.tolist() == a.stack_paths.tolist()
    assert b.indices.tolist() == a.indices.tolist()
    assert b.optics_groups.tolist() == a.optics_groups.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_round_trip(dtype: type) -> None:
    batch = random_batch(np.random.default_rng(1), 17, (24, 20), dtype)
    frames = encode_batch(batch, msg_id="abc:3", source="x_extract.star", file_ready_time=12.5, attempt=2)
    assert len(frames) == 3
    header, back = decode_batch(frames)
    assert_same(batch, back)
    assert header["msg_id"] == "abc:3" and header["source"] == "x_extract.star"
    assert header["file_ready_time"] == 12.5 and header["attempt"] == 2
    assert header["kind"] == KIND_BATCH and header["schema_version"] == SCHEMA_VERSION
    assert message_kind(frames) == KIND_BATCH
    _, received = decode_batch([bytes(f) for f in frames])
    assert not received.images.flags.writeable  # a view of the received (immutable) frame


def test_frames_are_documented_layout() -> None:
    """Independent check of the byte layout: little-endian images, (n, 9) float64 CTF in CTF_FIELDS order."""
    batch = random_batch(np.random.default_rng(2), 5, (8, 8))
    frames = frames_of(batch)
    header = header_of(frames)
    images = np.frombuffer(frames[1], dtype="<f4").reshape(header["images"]["shape"])
    np.testing.assert_array_equal(images, batch.images)
    ctf = np.frombuffer(frames[2], dtype="<f8").reshape(5, 9)
    np.testing.assert_array_equal(ctf[:, 0], batch.ctf.defocus_u_angstrom)
    np.testing.assert_array_equal(ctf[:, 3], batch.ctf.voltage_kv)
    np.testing.assert_array_equal(ctf[:, 8], batch.ctf.scale)
    assert header["ctf"]["fields"][7] == "bfactor_angstrom2"
    assert header["images"]["crc32"] == zlib.crc32(frames[1])
    assert header["ctf"]["crc32"] == zlib.crc32(frames[2])


def test_property_random_batches() -> None:
    rng = np.random.default_rng(4)
    for _ in range(40):
        n = int(rng.integers(1, 40))
        box = (int(rng.integers(1, 33)), int(rng.integers(1, 33)))
        dtype = np.float16 if rng.random() < 0.5 else np.float32
        batch = random_batch(rng, n, box, dtype)
        _, back = decode_batch(frames_of(batch, msg_id=make_msg_id("s", int(rng.integers(0, 10**9)))))
        assert_same(batch, back)
        # flipping any single byte of a data frame is caught by the checksum
        frames = frames_of(batch)
        k = int(rng.integers(1, 3))
        corrupt = bytearray(frames[k])
        pos = int(rng.integers(0, len(corrupt)))
        corrupt[pos] ^= 1 << int(rng.integers(0, 8))
        frames[k] = bytes(corrupt)
        with pytest.raises(DecodeError):
            decode_batch(frames)


@pytest.fixture
def good() -> list[bytes]:
    return frames_of(random_batch(np.random.default_rng(5), 6, (10, 10)))


def _bad_cases(good: list[bytes]) -> dict[str, list[Any]]:
    h = header_of(good)
    n = h["n_particles"]
    images_nan = np.frombuffer(good[1], dtype="<f4").copy()
    images_nan[13] = np.nan
    nan_bytes = images_nan.tobytes()
    ctf_inf = np.frombuffer(good[2], dtype="<f8").copy()
    ctf_inf[4] = np.inf
    inf_bytes = ctf_inf.tobytes()
    return {
        "no frames": [],
        "missing ctf frame": good[:2],
        "extra frame": [*good, b"x"],
        "truncated images": [good[0], good[1][:-4], good[2]],
        "truncated ctf": [good[0], good[1], good[2][:-8]],
        "not json": [b"{not json", *good[1:]],
        "not utf8": [b"\xff\xfe", *good[1:]],
        "json array": [b"[1, 2]", *good[1:]],
        "NaN in JSON": [good[0].replace(b'"file_ready_time":1760000000.25', b'"file_ready_time":NaN'), *good[1:]],
        "bad version": with_header(good, schema_version=2),
        "version as string": with_header(good, schema_version="1"),
        "missing version": with_header(good, schema_version=_DELETE),
        "wrong kind": with_header(good, kind="ack"),
        "missing msg_id": with_header(good, msg_id=_DELETE),
        "malformed msg_id": with_header(good, msg_id="no-seq"),
        "missing session": with_header(good, session=_DELETE),
        "empty session": with_header(good, session=""),
        "missing source": with_header(good, source=_DELETE),
        "missing file_ready_time": with_header(good, file_ready_time=_DELETE),
        "negative file_ready_time": with_header(good, file_ready_time=-1.0),
        "bad attempt": with_header(good, attempt=0),
        "zero pixel size": with_header(good, pixel_size_angstrom=0.0),
        "negative pixel size": with_header(good, pixel_size_angstrom=-1.0),
        "pixel size as string": with_header(good, pixel_size_angstrom="1.0"),
        "missing n_particles": with_header(good, n_particles=_DELETE),
        "n_particles mismatch": with_header(good, n_particles=n + 1),
        "bool n_particles": with_header(good, n_particles=True),
        "images dtype": with_header(good, images={**h["images"], "dtype": "float64"}),
        "images shape vs buffer": with_header(good, images={**h["images"], "shape": [n, 10, 11]}),
        "images shape rank": with_header(good, images={**h["images"], "shape": [n, 100]}),
        "images zero box": with_header(good, images={**h["images"], "shape": [n, 0, 10]}),
        "images missing crc": with_header(good, images={k: v for k, v in h["images"].items() if k != "crc32"}),
        "images wrong crc": with_header(good, images={**h["images"], "crc32": (h["images"]["crc32"] + 1) % 2**32}),
        "ctf wrong crc": with_header(good, ctf={**h["ctf"], "crc32": (h["ctf"]["crc32"] + 1) % 2**32}),
        "ctf dtype": with_header(good, ctf={**h["ctf"], "dtype": "float32"}),
        "ctf field order": with_header(good, ctf={**h["ctf"], "fields": list(reversed(CTF_FIELDS))}),
        "ctf shape": with_header(good, ctf={**h["ctf"], "shape": [n * 9, 1]}),
        "NaN image": [with_header(good, images={**h["images"], "crc32": zlib.crc32(nan_bytes)})[0], nan_bytes, good[2]],
        "Inf CTF": [with_header(good, ctf={**h["ctf"], "crc32": zlib.crc32(inf_bytes)})[0], good[1], inf_bytes],
        "short stack_paths": with_header(good, stack_paths=h["stack_paths"][:-1]),
        "empty stack path": with_header(good, stack_paths=["", *h["stack_paths"][1:]]),
        "long indices": with_header(good, indices=[*h["indices"], 1]),
        "zero-based index": with_header(good, indices=[0, *h["indices"][1:]]),
        "float index": with_header(good, indices=[1.0, *h["indices"][1:]]),
        "zero optics group": with_header(good, optics_groups=[0] * n),
        "missing optics groups": with_header(good, optics_groups=_DELETE),
        "duplicate particle": with_header(good, stack_paths=[h["stack_paths"][0]] * n, indices=[h["indices"][0]] * n),
    }


def test_every_bad_message_raises_decode_error(good: list[bytes]) -> None:
    decode_batch(good)  # the unmodified message is fine
    cases = _bad_cases(good)
    for name, frames in cases.items():
        with pytest.raises(DecodeError) as info:
            decode_batch(frames)
        assert isinstance(info.value, ValueError), name
        assert str(info.value), name


def test_decode_errors_say_what_is_wrong(good: list[bytes]) -> None:
    cases = _bad_cases(good)
    expectations = {
        "extra frame": "3 frames",
        "truncated images": "bytes",
        "bad version": "schema_version 2",
        "zero pixel size": "pixel_size_angstrom",
        "images wrong crc": "checksum",
        "NaN image": "NaN",
        "missing msg_id": "msg_id",
        "zero-based index": "1-based",
    }
    for name, fragment in expectations.items():
        with pytest.raises(DecodeError, match=fragment):
            decode_batch(cases[name])


def test_accepts_zmq_like_frames(good: list[bytes]) -> None:
    class FakeFrame:  # the part of zmq.Frame decode uses: .buffer
        def __init__(self, data: bytes) -> None:
            self.buffer = memoryview(data)

    _, batch = decode_batch([FakeFrame(f) for f in good])
    assert len(batch) == 6
    with pytest.raises(DecodeError, match="not a byte buffer"):
        decode_batch([good[0], 12345, good[2]])


def test_unknown_header_fields_are_ignored(good: list[bytes]) -> None:
    header, _ = decode_batch(with_header(good, future_field={"x": 1}))
    assert header["future_field"] == {"x": 1}


def test_encode_refuses_bad_msg_id() -> None:
    batch = random_batch(np.random.default_rng(6), 2, (4, 4))
    with pytest.raises(InputError):
        encode_batch(batch, msg_id="noseq", source="s", file_ready_time=0.0)


def test_msg_id_helpers() -> None:
    assert make_msg_id("ab:cd", 12) == "ab:cd:12"
    assert parse_msg_id("ab:cd:12") == ("ab:cd", 12)
    for bad in ("", ":1", "abc", "abc:", "abc:-1", "abc:1.5"):
        with pytest.raises(DecodeError):
            parse_msg_id(bad)


def test_control_round_trips() -> None:
    examples: dict[str, dict[str, Any]] = {
        "ack": {"msg_id": "a:1", "n_accepted": 5, "n_duplicates": 0},
        "nack": {"msg_id": "a:2", "reason": "overloaded", "retry_after_s": 0.5},
        "reject": {"msg_id": "a:3", "reason": "NaN"},
        "ping": {"seq": 4, "time": 1.5},
        "pong": {"seq": 4, "time": 1.5},
        "status": {"request_id": "r1"},
        "snapshot": {"request_id": "r2", "session": "s"},
        "pause": {"request_id": "r3", "session": "s"},
        "resume": {"request_id": "r4"},
        "start_session": {"request_id": "r5", "session": "s", "params": {"n_classes": 50}},
        "set_class_override": {"request_id": "r6", "session": "s", "class_number": 3, "override": "junk"},
        "reply": {"request_id": "r5", "ok": True, "result": {"sessions": ["s"]}},
    }
    assert set(examples) == set(CONTROL_KINDS)
    for kind, fields in examples.items():
        frames = encode_control(kind, **fields)
        assert len(frames) == 1
        assert message_kind(frames) == kind
        message = decode_control(frames)
        assert message == {"schema_version": SCHEMA_VERSION, "kind": kind, **fields}


def test_control_validation() -> None:
    def raw(**message: Any) -> list[bytes]:
        return [json.dumps({"schema_version": 1, **message}).encode()]

    bad = [
        raw(kind="ack"),  # no msg_id
        raw(kind="ack", msg_id=5),
        raw(kind="ack", msg_id="a:1", n_accepted=-1),
        raw(kind="ack", msg_id="a:1", n_accepted=True),
        raw(kind="nack", msg_id="a:1", retry_after_s=-2),
        raw(kind="reject", msg_id="a:1"),  # no reason
        raw(kind="start_session", request_id="r", session="s", params=[1]),
        raw(kind="set_class_override", request_id="r", session="s", override="junk"),  # no class_number
        raw(kind="set_class_override", request_id="r", session="s", class_number="3", override="junk"),
        raw(kind="set_class_override", request_id="r", session="s", class_number=True, override="junk"),
        raw(kind="reply", request_id="r", ok=False),  # no error
        raw(kind="reply", request_id="r", ok=1),
        raw(kind="launch_missiles"),
        raw(kind="batch"),
        [json.dumps({"schema_version": 9, "kind": "ping"}).encode()],
        [*encode_control("ping"), b""],
        [],
    ]
    for frames in bad:
        with pytest.raises(DecodeError):
            decode_control(frames)
    with pytest.raises(InputError):
        encode_control(KIND_ACK)
    with pytest.raises(InputError):
        encode_control(KIND_REPLY, request_id="r", ok=False)
    assert decode_control(encode_control(KIND_REPLY, request_id="r", ok=False, error="boom"))["error"] == "boom"
