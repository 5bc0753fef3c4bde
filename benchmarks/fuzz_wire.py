"""Seeded mutation fuzzing of the wire decoders, and of what the engine does with a decoded message.

Each case takes a valid message (a small batch, or one of every control kind), mutates it once
(a header field replaced by a hostile JSON token such as a 400-digit integer, ``1e400``, a lone
surrogate, 100,000 nested brackets, a 5,000-digit ``msg_id``; a list element replaced; bytes
flipped, cut or inserted; frames dropped or repeated) and feeds it to
``otf2d.core.wire.message_kind`` + ``decode_batch`` / ``decode_control``. A case passes when the
decoder raises :class:`otf2d.core.errors.DecodeError` or returns a message the engine can use: every
string encodes as UTF-8, every number is finite and fits 64 bits, and the parameters of a
``start_session`` either validate or raise :class:`otf2d.core.errors.ConfigError`. Anything else is a
failure, counted by cause (exception type and the function that raised it, or the broken
invariant).

Usage::

    .venv/bin/python benchmarks/fuzz_wire.py                  # 200,000 cases, seed 0
    .venv/bin/python benchmarks/fuzz_wire.py --cases 20000 --seed 3

Prints one line per cause and a total line ``failures: N of M cases``; exits 0 either way
(``--strict``: exit 1 when a case failed).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from otf2d.core.config import Class2DParams
from otf2d.core.errors import ConfigError, DecodeError
from otf2d.core.particles import CtfParams, ParticleBatch
from otf2d.core.wire import KIND_BATCH, decode_batch, decode_control, encode_batch, encode_control, message_kind

_PLACEHOLDER = "\x00FUZZ\x00"
#: Raw JSON tokens a hostile client may send in place of any value.
HOSTILE_TOKENS: tuple[str, ...] = (
    "9" * 400,
    "-" + "9" * 400,
    "1" + "0" * 4400,
    "1e400",
    "-1e400",
    "1" + "0" * 400 + ".5",
    "NaN",
    "Infinity",
    "-Infinity",
    str(2**64),
    str(2**63),
    str(-(2**63) - 1),
    str(2**31),
    "0",
    "-1",
    "1e-400",
    "0.0",
    "true",
    "null",
    '""',
    '"\\ud800"',
    '"a\\udfffb"',
    '"a:' + "1" * 5000 + '"',
    '"x:1"',
    '"' + "x" * 70000 + '"',
    "[" * 100000 + "]" * 100000,
    "{" + '"a":{' * 5000 + "}" * 5001,
    "[]",
    "{}",
    '[1, 2, "\\ud800"]',
    '{"\\ud800": 1}',
    "[" + ",".join(["1"] * 1000) + "]",
)


def base_batch(seed: int) -> ParticleBatch:
    """A valid 3-particle batch of 8x8 images."""
    rng = np.random.default_rng(seed)
    n = 3
    ctf = CtfParams(
        defocus_u_angstrom=np.full(n, 15000.0),
        defocus_v_angstrom=np.full(n, 14000.0),
        defocus_angle_degrees=np.zeros(n),
        voltage_kv=np.full(n, 300.0),
        spherical_aberration_mm=np.full(n, 2.7),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_degrees=np.zeros(n),
        bfactor_angstrom2=np.zeros(n),
        scale=np.ones(n),
    )
    return ParticleBatch(
        images=rng.standard_normal((n, 8, 8)).astype(np.float32),
        pixel_size_angstrom=2.0,
        ctf=ctf,
        session="fuzz",
        stack_paths=np.array(["Extract/a.mrcs"] * n),
        indices=np.arange(1, n + 1, dtype=np.int64),
        optics_groups=np.ones(n, dtype=np.int64),
    )


def base_messages() -> list[list[bytes]]:
    """One valid message of every kind the engine may receive."""
    batch = [bytes(f) for f in encode_batch(base_batch(0), msg_id="s:1", source="a.star", file_ready_time=1.0)]
    controls = [
        encode_control("ping", seq=1, time=1.5),
        encode_control("pong", seq=1, time=1.5),
        encode_control("status", request_id="r", session="fuzz"),
        encode_control("snapshot", request_id="r", session="fuzz"),
        encode_control("pause", request_id="r", session="fuzz"),
        encode_control("resume", request_id="r"),
        encode_control("start_session", request_id="r", session="fuzz", params={"n_classes": 4, "seed": 1}),
        encode_control("set_class_override", request_id="r", session="fuzz", class_number=2, override="junk"),
        encode_control("ack", msg_id="s:1", n_accepted=1, n_duplicates=0),
        encode_control("nack", msg_id="s:1", reason="x", retry_after_s=1.0),
        encode_control("reject", msg_id="s:1", reason="x"),
        encode_control("reply", request_id="r", ok=True, result={}),
    ]
    return [batch, *controls]


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (dict keys and list indices)."""
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:4]):
            out += _paths(value, (*prefix, i))
    return out


