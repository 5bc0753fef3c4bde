"""How much memory the engine holds: its resident size (``/proc/self/status``) and, on CUDA, the GPU
memory of torch's caching allocator.

Shown by ``otf2d status`` (the ``memory`` entry of the engine's status reply) and, for the
resident size, on ``/metrics`` as ``process_resident_memory_bytes`` (prometheus-client's process
collector); the GPU memory as ``otf2d_device_memory_bytes{kind="allocated"|"reserved"}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Where Linux reports a process's own memory.
PROC_STATUS = Path("/proc/self/status")
#: ``/proc/self/status`` fields read, and the keys they are reported under.
STATUS_FIELDS = {"VmRSS": "resident_bytes", "VmHWM": "peak_resident_bytes"}


def proc_status_bytes(status_file: Path, fields: Iterable[str]) -> dict[str, int]:
    """The ``kB`` fields ``fields`` (``VmRSS``, ``RssAnon`` …) of a ``/proc/<pid>/status`` file, in bytes.

    Empty where the file cannot be read (no ``/proc``: macOS, Windows; the process is gone); a
    field that is missing or malformed is left out.
    """
    try:
        text = status_file.read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    wanted = set(fields)
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in wanted and len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            found[key] = int(parts[0]) * 1024
    return found


def resident_memory_bytes(status_file: Path = PROC_STATUS) -> dict[str, int]:
    """``resident_bytes`` (``VmRSS``) and ``peak_resident_bytes`` (``VmHWM``) of this process.

    Empty where there is no ``/proc`` (macOS, Windows) or it lacks the fields.
    """
    return {STATUS_FIELDS[k]: v for k, v in proc_status_bytes(status_file, STATUS_FIELDS).items()}


def device_memory_bytes(device: torch.device) -> dict[str, int]:
    """GPU memory that torch holds on ``device``: ``allocated`` (tensors alive) and ``reserved``
    (held by the caching allocator, what other processes cannot use). Empty for a CPU device."""
    if device.type != "cuda":
        return {}
    import torch  # a CUDA engine has it loaded; readers of /proc (the stream benchmark) stay torch-free

    if not torch.cuda.is_available():
        return {}
    return {
        "allocated": int(torch.cuda.memory_allocated(device)),
        "reserved": int(torch.cuda.memory_reserved(device)),
    }


def memory_status(device: torch.device) -> dict[str, int]:
    """The ``memory`` entry of the engine's status: :func:`resident_memory_bytes` and, on CUDA,
    ``device_allocated_bytes`` / ``device_reserved_bytes``."""
    status = resident_memory_bytes()
    for kind, value in device_memory_bytes(device).items():
        status[f"device_{kind}_bytes"] = value
    return status


__all__ = [
    "PROC_STATUS",
    "STATUS_FIELDS",
    "device_memory_bytes",
    "memory_status",
    "proc_status_bytes",
    "resident_memory_bytes",
]
