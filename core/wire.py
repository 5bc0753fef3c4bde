"""The wire protocol between the streamer (ZeroMQ DEALER) and the engine (ZeroMQ ROUTER), version 1.

Pure encode/decode: NumPy and JSON only, no sockets, never pickle. Every message is a list of
ZeroMQ frames (a multipart message). The first frame is always a UTF-8 JSON object (the
*header*) with at least ``schema_version`` (int, ``1``) and ``kind`` (str). Unknown header keys
are ignored by the decoders (forward-compatible additions within a version); a change that old
decoders could misread bumps ``schema_version``, and a decoder rejects any version it does not know.

Transport
=========
- The streamer's DEALER sets ``IDENTITY`` to the session / microscope name (``--identity``,
  default the session name) and connects to the engine's ROUTER. A DEALER sends its frames with
  **no empty delimiter frame**: on the ROUTER, ``recv_multipart()`` returns
  ``[identity, *frames]``; strip the identity and pass ``frames`` to :func:`decode_batch` /
  :func:`decode_control`. The engine replies with ``send_multipart([identity, *encode_control(...)])``.
- The engine should set ``ROUTER_MANDATORY=1`` and ``ROUTER_HANDOVER=1``: a streamer killed
  with SIGKILL and restarted reconnects with the same identity while the engine may still hold
  the dead connection; without handover the new connection is refused.
- Use :func:`message_kind` to route an incoming message (``"batch"`` → :func:`decode_batch`,
  anything else → :func:`decode_control`).

Data message (streamer → engine): kind ``"batch"``, 3 frames, or 4 with the metadata frame
==========================================================================================
``[header_json, images, ctf]`` or ``[header_json, images, ctf, metadata]``: ``metadata`` is every
column of the particles' input rows, encoded by :func:`encode_metadata_frame` (its own version and
validation, described with it). An engine older than the metadata frame rejects a 4-frame batch.

``images``
    The particle images, C order, **little-endian**, ``dtype`` ``"float32"`` or ``"float16"``,
    shape ``(n, h, w)``; ``n ≥ 1``, ``h, w ≥ 1``; every value finite. Real space, stack contrast.
``ctf``
    ``(n, 9)`` little-endian float64, C order, one row per particle, columns in the order of
    :data:`CTF_FIELDS` (the fields of :class:`otf2d.core.particles.CtfParams`, RELION units)::

        0 defocus_u_angstrom   1 defocus_v_angstrom      2 defocus_angle_degrees
        3 voltage_kv           4 spherical_aberration_mm 5 amplitude_contrast
        6 phase_shift_degrees  7 bfactor_angstrom2       8 scale

Header fields (all required unless marked optional):

=======================  =======================================================================
``schema_version``       ``1``
``kind``                 ``"batch"``
``session``              non-empty str (≤ 256 chars): the collection session
``msg_id``               ``"<scope>:<seq>"``: ``scope`` non-empty, ``seq`` a decimal integer ≥ 0;
                         unique per session and **stable across re-sends and streamer restarts**
                         (the streamer derives it from its ledger: ``<ledger id>:<batch number>``)
``source``               str: the particle file the batch was read from, relative to the watched
                         directory (provenance; not part of the particle identity)
``file_ready_time``      float, unix seconds (≥ 0): when the source file became ready (its mtime
                         after the atomic rename). The engine measures file → classified latency
                         against it; clocks of the two hosts must be synchronised (NTP).
``sent_time``            optional float, unix seconds: when this attempt was sent
``attempt``              optional int ≥ 1: 1 for the first send, +1 for each re-send
``n_particles``          int ≥ 1, equal to ``images.shape[0]``
``pixel_size_angstrom``  float > 0, finite: Å per pixel of ``images``
``images``               object ``{"dtype": "float32"|"float16", "shape": [n, h, w], "crc32": int}``
``ctf``                  object ``{"dtype": "float64", "shape": [n, 9], "fields": CTF_FIELDS,
                         "crc32": int}``
``stack_paths``          list of n non-empty str: each particle's stack, relative to the project
``indices``              list of n int ≥ 1: each particle's 1-based index in its stack
``optics_groups``        list of n int ≥ 1: each particle's 1-based optics group
=======================  =======================================================================

``crc32`` is ``zlib.crc32`` of the frame's bytes (unsigned, 0 … 2³²−1). Within one message the
particle keys ``(stack_path, index)`` are distinct. A particle's identity is
``otf2d.core.particles.ParticleKey(session, stack_path, index)``.

Replies (engine → streamer) and control messages: exactly 1 frame
==================================================================
One JSON object: ``{"schema_version": 1, "kind": <kind>, ...fields}``. Built with
:func:`encode_control`, read with :func:`decode_control`, which checks the required fields and
the types of every documented field. Fields marked ``?`` are optional.

Delivery replies, to a ``batch``:

``ack``     ``msg_id: str``, ``n_accepted?: int ≥ 0`` (new particles journaled),
            ``n_duplicates?: int ≥ 0`` (particles already known, dropped).
            Sent only after the batch is durably appended to the session journal. A re-sent
            ``msg_id`` that is already journaled must be ACKed again (the first ACK may have
            been lost); a new ``msg_id`` whose particles are all known is ACKed with
            ``n_accepted = 0``. The streamer marks the batch acknowledged and never sends it again.
``nack``    ``msg_id: str``, ``reason?: str``, ``retry_after_s?: float ≥ 0``.
            "Not now" (overload, session paused, journal busy): the NACK/RETRY of the design.
            Nothing was stored; the streamer re-sends the same ``msg_id`` after
            ``retry_after_s`` (or its own back-off).
``reject``  ``msg_id: str``, ``reason: str``. Poison: the message can never be accepted
            (failed :func:`decode_batch`, inconsistent with the session, ...). The streamer
            records the batch as a dead letter with the reason and never re-sends it. A message
            whose header cannot even be parsed has no trustworthy ``msg_id``: reject it with
            ``msg_id = ""`` (the streamer then only logs it).

Liveness (either direction; any incoming frame also counts as liveness):

``ping``    ``seq?: int``, ``time?: float`` (sender's unix seconds). Answer with ``pong``.
``pong``    ``seq?: int``, ``time?: float``: echo the ``ping``'s values.

Control requests (any client → engine ROUTER, from a DEALER; ``otf2d status`` etc.). Every
request carries ``request_id: str`` (chosen by the client) and is answered by one ``reply``:

``status``         ``session?: str`` (absent: every session)
``snapshot``       ``session: str``: write a snapshot now
``pause``          ``session?: str`` (absent: every session): stop folding batches in (still
                   journal and ACK, or NACK: engine's choice, documented there)
``resume``         ``session?: str``
``start_session``  ``session: str``, ``params: object`` (classification parameters, e.g.
                   ``{"n_classes": 50, ...}``; validated by the engine; the session options
                   ``project_dir``, and ``box_size`` + ``pixel_size_angstrom`` which fix the
                   session's geometry before its first batch)
``set_class_override``  ``session: str``, ``class_number: int`` (the class as numbered in the
                   newest snapshot and gallery, 1-based), ``override: str`` (``"good"``,
                   ``"junk"``, or ``"auto"`` to remove a user's override); added in 0.1 without
                   a version bump: an older engine answers it with ``ok = false``
``reply``          ``request_id: str``, ``ok: bool``, ``result?: object``, ``error?: str``
                   (required when ``ok`` is false)

Limits (every decoder, :func:`parse_json`): JSON nested at most :data:`MAX_JSON_DEPTH` deep
(checked before parsing), integers of at most 19 digits within 64 bits, finite floats only,
strings valid Unicode (no lone surrogate) of at most :data:`MAX_STRING_CHARS` characters (session
names :data:`MAX_SESSION_CHARS`, ids :data:`MAX_ID_CHARS`, paths :data:`MAX_PATH_CHARS`), indices
and optics groups 1 … :data:`MAX_INDEX`. Anything else raises :class:`DecodeError` naming it.

Example::

    frames = encode_batch(batch, msg_id="3f9c2a1b:17", source="Extract/job007/Movies/m_extract.star",
                          file_ready_time=1760000000.5)
    dealer.send_multipart(frames, copy=False)
    ...
    identity, *frames = router.recv_multipart(copy=False)
    if message_kind(frames) == KIND_BATCH:
        header, batch = decode_batch(frames)          # raises DecodeError (a ValueError)
        router.send_multipart([identity, *encode_control(KIND_ACK, msg_id=header["msg_id"])])
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any

import numpy as np

from otf2d.core.errors import DecodeError, InputError
from otf2d.core.extra_columns import MAX_COLUMNS, MAX_ROW_VALUES, ExtraColumns, check_column_name
from otf2d.core.particles import CtfParams, ParticleBatch

SCHEMA_VERSION = 1

KIND_BATCH = "batch"
KIND_ACK = "ack"
KIND_NACK = "nack"
KIND_REJECT = "reject"
KIND_PING = "ping"
KIND_PONG = "pong"
KIND_STATUS = "status"
KIND_SNAPSHOT = "snapshot"
KIND_PAUSE = "pause"
KIND_RESUME = "resume"
KIND_START_SESSION = "start_session"
KIND_SET_CLASS_OVERRIDE = "set_class_override"
KIND_CLOSE_SESSION = "close_session"
KIND_REPLY = "reply"

#: Column order of the ``(n, 9)`` float64 CTF frame: the fields of :class:`CtfParams`.
CTF_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(CtfParams))

#: Image dtypes on the wire (always little-endian).
IMAGE_DTYPES: dict[str, np.dtype] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}

#: Largest header accepted, bytes (a batch of 10k particles with long paths stays well below).
MAX_HEADER_BYTES = 8 * 1024 * 1024
#: Longest session name accepted.
MAX_SESSION_CHARS = 256
#: Longest ``msg_id`` / ``request_id`` accepted.
MAX_ID_CHARS = 1024
#: Longest path (``source``, each of ``stack_paths``) accepted.
MAX_PATH_CHARS = 4096
#: Longest string anywhere else in a message.
MAX_STRING_CHARS = 65536
#: Deepest nesting of JSON arrays / objects accepted (checked before parsing).
MAX_JSON_DEPTH = 32
#: Most decimal digits of an integer in a header (any longer and it cannot fit 64 bits).
MAX_INT_DIGITS = 19
#: Largest 1-based particle index or optics group (they are 32-bit in RELION and cryoSPARC).
MAX_INDEX = 2**31 - 1
#: Largest image side, pixels, and most particles in one message.
MAX_IMAGE_SIDE = 8192
MAX_PARTICLES = 1_000_000
#: Latest unix time accepted in a header (year 5138): anything later is garbage.
MAX_UNIX_SECONDS = 1e11

_CTF_DTYPE = np.dtype("<f8")
_MSG_ID = re.compile(r"^(?P<scope>.+):(?P<seq>[0-9]{1,18})$", re.DOTALL)
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INT64 = (-(2**63), 2**63 - 1)

# Control kinds: field -> (accepted types, required). bool is excluded from int/float checks below.
_FieldSpec = dict[str, tuple[tuple[type, ...], bool]]
_CONTROL_SPECS: dict[str, _FieldSpec] = {
    KIND_ACK: {"msg_id": ((str,), True), "n_accepted": ((int,), False), "n_duplicates": ((int,), False)},
    KIND_NACK: {"msg_id": ((str,), True), "reason": ((str,), False), "retry_after_s": ((int, float), False)},
    KIND_REJECT: {"msg_id": ((str,), True), "reason": ((str,), True)},
    KIND_PING: {"seq": ((int,), False), "time": ((int, float), False)},
    KIND_PONG: {"seq": ((int,), False), "time": ((int, float), False)},
    KIND_STATUS: {"request_id": ((str,), True), "session": ((str,), False)},
    KIND_SNAPSHOT: {"request_id": ((str,), True), "session": ((str,), True)},
    KIND_PAUSE: {"request_id": ((str,), True), "session": ((str,), False)},
    KIND_RESUME: {"request_id": ((str,), True), "session": ((str,), False)},
    KIND_START_SESSION: {"request_id": ((str,), True), "session": ((str,), True), "params": ((dict,), True)},
    KIND_SET_CLASS_OVERRIDE: {
        "request_id": ((str,), True),
        "session": ((str,), True),
        "class_number": ((int,), True),
        "override": ((str,), True),
    },
    KIND_CLOSE_SESSION: {"request_id": ((str,), True), "session": ((str,), True)},
    KIND_REPLY: {
        "request_id": ((str,), True),
        "ok": ((bool,), True),
        "result": ((dict,), False),
        "error": ((str,), False),
    },
}
_NON_NEGATIVE = {"n_accepted", "n_duplicates", "retry_after_s"}

#: Every kind :func:`decode_control` accepts.
CONTROL_KINDS: frozenset[str] = frozenset(_CONTROL_SPECS)
#: Replies to a ``batch`` (they carry its ``msg_id``).
DELIVERY_KINDS: frozenset[str] = frozenset({KIND_ACK, KIND_NACK, KIND_REJECT})


def make_msg_id(scope: str, seq: int) -> str:
    """The message id ``"<scope>:<seq>"``.

    Parameters
    ----------
    scope
        Non-empty name of the sender's numbering (e.g. the streamer ledger's id).
    seq
        Non-negative sequence number within ``scope``.
    """
    if not scope or int(seq) < 0:
        raise InputError(None, f"msg_id needs a non-empty scope and a seq >= 0, got {scope!r}, {seq!r}")
    return f"{scope}:{int(seq)}"


def parse_msg_id(msg_id: str) -> tuple[str, int]:
    """Split ``"<scope>:<seq>"`` into ``(scope, seq)``; raise :class:`DecodeError` if malformed."""
    match = _MSG_ID.match(msg_id) if isinstance(msg_id, str) and len(msg_id) <= MAX_ID_CHARS else None
    if match is None:
        raise DecodeError(
            None,
            f"msg_id must look like '<scope>:<seq>' (seq at most 18 digits, {MAX_ID_CHARS} characters in all), "
            f"got {msg_id!r:.80}",
        )
    return match.group("scope"), int(match.group("seq"))


def _crc32(buffer: Any) -> int:
    return zlib.crc32(buffer) & 0xFFFFFFFF


def _json_frame(obj: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise InputError(None, f"cannot encode message as JSON: {exc}") from exc


def encode_batch(
    batch: ParticleBatch,
    *,
    msg_id: str,
    source: str,
    file_ready_time: float,
    sent_time: float | None = None,
    attempt: int | None = None,
) -> list[bytes | memoryview]:
    """Frames ``[header_json, images, ctf]`` of a data message (see the module docstring).

    Parameters
    ----------
    batch
        The particles; ``images`` float32 or float16 of shape ``(n, h, w)``, ``n ≥ 1``.
    msg_id
        ``"<scope>:<seq>"``, stable across re-sends (:func:`make_msg_id`).
    source
        The file the batch came from, relative to the watched directory.
    file_ready_time
        Unix seconds when the source file became ready.
    sent_time, attempt
        Optional: unix seconds of this send, and 1-based attempt number.

    Returns
    -------
    list of bytes or memoryview
        Pass to ``socket.send_multipart(frames, copy=False)``. The images frame is a view of a
        little-endian C-contiguous copy (or of ``batch.images`` itself when already so).

    Raises
    ------
    InputError
        An empty batch, a malformed ``msg_id``, or a value that would fail :func:`decode_batch`.
    """
    n = len(batch)
    if n == 0:
        raise InputError(None, "cannot encode an empty batch")
    try:
        parse_msg_id(msg_id)
    except DecodeError as exc:
        raise InputError(None, exc.what) from exc
    dtype_name = "float16" if batch.images.dtype == np.float16 else "float32"
    images = np.ascontiguousarray(batch.images, dtype=IMAGE_DTYPES[dtype_name])
    ctf = np.ascontiguousarray(np.stack([getattr(batch.ctf, name) for name in CTF_FIELDS], axis=1), dtype=_CTF_DTYPE)
    image_bytes = images.reshape(-1).view(np.uint8).data
    ctf_bytes = ctf.tobytes()
    header: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND_BATCH,
        "session": batch.session,
        "msg_id": msg_id,
        "source": str(source),
        "file_ready_time": float(file_ready_time),
        "n_particles": n,
        "pixel_size_angstrom": float(batch.pixel_size_angstrom),
        "images": {"dtype": dtype_name, "shape": list(images.shape), "crc32": _crc32(image_bytes)},
        "ctf": {
            "dtype": "float64",
            "shape": [n, len(CTF_FIELDS)],
            "fields": list(CTF_FIELDS),
            "crc32": _crc32(ctf_bytes),
        },
        "stack_paths": [str(p) for p in batch.stack_paths],
        "indices": [int(i) for i in batch.indices],
        "optics_groups": [int(g) for g in batch.optics_groups],
    }
    if sent_time is not None:
        header["sent_time"] = float(sent_time)
    if attempt is not None:
        header["attempt"] = int(attempt)
    if batch.extra is None:
        return [_json_frame(header), image_bytes, ctf_bytes]
    return [_json_frame(header), image_bytes, ctf_bytes, encode_metadata_frame(batch.extra)]


def _as_buffer(frame: Any, what: str) -> memoryview:
    """A byte view of a frame: bytes, bytearray, memoryview, numpy array or ``zmq.Frame``."""
    try:
        view = memoryview(frame)
    except TypeError:
        try:
            view = memoryview(frame.buffer)
        except (AttributeError, TypeError) as exc:
            raise DecodeError(None, f"{what} frame is not a byte buffer ({type(frame).__name__})") from exc
    if not view.contiguous:
        raise DecodeError(None, f"{what} frame is not a contiguous buffer")
    return view.cast("B") if view.ndim != 1 or view.format != "B" else view


def _reject_constant(token: str) -> float:
    raise ValueError(f"non-finite number {token} in JSON")


def _bounded_int(token: str) -> int:
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(token.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    value = int(token)
    if not _INT64[0] <= value <= _INT64[1]:
        raise ValueError(f"integer {value} does not fit 64 bits")
    return value


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"number {token:.40} is out of range (not a finite float64)")
    return value


def _check_depth(text: str) -> None:
    """Refuse JSON nested deeper than :data:`MAX_JSON_DEPTH`, before the parser recurses into it."""
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return
    codes = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", "replace"), dtype=np.uint8)
    step = ((codes == ord("[")) | (codes == ord("{"))).astype(np.int64)
    step -= (codes == ord("]")) | (codes == ord("}"))
    if step.size and int(np.cumsum(step).max()) > MAX_JSON_DEPTH:
        raise DecodeError(None, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def _check_strings(value: Any) -> None:
    """Every string (keys included) is valid Unicode text (no lone surrogate) of bounded length."""
    if isinstance(value, str):
        if len(value) > MAX_STRING_CHARS:
            raise DecodeError(None, f"a string of {len(value)} characters (at most {MAX_STRING_CHARS})")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DecodeError(None, f"a string holds a lone surrogate (\\u{ord(value[exc.start]):04x})") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_json(frame: Any, what: str = "header") -> Any:
    """Parse one JSON frame safely: size, UTF-8, nesting depth, 64-bit integers, finite floats, strings.

    Raises
    ------
    DecodeError
        Says what is wrong; never another exception, whatever the bytes.
    """
    buf = _as_buffer(frame, what)
    if buf.nbytes > MAX_HEADER_BYTES:
        raise DecodeError(None, f"{what} frame is {buf.nbytes} bytes, more than the limit {MAX_HEADER_BYTES}")
    try:
        text = bytes(buf).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(None, f"{what} frame is not valid UTF-8: {exc}") from exc
    _check_depth(text)
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except ValueError as exc:
        raise DecodeError(None, f"{what} frame is not valid JSON: {exc!s:.200}") from exc
    _check_strings(value)
    return value


def _parse_header(frame: Any) -> dict[str, Any]:
    header = parse_json(frame)
    if not isinstance(header, dict):
        raise DecodeError(None, f"header must be a JSON object, got {type(header).__name__}")
    version = header.get("schema_version")
    if type(version) is not int:
        raise DecodeError(None, f"header lacks an integer schema_version (got {version!r})")
    if version != SCHEMA_VERSION:
        raise DecodeError(None, f"unsupported schema_version {version}; this decoder speaks {SCHEMA_VERSION}")
    kind = header.get("kind")
    if not isinstance(kind, str) or not kind:
        raise DecodeError(None, f"header lacks a string 'kind' (got {kind!r})")
    return header


def message_kind(frames: Sequence[Any]) -> str:
    """The ``kind`` of a message, after checking its first frame is a version-1 JSON header.

    Raises
    ------
    DecodeError
        No frames, or a first frame that is not a valid header.
    """
    if len(frames) == 0:
        raise DecodeError(None, "empty message (no frames)")
    return str(_parse_header(frames[0])["kind"])


def _require(header: Mapping[str, Any], key: str, types: tuple[type, ...], what: str = "header") -> Any:
    if key not in header:
        raise DecodeError(None, f"{what} lacks the field {key!r}")
    value = header[key]
    if not _type_ok(value, types):
        names = "/".join(t.__name__ for t in types)
        raise DecodeError(None, f"{what} field {key!r} must be {names}, got {type(value).__name__} {value!r:.80}")
    return value


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _finite_number(
    header: Mapping[str, Any],
    key: str,
    *,
    positive: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    raw = _require(header, key, (int, float))
    try:
        value = float(raw)
    except OverflowError as exc:
        raise DecodeError(None, f"header field {key!r} is out of range ({raw!r:.40})") from exc
    if not math.isfinite(value):
        raise DecodeError(None, f"header field {key!r} is not finite ({value})")
    if positive and value <= 0:
        raise DecodeError(None, f"header field {key!r} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise DecodeError(None, f"header field {key!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise DecodeError(None, f"header field {key!r} must be <= {maximum:g}, got {value:g}")
    return value


def _bounded_str(header: Mapping[str, Any], key: str, limit: int, *, empty: bool = False) -> str:
    value = str(_require(header, key, (str,)))
    if (not value and not empty) or len(value) > limit:
        raise DecodeError(
            None,
            f"header field {key!r} must be a {'' if empty else 'non-empty '}string of at most "
            f"{limit} characters (got {len(value)})",
        )
    return value


def _shape(spec: Mapping[str, Any], what: str, ndim: int) -> tuple[int, ...]:
    shape = _require(spec, "shape", (list,), what)
    if len(shape) != ndim or not all(type(s) is int for s in shape):
        raise DecodeError(None, f"{what} shape must be {ndim} integers, got {shape!r:.80}")
    if any(not 1 <= s <= MAX_PARTICLES for s in shape):
        raise DecodeError(None, f"{what} shape must be positive and at most {MAX_PARTICLES}, got {shape}")
    return tuple(shape)


def _checked_array(frame: Any, spec: Any, what: str, dtype: np.dtype, ndim: int) -> np.ndarray:
    if not isinstance(spec, dict):
        raise DecodeError(None, f"header field {what!r} must be an object")
    shape = _shape(spec, what, ndim)
    buf = _as_buffer(frame, what)
    expected = math.prod(shape) * dtype.itemsize
    if buf.nbytes != expected:
        raise DecodeError(
            None, f"{what} frame holds {buf.nbytes} bytes; shape {list(shape)} of {dtype.name} needs {expected}"
        )
    crc = _require(spec, "crc32", (int,), what)
    actual = _crc32(buf)
    if crc != actual:
        raise DecodeError(None, f"{what} frame checksum mismatch: header says crc32 {crc}, data gives {actual}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _int_list(header: Mapping[str, Any], key: str, n: int) -> np.ndarray:
    values = _require(header, key, (list,))
    if len(values) != n:
        raise DecodeError(None, f"header field {key!r} has {len(values)} entries for {n} particles")
    if not all(type(v) is int for v in values):
        raise DecodeError(None, f"header field {key!r} must hold integers only")
    arr = np.asarray(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    if n and arr.min() < 1:
        raise DecodeError(None, f"header field {key!r} is 1-based; found {int(arr.min())}")
    if n and arr.max() > MAX_INDEX:
        raise DecodeError(None, f"header field {key!r} holds {int(arr.max())}, more than {MAX_INDEX}")
    return arr


def decode_batch(frames: Sequence[Any]) -> tuple[dict[str, Any], ParticleBatch]:
    """Validate a data message and rebuild its :class:`ParticleBatch`.

    Parameters
    ----------
    frames
        ``[header_json, images, ctf]`` as received (identity frame already stripped); each a
        bytes-like object or a ``zmq.Frame``.

    Returns
    -------
    header : dict
        The parsed header (``msg_id``, ``source``, ``file_ready_time``, ...).
    batch : ParticleBatch
        ``images`` is a **read-only** view of the images frame (copy before modifying it).

    Raises
    ------
    DecodeError
        Anything wrong: frame count, JSON, version, kind, missing or mistyped field, dtype,
        shape vs buffer size, checksum, list lengths, indices < 1, duplicate keys, pixel size
        ≤ 0, NaN/Inf in images or CTF. The message says which.
    """
    if len(frames) not in (3, 4):
        raise DecodeError(None, f"a batch message has 3 frames [header, images, ctf] (+ metadata), got {len(frames)}")
    header, session, pixel_size, n = _batch_header(frames[0])
    images = _batch_images(frames[1], header, n)
    ctf = _batch_ctf(frames[2], header, n)
    stack_paths, indices, optics_groups = _batch_keys(header, n)
    _check_finite_images(images, stack_paths, indices, header["msg_id"])
    try:
        batch = ParticleBatch(
            images=images,
            pixel_size_angstrom=pixel_size,
            ctf=ctf,
            session=session,
            stack_paths=np.asarray(stack_paths, dtype=str),
            indices=indices,
            optics_groups=optics_groups,
            extra=decode_metadata_frame(frames[3], n) if len(frames) == 4 else None,
        )
    except InputError as exc:  # pragma: no cover - every case is checked above
        raise DecodeError(None, exc.what) from exc
    return header, batch


def _batch_header(frame: Any) -> tuple[dict[str, Any], str, float, int]:
    """Step 1 of :func:`decode_batch`: the header, its session, pixel size and particle count, checked."""
    header = _parse_header(frame)
    if header["kind"] != KIND_BATCH:
        raise DecodeError(None, f"expected kind 'batch', got {header['kind']!r}")
    session = _bounded_str(header, "session", MAX_SESSION_CHARS)
    parse_msg_id(_require(header, "msg_id", (str,)))
    _bounded_str(header, "source", MAX_PATH_CHARS, empty=True)
    _finite_number(header, "file_ready_time", minimum=0.0, maximum=MAX_UNIX_SECONDS)
    if "sent_time" in header:
        _finite_number(header, "sent_time", minimum=0.0, maximum=MAX_UNIX_SECONDS)
    if "attempt" in header and (type(header["attempt"]) is not int or header["attempt"] < 1):
        raise DecodeError(None, f"header field 'attempt' must be an integer >= 1, got {header['attempt']!r:.40}")
    pixel_size = _finite_number(header, "pixel_size_angstrom", positive=True)
    n = _require(header, "n_particles", (int,))
    if not 1 <= n <= MAX_PARTICLES:
        raise DecodeError(None, f"n_particles must be 1 .. {MAX_PARTICLES}, got {n}")
    return header, session, pixel_size, n


def _batch_images(frame: Any, header: Mapping[str, Any], n: int) -> np.ndarray:
    """Step 2: the ``(n, h, w)`` images frame, as the header's ``images`` entry describes it (read-only view)."""
    image_spec = _require(header, "images", (dict,))
    dtype_name = _require(image_spec, "dtype", (str,), "images")
    if dtype_name not in IMAGE_DTYPES:
        raise DecodeError(None, f"images dtype must be one of {sorted(IMAGE_DTYPES)}, got {dtype_name!r:.40}")
    images = _checked_array(frame, image_spec, "images", IMAGE_DTYPES[dtype_name], 3)
    if max(images.shape[1:]) > MAX_IMAGE_SIDE:
        raise DecodeError(None, f"images of {images.shape[1]}x{images.shape[2]} pixels: at most {MAX_IMAGE_SIDE}")
    if images.shape[0] != n:
        raise DecodeError(None, f"images hold {images.shape[0]} particles, n_particles says {n}")
    return images