def _with_token(header: dict[str, Any], path: tuple[Any, ...], token: str) -> bytes:
    doc = json.loads(json.dumps(header))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = _PLACEHOLDER
    text = json.dumps(doc, ensure_ascii=False).replace(json.dumps(_PLACEHOLDER), token, 1)
    return text.encode("utf-8", "surrogatepass")


def mutate(frames: list[bytes], rng: random.Random) -> list[bytes]:
    """One random mutation of a valid message."""
    header = json.loads(frames[0])
    choice = rng.random()
    if choice < 0.6:
        path = rng.choice(_paths(header))
        return [_with_token(header, path, rng.choice(HOSTILE_TOKENS)), *frames[1:]]
    if choice < 0.7:
        key = rng.choice(["x", "params", "result", "session", "msg_id"])
        header[key] = {"nested": [1, 2.5, "s"]} if key in ("params", "result") else rng.choice([1, 2.5, None, [1]])
        return [json.dumps(header).encode(), *frames[1:]]
    if choice < 0.9:
        data = bytearray(frames[0])
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(data)) if data else 0
            if op < 0.4 and data:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos:]
            else:
                data[pos:pos] = rng.choice([b"\xff", b"\xed\xa0\x80", b"[", b"{", b'"', b"9" * 50, b"\\ud800"])
        return [bytes(data), *frames[1:]]
    op = rng.random()
    if op < 0.3:
        return frames[:-1]
    if op < 0.6:
        return [*frames, frames[-1]]
    data = bytearray(frames[-1])
    if data:
        data[rng.randrange(len(data))] ^= 0xFF
    return [*frames[:-1], bytes(data)]


def _invariant(value: Any, where: str = "message") -> str:
    """What makes a decoded value unusable by the engine ("" when it is usable)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"invariant: a string with a lone surrogate passed ({where})"
        return ""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int):
        return "" if -(2**63) <= value < 2**63 else f"invariant: an integer beyond 64 bits passed ({where})"
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"invariant: a non-finite number passed ({where})"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _invariant(key, where) or _invariant(item, f"{where}.{key}")
            if problem:
                return problem
    if isinstance(value, list | tuple):
        for item in value:
            problem = _invariant(item, where)
            if problem:
                return problem
    return ""


def _use(frames: list[bytes]) -> str:
    """Decode ``frames`` as the engine does and check the result; returns "" or an invariant broken."""
    kind = message_kind(frames)
    if kind == KIND_BATCH:
        header, batch = decode_batch(frames)
        return _invariant(header, "batch header") or _invariant(batch.stack_paths.tolist(), "stack_paths")
    message = decode_control(frames)
    problem = _invariant(message, kind)
    if problem or kind != "start_session":
        return problem
    from otf2d.engine.serving.session import merge_params

    with contextlib.suppress(ConfigError):
        merge_params(Class2DParams(), dict(message["params"]), "params")
    return ""


def _cause(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/site-packages/" not in f.filename and "python3." not in f.filename]
    where = ours[-1] if ours else frames[-1]
    return f"{type(exc).__name__} in {Path(where.filename).name}:{where.name}"


def run(cases: int, seed: int, progress: Callable[[int], None] | None = None) -> Counter[str]:
    """Failures by cause over ``cases`` seeded mutations."""
    rng = random.Random(seed)
    bases = base_messages()
    failures: Counter[str] = Counter()
    for i in range(cases):
        frames = mutate(rng.choice(bases), rng)
        try:
            problem = _use(frames)
        except DecodeError:
            continue
        except (Exception, RecursionError) as exc:
            failures[_cause(exc)] += 1
            continue
        if problem:
            failures[problem.split(" (")[0]] += 1
        if progress is not None and i % 50000 == 0:
            progress(i)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when any case failed")
    args = parser.parse_args()
    start = time.perf_counter()
    failures = run(args.cases, args.seed)
    elapsed = time.perf_counter() - start
    for cause, count in failures.most_common():
        print(f"{count:8d}  {cause}")
    total = sum(failures.values())
    print(f"failures: {total} of {args.cases} cases ({len(failures)} causes), seed {args.seed}, {elapsed:.1f} s")
    return 1 if args.strict and total else 0


if __name__ == "__main__":
    raise SystemExit(main())
