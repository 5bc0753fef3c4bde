"""Property-based fuzzing (hypothesis) of every wire decoder and of the engine's message handler.

A decoder may only raise :class:`DecodeError` or return a message the engine can use (strings
encodable as UTF-8, numbers finite and 64-bit). The engine's handler, a real :class:`EngineServer`
in front of a real :class:`EngineService` on loopback ZeroMQ, answers every request-like message
and still ACKs a good batch afterwards. ``benchmarks/fuzz_wire.py`` runs the same idea at 200,000
seeded cases.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import zmq
from engine_helpers import batch_frames, make_batch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError, DecodeError
from otf2d.core.wire import (
    KIND_ACK,
    KIND_BATCH,
    KIND_PONG,
    KIND_REJECT,
    KIND_REPLY,
    MAX_JSON_DEPTH,
    decode_batch,
    decode_control,
    encode_control,
    message_kind,
    parse_json,
)
from otf2d.engine.serving.server import EngineServer, ServerConfig
from otf2d.engine.serving.service import EngineConfig, EngineService
from otf2d.engine.serving.session import merge_params

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Any character, lone surrogates included (``st.text()`` leaves them out by default).
_ANY_CHAR = st.characters(codec=None, categories=None)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(_ANY_CHAR, max_size=20)
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(_ANY_CHAR, max_size=8), inner, max_size=4),
    max_leaves=8,
)


def _dumps(document: Any) -> bytes:
    """JSON as a hostile client may write it: surrogates escaped, NaN and huge integers allowed."""
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode("ascii")


def _usable(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_usable(k) and _usable(v) for k, v in value.items())
    return all(_usable(v) for v in value)


GOOD_BATCH = [bytes(f) for f in batch_frames(make_batch("fuzz", 1, 2, box=16), "fuzz:1", ready=1.0)]
GOOD_CONTROLS = [
    encode_control("ping", seq=1, time=2.0)[0],
    encode_control("status", request_id="r", session="fuzz")[0],
    encode_control("snapshot", request_id="r", session="fuzz")[0],
    encode_control("pause", request_id="r", session="fuzz")[0],
    encode_control("resume", request_id="r")[0],
    encode_control("start_session", request_id="r", session="fuzz", params={"n_classes": 4})[0],
    encode_control("set_class_override", request_id="r", session="fuzz", class_number=1, override="junk")[0],
    encode_control("reply", request_id="r", ok=False, error="x")[0],
    encode_control("nack", msg_id="a:1", retry_after_s=1.0)[0],
]


@st.composite
def mutated_messages(draw: st.DrawFn) -> list[bytes]:
    """A valid message with one field (or one nested field) replaced by any JSON value."""
    frames = list(GOOD_BATCH) if draw(st.booleans()) else [draw(st.sampled_from(GOOD_CONTROLS))]
    header = json.loads(frames[0])
    key = draw(st.sampled_from(sorted(header)))
    value = draw(JSON_VALUES)
    if isinstance(header[key], list) and header[key] and draw(st.booleans()):
        header[key][draw(st.integers(0, len(header[key]) - 1))] = value
    elif isinstance(header[key], dict) and header[key] and draw(st.booleans()):
        header[key][draw(st.sampled_from(sorted(header[key])))] = value
    else:
        header[key] = value
    return [_dumps(header), *frames[1:]]


def _decode(frames: list[bytes]) -> Any:
    if message_kind(frames) == KIND_BATCH:
        header, batch = decode_batch(frames)
        return [header, batch.stack_paths.tolist()]
    return decode_control(frames)


@FUZZ
@given(mutated_messages())
def test_decoders_refuse_with_decode_error_or_return_usable_values(frames: list[bytes]) -> None:
    try:
        decoded = _decode(frames)
    except DecodeError:
        return
    assert _usable(decoded)
    if isinstance(decoded, dict) and decoded["kind"] == "start_session":
        with contextlib.suppress(ConfigError):
            merge_params(Class2DParams(), dict(decoded["params"]), "params")


@FUZZ
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=4))
def test_any_bytes_are_a_decode_error_or_a_message(frames: list[bytes]) -> None:
    for decoder in (message_kind, decode_batch, decode_control):
        with contextlib.suppress(DecodeError):
            decoder(frames)


@FUZZ
@given(st.integers(1, 100_000))
@example(MAX_JSON_DEPTH - 1).via("the deepest accepted: the outer object + 31 arrays = 32 levels")
@example(MAX_JSON_DEPTH).via("one level too deep")
def test_deep_json_is_refused_before_parsing(depth: int) -> None:
    text = '{"schema_version":1,"kind":"ping","x":' + "[" * depth + "]" * depth + "}"
    if depth + 1 <= MAX_JSON_DEPTH:  # the outer object is a level too; MAX_JSON_DEPTH levels are allowed
        assert parse_json(text.encode())["kind"] == "ping"
    else:
        with pytest.raises(DecodeError, match="nested deeper"):
            parse_json(text.encode())


@FUZZ
@given(JSON_VALUES)
def test_start_session_parameters_raise_config_error_or_validate(value: Any) -> None:
    for key in ("max_resolution_angstrom", "n_classes", "recenter_threshold", "precision", "seed"):
        try:
            params = merge_params(Class2DParams(), {key: value}, "params")
        except ConfigError:
            continue
        assert _usable(params.__dict__[key])


# ---------------------------------------------------------------------------------- the engine's handler


class Loop:
    """A real engine server and service in this process, and a DEALER talking to it on loopback."""

    def __init__(self, data: Path) -> None:
        from otf2d.engine.serving.em_adapter import em_classifier_factory
        from otf2d.monitoring.snapshots import write_snapshot

        self.service = EngineService(
            EngineConfig(data_dir=data), em_classifier_factory, torch.device("cpu"), write_snapshot
        )
        self.service.open()
        self.context = zmq.Context()
        self.server = EngineServer(self.service, ServerConfig(listen="tcp://127.0.0.1:*"), context=self.context)
        endpoint = self.server.bind()
        self.dealer = self.context.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(endpoint)

    def exchange(self, frames: list[bytes]) -> dict[str, Any] | None:
        """Send one message, let the server take one turn, return its answer (None: none within 1 s)."""
        self.dealer.send_multipart(frames)
        assert self.server.socket.poll(5000, zmq.POLLIN), "the message did not arrive"
        assert self.server.turn() == 1
        if not self.dealer.poll(1000, zmq.POLLIN):
            return None
        return decode_control(self.dealer.recv_multipart())

    def close(self) -> None:
        self.dealer.close(0)
        self.server.close()
        self.service.close(drain_timeout_s=1)
        self.context.term()


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    running = Loop(tmp_path_factory.mktemp("handler") / "data")
    try:
        yield running
    finally:
        running.close()


@FUZZ
@given(frames=mutated_messages())
def test_the_engine_answers_every_mutated_message(loop: Loop, frames: list[bytes]) -> None:
    try:
        kind = json.loads(frames[0]).get("kind")
    except (ValueError, AttributeError):
        kind = None
    answer = loop.exchange(frames)
    if kind in (KIND_ACK, "nack", KIND_REJECT, KIND_PONG, KIND_REPLY):
        return  # answers are ignored when they decode, rejected when they do not
    assert answer is not None, f"no answer to {frames[0][:200]!r}"
    assert answer["kind"] in (KIND_ACK, KIND_REJECT, "nack", KIND_REPLY, KIND_PONG)


def test_after_the_fuzzing_a_good_batch_is_acked(loop: Loop) -> None:
    frames = batch_frames(make_batch("after-fuzz", 2, 3, box=16), "after:1", ready=1.0)
    answer = loop.exchange([bytes(f) for f in frames])
    assert answer is not None and answer["kind"] == KIND_ACK and answer["n_accepted"] == 3
    assert loop.server.problems.total > 0  # the fuzzing did reach the refusals