def _batch_ctf(frame: Any, header: Mapping[str, Any], n: int) -> CtfParams:
    """Step 3: the ``(n, len(CTF_FIELDS))`` float64 CTF frame, finite, as :class:`CtfParams`."""
    ctf_spec = _require(header, "ctf", (dict,))
    if _require(ctf_spec, "dtype", (str,), "ctf") != "float64":
        raise DecodeError(None, f"ctf dtype must be 'float64', got {ctf_spec['dtype']!r:.40}")
    if _require(ctf_spec, "fields", (list,), "ctf") != list(CTF_FIELDS):
        raise DecodeError(None, f"ctf fields must be {list(CTF_FIELDS)} in this order, got {ctf_spec['fields']!r:.200}")
    ctf_array = _checked_array(frame, ctf_spec, "ctf", _CTF_DTYPE, 2)
    if ctf_array.shape != (n, len(CTF_FIELDS)):
        raise DecodeError(None, f"ctf shape must be [{n}, {len(CTF_FIELDS)}], got {list(ctf_array.shape)}")
    if not np.isfinite(ctf_array).all():
        raise DecodeError(None, "ctf frame contains NaN or Inf")
    try:
        return CtfParams(**{name: ctf_array[:, k] for k, name in enumerate(CTF_FIELDS)})
    except InputError as exc:  # pragma: no cover - every case is checked above
        raise DecodeError(None, exc.what) from exc


