"""Atomic checkpoints of a session's folding state: one ``.npz`` file, no pickle.

A checkpoint is a NumPy ``.npz`` archive written with :func:`numpy.savez` and read back with
``allow_pickle=False``: every tensor of the classifier's ``state_dict()`` is one array; everything
else (counters, parameters, the journal position folded so far, the structure of the state) is a
JSON document stored in the same archive as the ``uint8`` array ``__meta__``. One file, so one
``os.replace`` makes the whole checkpoint visible at once.

Writing (:func:`save_checkpoint`): a temporary file in the same directory, ``fsync``, the current
checkpoint renamed to ``<name>.prev.npz``, the temporary renamed to the target, the directory
``fsync``-ed. Reading (:func:`load_checkpoint`) falls back to the previous checkpoint when the
current one is missing or unreadable; an older checkpoint is still correct, since restart replays
the journal from the position it records.

State trees (:func:`flatten_state` / :func:`unflatten_state`): nested ``dict`` (str keys), ``list``,
``tuple``, ``str``/``int``/``float``/``bool``/``None``, ``numpy`` arrays and scalars and ``torch``
tensors (any dtype: ``bfloat16`` is stored as float32 and restored). Tensors come back on the
requested device.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from otf2d.core.durable import fsync_directory, write_bytes_atomic
from otf2d.core.errors import InputError

log = logging.getLogger(__name__)

#: Version of the checkpoint layout (``meta["format"]``).
CHECKPOINT_FORMAT = 1
_META_KEY = "__meta__"
_TENSOR = "__tensor__"
_ARRAY = "__ndarray__"
_TUPLE = "__tuple__"
_FLOAT = "__float__"
_TORCH_DTYPES: dict[str, torch.dtype] = {
    str(dt).removeprefix("torch."): dt
    for dt in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.complex64,
        torch.complex128,
        torch.int8,
        torch.uint8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}


def previous_path(path: Path) -> Path:
    """``checkpoint.npz`` → ``checkpoint.prev.npz``."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | os.PathLike[str], meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> int:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path
        The checkpoint file (``.npz``).
    meta
        JSON-able scalars and structure (stored as the array ``__meta__``).
    arrays
        Named arrays (names must not start with ``__``).

    Returns
    -------
    int
        Bytes written.
    """
    target = Path(path)
    if any(name.startswith("__") for name in arrays):
        raise InputError(target, "checkpoint array names must not start with '__'")
    document = json.dumps({"format": CHECKPOINT_FORMAT, **meta}, sort_keys=True).encode("utf-8")
    payload = {_META_KEY: np.frombuffer(document, dtype=np.uint8), **arrays}
    buffer = io.BytesIO()
    np.savez(buffer, **payload)  # type: ignore[arg-type]
    data = buffer.getbuffer()
    write_bytes_atomic(target, data, keep_previous=previous_path(target))
    return data.nbytes


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    raw = arrays.pop(_META_KEY, None)
    if raw is None:
        raise InputError(path, "not an otf2d checkpoint (no __meta__)")
    meta = json.loads(raw.tobytes().decode("utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            path, f"unsupported checkpoint format {meta.get('format') if isinstance(meta, dict) else meta}"
        )
    return meta, arrays


def readable_checkpoints(
    path: str | os.PathLike[str],
) -> tuple[list[tuple[Path, dict[str, Any], dict[str, np.ndarray]]], list[str]]:
    """The checkpoint at ``path`` and its previous one that can be read, newest first, and why the
    others cannot (an empty, truncated or corrupt file: any failure to read it)."""
    target = Path(path)
    readable: list[tuple[Path, dict[str, Any], dict[str, np.ndarray]]] = []
    errors: list[str] = []
    for candidate in (target, previous_path(target)):
        if not candidate.exists():
            continue
        try:
            meta, arrays = _read(candidate)
        except Exception as exc:  # whatever the bytes on disk are, they only make a checkpoint unreadable
            log.error("checkpoint %s is unreadable (%s: %s)", candidate, type(exc).__name__, exc)
            errors.append(f"{candidate.name}: {type(exc).__name__}: {exc}")
            continue
        readable.append((candidate, meta, arrays))
    return readable, errors


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """Read the checkpoint at ``path`` (or its previous one); ``None`` when there is neither.

    Raises
    ------
    InputError
        Both exist and neither can be read.
    """
    readable, errors = readable_checkpoints(path)
    if readable:
        return readable[0][1], readable[0][2]
    if errors:
        raise InputError(Path(path), "no readable checkpoint: " + "; ".join(errors))
    return None


def set_aside(path: Path, reason: str) -> Path | None:
    """Rename an unusable checkpoint to ``<stem>.unusable-<time>.npz`` (kept for inspection); returns the new path."""
    if not path.exists():
        return None
    aside = path.with_name(f"{path.stem}.unusable-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.npz")
    os.replace(path, aside)
    fsync_directory(path.parent)
    log.error("checkpoint %s set aside as %s: %s", path, aside.name, reason)
    return aside


def flatten_state(state: Any, arrays: dict[str, np.ndarray], prefix: str = "state") -> Any:
    """A JSON-able tree of ``state`` whose tensors and arrays are moved into ``arrays``.

    Parameters
    ----------
    state
        The tree (see the module docstring for what it may hold).
    arrays
        Filled with ``name → array``; names derive from ``prefix`` and the path in the tree.
    prefix
        Name of the root.

    Raises
    ------
    InputError
        A value of an unsupported type, or a dict with a non-str key.
    """
    if isinstance(state, torch.Tensor):
        tensor = state.detach().cpu()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _TORCH_DTYPES:
            raise InputError(None, f"checkpoint: tensor {prefix} has unsupported dtype {dtype}")
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)
        arrays[prefix] = tensor.contiguous().numpy()
        return {_TENSOR: prefix, "dtype": dtype}
    if isinstance(state, np.ndarray):
        if state.dtype.hasobject:
            raise InputError(None, f"checkpoint: array {prefix} holds Python objects")
        arrays[prefix] = np.ascontiguousarray(state)
        return {_ARRAY: prefix}
    if isinstance(state, np.generic):
        return flatten_state(state.item(), arrays, prefix)
    if isinstance(state, bool | int | str) or state is None:
        return state
    if isinstance(state, float):
        return state if math.isfinite(state) else {_FLOAT: repr(state)}
    if isinstance(state, Mapping):
        out: dict[str, Any] = {}
        for key, value in state.items():
            if not isinstance(key, str):
                raise InputError(None, f"checkpoint: key {key!r} under {prefix} is not a string")
            out[key] = flatten_state(value, arrays, f"{prefix}.{key}")
        return out
    if isinstance(state, list | tuple):
        items = [flatten_state(v, arrays, f"{prefix}.{i}") for i, v in enumerate(state)]
        return {_TUPLE: items} if isinstance(state, tuple) else items
    raise InputError(None, f"checkpoint: cannot store {type(state).__name__} at {prefix}")


def unflatten_state(tree: Any, arrays: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> Any:
    """Invert :func:`flatten_state`; tensors are created on ``device``.

    Raises
    ------
    InputError
        The tree names an array that is not in ``arrays``.
    """
    if isinstance(tree, dict):
        if _TENSOR in tree:
            name = tree[_TENSOR]
            if name not in arrays:
                raise InputError(None, f"checkpoint lacks the tensor {name}")
            tensor = torch.from_numpy(np.array(arrays[name]))
            return tensor.to(device=device, dtype=_TORCH_DTYPES[tree["dtype"]])
        if _ARRAY in tree:
            name = tree[_ARRAY]
            if name not in arrays:
                raise InputError(None, f"checkpoint lacks the array {name}")
            return np.array(arrays[name])
        if _TUPLE in tree:
            return tuple(unflatten_state(v, arrays, device) for v in tree[_TUPLE])
        if _FLOAT in tree and len(tree) == 1:
            return float(tree[_FLOAT])
        return {k: unflatten_state(v, arrays, device) for k, v in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(v, arrays, device) for v in tree]
    return tree


__all__ = [
    "CHECKPOINT_FORMAT",
    "flatten_state",
    "load_checkpoint",
    "previous_path",
    "readable_checkpoints",
    "save_checkpoint",
    "set_aside",
    "unflatten_state",
]
