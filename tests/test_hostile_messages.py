"""Single messages that used to stop the engine (issue 13), each sent to a real engine process on loopback.

Every one must be answered (a REJECT, or a reply with ``ok = false``, naming the reason), and the
engine must still ping and ACK a good batch afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from engine_helpers import TEST_PARAMS, TestClient, batch_frames, engine_process, make_batch, send_batches, wait_ready
from ports import free_port

from otf2d.control.client import EngineClient
from otf2d.core.wire import KIND_ACK, KIND_REJECT, KIND_REPLY

SESSION = "hostile"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, EngineClient, Path]]:
    data = tmp_path_factory.mktemp("hostile") / "data"
    port = free_port()
    with engine_process(data, port, "--snapshot-seconds", "0") as proc:
        endpoint = f"tcp://127.0.0.1:{port}"
        client, control = TestClient(endpoint, identity="hostile-scope"), EngineClient(endpoint, timeout_s=10.0)
        try:
            wait_ready(client, proc)
            control.start_session(SESSION, TEST_PARAMS)
            yield client, control, data
        finally:
            client.close()
            control.close()
        assert proc.poll() is None, "the engine died during the tests"


def _batch_header() -> tuple[dict[str, Any], list[bytes]]:
    frames = [bytes(f) for f in batch_frames(make_batch(SESSION, 90, 3), "hostile:1")]
    return json.loads(frames[0]), frames


def _batch_with(raw_field: str, raw_value: str) -> list[bytes]:
    """The good batch with one header field replaced by raw JSON text (which json.dumps could not write)."""
    header, frames = _batch_header()
    header[raw_field] = "@@RAW@@"
    text = json.dumps(header).replace('"@@RAW@@"', raw_value)
    return [text.encode("utf-8"), frames[1], frames[2]]


def _drain(client: TestClient) -> None:
    """Forget answers still queued (pongs of the readiness pings, ACKs of earlier tests)."""
    while client.receive(0.2) is not None:
        pass
    client.answers.clear()


def _control(text: str) -> list[bytes]:
    return [text.encode("utf-8")]


def _killers() -> list[tuple[str, list[bytes]]]:
    """The 11 messages of issue 13, each of which stopped the engine."""
    big = "9" * 400
    surrogate = '"\\ud800"'
    return [
        ("ping time of 400 digits", _control(f'{{"schema_version":1,"kind":"ping","seq":1,"time":{big}}}')),
        (
            "JSON nested 100,000 deep",
            _control('{"schema_version":1,"kind":"ping","x":' + "[" * 100000 + "]" * 100000 + "}"),
        ),
        ("msg_id of 5,000 digits", _batch_with("msg_id", '"a:' + "1" * 5000 + '"')),
        ("file_ready_time of 400 digits", _batch_with("file_ready_time", big)),
        ("index 2**64", _batch_with("indices", f"[1, 2, {2**64}]")),
        (
            "start_session float of 400 digits",
            _control(
                '{"schema_version":1,"kind":"start_session","request_id":"r400","session":"s400",'
                f'"params":{{"max_resolution_angstrom":{big}}}}}'
            ),
        ),
        ("lone surrogate in session", _batch_with("session", surrogate)),
        ("lone surrogate in msg_id", _batch_with("msg_id", '"a\\ud800:1"')),
        ("lone surrogate in stack_paths", _batch_with("stack_paths", f'["a.mrcs", {surrogate}, "b.mrcs"]')),
        ("lone surrogate in source", _batch_with("source", surrogate)),
        (
            "lone surrogate in a start_session name",
            _control('{"schema_version":1,"kind":"start_session","request_id":"rsur","session":"\\ud800","params":{}}'),
        ),
    ]


@pytest.mark.parametrize(("label", "frames"), _killers(), ids=[label for label, _ in _killers()])
def test_a_killer_message_is_refused_with_its_reason_and_the_engine_serves_on(
    engine: tuple[TestClient, EngineClient, Path], label: str, frames: list[bytes]
) -> None:
    client, _, _ = engine
    _drain(client)
    client.send(frames)
    answer = client.receive(10.0)
    assert answer is not None, f"no answer to {label}"
    if answer["kind"] == KIND_REPLY:
        assert answer["ok"] is False and answer["error"], label
    else:
        assert answer["kind"] == KIND_REJECT and answer["reason"], label
    assert client.ping(5.0), f"the engine stopped answering after {label}"
    seq = abs(hash(label)) % 10**9
    good = make_batch(SESSION, 100 + seq % 1000, 2, first_index=1 + seq)
    ok = send_batches(client, [(f"good:{seq}", good)])[f"good:{seq}"]
    assert ok["kind"] == KIND_ACK and ok["n_accepted"] == 2, label


def test_the_reason_names_the_problem(engine: tuple[TestClient, EngineClient, Path]) -> None:
    client, _, _ = engine
    expected = {
        "JSON nested 100,000 deep": "nested deeper",
        "index 2**64": "digits",
        "lone surrogate in source": "surrogate",
        "msg_id of 5,000 digits": "msg_id",
        "start_session float of 400 digits": "digits",
    }
    killers = dict(_killers())
    for label, words in expected.items():
        _drain(client)
        client.send(killers[label])
        answer = client.receive(10.0)
        assert answer is not None, label
        text = answer.get("reason") or answer.get("error") or ""
        assert words in text, (label, text)


def test_the_engine_logs_a_flood_of_bad_messages_once(engine: tuple[TestClient, EngineClient, Path]) -> None:
    client, _, data = engine
    log_path = data.parent / "engine.log"
    before = log_path.read_text(errors="replace").count("rejected batch")
    frames = _batch_with("source", '"\\ud800"')
    _drain(client)
    for _ in range(200):
        client.send(frames)
    answers = 0
    while answers < 200 and client.receive(10.0) is not None:
        answers += 1
    assert answers == 200  # every one answered
    assert client.ping(5.0)
    after = log_path.read_text(errors="replace")
    assert after.count("rejected batch") - before <= 1  # not 200 warnings
    assert "Traceback" not in after