def _batch_keys(header: Mapping[str, Any], n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Step 4: each particle's stack path, 1-based index and optics group; no particle twice."""
    stack_paths = _require(header, "stack_paths", (list,))
    if len(stack_paths) != n:
        raise DecodeError(None, f"header field 'stack_paths' has {len(stack_paths)} entries for {n} particles")
    if not all(isinstance(p, str) and 0 < len(p) <= MAX_PATH_CHARS for p in stack_paths):
        raise DecodeError(
            None, f"header field 'stack_paths' must hold non-empty strings of at most {MAX_PATH_CHARS} characters only"
        )
    indices = _int_list(header, "indices", n)
    optics_groups = _int_list(header, "optics_groups", n)
    if len(set(zip(stack_paths, indices.tolist(), strict=True))) != n:
        raise DecodeError(None, "the batch holds the same particle (stack_path, index) more than once")
    return stack_paths, indices, optics_groups


def _check_finite_images(images: np.ndarray, stack_paths: Sequence[str], indices: np.ndarray, msg_id: str) -> None:
    """Step 5: no NaN or Inf in any image (the refusal names the first bad one)."""
    n = len(images)
    finite = np.isfinite(images.reshape(n, -1)).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise DecodeError(
            None,
            f"image {int(indices[first])} of {stack_paths[first]} contains NaN or Inf "
            f"({int((~finite).sum())} bad image(s) in message {msg_id})",
        )


def encode_control(kind: str, **fields_: Any) -> list[bytes]:
    """The single JSON frame of a reply or control message (see the module docstring).

    Parameters
    ----------
    kind
        One of :data:`CONTROL_KINDS` (``"ack"``, ``"nack"``, ``"reject"``, ``"ping"``, ``"pong"``,
        ``"status"``, ``"snapshot"``, ``"pause"``, ``"resume"``, ``"start_session"``,
        ``"set_class_override"``, ``"reply"``).
    **fields_
        The kind's fields; ``None`` values are left out.

    Returns
    -------
    list of bytes
        ``[json_frame]``.

    Raises
    ------
    InputError
        Unknown kind, missing or mistyped field (the same checks as :func:`decode_control`).
    """
    message: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": kind}
    message.update({k: v for k, v in fields_.items() if v is not None})
    frame = _json_frame(message)
    try:
        decode_control([frame])
    except DecodeError as exc:
        raise InputError(None, f"invalid {kind!r} message: {exc.what}") from exc
    return [frame]


def decode_control(frames: Sequence[Any]) -> dict[str, Any]:
    """Validate a one-frame reply/control message and return it as a dict (with ``kind``).

    Raises
    ------
    DecodeError
        Not exactly one frame, bad JSON, unknown version or kind, a missing required field, a
        field of the wrong type, a negative count or delay, ``ok=false`` without ``error``.
    """
    if len(frames) != 1:
        raise DecodeError(None, f"a control message has exactly 1 frame, got {len(frames)}")
    message = _parse_header(frames[0])
    kind = message["kind"]
    spec = _CONTROL_SPECS.get(kind)
    if spec is None:
        raise DecodeError(None, f"unknown control kind {kind!r:.40}; expected one of {sorted(CONTROL_KINDS)}")
    for key, (types, required) in spec.items():
        if key in message:
            _require(message, key, types, f"{kind!r} message")
            value = message[key]
            if key in _NON_NEGATIVE and (not math.isfinite(value) or value < 0):
                raise DecodeError(None, f"{kind!r} field {key!r} must be finite and >= 0, got {value}")
            if key == "time" and not math.isfinite(value):
                raise DecodeError(None, f"{kind!r} field 'time' is not finite")
        elif required:
            raise DecodeError(None, f"{kind!r} message lacks the field {key!r}")
    for key in ("msg_id", "request_id", "session"):
        value = message.get(key)
        limit = MAX_SESSION_CHARS if key == "session" else MAX_ID_CHARS
        if isinstance(value, str) and len(value) > limit:
            raise DecodeError(None, f"{kind!r} field {key!r} has {len(value)} characters (at most {limit})")
    if kind == KIND_REPLY and not message["ok"] and not message.get("error"):
        raise DecodeError(None, "a 'reply' with ok=false must say why in 'error'")
    return message


# --------------------------------------------------------------------------- metadata frame
#
# The optional 4th frame of a batch: every column of the particles' input rows (issue 14), so the
# engine's snapshots can write them back. Self-contained and versioned on its own:
#
#   frame  = u32 little-endian L | L bytes of UTF-8 JSON (the metadata header) | column data
#   header = {"metadata_version": 1, "origin": "relion"|"cryosparc", "n_rows": n, "data_crc32": int,
#             "columns": [{"name": str, "dtype": str, "shape": [n] or [n, k], "text": bool}, ...]}
#
# Column data are the columns' C-order bytes, one after another, in header order. ``dtype`` is one
# of :data:`METADATA_DTYPES` (fixed-size numbers, ``|S<w>`` bytes); ``text`` marks a str column
# sent as UTF-8 bytes. Never pickle; every size is bounded and checked against the frame length.

METADATA_VERSION = 1
#: Largest metadata frame accepted, bytes.
MAX_METADATA_BYTES = 256 * 1024 * 1024
#: Largest metadata header, bytes.
MAX_METADATA_HEADER_BYTES = 1024 * 1024
_METADATA_DTYPE = re.compile(r"^(<f[248]|<i[248]|\|i1|<u[248]|\|u1|\|b1|\|S[0-9]{1,5})$")
#: What :data:`_METADATA_DTYPE` admits, in words (for error messages).
METADATA_DTYPES = "<f2 <f4 <f8 |i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8 |b1 |S1..|S99999"


def _wire_column(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """A column as it travels: little-endian numbers, or UTF-8 bytes for str (``text``)."""
    if values.dtype.kind == "U":
        encoded = np.char.encode(values, "utf-8")
        return (encoded if encoded.dtype.itemsize else encoded.astype("S1")), True
    if values.dtype.kind == "S":
        return (values if values.dtype.itemsize else values.astype("S1")), False
    return values.astype(values.dtype.newbyteorder("<")), False


def encode_metadata_frame(extra: ExtraColumns) -> bytes:
    """The metadata frame of ``extra`` (see above).

    Raises
    ------
    InputError
        A column whose dtype or size :func:`decode_metadata_frame` would refuse.
    """
    n = len(extra)
    specs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, values in extra.columns.items():
        wire, text = _wire_column(np.ascontiguousarray(values))
        if _METADATA_DTYPE.match(wire.dtype.str) is None:
            raise InputError(None, f"metadata column {name}: dtype {wire.dtype.str} cannot travel ({METADATA_DTYPES})")
        specs.append({"name": name, "dtype": wire.dtype.str, "shape": [n, *wire.shape[1:]], "text": text})
        chunks.append(np.ascontiguousarray(wire).tobytes())
    data = b"".join(chunks)
    header = _json_frame(
        {
            "metadata_version": METADATA_VERSION,
            "origin": extra.origin,
            "n_rows": n,
            "data_crc32": _crc32(data),
            "columns": specs,
        }
    )
    frame = len(header).to_bytes(4, "little") + header + data
    if len(header) > MAX_METADATA_HEADER_BYTES or len(frame) > MAX_METADATA_BYTES:
        raise InputError(None, f"metadata frame of {len(frame)} bytes is larger than the limits")
    return frame


def _metadata_header(buf: memoryview) -> tuple[dict[str, Any], int]:
    if buf.nbytes < 4:
        raise DecodeError(None, "metadata frame is shorter than its 4-byte header length")
    length = int.from_bytes(bytes(buf[:4]), "little")
    if length > MAX_METADATA_HEADER_BYTES or 4 + length > buf.nbytes:
        raise DecodeError(None, f"metadata header length {length} does not fit the frame of {buf.nbytes} bytes")
    try:
        header = json.loads(bytes(buf[4 : 4 + length]).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(None, f"metadata header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise DecodeError(None, "metadata header must be a JSON object")
    version = header.get("metadata_version")
    if type(version) is not int or version != METADATA_VERSION:
        raise DecodeError(None, f"unsupported metadata_version {version!r:.20}; this decoder speaks {METADATA_VERSION}")
    return header, 4 + length


def _metadata_column(spec: Any, n: int, seen: set[str]) -> tuple[str, np.dtype, tuple[int, ...], bool]:
    if not isinstance(spec, dict):
        raise DecodeError(None, "metadata column spec must be an object")
    try:
        name = check_column_name(spec.get("name"))
    except InputError as exc:
        raise DecodeError(None, f"metadata: {exc.what}") from exc
    if name in seen:
        raise DecodeError(None, f"metadata column {name} appears twice")
    dtype_name = spec.get("dtype")
    if not isinstance(dtype_name, str) or _METADATA_DTYPE.match(dtype_name) is None:
        raise DecodeError(None, f"metadata column {name}: dtype {dtype_name!r:.40} is not one of {METADATA_DTYPES}")
    dtype = np.dtype(dtype_name)
    shape: Any = spec.get("shape")
    ok_shape = isinstance(shape, list) and len(shape) in (1, 2) and all(type(s) is int for s in shape)
    if not ok_shape or shape[0] != n or (len(shape) == 2 and not 1 <= shape[1] <= MAX_ROW_VALUES):
        raise DecodeError(None, f"metadata column {name}: shape {shape!r:.60} is not [n] or [n, 1..{MAX_ROW_VALUES}]")
    text = spec.get("text", False)
    if type(text) is not bool or (text and dtype.kind != "S"):
        raise DecodeError(None, f"metadata column {name}: 'text' must be a bool, true only for bytes")
    return name, dtype, tuple(shape), text


def decode_metadata_frame(frame: Any, n: int) -> ExtraColumns:
    """Validate a metadata frame of ``n`` particles and rebuild its :class:`ExtraColumns`.

    Raises
    ------
    DecodeError
        Too large, bad length prefix or JSON, unknown version or origin, a row count other than
        ``n``, a bad or repeated column name, a dtype outside :data:`METADATA_DTYPES`, a shape,
        sizes that do not add up to the frame, a checksum mismatch, or text that is not UTF-8.
    """
    buf = _as_buffer(frame, "metadata")
    if buf.nbytes > MAX_METADATA_BYTES:
        raise DecodeError(None, f"metadata frame is {buf.nbytes} bytes, more than the limit {MAX_METADATA_BYTES}")
    header, offset = _metadata_header(buf)
    origin, rows, specs = header.get("origin"), header.get("n_rows"), header.get("columns")
    if origin not in ("relion", "cryosparc"):
        raise DecodeError(None, f"metadata origin must be 'relion' or 'cryosparc', got {origin!r:.40}")
    if type(rows) is not int or rows != n:
        raise DecodeError(None, f"metadata holds {rows!r:.20} rows for a batch of {n} particles")
    if not isinstance(specs, list) or len(specs) > MAX_COLUMNS:
        raise DecodeError(None, f"metadata 'columns' must be a list of at most {MAX_COLUMNS}")
    crc = header.get("data_crc32")
    if type(crc) is not int or crc != _crc32(buf[offset:]):
        raise DecodeError(None, "metadata frame checksum mismatch")
    columns: dict[str, np.ndarray] = {}
    for spec in specs:
        name, dtype, shape, text = _metadata_column(spec, n, set(columns))
        size = math.prod(shape) * dtype.itemsize
        if offset + size > buf.nbytes:
            raise DecodeError(None, f"metadata column {name} needs {size} bytes; the frame ends before")
        values = np.frombuffer(buf[offset : offset + size], dtype=dtype).reshape(shape)
        offset += size
        if text:
            try:
                values = np.char.decode(values, "utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(None, f"metadata column {name} holds text that is not UTF-8") from exc
        columns[name] = values
    if offset != buf.nbytes:
        raise DecodeError(None, f"metadata frame has {buf.nbytes - offset} bytes after its last column")
    try:
        return ExtraColumns(origin, columns)
    except InputError as exc:
        raise DecodeError(None, f"metadata: {exc.what}") from exc


__all__ = [
    "CONTROL_KINDS",
    "CTF_FIELDS",
    "DELIVERY_KINDS",
    "IMAGE_DTYPES",
    "KIND_ACK",
    "KIND_BATCH",
    "KIND_CLOSE_SESSION",
    "KIND_NACK",
    "KIND_PAUSE",
    "KIND_PING",
    "KIND_PONG",
    "KIND_REJECT",
    "KIND_REPLY",
    "KIND_RESUME",
    "KIND_SET_CLASS_OVERRIDE",
    "KIND_SNAPSHOT",
    "KIND_START_SESSION",
    "KIND_STATUS",
    "MAX_HEADER_BYTES",
    "MAX_ID_CHARS",
    "MAX_INDEX",
    "MAX_JSON_DEPTH",
    "MAX_PATH_CHARS",
    "MAX_SESSION_CHARS",
    "MAX_STRING_CHARS",
    "SCHEMA_VERSION",
    "decode_batch",
    "decode_control",
    "decode_metadata_frame",
    "encode_batch",
    "encode_control",
    "encode_metadata_frame",
    "make_msg_id",
    "message_kind",
    "parse_json",
    "parse_msg_id",
]
